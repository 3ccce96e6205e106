//! The ClickHouse engine: split, export, copy and the storage-policy move.
//!
//! Layers, each with one job:
//! - [`client`] sends statements over HTTP and reads results; [`caps`] decides what the
//!   server can do from its version; [`errors`] turns failures into retry decisions.
//! - [`values`], [`checksum`] and [`ddl`] produce SQL text: literals the server printed
//!   itself, the cross-version row checksum, a table definition under a new name.
//! - [`split`], [`export`], [`copy`], [`s3_policy`] and [`tier_move`] (s3-policy in
//!   place) are the task bodies.
//!
//! Every statement is rendered from `templates/clickhouse/*.sql.j2` through [`Ch::sql`],
//! so a plan's `templates_dir` can replace any of them. Template variables that name
//! tables (`from`, `table`, `target`, …) arrive already quoted; filters are SQL text.

pub mod blocks;
pub mod caps;
pub mod checksum;
pub mod client;
pub mod copy;
pub mod ddl;
pub mod errors;
pub mod export;
pub mod helper_names;
pub mod migration;
pub mod native;
pub mod part_sets;
pub use crate::engines::rows;
pub mod s3_policy;
pub mod source;
pub mod split;
pub mod table_lock;
pub mod target_policy;
pub mod task_templates;
pub mod text_out;
pub mod tier_move;
pub mod values;

use std::collections::BTreeMap;
use std::sync::Arc;

use minijinja::Value;
use tokio_util::sync::CancellationToken;

pub use crate::engines::and_all;
pub use caps::{Caps, Feature, Version};
pub use checksum::Column;
pub use client::{json_str, json_u64, ChClient, ChParams, JsonRow};
pub use errors::ChError;

use crate::task::TaskFailure;
use crate::templates::{quote_identifier, Templates};

/// A client plus the templates its statements come from.
#[derive(Clone, Debug)]
pub struct Ch {
    pub client: ChClient,
    pub templates: Templates,
    /// The templates the task this handle runs for may render (its fingerprint covers
    /// them, see [`task_templates`]); None outside a task.
    task_templates: Option<Arc<[&'static str]>>,
}

/// `db`.`table`, quoted.
pub fn qualified(database: &str, table: &str) -> String {
    format!("{}.{}", quote_identifier(database), quote_identifier(table))
}

/// Rows and checksum of a set of rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub rows: u64,
    pub checksum: u64,
}

impl Stats {
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// `rows` and the checksum in hex, for messages.
    pub fn describe(&self) -> String {
        format!("{} rows, checksum {:016x}", self.rows, self.checksum)
    }

    /// The checksum as stored in task outcomes.
    pub fn checksum_text(&self) -> String {
        format!("{:016x}", self.checksum)
    }

    /// Sums are additive: the stats of two disjoint row sets together.
    pub fn plus(&self, other: Stats) -> Stats {
        Stats {
            rows: self.rows + other.rows,
            checksum: self.checksum.wrapping_add(other.checksum),
        }
    }
}

/// One table as `system.tables` describes it.
#[derive(Clone, Debug, Default)]
pub struct TableInfo {
    pub name: String,
    pub engine: String,
    pub partition_key: String,
    pub create_table_query: String,
    pub storage_policy: Option<String>,
    pub uuid: Option<String>,
}

impl Ch {
    pub fn new(client: ChClient, templates: Templates) -> Self {
        Ch {
            client,
            templates,
            task_templates: None,
        }
    }

    /// The same handle for a task whose fingerprint covers `templates`.
    pub fn for_task(mut self, templates: Vec<&'static str>) -> Self {
        self.task_templates = Some(templates.into());
        self
    }

    pub fn name(&self) -> &str {
        self.client.name()
    }

    /// Renders `templates/clickhouse/<name>.sql.j2`.
    pub fn sql(&self, name: &str, ctx: Value) -> Result<String, ChError> {
        let full = format!("clickhouse/{name}.sql.j2");
        self.templates
            .render_in_task(&full, &ctx, self.task_templates.as_deref())
            .map_err(|e| ChError::flow(self.name(), format!("render {full}"), e.to_string()))
    }

    pub async fn caps(&self) -> Result<Caps, ChError> {
        let sql = self.sql("version", minijinja::context! {})?;
        self.client.caps(&sql).await
    }

    /// Fails with a clear message when the server lacks `feature`.
    pub async fn require(&self, feature: Feature, for_what: &str) -> Result<Caps, ChError> {
        let caps = self.caps().await?;
        caps.require(feature, for_what)
            .map_err(|m| ChError::flow(self.name(), for_what, m))?;
        Ok(caps)
    }

    /// Tables of `database` among `names` (absent ones are missing from the map).
    pub async fn tables(
        &self,
        database: &str,
        names: &[&str],
    ) -> Result<BTreeMap<String, TableInfo>, ChError> {
        let caps = self.caps().await?;
        let modern = caps.has(Feature::StoragePolicies);
        let rows = self
            .rows(
                &format!("look up tables in `{database}`"),
                "table_info",
                minijinja::context! {
                    database => database,
                    tables => names,
                    storage_policies => modern,
                    uuids => caps.has(Feature::ExchangeTables),
                },
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let info = TableInfo {
                    name: json_str(r, "name").unwrap_or_default(),
                    engine: json_str(r, "engine").unwrap_or_default(),
                    partition_key: json_str(r, "partition_key").unwrap_or_default(),
                    create_table_query: json_str(r, "create_table_query").unwrap_or_default(),
                    storage_policy: json_str(r, "storage_policy").filter(|s| !s.is_empty()),
                    uuid: json_str(r, "uuid")
                        .filter(|s| !s.is_empty() && !s.starts_with("00000000-0000")),
                };
                (info.name.clone(), info)
            })
            .collect())
    }

    /// One table, or a permanent error naming it.
    pub async fn table(&self, database: &str, table: &str) -> Result<TableInfo, ChError> {
        self.tables(database, &[table])
            .await?
            .remove(table)
            .ok_or_else(|| {
                ChError::flow(
                    self.name(),
                    format!("look up {database}.{table}"),
                    format!(
                        "table `{database}`.`{table}` does not exist on this server; check \
                         `database` and `table` in the plan"
                    ),
                )
            })
    }

    /// Ordinary (stored) columns of a table or query, in order: what `SELECT *` and an
    /// INSERT without a column list see.
    pub async fn columns(&self, from: &str) -> Result<Vec<Column>, ChError> {
        let rows = self
            .rows(
                &format!("describe {from}"),
                "columns",
                minijinja::context! { from => from },
            )
            .await?;
        Ok(rows
            .iter()
            .filter(|r| {
                let kind = json_str(r, "default_type").unwrap_or_default();
                kind.is_empty() || kind == "DEFAULT"
            })
            .filter_map(|r| {
                Some(Column {
                    name: json_str(r, "name")?,
                    data_type: json_str(r, "type")?,
                })
            })
            .collect())
    }

    /// Rows (and checksum when `checksum` is given) of `from` where `filter`.
    pub async fn stats(
        &self,
        action: &str,
        from: &str,
        filter: Option<&str>,
        checksum: Option<&str>,
    ) -> Result<Stats, ChError> {
        let rows = self
            .rows(
                action,
                "count",
                minijinja::context! { from => from, filter => filter, checksum => checksum },
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| ChError::flow(self.name(), action, "the count query returned no row"))?;
        Ok(Stats {
            rows: json_u64(row, "rows").unwrap_or(0),
            checksum: json_u64(row, "checksum").unwrap_or(0),
        })
    }

    /// Rows and checksum per physical partition id of `from` where `filter`.
    pub async fn stats_by_partition(
        &self,
        action: &str,
        from: &str,
        filter: Option<&str>,
        checksum: &str,
    ) -> Result<BTreeMap<String, Stats>, ChError> {
        let rows = self
            .rows(
                action,
                "count_by_partition",
                minijinja::context! { from => from, filter => filter, checksum => checksum },
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some((
                    json_str(r, "partition_id")?,
                    Stats {
                        rows: json_u64(r, "rows").unwrap_or(0),
                        checksum: json_u64(r, "checksum").unwrap_or(0),
                    },
                ))
            })
            .collect())
    }

    /// Runs a rendered query and returns its rows (small results).
    pub async fn rows(
        &self,
        action: &str,
        template: &str,
        ctx: Value,
    ) -> Result<Vec<JsonRow>, ChError> {
        let sql = self.sql(template, ctx)?;
        self.client.json_rows(action, &sql).await
    }

    /// Runs a rendered query and returns one text column of every row.
    pub async fn strings(
        &self,
        action: &str,
        template: &str,
        ctx: Value,
        column: &str,
    ) -> Result<Vec<String>, ChError> {
        Ok(self
            .rows(action, template, ctx)
            .await?
            .iter()
            .filter_map(|r| json_str(r, column))
            .collect())
    }

    /// Runs a rendered statement.
    pub async fn run(&self, action: &str, template: &str, ctx: Value) -> Result<(), ChError> {
        let sql = self.sql(template, ctx)?;
        self.client.execute(action, &sql).await
    }

    /// Runs a rendered statement that may take long (INSERT … SELECT): when `cancel`
    /// fires, it is killed on the server ([`ChClient::execute_cancellable`]).
    pub async fn run_cancellable(
        &self,
        action: &str,
        template: &str,
        ctx: Value,
        cancel: &CancellationToken,
    ) -> Result<(), ChError> {
        let sql = self.sql(template, ctx)?;
        self.client.execute_cancellable(action, &sql, cancel).await
    }
}

/// A ChError as a task failure (the message already names connection and action).
impl From<ChError> for TaskFailure {
    fn from(e: ChError) -> Self {
        TaskFailure {
            retryable: e.retryable,
            message: e.to_string(),
        }
    }
}

/// `_partition_id = '<id>'`: selects exactly one physical partition, on every version.
pub fn partition_id_filter(partition_id: &str) -> String {
    format!(
        "_partition_id = {}",
        crate::templates::quote_sql_string(partition_id)
    )
}

/// The settings of an `INSERT … SELECT` that must copy rows exactly as they are stored:
/// without them a Replacing, Collapsing or Summing table merges the inserted block, so
/// the copy of a partition with unmerged rows would hold fewer rows than its source.
pub async fn keep_rows_as_stored(ch: &Ch) -> Result<Option<&'static str>, ChError> {
    Ok(ch
        .caps()
        .await?
        .has(Feature::OptimizeOnInsert)
        .then_some("optimize_on_insert = 0"))
}
