//! Plans: load a TOML file, check it, and produce a resolved, typed [`Plan`].
//!
//! Three layers, each with one job: `schema` is the file as written (serde, spans;
//! `keys` reports every unknown key before serde stops at the first), the checker
//! ([`crate::check`], a layer above, since it asks the strategies, the engines and the
//! graph builder) turns it into a [`Plan`] and collects *every* problem at once, each
//! pointing at the file line with a fix, and `interpolate` resolves `${env:VAR}` only
//! when a value is needed, so secrets stay out of the plan model, logs and state.

pub mod destructive;
pub mod diagnostic;
pub mod identity;
pub mod interpolate;
pub mod keys;
pub mod partitions;
pub mod schema;
pub mod secrets;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use diagnostic::{Diagnostic, Diagnostics, Severity, SourceFile};
pub use interpolate::{Interpolated, Secret};
pub use schema::{ConnectionKind, Mode, StepKind};

/// A checked plan: every reference resolved, every value typed.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub description: Option<String>,
    /// The plan file, kept for error excerpts.
    pub source: Arc<SourceFile>,
    pub concurrency: usize,
    pub state_dir: PathBuf,
    pub templates_dir: Option<PathBuf>,
    pub report_path: PathBuf,
    pub retries: u32,
    pub retry_backoff: Duration,
    /// Template variables after `--var` overrides.
    pub vars: BTreeMap<String, String>,
    pub connections: BTreeMap<String, Connection>,
    pub tables: Vec<TableSpec>,
    pub volumes: Vec<VolumeSpec>,
    pub steps: Vec<StepSpec>,
}

impl Plan {
    /// The directory the plan file is in; relative paths in the plan are relative to it.
    pub fn base_dir(&self) -> &Path {
        self.source
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| Path::new("."))
    }

    pub fn connection(&self, name: &str) -> &Connection {
        self.connections
            .get(name)
            .expect("connection references are resolved by the checker")
    }

    /// Path of the embedded state database.
    pub fn state_db_path(&self) -> PathBuf {
        self.state_dir.join(format!("{}.db", self.name))
    }

    /// Indexes of whole-database entries (`table = "*"`), whose tables are listed at
    /// apply time.
    pub fn wildcard_tables(&self) -> Vec<usize> {
        self.tables
            .iter()
            .filter(|t| t.table.as_deref() == Some("*"))
            .map(|t| t.index)
            .collect()
    }

    /// The plan with each whole-database entry replaced by one entry per listed table.
    /// The new entries keep the wildcard entry's settings and remember it as their
    /// `group`, so `after = ["analytics.*"]` still waits for all of them.
    pub fn with_listed_tables(&self, listed: &BTreeMap<usize, Vec<String>>) -> Plan {
        let mut tables = Vec::new();
        for table in &self.tables {
            match listed.get(&table.index) {
                Some(names) => {
                    for name in names {
                        let mut t = table.clone();
                        t.name = format!("{}.{name}", table.database);
                        t.table = Some(name.clone());
                        t.group = Some(table.name.clone());
                        tables.push(t);
                    }
                }
                None => tables.push(table.clone()),
            }
        }
        for (index, t) in tables.iter_mut().enumerate() {
            t.index = index;
        }
        Plan {
            tables,
            ..self.clone()
        }
    }
}

/// A connection; text values keep their `${env:…}` form until resolved.
#[derive(Debug, Clone)]
pub struct Connection {
    pub name: String,
    pub kind: ConnectionKind,
    pub url: Option<Interpolated>,
    pub user: Option<Interpolated>,
    pub password: Option<Interpolated>,
    pub database: Option<Interpolated>,
    pub max_concurrency: Option<usize>,
    pub pause_between: Option<Duration>,
    pub endpoint: Option<Interpolated>,
    pub bucket: Option<Interpolated>,
    pub region: Option<Interpolated>,
    pub prefix: Option<Interpolated>,
    pub path_style: Option<bool>,
    pub access_key_id: Option<Interpolated>,
    pub secret_access_key: Option<Interpolated>,
    pub path: Option<Interpolated>,
    pub http_url: Option<Interpolated>,
    /// kubernetes: the kubeconfig file, resolved against the plan's directory.
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<Interpolated>,
    pub settings: BTreeMap<String, String>,
    pub span: Range<usize>,
}

/// Where a table's partitions come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionSource {
    /// mode = "all": one unit, no split query.
    Whole,
    /// Declared ids (explicit list or generated range): known offline.
    Declared(Vec<String>),
    /// Listed from the source at apply time.
    Online,
}

/// `"a", "b", "c"`: the names a plan may write, for messages.
fn quoted_names(names: impl Iterator<Item = &'static str>) -> String {
    names
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The strategies flow knows, by name; each is one module under `strategy/`, which
/// gives each kind its strategy ([`StrategyKind::strategy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyKind {
    Export,
    Copy,
    S3Policy,
}

impl StrategyKind {
    pub const ALL: &'static [StrategyKind] = &[
        StrategyKind::Export,
        StrategyKind::Copy,
        StrategyKind::S3Policy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StrategyKind::Export => "export",
            StrategyKind::Copy => "copy",
            StrategyKind::S3Policy => "s3-policy",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.name() == name)
    }

    pub fn names() -> String {
        quoted_names(Self::ALL.iter().map(|k| k.name()))
    }
}

/// A checked `[[tables]]` entry.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// Index in `Plan::tables`.
    pub index: usize,
    /// Prefix of every task id of this table (`default.trips`).
    pub name: String,
    /// For a table listed from a whole-database entry: that entry's name (`analytics.*`).
    pub group: Option<String>,
    pub source: String,
    pub database: String,
    /// None for a query table; "*" for a whole database.
    pub table: Option<String>,
    pub query: Option<String>,
    pub mode: Mode,
    pub partition_expr: Option<String>,
    pub lower: Option<String>,
    pub upper: Option<String>,
    pub partitions: PartitionSource,
    pub split_by: Option<String>,
    pub max_rows: Option<u64>,
    pub max_bytes: Option<u64>,
    pub strategy: StrategyKind,
    pub target: Option<String>,
    pub target_database: Option<String>,
    pub target_table: Option<String>,
    pub format: ExportFormat,
    pub path: Option<String>,
    /// Where `path` is written in the plan file, for errors about it.
    pub path_span: Option<Range<usize>>,
    pub storage_policy: String,
    pub swap: bool,
    pub keep_old: bool,
    pub server_side: ServerSide,
    pub formatting: Formatting,
    /// The strategy's settings, checked: each strategy decodes its own from here.
    pub settings: BTreeMap<String, SettingValue>,
    /// Template variables only.
    pub options: BTreeMap<String, String>,
    pub span: Range<usize>,
}

/// A strategy setting's value, of the kind the strategy declared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SettingValue {
    Bool(bool),
    Text(String),
    Integer(i64),
}

impl SettingValue {
    pub fn as_text(&self) -> Option<&str> {
        match self {
            SettingValue::Text(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_integer(&self) -> Option<i64> {
        match self {
            SettingValue::Integer(n) => Some(*n),
            _ => None,
        }
    }
}

impl std::fmt::Display for SettingValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SettingValue::Bool(b) => write!(f, "{b}"),
            SettingValue::Text(t) => f.write_str(t),
            SettingValue::Integer(n) => write!(f, "{n}"),
        }
    }
}

impl TableSpec {
    /// A text setting of the table's strategy, when set.
    pub fn text_setting(&self, key: &str) -> Option<&str> {
        self.settings.get(key).and_then(SettingValue::as_text)
    }

    /// A boolean setting of the table's strategy (false when not set).
    pub fn bool_setting(&self, key: &str) -> bool {
        matches!(self.settings.get(key), Some(SettingValue::Bool(true)))
    }

    /// The combined row filter from the bounds, or None when unbounded.
    pub fn bounds_filter(&self) -> Option<String> {
        match (&self.lower, &self.upper) {
            (Some(l), Some(u)) => Some(format!("({l}) AND ({u})")),
            (Some(l), None) => Some(format!("({l})")),
            (None, Some(u)) => Some(format!("({u})")),
            (None, None) => None,
        }
    }
}

/// Export file formats; each maps to a ClickHouse format name and a file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Csv,
    Tsv,
    Native,
    Parquet,
    JsonEachRow,
}

impl ExportFormat {
    pub const NAMES: &'static [&'static str] = &["csv", "tsv", "native", "parquet", "jsoneachrow"];

    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "csv" | "csvwithnames" => Some(ExportFormat::Csv),
            "tsv" | "tsvwithnames" | "tabseparatedwithnames" => Some(ExportFormat::Tsv),
            "native" => Some(ExportFormat::Native),
            "parquet" => Some(ExportFormat::Parquet),
            "jsoneachrow" | "json" | "ndjson" => Some(ExportFormat::JsonEachRow),
            _ => None,
        }
    }

    /// The name a plan writes (`format = "…"`).
    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Tsv => "tsv",
            ExportFormat::Native => "native",
            ExportFormat::Parquet => "parquet",
            ExportFormat::JsonEachRow => "jsoneachrow",
        }
    }

    /// The ClickHouse format name used to produce the file.
    pub fn clickhouse_name(self) -> &'static str {
        match self {
            ExportFormat::Csv => "CSVWithNames",
            ExportFormat::Tsv => "TabSeparatedWithNames",
            ExportFormat::Native => "Native",
            ExportFormat::Parquet => "Parquet",
            ExportFormat::JsonEachRow => "JSONEachRow",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Tsv => "tsv",
            ExportFormat::Native => "native",
            ExportFormat::Parquet => "parquet",
            ExportFormat::JsonEachRow => "jsonl",
        }
    }
}

/// Whether an export may run inside the server (INSERT INTO FUNCTION s3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerSide {
    Auto,
    Always,
    Never,
}

/// Who writes the text of a CSV or TSV export (`formatting`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Formatting {
    /// Flow formats Native blocks where it reproduces the server's text exactly
    /// (checked per server by a probe, per stream by its column types); the server
    /// otherwise.
    #[default]
    Auto,
    /// The server always formats.
    Server,
}

/// The strategies of `[[volumes]]` entries, by name; each is one module under
/// `strategy::volume` ([`VolumeStrategyKind::strategy`] there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeStrategyKind {
    /// Snapshot the claim's volume, make a new volume of it and bind it to a claim
    /// elsewhere; the source is left as it was.
    EbsCopy,
    /// Snapshot the claim's volume, make a new volume of it and put it under the same
    /// claim; the old volume is kept (retained) for a rollback.
    EbsSwap,
}

impl VolumeStrategyKind {
    pub const ALL: &'static [VolumeStrategyKind] =
        &[VolumeStrategyKind::EbsCopy, VolumeStrategyKind::EbsSwap];

    pub fn name(self) -> &'static str {
        match self {
            VolumeStrategyKind::EbsCopy => "ebs-copy",
            VolumeStrategyKind::EbsSwap => "ebs-swap",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.name() == name)
    }

    pub fn names() -> String {
        quoted_names(Self::ALL.iter().map(|k| k.name()))
    }
}

/// Where a claim is: a Kubernetes connection, a namespace, the claim's name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClaimRef {
    pub connection: String,
    pub namespace: String,
    pub claim: String,
}

impl std::fmt::Display for ClaimRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "claim {}/{} on {}",
            self.namespace, self.claim, self.connection
        )
    }
}

/// A checked `[[volumes]]` entry.
#[derive(Debug, Clone)]
pub struct VolumeSpec {
    /// Index in `Plan::volumes`.
    pub index: usize,
    /// Prefix of every task id of this volume.
    pub name: String,
    pub strategy: VolumeStrategyKind,
    /// The EC2 connection.
    pub ec2: String,
    /// The claim whose volume is snapshotted.
    pub source: ClaimRef,
    /// The StatefulSet using it, quiesced (scaled to 0) for the snapshot.
    pub statefulset: Option<String>,
    /// The claim the new volume is bound to (ebs-swap: the source claim itself).
    pub target: ClaimRef,
    /// Entries (step ids, table or volume names) that must be done first.
    pub after: Vec<String>,
    /// The strategy's settings, checked.
    pub settings: BTreeMap<String, SettingValue>,
    pub span: Range<usize>,
}

impl VolumeSpec {
    /// A text setting of the volume's strategy, when set.
    pub fn text_setting(&self, key: &str) -> Option<&str> {
        self.settings.get(key).and_then(SettingValue::as_text)
    }

    /// An integer setting of the volume's strategy, when set.
    pub fn integer_setting(&self, key: &str) -> Option<i64> {
        self.settings.get(key).and_then(SettingValue::as_integer)
    }
}

/// A checked `[[steps]]` entry.
#[derive(Debug, Clone)]
pub struct StepSpec {
    pub index: usize,
    pub id: String,
    pub kind: StepKind,
    /// The command (exec) or statement (sql) template source.
    pub text: String,
    /// Where `run` / `sql` is written in the plan file.
    pub text_span: Range<usize>,
    pub connection: Option<String>,
    /// Step ids and table names, resolved to task ids at expansion.
    pub after: Vec<String>,
    pub env: BTreeMap<String, Interpolated>,
    pub cwd: Option<PathBuf>,
    pub timeout: Option<Duration>,
    pub once: bool,
    /// Marked `destructive = true`.
    pub destructive: bool,
    /// `destructive` as written: None when the step does not say.
    pub destructive_declared: Option<bool>,
    pub verifies: bool,
    pub uses: Option<String>,
    pub span: Range<usize>,
}
