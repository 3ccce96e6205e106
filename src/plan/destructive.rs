//! Is an `sql` step destructive? Classification of the *rendered* statement text.
//!
//! Why a tokenizer: a statement's words only mean something outside comments, string
//! literals and quoted identifiers (`SELECT * FROM "drop"` drops nothing, `/**/DROP`
//! does). The text is read with `sqlparser`'s tokenizer in the dialect of the step's
//! connection (ClickHouse, MySQL for MySQL and StarRocks), split into statements at
//! `;` tokens, and each statement is classified by its unquoted keywords. The
//! tokenizer, not the parser, decides: sqlparser's parser does not know most
//! ClickHouse `ALTER` forms (`ALTER TABLE t DELETE WHERE …`, `… MOVE PARTITION …`),
//! and a statement flow cannot read must not pass for a harmless one.
//!
//! Policy ([`refusal`]), the same at validate time (the text rendered with `vars` and
//! `--var`) and at run time right before the first statement is sent (with the real
//! `{{ env.X }}` values):
//! - a destructive statement runs only in a step marked `destructive = true`;
//! - a statement flow cannot classify counts as destructive unless the step says
//!   `destructive = false`;
//! - `destructive = false` never lets a statement flow knows to be destructive through.

use sqlparser::dialect::{ClickHouseDialect, Dialect, MySqlDialect};
use sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

use super::schema::ConnectionKind;
use super::StepSpec;

/// What a statement text does to existing data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlClass {
    /// Reads, creates or adds; removes and replaces nothing.
    Safe,
    /// Removes or replaces data; the text names the statement (`DROP TABLE`).
    Destructive(String),
    /// Flow cannot tell; the text says why.
    Unclassified(String),
}

/// Words after `ALTER` that remove, rewrite or move data away.
const ALTER_DESTRUCTIVE: &[&str] = &[
    "DROP", "DELETE", "UPDATE", "CLEAR", "MODIFY", "DETACH", "MOVE", "REPLACE", "RENAME", "REMOVE",
];

/// Statements that by their first word remove or replace data.
const LEADING_DESTRUCTIVE: &[&str] = &[
    "DROP", "TRUNCATE", "DELETE", "UPDATE", "RENAME", "EXCHANGE", "DETACH", "REPLACE", "MERGE",
    "UPSERT",
];

/// Words that say what a destructive statement works on, shown in messages.
const OBJECT_WORDS: &[&str] = &[
    "TABLE",
    "TABLES",
    "DATABASE",
    "DATABASES",
    "VIEW",
    "DICTIONARY",
    "DICTIONARIES",
    "FROM",
    "INTO",
    "COLUMN",
    "INDEX",
    "PARTITION",
    "SCHEMA",
    "USER",
    "ROLE",
    "FUNCTION",
    "TEMPORARY",
];

/// Statements that read, create or add, by their first word.
const LEADING_SAFE: &[&str] = &[
    "SELECT", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS", "CHECK", "USE", "SET", "ATTACH",
    "GRANT", "REVOKE", "BEGIN", "START", "COMMIT", "ROLLBACK", "VALUES", "ANALYZE", "WATCH",
];

fn dialect(kind: ConnectionKind) -> Box<dyn Dialect> {
    match kind {
        ConnectionKind::Mysql | ConnectionKind::Starrocks => Box::new(MySqlDialect {}),
        _ => Box::new(ClickHouseDialect {}),
    }
}

/// One statement of a text: its words and where it is in the text.
#[derive(Default)]
struct Statement {
    tokens: Vec<Token>,
    range: std::ops::Range<usize>,
    /// MySQL executable comments (`/*! … */`, `/*M! … */`): code the server runs.
    hidden: Vec<String>,
    /// A comment holds `/*`: ClickHouse 18.x ends it at the first `*/`, newer
    /// servers and the tokenizer at the matching one, so the text is read two ways.
    nested_comment: bool,
}

/// The code of a MySQL/MariaDB executable comment, without its version number.
fn executable_comment(comment: &str) -> Option<&str> {
    let rest = comment
        .strip_prefix('!')
        .or_else(|| comment.strip_prefix("M!"))?;
    Some(rest.trim_start_matches(|c: char| c.is_ascii_digit()))
}

impl Statement {
    /// Whether the server has anything to run: a token, or code in a comment.
    fn counts(&self) -> bool {
        !self.tokens.is_empty() || !self.hidden.is_empty() || self.nested_comment
    }

    fn class(&self, kind: ConnectionKind) -> SqlClass {
        if self.nested_comment {
            return SqlClass::Destructive(
                "a comment inside a comment, which server versions end at different `*/`"
                    .to_string(),
            );
        }
        let mut class = if self.tokens.is_empty() {
            SqlClass::Safe
        } else {
            statement_class(&self.tokens)
        };
        for code in &self.hidden {
            class = class.worst(classify(code, kind));
        }
        class
    }
}

impl SqlClass {
    /// The more severe of two classes: destructive, then unclassified, then safe.
    fn worst(self, other: SqlClass) -> SqlClass {
        match (self, other) {
            (d @ SqlClass::Destructive(_), _) | (_, d @ SqlClass::Destructive(_)) => d,
            (u @ SqlClass::Unclassified(_), _) | (_, u @ SqlClass::Unclassified(_)) => u,
            _ => SqlClass::Safe,
        }
    }
}

/// Byte offset of a 1-based line and column (in characters) of `text`.
fn offset(text: &str, line_starts: &[usize], line: u64, column: u64) -> usize {
    let Some(&start) = line_starts.get((line as usize).saturating_sub(1)) else {
        return text.len();
    };
    text[start..]
        .char_indices()
        .nth((column as usize).saturating_sub(1))
        .map(|(i, _)| start + i)
        .unwrap_or(text.len())
}

/// Tokenizes `sql` and cuts it into statements at `;` tokens: a `;` inside a string,
/// a quoted identifier or a comment cuts nothing. Statements with no token but
/// whitespace and comments are left out.
fn statements(sql: &str, kind: ConnectionKind) -> Result<Vec<Statement>, String> {
    let dialect = dialect(kind);
    let tokens = Tokenizer::new(dialect.as_ref(), sql)
        .tokenize_with_location()
        .map_err(|e| format!("the text does not tokenize: {e}"))?;
    let mut line_starts = vec![0];
    line_starts.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
    let mut out = Vec::new();
    let mysql = matches!(kind, ConnectionKind::Mysql | ConnectionKind::Starrocks);
    let mut current = Statement::default();
    for t in tokens {
        match t.token {
            Token::Whitespace(Whitespace::MultiLineComment(comment)) => {
                current.nested_comment |= comment.contains("/*");
                match executable_comment(&comment) {
                    Some(code) if mysql => current.hidden.push(code.to_string()),
                    _ => {}
                }
            }
            Token::Whitespace(
                Whitespace::Space
                | Whitespace::Newline
                | Whitespace::Tab
                | Whitespace::SingleLineComment { .. },
            )
            | Token::EOF => {}
            Token::SemiColon => {
                let at = offset(sql, &line_starts, t.span.start.line, t.span.start.column);
                current.range.end = at;
                let next_start = at + 1;
                let done = std::mem::replace(
                    &mut current,
                    Statement {
                        range: next_start..next_start,
                        ..Statement::default()
                    },
                );
                if done.counts() {
                    out.push(done);
                }
            }
            other => current.tokens.push(other),
        }
    }
    current.range.end = sql.len();
    if current.counts() {
        out.push(current);
    }
    Ok(out)
}

/// The statements of `sql` as they are sent, one by one, to a server of `kind`: the
/// same cut the classification reads, so what is checked is what runs. Text that
/// does not tokenize is one statement (the server then reads it whole).
pub fn split(sql: &str, kind: ConnectionKind) -> Vec<String> {
    match statements(sql, kind) {
        Ok(list) => list
            .into_iter()
            .map(|s| sql[s.range].trim().to_string())
            .collect(),
        Err(_) if sql.trim().is_empty() => Vec::new(),
        Err(_) => vec![sql.trim().to_string()],
    }
}

/// Classifies the statements of `sql` as the server of `kind` would read them. The
/// most severe statement decides: one destructive statement makes the text
/// destructive, then one unclassified makes it unclassified.
pub fn classify(sql: &str, kind: ConnectionKind) -> SqlClass {
    let list = match statements(sql, kind) {
        Ok(list) => list,
        Err(e) => return SqlClass::Unclassified(e),
    };
    list.iter()
        .fold(SqlClass::Safe, |worst, s| worst.worst(s.class(kind)))
}

/// An unquoted word of a statement, upper-cased; quoted identifiers are no keywords.
fn keyword(token: &Token) -> Option<String> {
    match token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

fn statement_class(tokens: &[Token]) -> SqlClass {
    // `(SELECT …) UNION …` starts with parentheses.
    let first = tokens.iter().find(|t| !matches!(t, Token::LParen));
    let Some(lead) = first.and_then(keyword) else {
        let shown = first.map(|t| t.to_string()).unwrap_or_default();
        return SqlClass::Unclassified(format!("a statement starts with `{shown}`, not a keyword"));
    };
    let words: Vec<String> = tokens.iter().filter_map(keyword).collect();
    let next = words.get(1).cloned().unwrap_or_default();
    let has = |w: &str| words.iter().any(|x| x == w);
    let named = |what: &str| SqlClass::Destructive(what.trim().to_string());
    match lead.as_str() {
        l if LEADING_DESTRUCTIVE.contains(&l) => {
            // `DROP TABLE`, `TRUNCATE TABLE`, `DELETE FROM`: the second word helps.
            let second = if OBJECT_WORDS.contains(&next.as_str()) {
                next.as_str()
            } else {
                ""
            };
            named(&format!("{l} {second}"))
        }
        "ALTER" => match words
            .iter()
            .skip(1)
            .find(|w| ALTER_DESTRUCTIVE.contains(&w.as_str()))
        {
            Some(w) => named(&format!("ALTER … {w}")),
            None => SqlClass::Safe,
        },
        "INSERT" if next == "OVERWRITE" => named("INSERT OVERWRITE"),
        "INSERT" if next == "OR" && words.get(2).is_some_and(|w| w == "REPLACE") => {
            named("INSERT OR REPLACE")
        }
        "INSERT" if has("DUPLICATE") && has("UPDATE") => named("INSERT … ON DUPLICATE KEY UPDATE"),
        "INSERT" => SqlClass::Safe,
        "CREATE" if next == "OR" && words.get(2).is_some_and(|w| w == "REPLACE") => {
            named("CREATE OR REPLACE")
        }
        "CREATE" => SqlClass::Safe,
        "WITH" => match ["DELETE", "UPDATE", "MERGE", "DROP", "TRUNCATE"]
            .into_iter()
            .find(|w| has(w))
        {
            Some(w) => named(&format!("WITH … {w}")),
            None => SqlClass::Safe,
        },
        "OPTIMIZE" if has("DEDUPLICATE") => named("OPTIMIZE … DEDUPLICATE"),
        "OPTIMIZE" => SqlClass::Safe,
        "SYSTEM" if has("DROP") && has("REPLICA") => named("SYSTEM DROP REPLICA"),
        "SYSTEM" => SqlClass::Safe,
        l if LEADING_SAFE.contains(&l) => SqlClass::Safe,
        l => SqlClass::Unclassified(format!("flow does not know statements starting with `{l}`")),
    }
}

/// Why flow refuses to run `rendered` as the text of `step` on a `kind` connection,
/// as (problem, fix); None when it may run.
pub fn refusal(step: &StepSpec, rendered: &str, kind: ConnectionKind) -> Option<(String, String)> {
    let id = &step.id;
    match (classify(rendered, kind), step.destructive_declared) {
        (SqlClass::Safe, _) | (SqlClass::Destructive(_), Some(true)) => None,
        (SqlClass::Unclassified(_), Some(_)) => None,
        (SqlClass::Destructive(what), declared) => Some((
            match declared {
                Some(false) => format!(
                    "sql step \"{id}\" runs a destructive statement ({what}) but says destructive = false"
                ),
                _ => format!(
                    "sql step \"{id}\" runs a destructive statement ({what}) but is not marked destructive"
                ),
            },
            "mark the step `destructive = true` and run it `after` a table or a step with `verifies = true`; flow never sends a destructive statement of an unmarked step".to_string(),
        )),
        (SqlClass::Unclassified(why), None) => Some((
            format!(
                "sql step \"{id}\": flow cannot tell whether its statement removes data ({why})"
            ),
            "mark the step `destructive = true` (it then needs a verify before it), or `destructive = false` if it only reads or adds data".to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use ConnectionKind::{Clickhouse, Mysql};

    fn d(what: &str) -> SqlClass {
        SqlClass::Destructive(what.to_string())
    }

    #[test]
    fn statements_are_classified_by_their_unquoted_keywords() {
        let cases: &[(&str, ConnectionKind, SqlClass)] = &[
            ("SELECT 1", Clickhouse, SqlClass::Safe),
            (
                "select * from t where x = 'drop table t'",
                Clickhouse,
                SqlClass::Safe,
            ),
            // Quoted identifiers named like keywords are names, not keywords.
            ("SELECT * FROM \"drop\"", Clickhouse, SqlClass::Safe),
            (
                "SELECT `delete` FROM `truncate`",
                Clickhouse,
                SqlClass::Safe,
            ),
            ("SELECT * FROM \"drop\"", Mysql, SqlClass::Safe),
            (
                "INSERT INTO `drop` SELECT 'DELETE' FROM t -- DROP TABLE t",
                Clickhouse,
                SqlClass::Safe,
            ),
            (
                "CREATE TABLE t (x UInt8) ENGINE = MergeTree ORDER BY x",
                Clickhouse,
                SqlClass::Safe,
            ),
            (
                "ALTER TABLE t ADD COLUMN `drop` UInt8",
                Clickhouse,
                SqlClass::Safe,
            ),
            (
                "ALTER TABLE t ATTACH PARTITION 201501",
                Clickhouse,
                SqlClass::Safe,
            ),
            ("OPTIMIZE TABLE t FINAL", Clickhouse, SqlClass::Safe),
            ("-- only a comment", Clickhouse, SqlClass::Safe),
            // Comments hide nothing.
            ("/* harmless */DROP TABLE t", Clickhouse, d("DROP TABLE")),
            ("SELECT 1 -- \n;DROP TABLE t", Clickhouse, d("DROP TABLE")),
            ("SELECT 1; DROP TABLE t", Clickhouse, d("DROP TABLE")),
            ("sElEcT 1;\n\tdRoP/**/tAbLe t", Clickhouse, d("DROP TABLE")),
            ("truncate table t", Mysql, d("TRUNCATE TABLE")),
            ("DELETE FROM t WHERE x = 1", Mysql, d("DELETE FROM")),
            ("UPDATE t SET x = 1", Mysql, d("UPDATE")),
            ("RENAME TABLE a TO b", Clickhouse, d("RENAME TABLE")),
            ("EXCHANGE TABLES a AND b", Clickhouse, d("EXCHANGE TABLES")),
            ("DETACH TABLE t", Clickhouse, d("DETACH TABLE")),
            ("REPLACE INTO t VALUES (1)", Mysql, d("REPLACE INTO")),
            (
                "INSERT INTO t VALUES (1) ON DUPLICATE KEY UPDATE x = 2",
                Mysql,
                d("INSERT … ON DUPLICATE KEY UPDATE"),
            ),
            ("INSERT INTO t SELECT * FROM u", Mysql, SqlClass::Safe),
            (
                "INSERT OVERWRITE t SELECT * FROM s",
                Mysql,
                d("INSERT OVERWRITE"),
            ),
            (
                "CREATE OR REPLACE TABLE t AS SELECT 1",
                Clickhouse,
                d("CREATE OR REPLACE"),
            ),
            (
                "ALTER TABLE t DELETE WHERE x = 1",
                Clickhouse,
                d("ALTER … DELETE"),
            ),
            (
                "ALTER TABLE t UPDATE x = 1 WHERE 1",
                Clickhouse,
                d("ALTER … UPDATE"),
            ),
            (
                "ALTER TABLE t MOVE PARTITION 201501 TO TABLE u",
                Clickhouse,
                d("ALTER … MOVE"),
            ),
            (
                "ALTER TABLE t DROP PARTITION 201501",
                Clickhouse,
                d("ALTER … DROP"),
            ),
            (
                "ALTER TABLE t CLEAR COLUMN c IN PARTITION 1",
                Clickhouse,
                d("ALTER … CLEAR"),
            ),
            (
                "ALTER TABLE t MODIFY TTL d + INTERVAL 1 DAY",
                Clickhouse,
                d("ALTER … MODIFY"),
            ),
            (
                "ALTER TABLE t DETACH PARTITION 1",
                Clickhouse,
                d("ALTER … DETACH"),
            ),
            (
                "ALTER TABLE t REPLACE PARTITION 1 FROM s",
                Clickhouse,
                d("ALTER … REPLACE"),
            ),
            (
                "OPTIMIZE TABLE t FINAL DEDUPLICATE",
                Clickhouse,
                d("OPTIMIZE … DEDUPLICATE"),
            ),
            (
                "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
                Mysql,
                d("WITH … DELETE"),
            ),
        ];
        for (sql, kind, want) in cases {
            assert_eq!(&classify(sql, *kind), want, "{sql}");
        }
    }

    #[test]
    fn statements_are_cut_where_the_tokenizer_sees_semicolons() {
        let s = split(
            "CREATE TABLE a (x String DEFAULT ';'); -- a; comment\nINSERT INTO a VALUES ('it\\'s;'); /* ; */ SELECT 1;\n;",
            Clickhouse,
        );
        assert_eq!(
            s,
            vec![
                "CREATE TABLE a (x String DEFAULT ';')".to_string(),
                "-- a; comment\nINSERT INTO a VALUES ('it\\'s;')".to_string(),
                "/* ; */ SELECT 1".to_string(),
            ]
        );
        assert!(split("-- only a comment", Clickhouse).is_empty());
        assert_eq!(
            split("SELECT 'é;'; SELECT `ü`", Clickhouse),
            vec!["SELECT 'é;'", "SELECT `ü`"]
        );
        // MySQL reads `#` as a comment: its `;` cuts nothing there.
        assert_eq!(
            split("SELECT 1 # x; DROP TABLE t", Mysql),
            vec!["SELECT 1 # x; DROP TABLE t"]
        );
        assert_eq!(
            classify("SELECT 1 # x; DROP TABLE t", Mysql),
            SqlClass::Safe
        );
    }

    #[test]
    fn comments_servers_read_as_code_are_classified_too() {
        // MySQL runs the code of `/*! … */` and MariaDB that of `/*M! … */`.
        assert_eq!(
            classify("SELECT 1 /*!50000 ; DROP TABLE t */", Mysql),
            d("DROP TABLE")
        );
        assert_eq!(classify("/*M!100100 TRUNCATE t */", Mysql), d("TRUNCATE"));
        assert_eq!(
            classify("SELECT /*+ MAX_EXECUTION_TIME(1) */ 1", Mysql),
            SqlClass::Safe
        );
        // `--` needs a space after it in MySQL: `--1` is minus minus one, not a comment.
        assert_eq!(
            classify("SELECT 1 --1; DROP TABLE t", Mysql),
            d("DROP TABLE")
        );
        // ClickHouse 18.16 ends a comment at the first `*/` (checked on the server), so
        // `DROP TABLE t` runs there; the tokenizer nests. Both readings count.
        let nested = classify("/* /* */ DROP TABLE t -- */", Clickhouse);
        assert!(matches!(nested, SqlClass::Destructive(_)), "{nested:?}");
        let nested = classify("SELECT 1 /* a /* b */ c */", Clickhouse);
        assert!(matches!(nested, SqlClass::Destructive(_)), "{nested:?}");
    }

    #[test]
    fn text_flow_cannot_read_is_unclassified() {
        for sql in [
            "SELECT 'unterminated",
            "FROBNICATE TABLE t",
            "'a string'; SELECT 1",
            "SELEC 1",
        ] {
            assert!(
                matches!(
                    classify(sql, ConnectionKind::Clickhouse),
                    SqlClass::Unclassified(_)
                ),
                "{sql}: {:?}",
                classify(sql, ConnectionKind::Clickhouse)
            );
        }
        // A destructive statement beside an unreadable one still counts as destructive.
        assert_eq!(
            classify("FROBNICATE; DROP TABLE t", ConnectionKind::Clickhouse),
            d("DROP TABLE")
        );
    }

    fn step(declared: Option<bool>) -> StepSpec {
        StepSpec {
            index: 0,
            id: "s".into(),
            kind: super::super::StepKind::Sql,
            text: String::new(),
            text_span: 0..0,
            connection: Some("ch".into()),
            after: vec![],
            env: Default::default(),
            cwd: None,
            timeout: None,
            once: false,
            destructive: declared == Some(true),
            destructive_declared: declared,
            verifies: false,
            uses: None,
            span: 0..0,
        }
    }

    #[test]
    fn the_policy_refuses_unmarked_destructive_and_unclassified_text() {
        let ch = ConnectionKind::Clickhouse;
        assert!(refusal(&step(None), "SELECT 1", ch).is_none());
        assert!(refusal(&step(None), "DROP TABLE t", ch).is_some());
        assert!(refusal(&step(Some(false)), "DROP TABLE t", ch).is_some());
        assert!(refusal(&step(Some(true)), "DROP TABLE t", ch).is_none());
        assert!(refusal(&step(None), "FROBNICATE", ch).is_some());
        assert!(refusal(&step(Some(false)), "FROBNICATE", ch).is_none());
        assert!(refusal(&step(Some(true)), "FROBNICATE", ch).is_none());
    }
}
