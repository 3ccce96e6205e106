//! Helpers shared by the ClickHouse engine tests.

#![allow(dead_code)]

use flow::engines::clickhouse::{Ch, ChClient, ChParams, Stats};
use flow::templates::Templates;

/// The engine for a server URL.
pub fn ch(url: &str) -> Ch {
    let client = ChClient::new(ChParams {
        name: "src".into(),
        url: url.into(),
        ..Default::default()
    })
    .expect("client builds");
    Ch::new(
        client,
        Templates::new(None).expect("built-in templates load"),
    )
}

/// Rows and cross-version checksum of `from` where `filter`.
pub async fn stats(ch: &Ch, from: &str, filter: Option<&str>) -> Stats {
    let cols = ch.columns(from).await.expect("columns");
    let expr = flow::engines::clickhouse::checksum::checksum_expr(&cols);
    ch.stats("test stats", from, filter, Some(&expr))
        .await
        .expect("stats")
}

/// Awkward rows: quotes, commas, tabs, newlines, backslashes, non-ASCII, NULLs,
/// decimals, arrays, dates; several partitions of a tuple key.
pub const AWKWARD_VALUES: &str = r#"
(1, '2015-06-01', '2015-06-01 10:00:00', 'eu', 'plain', NULL, NULL, 1.5, ['a', 'b'], [1, 2]),
(2, '2015-06-02', '2015-06-02 23:59:59', 'eu', 'he said "hi", then left', 3, 'x', -2.25, ['a,b', 'c"d'], []),
(3, '2015-06-03', '2015-06-03 00:00:00', 'us', 'tab\there', -7, '', 0.0001, ['\t'], [0]),
(4, '2015-07-01', '2015-07-01 12:00:00', 'us', 'new\nline and \r return', 2147483647, 'null', 12345678.9999, ['new\nline'], [-1]),
(5, '2015-07-15', '2015-07-15 12:00:00', 'eu', 'back\\slash \\N not null', NULL, '\\N', 0, [], [3, 4, 5]),
(6, '2015-08-01', '2015-08-01 01:02:03', 'eu', 'ünïcødé — 漢字 🚀', 0, 'ü', 12.3400, ['ü', '漢'], [7]),
(7, '2015-08-31', '2015-08-31 23:00:00', 'us', 'comma,separated,"quoted",''single''', 1, ',', -0.5, [''], [8]),
(8, '2015-09-01', '2015-09-01 00:00:00', 'us', '', NULL, NULL, 1, ['x'], [])
"#;

/// Columns of the awkward table (valid on 18.16 and on current releases).
pub const AWKWARD_COLUMNS: &str = "id UInt64, d Date, dt DateTime, k String, s String, \
    n Nullable(Int32), ns Nullable(String), x Decimal(18, 4), a Array(String), ai Array(Int32)";

/// How many part copies the FREEZE backups named by `names` keep on the disks at
/// `disk_paths` (`SELECT path FROM system.disks`, one a line): each kept part has its
/// `checksums.txt` under `<disk>/shadow/<name>/`.
pub fn kept_parts(disk_paths: &str, names: &[String]) -> usize {
    let mut kept = 0;
    for disk in disk_paths.lines().filter(|l| !l.is_empty()) {
        for name in names {
            let mut stack = vec![std::path::Path::new(disk).join("shadow").join(name)];
            while let Some(dir) = stack.pop() {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for e in entries.flatten() {
                    if e.path().is_dir() {
                        stack.push(e.path());
                    } else if e.file_name() == "checksums.txt" {
                        kept += 1;
                    }
                }
            }
        }
    }
    kept
}

/// Every backup name an in-place move's steps may use for the partitions `ids`
/// (a few attempts each).
pub fn backup_names(
    m: &flow::engines::clickhouse::tier_move::TierMove,
    ids: &[String],
) -> Vec<String> {
    let mut names = Vec::new();
    for id in ids {
        for step in ["load", "catch-up"] {
            for n in 0..8 {
                names.push(m.backup_name(step, id, n));
            }
        }
    }
    names
}
