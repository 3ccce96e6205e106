//! Retries: exponential backoff with jitter, for transient failures only.
//!
//! The runner classifies (`TaskFailure::retryable`) from the engine's own error codes;
//! this module only decides *when*. The delay doubles from `base` up to `max`, and
//! "equal jitter" keeps half of it fixed and randomizes the other half, so retries of
//! many tasks that failed together (a server restart) spread out instead of arriving
//! in lockstep, while a retry never comes sooner than half the nominal delay.

use std::time::Duration;

use crate::exec::runner::TaskFailure;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 = never retry).
    pub retries: u32,
    /// Delay before the first retry.
    pub base: Duration,
    /// Upper bound of one delay.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 3,
            base: Duration::from_secs(2),
            max: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    pub fn new(retries: u32, base: Duration) -> Self {
        RetryPolicy {
            retries,
            base,
            ..RetryPolicy::default()
        }
    }

    pub fn never() -> Self {
        RetryPolicy::new(0, Duration::ZERO)
    }

    /// Attempts a task gets in total.
    pub fn max_attempts(&self) -> u32 {
        self.retries.saturating_add(1)
    }

    /// Nominal delay before the retry that follows failed attempt `attempt` (1-based).
    pub fn nominal(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay with jitter: between half and all of the nominal delay.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let nominal = self.nominal(attempt);
        let half = nominal / 2;
        let spread = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(fastrand::u64(0..=spread))
    }

    /// The delay before retrying, or None when `failure` after `attempt` is final.
    pub fn next_delay(&self, failure: &TaskFailure, attempt: u32) -> Option<Duration> {
        (failure.retryable && attempt < self.max_attempts()).then(|| self.backoff(attempt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_failures_are_retried_and_only_so_often() {
        let p = RetryPolicy::new(2, Duration::from_millis(100));
        let transient = TaskFailure::transient("reset");
        let permanent = TaskFailure::permanent("syntax error");
        assert!(p.next_delay(&transient, 1).is_some());
        assert!(p.next_delay(&transient, 2).is_some());
        assert!(p.next_delay(&transient, 3).is_none());
        assert!(p.next_delay(&permanent, 1).is_none());
        assert!(RetryPolicy::never().next_delay(&transient, 1).is_none());
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter() {
        let p = RetryPolicy {
            retries: 10,
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        assert_eq!(p.nominal(1), Duration::from_millis(100));
        assert_eq!(p.nominal(2), Duration::from_millis(200));
        assert_eq!(p.nominal(3), Duration::from_millis(400));
        assert_eq!(p.nominal(5), Duration::from_millis(1000));
        assert_eq!(p.nominal(100), Duration::from_millis(1000));
        for attempt in 1..6 {
            for _ in 0..100 {
                let d = p.backoff(attempt);
                assert!(
                    d >= p.nominal(attempt) / 2 && d <= p.nominal(attempt),
                    "{d:?}"
                );
            }
        }
    }
}
