//! ClickHouse as an export source: the split by partition expression, the streamed and
//! server-side export paths, and `count()` for verify, behind
//! [`crate::engines::source::ExportSource`].

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::export;
use super::split::{self, Grouping, SplitRequest};
use super::{qualified, Ch, ChClient};
use crate::engines::export::{ExportUnit, ExportedFile};
use crate::engines::source::{
    ExportSource, ExportSourceEntry, OpenSource, Signature, SourceRef, Units, UnitsRequest,
};
use crate::engines::store::Store;
use crate::plan::schema::ConnectionKind;
use crate::plan::ExportFormat;
use crate::task::TaskFailure;
use crate::task::TaskKind;

/// The ClickHouse export source of one connection.
pub struct ClickhouseSource {
    ch: Ch,
}

impl ClickhouseSource {
    /// The export source of a client.
    pub fn new(ch: Ch) -> Self {
        ClickhouseSource { ch }
    }

    /// The registry's constructor.
    pub fn open(open: &OpenSource<'_>) -> Result<Arc<dyn ExportSource>, TaskFailure> {
        let client = open.clients.get_or_open(open.name, || {
            Ok(ChClient::from_connection(open.connection)?)
        })?;
        Ok(Arc::new(ClickhouseSource::new(Ch::new(
            client,
            open.templates.clone(),
        ))))
    }
}

#[async_trait::async_trait]
impl ExportSource for ClickhouseSource {
    fn for_task(&self, templates: Vec<&'static str>) -> Arc<dyn ExportSource> {
        Arc::new(ClickhouseSource {
            ch: self.ch.clone().for_task(templates),
        })
    }

    fn sql_from(&self, from: SourceRef<'_>) -> String {
        match from {
            SourceRef::Table { database, table } => qualified(database, table),
            SourceRef::Query(q) => format!("({q})"),
        }
    }

    async fn split(&self, r: &UnitsRequest) -> Result<Units, TaskFailure> {
        let req = SplitRequest::of_units(r, Grouping::Expression);
        let result = split::split(&self.ch, &req).await?;
        Ok(Units {
            partitions: result.partitions,
            rows: result.rows,
            bytes: result.bytes,
            note: result.note,
        })
    }

    async fn export_unit(
        &self,
        unit: &ExportUnit,
        store: &dyn Store,
        cancel: &CancellationToken,
    ) -> Result<(ExportedFile, String), TaskFailure> {
        export::export_unit(&self.ch, store, unit, cancel).await
    }

    async fn signature(
        &self,
        action: &str,
        from: &str,
        filter: Option<&str>,
        _checksum: bool,
    ) -> Result<Signature, TaskFailure> {
        // An export from ClickHouse records no source checksum: verify compares counts
        // (the streamed file's blake3 and the server-side read-back checksum are
        // checked at export).
        let stats = self.ch.stats(action, from, filter, None).await?;
        Ok(Signature {
            rows: stats.rows,
            checksum: None,
        })
    }
}

/// The registry's line for this engine.
pub const EXPORT_SOURCE: ExportSourceEntry = ExportSourceEntry {
    kind: ConnectionKind::Clickhouse,
    formats: &[
        ExportFormat::Csv,
        ExportFormat::Tsv,
        ExportFormat::Native,
        ExportFormat::Parquet,
        ExportFormat::JsonEachRow,
    ],
    unsupported: &[],
    templates: export_templates,
    open: ClickhouseSource::open,
};

/// The templates an export task of `kind` renders from ClickHouse.
fn export_templates(kind: TaskKind) -> Vec<&'static str> {
    super::task_templates::used_by(crate::plan::StrategyKind::Export, kind)
}
