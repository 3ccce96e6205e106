//! Strategy `export` against real servers: awkward data in every format, to a local
//! directory and to S3 (streamed, and server-side on the modern engine), verified,
//! then loaded back into a table with the same structure: same rows, same checksum.

mod clickhouse_common;
mod support;

use std::sync::Arc;

use clickhouse_common::{ch, stats, AWKWARD_COLUMNS, AWKWARD_VALUES};
use flow::engines::clickhouse::export::{
    export_streamed, export_unit, verify_partition, ExportPath, ExportUnit, ExportedFile,
    VerifyRequest,
};
use flow::engines::clickhouse::split::{split, Grouping, SplitRequest};
use flow::engines::clickhouse::{and_all, Ch};
use flow::engines::store::fs::FsStore;
use flow::engines::store::s3::{S3Config, S3Store};
use flow::engines::store::Store;
use flow::plan::{ExportFormat, Formatting, Secret, ServerSide};
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

#[derive(Clone)]
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
    let reload_table = format!(
        "{}.reload_{}_{}_{}",
        db.name(),
        case.prefix.replace('-', "_"),
        table,
        format.extension()
    );
    db.exec(&format!("CREATE TABLE {reload_table} AS {from}"));
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
                formatting: Formatting::Auto,
                chunk,
            };
            let (file, note) = export_unit(ch, store.as_ref(), &unit, &cancel)
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
                formatting: Formatting::Auto,
                chunk: None,
            },
            &CancellationToken::new(),
        )
        .await
        .unwrap()
        .0;
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
                server_side: if modern {
                    ServerSide::Always
                } else {
                    ServerSide::Auto
                },
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
                // The same through flow when the plan says auto (no full read-back)
                // or never.
                for (server_side, prefix) in [
                    (ServerSide::Auto, "modern-auto"),
                    (ServerSide::Never, "modern-streamed"),
                ] {
                    let case = Case {
                        server_side,
                        prefix,
                        table: "flat",
                        ..case.clone()
                    };
                    let paths = export_and_reload(&case, format).await;
                    assert!(paths.iter().all(|p| *p == ExportPath::Streamed));
                }
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
                    formatting: Formatting::Auto,
                    chunk: None,
                },
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
                formatting: Formatting::Auto,
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
        formatting: Formatting::Auto,
        chunk: None,
    };
    let cancel = CancellationToken::new();
    let (file, _) = export_streamed(&ch, store.as_ref(), &unit, &cancel)
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
    // Same size, one byte changed: the file is no longer the one the export committed
    // (its identity in the store changed), and the read-back sees the bytes differ.
    let path = dir.path().join("flat.csv");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let err = verify(false).await.unwrap_err();
    assert!(
        err.message.contains("not the object the export wrote"),
        "{}",
        err.message
    );
    let mut same_identity = file.clone();
    same_identity.version = None;
    let err = verify_partition(
        &ch,
        store.as_ref(),
        VerifyRequest {
            partition: &partition,
            from: &from,
            filter: None,
            format: ExportFormat::Csv,
            files: vec![same_identity],
            read_back: true,
        },
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
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

/// Columns flow formats itself on every server (and the rows that exercise them).
const FORMATTABLE_COLUMNS: &str = "id UInt64, i8 Int8, u16 UInt16, i64 Int64, \
    f64 Float64, f32 Float32, d32 Decimal(9, 3), d64 Decimal(18, 4), d128 Decimal(38, 10), \
    day Date, at DateTime, at_sh DateTime('Asia/Shanghai'), at_lon DateTime('Europe/London'), \
    at_tok Nullable(DateTime('Asia/Tokyo')), s String, ns Nullable(String), fs FixedString(5), \
    e Enum8('a' = 1, 'it''s' = -2, 'q\"uote' = 3), e16 Enum16('big' = 1000, 'neg' = -1000), \
    nf Nullable(Float64), nd Nullable(Decimal(10, 2))";

/// Fills `t` with fixed edge values, then random bits reinterpreted as floats,
/// strings of random bytes, and times over the whole range the server prints itself.
fn fill_formattable(db: &support::ChDatabase, t: &str, modern: bool) {
    db.exec(&format!(
        "INSERT INTO {t} VALUES \
         (1, -128, 65535, -9223372036854775808, 1e21, 1e21, -0.001, 99999999999999.9999, \
          -1.5, '1970-01-02', '1970-01-01 00:00:01', '2020-02-29 23:59:59', \
          '2020-03-29 00:59:59', NULL, '', NULL, 'a\\0\"b', 'it''s', 'big', NULL, NULL), \
         (2, 127, 0, 9223372036854775807, 1e-7, 0.1, 0, 0, 0, '2099-12-31', \
          '2099-12-31 23:59:59', '1970-01-01 08:00:00', '2020-03-29 02:00:00', \
          '2020-01-01 05:30:00', 'he said \"hi\", then\\tleft\\n\\r\\\\ \\'q\\'', 'x', '\\t,\\n\"''', \
          'q\"uote', 'neg', 0.000001, -0.05)"
    ));
    // Random rows: enough for many blocks and compressed frames.
    let max_time = if modern { "4294967295" } else { "4102444799" };
    let max_day = if modern { "65535" } else { "47481" };
    db.exec(&format!(
        "INSERT INTO {t} SELECT number + 10, toInt8(rand() % 256 - 128), rand() % 65536, \
           toInt64(rand64()), reinterpretAsFloat64(reinterpretAsString(rand64(1))), \
           toFloat32(reinterpretAsFloat64(reinterpretAsString(rand64(2)))), \
           toDecimal32((toInt64(rand(3)) - 2147483648) % 1000000000 / 1000, 3), \
           toDecimal64((toInt64(rand(4)) - 2147483648) / 10000, 4), \
           toDecimal128((toInt64(rand(5)) - 2147483648) / 1000, 10), \
           toDate(1 + rand(6) % {max_day}), toDateTime(1 + rand(7) % {max_time}), \
           toDateTime(1 + rand(8) % {max_time}, 'Asia/Shanghai'), \
           toDateTime(1 + rand(9) % {max_time}, 'Europe/London'), \
           if(number % 7 = 0, NULL, toDateTime(1 + rand(10) % {max_time}, 'Asia/Tokyo')), \
           reinterpretAsString(rand64(11)), \
           if(number % 5 = 0, NULL, concat(reinterpretAsString(rand64(12)), '\"\\t\\n')), \
           toFixedString(reinterpretAsString(rand(13)), 5), \
           CAST(if(number % 3 = 0, 1, if(number % 3 = 1, -2, 3)) AS Enum8('a' = 1, 'it''s' = -2, 'q\"uote' = 3)), \
           CAST(if(number % 2 = 0, 1000, -1000) AS Enum16('big' = 1000, 'neg' = -1000)), \
           if(number % 4 = 0, NULL, rand(14) / 7), \
           if(number % 3 = 0, NULL, toDecimal64((toInt64(rand(15)) - 2147483648) / 100, 2)) \
         FROM numbers(200000)"
    ));
}

/// The same rows exported as flow formats them and as the server formats them must
/// be the same bytes, in CSV and TSV, on 18.16 and on the modern engine; the flow path
/// must really have been taken, and a stream flow cannot format falls back.
#[tokio::test]
async fn flow_formats_csv_and_tsv_byte_for_byte_as_the_server() {
    for (modern, url) in [(false, support::ch_url()), (true, support::chdb_url())] {
        let db = support::ChDatabase::new(&url, "fmt");
        let t = format!("{}.formattable", db.name());
        let extra = if modern {
            ", d32x Date32, t64 DateTime64(3), t64z Nullable(DateTime64(6, 'America/New_York')), \
             b Bool, kol DateTime('Asia/Kolkata')"
        } else {
            ""
        };
        db.exec(&format!(
            "CREATE TABLE {t} ({FORMATTABLE_COLUMNS}{extra}) ENGINE = MergeTree ORDER BY id"
        ));
        if modern {
            // The modern-only columns take their defaults, then get values.
            fill_formattable(
                &db,
                &format!("{t} ({})", column_names(FORMATTABLE_COLUMNS)),
                true,
            );
            db.exec(&format!(
                "ALTER TABLE {t} UPDATE d32x = toDate32('1900-01-01') + rand() % 100000, \
                 t64 = fromUnixTimestamp64Milli(toInt64(rand64()) % 2000000000000), \
                 t64z = if(id % 3 = 0, NULL, fromUnixTimestamp64Micro(toInt64(rand64()) % 2000000000000000, 'America/New_York')), \
                 b = id % 2 = 0, kol = toDateTime(rand() % 86400000) WHERE 1 \
                 SETTINGS mutations_sync = 1"
            ));
        } else {
            fill_formattable(&db, &t, false);
        }
        let ch = ch(&url);
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(FsStore::new(dir.path()));
        let export = |format, formatting, key: String, from: String| {
            let (ch, store) = (ch.clone(), store.clone());
            async move {
                let unit = ExportUnit {
                    from,
                    filter: None,
                    key: key.clone(),
                    format,
                    server_side: ServerSide::Never,
                    formatting,
                    chunk: None,
                };
                let (file, how) =
                    export_streamed(&ch, store.as_ref(), &unit, &CancellationToken::new())
                        .await
                        .unwrap_or_else(|e| panic!("{key}: {e}"));
                let bytes = store.get(&key).await.unwrap().unwrap();
                (file, how, bytes)
            }
        };
        for format in [ExportFormat::Csv, ExportFormat::Tsv] {
            let ext = format.extension();
            let from = format!("(SELECT * FROM {t} ORDER BY id)");
            let (flow_file, how, flow_bytes) = export(
                format,
                Formatting::Auto,
                format!("flow.{ext}"),
                from.clone(),
            )
            .await;
            assert_eq!(how, "formatted by flow", "{url} {format:?}");
            let (server_file, how, server_bytes) =
                export(format, Formatting::Server, format!("server.{ext}"), from).await;
            assert!(how.starts_with("formatted by the server"), "{how}");
            assert_eq!(flow_file.rows, 200_002);
            assert_eq!(flow_file.rows, server_file.rows);
            if flow_bytes != server_bytes {
                let at = flow_bytes
                    .iter()
                    .zip(server_bytes.iter())
                    .position(|(a, b)| a != b)
                    .unwrap_or(flow_bytes.len().min(server_bytes.len()));
                let line_start = server_bytes[..at]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1);
                let show = |b: &[u8]| {
                    String::from_utf8_lossy(&b[line_start..(at + 80).min(b.len())]).into_owned()
                };
                panic!(
                    "{url} {format:?}: flow's text differs from the server's at byte {at}:\n flow:   {:?}\n server: {:?}",
                    show(&flow_bytes),
                    show(&server_bytes)
                );
            }
            assert_eq!(flow_file.blake3, server_file.blake3);
        }
        // A stream with a type flow does not format (and, on 18.16, a date flow leaves
        // to the server) is formatted by the server, with the reason in the note.
        let (file, how, bytes) = export(
            ExportFormat::Csv,
            Formatting::Auto,
            "array.csv".into(),
            "(SELECT number AS id, [1, 2] AS a FROM numbers(100000))".into(),
        )
        .await;
        assert!(how.contains("Array(UInt8)"), "{how}");
        assert_eq!(file.rows, 100_000);
        assert!(
            bytes.starts_with(b"\"id\",\"a\"\n0,\"[1,2]\"\n1,"),
            "{:?}",
            &bytes[..40]
        );
        // A small result: 18.16 sends no compressed block at all; the server formats.
        let (file, how, bytes) = export(
            ExportFormat::Tsv,
            Formatting::Auto,
            "small.tsv".into(),
            "(SELECT 1 AS id, 'x' AS s)".into(),
        )
        .await;
        if !modern {
            assert!(how.contains("no rows in Native"), "{how}");
        }
        assert_eq!((file.rows, &bytes[..]), (1, &b"id\ts\n1\tx\n"[..]));
        if !modern {
            let (_, how, bytes) = export(
                ExportFormat::Csv,
                Formatting::Auto,
                "late.csv".into(),
                "(SELECT toDate('2105-01-01') - (number % 2) * 10000 AS d FROM numbers(1000000))"
                    .into(),
            )
            .await;
            assert!(how.contains("after 2099"), "{how}");
            assert!(
                bytes.starts_with(b"\"d\"\n\"2105-01-01\"\n"),
                "{:?}",
                &bytes[..30]
            );
            // 18.16 prints minutes wrongly in half-hour zones near 1970; flow leaves
            // those to it.
            let (_, how, bytes) = export(
                ExportFormat::Csv,
                Formatting::Auto,
                "kolkata.csv".into(),
                "(SELECT toDateTime(1830 + number, 'Asia/Kolkata') AS t FROM numbers(1000000))"
                    .into(),
            )
            .await;
            assert!(how.contains("whole hours"), "{how}");
            assert!(bytes.starts_with(b"\"t\"\n\"1970-01-01 "), "{bytes:?}");
        }
    }
}

/// `a UInt8, b String` → `a, b`.
fn column_names(columns: &str) -> String {
    let mut names = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in columns.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                names.push(
                    columns[start..i]
                        .split_whitespace()
                        .next()
                        .unwrap()
                        .to_string(),
                );
                start = i + 1;
            }
            _ => {}
        }
    }
    names.push(
        columns[start..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_string(),
    );
    names.join(", ")
}

/// The probe learns each server's style, and a setting that changes the text turns
/// flow's formatting off (the server formats, the bytes stay the server's).
#[tokio::test]
async fn the_probe_learns_each_server_and_refuses_changed_text_settings() {
    use flow::engines::clickhouse::{ChClient, ChParams};
    for (modern, url) in [(false, support::ch_url()), (true, support::chdb_url())] {
        let profile = ch(&url)
            .client
            .text_profile()
            .await
            .unwrap()
            .expect("profile");
        assert_eq!(profile.legacy_dates, !modern, "{url}");
        assert_eq!(profile.decimal_trailing_zeros, !modern, "{url}");
        assert_eq!(profile.booleans, modern, "{url}");
        {
            let (setting, value) = ("format_csv_delimiter", ";");
            let client = ChClient::new(ChParams {
                name: "changed".into(),
                url: url.clone(),
                settings: [(setting.to_string(), value.to_string())].into(),
                ..Default::default()
            })
            .unwrap();
            assert_eq!(
                client.text_profile().await.unwrap(),
                None,
                "{url}: {setting} = {value}"
            );
        }
    }
    // Settings 18.16 does not have: line ends, NULL and boolean text.
    for (setting, value) in [
        ("output_format_csv_crlf_end_of_line", "1"),
        ("output_format_tsv_crlf_end_of_line", "1"),
        ("format_csv_null_representation", "NULL"),
        ("bool_true_representation", "yes"),
        ("output_format_decimal_trailing_zeros", "1"),
    ] {
        let client = ChClient::new(ChParams {
            name: "changed".into(),
            url: support::chdb_url(),
            settings: [(setting.to_string(), value.to_string())].into(),
            ..Default::default()
        })
        .unwrap();
        let profile = client.text_profile().await.unwrap();
        if setting == "output_format_decimal_trailing_zeros" {
            // A style flow knows: learned, not refused.
            assert!(profile.expect("profile").decimal_trailing_zeros);
        } else {
            assert_eq!(profile, None, "{setting} = {value}");
        }
    }
}
