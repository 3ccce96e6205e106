//! Exports that must not lose data silently, against the real ClickHouse 18.16 server
//! of the test stack: two units that would write one object are refused before
//! anything is written (offline by `flow validate`, online before any export starts);
//! verify tells a replaced file from the one the export wrote; `--resume` after a
//! change of partitions, bounds, target or template redoes exactly what the change
//! affects; a state belongs to one plan file; the manifest counts what the files hold.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::ChDatabase;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    db: ChDatabase,
}

impl Fixture {
    /// A database with `t` (months 2015-06 .. 2015-08, 10 rows each, `id` 0..29) and a
    /// plan folder.
    fn new() -> Self {
        let db = ChDatabase::new(&support::ch_url(), "exsafe");
        db.exec(&format!(
            "CREATE TABLE {}.t (id UInt64, d Date, s String) ENGINE = MergeTree \
             PARTITION BY toYYYYMM(d) ORDER BY id",
            db.name()
        ));
        db.exec(&format!(
            "INSERT INTO {}.t SELECT number, toDate('2015-06-01') + intDiv(number, 10) * 31, \
             concat('row', toString(number)) FROM system.numbers LIMIT 30",
            db.name()
        ));
        db.exec(&format!("CREATE TABLE {0}.u AS {0}.t", db.name()));
        db.exec(&format!("INSERT INTO {0}.u SELECT * FROM {0}.t", db.name()));
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        Fixture {
            _dir: dir,
            root,
            db,
        }
    }

    /// Writes `name.toml`: a plan named `name` with connections `ch` and `out`
    /// (fs, `out/`), then `tables`.
    fn plan(&self, file: &str, name: &str, out: &str, tables: &str) -> PathBuf {
        let path = self.root.join(file);
        std::fs::write(
            &path,
            format!(
                r#"[plan]
name = "{name}"
concurrency = 2

[connections.ch]
kind = "clickhouse"
url = "{url}"

[connections.out]
kind = "fs"
path = "{out}"
{tables}"#,
                url = support::ch_url(),
            ),
        )
        .unwrap();
        path
    }

    /// A `[[tables]]` entry exporting `t` with `extra` lines.
    fn table(&self, extra: &str) -> String {
        self.table_of("t", extra)
    }

    /// A `[[tables]]` entry exporting `table` (`t` or `u`, the same rows) with `extra` lines.
    fn table_of(&self, table: &str, extra: &str) -> String {
        format!(
            "\n[[tables]]\nsource = \"ch\"\ndatabase = \"{}\"\ntable = \"{table}\"\nstrategy = \"export\"\ntarget = \"out\"\n{extra}\n",
            self.db.name()
        )
    }

    fn files(&self, out: &str) -> Vec<String> {
        let mut found = Vec::new();
        collect(&self.root.join(out), &self.root.join(out), &mut found);
        found.sort();
        found
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap().display().to_string());
        }
    }
}

fn flow(args: &[&str], plan: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flow"))
        .args(args)
        .arg(plan)
        .args(
            ["--progress", "plain"]
                .iter()
                .filter(|_| args[0] == "apply"),
        )
        .output()
        .expect("flow runs")
}

fn text(out: &Output) -> String {
    support::output_text(out)
}

fn apply(plan: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["apply"];
    args.extend_from_slice(extra);
    let out = flow(&args, plan);
    assert!(out.status.success(), "apply failed:\n{}", text(&out));
    out
}

/// Rows of every CSV file under `out` (minus one header line each), by file.
fn csv_rows(root: &Path, files: &[String]) -> u64 {
    files
        .iter()
        .filter(|f| f.ends_with(".csv"))
        .map(|f| {
            let body = std::fs::read_to_string(root.join(f)).unwrap();
            body.lines().count().saturating_sub(1) as u64
        })
        .sum()
}

/// A `[connections.out]` on `bucket` of the stack's S3, credentials by reference.
fn s3_out_connection(bucket: &str) -> String {
    format!(
        r#"[connections.out]
kind = "s3"
bucket = "{bucket}"
endpoint = "{endpoint}"
region = "{region}"
path_style = true
access_key_id = "${{env:AWS_ACCESS_KEY_ID}}"
secret_access_key = "${{env:AWS_SECRET_ACCESS_KEY}}"
"#,
        endpoint = support::s3_endpoint(),
        region = support::aws_region(),
    )
}

fn manifest(root: &Path, key: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(root.join(key)).unwrap()).unwrap()
}

#[test]
fn validate_refuses_two_units_on_one_key_with_the_line_of_path() {
    let f = Fixture::new();
    let cases = [
        (
            "declared partitions, no partition_id",
            f.table("partitions = [\"201506\", \"201507\"]\npartition_expr = \"toYYYYMM(d)\"\npath = \"t/all.csv\""),
        ),
        (
            "online partitions, no partition_id",
            f.table("mode = \"partition\"\npath = \"t/data.csv\""),
        ),
        (
            "chunks without chunk",
            f.table("mode = \"partition\"\nsplit_by = \"id\"\nmax_rows = 3\npath = \"t/{{ partition_id }}.csv\""),
        ),
        (
            "two tables, one path",
            format!(
                "{}{}",
                f.table("mode = \"all\"\npath = \"same.csv\""),
                f.table_of("u", "mode = \"all\"\npath = \"same.csv\"")
            ),
        ),
    ];
    for (what, tables) in cases {
        let plan = f.plan("collide.toml", "collide", "out", &tables);
        let out = flow(&["validate"], &plan);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {all}");
        assert!(
            all.contains("write") && all.contains("path"),
            "{what}: the error names the collision: {all}"
        );
        assert!(
            all.contains("collide.toml:") && all.contains("partition_id"),
            "{what}: the error points into the plan and gives the fix: {all}"
        );
        // apply refuses too, before anything is written
        let out = flow(&["apply"], &plan);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out));
        assert!(f.files("out").is_empty(), "{what}: nothing was written");
    }
}

#[test]
fn two_tables_whose_manifests_share_a_key_are_refused() {
    let f = Fixture::new();
    let tables = format!(
        "{}{}",
        f.table("mode = \"partition\"\npath = \"x/a-{{ partition_id }}.csv\""),
        f.table_of(
            "u",
            "mode = \"partition\"\npath = \"x/b-{{ partition_id }}.csv\""
        )
    );
    let plan = f.plan("manifests.toml", "manifests", "out", &tables);
    let out = flow(&["validate"], &plan);
    // online partitions: the collision shows once the partitions are listed
    let out = if out.status.success() {
        flow(&["apply"], &plan)
    } else {
        out
    };
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("_manifest.json"), "{all}");
    assert!(
        !f.files("out").iter().any(|k| k.ends_with(".csv")),
        "refused before any export: {:?}",
        f.files("out")
    );
}

#[test]
fn a_collision_only_the_listed_partitions_show_stops_apply_before_any_export() {
    let f = Fixture::new();
    // Distinct for any two made-up ids, the same for the real ones (201506, 201507, 201508).
    let path = "mode = \"partition\"\npath = \"t/{% if partition_id == '201501' %}a{% else %}b{% endif %}.csv\"";
    let plan = f.plan("late.toml", "late", "out", &f.table(path));
    let out = flow(&["validate"], &plan);
    assert!(out.status.success(), "{}", text(&out));
    let out = flow(&["apply"], &plan);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("t/b.csv") && all.contains("would both write"),
        "{all}"
    );
    assert!(
        f.files("out").is_empty(),
        "nothing exported: {:?}",
        f.files("out")
    );
}

#[test]
fn resume_after_more_declared_partitions_exports_exactly_the_new_ones() {
    let f = Fixture::new();
    let declared = |ids: &str| {
        f.table(&format!(
            "partitions = [{ids}]\npartition_expr = \"toYYYYMM(d)\"\npath = \"t/{{{{ partition_id }}}}.csv\""
        ))
    };
    let plan = f.plan("grow.toml", "grow", "out", &declared("\"201506\""));
    apply(&plan, &[]);
    assert_eq!(f.files("out"), vec!["t/201506.csv", "t/_manifest.json"]);
    let first = std::fs::metadata(f.root.join("out/t/201506.csv"))
        .unwrap()
        .modified()
        .unwrap();

    f.plan(
        "grow.toml",
        "grow",
        "out",
        &declared("\"201506\", \"201507\""),
    );
    let out = apply(&plan, &["--resume"]);
    let all = text(&out);
    assert_eq!(
        f.files("out"),
        vec!["t/201506.csv", "t/201507.csv", "t/_manifest.json"],
        "{all}"
    );
    assert_eq!(
        std::fs::metadata(f.root.join("out/t/201506.csv"))
            .unwrap()
            .modified()
            .unwrap(),
        first,
        "the partition exported before is not exported again: {all}"
    );
    let m = manifest(&f.root, "out/t/_manifest.json");
    assert_eq!(m["rows"], 20, "{m}");
    assert_eq!(csv_rows(&f.root.join("out"), &f.files("out")), 20);

    // partition_range works the same way
    let range = |to: &str| {
        f.table(&format!(
            "partition_range = {{ from = \"2015-06\", to = \"{to}\", step = \"month\" }}\npartition_expr = \"toYYYYMM(d)\"\npath = \"r/{{{{ partition_id }}}}.csv\""
        ))
    };
    let plan = f.plan("range.toml", "range", "out", &range("2015-07"));
    apply(&plan, &[]);
    f.plan("range.toml", "range", "out", &range("2015-08"));
    apply(&plan, &["--resume"]);
    let m = manifest(&f.root, "out/r/_manifest.json");
    assert_eq!(m["rows"], 30, "{m}");
    assert!(f.files("out").contains(&"r/201508.csv".to_string()));
}

#[test]
fn resume_after_a_changed_bound_target_or_template_redoes_what_changed() {
    let f = Fixture::new();
    let table = |upper: &str| {
        f.table(&format!(
            "mode = \"partition\"\nupper = \"{upper}\"\npath = \"t/{{{{ partition_id }}}}.csv\""
        ))
    };
    let plan = f.plan("moves.toml", "moves", "out", &table("id < 30"));
    apply(&plan, &[]);
    assert_eq!(csv_rows(&f.root.join("out"), &f.files("out")), 30);

    // a tighter bound: the files hold the new rows
    f.plan("moves.toml", "moves", "out", &table("id < 25"));
    let out = apply(&plan, &["--resume"]);
    assert!(text(&out).contains("dirty"), "{}", text(&out));
    assert_eq!(
        manifest(&f.root, "out/t/_manifest.json")["rows"],
        25,
        "{}",
        text(&out)
    );

    // the target moved: everything is written to the new place
    f.plan("moves.toml", "moves", "elsewhere", &table("id < 25"));
    let out = apply(&plan, &["--resume"]);
    let all = text(&out);
    assert!(
        all.contains("connection.out"),
        "the reason names the connection: {all}"
    );
    assert_eq!(
        f.files("elsewhere"),
        vec![
            "t/201506.csv",
            "t/201507.csv",
            "t/201508.csv",
            "t/_manifest.json"
        ],
        "{all}"
    );
    assert_eq!(manifest(&f.root, "elsewhere/t/_manifest.json")["rows"], 25);

    // a template override that changes the export's SELECT dirties the exports
    let tdir = f.root.join("tpl/clickhouse");
    std::fs::create_dir_all(&tdir).unwrap();
    let builtin = flow::templates::Templates::new(None)
        .unwrap()
        .source("clickhouse/select.sql.j2")
        .expect("the select template exists");
    std::fs::write(tdir.join("select.sql.j2"), format!("{builtin}\n")).unwrap();
    let text_plan = std::fs::read_to_string(&plan).unwrap().replace(
        "concurrency = 2",
        "concurrency = 2\ntemplates_dir = \"tpl\"",
    );
    std::fs::write(&plan, text_plan).unwrap();
    let out = apply(&plan, &["--resume"]);
    let all = text(&out);
    assert!(
        all.contains("input `template.clickhouse/select.sql.j2` changed"),
        "the reason names the template: {all}"
    );
}

#[test]
fn two_plan_files_with_one_name_do_not_share_state() {
    let f = Fixture::new();
    let table = f.table("mode = \"partition\"\npath = \"t/{{ partition_id }}.csv\"");
    let a = f.plan("a.toml", "same", "out-a", &table);
    let b = f.plan("b.toml", "same", "out-b", &table);
    apply(&a, &[]);
    let out = flow(&["apply", "--resume"], &b);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("a.toml") && all.contains("`name`"), "{all}");
    assert!(f.files("out-b").is_empty(), "{all}");

    // a plan file moved with its state goes on
    std::fs::rename(&a, f.root.join("moved.toml")).unwrap();
    let out = flow(&["apply", "--resume"], &f.root.join("moved.toml"));
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("moved"), "{all}");
}

#[test]
fn chunks_cover_nan_infinities_and_null_and_a_string_split_column_is_refused() {
    let f = Fixture::new();
    f.db.exec(&format!(
        "CREATE TABLE {}.f (id UInt64, d Date, x Nullable(Float64), s String) ENGINE = MergeTree \
         PARTITION BY toYYYYMM(d) ORDER BY id",
        f.db.name()
    ));
    f.db.exec(&format!(
        "INSERT INTO {}.f SELECT number, toDate('2015-06-01'), \
         multiIf(number = 0, nan, number = 1, inf, number = 2, -inf, number = 3, NULL, \
                 number = 4, -nan, toFloat64(number)), toString(number) \
         FROM system.numbers LIMIT 100",
        f.db.name()
    ));
    let table = |split_by: &str| {
        f.table_of(
            "f",
            &format!(
                "mode = \"partition\"\nsplit_by = \"{split_by}\"\nmax_rows = 10\npath = \"f/{{{{ partition_id }}}}/{{{{ chunk }}}}.csv\""
            ),
        )
    };
    let plan = f.plan("nan.toml", "nan", "out", &table("x"));
    let out = apply(&plan, &[]);
    let files = f.files("out");
    assert!(
        files.iter().filter(|k| k.ends_with(".csv")).count() > 2,
        "the partition was cut into chunks: {files:?}"
    );
    assert_eq!(
        csv_rows(&f.root.join("out"), &files),
        100,
        "every row is in exactly one chunk: {}",
        text(&out)
    );
    assert_eq!(
        manifest(&f.root, "out/f/201506/_manifest.json")["rows"],
        100
    );

    let plan = f.plan("str.toml", "str", "out-s", &table("s"));
    let out = flow(&["apply"], &plan);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("split_by = \"s\"") && all.contains("String") && all.contains("Date"),
        "names the column, its type and the types that work: {all}"
    );
    assert!(
        !f.files("out-s").iter().any(|k| k.ends_with(".csv")),
        "{all}"
    );
}

/// A table big enough that its export takes a while: `rows` rows of ~40 bytes of CSV.
fn big_table(f: &Fixture, rows: u64) {
    f.db.exec(&format!(
        "CREATE TABLE {}.big (id UInt64, d Date, s String) ENGINE = MergeTree \
         PARTITION BY toYYYYMM(d) ORDER BY id",
        f.db.name()
    ));
    f.db.exec(&format!(
        "INSERT INTO {}.big SELECT number, toDate('2015-06-01'), \
         concat('some text for row ', toString(number)) FROM system.numbers LIMIT {rows}",
        f.db.name()
    ));
}

/// Starts `apply`, waits until `started_writing()` says a temp object exists, SIGKILLs
/// flow there, then resumes to the end.
fn kill_while_writing(plan: &Path, started_writing: impl Fn() -> bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flow"))
        .args(["apply", "--progress", "quiet"])
        .arg(plan)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !started_writing() {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "the export ended before a temp object was seen (make the table bigger?): {}",
                text(&out)
            );
        }
        assert!(start.elapsed().as_secs() < 60, "no temp object appeared");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    apply(plan, &["--resume"]);
}

#[test]
fn a_killed_writer_leaves_nothing_behind_on_fs_after_resume() {
    let f = Fixture::new();
    big_table(&f, 3_000_000);
    let plan = f.plan(
        "kill.toml",
        "kill",
        "out",
        &f.table_of(
            "big",
            "mode = \"partition\"\npath = \"big/{{ partition_id }}.csv\"",
        ),
    );
    let dir = f.root.join("out/big");
    kill_while_writing(&plan, || {
        std::fs::read_dir(&dir).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().contains(".flow-tmp-"))
        })
    });
    assert_eq!(
        f.files("out"),
        vec!["big/201506.csv", "big/_manifest.json"],
        "exactly the committed objects"
    );
    assert_eq!(
        manifest(&f.root, "out/big/_manifest.json")["rows"],
        3_000_000
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_writer_leaves_no_upload_behind_on_s3_after_resume() {
    let f = Fixture::new();
    big_table(&f, 3_000_000);
    let bucket = support::S3Bucket::new("killed").await;
    let plan = f.root.join("kill-s3.toml");
    std::fs::write(
        &plan,
        format!(
            r#"[plan]
name = "kill-s3"

[connections.ch]
kind = "clickhouse"
url = "{url}"

{out}
{table}"#,
            url = support::ch_url(),
            out = s3_out_connection(bucket.name()),
            table = f.table_of("big", "mode = \"partition\"\nserver_side = \"never\"\npath = \"big/{{ partition_id }}.csv\""),
        ),
    )
    .unwrap();
    let client = bucket.client().clone();
    let name = bucket.name().to_string();
    let uploads = move || {
        let client = client.clone();
        let name = name.clone();
        support::block_on_thread(async move {
            client
                .list_multipart_uploads()
                .bucket(name)
                .send()
                .await
                .map(|o| o.uploads().len())
                .unwrap_or(0)
        })
    };
    let plan2 = plan.clone();
    let probe = uploads.clone();
    tokio::task::spawn_blocking(move || kill_while_writing(&plan2, || probe() > 0))
        .await
        .unwrap();
    assert_eq!(uploads(), 0, "the killed attempt's upload was aborted");
    assert_eq!(
        bucket.keys().await,
        vec!["big/201506.csv", "big/_manifest.json"]
    );
}

/// Random plans: random `path` templates from pieces that do and do not tell units
/// apart, random declared partitions (one of them absent from the source), with and
/// without chunks. Whenever `validate` accepts a plan, `apply` either refuses it before
/// exporting anything (a collision only the listed partitions show) or writes exactly
/// one object per unit, and the files hold exactly the source's rows.
#[test]
fn random_paths_and_partitions_never_lose_rows() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let f = Fixture::new();
    let pieces = prop::sample::select(vec![
        "{{ partition_id }}",
        "{{ chunk }}",
        "{{ table.table }}",
        "{{ partition_id[:4] }}",
        "fixed",
        "{{ format }}",
    ]);
    let strategy = (
        prop::collection::vec(pieces, 1..4),
        prop::option::of(prop::sample::subsequence(
            vec!["201505", "201506", "201507", "201508"],
            1..4,
        )),
        any::<bool>(),
    );
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    let case = std::sync::atomic::AtomicUsize::new(0);
    let outcomes = std::sync::Mutex::new((0, 0, 0));
    runner
        .run(&strategy, |(segments, declared, chunked)| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let out = format!("prop{n}");
            let mut extra = format!(
                "mode = \"partition\"\npath = \"{}.csv\"",
                segments.join("/")
            );
            if let Some(ids) = &declared {
                let list: Vec<String> = ids.iter().map(|i| format!("\"{i}\"")).collect();
                extra.push_str(&format!(
                    "\npartition_expr = \"toYYYYMM(d)\"\npartitions = [{}]",
                    list.join(", ")
                ));
            }
            if chunked {
                extra.push_str("\nsplit_by = \"id\"\nmax_rows = 4");
            }
            let plan = f.plan(&format!("{out}.toml"), &out, &out, &f.table(&extra));
            let validate = flow(&["validate"], &plan);
            if !validate.status.success() {
                outcomes.lock().unwrap().0 += 1;
                return Ok(()); // refused offline: nothing can be lost
            }
            let run = flow(&["apply"], &plan);
            let all = text(&run);
            let files: Vec<String> = f
                .files(&out)
                .into_iter()
                .filter(|k| k.ends_with(".csv"))
                .collect();
            if !run.status.success() {
                outcomes.lock().unwrap().1 += 1;
                prop_assert!(all.contains("would both write"), "{all}");
                prop_assert!(
                    files.is_empty(),
                    "refused before any export: {files:?}\n{all}"
                );
                return Ok(());
            }
            let report: serde_json::Value = serde_json::from_slice(
                &std::fs::read(f.root.join(format!(".flow/{out}.report.json"))).unwrap(),
            )
            .unwrap();
            let units = report["tables"][0]["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|p| p["tasks"].as_array().unwrap().iter())
                .filter(|t| t["kind"] == "export")
                .count();
            prop_assert_eq!(
                files.len(),
                units,
                "one object per unit: {:?}\n{}",
                files,
                all
            );
            let expected: u64 = match &declared {
                Some(ids) => ids.iter().filter(|i| **i != "201505").count() as u64 * 10,
                None => 30,
            };
            prop_assert_eq!(csv_rows(&f.root.join(&out), &files), expected, "{}", all);
            outcomes.lock().unwrap().2 += 1;
            Ok(())
        })
        .unwrap();
    let (refused, refused_at_apply, applied) = *outcomes.lock().unwrap();
    eprintln!("{refused} refused by validate, {refused_at_apply} by apply, {applied} applied");
    assert!(applied > 0, "some random plans were applied and checked");
}

#[test]
fn declared_partitions_the_source_lacks_and_bounds_that_match_nothing_are_warned_about() {
    let f = Fixture::new();
    let report = |name: &str| -> serde_json::Value {
        serde_json::from_slice(
            &std::fs::read(f.root.join(format!(".flow/{name}.report.json"))).unwrap(),
        )
        .unwrap()
    };
    let plan = f.plan(
        "absent.toml",
        "absent",
        "out-a",
        &f.table("mode = \"partition\"\npartition_expr = \"toYYYYMM(d)\"\npartitions = [\"201505\", \"201506\"]\npath = \"t/{{ partition_id }}.csv\""),
    );
    let out = apply(&plan, &[]);
    let all = text(&out);
    assert!(all.contains("warning:") && all.contains("201505"), "{all}");
    let warnings = report("absent")["warnings"].to_string();
    assert!(
        warnings.contains("201505") && !warnings.contains("201506"),
        "{warnings}"
    );

    let plan = f.plan(
        "nothing.toml",
        "nothing",
        "out-n",
        &f.table(
            "mode = \"partition\"\nlower = \"id > 1000\"\npath = \"t/{{ partition_id }}.csv\"",
        ),
    );
    let out = apply(&plan, &[]);
    let all = text(&out);
    assert!(
        all.contains("warning:") && all.contains("id > 1000"),
        "{all}"
    );
    assert!(report("nothing")["warnings"].to_string().contains("no row"));

    // An empty source without bounds is fine: no warning.
    f.db.exec(&format!("CREATE TABLE {0}.empty AS {0}.t", f.db.name()));
    let plan = f.plan(
        "empty.toml",
        "empty",
        "out-e",
        &f.table_of("empty", "mode = \"all\"\npath = \"e.csv\""),
    );
    let out = apply(&plan, &[]);
    assert!(!text(&out).contains("warning:"), "{}", text(&out));
    assert!(report("empty").get("warnings").is_none());
}

/// The report's export tasks (`--format json`): (task id, note).
fn export_notes(out: &Output) -> Vec<(String, String)> {
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("report on stdout: {e}\n{}", text(out)));
    let mut notes = Vec::new();
    for table in report["tables"].as_array().into_iter().flatten() {
        for p in table["partitions"].as_array().into_iter().flatten() {
            for t in p["tasks"].as_array().into_iter().flatten() {
                let id = t["id"].as_str().unwrap_or_default().to_string();
                if id.contains("/export") {
                    let note = t["note"].as_str().unwrap_or_default().to_string();
                    notes.push((id, note));
                }
            }
        }
    }
    notes
}

#[tokio::test(flavor = "multi_thread")]
async fn checksums_ignore_storage_artefacts_and_auto_streams_when_a_read_back_differs() {
    // Values the server holds but no file can: hidden values under NULL (`if(c, NULL,
    // n)` keeps `n` there), negative NaNs with payloads (`0/0` on x86), NaN inside
    // arrays. An object read back from S3 holds defaults and the canonical NaN instead.
    let url = support::chdb_url();
    let db = ChDatabase::new(&url, "artefacts");
    db.exec(&format!(
        "CREATE TABLE {}.art (id UInt64, d Date, n Nullable(UInt64), f Float64, \
         af Array(Float64), nf Nullable(Float32)) ENGINE = MergeTree PARTITION BY toYYYYMM(d) ORDER BY id",
        db.name()
    ));
    db.exec(&format!(
        "INSERT INTO {}.art SELECT number, toDate('2015-06-01') + number % 60, \
         if(number % 3 = 0, NULL, number), if(number % 5 = 0, 0/0, number / 7), \
         [0/0, -(0/0), number], if(number % 4 = 0, NULL, toFloat32(0/0)) FROM numbers(3000)",
        db.name()
    ));
    // The artefacts are really there (else this test would check nothing).
    let seen = db.exec(&format!(
        "SELECT countIf(isNull(n) AND assumeNotNull(n) != 0) > 0, \
         countIf(isNaN(f) AND reinterpretAsUInt64(f) != reinterpretAsUInt64(nan)) > 0 \
         FROM {}.art FORMAT TSV",
        db.name()
    ));
    assert_eq!(
        seen.trim(),
        "1\t1",
        "hidden values under NULL, NaNs other than `nan`"
    );
    let bucket = support::S3Bucket::new("artefacts").await;
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(templates.join("clickhouse")).unwrap();
    let write_plan = |name: &str, extra: &str, server_side: &str| {
        let plan = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &plan,
            format!(
                r#"[plan]
name = "{name}"
{extra}

[connections.ch]
kind = "clickhouse"
url = "{url}"

{out}

[[tables]]
source = "ch"
database = "{db}"
table = "art"
strategy = "export"
target = "out"
format = "parquet"
server_side = "{server_side}"
mode = "partition"
path = "{name}/{{{{ partition_id }}}}.parquet"
"#,
                out = s3_out_connection(bucket.name()),
                db = db.name(),
            ),
        )
        .unwrap();
        plan
    };
    let run = |plan: PathBuf| {
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_flow"))
                .args(["apply", "--progress", "quiet", "--format", "json"])
                .arg(&plan)
                .output()
                .unwrap()
        })
    };

    // 1. The artefacts are not data: the server-side path verifies and is kept.
    let out = run(write_plan("clean", "", "always")).await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let notes = export_notes(&out);
    assert_eq!(notes.len(), 2, "{notes:?}");
    for (id, note) in &notes {
        assert!(note.starts_with("server-side"), "{id}: {note}");
    }

    // 2. A read-back that differs although every row is there (here a template
    //    override of the read-back; in the field a format the server reads back
    //    otherwise): `always` fails the unit and says what differs.
    std::fs::write(
        templates.join("clickhouse/count_s3.sql.j2"),
        "SELECT count() AS rows{% if checksum %}, {{ checksum }} + 1 AS checksum{% endif %}\n\
         FROM s3({{ url|sql_string }}{% if access_key_id %}, {{ access_key_id|sql_string }}, \
         {{ secret_access_key|sql_string }}{% endif %}, {{ format|sql_string }}\
         {% if structure %}, {{ structure|sql_string }}{% endif %})\n",
    )
    .unwrap();
    let out = run(write_plan(
        "differs",
        "templates_dir = \"templates\"",
        "always",
    ))
    .await
    .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("row checksum") && all.contains("differs from the source"),
        "{all}"
    );

    // 3. `auto` streams through flow, which verifies the bytes it writes itself: it
    //    needs no read-back (the broken one is never used) and says why in the note.
    let out = run(write_plan(
        "streams",
        "templates_dir = \"templates\"",
        "auto",
    ))
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let notes = export_notes(&out);
    assert_eq!(notes.len(), 2, "{notes:?}");
    for (id, note) in &notes {
        assert!(note.starts_with("streamed through flow"), "{id}: {note}");
        assert!(
            note.contains("server_side = \"auto\" streams"),
            "{id}: {note}"
        );
    }
    let keys = bucket.keys().await;
    for name in ["clean", "streams"] {
        for month in ["201506", "201507"] {
            let key = format!("{name}/{month}.parquet");
            assert!(keys.contains(&key), "{key} in {keys:?}");
        }
    }
}
