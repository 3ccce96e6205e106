//! `export`: a table, partition or query of any export source (see
//! [`crate::engines::registry`]) → files or objects in a store.
//!
//! Per unit (partition or chunk): export → verify (per partition, after all its
//! chunks); a manifest is written last, after every verify, so a manifest's presence
//! means the whole export is complete and checked.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Requirements, Setting, SettingKind, SourceLimits, Strategy, TaskSink};
use crate::engines::registry;
use crate::plan::schema::ConnectionKind;
use crate::plan::{Plan, ServerSide, TableSpec};
use crate::task::{GraphError, Partition, Placement, TaskKind};

pub struct Export;

/// `settings.verify_read_back = true`: verify re-reads and re-hashes every file.
pub const VERIFY_READ_BACK: &str = "verify_read_back";
/// `settings.manifest`: the manifest's object key.
pub const MANIFEST: &str = "manifest";

/// Object key used when a table has no `path`.
pub const DEFAULT_PATH: &str = "{{ table.name }}/{{ partition_id }}/part-{{ chunk }}.{{ ext }}";

impl Strategy for Export {
    fn summary(&self) -> &'static str {
        "ClickHouse or MySQL partitions or a query → CSV/TSV/Native/Parquet files or objects, verified"
    }

    fn templates(&self, source: ConnectionKind, kind: TaskKind) -> Vec<&'static str> {
        registry::export_source(source)
            .map(|e| (e.templates)(kind))
            .unwrap_or_default()
    }

    fn own_keys(&self) -> &'static [&'static str] {
        &[
            "partition_expr",
            "format",
            "path",
            "server_side",
            "formatting",
        ]
    }

    fn settings(&self) -> &'static [Setting] {
        &[
            Setting {
                key: VERIFY_READ_BACK,
                kind: SettingKind::Bool,
                help: "set it to true (verify re-reads every file) or false",
            },
            Setting {
                key: MANIFEST,
                kind: SettingKind::ObjectKey,
                help: "a relative object key in the target, e.g. \"trips/_manifest.json\"",
            },
        ]
    }

    fn runtime(&self, _table: &TableSpec) -> super::Runtime {
        super::Runtime::Export
    }

    fn source_limits(&self, source: ConnectionKind) -> SourceLimits {
        match registry::export_source(source) {
            Some(e) => SourceLimits {
                formats: Some(e.formats),
                unsupported: e.unsupported,
            },
            None => SourceLimits::default(),
        }
    }

    fn requirements(&self) -> Requirements {
        Requirements {
            source_kinds: registry::export_source_kinds(),
            target_kinds: vec![ConnectionKind::Fs, ConnectionKind::S3],
            target_required: true,
            allows_query: true,
            allows_whole_database: false,
            partitioned: false,
            swap_by_default: false,
        }
    }

    fn expand(
        &self,
        plan: &Plan,
        table: &TableSpec,
        partitions: Option<&[Arc<Partition>]>,
        b: &mut dyn TaskSink,
    ) -> Result<(), GraphError> {
        let source = table.source.clone();
        let target = table.target.clone().expect("export targets are checked");
        let split = b.split_task()?;
        let Some(partitions) = partitions else {
            return path_distinguishes_units(table, b);
        };
        let placement = match (table.server_side, plan.connection(&target).kind) {
            (ServerSide::Never, _) | (_, ConnectionKind::Fs) => Placement::Streamed,
            _ => Placement::InServer,
        };
        let mut verifies = Vec::new();
        let mut keys = Vec::new();
        for partition in partitions {
            let chunks: Vec<Option<u32>> = if partition.chunks.is_empty() {
                vec![None]
            } else {
                partition.chunks.iter().map(|c| Some(c.index)).collect()
            };
            let mut exports = Vec::new();
            for chunk in chunks {
                let mut inputs = BTreeMap::new();
                let key = b.render_path(DEFAULT_PATH, partition, chunk)?;
                keys.push(key.clone());
                inputs.insert("path".into(), key);
                inputs.insert("format".into(), table.format.clickhouse_name().into());
                inputs.insert(
                    "server_side".into(),
                    format!("{:?}", table.server_side).to_lowercase(),
                );
                let export = b.partition_task(
                    (partition, chunk),
                    "export",
                    TaskKind::Export,
                    placement,
                    vec![source.clone(), target.clone()],
                    inputs,
                )?;
                if let Some(split) = split {
                    b.depend(export, split);
                }
                exports.push(export);
            }
            let verify = b.partition_task(
                (partition, None),
                "verify",
                TaskKind::Verify,
                Placement::Metadata,
                vec![source.clone(), target.clone()],
                BTreeMap::new(),
            )?;
            for e in exports {
                b.depend(verify, e);
            }
            verifies.push(verify);
        }
        let manifest_path = match table.text_setting(MANIFEST) {
            Some(key) => key.to_string(),
            None => manifest_key(&table.name, &keys),
        };
        let manifest = b.table_task(
            "manifest",
            TaskKind::Manifest,
            Placement::Metadata,
            vec![target.clone()],
            BTreeMap::from([("path".to_string(), manifest_path)]),
        )?;
        for v in verifies {
            b.depend(manifest, v);
        }
        Ok(())
    }
}

/// Before the partitions are known (listed at apply time), a `path` that renders one
/// key for two partitions, or for two chunks of a partition that may be cut, is refused
/// now: every unit would overwrite the same object.
fn path_distinguishes_units(table: &TableSpec, b: &dyn TaskSink) -> Result<(), GraphError> {
    if !b.is_partitioned() {
        return Ok(());
    }
    let probe = |id: &str| {
        Arc::new(Partition {
            id: id.into(),
            value: None,
            filter: None,
            rows: None,
            bytes: None,
            chunks: vec![],
        })
    };
    let (a, z) = (probe("201501"), probe("201502"));
    let key = b.render_path(DEFAULT_PATH, &a, None)?;
    if key == b.render_path(DEFAULT_PATH, &z, None)? {
        return Err(GraphError::PathNotUnique {
            table: table.name.clone(),
            key,
            unit: "partition",
        });
    }
    let cut = table.split_by.is_some() && (table.max_rows.is_some() || table.max_bytes.is_some());
    if cut {
        let key = b.render_path(DEFAULT_PATH, &a, Some(0))?;
        if key == b.render_path(DEFAULT_PATH, &a, Some(1))? {
            return Err(GraphError::PathNotUnique {
                table: table.name.clone(),
                key,
                unit: "chunk of a partition cut by max_rows/max_bytes",
            });
        }
    }
    Ok(())
}

/// Where the manifest goes: beside the files (their common directory), or
/// `<table>.manifest.json` at the root when they share none.
pub fn manifest_key(table_name: &str, keys: &[String]) -> String {
    let mut common: Option<Vec<&str>> = None;
    for k in keys {
        let dirs: Vec<&str> = match k.rsplit_once('/') {
            Some((d, _)) => d.split('/').collect(),
            None => vec![],
        };
        common = Some(match common {
            None => dirs,
            Some(c) => c
                .iter()
                .zip(dirs.iter())
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| *a)
                .collect(),
        });
    }
    match common {
        Some(c) if !c.is_empty() => format!("{}/_manifest.json", c.join("/")),
        _ => format!("{}.manifest.json", table_name.replace('/', "_")),
    }
}

#[cfg(test)]
mod tests {
    use super::manifest_key;

    #[test]
    fn manifests_sit_beside_the_files() {
        let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            manifest_key(
                "default.trips",
                &keys(&["trips/201506/part-000.csv", "trips/201507/part-000.csv"])
            ),
            "trips/_manifest.json"
        );
        assert_eq!(
            manifest_key("default.trips", &keys(&["a.csv", "b.csv"])),
            "default.trips.manifest.json"
        );
        assert_eq!(
            manifest_key("q", &keys(&["x/y/a.csv"])),
            "x/y/_manifest.json"
        );
    }
}
