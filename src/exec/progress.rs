//! What a person watching a run sees.
//!
//! One display for the whole run, across its phases (the split lists partitions, then
//! the graph is expanded with them and the rest runs): tasks finished of the total, rows
//! and bytes per second, an ETA, and the tasks running now (a few, then "+N more"). The
//! total grows when a phase adds tasks — the display says so, and what is finished never
//! goes back. Rows and bytes are those of the tasks that move data (exports, loads,
//! catch-ups, steps), not the verifies that count them again. The arithmetic is
//! [`estimate::Estimate`]'s; this module only shows it.
//!
//! On a terminal: a two-line bar (counts, rates and ETA; the running tasks) with events
//! worth reading (failures, retries, notes) printed above it. Otherwise (CI logs, pipes):
//! one plain line per event, starting with a fixed status word — `started`, `done`,
//! `failed`, `skipped`, `retry` — so the output is greppable, plus a `progress` line
//! every [`SUMMARY_EVERY`] while the run goes on, when a phase adds tasks, and at the
//! end. Quiet: nothing. Everything shown goes through the redactor. This is user output,
//! separate from `tracing` logs.

pub mod estimate;

use std::io::{IsTerminal, Write};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, HumanCount, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::scheduler::Start;
use super::{Event, Observer};
use crate::graph::TaskKind;
use estimate::{Estimate, Snapshot};

/// How often plain output prints a `progress` line while a run goes on.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// How often the bar's rates and ETA are refreshed.
const TICK: Duration = Duration::from_secs(1);
/// Running tasks named before "+N more".
const RUNNING_SHOWN: usize = 3;
/// The phase that lists partitions: the tasks of the next phase are not known yet.
const SPLIT_PHASE: &str = "split";

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, plain lines otherwise.
    Auto,
    Bar,
    Plain,
    Quiet,
}

enum Sink {
    Bar(ProgressBar),
    Lines(Box<dyn Write + Send>),
    Quiet,
}

struct Inner {
    sink: Sink,
    began: Instant,
    estimate: Estimate,
    /// Running tasks by id, in the order they started.
    running: Vec<String>,
    /// Phases begun.
    phases: usize,
    /// Between the first `Begin` and `finish`.
    active: bool,
    finished: bool,
    /// When plain output last printed a `progress` line.
    last_summary: Instant,
    summary_every: Duration,
}

struct Ticker {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

/// The progress observer.
pub struct Progress {
    inner: Arc<Mutex<Inner>>,
    ticker: Mutex<Option<Ticker>>,
}

fn short(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(60) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

/// An ETA, coarser the further it is: `45s`, `3m 20s`, `12m`, `1h 05m`.
fn eta_text(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..600 => format!("{}m {:02}s", s / 60, s % 60),
        600..3600 => format!("{}m", s / 60),
        _ => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}

/// A rate of things: `950`, `12.3k`, `1.2M`.
fn count_rate(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.1}G", n / 1e9),
        n if n >= 1e6 => format!("{:.1}M", n / 1e6),
        n if n >= 1e3 => format!("{:.1}k", n / 1e3),
        n if n >= 10.0 => format!("{n:.0}"),
        n => format!("{n:.1}"),
    }
}

/// `12/40 tasks, 1.2M rows/s, 35.00 MiB/s, eta 3m` (`2/2+ tasks, listing partitions`
/// while more tasks are to come).
fn status_text(s: &Snapshot) -> String {
    let mut out = format!("{}/{}", s.finished, s.total);
    if s.more_to_come {
        out.push('+');
    }
    out.push_str(" tasks");
    if s.failed > 0 {
        out.push_str(&format!(" ({} failed)", s.failed));
    }
    if s.more_to_come {
        out.push_str(", listing partitions");
    }
    if s.rows > 0 {
        if let Some(r) = s.rows_per_sec {
            out.push_str(&format!(", {} rows/s", count_rate(r)));
        }
    }
    if s.bytes > 0 {
        if let Some(b) = s.bytes_per_sec {
            out.push_str(&format!(", {}/s", HumanBytes(b as u64)));
        }
    }
    if let Some(eta) = s.eta {
        if s.finished < s.total {
            out.push_str(&format!(", eta {}", eta_text(eta)));
        }
    }
    out
}

/// Tasks whose rows and bytes are data moved: a verify or a manifest counts the same
/// rows again, and would double the rates.
fn moves_data(kind: TaskKind) -> bool {
    matches!(
        kind,
        TaskKind::Export | TaskKind::Load | TaskKind::CatchUp | TaskKind::Sql | TaskKind::Exec
    )
}

/// `a, b, c +2 more`, or `none`.
fn running_text(running: &[String]) -> String {
    if running.is_empty() {
        return "none".to_string();
    }
    let mut out = running
        .iter()
        .take(RUNNING_SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if running.len() > RUNNING_SHOWN {
        out.push_str(&format!(" +{} more", running.len() - RUNNING_SHOWN));
    }
    out
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Plain,
            other => other,
        };
        let sink = match mode {
            ProgressMode::Bar => {
                // Empty (not full) until the first phase says how many tasks it runs.
                let bar = ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stderr());
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} [{elapsed_precise}] {bar:20} {prefix}\n  running: {wide_msg}",
                    )
                    .expect("the progress template is valid")
                    .progress_chars("█▌░"),
                );
                bar.enable_steady_tick(Duration::from_millis(200));
                Sink::Bar(bar)
            }
            ProgressMode::Plain => Sink::Lines(Box::new(std::io::stderr())),
            _ => Sink::Quiet,
        };
        Self::with_sink(sink, SUMMARY_EVERY)
    }

    /// Plain lines into `out`, with a `progress` line every `summary_every` (tests).
    pub fn lines(out: Box<dyn Write + Send>, summary_every: Duration) -> Self {
        Self::with_sink(Sink::Lines(out), summary_every)
    }

    fn with_sink(sink: Sink, summary_every: Duration) -> Self {
        let quiet = matches!(sink, Sink::Quiet);
        let now = Instant::now();
        let inner = Arc::new(Mutex::new(Inner {
            sink,
            began: now,
            estimate: Estimate::new(),
            running: Vec::new(),
            phases: 0,
            active: false,
            finished: false,
            last_summary: now,
            summary_every,
        }));
        let ticker = (!quiet).then(|| {
            let (stop, stopped) = mpsc::channel::<()>();
            let shared = inner.clone();
            let every = TICK.min(summary_every);
            let thread = std::thread::spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    shared.lock().unwrap_or_else(|p| p.into_inner()).tick();
                }
            });
            Ticker { stop, thread }
        });
        Progress {
            inner,
            ticker: Mutex::new(ticker),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Prints a line above the bar, or as a plain line.
    pub fn println(&self, line: &str) {
        self.lock().line(line);
    }

    fn stop_ticker(&self) {
        let ticker = self.ticker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(Ticker { stop, thread }) = ticker {
            drop(stop);
            let _ = thread.join();
        }
    }

    /// Removes the bar and prints the last `progress` line (before the summary).
    pub fn finish(&self) {
        self.stop_ticker();
        self.lock().finish();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop_ticker();
    }
}

impl Inner {
    fn line(&mut self, line: &str) {
        let line = crate::redact::text(line);
        let line = line.as_str();
        match &mut self.sink {
            Sink::Bar(_) if self.finished => crate::redact::to_stderr(&format!("{line}\n")),
            Sink::Bar(bar) => bar.println(line),
            Sink::Lines(out) => {
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            Sink::Quiet => {}
        }
    }

    fn is_lines(&self) -> bool {
        matches!(self.sink, Sink::Lines(_))
    }

    fn now(&self) -> Duration {
        self.began.elapsed()
    }

    fn snapshot(&self) -> Snapshot {
        self.estimate.snapshot(self.now())
    }

    /// Redraws the bar's text.
    fn refresh(&self) {
        if let Sink::Bar(bar) = &self.sink {
            let s = self.snapshot();
            bar.set_length(s.total as u64);
            bar.set_position(s.finished as u64);
            bar.set_prefix(crate::redact::text(&status_text(&s)));
            bar.set_message(crate::redact::text(&running_text(&self.running)));
        }
    }

    /// The `progress` line of plain output.
    fn summary(&mut self) {
        let line = format!(
            "progress {}; running: {}",
            status_text(&self.snapshot()),
            running_text(&self.running)
        );
        self.last_summary = Instant::now();
        self.line(&line);
    }

    /// Called every [`TICK`] by the ticker thread.
    fn tick(&mut self) {
        if !self.active || self.finished {
            return;
        }
        if self.is_lines() {
            if self.last_summary.elapsed() >= self.summary_every {
                self.summary();
            }
        } else {
            self.refresh();
        }
    }

    fn finish(&mut self) {
        if self.finished {
            return;
        }
        if let Sink::Bar(bar) = &self.sink {
            bar.finish_and_clear();
        }
        self.finished = true;
        if !self.active {
            return;
        }
        let now = self.now();
        let s = self.estimate.snapshot(now);
        let mut line = format!("progress {}/{} tasks", s.finished, s.total);
        let mut notes = Vec::new();
        if s.failed > 0 {
            notes.push(format!("{} failed", s.failed));
        }
        if s.skipped > 0 {
            notes.push(format!("{} skipped", s.skipped));
        }
        if !notes.is_empty() {
            line.push_str(&format!(" ({})", notes.join(", ")));
        }
        line.push_str(&format!(" in {}", short(now)));
        if let Some((rows, bytes)) = self.estimate.average(now) {
            let mut totals = Vec::new();
            if s.rows > 0 {
                totals.push(format!(
                    "{} rows ({} rows/s)",
                    HumanCount(s.rows),
                    count_rate(rows)
                ));
            }
            if s.bytes > 0 {
                totals.push(format!(
                    "{} ({}/s)",
                    HumanBytes(s.bytes),
                    HumanBytes(bytes as u64)
                ));
            }
            if !totals.is_empty() {
                line.push_str(&format!(": {}", totals.join(", ")));
            }
        }
        self.line(&line);
    }

    fn stop_running(&mut self, id: &str) {
        if let Some(at) = self.running.iter().position(|r| r == id) {
            self.running.remove(at);
        }
    }
}

impl Observer for Progress {
    fn event(&self, event: &Event<'_>) {
        let mut inner = self.lock();
        let now = inner.now();
        match event {
            Event::Begin { phase, starts, .. } => {
                let to_run = starts.iter().filter(|s| matches!(s, Start::Run)).count();
                let before = inner.estimate.snapshot(now);
                inner.estimate.plan(to_run, *phase == SPLIT_PHASE);
                inner.phases += 1;
                inner.active = true;
                inner.running.clear();
                if inner.phases > 1 && before.more_to_come {
                    let after = inner.estimate.snapshot(now);
                    inner.line(&format!(
                        "progress {}/{} tasks: the split listed the partitions; {to_run} more task(s) to run",
                        after.finished, after.total
                    ));
                }
                inner.refresh();
            }
            Event::Started { task, attempt } => {
                inner.estimate.started(now);
                inner.running.push(task.id.to_string());
                if inner.is_lines() {
                    let suffix = if *attempt > 1 {
                        format!(" (attempt {attempt})")
                    } else {
                        String::new()
                    };
                    inner.line(&format!("started {}{suffix}", task.id));
                }
                inner.refresh();
            }
            Event::Done {
                task,
                outcome,
                elapsed,
                ..
            } => {
                inner.stop_running(&task.id.to_string());
                let (rows, bytes) = if moves_data(task.kind) {
                    (outcome.rows.unwrap_or(0), outcome.bytes.unwrap_or(0))
                } else {
                    (0, 0)
                };
                inner.estimate.finished(now, rows, bytes, false);
                if inner.is_lines() {
                    let mut line = format!("done {} in {}", task.id, short(*elapsed));
                    if let Some(rows) = outcome.rows {
                        line.push_str(&format!(", {} rows", HumanCount(rows)));
                    }
                    if let Some(bytes) = outcome.bytes {
                        line.push_str(&format!(", {}", HumanBytes(bytes)));
                    }
                    if let Some(note) = &outcome.note {
                        line.push_str(&format!(" ({note})"));
                    }
                    inner.line(&line);
                }
                inner.refresh();
            }
            Event::Retry {
                task,
                attempt,
                max_attempts,
                delay,
                failure,
            } => {
                inner.stop_running(&task.id.to_string());
                inner.line(&format!(
                    "retry {} in {} (attempt {} of {max_attempts} failed: {})",
                    task.id,
                    short(*delay),
                    attempt,
                    failure.message
                ));
                inner.refresh();
            }
            Event::Failed {
                task,
                attempts,
                error,
            } => {
                inner.stop_running(&task.id.to_string());
                inner.estimate.finished(now, 0, 0, true);
                let plural = if *attempts == 1 { "" } else { "s" };
                inner.line(&format!(
                    "failed {} after {attempts} attempt{plural}: {error}",
                    task.id
                ));
                inner.refresh();
            }
            Event::Skipped { task, because } => {
                inner.estimate.skipped();
                if inner.is_lines() {
                    inner.line(&format!(
                        "skipped {}: dependency `{because}` failed",
                        task.id
                    ));
                }
                inner.refresh();
            }
            Event::Stopping { reason, running } => {
                let line = match reason {
                    super::StopReason::Interrupted => format!(
                        "interrupt: starting nothing new; waiting for {running} running task(s) to finish (press Ctrl-C again to cancel them)"
                    ),
                    super::StopReason::LockLost(_) => format!(
                        "stopping ({reason}): starting nothing new; cancelling {running} running task(s)"
                    ),
                    other => format!(
                        "stopping ({other}): starting nothing new; waiting for {running} running task(s) to finish"
                    ),
                };
                inner.line(&line);
            }
            // The display spans the phases: it ends with `Progress::finish`.
            Event::End { .. } => inner.refresh(),
        }
    }
}
