//! Counts, rates and the ETA of a run, from task events and the times they happened.
//!
//! Pure: every method takes the time of the event (since the run began) instead of
//! reading a clock, so the arithmetic is tested with synthetic timelines.
//!
//! - The total only grows ([`Estimate::plan`]): a phase adds the tasks it will run.
//!   While a phase says more tasks will follow (a split that has not listed the
//!   partitions yet), there is no ETA: the remaining work is not known.
//! - Throughput is measured over the last [`WINDOW`] finished tasks (from the first
//!   start until that many have finished): the time those took, up to now. A window of
//!   completions rather than of time smooths the bursts of a bounded pool (tasks of
//!   similar size finish together) and still follows a change of pace.
//! - No ETA until [`MIN_FINISHED`] tasks have finished in this run.
//! - Skipped tasks count as finished (nothing is left to do for them) but not as
//!   throughput: they take no time.

use std::collections::VecDeque;
use std::time::Duration;

/// Finished tasks the throughput is measured over.
pub const WINDOW: usize = 20;
/// Finished tasks before an ETA is given.
pub const MIN_FINISHED: usize = 3;
/// A measuring span never shorter than this (a burst of instant tasks is not a rate).
const MIN_SPAN: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, Debug)]
struct Mark {
    at: Duration,
    /// Rows and bytes finished up to and including this task.
    rows: u64,
    bytes: u64,
}

/// What is known of a run at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Tasks finished in this run: done, failed or skipped.
    pub finished: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Tasks this run has planned so far; grows when a phase adds tasks.
    pub total: usize,
    /// More tasks will be added (the total is a lower bound).
    pub more_to_come: bool,
    pub rows: u64,
    pub bytes: u64,
    /// Recent rates (see the module docs); `None` before any task finished.
    pub rows_per_sec: Option<f64>,
    pub bytes_per_sec: Option<f64>,
    pub eta: Option<Duration>,
}

/// The running estimate; feed it events in time order.
#[derive(Clone, Debug, Default)]
pub struct Estimate {
    total: usize,
    more_to_come: bool,
    finished: usize,
    failed: usize,
    skipped: usize,
    rows: u64,
    bytes: u64,
    first_start: Option<Duration>,
    /// Finished (done or failed) tasks, in this run.
    completed: usize,
    /// The last `WINDOW + 1` completions.
    recent: VecDeque<Mark>,
}

impl Estimate {
    pub fn new() -> Self {
        Self::default()
    }

    /// A phase adds `tasks` to run; `more_to_come`: a later phase will add more.
    pub fn plan(&mut self, tasks: usize, more_to_come: bool) {
        self.total += tasks;
        self.more_to_come = more_to_come;
    }

    /// A task (attempt) started.
    pub fn started(&mut self, at: Duration) {
        self.first_start.get_or_insert(at);
    }

    /// A task finished, done (`failed == false`) or failed for good.
    pub fn finished(&mut self, at: Duration, rows: u64, bytes: u64, failed: bool) {
        self.first_start.get_or_insert(at);
        self.finished += 1;
        self.completed += 1;
        if failed {
            self.failed += 1;
        }
        self.rows += rows;
        self.bytes += bytes;
        self.recent.push_back(Mark {
            at,
            rows: self.rows,
            bytes: self.bytes,
        });
        if self.recent.len() > WINDOW + 1 {
            self.recent.pop_front();
        }
    }

    /// A task was skipped because a dependency failed.
    pub fn skipped(&mut self) {
        self.finished += 1;
        self.skipped += 1;
    }

    /// The tasks the window covers, their rows and bytes, and the span they took.
    fn window(&self, now: Duration) -> Option<(usize, u64, u64, Duration)> {
        let (count, rows, bytes, since) = if self.recent.len() > WINDOW {
            let base = self.recent.front()?;
            (
                WINDOW,
                self.rows - base.rows,
                self.bytes - base.bytes,
                base.at,
            )
        } else {
            (self.completed, self.rows, self.bytes, self.first_start?)
        };
        if count == 0 {
            return None;
        }
        Some((count, rows, bytes, now.saturating_sub(since).max(MIN_SPAN)))
    }

    pub fn snapshot(&self, now: Duration) -> Snapshot {
        let window = self.window(now);
        let per_sec = |n: u64| window.map(|(_, _, _, span)| n as f64 / span.as_secs_f64());
        let remaining = self.total.saturating_sub(self.finished);
        let eta = match window {
            _ if self.more_to_come => None,
            _ if remaining == 0 => Some(Duration::ZERO),
            _ if self.completed < MIN_FINISHED => None,
            Some((count, _, _, span)) => {
                let tasks_per_sec = count as f64 / span.as_secs_f64();
                Some(Duration::from_secs_f64(
                    (remaining as f64 / tasks_per_sec).min(1e9),
                ))
            }
            None => None,
        };
        Snapshot {
            finished: self.finished,
            failed: self.failed,
            skipped: self.skipped,
            total: self.total.max(self.finished),
            more_to_come: self.more_to_come,
            rows: self.rows,
            bytes: self.bytes,
            rows_per_sec: window.map(|w| w.1).and_then(per_sec),
            bytes_per_sec: window.map(|w| w.2).and_then(per_sec),
            eta,
        }
    }

    /// Average rows and bytes per second from the first start to `now`.
    pub fn average(&self, now: Duration) -> Option<(f64, f64)> {
        let span = now
            .saturating_sub(self.first_start?)
            .max(Duration::from_millis(1))
            .as_secs_f64();
        Some((self.rows as f64 / span, self.bytes as f64 / span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// A pool of `slots` running `durations` in order: (start, end) of each task.
    fn timeline(slots: usize, durations: &[f64]) -> Vec<(f64, f64)> {
        let mut free = vec![0.0f64; slots];
        durations
            .iter()
            .map(|d| {
                let (slot, start) = free
                    .iter()
                    .copied()
                    .enumerate()
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .unwrap();
                free[slot] = start + d;
                (start, start + d)
            })
            .collect()
    }

    /// Deterministic durations between `lo` and `hi` seconds.
    fn durations(n: usize, lo: f64, hi: f64) -> Vec<f64> {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                lo + (hi - lo) * ((x % 1000) as f64 / 1000.0)
            })
            .collect()
    }

    /// Feeds the timeline's starts and ends in time order; calls `seen` after every
    /// completion with (time, estimate, completions so far).
    fn replay(
        estimate: &mut Estimate,
        tasks: &[(f64, f64)],
        rows_each: u64,
        mut seen: impl FnMut(f64, &Estimate, usize),
    ) {
        let mut events: Vec<(f64, bool)> = tasks
            .iter()
            .flat_map(|&(s, e)| [(s, false), (e, true)])
            .collect();
        events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut done = 0;
        for (at, end) in events {
            if end {
                estimate.finished(secs(at), rows_each, rows_each * 100, false);
                done += 1;
                seen(at, estimate, done);
            } else {
                estimate.started(secs(at));
            }
        }
    }

    #[test]
    fn no_eta_until_a_few_tasks_are_done() {
        let mut e = Estimate::new();
        e.plan(10, false);
        e.started(secs(0.0));
        assert_eq!(e.snapshot(secs(1.0)).eta, None);
        assert_eq!(e.snapshot(secs(1.0)).rows_per_sec, None);
        for i in 1..MIN_FINISHED {
            e.finished(secs(i as f64), 10, 0, false);
            assert_eq!(e.snapshot(secs(i as f64)).eta, None, "after {i}");
        }
        e.finished(secs(MIN_FINISHED as f64), 10, 0, false);
        let s = e.snapshot(secs(MIN_FINISHED as f64));
        // 3 tasks in 3 s, 7 left: 7 s.
        assert_eq!(s.eta, Some(secs(7.0)));
        assert_eq!(s.rows_per_sec, Some(10.0));
    }

    #[test]
    fn eta_converges_to_the_time_left() {
        // 80 tasks of 8..12 s on 4 slots: about 200 s in all.
        let tasks = timeline(4, &durations(80, 8.0, 12.0));
        let end = tasks.iter().map(|t| t.1).fold(0.0, f64::max);
        let mut e = Estimate::new();
        e.plan(tasks.len(), false);
        let mut errors = Vec::new();
        replay(&mut e, &tasks, 1000, |at, e, done| {
            let eta = e.snapshot(secs(at)).eta;
            if done < MIN_FINISHED {
                assert_eq!(eta, None);
                return;
            }
            let left = end - at;
            let eta = eta.expect("an ETA after a few tasks").as_secs_f64();
            errors.push((done, left, (eta - left).abs()));
        });
        // Once the window is full, within 15% (or 8 s, a task's length) of the truth.
        for &(done, left, error) in errors.iter().filter(|e| e.0 > WINDOW) {
            assert!(
                error <= (0.15 * left).max(8.0),
                "after {done} tasks: {left:.1}s left, ETA off by {error:.1}s"
            );
        }
        // And it gets closer: the last quarter is better than the first.
        let quarter = errors.len() / 4;
        let mean = |s: &[(usize, f64, f64)]| s.iter().map(|e| e.2).sum::<f64>() / s.len() as f64;
        let (first, last) = (
            mean(&errors[..quarter]),
            mean(&errors[errors.len() - quarter..]),
        );
        assert!(
            last < first,
            "first quarter off by {first:.1}s, last {last:.1}s"
        );
        let s = e.snapshot(secs(end));
        assert_eq!(s.eta, Some(Duration::ZERO));
        assert_eq!((s.finished, s.total), (80, 80));
    }

    #[test]
    fn eta_follows_a_change_of_pace() {
        // 20 fast tasks (1 s), then 40 slow ones (10 s), one at a time.
        let mut d = vec![1.0; 20];
        d.extend(vec![10.0; 40]);
        let tasks = timeline(1, &d);
        let end = tasks.iter().map(|t| t.1).fold(0.0, f64::max);
        let mut e = Estimate::new();
        e.plan(tasks.len(), false);
        let mut last = None;
        replay(&mut e, &tasks, 1, |at, e, done| {
            if done == 20 + WINDOW + 1 {
                last = Some((end - at, e.snapshot(secs(at)).eta.unwrap()));
            }
        });
        let (left, eta) = last.unwrap();
        assert!(
            (eta.as_secs_f64() - left).abs() < 1.0,
            "{WINDOW} slow tasks in: {left}s left, ETA {eta:?}"
        );
    }

    #[test]
    fn total_grows_when_a_phase_adds_tasks_and_nothing_goes_back() {
        let mut e = Estimate::new();
        let mut seen: Vec<Snapshot> = Vec::new();
        // Split phase: 2 splits, more to come.
        e.plan(2, true);
        e.started(secs(0.0));
        e.started(secs(0.0));
        seen.push(e.snapshot(secs(0.5)));
        e.finished(secs(1.0), 0, 0, false);
        seen.push(e.snapshot(secs(1.0)));
        e.finished(secs(1.2), 0, 0, false);
        seen.push(e.snapshot(secs(1.2)));
        assert_eq!(seen.last().unwrap().eta, None, "more to come: no ETA");
        assert!(seen.last().unwrap().more_to_come);
        // Run phase: 38 more.
        e.plan(38, false);
        let grown = e.snapshot(secs(1.3));
        assert_eq!((grown.finished, grown.total), (2, 40));
        assert!(!grown.more_to_come);
        seen.push(grown);
        for i in 0..38 {
            let at = 2.0 + i as f64;
            e.started(secs(at - 1.0));
            if i == 5 {
                e.skipped();
            } else {
                e.finished(secs(at), 10, 1000, i == 7);
            }
            seen.push(e.snapshot(secs(at)));
        }
        for w in seen.windows(2) {
            assert!(w[1].total >= w[0].total, "total went back: {w:?}");
            assert!(w[1].finished >= w[0].finished, "finished went back: {w:?}");
            assert!(w[1].finished <= w[1].total, "{w:?}");
        }
        let last = seen.last().unwrap();
        assert_eq!(
            (last.finished, last.total, last.failed, last.skipped),
            (40, 40, 1, 1)
        );
        assert_eq!(last.rows, 370);
        assert_eq!(last.eta, Some(Duration::ZERO));
    }

    #[test]
    fn skipped_tasks_shorten_the_eta_but_are_no_throughput() {
        let mut a = Estimate::new();
        let mut b = Estimate::new();
        for e in [&mut a, &mut b] {
            e.plan(20, false);
            e.started(secs(0.0));
            for i in 1..=5 {
                e.finished(secs(i as f64), 0, 0, false);
            }
        }
        for _ in 0..5 {
            b.skipped();
        }
        // 5 tasks in 5 s: 15 left take 15 s; with 5 skipped, 10 s.
        assert_eq!(a.snapshot(secs(5.0)).eta, Some(secs(15.0)));
        assert_eq!(b.snapshot(secs(5.0)).eta, Some(secs(10.0)));
    }

    #[test]
    fn rates_are_recent_and_the_average_is_whole() {
        let mut e = Estimate::new();
        e.plan(100, false);
        e.started(secs(0.0));
        // A window of tasks of 1000 rows, one a second, then a window of 100 rows each.
        let n = WINDOW as u64;
        for i in 1..=n {
            e.finished(secs(i as f64), 1000, 0, false);
        }
        for i in n + 1..=2 * n {
            e.finished(secs(i as f64), 100, 0, false);
        }
        let now = secs(2.0 * n as f64);
        assert_eq!(e.snapshot(now).rows_per_sec, Some(100.0));
        let (rows, _) = e.average(now).unwrap();
        assert!((rows - 1100.0 * n as f64 / now.as_secs_f64()).abs() < 1e-9);
    }
}
