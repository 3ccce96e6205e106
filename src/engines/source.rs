//! What an engine does to be the source of an `export`: list a table's units, write one
//! unit into a store, and say how many rows (and, where it can, which rows) a unit holds
//! now.
//!
//! The export strategy and its generic parts ([`crate::engines::export`]: verify,
//! manifest) go only through this trait; an engine that implements it and has a line in
//! [`crate::engines::registry`] is an export source, with nothing else to change.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::engines::clients::Clients;
use crate::engines::export::{ExportUnit, ExportedFile};
use crate::engines::store::Store;
use crate::plan::schema::ConnectionKind;
use crate::plan::{Connection, ExportFormat};
use crate::task::TaskFailure;
use crate::task::{Partition, TaskKind};
use crate::templates::Templates;

/// Which units of a table entry an export works on.
#[derive(Clone, Debug)]
pub struct UnitsRequest {
    pub database: String,
    /// The table's name (a query has no split: it is one unit).
    pub table: String,
    /// The plan's partition expression, in the source's SQL; None = the engine's default
    /// (the table's own partitioning, or the whole table as one unit).
    pub partition_expr: Option<String>,
    /// Row filter from lower/upper.
    pub bounds: Option<String>,
    /// The column that cuts a unit bigger than `max_rows`/`max_bytes` into ranges.
    pub split_by: Option<String>,
    pub max_rows: Option<u64>,
    pub max_bytes: Option<u64>,
    /// Only these partition ids (declared in the plan).
    pub declared: Option<Vec<String>>,
}

/// What a table entry reads: a table of a database, or the rows of a query.
#[derive(Clone, Copy, Debug)]
pub enum SourceRef<'a> {
    Table { database: &'a str, table: &'a str },
    Query(&'a str),
}

/// The units found, with their total size and a line for humans.
#[derive(Clone, Debug, Default)]
pub struct Units {
    pub partitions: Vec<Partition>,
    pub rows: u64,
    pub bytes: u64,
    pub note: String,
}

/// Rows of a set of rows now, and their order-independent checksum when asked for and
/// the engine has one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Signature {
    pub rows: u64,
    pub checksum: Option<u64>,
}

/// An engine that can be read by `export`.
#[async_trait::async_trait]
pub trait ExportSource: Send + Sync {
    /// The same source, for one task: its statements come only from `templates` (the
    /// ones the task's fingerprint covers).
    fn for_task(&self, templates: Vec<&'static str>) -> Arc<dyn ExportSource>;
    /// The `FROM` text of a table entry: its table, quoted, or its query (rendered) as a
    /// derived table.
    fn sql_from(&self, from: SourceRef<'_>) -> String;
    /// The units of a table within its bounds, with their sizes.
    async fn split(&self, request: &UnitsRequest) -> Result<Units, TaskFailure>;
    /// Writes one unit into `store`; returns the file and a note on how.
    async fn export_unit(
        &self,
        unit: &ExportUnit,
        store: &dyn Store,
        cancel: &CancellationToken,
    ) -> Result<(ExportedFile, String), TaskFailure>;
    /// The rows of `from` where `filter` now; their checksum too when `checksum` is set
    /// and the engine records one at export ([`ExportedFile::source_checksum`]).
    async fn signature(
        &self,
        action: &str,
        from: &str,
        filter: Option<&str>,
        checksum: bool,
    ) -> Result<Signature, TaskFailure>;
}

/// One engine's line in [`crate::engines::registry`]: what it is, what it can write, what
/// it cannot honour, and how to open it. Plan checks read these facts, so a plan that
/// asks an engine for what it cannot do fails at `flow validate`, with its line.
pub struct ExportSourceEntry {
    pub kind: ConnectionKind,
    /// The formats it writes.
    pub formats: &'static [ExportFormat],
    /// Table keys it cannot honour, each with the fix to print.
    pub unsupported: &'static [(&'static str, &'static str)],
    /// The templates an export task of a kind renders (its fingerprint covers them).
    pub templates: fn(TaskKind) -> Vec<&'static str>,
    /// Opens it for a connection (no network: that waits for the first task).
    pub open: OpenExportSource,
}

/// What an engine's constructor gets: the connection, by name and definition, the
/// plan's templates, and the run's clients (so a connection has one client).
pub struct OpenSource<'a> {
    pub name: &'a str,
    pub connection: &'a Connection,
    pub templates: &'a Templates,
    pub clients: &'a Clients,
}

/// An engine's constructor for a connection.
pub type OpenExportSource = fn(&OpenSource<'_>) -> Result<Arc<dyn ExportSource>, TaskFailure>;
