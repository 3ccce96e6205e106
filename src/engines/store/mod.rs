//! Object stores: where exports land. One trait, two backends.
//!
//! Every object is written through an [`ObjectWriter`] that makes it visible only on
//! [`ObjectWriter::commit`]: `fs` writes a temp file in the same directory, fsyncs it
//! and renames it (a crash leaves a temp file, never a half file under the real
//! name); `s3` streams a multipart upload in bounded parts and completes it (a crash
//! leaves an incomplete upload, never a half object). Keys are deterministic, so a
//! re-run writes the same key again and replaces what a crashed run may have left.
//!
//! Memory is bounded: `fs` keeps one write buffer per writer; `s3` at most
//! `part_size × parts_in_flight` bytes of parts per store, over all its writers.

pub mod fs;
pub mod s3;

use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;

use crate::plan::schema::ConnectionKind;
use crate::plan::Connection;

/// What a store knows about one committed object.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectMeta {
    /// The key relative to the store root (without the store's prefix).
    pub key: String,
    pub size: u64,
    /// What identifies this very object, so a replaced one is told apart from the one
    /// a writer committed even at the same size: the S3 ETag; on `fs`, the file's
    /// inode and modification time. None when the store did not say.
    #[serde(default)]
    pub version: Option<String>,
}

/// How a whole-object write treats an existing object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Replace whatever is there (deterministic keys: a re-run rewrites the same bytes).
    Overwrite,
    /// Fail with [`StoreError::AlreadyExists`] when the key exists (S3 `If-None-Match: *`,
    /// an exclusive create on `fs`). Atomic against concurrent writers.
    IfAbsent,
}

/// A chunked read of an object.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>> + Send>>;

/// Errors of a store. Messages name the store location and key, never credentials.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("`{key}` is not a valid object key: {reason}")]
    BadKey { key: String, reason: &'static str },
    #[error("{location}: {action} failed: {source}")]
    Io {
        location: String,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{location} does not exist")]
    NotFound { location: String },
    #[error("{location} already exists (written by another run?)")]
    AlreadyExists { location: String },
    #[error("{location}: {action} failed: {message}")]
    Remote {
        location: String,
        action: &'static str,
        message: String,
        retryable: bool,
    },
    #[error("connection `{connection}`: {message}")]
    Config { connection: String, message: String },
}

impl StoreError {
    /// Whether trying again may help (network trouble, throttling, server errors).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Remote { retryable, .. } => *retryable,
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }
}

impl From<StoreError> for crate::task::TaskFailure {
    fn from(e: StoreError) -> Self {
        crate::task::TaskFailure {
            retryable: e.is_retryable(),
            message: e.to_string(),
        }
    }
}

/// Where an S3 store puts an object, for a server that writes it itself
/// (ClickHouse `INSERT INTO FUNCTION s3`). Holds credentials: never log it.
#[derive(Clone)]
pub struct ServerSideTarget {
    /// Full object URL (`http://endpoint/bucket/prefix/key`).
    pub url: String,
    /// Static keys when the connection has them; None lets the server use its own.
    pub access_key_id: Option<crate::plan::Secret>,
    pub secret_access_key: Option<crate::plan::Secret>,
}

impl fmt::Debug for ServerSideTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerSideTarget")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Writes one object; nothing is visible under the key before `commit`.
#[async_trait::async_trait]
pub trait ObjectWriter: Send {
    /// Appends bytes. May wait for earlier parts to upload (back-pressure).
    async fn write(&mut self, data: Bytes) -> Result<(), StoreError>;
    /// Makes the object visible under its key, atomically.
    async fn commit(self: Box<Self>) -> Result<ObjectMeta, StoreError>;
    /// Discards everything written; the key is left as it was.
    async fn abort(self: Box<Self>);
}

/// A place objects are written to and read back from.
#[async_trait::async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// Where this store is, for messages (`fs:/data/exports`, `s3://bucket/prefix`).
    fn describe(&self) -> String;
    /// Where one key is, for messages, reports and manifests.
    fn location(&self, key: &str) -> String;
    /// Starts writing `key`.
    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StoreError>;
    /// Writes a small object in one go (manifests, markers).
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta, StoreError>;
    /// Reads a small object whole; None when absent.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError>;
    /// Streams an object (verification read-back).
    async fn open(&self, key: &str) -> Result<ByteStream, StoreError>;
    /// Size of an object; None when absent.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError>;
    /// Objects whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;
    /// Removes an object; absent is fine.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// How a database server could write `key` itself; None when it cannot (fs).
    fn server_side_target(&self, _key: &str) -> Option<ServerSideTarget> {
        None
    }
}

/// Checks a key: relative, `/`-separated, no empty, `.` or `..` segments, no NUL or
/// backslash. Keys come from plan templates; this keeps `fs` inside its root.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let bad = |reason| {
        Err(StoreError::BadKey {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("it is empty");
    }
    if key.starts_with('/') {
        return bad("it starts with `/`; keys are relative to the store");
    }
    if key.contains('\0') || key.contains('\\') {
        return bad("it contains a NUL or a backslash");
    }
    for segment in key.split('/') {
        match segment {
            "" => return bad("it has an empty path segment (`//` or a trailing `/`)"),
            "." | ".." => return bad("it has a `.` or `..` segment"),
            _ => {}
        }
    }
    Ok(())
}

/// Opens the store a connection describes. Relative `fs` paths are relative to
/// `base_dir` (the plan's directory).
pub async fn open(conn: &Connection, base_dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
    let config_err = |message: String| StoreError::Config {
        connection: conn.name.clone(),
        message,
    };
    let resolve = |v: &Option<crate::plan::Interpolated>, what: &str| {
        crate::plan::interpolate::resolve_key(v, what).map_err(config_err)
    };
    match conn.kind {
        ConnectionKind::Fs => {
            let path = resolve(&conn.path, "path")?
                .ok_or_else(|| config_err("an fs connection needs `path`".into()))?;
            let root = base_dir.join(path.expose());
            Ok(Arc::new(fs::FsStore::new(root)))
        }
        ConnectionKind::S3 => {
            let bucket = resolve(&conn.bucket, "bucket")?
                .ok_or_else(|| config_err("an s3 connection needs `bucket`".into()))?;
            let config = s3::S3Config {
                connection: conn.name.clone(),
                endpoint: resolve(&conn.endpoint, "endpoint")?.map(|s| s.into_inner()),
                region: resolve(&conn.region, "region")?.map(|s| s.into_inner()),
                bucket: bucket.into_inner(),
                prefix: resolve(&conn.prefix, "prefix")?
                    .map(|s| s.into_inner())
                    .unwrap_or_default(),
                path_style: conn.path_style,
                access_key_id: resolve(&conn.access_key_id, "access_key_id")?,
                secret_access_key: resolve(&conn.secret_access_key, "secret_access_key")?,
                // Checked at validate (numbers within S3's limits).
                part_size: conn
                    .settings
                    .get("part_size")
                    .and_then(|v| s3::setting_number(v))
                    .unwrap_or(s3::DEFAULT_PART_SIZE),
                parts_in_flight: conn
                    .settings
                    .get("parts_in_flight")
                    .and_then(|v| s3::setting_number(v))
                    .unwrap_or(s3::DEFAULT_PARTS_IN_FLIGHT),
            };
            Ok(Arc::new(s3::S3Store::connect(config).await?))
        }
        other => Err(config_err(format!(
            "a `{}` connection is not an object store (use kind = \"fs\" or \"s3\")",
            other.as_str()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_inside_the_store() {
        assert!(check_key("trips/201506/part-000.csv").is_ok());
        for bad in ["", "/abs", "a//b", "a/../b", "./a", "a/", "a\\b"] {
            assert!(check_key(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
