//! What a person watching a run sees.
//!
//! On a terminal: one progress bar (tasks, rows, bytes, ETA) with failures and retries
//! printed above it. Otherwise (CI logs, pipes): one plain line per event, starting
//! with a fixed status word — `started`, `done`, `failed`, `skipped`, `retry` — so the
//! output is greppable. This is user output, separate from `tracing` logs.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{HumanBytes, HumanCount, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::scheduler::Start;
use super::{Event, Observer};

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
    rows: u64,
    bytes: u64,
    running: usize,
}

/// The progress observer.
pub struct Progress {
    inner: Mutex<Inner>,
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

impl Progress {
    pub fn new(mode: ProgressMode) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Plain,
            other => other,
        };
        let sink = match mode {
            ProgressMode::Bar => {
                let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} tasks  {msg}  ETA {eta}",
                    )
                    .expect("the progress template is valid"),
                );
                bar.enable_steady_tick(Duration::from_millis(200));
                Sink::Bar(bar)
            }
            ProgressMode::Plain => Sink::Lines(Box::new(std::io::stderr())),
            _ => Sink::Quiet,
        };
        Self::with_sink(sink)
    }

    /// Plain lines into `out` (tests).
    pub fn lines(out: Box<dyn Write + Send>) -> Self {
        Self::with_sink(Sink::Lines(out))
    }

    fn with_sink(sink: Sink) -> Self {
        Progress {
            inner: Mutex::new(Inner {
                sink,
                rows: 0,
                bytes: 0,
                running: 0,
            }),
        }
    }

    /// Prints a line above the bar, or as a plain line.
    pub fn println(&self, line: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.line(line);
    }

    /// Removes the bar (before printing a summary).
    pub fn finish(&self) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Sink::Bar(bar) = &inner.sink {
            bar.finish_and_clear();
        }
    }
}

impl Inner {
    fn line(&mut self, line: &str) {
        let line = crate::redact::text(line);
        let line = line.as_str();
        match &mut self.sink {
            Sink::Bar(bar) => bar.println(line),
            Sink::Lines(out) => {
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            Sink::Quiet => {}
        }
    }

    fn is_bar(&self) -> bool {
        matches!(self.sink, Sink::Bar(_))
    }

    fn update_message(&self) {
        if let Sink::Bar(bar) = &self.sink {
            let mut msg = format!("{} running", self.running);
            if self.rows > 0 {
                msg.push_str(&format!(", {} rows", HumanCount(self.rows)));
            }
            if self.bytes > 0 {
                msg.push_str(&format!(", {}", HumanBytes(self.bytes)));
            }
            bar.set_message(msg);
        }
    }
}

impl Observer for Progress {
    fn event(&self, event: &Event<'_>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Begin { phase, starts, .. } => {
                let to_run = starts.iter().filter(|s| matches!(s, Start::Run)).count();
                if let Sink::Bar(bar) = &inner.sink {
                    bar.set_prefix(phase.to_string());
                    bar.set_length(to_run as u64);
                    bar.set_position(0);
                    bar.reset_eta();
                }
                inner.running = 0;
                inner.update_message();
            }
            Event::Started { task, attempt } => {
                inner.running += 1;
                if !inner.is_bar() {
                    let suffix = if *attempt > 1 {
                        format!(" (attempt {attempt})")
                    } else {
                        String::new()
                    };
                    inner.line(&format!("started {}{suffix}", task.id));
                }
                inner.update_message();
            }
            Event::Done {
                task,
                outcome,
                elapsed,
                ..
            } => {
                inner.running = inner.running.saturating_sub(1);
                inner.rows += outcome.rows.unwrap_or(0);
                inner.bytes += outcome.bytes.unwrap_or(0);
                if let Sink::Bar(bar) = &inner.sink {
                    bar.inc(1);
                } else {
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
                inner.update_message();
            }
            Event::Retry {
                task,
                attempt,
                max_attempts,
                delay,
                failure,
            } => {
                inner.running = inner.running.saturating_sub(1);
                inner.line(&format!(
                    "retry {} in {} (attempt {} of {max_attempts} failed: {})",
                    task.id,
                    short(*delay),
                    attempt,
                    failure.message
                ));
                inner.update_message();
            }
            Event::Failed {
                task,
                attempts,
                error,
            } => {
                inner.running = inner.running.saturating_sub(1);
                if let Sink::Bar(bar) = &inner.sink {
                    bar.inc(1);
                }
                let plural = if *attempts == 1 { "" } else { "s" };
                inner.line(&format!(
                    "failed {} after {attempts} attempt{plural}: {error}",
                    task.id
                ));
                inner.update_message();
            }
            Event::Skipped { task, because } => {
                if let Sink::Bar(bar) = &inner.sink {
                    bar.inc(1);
                } else {
                    inner.line(&format!(
                        "skipped {}: dependency `{because}` failed",
                        task.id
                    ));
                }
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
            Event::End { .. } => {
                if let Sink::Bar(bar) = &inner.sink {
                    bar.finish_and_clear();
                }
            }
        }
    }
}
