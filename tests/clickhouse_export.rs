//! Strategy `export` against real servers: awkward data in every format, to a local
//! directory and to S3 (streamed, and server-side on the modern engine), verified,
//! then loaded back into a table with the same structure: same rows, same checksum.

mod clickhouse_common;
mod support;

use std::sync::Arc;

use clickhouse_common::{ch, stats, AWKWARD_COLUMNS, AWKWARD_VALUES};
use flow::engines::clickhouse::export::{
    export_streamed, export_unit, verify_partition, ExportPath, ExportUnit, ExportedFile,
    ProbeCache, VerifyRequest,
};
use flow::engines::clickhouse::split::{split, Grouping, SplitRequest};
use flow::engines::clickhouse::{and_all, Ch};
use flow::engines::store::fs::FsStore;
use flow::engines::store::s3::{S3Config, S3Store};
use flow::engines::store::Store;
use flow::plan::{ExportFormat, Secret, ServerSide};
use tokio_util::sync::CancellationToken;

/// Extra columns only the modern engine has.
const MODERN_COLUMNS: &str = ", lc LowCardinality(String), lcn LowCardinality(Nullable(String)), \
    u UUID, t64 DateTime64(3)";

fn formats(modern: bool) -> Vec<ExportFormat> {
    let mut f = vec![
        ExportFormat::Csv,
        ExportFormat::Tsv,
        ExportFormat::JsonEachRow,
        ExportFormat::Native,
    ];
    if modern {
        f.push(ExportFormat::Parquet);
    }
    f
}

fn create_awkward(db: &support::ChDatabase, modern: bool) -> String {
    let t = format!("{}.awkward", db.name());
    let extra = if modern { MODERN_COLUMNS } else { "" };
    db.exec(&format!(
        "CREATE TABLE {t} ({AWKWARD_COLUMNS}{extra}) ENGINE = MergeTree \
         PARTITION BY (toYYYYMM(d), k) ORDER BY id"
    ));
    if modern {
        db.exec(&format!(
            "INSERT INTO {t} SELECT *, concat('lc', toString(id % 3)), if(id % 2 = 0, NULL, 'lc,\"n\"'), \
             generateUUIDv4(), toDateTime64('2015-06-01 10:00:00.123', 3) + id \
             FROM (SELECT * FROM values('{AWKWARD_COLUMNS}', {}))",
            AWKWARD_VALUES.trim().replace('\n', " ")
        ));
    } else {
        db.exec(&format!("INSERT INTO {t} VALUES {AWKWARD_VALUES}"));
    }
    // A table without partition key.
    db.exec(&format!(
        "CREATE TABLE {}.flat ({AWKWARD_COLUMNS}) ENGINE = MergeTree ORDER BY id",
        db.name()
    ));
    db.exec(&format!(
        "INSERT INTO {}.flat VALUES {AWKWARD_VALUES}",
        db.name()
    ));
    t
}

async fn reload(
    ch: &Ch,
    store: &dyn Store,
    files: &[ExportedFile],
    target: &str,
    format: ExportFormat,
) {
    for f in files {
        let data = store.get(&f.key).await.unwrap().expect("exported object");
        let mut insert = ch.client.insert(&format!(
            "INSERT INTO {target} FORMAT {}",
            format.clickhouse_name()
        ));
        insert.send(data).await.unwrap();
        insert
            .end()
            .await
            .unwrap_or_else(|e| panic!("reload of {} ({format:?}) failed: {e}", f.location));
    }
}

struct Case<'a> {
    ch: &'a Ch,
    db: &'a support::ChDatabase,
    store: Arc<dyn Store>,
    table: &'a str,
    bounds: Option<&'a str>,
    declared: Option<Vec<String>>,
    server_side: ServerSide,
    prefix: &'a str,
}

/// Splits, exports every unit in `format`, verifies each partition, reloads, compares.
async fn export_and_reload(case: &Case<'_>, format: ExportFormat) -> Vec<ExportPath> {
    let Case {
        ch,
        db,
        store,
        table,
        ..
    } = case;
    let from = format!("`{}`.`{table}`", db.name());
    let result = split(
        ch,
        &SplitRequest {
            database: db.name().into(),
            table: table.to_string(),
            grouping: Grouping::Expression,
            partition_expr: None,
            bounds: case.bounds.map(str::to_string),
            split_by: Some("id".into()),
            max_rows: Some(1),
            max_bytes: None,
            declared: case.declared.clone(),
        },
    )
    .await
    .unwrap();
    let reload_table = format!("{}.reload_{}_{}", db.name(), table, format.extension());
    db.exec(&format!("CREATE TABLE {reload_table} AS {from}"));
    let probes = ProbeCache::default();
    let cancel = CancellationToken::new();
    let mut paths = Vec::new();
    for p in &result.partitions {
        let chunks: Vec<Option<u32>> = if p.chunks.is_empty() {
            vec![None]
        } else {
            p.chunks.iter().map(|c| Some(c.index)).collect()
        };
        let mut files = Vec::new();
        for chunk in chunks {
            let chunk_filter = chunk.map(|c| p.chunks[c as usize].filter.clone());
            let unit = ExportUnit {
                from: from.clone(),
                filter: and_all([p.filter.as_deref(), case.bounds, chunk_filter.as_deref()]),
                key: format!(
                    "{}/{table}/{}/part-{:03}.{}",
                    case.prefix,
                    p.id,
                    chunk.unwrap_or(0),
                    format.extension()
                ),
                format,
                server_side: case.server_side,
                chunk,
            };
            let (file, note) = export_unit(ch, store.as_ref(), &unit, &probes, &cancel)
                .await
                .unwrap_or_else(|e| panic!("export {} ({format:?}): {e}", unit.key));
            paths.push(file.path);
            assert!(!note.is_empty());
            files.push(file);
        }
        let filter = and_all([p.filter.as_deref(), case.bounds]);
        let (verified, _) = verify_partition(
            ch,
            store.as_ref(),
            VerifyRequest {
                partition: p,
                from: &from,
                filter: filter.as_deref(),
                format,
                files: files.clone(),
                read_back: true,
            },
            &cancel,
        )
        .await
        .unwrap_or_else(|e| panic!("verify {} ({format:?}): {e}", p.id));
        assert_eq!(Some(verified.rows), p.rows, "partition {}", p.id);
        reload(ch, store.as_ref(), &files, &reload_table, format).await;
    }
    let source = stats(ch, &from, case.bounds).await;
    let reloaded = stats(ch, &reload_table, None).await;
    assert_eq!(
        source, reloaded,
        "{table} in {format:?}: source vs reloaded (rows, checksum)"
    );
    assert!(source.rows > 0);
    paths
}

#[tokio::test]
async fn awkward_data_exports_to_files_and_reloads_identically() {
    for (modern, url) in [(false, support::ch_url()), (true, support::chdb_url())] {
        let db = support::ChDatabase::new(&url, "export");
        create_awkward(&db, modern);
        let ch = ch(&url);
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(FsStore::new(dir.path()));
        for format in formats(modern) {
            // Tuple partition key, a bound that leaves out September, and a declared
            // partition without rows (an empty file).
            let case = Case {
                ch: &ch,
                db: &db,
                store: store.clone(),
                table: "awkward",
                bounds: Some("d < '2015-09-01'"),
                declared: None,
                server_side: ServerSide::Auto,
                prefix: "fs",
            };
            let paths = export_and_reload(&case, format).await;
            assert!(paths.iter().all(|p| *p == ExportPath::Streamed));
            // The unpartitioned table: one unit.
            let case = Case {
                table: "flat",
                bounds: None,
                ..case
            };
            export_and_reload(&case, format).await;
        }
        // An empty partition: a header-only file, verified at 0 rows.
        let from = format!("`{}`.`awkward`", db.name());
        let file = export_streamed(
            &ch,
            store.as_ref(),
            &ExportUnit {
                from: from.clone(),
                filter: Some("0".into()),
                key: "fs/empty/part-000.csv".into(),
                format: ExportFormat::Csv,
                server_side: ServerSide::Never,
                chunk: None,
            },
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(file.rows, 0);
        let text = store.get("fs/empty/part-000.csv").await.unwrap().unwrap();
        assert!(text.starts_with(b"\"id\",\"d\""), "{text:?}");
    }
}

async fn s3_store(bucket: &str) -> Arc<dyn Store> {
    Arc::new(
        S3Store::connect(S3Config {
            connection: "lake".into(),
            endpoint: Some(support::s3_endpoint()),
            region: Some(support::aws_region()),
            bucket: bucket.into(),
            prefix: "exports".into(),
            path_style: None,
            access_key_id: Some(Secret::new("test")),
            secret_access_key: Some(Secret::new("test")),
            part_size: 5 << 20,
            parts_in_flight: 2,
        })
        .await
        .unwrap(),
    )
}

#[tokio::test]
async fn exports_to_s3_streamed_and_server_side() {
    let bucket = support::S3Bucket::new("export").await;
    let store = s3_store(bucket.name()).await;
    for (modern, url) in [(false, support::ch_url()), (true, support::chdb_url())] {
        let db = support::ChDatabase::new(&url, "exports3");
        create_awkward(&db, modern);
        let ch = ch(&url);
        for format in formats(modern) {
            let case = Case {
                ch: &ch,
                db: &db,
                store: store.clone(),
                table: "awkward",
                bounds: None,
                declared: None,
                server_side: ServerSide::Auto,
                prefix: if modern { "modern" } else { "old" },
            };
            let paths = export_and_reload(&case, format).await;
            let expected = if modern {
                ExportPath::ServerSide
            } else {
                ExportPath::Streamed
            };
            assert!(
                paths.iter().all(|p| *p == expected),
                "{format:?} on {}: {paths:?}",
                if modern { "modern" } else { "18.16" }
            );
            if modern {
                // The same through flow when the plan says never.
                let case = Case {
                    server_side: ServerSide::Never,
                    prefix: "modern-streamed",
                    table: "flat",
                    ..case
                };
                let paths = export_and_reload(&case, format).await;
                assert!(paths.iter().all(|p| *p == ExportPath::Streamed));
            }
        }
        if !modern {
            // 18.16 cannot write to S3 itself: `always` fails with the reason.
            let err = export_unit(
                &ch,
                store.as_ref(),
                &ExportUnit {
                    from: format!("`{}`.`awkward`", db.name()),
                    filter: None,
                    key: "old/always.csv".into(),
                    format: ExportFormat::Csv,
                    server_side: ServerSide::Always,
                    chunk: None,
                },
                &ProbeCache::default(),
                &CancellationToken::new(),
            )
            .await
            .unwrap_err();
            assert!(
                err.message.contains("INSERT INTO FUNCTION s3"),
                "{}",
                err.message
            );
            assert!(!err.retryable);
        }
    }
}

#[test]
fn flow_apply_exports_partitions_chunks_and_a_manifest() {
    // Through the binary: split (with a declared month without rows and a sub-split),
    // exports, verifies, manifest; then a re-run with --resume does nothing twice.
    let db = support::ChDatabase::new(&support::ch_url(), "applyexport");
    create_awkward(&db, false);
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            r#"
[plan]
name = "apply-export"
concurrency = 3

[connections.ch]
kind = "clickhouse"
url = "{}"

[connections.out]
kind = "fs"
path = "out"

[[tables]]
source = "ch"
database = "{}"
table = "awkward"
mode = "partition"
partition_expr = "toYYYYMM(d)"
partitions = ["201506", "201507", "201508", "201512"]
split_by = "id"
max_rows = 2
strategy = "export"
target = "out"
format = "tsv"
path = "awkward/{{{{ partition_id }}}}/part-{{{{ chunk }}}}.tsv"
"#,
            support::ch_url(),
            db.name()
        ),
    )
    .unwrap();
    let run = |resume: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flow"));
        cmd.arg("apply").arg(&plan).arg("--progress").arg("plain");
        if resume {
            cmd.arg("--resume");
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        stderr
    };
    let first = run(false);
    assert!(
        first.contains("201512"),
        "the empty month is named: {first}"
    );
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("out/awkward/_manifest.json")).unwrap(),
    )
    .unwrap();
    let expected: u64 = db
        .exec(&format!(
            "SELECT count() FROM {}.awkward WHERE toYYYYMM(d) IN (201506, 201507, 201508)",
            db.name()
        ))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(manifest["rows"], expected);
    let partitions = manifest["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 4);
    let june = partitions
        .iter()
        .find(|p| p["partition"] == "201506")
        .unwrap();
    assert!(
        june["files"].as_array().unwrap().len() >= 2,
        "June is cut into chunks"
    );
    let december = partitions
        .iter()
        .find(|p| p["partition"] == "201512")
        .unwrap();
    assert_eq!(december["rows"], 0);
    for p in partitions {
        for f in p["files"].as_array().unwrap() {
            let path = dir.path().join("out").join(f["key"].as_str().unwrap());
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(bytes.len() as u64, f["bytes"].as_u64().unwrap());
            assert_eq!(
                blake3::hash(&bytes).to_hex().to_string(),
                f["blake3"].as_str().unwrap()
            );
        }
    }
    let second = run(true);
    assert!(!second.contains("started"), "nothing runs twice: {second}");
}

#[tokio::test]
async fn a_server_error_in_the_middle_of_a_stream_fails_the_export_and_writes_nothing() {
    for url in [support::ch_url(), support::chdb_url()] {
        let ch = ch(&url);
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(FsStore::new(dir.path()));
        for format in [ExportFormat::Csv, ExportFormat::Native] {
            let unit = ExportUnit {
                from: "(SELECT number, toString(number) AS s, throwIf(number = 700000) AS boom \
                       FROM system.numbers LIMIT 1000000)"
                    .into(),
                filter: None,
                key: format!("boom.{}", format.extension()),
                format,
                server_side: ServerSide::Never,
                chunk: None,
            };
            let err = export_streamed(&ch, store.as_ref(), &unit, &CancellationToken::new())
                .await
                .expect_err("the export must fail");
            assert!(
                err.message.contains("395")
                    || err.message.to_lowercase().contains("throwif")
                    || err.message.contains("FUNCTION_THROW_IF_VALUE_IS_NON_ZERO"),
                "{url} {format:?}: {}",
                err.message
            );
            assert!(
                store.list("").await.unwrap().is_empty(),
                "nothing committed"
            );
        }
    }
}

#[tokio::test]
async fn verify_catches_missing_and_altered_files() {
    let db = support::ChDatabase::new(&support::ch_url(), "tamper");
    create_awkward(&db, false);
    let ch = ch(&support::ch_url());
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(FsStore::new(dir.path()));
    let from = format!("`{}`.`flat`", db.name());
    let unit = ExportUnit {
        from: from.clone(),
        filter: None,
        key: "flat.csv".into(),
        format: ExportFormat::Csv,
        server_side: ServerSide::Never,
        chunk: None,
    };
    let cancel = CancellationToken::new();
    let file = export_streamed(&ch, store.as_ref(), &unit, &cancel)
        .await
        .unwrap();
    let partition = flow::graph::Partition {
        id: "all".into(),
        value: None,
        filter: None,
        rows: Some(file.rows),
        bytes: None,
        chunks: vec![],
    };
    let verify = |read_back: bool| {
        let (ch, store, partition, from, file) = (
            ch.clone(),
            store.clone(),
            partition.clone(),
            from.clone(),
            file.clone(),
        );
        async move {
            verify_partition(
                &ch,
                store.as_ref(),
                VerifyRequest {
                    partition: &partition,
                    from: &from,
                    filter: None,
                    format: ExportFormat::Csv,
                    files: vec![file],
                    read_back,
                },
                &CancellationToken::new(),
            )
            .await
        }
    };
    verify(false).await.unwrap();
    verify(true).await.unwrap();
    // Same size, one byte changed: only the read-back sees it.
    let path = dir.path().join("flat.csv");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    verify(false).await.unwrap();
    let err = verify(true).await.unwrap_err();
    assert!(err.message.contains("does not hash"), "{}", err.message);
    // Truncated, then gone.
    std::fs::write(&path, &bytes[..10]).unwrap();
    assert!(verify(false).await.unwrap_err().message.contains("bytes"));
    std::fs::remove_file(&path).unwrap();
    assert!(verify(false).await.unwrap_err().message.contains("missing"));
    // A row arrives in the source: the export no longer matches.
    db.exec(&format!(
        "INSERT INTO {}.flat SELECT * FROM {}.flat LIMIT 1",
        db.name(),
        db.name()
    ));
    export_streamed(&ch, store.as_ref(), &unit, &cancel)
        .await
        .unwrap();
    let err = verify(false).await.unwrap_err();
    assert!(err.message.contains("rows"), "{}", err.message);
}
