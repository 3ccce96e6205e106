//! MySQL-protocol connections (MySQL, MariaDB, StarRocks) on `mysql_async`, for `sql`
//! steps and as an export source ([`export`]).
//!
//! One connection per step: steps are few and long, a pool would only hold sockets
//! open between them. Retries are decided from the server's error code (deadlock,
//! lock wait timeout, too many connections, lost connection) or a transport failure;
//! syntax and permission errors are permanent. Credentials never appear in messages:
//! the URL may not carry them, and the password is redacted from server text.
//!
//! A cancelled step does not leave its statement running: flow kills the step's
//! connection from a second one (`KILL CONNECTION <id>`, which also stops a statement
//! whose request is still on its way, where `KILL QUERY` would miss it).

pub mod export;
mod text;

use std::time::Duration;

use mysql_async::prelude::Queryable;
use tokio_util::sync::CancellationToken;

use crate::plan::schema::ConnectionKind;
use crate::plan::Connection;

/// How long killing a cancelled statement's connection may take.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// A failed MySQL request.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind} `{connection}`: {action}: {message}")]
pub struct MysqlError {
    pub kind: &'static str,
    pub connection: String,
    pub action: String,
    pub code: Option<u16>,
    pub message: String,
    pub retryable: bool,
}

/// Connection settings of a mysql or starrocks connection.
#[derive(Clone)]
pub struct MysqlClient {
    name: String,
    kind: &'static str,
    opts: mysql_async::Opts,
    password: Option<String>,
}

impl std::fmt::Debug for MysqlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlClient")
            .field("connection", &self.name)
            .field("host", &self.opts.ip_or_hostname())
            .field("port", &self.opts.tcp_port())
            .finish_non_exhaustive()
    }
}

impl MysqlClient {
    pub fn from_connection(conn: &Connection) -> Result<Self, MysqlError> {
        let kind = match conn.kind {
            ConnectionKind::Mysql => "mysql",
            ConnectionKind::Starrocks => "starrocks",
            other => {
                return Err(MysqlError {
                    kind: "mysql",
                    connection: conn.name.clone(),
                    action: "connect".into(),
                    code: None,
                    message: format!("connection is of kind `{}`", other.as_str()),
                    retryable: false,
                })
            }
        };
        let fail = |message: String| MysqlError {
            kind,
            connection: conn.name.clone(),
            action: "connect".into(),
            code: None,
            message,
            retryable: false,
        };
        let resolve = |v: &Option<crate::plan::Interpolated>, what: &str| {
            crate::plan::interpolate::resolve_key(v, what)
                .map(|s| s.map(crate::plan::Secret::into_inner))
                .map_err(fail)
        };
        let url = resolve(&conn.url, "url")?
            .ok_or_else(|| fail("needs `url` (mysql://host:3306)".into()))?;
        let authority = url
            .split_once("://")
            .map(|(_, r)| r.split('/').next().unwrap_or_default())
            .unwrap_or_default();
        if authority.contains('@') {
            return Err(fail(
                "`url` must not contain credentials; use `user` and `password = \"${env:…}\"`"
                    .into(),
            ));
        }
        let opts = mysql_async::Opts::from_url(&url).map_err(|e| fail(format!("`url`: {e}")))?;
        let password = resolve(&conn.password, "password")?;
        let mut builder = mysql_async::OptsBuilder::from_opts(opts)
            .prefer_socket(false)
            .user(resolve(&conn.user, "user")?)
            .pass(password.clone());
        if let Some(db) = resolve(&conn.database, "database")? {
            builder = builder.db_name(Some(db));
        }
        Ok(MysqlClient {
            name: conn.name.clone(),
            kind,
            opts: builder.into(),
            password,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A new connection.
    pub(crate) async fn connect(&self) -> Result<mysql_async::Conn, MysqlError> {
        mysql_async::Conn::new(self.opts.clone())
            .await
            .map_err(|e| self.err("connect", e))
    }

    pub(crate) fn err(&self, action: &str, e: mysql_async::Error) -> MysqlError {
        let (code, retryable) = match &e {
            mysql_async::Error::Server(s) => (
                Some(s.code),
                // lock wait timeout, deadlock, too many connections, server gone/lost,
                // query interrupted by shutdown
                matches!(s.code, 1040 | 1053 | 1205 | 1213 | 2006 | 2013),
            ),
            mysql_async::Error::Io(_) => (None, true),
            mysql_async::Error::Driver(_) => (None, e.is_fatal()),
            _ => (None, false),
        };
        let message = e.to_string();
        let message = match self.password.as_deref() {
            Some(p) => crate::redact::Redactor::new()
                .with(p)
                .redact(&message)
                .into_owned(),
            None => message,
        };
        MysqlError {
            kind: self.kind,
            connection: self.name.clone(),
            action: action.to_string(),
            code,
            message,
            retryable,
        }
    }

    /// Runs statements one after another on one connection; returns affected rows.
    /// When `cancel` fires, flow stops waiting, kills the connection on the server and
    /// returns a transient error.
    pub async fn execute_all(
        &self,
        statements: &[String],
        cancel: &CancellationToken,
    ) -> Result<u64, MysqlError> {
        let mut conn = mysql_async::Conn::new(self.opts.clone())
            .await
            .map_err(|e| self.err("connect", e))?;
        let mut affected = 0;
        for (i, sql) in statements.iter().enumerate() {
            let action = format!("statement {} of {}", i + 1, statements.len());
            match cancel
                .run_until_cancelled(conn.query_drop(sql.as_str()))
                .await
            {
                Some(result) => result.map_err(|e| self.err(&action, e))?,
                None => return Err(self.kill(&action, conn.id()).await),
            }
            affected += conn.affected_rows();
        }
        let _ = conn.disconnect().await;
        Ok(affected)
    }

    /// Kills connection `id` from a new connection; the error says how that went.
    pub(crate) async fn kill(&self, action: &str, id: u32) -> MysqlError {
        tracing::warn!(connection = %self.name, action, id, "killing a cancelled statement");
        let kill = async {
            let mut conn = mysql_async::Conn::new(self.opts.clone()).await?;
            conn.query_drop(format!("KILL CONNECTION {id}")).await?;
            conn.disconnect().await
        };
        let what = match tokio::time::timeout(KILL_WAIT, kill).await {
            Ok(Ok(())) => "its connection was killed on the server".to_string(),
            // Unknown thread id: the connection had ended already.
            Ok(Err(mysql_async::Error::Server(s))) if s.code == 1094 => {
                "its connection had ended already".to_string()
            }
            Ok(Err(e)) => format!(
                "killing its connection on the server failed ({}); look for it in SHOW PROCESSLIST",
                self.err("kill", e).message
            ),
            Err(_) => format!(
                "killing its connection on the server took more than {}s",
                KILL_WAIT.as_secs()
            ),
        };
        MysqlError {
            kind: self.kind,
            connection: self.name.clone(),
            action: action.to_string(),
            code: None,
            message: format!("cancelled (interrupt); {what} (connection id {id})"),
            retryable: true,
        }
    }

    /// Runs a query and returns the first column of every row as text.
    pub async fn query_column(&self, sql: &str) -> Result<Vec<Option<String>>, MysqlError> {
        let mut conn = mysql_async::Conn::new(self.opts.clone())
            .await
            .map_err(|e| self.err("connect", e))?;
        let rows: Vec<mysql_async::Row> =
            conn.query(sql).await.map_err(|e| self.err("query", e))?;
        let _ = conn.disconnect().await;
        Ok(rows
            .into_iter()
            .map(|r| {
                r.get_opt::<Option<String>, usize>(0)
                    .and_then(|v| v.ok())
                    .flatten()
            })
            .collect())
    }
}

impl From<MysqlError> for crate::task::TaskFailure {
    fn from(e: MysqlError) -> Self {
        crate::task::TaskFailure {
            retryable: e.retryable,
            message: e.to_string(),
        }
    }
}
