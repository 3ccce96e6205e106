//! The real-server test stack works through the crates flow uses: each test talks to
//! one server of `scripts/services up` the way the engines do. When one of these fails,
//! the stack is broken, not flow.

mod support;

use clickhouse::Row;
use serde::{Deserialize, Serialize};
use support::*;

// ------------------------------------------------------------------ ClickHouse 18.16

#[derive(Debug, Row, Serialize, Deserialize, PartialEq)]
struct Event {
    day: u16, // Date: days since 1970-01-01
    id: u32,
    name: String,
}

#[tokio::test]
async fn clickhouse_18_partitioned_merge_tree() {
    let db = ChDatabase::new(&ch_url(), "stack_ch");
    let client = ch_client().with_database(db.name());
    let version: String = client.query("SELECT version()").fetch_one().await.unwrap();
    assert!(version.starts_with("18.16"), "ClickHouse version {version}");

    client
        .query(
            "CREATE TABLE events (day Date, id UInt32, name String) \
             ENGINE = MergeTree PARTITION BY toYYYYMM(day) ORDER BY (day, id)",
        )
        .execute()
        .await
        .unwrap();

    // 2015-01-01 is day 16436; three months, 100 rows each.
    let mut insert = client.insert::<Event>("events").await.unwrap();
    for (month, first_day) in [16436u16, 16467, 16495].into_iter().enumerate() {
        for i in 0..100u32 {
            let row = Event {
                day: first_day + (i % 28) as u16,
                id: month as u32 * 1000 + i,
                name: format!("event {i}"),
            };
            insert.write(&row).await.unwrap();
        }
    }
    insert.end().await.unwrap();

    let count: u64 = client
        .query("SELECT count() FROM events")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(count, 300);

    let parts: Vec<(String, u64)> = client
        .query(
            "SELECT partition, sum(rows) FROM system.parts \
             WHERE database = ? AND table = 'events' AND active \
             GROUP BY partition ORDER BY partition",
        )
        .bind(db.name())
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        parts,
        vec![
            ("201501".to_string(), 100),
            ("201502".to_string(), 100),
            ("201503".to_string(), 100)
        ]
    );

    let first: Event = client
        .query("SELECT ?fields FROM events ORDER BY day, id LIMIT 1")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        first,
        Event {
            day: 16436,
            id: 0,
            name: "event 0".into()
        }
    );
}

// ------------------------------------------------------------------ modern engine (chdb front)

#[derive(Debug, Row, Serialize, Deserialize, PartialEq, Clone)]
struct Trip {
    id: u64,
    city: String,
    fare: f64,
    note: Option<String>,
}

#[tokio::test]
async fn chdb_front_typed_insert_fetch_and_csv_with_validation() {
    let db = ChDatabase::new(&chdb_url(), "stack_chdb");
    let client = chdb_client().with_database(db.name());
    let version: String = client.query("SELECT version()").fetch_one().await.unwrap();
    let major: u32 = version.split('.').next().unwrap().parse().unwrap();
    assert!(major >= 24, "modern engine version {version}");

    client
        .query(
            "CREATE TABLE trips (id UInt64, city String, fare Float64, note Nullable(String)) \
             ENGINE = MergeTree ORDER BY id",
        )
        .execute()
        .await
        .unwrap();

    // Typed insert with validation (DESCRIBE TABLE + RowBinaryWithNamesAndTypes),
    // LZ4-compressed chunked body (decompress=1).
    let rows: Vec<Trip> = (0..20_000u64)
        .map(|i| Trip {
            id: i,
            city: ["Oslo", "Lima", "Pune"][(i % 3) as usize].to_string(),
            fare: i as f64 / 4.0,
            note: (i % 2 == 0).then(|| format!("n{i}")),
        })
        .collect();
    let mut insert = client.insert::<Trip>("trips").await.unwrap();
    for row in &rows {
        insert.write(row).await.unwrap();
    }
    insert.end().await.unwrap();

    // Typed fetch with validation (RowBinaryWithNamesAndTypes).
    let fetched: Vec<Trip> = client
        .query("SELECT ?fields FROM trips ORDER BY id")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(fetched, rows);

    // Cursor over a bigger result, streamed in chunks by the front.
    let mut cursor = client
        .query("SELECT number FROM numbers(3000000)")
        .fetch::<u64>()
        .unwrap();
    let (mut n, mut sum) = (0u64, 0u64);
    while let Some(x) = cursor.next().await.unwrap() {
        n += 1;
        sum += x;
    }
    assert_eq!((n, sum), (3_000_000, 3_000_000 * 2_999_999 / 2));

    // Zero rows still validate (the header comes in a chunk with no rows).
    let none: Vec<Trip> = client
        .query("SELECT ?fields FROM trips WHERE id > 1000000")
        .fetch_all()
        .await
        .unwrap();
    assert!(none.is_empty());

    // Raw streaming in a named format.
    let csv = client
        .query("SELECT id, city FROM trips WHERE id < 3 ORDER BY id")
        .fetch_bytes("CSVWithNames")
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        std::str::from_utf8(&csv).unwrap(),
        "\"id\",\"city\"\n0,\"Oslo\"\n1,\"Lima\"\n2,\"Pune\"\n"
    );

    // Server-side parameters (multipart body) and settings as URL parameters.
    let city: String = client
        .query("SELECT city FROM trips WHERE id = {id:UInt64}")
        .param("id", 4u64)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(city, "Lima");
    let threads: String = client
        .query("SELECT getSetting('max_threads')::String")
        .with_setting("max_threads", "3")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(threads, "3");
}

#[tokio::test]
async fn chdb_front_reports_errors_like_clickhouse() {
    let client = chdb_client();
    let err = client
        .query("SELECT * FROM no_such_db.no_such_table")
        .execute()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Code: 81") || err.contains("Code: 60"),
        "{err}"
    );
    let raw = ch_try_exec(&chdb_url(), "SELEC 1").unwrap_err();
    assert!(raw.starts_with("HTTP 500: Code: 62."), "{raw}");

    // An error after the first chunks were sent must not look like a complete result.
    let mut cursor = client
        .query("SELECT throwIf(number = 2500000) FROM numbers(3000000)")
        .fetch::<u8>()
        .unwrap();
    let outcome = loop {
        match cursor.next().await {
            Ok(Some(_)) => continue,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e.to_string()),
        }
    };
    let err = outcome.expect_err("a failed query ended like a complete one");
    assert!(err.contains("Code: 395."), "{err}");
}

#[tokio::test]
async fn chdb_front_s3_storage_policy_puts_parts_on_s3() {
    let db = ChDatabase::new(&chdb_url(), "stack_s3pol");
    let client = chdb_client().with_database(db.name());
    let policies: Vec<String> = client
        .query("SELECT DISTINCT policy_name FROM system.storage_policies ORDER BY policy_name")
        .fetch_all()
        .await
        .unwrap();
    assert!(
        policies.contains(&"default".to_string()) && policies.contains(&"s3".to_string()),
        "{policies:?}"
    );
    client
        .query(
            "CREATE TABLE cold (d Date, id UInt64) ENGINE = MergeTree \
             PARTITION BY toYYYYMM(d) ORDER BY id SETTINGS storage_policy = 's3'",
        )
        .execute()
        .await
        .unwrap();
    client
        .query(
            "INSERT INTO cold SELECT if(number % 2 = 0, toDate('2015-01-10'), toDate('2015-02-10')), \
             number FROM numbers(10000)",
        )
        .execute()
        .await
        .unwrap();
    let disks: Vec<(String, String, u64)> = client
        .query(
            "SELECT partition, disk_name, sum(rows) FROM system.parts \
             WHERE database = currentDatabase() AND table = 'cold' AND active \
             GROUP BY partition, disk_name ORDER BY partition",
        )
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        disks,
        vec![
            ("201501".to_string(), "s3".to_string(), 5000),
            ("201502".to_string(), "s3".to_string(), 5000)
        ]
    );

    let objects = s3_client()
        .list_objects_v2()
        .bucket(chdb_disk_bucket())
        .send()
        .await
        .unwrap();
    assert!(
        objects.key_count().unwrap_or(0) > 0,
        "no objects behind the s3 disk"
    );
}

// ------------------------------------------------------------------ S3 (moto)

#[tokio::test]
async fn s3_put_get_multipart_and_conditional_put() {
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

    let bucket = S3Bucket::new("stack-s3").await;
    let s3 = bucket.client();

    s3.put_object()
        .bucket(bucket.name())
        .key("a/one.csv")
        .body(ByteStream::from_static(b"id\n1\n"))
        .send()
        .await
        .unwrap();
    let body = s3
        .get_object()
        .bucket(bucket.name())
        .key("a/one.csv")
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(&body[..], b"id\n1\n");

    // Multipart: a 5 MiB part (the minimum for non-last parts) and a small last one.
    let key = "big/part-0.csv";
    let upload = s3
        .create_multipart_upload()
        .bucket(bucket.name())
        .key(key)
        .send()
        .await
        .unwrap();
    let upload_id = upload.upload_id().unwrap();
    let mut parts = Vec::new();
    for (n, data) in [vec![b'x'; 5 << 20], vec![b'y'; 1000]]
        .into_iter()
        .enumerate()
    {
        let n = n as i32 + 1;
        let part = s3
            .upload_part()
            .bucket(bucket.name())
            .key(key)
            .upload_id(upload_id)
            .part_number(n)
            .body(ByteStream::from(data))
            .send()
            .await
            .unwrap();
        parts.push(
            CompletedPart::builder()
                .part_number(n)
                .e_tag(part.e_tag().unwrap())
                .build(),
        );
    }
    s3.complete_multipart_upload()
        .bucket(bucket.name())
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let head = s3
        .head_object()
        .bucket(bucket.name())
        .key(key)
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some((5 << 20) + 1000));

    // If-None-Match: * writes a new key once and refuses to overwrite it.
    let put_once = |key: &'static str| {
        s3.put_object()
            .bucket(bucket.name())
            .key(key)
            .if_none_match("*")
            .body(ByteStream::from_static(b"manifest"))
            .send()
    };
    put_once("manifest.json").await.unwrap();
    let err = put_once("manifest.json").await.unwrap_err();
    let status = err.raw_response().map(|r| r.status().as_u16());
    assert_eq!(status, Some(412), "{err:?}");
}

// ------------------------------------------------------------------ EC2 (moto)

#[tokio::test]
async fn ec2_volume_snapshot_and_tags() {
    use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};

    let ec2 = ec2_client();
    let run = unique_name("stack");
    let tags = |kind: ResourceType| {
        TagSpecification::builder()
            .resource_type(kind)
            .tags(Tag::builder().key("flow-test").value(&run).build())
            .build()
    };
    let volume = ec2
        .create_volume()
        .availability_zone("us-east-1a")
        .size(10)
        .tag_specifications(tags(ResourceType::Volume))
        .send()
        .await
        .unwrap();
    let volume_id = volume.volume_id().unwrap().to_string();
    let snapshot = ec2
        .create_snapshot()
        .volume_id(&volume_id)
        .description("flow stack test")
        .tag_specifications(tags(ResourceType::Snapshot))
        .send()
        .await
        .unwrap();
    let snapshot_id = snapshot.snapshot_id().unwrap().to_string();

    let found = ec2
        .describe_snapshots()
        .filters(Filter::builder().name("tag:flow-test").values(&run).build())
        .send()
        .await
        .unwrap();
    let ids: Vec<&str> = found
        .snapshots()
        .iter()
        .filter_map(|s| s.snapshot_id())
        .collect();
    assert_eq!(ids, vec![snapshot_id.as_str()]);
    assert_eq!(found.snapshots()[0].volume_id(), Some(volume_id.as_str()));

    // A volume from the snapshot in another availability zone.
    let restored = ec2
        .create_volume()
        .availability_zone("us-east-1b")
        .snapshot_id(&snapshot_id)
        .send()
        .await
        .unwrap();
    assert_eq!(restored.snapshot_id(), Some(snapshot_id.as_str()));

    for id in [restored.volume_id().unwrap(), volume_id.as_str()] {
        ec2.delete_volume().volume_id(id).send().await.unwrap();
    }
    ec2.delete_snapshot()
        .snapshot_id(&snapshot_id)
        .send()
        .await
        .unwrap();
}

// ------------------------------------------------------------------ MySQL (MariaDB)

#[tokio::test]
async fn mysql_create_insert_select() {
    use mysql_async::prelude::*;

    let db = MysqlDatabase::new("stack_my").await;
    let mut conn = db.pool().get_conn().await.unwrap();
    conn.query_drop(
        "CREATE TABLE trips (id INT PRIMARY KEY, city VARCHAR(32), fare DECIMAL(10,2))",
    )
    .await
    .unwrap();
    conn.exec_batch(
        "INSERT INTO trips (id, city, fare) VALUES (?, ?, ?)",
        (0..500).map(|i| (i, format!("city{}", i % 5), format!("{i}.25"))),
    )
    .await
    .unwrap();
    let (count, total): (u64, String) = conn
        .query_first("SELECT count(*), CAST(sum(fare) AS CHAR) FROM trips")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(count, 500);
    assert_eq!(total, "124875.00"); // sum(0..500) + 500 * 0.25
    let version: String = conn.query_first("SELECT VERSION()").await.unwrap().unwrap();
    assert!(version.contains("MariaDB"), "{version}");
    drop(conn);
}

// ------------------------------------------------------------------ PostgreSQL + pgcopydb

#[test]
fn pgcopydb_copies_a_database() {
    let source = PgDatabase::new("stack_pgsrc");
    let target = PgDatabase::new("stack_pgdst");
    psql(
        &source.url(),
        "CREATE TABLE trips AS SELECT g AS id, md5(g::text) AS note, now() AS at \
         FROM generate_series(1, 50000) g; \
         ALTER TABLE trips ADD PRIMARY KEY (id); \
         CREATE TABLE cities (name text PRIMARY KEY); \
         INSERT INTO cities VALUES ('Oslo'), ('Lima');",
    );

    let work = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}",
        pg_bin().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("pgcopydb")
        .args([
            "copy-db",
            "--source",
            &source.url(),
            "--target",
            &target.url(),
        ])
        .arg("--dir")
        .arg(work.path().join("pgcopydb"))
        .args(["--table-jobs", "2", "--index-jobs", "2", "--no-owner"])
        .env("PATH", path)
        .output()
        .expect("pgcopydb should be on PATH (scripts/services up postgres installs it)");
    assert!(
        out.status.success(),
        "pgcopydb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(psql(&target.url(), "SELECT count(*) FROM trips"), "50000");
    assert_eq!(psql(&target.url(), "SELECT count(*) FROM cities"), "2");
    assert_eq!(
        psql(
            &target.url(),
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'trips'"
        ),
        "1"
    );
}
