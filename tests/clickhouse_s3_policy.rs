//! Strategy `s3-policy` on the modern engine: the whole move ends with every part on
//! the S3 disk and the objects in its bucket; every step is repeated and interrupted
//! at the awkward moments, and no row is lost or duplicated.

mod clickhouse_common;
mod support;

use clickhouse_common::{backup_names, ch, kept_parts, stats, AWKWARD_COLUMNS, AWKWARD_VALUES};
use flow::engines::clickhouse::s3_policy::{PolicyMove, Roles};
use flow::engines::clickhouse::split::{split, Grouping, SplitRequest};
use flow::engines::clickhouse::tier_move::TierMove;
use flow::engines::clickhouse::{Ch, Stats};
use tokio_util::sync::CancellationToken;

fn mover(ch: &Ch, db: &str, holder: &str) -> PolicyMove {
    PolicyMove::new(
        ch.clone(),
        db,
        "events",
        PolicyMove::default_new_table("events"),
        "s3",
        holder,
    )
}

fn create_events(db: &support::ChDatabase) {
    db.exec(&format!(
        "CREATE TABLE {}.events ({AWKWARD_COLUMNS}, lc LowCardinality(String)) ENGINE = MergeTree \
         PARTITION BY toYYYYMM(d) ORDER BY id",
        db.name()
    ));
    db.exec(&format!(
        "INSERT INTO {}.events SELECT *, 'x' FROM values('{AWKWARD_COLUMNS}', {})",
        db.name(),
        AWKWARD_VALUES.trim().replace('\n', " ")
    ));
    db.exec(&format!(
        "INSERT INTO {}.events SELECT number + 100, toDate('2015-06-01') + number % 100, now(), \
         'k', toString(number), NULL, NULL, 1.5, [], [], toString(number % 5) FROM numbers(20000)",
        db.name()
    ));
}

async fn partition_ids(ch: &Ch, db: &str, upper: Option<&str>) -> Vec<String> {
    split(
        ch,
        &SplitRequest {
            database: db.into(),
            table: "events".into(),
            grouping: Grouping::Physical,
            partition_expr: None,
            bounds: upper.map(str::to_string),
            split_by: None,
            max_rows: None,
            max_bytes: None,
            declared: None,
        },
    )
    .await
    .unwrap()
    .partitions
    .into_iter()
    .map(|p| p.id)
    .collect()
}

async fn total(ch: &Ch, db: &str, table: &str) -> Stats {
    stats(ch, &format!("`{db}`.`{table}`"), None).await
}

/// Every step of a prepared copy-mode move after prepare, each partition in turn, with
/// the figures handed on like the runner does; the old table is dropped at the end.
async fn copy_to_the_end(m: &PolicyMove, ch: &Ch, db: &str) {
    let cancel = CancellationToken::new();
    for id in partition_ids(ch, db, None).await {
        let loaded = m.load(&id, &cancel).await.unwrap();
        let verified = m
            .verify(&id, loaded.signatures.as_ref(), &cancel)
            .await
            .unwrap();
        m.drop_partition(&id, verified.signatures.as_ref(), &cancel)
            .await
            .unwrap();
    }
    m.catch_up(&cancel).await.unwrap();
    m.full_verify().await.unwrap();
    m.swap(false, &cancel).await.unwrap();
    m.cleanup(&cancel).await.unwrap();
}

/// `expected`: a copy of `events`, into which a test writes every row it writes into
/// `events` ([`write_both`]), so that the two must end equal.
fn create_expected(db: &support::ChDatabase) {
    let d = db.name();
    db.exec(&format!("CREATE TABLE {d}.expected AS {d}.events"));
    db.exec(&format!(
        "INSERT INTO {d}.expected SELECT * FROM {d}.events"
    ));
}

/// The rows of `select` into both `events` and `expected`.
fn write_both(db: &support::ChDatabase, select: &str) {
    for t in ["events", "expected"] {
        db.exec(&format!("INSERT INTO {}.{t} {select}", db.name()));
    }
}

/// The S3 objects behind a table's active parts (`system.remote_data_paths`), each
/// checked with HEAD in the disk's bucket. Returns how many exist.
async fn objects_of(db: &support::ChDatabase, table: &str) -> (usize, usize) {
    let parts = db.exec(&format!(
        "SELECT path FROM system.parts WHERE database = '{}' AND table = '{table}' AND active \
         AND disk_name = 's3' FORMAT TSV",
        db.name()
    ));
    let mut keys = Vec::new();
    for part in parts.lines().filter(|l| !l.is_empty()) {
        // `…/disks/s3/store/abc/<uuid>/<part>/` → `store/abc/<uuid>/<part>/`
        let local = part.split("/disks/s3/").nth(1).unwrap_or(part);
        let remote = db.exec(&format!(
            "SELECT remote_path FROM system.remote_data_paths \
             WHERE disk_name = 's3' AND startsWith(local_path, '{local}') FORMAT TSV"
        ));
        // Remote paths are keys in the disk's bucket (the endpoint's path included).
        keys.extend(remote.lines().filter(|l| !l.is_empty()).map(str::to_string));
    }
    let client = support::s3_client();
    let mut found = 0;
    for key in &keys {
        let head = client
            .head_object()
            .bucket(support::chdb_disk_bucket())
            .key(key)
            .send()
            .await;
        if head.is_ok() {
            found += 1;
        }
    }
    (keys.len(), found)
}

#[tokio::test]
async fn the_whole_move_puts_every_part_on_s3_and_keeps_every_row() {
    let url = support::chdb_url();
    let db = support::ChDatabase::new(&url, "policy");
    create_events(&db);
    let ch = ch(&url);
    let before = total(&ch, db.name(), "events").await;
    let m = mover(&ch, db.name(), "plan-a");

    m.prepare().await.unwrap();
    m.prepare().await.unwrap();
    // Another plan is refused while this one holds the table.
    let other = mover(&ch, db.name(), "plan-b");
    let err = other
        .load("201506", &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.message.contains("plan-a"), "{}", err.message);

    let ids = partition_ids(&ch, db.name(), None).await;
    assert_eq!(ids, vec!["201506", "201507", "201508", "201509"]);
    for id in &ids {
        let loaded = m.load(id, &CancellationToken::new()).await.unwrap();
        let again = m.load(id, &CancellationToken::new()).await.unwrap();
        assert!(again.note.contains("already loaded"), "{}", again.note);
        // Verified from the figures of the load, its parts unchanged, like the runner
        // hands them on; and by reading both sides when nothing was recorded.
        let verified = m
            .verify(id, loaded.signatures.as_ref(), &CancellationToken::new())
            .await
            .unwrap();
        assert!(
            verified
                .note
                .contains("the source and the copy not read again"),
            "{}",
            verified.note
        );
        let read = m.verify(id, None, &CancellationToken::new()).await.unwrap();
        assert_eq!(read.checksum, verified.checksum);
        let dropped = m
            .drop_partition(id, verified.signatures.as_ref(), &CancellationToken::new())
            .await
            .unwrap();
        assert!(
            dropped.note.contains("moved byte for byte"),
            "{}",
            dropped.note
        );
        let again = m
            .drop_partition(id, None, &CancellationToken::new())
            .await
            .unwrap();
        assert!(again.note.contains("already dropped"), "{}", again.note);
        // The verify still passes after the drop (a resumed run may repeat it).
        m.verify(id, None, &CancellationToken::new()).await.unwrap();
    }
    m.catch_up(&CancellationToken::new()).await.unwrap();
    m.full_verify().await.unwrap();
    let swap = m.swap(false, &CancellationToken::new()).await.unwrap();
    assert!(swap.note.contains("EXCHANGE TABLES"), "{}", swap.note);
    let again = m.swap(false, &CancellationToken::new()).await.unwrap();
    assert!(again.note.contains("already swapped"), "{}", again.note);
    assert_eq!(m.roles().await.unwrap(), Roles::Swapped);
    m.cleanup(&CancellationToken::new()).await.unwrap();
    m.cleanup(&CancellationToken::new()).await.unwrap();
    assert_eq!(m.roles().await.unwrap(), Roles::Done);

    let after = total(&ch, db.name(), "events").await;
    assert_eq!(before, after, "every row moved exactly once");
    let policy = db.exec(&format!(
        "SELECT storage_policy FROM system.tables WHERE database = '{}' AND name = 'events'",
        db.name()
    ));
    assert_eq!(policy.trim(), "s3");
    let disks = db.exec(&format!(
        "SELECT groupUniqArray(disk_name) FROM system.parts WHERE database = '{}' AND table = 'events' AND active AND rows > 0",
        db.name()
    ));
    assert_eq!(disks.trim(), "['s3']");
    let (expected, found) = objects_of(&db, "events").await;
    assert!(expected > 0, "the parts have remote objects");
    assert_eq!(
        found, expected,
        "every object of the moved parts is in the bucket"
    );
    let left = db.exec(&format!(
        "SELECT groupArray(name) FROM system.tables WHERE database = '{}' AND name LIKE 'events\\_\\_flow%'",
        db.name()
    ));
    assert_eq!(left.trim(), "[]", "no helper table is left");
}

#[tokio::test]
async fn kills_at_awkward_moments_lose_and_duplicate_nothing() {
    let url = support::chdb_url();
    let db = support::ChDatabase::new(&url, "policykill");
    create_events(&db);
    let ch = ch(&url);
    let d = db.name().to_string();
    create_expected(&db);
    let m = mover(&ch, &d, "plan-a");
    m.prepare().await.unwrap();
    let ids = partition_ids(&ch, &d, None).await;

    // 1. Killed mid-INSERT of a load: a half-filled staging table; the target is empty.
    db.exec(&format!(
        "CREATE TABLE {d}.events__flow_load_{0} AS {d}.events__flow_new",
        ids[0]
    ));
    db.exec(&format!(
        "INSERT INTO {d}.events__flow_load_{0} SELECT * FROM {d}.events WHERE _partition_id = '{0}' LIMIT 3",
        ids[0]
    ));
    m.load(&ids[0], &CancellationToken::new()).await.unwrap();
    m.verify(&ids[0], None, &CancellationToken::new())
        .await
        .unwrap();

    // 2. Killed after the drop's move into quarantine, before the quarantined rows were
    //    dropped: the drop finishes the job.
    db.exec(&format!(
        "ALTER TABLE {d}.events MOVE PARTITION ID '{0}' TO TABLE {d}.events__flow_quarantine",
        ids[0]
    ));
    let r = m
        .drop_partition(&ids[0], None, &CancellationToken::new())
        .await
        .unwrap();
    assert!(r.note.contains("dropped"), "{}", r.note);
    assert_eq!(
        db.exec(&format!("SELECT count() FROM {d}.events__flow_quarantine"))
            .trim(),
        "0"
    );

    // 3. Rows arrive in a live table without `upper`, at every point of a partition's
    //    move. (a) Between a load and its re-run: the load never clears a target
    //    partition, and the advice it gives works.
    let one_more = |id: &str| {
        write_both(
            &db,
            &format!("SELECT * FROM {d}.expected WHERE _partition_id = '{id}' ORDER BY id LIMIT 1"),
        )
    };
    let cancel = CancellationToken::new();
    m.load(&ids[1], &cancel).await.unwrap();
    one_more(&ids[1]);
    let err = m.load(&ids[1], &cancel).await.unwrap_err();
    assert!(!err.retryable);
    assert!(err.message.contains("never clears"), "{}", err.message);
    db.exec(&format!(
        "ALTER TABLE {d}.events__flow_new DROP PARTITION ID '{0}'",
        ids[1]
    ));
    m.load(&ids[1], &cancel).await.unwrap();
    //    (b) Between the load and the verify: the verify freezes the partition in
    //    quarantine and re-loads the copy from it; a repeat finds it frozen.
    one_more(&ids[1]);
    let r = m.verify(&ids[1], None, &cancel).await.unwrap();
    assert!(
        r.note.contains("frozen in quarantine and re-loaded"),
        "{}",
        r.note
    );
    let r = m.verify(&ids[1], None, &cancel).await.unwrap();
    assert!(r.note.contains("frozen in"), "{}", r.note);
    //    (c) After the freeze: the drop drops only the frozen rows; the new one waits
    //    in the old table for the catch-up.
    one_more(&ids[1]);
    let r = m.drop_partition(&ids[1], None, &cancel).await.unwrap();
    assert!(r.note.contains("left for the catch-up"), "{}", r.note);
    //    (d) Between the verify and the drop: the drop re-loads, re-checks, drops
    //    (the verify's figures no longer describe the frozen parts: they are read).
    let loaded = m.load(&ids[2], &cancel).await.unwrap();
    let verified = m
        .verify(&ids[2], loaded.signatures.as_ref(), &cancel)
        .await
        .unwrap();
    one_more(&ids[2]);
    let r = m
        .drop_partition(&ids[2], verified.signatures.as_ref(), &cancel)
        .await
        .unwrap();
    assert!(
        r.note.contains("re-loaded from the frozen partition"),
        "{}",
        r.note
    );
    for id in &ids[3..] {
        m.load(id, &cancel).await.unwrap();
        m.verify(id, None, &cancel).await.unwrap();
        m.drop_partition(id, None, &cancel).await.unwrap();
    }

    // 4. Rows arrive after their partition was moved (it reappears) and in a new one.
    write_both(
        &db,
        "SELECT number + 900000, toDate('2015-06-05'), toDateTime('2015-06-05 00:00:00'), 'late', 'x', NULL, NULL, 0, [], [], 'z' FROM numbers(100)",
    );
    write_both(
        &db,
        "SELECT number + 950000, toDate('2016-01-05'), toDateTime('2016-01-05 00:00:00'), 'new', 'x', NULL, NULL, 0, [], [], 'z' FROM numbers(50)",
    );

    // 5. Killed inside the catch-up's additive move, at both kill points:
    //    (a) 201506: after the move into quarantine, with the staging table half filled;
    db.exec(&format!(
        "ALTER TABLE {d}.events MOVE PARTITION ID '201506' TO TABLE {d}.events__flow_quarantine"
    ));
    db.exec(&format!(
        "CREATE TABLE {d}.events__flow_append_201506 AS {d}.events__flow_new"
    ));
    db.exec(&format!(
        "INSERT INTO {d}.events__flow_append_201506 SELECT * FROM {d}.events__flow_quarantine LIMIT 10"
    ));
    //    (b) 201601: after the commit (the rows live only in the staging table).
    db.exec(&format!(
        "CREATE TABLE {d}.events__flow_append_201601 AS {d}.events__flow_new"
    ));
    db.exec(&format!(
        "INSERT INTO {d}.events__flow_append_201601 SELECT * FROM {d}.events WHERE _partition_id = '201601'"
    ));
    db.exec(&format!(
        "ALTER TABLE {d}.events DROP PARTITION ID '201601'"
    ));

    let r = m.catch_up(&CancellationToken::new()).await.unwrap();
    assert_eq!(
        r.rows,
        150 + 1,
        "the late rows, and the one of 3 (c): {}",
        r.note
    );
    m.full_verify().await.unwrap();

    // 6. Rows written into the old table right after the swap are moved by cleanup.
    m.swap(false, &CancellationToken::new()).await.unwrap();
    for t in ["events__flow_new", "expected"] {
        db.exec(&format!(
            "INSERT INTO {d}.{t} SELECT number + 990000, toDate('2015-07-05'), toDateTime('2015-07-05 00:00:00'), 'swap', 'x', NULL, NULL, 0, [], [], 'z' FROM numbers(7)"
        ));
    }
    m.cleanup(&CancellationToken::new()).await.unwrap();

    let after = total(&ch, &d, "events").await;
    let expected = total(&ch, &d, "expected").await;
    assert_eq!(after, expected, "every original and late row, once");
    let disks = db.exec(&format!(
        "SELECT groupUniqArray(disk_name) FROM system.parts WHERE database = '{d}' AND table = 'events' AND active AND rows > 0"
    ));
    assert_eq!(disks.trim(), "['s3']");
}

#[tokio::test]
async fn missing_policy_and_old_servers_are_refused_clearly() {
    let url = support::chdb_url();
    let db = support::ChDatabase::new(&url, "nopolicy");
    create_events(&db);
    let ch = ch(&url);
    let mut m = mover(&ch, db.name(), "plan-a");
    m.policy = "no_such_policy".into();
    let err = m.prepare().await.unwrap_err();
    assert!(err.message.contains("does not exist"), "{}", err.message);

    let old = support::ChDatabase::new(&support::ch_url(), "nopolicy");
    old.exec(&format!(
        "CREATE TABLE {}.events (d Date) ENGINE = MergeTree PARTITION BY d ORDER BY d",
        old.name()
    ));
    let ch = clickhouse_common::ch(&support::ch_url());
    let m = mover(&ch, old.name(), "plan-a");
    let err = m.prepare().await.unwrap_err();
    assert!(
        err.message.contains("storage policies") && err.message.contains("18.16"),
        "{}",
        err.message
    );
    let err = in_place(&ch, old.name(), "plan-a")
        .prepare()
        .await
        .unwrap_err();
    assert!(
        err.message.contains("storage policies") && err.message.contains("to_volume"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn keeping_the_old_table_and_listing_a_whole_database() {
    let url = support::chdb_url();
    let db = support::ChDatabase::new(&url, "policykeep");
    create_events(&db);
    db.exec(&format!(
        "CREATE TABLE {}.other (x UInt8) ENGINE = MergeTree ORDER BY x",
        db.name()
    ));
    db.exec(&format!(
        "CREATE TABLE {}.on_s3 (x UInt8) ENGINE = MergeTree ORDER BY x SETTINGS storage_policy = 's3'",
        db.name()
    ));
    db.exec(&format!(
        "CREATE TABLE {}.mem (x UInt8) ENGINE = Memory",
        db.name()
    ));
    let ch = ch(&url);
    let listed = flow::engines::clickhouse::s3_policy::tables_to_move(&ch, db.name(), "s3")
        .await
        .unwrap();
    assert_eq!(listed, vec!["events", "other"]);

    let before = total(&ch, db.name(), "events").await;
    let m = mover(&ch, db.name(), "plan-a");
    m.prepare().await.unwrap();
    for id in partition_ids(&ch, db.name(), None).await {
        m.load(&id, &CancellationToken::new()).await.unwrap();
        m.verify(&id, None, &CancellationToken::new())
            .await
            .unwrap();
        m.drop_partition(&id, None, &CancellationToken::new())
            .await
            .unwrap();
    }
    m.catch_up(&CancellationToken::new()).await.unwrap();
    m.full_verify().await.unwrap();
    m.swap(true, &CancellationToken::new()).await.unwrap();
    assert_eq!(total(&ch, db.name(), "events").await, before);
    let left = db.exec(&format!(
        "SELECT groupArray(name) FROM system.tables WHERE database = '{}' AND name LIKE 'events\\_\\_flow%'",
        db.name()
    ));
    assert_eq!(
        left.trim(),
        "['events__flow_new']",
        "only the old table is kept"
    );
    assert_eq!(total(&ch, db.name(), "events__flow_new").await.rows, 0);
}

#[tokio::test]
async fn an_unfinished_move_stays_on_the_whole_database_list() {
    let url = support::chdb_url();
    let db = support::ChDatabase::new(&url, "policylist");
    create_events(&db);
    let ch = ch(&url);
    let m = mover(&ch, db.name(), "plan-a");
    m.prepare().await.unwrap();
    for id in partition_ids(&ch, db.name(), None).await {
        m.load(&id, &CancellationToken::new()).await.unwrap();
        m.verify(&id, None, &CancellationToken::new())
            .await
            .unwrap();
        m.drop_partition(&id, None, &CancellationToken::new())
            .await
            .unwrap();
    }
    m.catch_up(&CancellationToken::new()).await.unwrap();
    m.full_verify().await.unwrap();
    m.swap(false, &CancellationToken::new()).await.unwrap();
    // Swapped, not cleaned up: `events` is on the policy but still listed.
    let listed = flow::engines::clickhouse::s3_policy::tables_to_move(&ch, db.name(), "s3")
        .await
        .unwrap();
    assert_eq!(listed, vec!["events"]);
    m.cleanup(&CancellationToken::new()).await.unwrap();
    let listed = flow::engines::clickhouse::s3_policy::tables_to_move(&ch, db.name(), "s3")
        .await
        .unwrap();
    assert!(listed.is_empty(), "{listed:?}");
}

/// A plan of one s3-policy entry on `url`: `plan_keys` in `[plan]`, the entry's
/// `table_keys` after its strategy.
fn policy_plan(
    plan_keys: &str,
    url: &str,
    database: &str,
    table: &str,
    table_keys: &str,
) -> String {
    format!(
        r#"[plan]
{plan_keys}

[connections.ch]
kind = "clickhouse"
url = "{url}"

[[tables]]
source = "ch"
database = "{database}"
table = "{table}"
strategy = "s3-policy"
{table_keys}
"#
    )
}

/// `flow plan` of a whole-database entry shows what `apply` would run: each table it
/// lists now, with its own chain up to the swap, not one `*/split` that hides them.
#[test]
fn flow_plan_of_a_whole_database_shows_each_table_and_its_swap() {
    let url = support::chdb_url();
    let db = support::ChDatabase::new(&url, "planwhole");
    let d = db.name();
    for t in ["events", "totals"] {
        db.exec(&format!(
            "CREATE TABLE {d}.{t} (id UInt64, d Date) ENGINE = MergeTree \
             PARTITION BY toYYYYMM(d) ORDER BY id"
        ));
        db.exec(&format!(
            "INSERT INTO {d}.{t} SELECT number, toDate('2015-01-01') + number % 60 FROM numbers(100)"
        ));
    }
    // Not a MergeTree: never listed.
    db.exec(&format!(
        "CREATE TABLE {d}.lookup (k String) ENGINE = Memory"
    ));
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("whole.toml");
    std::fs::write(
        &plan,
        policy_plan(
            "name = \"plan-whole\"",
            &url,
            d,
            "*",
            "storage_policy = \"s3\"",
        ),
    )
    .unwrap();
    let plan_json = |offline: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flow"));
        cmd.args(["plan", "--format", "json"]).arg(&plan);
        if offline {
            cmd.arg("--offline");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let ids: Vec<String> = json["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect();
        // Per table entry: its name and the kinds of its chain.
        let chains: Vec<(String, Vec<String>)> = json["tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let kinds = t["chain"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["kind"].as_str().unwrap().to_string())
                    .collect();
                (t["name"].as_str().unwrap().to_string(), kinds)
            })
            .collect();
        (
            ids,
            chains,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ids, chains, said) = plan_json(false);
    assert!(
        said.contains("2 table(s) to move now: events, totals"),
        "{said}"
    );
    let names: Vec<&str> = chains.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [format!("{d}.events"), format!("{d}.totals")],
        "{chains:?}"
    );
    for (name, kinds) in &chains {
        for kind in ["load", "verify", "drop", "catch-up", "swap"] {
            assert!(
                kinds.iter().any(|k| k == kind),
                "{name}: no {kind} in {kinds:?}"
            );
        }
        assert!(ids.contains(&format!("{name}/split")), "{ids:?}");
    }
    assert!(
        !ids.iter().any(|i| i.contains('*') || i.contains("lookup")),
        "{ids:?}"
    );
    // Offline nothing is asked: the entry stays one, listed at apply time.
    let (offline, _, _) = plan_json(true);
    assert!(offline.iter().any(|i| i.contains('*')), "{offline:?}");
}

/// A load whose `INSERT … SELECT` copies one row short (a `templates_dir` override of
/// insert_select.sql.j2) stops the run before any drop: the load compares its copy with
/// the source, the failure is permanent, and every partition stays whole in the source.
#[tokio::test]
async fn a_load_one_row_short_stops_the_run_before_any_drop() {
    let url = support::chdb_url();
    let db = support::ChDatabase::new(&url, "policyshort");
    create_events(&db);
    let d = db.name();
    let ch = ch(&url);
    let before = total(&ch, d, "events").await;
    let dir = tempfile::tempdir().unwrap();
    let tpl = dir.path().join("tpl/clickhouse");
    std::fs::create_dir_all(&tpl).unwrap();
    std::fs::write(
        tpl.join("insert_select.sql.j2"),
        "INSERT INTO {{ target }} ({{ columns }})\nSELECT {{ columns }}\nFROM {{ from }}\n\
         {%- if filter %}\nWHERE {{ filter }}\n{%- endif %}\nLIMIT 1000000000 OFFSET 1\n",
    )
    .unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        policy_plan(
            "name = \"policy-short\"\ntemplates_dir = \"tpl\"\nretries = 2\nretry_backoff = \"10ms\"",
            &url,
            d,
            "events",
            "storage_policy = \"s3\"\nkeep_old = false",
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flow"))
        .current_dir(dir.path())
        .args(["apply", "plan.toml"])
        .output()
        .unwrap();
    let text = support::output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("does not copy every row"), "{text}");

    // No drop ran, none was even started; the source holds every row, nothing waits
    // in quarantine and the new table took no partition.
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(".flow/policy-short.report.json")).unwrap(),
    )
    .unwrap();
    let mut kinds = Vec::new();
    collect_tasks(&report, &mut kinds);
    assert!(
        kinds.iter().any(|(k, s)| k == "load" && s == "failed"),
        "{kinds:?}"
    );
    let drops: Vec<_> = kinds.iter().filter(|(k, _)| k == "drop").collect();
    assert!(!drops.is_empty(), "{kinds:?}");
    assert!(
        drops.iter().all(|(_, s)| s != "done" && s != "running"),
        "{drops:?}"
    );
    assert_eq!(total(&ch, d, "events").await, before, "the source is whole");
    for t in ["events__flow_new", "events__flow_quarantine"] {
        assert_eq!(
            db.exec(&format!("SELECT count() FROM {d}.{t}")).trim(),
            "0",
            "{t}"
        );
    }
}

/// (kind, status) of every task object in a report.
fn collect_tasks(v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            if let (Some(k), Some(s)) = (m.get("kind"), m.get("status")) {
                if let (Some(k), Some(s)) = (k.as_str(), s.as_str()) {
                    out.push((k.to_string(), s.to_string()));
                }
            }
            m.values().for_each(|x| collect_tasks(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_tasks(x, out)),
        _ => {}
    }
}

/// Rows written into a source partition after its load, before or after its verify,
/// are never dropped unmoved, with the figures handed on from step to step like the
/// runner does: right after each drop every row of the partition is in the old table
/// or the copy, and at the end every row is in the table, once.
#[tokio::test]
async fn rows_written_between_load_and_drop_are_never_dropped_unmoved() {
    let url = support::chdb_url();
    let db = support::ChDatabase::new(&url, "policylate");
    create_events(&db);
    let ch = ch(&url);
    let d = db.name().to_string();
    create_expected(&db);
    let one_more = |id: &str, n: u32| {
        write_both(
            &db,
            &format!(
                "SELECT * FROM {d}.expected WHERE _partition_id = '{id}' ORDER BY id LIMIT {n}"
            ),
        )
    };
    let both_sides = |id: &str| {
        let f = format!("_partition_id = '{id}'");
        let ch = ch.clone();
        let d = d.clone();
        async move {
            stats(&ch, &format!("`{d}`.`events`"), Some(&f))
                .await
                .plus(stats(&ch, &format!("`{d}`.`events__flow_new`"), Some(&f)).await)
        }
    };
    let m = mover(&ch, &d, "plan-a");
    m.prepare().await.unwrap();
    let ids = partition_ids(&ch, &d, None).await;
    let cancel = CancellationToken::new();
    for (i, id) in ids.iter().enumerate() {
        let loaded = m.load(id, &cancel).await.unwrap();
        if i % 2 == 0 {
            one_more(id, 2); // between the load and the verify
        }
        let verified = m
            .verify(id, loaded.signatures.as_ref(), &cancel)
            .await
            .unwrap();
        if i % 2 == 1 || i == 0 {
            one_more(id, 3); // between the verify and the drop
        }
        m.drop_partition(id, verified.signatures.as_ref(), &cancel)
            .await
            .unwrap();
        let want = stats(
            &ch,
            &format!("`{d}`.`expected`"),
            Some(&format!("_partition_id = '{id}'")),
        )
        .await;
        assert_eq!(
            both_sides(id).await,
            want,
            "partition {id}: every row in the old table or the copy after the drop"
        );
    }
    m.catch_up(&cancel).await.unwrap();
    m.full_verify().await.unwrap();
    m.swap(false, &cancel).await.unwrap();
    m.cleanup(&cancel).await.unwrap();
    assert_eq!(
        total(&ch, &d, "events").await,
        total(&ch, &d, "expected").await,
        "every original and late row, once"
    );
}

/// A ReplacingMergeTree partition with rows its merges have not collapsed yet moves
/// with every row: the copy is inserted without `optimize_on_insert`, so it holds the
/// rows as they are stored and equals its source (before, the INSERT collapsed them and
/// the load could never match).
#[tokio::test]
async fn a_replacing_table_with_unmerged_rows_moves_every_row() {
    let url = support::chdb_url();
    let db = support::ChDatabase::new(&url, "policyrmt");
    let d = db.name();
    db.exec(&format!(
        "CREATE TABLE {d}.events (id UInt64, d Date, v UInt64) ENGINE = ReplacingMergeTree \
         PARTITION BY toYYYYMM(d) ORDER BY id"
    ));
    db.exec(&format!("SYSTEM STOP MERGES {d}.events"));
    for v in [1, 2] {
        db.exec(&format!(
            "INSERT INTO {d}.events SELECT number, toDate('2015-06-01') + number % 40, {v} \
             FROM numbers(500)"
        ));
    }
    let ch = ch(&url);
    let before = total(&ch, d, "events").await;
    assert_eq!(before.rows, 1000, "the duplicates are there, unmerged");
    let m = mover(&ch, d, "plan-a");
    m.prepare().await.unwrap();
    copy_to_the_end(&m, &ch, d).await;
    // One part per partition in the moved table (one INSERT each): nothing to merge.
    assert_eq!(
        total(&ch, d, "events").await,
        before,
        "every stored row, once"
    );
}

// ---------------------------------------------------------------- in place

/// The in-place move of `events` to volume `cold` of policy `tiered` (the stack's
/// policy that holds the local disk and the S3 disk).
fn in_place(ch: &Ch, db: &str, holder: &str) -> TierMove {
    TierMove {
        ch: ch.clone(),
        database: db.into(),
        table: "events".into(),
        policy: "tiered".into(),
        volume: "cold".into(),
        holder: holder.into(),
    }
}

/// The (rows, hash of all files) of a table's active parts, sorted.
fn part_hashes(db: &support::ChDatabase, table: &str) -> String {
    db.exec(&format!(
        "SELECT arraySort(groupArray((rows, hash_of_all_files))) FROM system.parts \
         WHERE database = '{}' AND table = '{table}' AND active AND rows > 0",
        db.name()
    ))
}

fn disks_of(db: &support::ChDatabase, table: &str) -> String {
    db.exec(&format!(
        "SELECT arraySort(groupUniqArray(disk_name)) FROM system.parts WHERE database = '{}' \
         AND table = '{table}' AND active AND rows > 0",
        db.name()
    ))
    .trim()
    .to_string()
}

#[tokio::test]
async fn in_place_the_server_moves_every_part_byte_for_byte_and_flow_keeps_the_local_copy_until_checked(
) {
    let url = support::chdb_url();
    let db = support::ChDatabase::new(&url, "inplace");
    create_events(&db);
    let d = db.name().to_string();
    let ch = ch(&url);
    create_expected(&db);
    let before = total(&ch, &d, "events").await;
    assert_eq!(disks_of(&db, "events"), "['default']");
    let m = in_place(&ch, &d, "plan-a");

    m.prepare().await.unwrap();
    let again = m.prepare().await.unwrap();
    assert!(
        again.note.contains("already on storage policy"),
        "{}",
        again.note
    );
    let other = in_place(&ch, &d, "plan-b");
    let err = other
        .load("201506", &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.message.contains("plan-a"), "{}", err.message);

    let ids = partition_ids(&ch, &d, None).await;
    let names = backup_names(&m, &ids);
    let cancel = CancellationToken::new();
    for (i, id) in ids.iter().enumerate() {
        if i == 0 {
            // A backup under flow's next name that flow did not record (made by hand):
            // the load records it too and freezes under the next name.
            db.exec(&format!(
                "ALTER TABLE {d}.events FREEZE PARTITION ID '{id}' WITH NAME '{}'",
                m.backup_name("load", id, 0)
            ));
        }
        let loaded = m.load(id, &cancel).await.unwrap();
        if i == 0 {
            let markers = db.exec(&format!(
                "SELECT count() FROM system.tables WHERE database = '{d}' \
                 AND startsWith(name, 'events__flow_frozen_')"
            ));
            assert_eq!(markers.trim(), "2", "both backups are recorded");
            // Repeated after the move (killed before it was recorded): moves nothing
            // more, and the drop still removes every backup.
            let again = m.load(id, &cancel).await.unwrap();
            assert_eq!(
                again.moved.as_ref().unwrap().parts,
                loaded.moved.as_ref().unwrap().parts
            );
            assert_eq!(
                again.moved.as_ref().unwrap().rows_moved_now,
                0,
                "parts already on the volume are not moved again"
            );
        }
        assert!(
            kept_parts(&db.exec("SELECT path FROM system.disks FORMAT TSV"), &names) > 0,
            "the local files of partition {id} are kept after the move"
        );
        let verified = m.verify(id, loaded.moved.as_ref()).await.unwrap();
        assert!(verified.note.contains("CHECK TABLE"), "{}", verified.note);
        if i == 1 {
            // A row arrives between the verify and the drop: it lands on the local
            // volume and is not in the backup; the drop removes only the backup.
            write_both(
                &db,
                &format!("SELECT * FROM {d}.expected WHERE _partition_id = '{id}' LIMIT 1"),
            );
        }
        let dropped = m.drop_partition(id, verified.moved.as_ref()).await.unwrap();
        assert!(
            dropped.note.contains("removed the local files"),
            "{}",
            dropped.note
        );
        m.drop_partition(id, verified.moved.as_ref()).await.unwrap();
        assert_eq!(
            total(&ch, &d, "events").await,
            total(&ch, &d, "expected").await,
            "partition {id}: every row is in the table after the drop"
        );
    }
    assert_eq!(
        kept_parts(&db.exec("SELECT path FROM system.disks FORMAT TSV"), &names),
        0,
        "every backup is removed"
    );
    let caught = m.catch_up(&cancel).await.unwrap();
    assert!(
        caught.note.starts_with("1 rows that arrived"),
        "the row written between a verify and its drop: {}",
        caught.note
    );
    let verified = m.full_verify().await.unwrap();
    assert!(
        verified.note.contains("on volume `cold`"),
        "{}",
        verified.note
    );

    assert_eq!(
        kept_parts(&db.exec("SELECT path FROM system.disks FORMAT TSV"), &names),
        0,
        "no backup is left"
    );
    assert_eq!(
        disks_of(&db, "events"),
        "['s3']",
        "every part is on the S3 disk"
    );
    assert_eq!(
        total(&ch, &d, "events").await,
        total(&ch, &d, "expected").await,
        "every row, once"
    );
    assert!(total(&ch, &d, "events").await.rows > before.rows);
    let policy = db.exec(&format!(
        "SELECT storage_policy FROM system.tables WHERE database = '{d}' AND name = 'events'"
    ));
    assert_eq!(policy.trim(), "tiered");
    let (expected, found) = objects_of(&db, "events").await;
    assert!(expected > 0);
    assert_eq!(
        found, expected,
        "every object of the moved parts is in the bucket"
    );
    let left = db.exec(&format!(
        "SELECT groupArray(name) FROM system.tables WHERE database = '{d}' AND name LIKE 'events\\_\\_flow%'"
    ));
    assert_eq!(left.trim(), "[]", "no helper table and no lock is left");
}

#[tokio::test]
async fn in_place_parts_keep_their_hashes_and_a_damaged_copy_is_refused_with_the_local_copy_kept() {
    let url = support::chdb_url();
    let db = support::ChDatabase::new(&url, "inplacebad");
    create_events(&db);
    let d = db.name().to_string();
    let ch = ch(&url);
    db.exec(&format!("SYSTEM STOP MERGES {d}.events"));
    let hashes = part_hashes(&db, "events");
    let m = in_place(&ch, &d, "plan-a");
    m.prepare().await.unwrap();
    let ids = partition_ids(&ch, &d, None).await;
    let names = backup_names(&m, &ids);
    let cancel = CancellationToken::new();
    let mut loads = Vec::new();
    for id in &ids {
        loads.push(m.load(id, &cancel).await.unwrap());
    }
    assert_eq!(
        part_hashes(&db, "events"),
        hashes,
        "the moved parts are the same bytes (same hash of all files)"
    );
    let kept = kept_parts(&db.exec("SELECT path FROM system.disks FORMAT TSV"), &names);
    assert!(kept > 0);

    // Damage one object of a moved part on S3: same size, other bytes.
    let id = &ids[0];
    let part_path = db.exec(&format!(
        "SELECT path FROM system.parts WHERE database = '{d}' AND table = 'events' AND active \
         AND partition_id = '{id}' LIMIT 1 FORMAT TSV"
    ));
    let local = part_path
        .trim()
        .split("/disks/s3/")
        .nth(1)
        .unwrap()
        .to_string();
    let remote = db.exec(&format!(
        "SELECT remote_path FROM system.remote_data_paths WHERE disk_name = 's3' \
         AND startsWith(local_path, '{local}') AND local_path LIKE '%.bin' LIMIT 1 FORMAT TSV"
    ));
    let key = remote.trim().to_string();
    assert!(!key.is_empty(), "a data file of the moved part");
    let client = support::s3_client();
    let bucket = support::chdb_disk_bucket();
    let object = client
        .get_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    let mut bytes = object.body.collect().await.unwrap().into_bytes().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    client
        .put_object()
        .bucket(&bucket)
        .key(&key)
        .body(bytes.into())
        .send()
        .await
        .unwrap();

    let err = m.verify(id, loads[0].moved.as_ref()).await.unwrap_err();
    assert!(err.message.contains("CHECK TABLE"), "{}", err.message);
    assert!(!err.retryable, "a damaged copy is not retried");
    assert_eq!(
        kept_parts(&db.exec("SELECT path FROM system.disks FORMAT TSV"), &names),
        kept,
        "the local files are all still kept"
    );
    // The other partitions verify and release their backups.
    for (id, loaded) in ids.iter().zip(&loads).skip(1) {
        let verified = m.verify(id, loaded.moved.as_ref()).await.unwrap();
        m.drop_partition(id, verified.moved.as_ref()).await.unwrap();
    }
    assert!(
        kept_parts(&db.exec("SELECT path FROM system.disks FORMAT TSV"), &names) > 0,
        "the damaged partition's copy is kept"
    );
}

#[tokio::test]
async fn in_place_refuses_policies_and_volumes_that_cannot_hold_the_move() {
    let url = support::chdb_url();
    let db = support::ChDatabase::new(&url, "inplacerefuse");
    create_events(&db);
    let d = db.name().to_string();
    let ch = ch(&url);
    let with = |policy: &str, volume: &str| TierMove {
        policy: policy.into(),
        volume: volume.into(),
        ..in_place(&ch, &d, "plan-a")
    };
    // The S3-only policy lacks the table's local disk: the server refuses the switch.
    let err = with("s3", "main").prepare().await.unwrap_err();
    assert!(
        err.message.contains("holds every volume and disk"),
        "{}",
        err.message
    );
    // Its local volume is no place to move to.
    let err = with("tiered", "main").prepare().await.unwrap_err();
    assert!(err.message.contains("local disk"), "{}", err.message);
    let err = with("tiered", "colder").prepare().await.unwrap_err();
    assert!(
        err.message.contains("its volumes: main, cold"),
        "{}",
        err.message
    );
    let err = with("nope", "cold").prepare().await.unwrap_err();
    assert!(err.message.contains("does not exist"), "{}", err.message);
    assert_eq!(disks_of(&db, "events"), "['default']", "nothing moved");
    // A copy onto the tiered policy would land on its local first volume: refused,
    // pointing at the in-place mode.
    let copy = PolicyMove::new(
        ch.clone(),
        &d,
        "events",
        "events__flow_new",
        "tiered",
        "plan-a",
    );
    let err = copy.prepare().await.unwrap_err();
    assert!(
        err.message.contains("settings.to_volume"),
        "{}",
        err.message
    );
    assert!(err.message.contains("cold"), "{}", err.message);
}

#[tokio::test]
async fn in_place_moves_a_table_with_an_awkward_name_and_string_partitions() {
    // A name with a quote, a backtick, a space and non-ASCII, partitioned by a string
    // key: every statement quotes it, and the backup and marker names stay plain.
    let url = support::chdb_url();
    let db = support::ChDatabase::new(&url, "inplacename");
    let d = db.name().to_string();
    let table = "ev'en`ts ü";
    db.exec(&format!(
        "CREATE TABLE {d}.`ev'en\\`ts ü` (id UInt64, region String) ENGINE = MergeTree \
         PARTITION BY region ORDER BY id"
    ));
    db.exec(&format!(
        "INSERT INTO {d}.`ev'en\\`ts ü` SELECT number, ['eu', 'us \\'west\\'', 'ap/1'][number % 3 + 1] \
         FROM numbers(3000)"
    ));
    let ch = ch(&url);
    let from = format!("`{d}`.`ev'en\\`ts ü`");
    let before = stats(&ch, &from, None).await;
    let m = TierMove {
        table: table.into(),
        ..in_place(&ch, &d, "plan-a")
    };
    m.prepare().await.unwrap();
    let ids: Vec<String> = db
        .exec(&format!(
            "SELECT DISTINCT partition_id FROM system.parts WHERE database = '{d}' \
             AND table = 'ev\\'en`ts ü' AND active FORMAT TSV"
        ))
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(ids.len(), 3);
    let cancel = CancellationToken::new();
    for id in &ids {
        let loaded = m.load(id, &cancel).await.unwrap();
        let verified = m.verify(id, loaded.moved.as_ref()).await.unwrap();
        m.drop_partition(id, verified.moved.as_ref()).await.unwrap();
    }
    m.catch_up(&cancel).await.unwrap();
    m.full_verify().await.unwrap();
    assert_eq!(stats(&ch, &from, None).await, before, "every row, once");
    assert_eq!(disks_of(&db, "ev\\'en`ts ü"), "['s3']");
    let disks = db.exec("SELECT path FROM system.disks FORMAT TSV");
    assert_eq!(kept_parts(&disks, &backup_names(&m, &ids)), 0);
    let left = db.exec(&format!(
        "SELECT count() FROM system.tables WHERE database = '{d}' AND name LIKE '%\\_\\_flow%'"
    ));
    assert_eq!(left.trim(), "0", "no marker is left");
}

#[test]
fn flow_plan_says_whether_the_servers_policy_fits_the_mode() {
    let url = support::chdb_url();
    let db = support::ChDatabase::new(&url, "planfit");
    let d = db.name();
    let dir = tempfile::tempdir().unwrap();
    let plan_of = |policy: &str, keys: &str| {
        policy_plan(
            "name = \"fit\"",
            &url,
            d,
            "events",
            &format!("storage_policy = \"{policy}\"\n{keys}"),
        )
    };
    let plan_says = |text: String| {
        let path = dir.path().join("plan.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_flow"))
            .current_dir(dir.path())
            .args(["plan", "plan.toml"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", support::output_text(&out));
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let said = plan_says(plan_of("tiered", r#"settings = { to_volume = "cold" }"#));
    assert!(
        said.contains("in place onto volume `cold` of policy `tiered`: disks s3"),
        "{said}"
    );
    let said = plan_says(plan_of("s3", ""));
    assert!(said.contains("copy onto policy `s3`"), "{said}");
    // A copy onto the tiered policy would stay local: said before anything runs.
    let said = plan_says(plan_of("tiered", ""));
    assert!(
        said.contains("warning") && said.contains("settings.to_volume") && said.contains("cold"),
        "{said}"
    );
    let said = plan_says(plan_of("tiered", r#"settings = { to_volume = "main" }"#));
    assert!(
        said.contains("warning") && said.contains("local disk"),
        "{said}"
    );
}

#[tokio::test]
async fn switching_the_mode_of_an_unfinished_move_is_refused() {
    // A plan changed between runs from one mode to the other must not leave the rows
    // already copied, or the backups of parts not yet checked, behind.
    let url = support::chdb_url();
    let ch = ch(&url);
    let cancel = CancellationToken::new();

    let db = support::ChDatabase::new(&url, "switchcopy");
    create_events(&db);
    let d = db.name().to_string();
    let before = total(&ch, &d, "events").await;
    let copy = mover(&ch, &d, "plan-a");
    copy.prepare().await.unwrap();
    let id = partition_ids(&ch, &d, None).await[0].clone();
    let loaded = copy.load(&id, &cancel).await.unwrap();
    let verified = copy
        .verify(&id, loaded.signatures.as_ref(), &cancel)
        .await
        .unwrap();
    copy.drop_partition(&id, verified.signatures.as_ref(), &cancel)
        .await
        .unwrap();
    let err = in_place(&ch, &d, "plan-a").prepare().await.unwrap_err();
    assert!(
        err.message.contains("unfinished") && err.message.contains("events__flow_new"),
        "{}",
        err.message
    );
    assert_eq!(
        disks_of(&db, "events"),
        "['default']",
        "the table stays as it was"
    );
    // The copy still finishes, with every row.
    copy_to_the_end(&copy, &ch, &d).await;
    assert_eq!(total(&ch, &d, "events").await, before);

    let db = support::ChDatabase::new(&url, "switchtier");
    create_events(&db);
    let d = db.name().to_string();
    let tier = in_place(&ch, &d, "plan-a");
    tier.prepare().await.unwrap();
    let id = partition_ids(&ch, &d, None).await[0].clone();
    tier.load(&id, &cancel).await.unwrap();
    let err = mover(&ch, &d, "plan-a").prepare().await.unwrap_err();
    assert!(
        err.message.contains("move in place") && err.message.contains("events__flow_frozen_"),
        "{}",
        err.message
    );
    let helpers = db.exec(&format!(
        "SELECT count() FROM system.tables WHERE database = '{d}' AND name IN \
         ('events__flow_new', 'events__flow_quarantine')"
    ));
    assert_eq!(helpers.trim(), "0", "the copy created nothing");
}
