//! The registry of data engines: which connection kinds can be read by `export`, and
//! the engine of each connection, built once per run.
//!
//! Adding an export source is its folder under `engines/` with an
//! [`ExportSourceEntry`] constant, and its line in [`EXPORT_SOURCES`]; plan checks
//! (allowed source kinds, formats, keys it cannot honour), fingerprints (the templates
//! its tasks render) and the runner all read it from here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::engines::source::{ExportSource, ExportSourceEntry};
use crate::plan::schema::ConnectionKind;
use crate::plan::Plan;
use crate::task::TaskFailure;
use crate::templates::Templates;

/// Every engine an `export` can read from.
pub const EXPORT_SOURCES: &[ExportSourceEntry] = &[
    crate::engines::clickhouse::source::EXPORT_SOURCE,
    crate::engines::mysql::export::EXPORT_SOURCE,
];

/// The entry of an export source kind.
pub fn export_source(kind: ConnectionKind) -> Option<&'static ExportSourceEntry> {
    EXPORT_SOURCES.iter().find(|e| e.kind == kind)
}

/// The connection kinds an `export` can read from.
pub fn export_source_kinds() -> Vec<ConnectionKind> {
    EXPORT_SOURCES.iter().map(|e| e.kind).collect()
}

/// The engines of one run's connections, each opened once.
pub struct Engines {
    plan: Arc<Plan>,
    templates: Templates,
    export_sources: Mutex<HashMap<String, Arc<dyn ExportSource>>>,
}

impl Engines {
    pub fn new(plan: Arc<Plan>, templates: Templates) -> Self {
        Engines {
            plan,
            templates,
            export_sources: Mutex::new(HashMap::new()),
        }
    }

    /// The export source of `connection`, for a task rendering only `templates`.
    pub fn export_source(
        &self,
        connection: &str,
        templates: Vec<&'static str>,
    ) -> Result<Arc<dyn ExportSource>, TaskFailure> {
        let mut sources = self.export_sources.lock().expect("engine cache lock");
        if let Some(s) = sources.get(connection) {
            return Ok(s.for_task(templates));
        }
        let conn = self.plan.connections.get(connection).ok_or_else(|| {
            TaskFailure::permanent(format!("connection `{connection}` is not defined"))
        })?;
        let entry = export_source(conn.kind).ok_or_else(|| {
            TaskFailure::permanent(format!(
                "connection `{connection}` is {}, which `export` cannot read from",
                conn.kind.as_str()
            ))
        })?;
        let source = (entry.open)(conn, &self.templates)?;
        sources.insert(connection.to_string(), source.clone());
        Ok(source.for_task(templates))
    }
}
