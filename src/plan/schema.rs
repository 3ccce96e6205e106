//! The plan file as written: raw serde types with spans, no meaning attached yet.
//!
//! Every struct denies unknown keys so a typo is an error, not a silently ignored
//! setting. Values that later errors point at are `Spanned` so the checker can show
//! the line. `check` turns this into a [`crate::plan::Plan`].

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

/// A whole plan file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    /// Plan-wide settings.
    #[schemars(with = "PlanSection")]
    pub plan: Spanned<PlanSection>,
    /// Named connections: databases, object stores, local directories.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, ConnectionDef>")]
    pub connections: BTreeMap<Spanned<String>, Spanned<ConnectionDef>>,
    /// Tables to export, copy or move.
    #[serde(default)]
    #[schemars(with = "Vec<TableDef>")]
    pub tables: Vec<Spanned<TableDef>>,
    /// Disk volumes to copy or replace by snapshot (EBS behind a Kubernetes claim).
    #[serde(default)]
    #[schemars(with = "Vec<VolumeDef>")]
    pub volumes: Vec<Spanned<VolumeDef>>,
    /// Generic steps (sql, exec) for everything a strategy does not cover.
    #[serde(default)]
    #[schemars(with = "Vec<StepDef>")]
    pub steps: Vec<Spanned<StepDef>>,
}

/// `[plan]`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanSection {
    /// Plan name; names the state database (`.flow/<name>.db`).
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    pub description: Option<String>,
    /// Global bound on running tasks (default 4).
    #[schemars(with = "Option<u32>")]
    pub concurrency: Option<Spanned<i64>>,
    /// Where state, locks and logs live (default: `.flow` beside the plan file).
    pub state_dir: Option<String>,
    /// Directory of template overrides (`clickhouse/export.sql.j2`, …), relative to the plan.
    pub templates_dir: Option<String>,
    /// Where the final JSON report is written (default: `<state_dir>/<name>.report.json`).
    pub report: Option<String>,
    /// Retries after the first attempt, for transient errors only (default 3).
    #[schemars(with = "Option<u32>")]
    pub retries: Option<Spanned<i64>>,
    /// First retry delay, doubled each attempt, with jitter (default "2s").
    #[schemars(with = "Option<String>")]
    pub retry_backoff: Option<Spanned<String>>,
    /// Variables for templates (`{{ vars.NAME }}`); `--var NAME=VALUE` overrides.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
}

/// The kinds of connection flow knows.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionKind {
    Clickhouse,
    Mysql,
    Starrocks,
    S3,
    Fs,
    Ec2,
    Kubernetes,
}

impl ConnectionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionKind::Clickhouse => "clickhouse",
            ConnectionKind::Mysql => "mysql",
            ConnectionKind::Starrocks => "starrocks",
            ConnectionKind::S3 => "s3",
            ConnectionKind::Fs => "fs",
            ConnectionKind::Ec2 => "ec2",
            ConnectionKind::Kubernetes => "kubernetes",
        }
    }

    /// Stores hold files or objects; they can be export targets.
    pub fn is_store(self) -> bool {
        matches!(self, ConnectionKind::S3 | ConnectionKind::Fs)
    }

    /// Kinds that run SQL.
    pub fn is_sql(self) -> bool {
        matches!(
            self,
            ConnectionKind::Clickhouse | ConnectionKind::Mysql | ConnectionKind::Starrocks
        )
    }
}

/// `[connections.NAME]`. One flat table for every kind; the checker says which keys a
/// kind uses, so a key of another kind gets a precise message instead of a type error.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionDef {
    #[schemars(with = "ConnectionKind")]
    pub kind: Spanned<ConnectionKind>,
    /// clickhouse: `http://host:8123`; mysql/starrocks: `mysql://host:3306`.
    #[schemars(with = "Option<String>")]
    pub url: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub user: Option<Spanned<String>>,
    /// Use `${env:VAR}`; never written in clear in a plan.
    #[schemars(with = "Option<String>")]
    pub password: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub database: Option<Spanned<String>>,
    /// Per-connection bound on running tasks.
    #[schemars(with = "Option<u32>")]
    pub max_concurrency: Option<Spanned<i64>>,
    /// Pause between two task starts on this connection, e.g. "1s" (an insert interval).
    #[schemars(with = "Option<String>")]
    pub pause_between: Option<Spanned<String>>,
    /// s3/ec2: endpoint URL for S3-compatible stores or a local API server.
    #[schemars(with = "Option<String>")]
    pub endpoint: Option<Spanned<String>>,
    /// s3: bucket name.
    #[schemars(with = "Option<String>")]
    pub bucket: Option<Spanned<String>>,
    /// s3/ec2: region (default us-east-1).
    #[schemars(with = "Option<String>")]
    pub region: Option<Spanned<String>>,
    /// s3: key prefix for everything flow writes.
    #[schemars(with = "Option<String>")]
    pub prefix: Option<Spanned<String>>,
    /// s3: path-style addressing (default true when `endpoint` is set).
    pub path_style: Option<bool>,
    /// s3/ec2: static keys (tests, S3-compatible stores); otherwise the AWS default chain.
    #[schemars(with = "Option<String>")]
    pub access_key_id: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub secret_access_key: Option<Spanned<String>>,
    /// fs: the local directory.
    #[schemars(with = "Option<String>")]
    pub path: Option<Spanned<String>>,
    /// starrocks: the FE HTTP address for Stream Load.
    #[schemars(with = "Option<String>")]
    pub http_url: Option<Spanned<String>>,
    /// kubernetes: the kubeconfig file (default: `$KUBECONFIG`, else `~/.kube/config`),
    /// relative to the plan.
    #[schemars(with = "Option<String>")]
    pub kubeconfig: Option<Spanned<String>>,
    /// kubernetes: the kubeconfig context (default: its current context).
    #[schemars(with = "Option<String>")]
    pub context: Option<Spanned<String>>,
    /// clickhouse: server settings sent with every query (values may use `${env:VAR}`;
    /// a setting whose name marks a secret must).
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub settings: BTreeMap<String, Spanned<String>>,
}

/// How a table is cut into units of work.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The whole table (or query) is one unit.
    All,
    /// One unit per partition (and per chunk of an oversized partition).
    Partition,
}

/// A generated partition range, so plans can be expanded offline.
#[derive(Debug, Deserialize, JsonSchema, Clone)]
#[serde(deny_unknown_fields)]
pub struct PartitionRange {
    /// First partition: "2015-06" (month), "2015-06-01" (day) or an integer.
    #[schemars(with = "serde_json::Value")]
    pub from: toml::Value,
    /// Last partition, inclusive.
    #[schemars(with = "serde_json::Value")]
    pub to: toml::Value,
    /// "month" → ids YYYYMM, "day" → YYYYMMDD, "integer" → the numbers.
    pub step: String,
}

/// `[[tables]]`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TableDef {
    /// Name used in task ids (default `database.table`, required for `query`).
    #[schemars(with = "Option<String>")]
    pub name: Option<Spanned<String>>,
    /// Source connection.
    #[schemars(with = "String")]
    pub source: Spanned<String>,
    #[schemars(with = "Option<String>")]
    pub database: Option<Spanned<String>>,
    /// Table name, or "*" for every MergeTree table of the database (s3-policy).
    #[schemars(with = "Option<String>")]
    pub table: Option<Spanned<String>>,
    /// A SELECT whose result is exported instead of a table.
    #[schemars(with = "Option<String>")]
    pub query: Option<Spanned<String>>,
    #[schemars(with = "Option<Mode>")]
    pub mode: Option<Spanned<Mode>>,
    /// Partition expression (default: the table's own partition key).
    #[schemars(with = "Option<String>")]
    pub partition_expr: Option<Spanned<String>>,
    /// SQL condition bounding the rows from below, e.g. `toYYYYMM(pickup_date) >= 201506`.
    #[schemars(with = "Option<String>")]
    pub lower: Option<Spanned<String>>,
    /// SQL condition bounding the rows from above.
    #[schemars(with = "Option<String>")]
    pub upper: Option<Spanned<String>>,
    /// Explicit partition ids (offline expansion).
    #[schemars(with = "Option<Vec<String>>")]
    pub partitions: Option<Spanned<Vec<String>>>,
    /// Generated partition ids (offline expansion).
    #[schemars(with = "Option<PartitionRange>")]
    pub partition_range: Option<Spanned<PartitionRange>>,
    /// Column used to sub-split partitions bigger than max_rows / max_bytes.
    #[schemars(with = "Option<String>")]
    pub split_by: Option<Spanned<String>>,
    #[schemars(with = "Option<u64>")]
    pub max_rows: Option<Spanned<i64>>,
    #[schemars(with = "Option<u64>")]
    pub max_bytes: Option<Spanned<i64>>,
    /// export | copy | s3-policy
    #[schemars(with = "String")]
    pub strategy: Spanned<String>,
    /// Target connection (a store for export, a clickhouse for copy).
    #[schemars(with = "Option<String>")]
    pub target: Option<Spanned<String>>,
    /// copy: target database / table (default: the source's).
    #[schemars(with = "Option<String>")]
    pub target_database: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub target_table: Option<Spanned<String>>,
    /// export: csv | tsv | native | parquet (default csv, with a header).
    #[schemars(with = "Option<String>")]
    pub format: Option<Spanned<String>>,
    /// export: object key / file path template.
    #[schemars(with = "Option<String>")]
    pub path: Option<Spanned<String>>,
    /// s3-policy: the storage policy to move to (default "s3").
    #[schemars(with = "Option<String>")]
    pub storage_policy: Option<Spanned<String>>,
    /// copy / s3-policy: cut over at the end (copy default false, s3-policy default true).
    pub swap: Option<bool>,
    /// s3-policy: keep the old table after the swap (default true).
    pub keep_old: Option<bool>,
    /// export: "auto" (server writes to S3 when it can), "always", "never".
    #[schemars(with = "Option<String>")]
    pub server_side: Option<Spanned<String>>,
    /// export (CSV, TSV): who writes the text — "auto" (flow, from the server's Native
    /// blocks, when it can reproduce the server's text exactly) or "server".
    #[schemars(with = "Option<String>")]
    pub formatting: Option<Spanned<String>>,
    /// The strategy's settings, typed (`verify_read_back = true`, `manifest`,
    /// `swap_with`, `new_table`, `to_volume`): each strategy declares its own, and
    /// validate refuses an unknown one, another strategy's, or a value of the wrong type.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub settings: BTreeMap<String, Spanned<toml::Value>>,
    /// Template variables, passed to templates as `{{ options.NAME }}` (not settings:
    /// a strategy setting written here is refused, with the fix).
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub options: BTreeMap<String, Spanned<String>>,
}

/// `[[volumes]]`: one disk volume, found through the Kubernetes claim that uses it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeDef {
    /// Prefix of the entry's task ids; also what `after` names.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// ebs-copy (a new volume from a snapshot, bound to a claim elsewhere) | ebs-swap
    /// (the claim's volume replaced by a new one from a snapshot).
    #[schemars(with = "String")]
    pub strategy: Spanned<String>,
    /// The EC2 connection that snapshots the volume and creates the new one.
    #[schemars(with = "String")]
    pub ec2: Spanned<String>,
    /// The Kubernetes connection of the claim.
    #[schemars(with = "String")]
    pub source: Spanned<String>,
    #[schemars(with = "String")]
    pub namespace: Spanned<String>,
    /// The PersistentVolumeClaim whose volume is snapshotted (`data-ch-0`).
    #[schemars(with = "String")]
    pub claim: Spanned<String>,
    /// The StatefulSet that uses the claim: scaled to 0 for the snapshot, back after.
    #[schemars(with = "Option<String>")]
    pub statefulset: Option<Spanned<String>>,
    /// ebs-copy: the Kubernetes connection the new claim is made in (default `source`).
    #[schemars(with = "Option<String>")]
    pub target: Option<Spanned<String>>,
    /// ebs-copy: its namespace (default `namespace`).
    #[schemars(with = "Option<String>")]
    pub target_namespace: Option<Spanned<String>>,
    /// ebs-copy: its claim name (default `claim`).
    #[schemars(with = "Option<String>")]
    pub target_claim: Option<Spanned<String>>,
    /// Names of steps, tables or volumes that must be done first.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub after: Vec<Spanned<String>>,
    /// The strategy's settings (`volume_type`, `availability_zone`, `iops`,
    /// `throughput`, `kms_key_id`), typed.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub settings: BTreeMap<String, Spanned<toml::Value>>,
}

/// Kinds of generic steps.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    Sql,
    Exec,
}

/// `[[steps]]`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepDef {
    #[schemars(with = "String")]
    pub id: Spanned<String>,
    #[schemars(with = "StepKind")]
    pub kind: Spanned<StepKind>,
    /// exec: the command line (a template), run with `sh -c`.
    #[schemars(with = "Option<String>")]
    pub run: Option<Spanned<String>>,
    /// sql: the statement (a template).
    #[schemars(with = "Option<String>")]
    pub sql: Option<Spanned<String>>,
    /// sql: the connection it runs on.
    #[schemars(with = "Option<String>")]
    pub connection: Option<Spanned<String>>,
    /// Ids of steps or table names that must be done first.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub after: Vec<Spanned<String>>,
    /// exec: extra environment (values may use `${env:VAR}`; a secret must).
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub env: BTreeMap<String, Spanned<String>>,
    /// exec: working directory (default: the plan's directory).
    pub cwd: Option<String>,
    /// Kill the step after this long, e.g. "30m".
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
    /// Never re-run automatically once done.
    #[serde(default)]
    pub once: bool,
    /// The step removes or replaces data: it must run after a verify. `false` says an
    /// sql statement flow cannot classify only reads or adds data.
    pub destructive: Option<bool>,
    /// The step checks data (counts, checksums) and fails when it does not match;
    /// destructive steps may depend on it.
    #[serde(default)]
    pub verifies: bool,
    /// Connection whose permit the step takes (exec steps that load a database).
    #[schemars(with = "Option<String>")]
    pub uses: Option<Spanned<String>>,
}
