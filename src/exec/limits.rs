//! Concurrency limits: a global bound, per-connection bounds, per-connection pauses.
//!
//! Permits are semaphores, taken without waiting and always in the same order —
//! global first, then each connection in the task's sorted `connections` order — and
//! given back all together when the task ends (the permits live in the task's future
//! and are dropped with it). Taking them only with `try_acquire` from the single
//! scheduler loop means a task that cannot get all of them takes none, so two tasks
//! needing the same pair of connections can never hold one each and wait forever.
//!
//! `pause_between` is the minimum gap between two task starts on a connection (the
//! "insert interval" of hand-written migration scripts): a server that needs breathing room between heavy
//! statements gets it without lowering its concurrency to one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The limits of one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionLimit {
    pub max_concurrency: Option<usize>,
    pub pause_between: Option<Duration>,
}

struct Conn {
    semaphore: Option<Arc<Semaphore>>,
    pause: Option<Duration>,
    next_start: Option<Instant>,
}

/// What keeps a task from starting now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// The global bound is reached: nothing else can start either.
    Global,
    /// A connection's bound is reached.
    Connection(String),
    /// A connection's pause runs until then.
    Pause(Instant),
}

/// The permits of one running task; dropping them frees the slots.
#[derive(Debug)]
pub struct Permits {
    _global: OwnedSemaphorePermit,
    _connections: Vec<OwnedSemaphorePermit>,
}

pub struct Limits {
    global: Arc<Semaphore>,
    connections: HashMap<String, Conn>,
}

impl Limits {
    pub fn new(
        global: usize,
        connections: impl IntoIterator<Item = (String, ConnectionLimit)>,
    ) -> Self {
        Limits {
            global: Arc::new(Semaphore::new(global.max(1))),
            connections: connections
                .into_iter()
                .map(|(name, limit)| {
                    let conn = Conn {
                        semaphore: limit
                            .max_concurrency
                            .map(|n| Arc::new(Semaphore::new(n.max(1)))),
                        pause: limit.pause_between.filter(|p| !p.is_zero()),
                        next_start: None,
                    };
                    (name, conn)
                })
                .collect(),
        }
    }

    /// Free global slots.
    pub fn available(&self) -> usize {
        self.global.available_permits()
    }

    /// Takes every permit a task on `connections` (sorted) needs, or none.
    pub fn try_acquire(
        &mut self,
        connections: &[String],
        now: Instant,
    ) -> Result<Permits, Blocked> {
        debug_assert!(
            connections.windows(2).all(|w| w[0] < w[1]),
            "connections are sorted"
        );
        let mut pause_until: Option<Instant> = None;
        for name in connections {
            if let Some(at) = self.connections.get(name).and_then(|c| c.next_start) {
                if at > now {
                    pause_until = Some(pause_until.map_or(at, |p| p.max(at)));
                }
            }
        }
        if let Some(at) = pause_until {
            return Err(Blocked::Pause(at));
        }
        let global = self
            .global
            .clone()
            .try_acquire_owned()
            .map_err(|_| Blocked::Global)?;
        let mut taken = Vec::new();
        for name in connections {
            if let Some(sem) = self.connections.get(name).and_then(|c| c.semaphore.clone()) {
                match sem.try_acquire_owned() {
                    Ok(p) => taken.push(p),
                    // Dropping `taken` and `global` gives back what was taken.
                    Err(_) => return Err(Blocked::Connection(name.clone())),
                }
            }
        }
        for name in connections {
            if let Some(conn) = self.connections.get_mut(name) {
                if let Some(pause) = conn.pause {
                    conn.next_start = Some(now + pause);
                }
            }
        }
        Ok(Permits {
            _global: global,
            _connections: taken,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn global_and_connection_bounds_hold_and_release_on_drop() {
        let mut limits = Limits::new(
            3,
            [(
                "ch".to_string(),
                ConnectionLimit {
                    max_concurrency: Some(1),
                    pause_between: None,
                },
            )],
        );
        let now = Instant::now();
        let a = limits.try_acquire(&names(&["ch"]), now).unwrap();
        assert_eq!(
            limits.try_acquire(&names(&["ch", "s3"]), now).unwrap_err(),
            Blocked::Connection("ch".into())
        );
        // The failed attempt gave its global permit back.
        assert_eq!(limits.available(), 2);
        let _b = limits.try_acquire(&names(&["s3"]), now).unwrap();
        let _c = limits.try_acquire(&[], now).unwrap();
        assert_eq!(limits.try_acquire(&[], now).unwrap_err(), Blocked::Global);
        drop(a);
        limits.try_acquire(&names(&["ch"]), now).unwrap();
    }

    #[test]
    fn pause_between_spaces_starts_on_a_connection() {
        let mut limits = Limits::new(
            10,
            [(
                "ch".to_string(),
                ConnectionLimit {
                    max_concurrency: None,
                    pause_between: Some(Duration::from_secs(1)),
                },
            )],
        );
        let now = Instant::now();
        let _a = limits.try_acquire(&names(&["ch"]), now).unwrap();
        assert_eq!(
            limits.try_acquire(&names(&["ch"]), now).unwrap_err(),
            Blocked::Pause(now + Duration::from_secs(1))
        );
        limits.try_acquire(&names(&["other"]), now).unwrap();
        limits
            .try_acquire(&names(&["ch"]), now + Duration::from_secs(1))
            .unwrap();
    }
}
