//! Strategies: what a `[[tables]]` entry turns into.
//!
//! A strategy owns all of itself: its settings (typed, decoded from the entry's
//! `settings`), its checks of the table entry (connection kinds, own keys, rules), its
//! expansion into tasks, and which engine role runs them ([`Runtime`], with the settings
//! decoded for the engine). Engines do the work at run time. Adding a strategy is one
//! module here, one variant in [`StrategyKind`] (in `plan`, which names the kinds) and one
//! line in [`StrategyKind::strategy`]; a strategy of a new engine role adds that role's
//! runtime in `runtime::table`.

pub mod copy;
pub mod export;
pub mod s3_policy;
pub mod volume;

use std::sync::Arc;

use std::collections::BTreeMap;

use petgraph::graph::NodeIndex;

use crate::plan::schema::ConnectionKind;
use crate::plan::{Plan, SettingValue, TableSpec};
use crate::task::{GraphError, Partition, Placement, TaskKind};

pub use crate::plan::StrategyKind;

/// What a strategy adds a table's tasks through: the graph builder implements it, so a
/// strategy knows the tasks it wants and their order, not how the graph keeps them.
/// Task ids are `<table>/<name>` and `<table>/<partition>[/cNNN]/<name>`; every task
/// gets the table's shared inputs (and its templates') for its fingerprint.
pub trait TaskSink {
    /// Whether the table is listed partition by partition (mode = "partition").
    fn is_partitioned(&self) -> bool;
    /// The table's split task (reading the source's metadata); None in mode all.
    fn split_task(&mut self) -> Result<Option<NodeIndex>, GraphError>;
    /// A task about the whole table.
    fn table_task(
        &mut self,
        name: &str,
        kind: TaskKind,
        placement: Placement,
        connections: Vec<String>,
        inputs: BTreeMap<String, String>,
    ) -> Result<NodeIndex, GraphError>;
    /// A task about one partition (or chunk of it); its row filter joins the inputs.
    fn partition_task(
        &mut self,
        unit: (&Arc<Partition>, Option<u32>),
        name: &str,
        kind: TaskKind,
        placement: Placement,
        connections: Vec<String>,
        inputs: BTreeMap<String, String>,
    ) -> Result<NodeIndex, GraphError>;
    /// `task` runs after `after`.
    fn depend(&mut self, task: NodeIndex, after: NodeIndex);
    /// The table's `path` template (or `default`) rendered for one unit.
    fn render_path(
        &self,
        default: &str,
        partition: &Partition,
        chunk: Option<u32>,
    ) -> Result<String, GraphError>;
}

/// What a strategy needs from a plan's table entry, checked before expansion.
pub struct Requirements {
    /// Connection kinds allowed as the source.
    pub source_kinds: Vec<ConnectionKind>,
    /// Connection kinds allowed as the target; empty = no target.
    pub target_kinds: Vec<ConnectionKind>,
    /// Whether `target` must be set.
    pub target_required: bool,
    /// Whether a `query` may replace `table`.
    pub allows_query: bool,
    /// Whether `table = "*"` (every table of the database) is allowed.
    pub allows_whole_database: bool,
    /// Whether it works partition by partition only (no `mode = "all"`; partition
    /// mode by default).
    pub partitioned: bool,
    /// `swap` when the entry does not say.
    pub swap_by_default: bool,
}

/// What a source engine of a strategy cannot do, checked against the table entry.
#[derive(Default)]
pub struct SourceLimits {
    /// The export formats it writes; None = every format.
    pub formats: Option<&'static [crate::plan::ExportFormat]>,
    /// Table keys it cannot honour, each with the fix to print.
    pub unsupported: &'static [(&'static str, &'static str)],
}

/// What the checker knows of a table entry that a strategy's own rules need.
pub struct EntryContext<'a> {
    /// Names the entry in messages.
    pub label: &'a str,
    /// The source database (`default` when the entry does not say).
    pub database: &'a str,
    /// The source table (None for a query).
    pub table: Option<&'a str>,
    /// Whether two connections reach one server.
    pub same_server: &'a dyn Fn(&str, &str) -> bool,
}

/// What a strategy's own rule finds wrong in a table entry (the checker reports it at
/// `at`, or at the entry).
pub struct EntryProblem {
    pub at: Option<std::ops::Range<usize>>,
    pub message: String,
    pub label: &'static str,
    pub help: String,
}

/// A setting a strategy reads from a table's `settings` (`settings.verify_read_back`).
pub struct Setting {
    pub key: &'static str,
    pub kind: SettingKind,
    /// The fix to print for a bad value.
    pub help: &'static str,
}

/// What a setting's value must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SettingKind {
    /// `"true"` or `"false"`.
    Bool,
    /// A table name (flow quotes it).
    TableName,
    /// An object key in the target store.
    ObjectKey,
    /// Any non-empty text.
    Text,
    /// One of these words.
    Choice(&'static [&'static str]),
    /// A positive integer.
    Integer,
}

impl SettingKind {
    /// The value, decoded; or why it is not one of this kind.
    pub fn check(self, value: &toml::Value) -> Result<SettingValue, String> {
        let text = match (self, value) {
            (SettingKind::Bool, toml::Value::Boolean(b)) => return Ok(SettingValue::Bool(*b)),
            (SettingKind::Bool, _) => {
                return Err("expected true or false (a TOML boolean, without quotes)".into())
            }
            (SettingKind::Integer, toml::Value::Integer(n))
                if (1..=i64::from(i32::MAX)).contains(n) =>
            {
                return Ok(SettingValue::Integer(*n))
            }
            (SettingKind::Integer, toml::Value::Integer(_)) => {
                return Err(format!("expected a positive integer up to {}", i32::MAX))
            }
            (SettingKind::Integer, _) => {
                return Err("expected a positive integer (a TOML integer, without quotes)".into())
            }
            (_, toml::Value::String(s)) => s,
            (_, _) => return Err("expected a string".into()),
        };
        match self {
            _ if text.trim().is_empty() => Err("empty".into()),
            SettingKind::TableName if text.contains('\0') || text.len() > 200 => {
                Err("not a table name (at most 200 characters, no NUL)".into())
            }
            SettingKind::Choice(words) if !words.contains(&text.as_str()) => {
                Err(format!("not one of {}", words.join(", ")))
            }
            SettingKind::ObjectKey => {
                crate::engines::store::check_key(text).map_err(|e| e.to_string())?;
                Ok(SettingValue::Text(text.clone()))
            }
            _ => Ok(SettingValue::Text(text.clone())),
        }
    }
}

/// One strategy.
pub trait Strategy: Sync {
    /// What the strategy is for, one line (`flow plan`, `flow schema`).
    fn summary(&self) -> &'static str;
    fn requirements(&self) -> Requirements;
    /// Adds the table's tasks. `partitions` is None when they are listed at apply time.
    fn expand(
        &self,
        plan: &Plan,
        table: &TableSpec,
        partitions: Option<&[Arc<Partition>]>,
        builder: &mut dyn TaskSink,
    ) -> Result<(), GraphError>;
    /// The engine templates a task of `kind` renders from a `source` connection (its
    /// fingerprint covers them).
    fn templates(&self, source: ConnectionKind, kind: TaskKind) -> Vec<&'static str>;
    /// Table keys no other strategy uses (set on a table of another strategy, they are
    /// an error: they would be ignored).
    fn own_keys(&self) -> &'static [&'static str] {
        &[]
    }
    /// The settings it reads from a table's `settings`, checked at validate.
    fn settings(&self) -> &'static [Setting] {
        &[]
    }
    /// The strategy's rules on a table entry beyond its keys and settings (which
    /// combinations mean nothing).
    fn check_entry(
        &self,
        _def: &crate::plan::schema::TableDef,
        _entry: &EntryContext<'_>,
    ) -> Vec<EntryProblem> {
        Vec::new()
    }
    /// What a source of kind `source` cannot do for this strategy.
    fn source_limits(&self, _source: ConnectionKind) -> SourceLimits {
        SourceLimits::default()
    }
    /// How the table is moved, one line for `flow plan`, when the strategy has modes.
    fn mode_line(&self, _table: &TableSpec) -> Option<String> {
        None
    }
    /// Which engine role runs the table's tasks, with the strategy's settings decoded
    /// for it.
    fn runtime(&self, table: &TableSpec) -> Runtime;
}

/// The engine role a strategy's tasks run through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// An export source writes units into a store (`engines::source::ExportSource`).
    Export,
    /// A migration engine moves the table on its servers
    /// (`engines::migration::TableMigration`), with these settings.
    Migration(crate::engines::migration::MigrationSettings),
}

/// Each kind's strategy: the registry, one line per strategy.
impl StrategyKind {
    pub fn strategy(self) -> &'static dyn Strategy {
        match self {
            StrategyKind::Export => &export::Export,
            StrategyKind::Copy => &copy::Copy,
            StrategyKind::S3Policy => &s3_policy::S3Policy,
        }
    }
}
