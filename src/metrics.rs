//! Prometheus metrics of a run: the gauges of the migration dashboards teams already
//! run (`failed_tables`, `migration_duration_seconds`, …), in the text exposition
//! format, written to a file at the end (`--metrics-file`, for node_exporter's textfile
//! collector) and served while running (`--metrics-addr`, `GET /metrics`).
//!
//! The metrics observe the scheduler's events, so they cost nothing when nobody asks.
//! Every series carries a `plan` label; the names are unprefixed, so the usual
//! alert rules (`failed_tables > 0`, `migration_duration_seconds > 3600`,
//! `migration_errors_total > 10`) work as written. The server is a few lines of tokio
//! TCP: one request per connection, `GET /metrics` or 404.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::exec::{Event, Observer, Start};
use crate::graph::{Task, WorkUnit};

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    total: u64,
    done: u64,
    failed: u64,
    skipped: u64,
}

impl Counts {
    fn complete(&self) -> bool {
        self.total > 0 && self.done == self.total
    }
}

#[derive(Debug, Default)]
struct State {
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
    tables: BTreeMap<usize, Counts>,
    partitions: BTreeMap<(usize, String), Counts>,
    volumes: BTreeMap<usize, Counts>,
    errors: u64,
}

impl State {
    fn units(&mut self, task: &Task) -> (Option<&mut Counts>, Option<&mut Counts>) {
        let partition = match &task.unit {
            WorkUnit::Partition {
                table, partition, ..
            } => self.partitions.get_mut(&(*table, partition.id.clone())),
            _ => None,
        };
        let table = task.unit.table().and_then(|t| self.tables.get_mut(&t));
        (table, partition)
    }

    fn bump(&mut self, task: &Task, f: impl Fn(&mut Counts)) {
        let (table, partition) = self.units(task);
        if let Some(c) = table {
            f(c);
        }
        if let Some(c) = partition {
            f(c);
        }
        if let Some(c) = task.unit.volume().and_then(|v| self.volumes.get_mut(&v)) {
            f(c);
        }
    }
}

/// The metrics of one plan's run.
#[derive(Debug)]
pub struct Metrics {
    plan: String,
    state: Mutex<State>,
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn new(plan: &str) -> Arc<Self> {
        Arc::new(Metrics {
            plan: plan.to_string(),
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the start of the migration (once).
    pub fn start(&self, at: DateTime<Utc>) {
        self.lock().start.get_or_insert(at);
    }

    /// Marks the end of the migration.
    pub fn finish(&self, at: DateTime<Utc>) {
        self.lock().end = Some(at);
    }

    /// The text exposition format, masked by the run's redactor (file and endpoint).
    pub fn render(&self) -> String {
        let s = self.lock();
        let label = format!("{{plan=\"{}\"}}", escape(&self.plan));
        let ts = |t: Option<DateTime<Utc>>| t.map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0);
        let duration = match (s.start, s.end) {
            (Some(a), Some(b)) => (b - a).num_milliseconds() as f64 / 1000.0,
            (Some(a), None) => (Utc::now() - a).num_milliseconds() as f64 / 1000.0,
            _ => 0.0,
        };
        let tables = s.tables.values();
        let completed_tables = tables.clone().filter(|c| c.complete()).count();
        let failed_tables = tables.clone().filter(|c| c.failed > 0).count();
        let skipped_tables = tables
            .clone()
            .filter(|c| c.failed == 0 && c.skipped > 0)
            .count();
        let completed_partitions = s.partitions.values().filter(|c| c.complete()).count();
        let completed_volumes = s.volumes.values().filter(|c| c.complete()).count();
        let failed_volumes = s.volumes.values().filter(|c| c.failed > 0).count();
        let rows: [(&str, &str, &str, f64); 13] = [
            ("migration_start_time", "gauge", "Unix time the migration started.", ts(s.start)),
            ("migration_end_time", "gauge", "Unix time the migration ended (0 while running).", ts(s.end)),
            ("migration_duration_seconds", "gauge", "Seconds from start to end, or to now while running.", duration),
            ("total_tables", "gauge", "Tables in the plan.", s.tables.len() as f64),
            ("completed_tables", "gauge", "Tables whose every task is done.", completed_tables as f64),
            ("failed_tables", "gauge", "Tables with a failed task.", failed_tables as f64),
            ("skipped_tables", "gauge", "Tables with tasks skipped because a dependency failed, and no failure of their own.", skipped_tables as f64),
            ("total_partitions", "gauge", "Partitions (after split) in the plan.", s.partitions.len() as f64),
            ("completed_partitions", "gauge", "Partitions whose every task is done.", completed_partitions as f64),
            ("total_volumes", "gauge", "Volume entries in the plan.", s.volumes.len() as f64),
            ("completed_volumes", "gauge", "Volume entries whose every task is done.", completed_volumes as f64),
            ("failed_volumes", "gauge", "Volume entries with a failed task.", failed_volumes as f64),
            ("migration_errors_total", "counter", "Failed task attempts, retried or not.", s.errors as f64),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name}{label} {value}");
        }
        crate::redact::text(&out)
    }

    /// Writes the metrics to `path` atomically (write, then rename).
    pub fn write_file(&self, path: &Path) -> std::io::Result<()> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = path.with_extension("prom.tmp");
        std::fs::write(&tmp, self.render())?;
        std::fs::rename(&tmp, path)
    }

    /// Serves `GET /metrics` on `addr` until `cancel`; returns the bound address.
    pub async fn serve(
        self: &Arc<Self>,
        addr: SocketAddr,
        cancel: CancellationToken,
    ) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let metrics = self.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = cancel.cancelled() => break,
                };
                let Ok((mut stream, _)) = accepted else {
                    continue;
                };
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut len = 0;
                    let read = async {
                        while len < buf.len() {
                            let n = stream.read(&mut buf[len..]).await?;
                            if n == 0 {
                                break;
                            }
                            len += n;
                            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                                break;
                            }
                        }
                        Ok::<_, std::io::Error>(())
                    };
                    if tokio::time::timeout(std::time::Duration::from_secs(5), read)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let request = String::from_utf8_lossy(&buf[..len]);
                    let first = request.lines().next().unwrap_or_default();
                    let mut parts = first.split_whitespace();
                    let (method, target) = (parts.next(), parts.next());
                    let response = match (method, target) {
                        (Some("GET"), Some(t)) if t == "/metrics" || t.starts_with("/metrics?") => {
                            let body = metrics.render();
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            )
                        }
                        _ => {
                            let body = "not found; metrics are at /metrics\n";
                            format!(
                                "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            )
                        }
                    };
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Ok(local)
    }
}

impl Observer for Metrics {
    fn event(&self, event: &Event<'_>) {
        let mut s = self.lock();
        match event {
            Event::Begin { graph, starts, .. } => {
                s.start.get_or_insert_with(Utc::now);
                s.tables.clear();
                s.partitions.clear();
                s.volumes.clear();
                for index in graph.indices() {
                    let task = graph.task(index);
                    if let Some(t) = task.unit.table() {
                        s.tables.entry(t).or_default();
                    }
                    if let Some(v) = task.unit.volume() {
                        s.volumes.entry(v).or_default();
                    }
                    if let WorkUnit::Partition {
                        table, partition, ..
                    } = &task.unit
                    {
                        s.partitions
                            .entry((*table, partition.id.clone()))
                            .or_default();
                    }
                    let done = matches!(starts[index.index()], Start::Done(_));
                    s.bump(task, |c| {
                        c.total += 1;
                        c.done += u64::from(done);
                    });
                }
            }
            Event::Done { task, .. } => s.bump(task, |c| c.done += 1),
            Event::Failed { task, .. } => {
                s.errors += 1;
                s.bump(task, |c| c.failed += 1);
            }
            Event::Retry { .. } => s.errors += 1,
            Event::Skipped { task, .. } => s.bump(task, |c| c.skipped += 1),
            Event::Started { .. } | Event::Stopping { .. } | Event::End { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::runner::{TaskFailure, TaskOutcome};
    use crate::graph::{Partition, Placement, TaskGraph, TaskKind};
    use std::collections::BTreeMap;

    fn graph() -> TaskGraph {
        let mut g = TaskGraph::new();
        for (table, part) in [(0, "a"), (0, "b"), (1, "c")] {
            let p = Arc::new(Partition {
                id: part.into(),
                value: None,
                filter: None,
                rows: None,
                bytes: None,
                chunks: vec![],
            });
            g.add(Task::new(
                format!("t{table}/{part}/export"),
                TaskKind::Export,
                WorkUnit::Partition {
                    table,
                    partition: p,
                    chunk: None,
                },
                vec![],
                Placement::InServer,
                BTreeMap::new(),
            ))
            .unwrap();
        }
        g
    }

    fn value(text: &str, name: &str) -> f64 {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn counts_tables_partitions_and_errors() {
        let g = graph();
        let m = Metrics::new("trips");
        let starts = vec![Start::Run, Start::Done(TaskOutcome::default()), Start::Run];
        m.event(&Event::Begin {
            phase: "run",
            graph: &g,
            starts: &starts,
        });
        let t = |i: usize| g.task(petgraph::graph::NodeIndex::new(i));
        m.event(&Event::Retry {
            task: t(0),
            attempt: 1,
            max_attempts: 3,
            delay: std::time::Duration::ZERO,
            failure: &TaskFailure::transient("x"),
        });
        m.event(&Event::Done {
            task: t(0),
            outcome: &TaskOutcome::default(),
            attempts: 2,
            elapsed: std::time::Duration::ZERO,
        });
        m.event(&Event::Failed {
            task: t(2),
            attempts: 1,
            error: "boom",
        });
        m.finish(Utc::now());
        let text = m.render();
        assert_eq!(value(&text, "total_tables"), 2.0);
        assert_eq!(value(&text, "completed_tables"), 1.0);
        assert_eq!(value(&text, "failed_tables"), 1.0);
        assert_eq!(value(&text, "total_partitions"), 3.0);
        assert_eq!(value(&text, "completed_partitions"), 2.0);
        assert_eq!(value(&text, "migration_errors_total"), 2.0);
        assert!(value(&text, "migration_end_time") > 0.0);
        assert!(text.contains("# TYPE migration_errors_total counter"));
        assert!(text.contains("plan=\"trips\""));
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let m = Metrics::new("p");
        let cancel = CancellationToken::new();
        let addr = m
            .serve("127.0.0.1:0".parse().unwrap(), cancel.clone())
            .await
            .unwrap();
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("total_tables{plan=\"p\"} 0"), "{ok}");
        assert!(get("/other").await.starts_with("HTTP/1.1 404"));
        cancel.cancel();
    }
}
