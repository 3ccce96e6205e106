//! `fs`: a local directory as an object store (the embedded default).
//!
//! A write goes to a hidden temp file next to its final name (same directory, so the
//! rename is atomic on one file system), is fsynced, then renamed over the key and the
//! directory is fsynced: after a crash the key holds either the old object or the
//! complete new one. Temp files of a killed run are named `.<name>.flow-tmp-<pid>-…`, are
//! ignored by `list`, and are removed by the next writer of the same key. Writes are coalesced into 1 MiB buffers and overlap with
//! receiving (one buffer in flight).

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;

use super::{check_key, ByteStream, ObjectMeta, ObjectWriter, PutMode, Store, StoreError};

/// Bytes buffered before a write reaches the file.
const WRITE_BUFFER: usize = 1 << 20;
/// Chunk size of reads.
const READ_CHUNK: usize = 1 << 20;
const TMP_MARKER: &str = ".flow-tmp-";

/// A directory; keys are relative paths below it.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FsStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn io(&self, key: &str, action: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
        let location = self.location(key);
        move |source| StoreError::Io {
            location,
            action,
            source,
        }
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let unique = format!(
        ".{name}{TMP_MARKER}{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    );
    path.with_file_name(unique)
}

/// Removes the temp files a killed writer of `path` left behind (`.<name>.flow-tmp-<pid>-…`
/// whose process is gone), so a re-run leaves only committed objects. Temp files of a
/// live writer (another process writing the same key) are left alone.
fn remove_dead_writers_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let stem = format!(".{}{TMP_MARKER}", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file
            .strip_prefix(&stem)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = pid == std::process::id() as i32
            || nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if !alive {
            tracing::debug!(file = %entry.path().display(), "removing a killed writer's temp file");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    // Directories can be fsynced on Unix; elsewhere the rename is the best we get.
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

type WriteJob = tokio::task::JoinHandle<(std::fs::File, std::io::Result<()>)>;

/// Writes through a blocking file in a worker thread: small network chunks are
/// coalesced into 1 MiB buffers, and one buffer is written while the next fills, so
/// receiving and writing overlap and memory stays at two buffers.
struct FsWriter {
    key: String,
    location: String,
    final_path: PathBuf,
    temp_path: PathBuf,
    /// The file, when no write is in flight.
    file: Option<std::fs::File>,
    in_flight: Option<WriteJob>,
    buffer: bytes::BytesMut,
    size: u64,
    /// Keep the temp file name for Drop cleanup until commit or abort.
    armed: bool,
}

impl FsWriter {
    fn io_error(&self, action: &'static str, source: std::io::Error) -> StoreError {
        StoreError::Io {
            location: self.location.clone(),
            action,
            source,
        }
    }

    /// Waits for the write in flight; the file is back in `self.file` afterwards.
    async fn settle(&mut self) -> Result<(), StoreError> {
        if let Some(job) = self.in_flight.take() {
            let (file, result) = job.await.expect("write task does not panic");
            self.file = Some(file);
            result.map_err(|e| self.io_error("write", e))?;
        }
        Ok(())
    }

    /// Starts writing the current buffer in the background.
    async fn flush_buffer(&mut self) -> Result<(), StoreError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(
            &mut self.buffer,
            bytes::BytesMut::with_capacity(WRITE_BUFFER),
        )
        .freeze();
        self.write_in_background(data).await
    }

    /// Writes `data` in the background once the previous write is done.
    async fn write_in_background(&mut self, data: Bytes) -> Result<(), StoreError> {
        self.settle().await?;
        let mut file = self
            .file
            .take()
            .expect("file is present when nothing is in flight");
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let result = file.write_all(&data);
            (file, result)
        }));
        Ok(())
    }
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.temp_path);
        }
    }
}

#[async_trait::async_trait]
impl ObjectWriter for FsWriter {
    async fn write(&mut self, data: Bytes) -> Result<(), StoreError> {
        self.size += data.len() as u64;
        if self.buffer.is_empty() && data.len() >= WRITE_BUFFER / 2 {
            // Big enough on its own (decompressed blocks are ~1 MiB): no copy.
            return self.write_in_background(data).await;
        }
        self.buffer.extend_from_slice(&data);
        if self.buffer.len() >= WRITE_BUFFER {
            self.flush_buffer().await?;
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<ObjectMeta, StoreError> {
        self.flush_buffer().await?;
        self.settle().await?;
        let file = self.file.take().expect("file is present after settle");
        let temp = self.temp_path.clone();
        let dest = self.final_path.clone();
        let location = self.location.clone();
        let version = tokio::task::spawn_blocking(move || -> Result<String, StoreError> {
            let io = |action| {
                let location = location.clone();
                move |source| StoreError::Io {
                    location,
                    action,
                    source,
                }
            };
            file.sync_all().map_err(io("fsync"))?;
            drop(file);
            std::fs::rename(&temp, &dest).map_err(io("rename into place"))?;
            if let Some(dir) = dest.parent() {
                sync_dir(dir).map_err(io("fsync directory"))?;
            }
            let meta = std::fs::metadata(&dest).map_err(io("stat"))?;
            Ok(version_of(&meta))
        })
        .await
        .expect("commit task does not panic")?;
        self.armed = false;
        Ok(ObjectMeta {
            key: self.key.clone(),
            size: self.size,
            version: Some(version),
        })
    }

    async fn abort(mut self: Box<Self>) {
        let _ = self.settle().await;
        self.file.take();
        let _ = tokio::fs::remove_file(&self.temp_path).await;
        self.armed = false;
    }
}

#[async_trait::async_trait]
impl Store for FsStore {
    fn describe(&self) -> String {
        format!("fs:{}", self.root.display())
    }

    fn location(&self, key: &str) -> String {
        self.root.join(key).display().to_string()
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StoreError> {
        let final_path = self.path(key)?;
        let dir = final_path
            .parent()
            .expect("a joined key has a parent")
            .to_path_buf();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(self.io(key, "create directory"))?;
        remove_dead_writers_temps(&final_path);
        let temp_path = temp_path(&final_path);
        let file = std::fs::File::create(&temp_path).map_err(self.io(key, "create temp file"))?;
        Ok(Box::new(FsWriter {
            key: key.to_string(),
            location: self.location(key),
            final_path,
            temp_path,
            file: Some(file),
            in_flight: None,
            buffer: bytes::BytesMut::with_capacity(WRITE_BUFFER),
            size: 0,
            armed: true,
        }))
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta, StoreError> {
        let path = self.path(key)?;
        match mode {
            PutMode::Overwrite => {
                let mut writer = self.create(key).await?;
                writer.write(data).await?;
                writer.commit().await
            }
            PutMode::IfAbsent => {
                // Write a temp file, then hard-link it to the key: link fails if the key
                // exists, so exactly one of several racing writers wins, and the key
                // never shows a partial file.
                let dir = path
                    .parent()
                    .expect("a joined key has a parent")
                    .to_path_buf();
                tokio::fs::create_dir_all(&dir)
                    .await
                    .map_err(self.io(key, "create directory"))?;
                let temp = temp_path(&path);
                let location = self.location(key);
                let size = data.len() as u64;
                let result = tokio::task::spawn_blocking(move || {
                    let write = || -> std::io::Result<()> {
                        let mut file = std::fs::File::create(&temp)?;
                        file.write_all(&data)?;
                        file.sync_all()?;
                        Ok(())
                    };
                    let result = write().and_then(|_| std::fs::hard_link(&temp, &path));
                    let _ = std::fs::remove_file(&temp);
                    if result.is_ok() {
                        let _ = sync_dir(&dir);
                    }
                    result
                })
                .await
                .expect("put task does not panic");
                match result {
                    Ok(()) => Ok(ObjectMeta {
                        key: key.to_string(),
                        size,
                        version: None,
                    }),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Err(StoreError::AlreadyExists { location })
                    }
                    Err(source) => Err(StoreError::Io {
                        location,
                        action: "write",
                        source,
                    }),
                }
            }
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let path = self.path(key)?;
        match tokio::fs::read(&path).await {
            Ok(data) => Ok(Some(Bytes::from(data))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(key, "read")(e)),
        }
    }

    async fn open(&self, key: &str) -> Result<ByteStream, StoreError> {
        let path = self.path(key)?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound {
                    location: self.location(key),
                })
            }
            Err(e) => return Err(self.io(key, "open")(e)),
        };
        let location = self.location(key);
        let stream = tokio_util::io::ReaderStream::with_capacity(file, READ_CHUNK).map(move |r| {
            r.map_err(|source| StoreError::Io {
                location: location.clone(),
                action: "read",
                source,
            })
        });
        Ok(Box::pin(stream))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: m.len(),
                version: Some(version_of(&m)),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(key, "stat")(e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        let location = self.describe();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut stack = vec![root.clone()];
            while let Some(dir) = stack.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(source) => {
                        return Err(StoreError::Io {
                            location: location.clone(),
                            action: "list",
                            source,
                        })
                    }
                };
                for entry in entries.flatten() {
                    let path = entry.path();
                    let Ok(file_type) = entry.file_type() else {
                        continue;
                    };
                    if file_type.is_dir() {
                        stack.push(path);
                        continue;
                    }
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.contains(TMP_MARKER) {
                        continue;
                    }
                    let key = path
                        .strip_prefix(&root)
                        .expect("walked paths are below the root")
                        .to_string_lossy()
                        .replace('\\', "/");
                    if key.starts_with(&prefix) {
                        let meta = entry.metadata().ok();
                        out.push(ObjectMeta {
                            key,
                            size: meta.as_ref().map_or(0, |m| m.len()),
                            version: meta.as_ref().map(version_of),
                        });
                    }
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
        .expect("list task does not panic")
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(key, "delete")(e)),
        }
    }
}

/// A file's identity for [`ObjectMeta::version`]: inode and modification time, which a
/// rename of another file into its place changes.
fn version_of(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!("{:x}-{}.{:09}", meta.ino(), meta.mtime(), meta.mtime_nsec())
}
