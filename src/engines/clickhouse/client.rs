//! A ClickHouse connection over HTTP, on the `clickhouse` crate.
//!
//! Two ways data comes back, each chosen for robustness across server versions (18.x
//! has no RowBinaryWithNamesAndTypes and rejects the settings typed validation sends):
//! small metadata results as JSONEachRow (64-bit integers may come quoted or not),
//! bulk data as a byte stream in the format the user asked for. Statements are sent
//! verbatim (`query_raw`): a `?` inside a user's filter is text, not a bind marker.
//!
//! Bulk transfers to a loopback server go uncompressed (compression costs CPU and
//! buys nothing on one machine); remote servers get LZ4.
//!
//! Long statements (INSERT … SELECT) run under a `query_id` of flow's own, so that a
//! cancelled task can kill them on the server instead of leaving them running there
//! ([`ChClient::execute_cancellable`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clickhouse::query::BytesCursor;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::caps::Caps;
use super::errors::{exception_in_tail, from_client, ChError, Redactor};
use super::text_out::{self, TextProfile};
use crate::plan::schema::ConnectionKind;
use crate::plan::Connection;

/// One row of a JSONEachRow result.
pub type JsonRow = Map<String, Value>;

/// How long a cancelled statement's kill may take (`KILL QUERY … SYNC` waits until the
/// statement has stopped); well inside the scheduler's grace after a second Ctrl-C.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// A ClickHouse HTTP endpoint plus what flow learned about it.
#[derive(Clone)]
pub struct ChClient {
    name: String,
    client: clickhouse::Client,
    bulk: clickhouse::Client,
    redactor: Redactor,
    caps: Arc<tokio::sync::OnceCell<Caps>>,
    text_profile: Arc<tokio::sync::OnceCell<Option<TextProfile>>>,
    host: String,
}

impl std::fmt::Debug for ChClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChClient")
            .field("connection", &self.name)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// Parameters of a client; built from a plan connection or directly in tests.
#[derive(Clone, Default)]
pub struct ChParams {
    pub name: String,
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub database: Option<String>,
    pub settings: BTreeMap<String, String>,
}

impl ChClient {
    /// A client for a `kind = "clickhouse"` connection. Resolves `${env:…}` values.
    pub fn from_connection(conn: &Connection) -> Result<Self, ChError> {
        let fail = |msg: String| ChError::flow(&conn.name, "connect", msg);
        if conn.kind != ConnectionKind::Clickhouse {
            return Err(fail(format!(
                "connection is of kind `{}`, not clickhouse",
                conn.kind.as_str()
            )));
        }
        let resolve = |v: &Option<crate::plan::Interpolated>, what: &str| {
            crate::plan::interpolate::resolve_key(v, what)
                .map(|s| s.map(crate::plan::Secret::into_inner))
                .map_err(fail)
        };
        let url = resolve(&conn.url, "url")?
            .ok_or_else(|| fail("a clickhouse connection needs `url` (http://host:8123)".into()))?;
        Self::new(ChParams {
            name: conn.name.clone(),
            url,
            user: resolve(&conn.user, "user")?,
            password: resolve(&conn.password, "password")?,
            database: resolve(&conn.database, "database")?,
            settings: conn
                .settings
                .iter()
                .map(|(k, v)| {
                    crate::plan::Interpolated::parse(v)
                        .and_then(|i| i.resolve())
                        .map(|v| (k.clone(), v.into_inner()))
                        .map_err(|e| fail(format!("setting `{k}`: {e}")))
                })
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn new(params: ChParams) -> Result<Self, ChError> {
        let mut redactor = Redactor::new();
        if let Some(p) = &params.password {
            redactor.add(p);
        }
        let (url, host) =
            split_url(&params.url).map_err(|m| ChError::flow(&params.name, "connect", m))?;
        let mut client = clickhouse::Client::default()
            .with_url(url)
            .with_validation(false);
        if let Some(user) = &params.user {
            client = client.with_user(user.clone());
        }
        if let Some(password) = &params.password {
            client = client.with_password(password.clone());
        }
        if let Some(db) = &params.database {
            client = client.with_database(db.clone());
        }
        for (k, v) in &params.settings {
            client = client.with_setting(k.clone(), v.clone());
        }
        let loopback = is_loopback(&host);
        let client = client.with_compression(clickhouse::Compression::None);
        let bulk = if loopback {
            client.clone()
        } else {
            client
                .clone()
                .with_compression(clickhouse::Compression::Lz4)
        };
        Ok(ChClient {
            name: params.name,
            client,
            bulk,
            redactor,
            caps: Arc::new(tokio::sync::OnceCell::new()),
            text_profile: Arc::new(tokio::sync::OnceCell::new()),
            host,
        })
    }

    /// The connection name from the plan.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Host (and port) of the server, for comparisons and messages; no credentials.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Hides `secret` in every error message of this client.
    pub fn add_secret(&mut self, secret: &str) {
        self.redactor.add(secret);
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    fn err(&self, action: &str, e: &clickhouse::error::Error) -> ChError {
        from_client(&self.name, action, e, &self.redactor)
    }

    /// The server's capabilities; `version_sql` is asked once per client.
    pub async fn caps(&self, version_sql: &str) -> Result<Caps, ChError> {
        self.caps
            .get_or_try_init(|| async {
                let rows = self
                    .json_rows("ask the server version", version_sql)
                    .await?;
                let text = rows
                    .first()
                    .and_then(|r| r.values().next())
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                Caps::from_version(&text).ok_or_else(|| {
                    ChError::flow(
                        &self.name,
                        "ask the server version",
                        format!("cannot read a version from `{text}`"),
                    )
                })
            })
            .await
            .copied()
    }

    /// How the server writes text, when flow can write the same (asked once per client,
    /// with the client's settings); None when flow's text of the probe differs from
    /// the server's (changed CSV settings, an unknown server generation).
    pub async fn text_profile(&self) -> Result<Option<TextProfile>, ChError> {
        self.text_profile
            .get_or_try_init(|| async {
                let action = "probe how the server writes text";
                // Servers without the Bool type refuse the first form.
                let with_bool = text_out::probe_sql_with_bool();
                let (sql, native) = match self.bytes(action, &with_bool, "Native").await {
                    Ok(native) => (with_bool.as_str(), native),
                    Err(_) => (
                        text_out::PROBE_SQL,
                        self.bytes(action, text_out::PROBE_SQL, "Native").await?,
                    ),
                };
                let csv = self.bytes(action, sql, "CSV").await?;
                let tsv = self.bytes(action, sql, "TabSeparated").await?;
                let profile = TextProfile::learn(&text_out::ProbeAnswers {
                    csv: &csv,
                    tsv: &tsv,
                    native: &native,
                });
                if profile.is_none() {
                    tracing::info!(
                        connection = %self.name,
                        answer = %String::from_utf8_lossy(&csv[..csv.len().min(300)]),
                        "the server writes text in a way flow does not imitate; it formats exports itself"
                    );
                }
                Ok(profile)
            })
            .await
            .cloned()
    }

    /// Runs a statement that returns nothing (DDL, ALTER, INSERT … SELECT).
    pub async fn execute(&self, action: &str, sql: &str) -> Result<(), ChError> {
        tracing::debug!(connection = %self.name, action, "clickhouse execute");
        self.client
            .query_raw(sql)
            .execute()
            .await
            .map_err(|e| self.err(action, &e))
    }

    /// Runs a statement that returns nothing and may take long (INSERT … SELECT), under
    /// a fresh `query_id`. When `cancel` fires first, flow stops waiting, kills the
    /// statement on the server (`KILL QUERY … SYNC`, on a separate request) and returns
    /// a transient error; a statement not started yet is not sent.
    pub async fn execute_cancellable(
        &self,
        action: &str,
        sql: &str,
        cancel: &CancellationToken,
    ) -> Result<(), ChError> {
        if cancel.is_cancelled() {
            return Err(ChError::flow(
                &self.name,
                action,
                "cancelled (interrupt) before it started",
            )
            .transient());
        }
        let query_id = new_query_id();
        tracing::debug!(connection = %self.name, action, query_id, "clickhouse execute");
        let run = self
            .client
            .query_raw(sql)
            .with_setting("query_id", query_id.as_str())
            .execute();
        match cancel.run_until_cancelled(run).await {
            Some(result) => result.map_err(|e| self.err(action, &e)),
            None => Err(self.kill(action, &query_id).await),
        }
    }

    /// Kills the statement running under `query_id`; the error says how that went.
    async fn kill(&self, action: &str, query_id: &str) -> ChError {
        tracing::warn!(connection = %self.name, action, query_id, "killing a cancelled statement");
        let sql = format!(
            "KILL QUERY WHERE query_id = {} SYNC",
            crate::templates::quote_sql_string(query_id)
        );
        let attempt = async {
            // Nothing found may mean the request has not reached the process list yet:
            // ask once more, a moment later (killing a finished statement is a no-op).
            for pause in [Duration::ZERO, Duration::from_millis(500)] {
                tokio::time::sleep(pause).await;
                let answer = self.text("kill a cancelled statement", &sql, "TSV").await?;
                if !answer.trim().is_empty() {
                    return Ok(true);
                }
            }
            Ok::<bool, ChError>(false)
        };
        let what = match tokio::time::timeout(KILL_WAIT, attempt).await {
            Ok(Ok(true)) => "the statement was killed on the server".to_string(),
            Ok(Ok(false)) => "the statement was not running on the server any more".to_string(),
            Ok(Err(e)) => format!(
                "killing the statement on the server failed ({}); look for it in system.processes",
                e.message
            ),
            Err(_) => format!(
                "the server was asked to kill the statement but it had not stopped after {}s",
                KILL_WAIT.as_secs()
            ),
        };
        ChError::flow(
            &self.name,
            action,
            format!("cancelled (interrupt); {what} (query_id {query_id})"),
        )
        .transient()
    }

    /// Runs a query and returns its rows as JSON objects (small results only).
    pub async fn json_rows(&self, action: &str, sql: &str) -> Result<Vec<JsonRow>, ChError> {
        let text = self.text(action, sql, "JSONEachRow").await?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| match serde_json::from_str::<Value>(line) {
                Ok(Value::Object(map)) => Ok(map),
                _ => Err(ChError::flow(
                    &self.name,
                    action,
                    format!("unexpected JSONEachRow line `{}`", truncate(line, 200)),
                )),
            })
            .collect()
    }

    /// Runs a query and returns its whole result as text in `format` (small results).
    pub async fn text(&self, action: &str, sql: &str, format: &str) -> Result<String, ChError> {
        let bytes = self.bytes(action, sql, format).await?;
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            ChError::flow(&self.name, action, "the server answered with invalid UTF-8")
        })
    }

    /// Runs a query and returns its whole result in `format` (small results).
    pub async fn bytes(&self, action: &str, sql: &str, format: &str) -> Result<Bytes, ChError> {
        tracing::debug!(connection = %self.name, action, "clickhouse query");
        let mut cursor = self
            .client
            .query_raw(sql)
            .fetch_bytes(format)
            .map_err(|e| self.err(action, &e))?;
        let bytes = cursor.collect().await.map_err(|e| self.err(action, &e))?;
        if let Some(exception) = exception_in_tail(tail(&bytes, 4096)) {
            return Err(server_error(&self.name, action, &exception, &self.redactor));
        }
        Ok(bytes)
    }

    /// Starts a streamed query; the caller reads chunks and must check the tail for a
    /// late exception (see [`exception_in_tail`]).
    pub fn stream(&self, action: &str, sql: &str, format: &str) -> Result<BytesCursor, ChError> {
        tracing::debug!(connection = %self.name, action, format, "clickhouse stream");
        self.bulk
            .query_raw(sql)
            .fetch_bytes(format)
            .map_err(|e| self.err(action, &e))
    }

    /// Starts a streamed query whose body comes in ClickHouse's compressed framing
    /// (`compress=1`); decode it with [`super::blocks::BlockDecoder`].
    pub fn stream_framed(
        &self,
        action: &str,
        sql: &str,
        format: &str,
    ) -> Result<BytesCursor, ChError> {
        tracing::debug!(connection = %self.name, action, format, "clickhouse stream (compress=1)");
        self.client
            .query_raw(sql)
            .with_setting("compress", "1")
            .fetch_bytes(format)
            .map_err(|e| self.err(action, &e))
    }

    /// Starts an `INSERT … FORMAT X` that takes its data in chunks.
    pub fn insert(&self, sql: &str) -> clickhouse::insert_formatted::InsertFormatted {
        self.bulk.insert_formatted_with(sql.to_string())
    }

    /// Maps an error of a stream or insert started by this client.
    pub fn map_err(&self, action: &str, e: &clickhouse::error::Error) -> ChError {
        self.err(action, e)
    }
}

/// Builds a ChError from exception text found in a body.
pub fn server_error(connection: &str, action: &str, text: &str, redactor: &Redactor) -> ChError {
    let code = super::errors::parse_code(text);
    ChError {
        connection: connection.to_string(),
        action: action.to_string(),
        code,
        message: redactor.redact(text.trim()).into_owned(),
        retryable: code.is_some_and(super::errors::is_transient_code),
    }
}

/// A query id no other statement has: `flow-` and 128 random bits.
fn new_query_id() -> String {
    format!("flow-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

fn tail(bytes: &Bytes, n: usize) -> &[u8] {
    &bytes[bytes.len().saturating_sub(n)..]
}

fn truncate(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Splits `http://user:pass@host:port/path` into a credential-free URL and `host:port`.
/// Credentials in the URL are refused (they would leak into messages): use `user` and
/// `password = "${env:…}"`.
fn split_url(url: &str) -> Result<(String, String), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "`url` must look like http://host:8123".to_string())?;
    if scheme != "http" && scheme != "https" {
        return Err(format!("`url` scheme `{scheme}` is not http or https"));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(
            "`url` must not contain credentials; use `user` and `password = \"${env:…}\"`".into(),
        );
    }
    if authority.is_empty() {
        return Err("`url` has no host".into());
    }
    Ok((url.trim_end_matches('/').to_string(), authority.to_string()))
}

fn is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    name == "localhost"
        || name == "::1"
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Reads an unsigned integer that JSONEachRow may quote (64-bit integers on old servers).
pub fn json_u64(row: &JsonRow, key: &str) -> Option<u64> {
    match row.get(key)? {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Reads a string column.
pub fn json_str(row: &JsonRow, key: &str) -> Option<String> {
    match row.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_without_credentials_only() {
        assert_eq!(
            split_url("http://127.0.0.1:8123/").unwrap(),
            ("http://127.0.0.1:8123".into(), "127.0.0.1:8123".into())
        );
        assert!(split_url("http://u:p@h:1")
            .unwrap_err()
            .contains("credentials"));
        assert!(is_loopback("127.0.0.1:8123"));
        assert!(is_loopback("localhost:8123"));
        assert!(!is_loopback("10.0.0.1:8123"));
    }

    #[test]
    fn quoted_and_plain_integers() {
        let row: JsonRow = serde_json::from_str(r#"{"a":"18446744073709551615","b":3}"#).unwrap();
        assert_eq!(json_u64(&row, "a"), Some(u64::MAX));
        assert_eq!(json_u64(&row, "b"), Some(3));
    }
}
