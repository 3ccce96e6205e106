//! `s3`: an S3 bucket (AWS or any S3-compatible store) as an object store.
//!
//! Region, endpoint and credentials are resolved by [`crate::engines::aws`], like every
//! AWS client of flow. With an `endpoint`, path-style addressing is the default (what
//! S3-compatible stores expect).
//!
//! Writes stream: bytes collect into a part buffer; a full part is uploaded while the
//! next one fills. Every part buffer — filling or uploading — holds one of the store's
//! `parts_in_flight` permits, shared by all its writers, so the store holds at most
//! `part_size × parts_in_flight` bytes of parts however many streams write at once and
//! whatever the objects' sizes (a writer waits for a permit when all are taken; an
//! upload always ends and gives its permit back, so every writer gets one). A buffer is
//! allocated at its part's size and handed to the upload whole, never shared with the
//! next part's bytes. An object smaller than one part is a single PutObject. Nothing is visible before
//! CompleteMultipartUpload; an aborted or crashed writer leaves no object (a crash
//! leaves an incomplete upload that a bucket lifecycle rule should expire). Part sizes
//! grow after every 2500 parts so objects far beyond 80 GB stay under the 10 000-part
//! limit.

use std::fmt;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::{
    check_key, ByteStream, ObjectMeta, ObjectWriter, PutMode, ServerSideTarget, Store, StoreError,
};
use crate::plan::Secret;

/// First part size (S3's minimum is 5 MiB).
pub const DEFAULT_PART_SIZE: usize = 8 << 20;
/// Part buffers (filling or uploading) of one store at once, over all its writers.
pub const DEFAULT_PARTS_IN_FLIGHT: usize = 4;
/// S3's smallest part (all but the last).
pub const MIN_PART_SIZE: usize = 5 << 20;
/// S3's largest part.
pub const MAX_PART_SIZE: usize = 5 << 30;
/// Most part buffers a store may be given.
pub const MAX_PARTS_IN_FLIGHT: usize = 256;

/// The number in a connection setting (`"8388608"`, `"8_388_608"`).
pub fn setting_number(text: &str) -> Option<usize> {
    text.replace('_', "").parse().ok()
}

/// Resolved settings of an s3 connection.
#[derive(Clone)]
pub struct S3Config {
    pub connection: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub bucket: String,
    /// Prepended to every key (`exports/` or empty).
    pub prefix: String,
    pub path_style: Option<bool>,
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    pub part_size: usize,
    pub parts_in_flight: usize,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("connection", &self.connection)
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A bucket (and key prefix) behind the S3 API.
#[derive(Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    config: S3Config,
    region: String,
    /// One permit per part buffer, shared by every writer of the store.
    parts: Arc<Semaphore>,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl S3Store {
    /// Builds the client; no request is made.
    pub async fn connect(config: S3Config) -> Result<Self, StoreError> {
        let shared = crate::engines::aws::sdk_config(crate::engines::aws::AwsSettings {
            endpoint: config.endpoint.as_deref(),
            region: config.region.as_deref(),
            access_key_id: config.access_key_id.as_ref(),
            secret_access_key: config.secret_access_key.as_ref(),
        })
        .await
        .map_err(|message| StoreError::Config {
            connection: config.connection.clone(),
            message,
        })?;
        let region = shared
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| crate::engines::aws::FALLBACK_REGION.into());
        let path_style = config.path_style.unwrap_or(config.endpoint.is_some());
        let s3_config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(path_style)
            .build();
        let mut config = config;
        config.part_size = config.part_size.clamp(MIN_PART_SIZE, MAX_PART_SIZE);
        config.parts_in_flight = config.parts_in_flight.clamp(1, MAX_PARTS_IN_FLIGHT);
        Ok(S3Store {
            client: aws_sdk_s3::Client::from_conf(s3_config),
            parts: Arc::new(Semaphore::new(config.parts_in_flight)),
            config,
            region,
        })
    }

    /// Part buffers of this store's writers now (filling or uploading); never more
    /// than `parts_in_flight`.
    pub fn part_buffers_in_use(&self) -> usize {
        self.config.parts_in_flight - self.parts.available_permits()
    }

    /// The underlying client (tests list buckets with it).
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.config.bucket
    }

    fn full_key(&self, key: &str) -> Result<String, StoreError> {
        check_key(key)?;
        Ok(join_prefix(&self.config.prefix, key))
    }

    /// The body of `key`, None when there is no such object.
    async fn body(&self, key: &str) -> Result<Option<SdkByteStream>, StoreError> {
        let full_key = self.full_key(key)?;
        let result = self
            .client
            .get_object()
            .bucket(&self.config.bucket)
            .key(&full_key)
            .send()
            .await;
        match result {
            Ok(output) => Ok(Some(output.body)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.remote_error(key, "get", e)),
        }
    }

    fn remote_error<E>(&self, key: &str, action: &'static str, err: SdkError<E>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        remote_error(self.location(key), action, err)
    }
}

fn join_prefix(prefix: &str, key: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}/{key}")
    }
}

/// Maps an SDK error: keeps the service's code and message, decides retryability.
fn remote_error<E>(location: String, action: &'static str, err: SdkError<E>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = match &err {
        SdkError::ServiceError(e) => e.err().code().map(str::to_string),
        _ => None,
    };
    if status == Some(412) || code.as_deref() == Some("PreconditionFailed") {
        return StoreError::AlreadyExists { location };
    }
    let described = crate::engines::aws::AwsError::of(err);
    StoreError::Remote {
        location,
        action,
        message: described.text,
        retryable: described.retryable,
    }
}

/// Percent-encodes a key for a URL, keeping `/` and unreserved characters.
fn url_encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[async_trait::async_trait]
impl Store for S3Store {
    fn describe(&self) -> String {
        let prefix = self.config.prefix.trim_matches('/');
        if prefix.is_empty() {
            format!("s3://{}", self.config.bucket)
        } else {
            format!("s3://{}/{prefix}", self.config.bucket)
        }
    }

    fn location(&self, key: &str) -> String {
        format!(
            "s3://{}/{}",
            self.config.bucket,
            join_prefix(&self.config.prefix, key)
        )
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StoreError> {
        let full_key = self.full_key(key)?;
        Ok(Box::new(S3Writer {
            store: self.clone(),
            key: key.to_string(),
            full_key,
            buffer: Vec::new(),
            permit: None,
            upload_id: None,
            parts: Vec::new(),
            in_flight: JoinSet::new(),
            next_part: 1,
            size: 0,
            finished: false,
        }))
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta, StoreError> {
        let full_key = self.full_key(key)?;
        let size = data.len() as u64;
        let mut request = self
            .client
            .put_object()
            .bucket(&self.config.bucket)
            .key(&full_key)
            .body(SdkByteStream::from(data));
        if mode == PutMode::IfAbsent {
            request = request.if_none_match("*");
        }
        let output = request
            .send()
            .await
            .map_err(|e| self.remote_error(key, "put", e))?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size,
            version: output.e_tag().map(str::to_string),
        })
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let Some(body) = self.body(key).await? else {
            return Ok(None);
        };
        let data = body
            .collect()
            .await
            .map_err(|e| read_error(self.location(key), e))?;
        Ok(Some(data.into_bytes()))
    }

    async fn open(&self, key: &str) -> Result<ByteStream, StoreError> {
        let body = self.body(key).await?.ok_or_else(|| StoreError::NotFound {
            location: self.location(key),
        })?;
        let location = self.location(key);
        let stream = futures::stream::unfold((body, location), |(mut body, location)| async move {
            match body.next().await {
                Some(Ok(bytes)) => Some((Ok(bytes), (body, location))),
                Some(Err(e)) => Some((Err(read_error(location.clone(), e)), (body, location))),
                None => None,
            }
        });
        Ok(Box::pin(stream))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let full_key = self.full_key(key)?;
        let result = self
            .client
            .head_object()
            .bucket(&self.config.bucket)
            .key(&full_key)
            .send()
            .await;
        match result {
            Ok(output) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: output.content_length().unwrap_or(0).max(0) as u64,
                version: output.e_tag().map(str::to_string),
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.remote_error(key, "head", e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let full_prefix = join_prefix(&self.config.prefix, prefix);
        let strip = {
            let p = self.config.prefix.trim_matches('/');
            if p.is_empty() {
                0
            } else {
                p.len() + 1
            }
        };
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.config.bucket)
            .prefix(full_prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.remote_error(prefix, "list", e))?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    out.push(ObjectMeta {
                        key: key.get(strip..).unwrap_or(key).to_string(),
                        size: object.size().unwrap_or(0).max(0) as u64,
                        version: object.e_tag().map(str::to_string),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let full_key = self.full_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.config.bucket)
            .key(&full_key)
            .send()
            .await
            .map_err(|e| self.remote_error(key, "delete", e))?;
        Ok(())
    }

    fn server_side_target(&self, key: &str) -> Option<ServerSideTarget> {
        let full_key = self.full_key(key).ok()?;
        // ClickHouse expands globs and `{…}` in s3() URLs; such keys stay client-side.
        if full_key.contains(['*', '?', '{', '}']) {
            return None;
        }
        let path_style = self
            .config
            .path_style
            .unwrap_or(self.config.endpoint.is_some());
        let url = match &self.config.endpoint {
            Some(endpoint) => {
                let endpoint = endpoint.trim_end_matches('/');
                if path_style {
                    format!(
                        "{endpoint}/{}/{}",
                        self.config.bucket,
                        url_encode_key(&full_key)
                    )
                } else {
                    let (scheme, host) = endpoint.split_once("://")?;
                    format!(
                        "{scheme}://{}.{host}/{}",
                        self.config.bucket,
                        url_encode_key(&full_key)
                    )
                }
            }
            None => format!(
                "https://{}.s3.{}.amazonaws.com/{}",
                self.config.bucket,
                self.region,
                url_encode_key(&full_key)
            ),
        };
        Some(ServerSideTarget {
            url,
            access_key_id: self.config.access_key_id.clone(),
            secret_access_key: self.config.secret_access_key.clone(),
        })
    }
}

/// A failure while reading an object's body (the connection broke): retryable.
fn read_error(location: String, err: impl fmt::Display) -> StoreError {
    StoreError::Remote {
        location,
        action: "read",
        message: err.to_string(),
        retryable: true,
    }
}

fn is_not_found<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    let status = err.raw_response().map(|r| r.status().as_u16());
    status == Some(404)
        || matches!(err, SdkError::ServiceError(e) if matches!(e.err().code(), Some("NoSuchKey" | "NotFound")))
}

/// A streaming multipart upload.
struct S3Writer {
    store: S3Store,
    key: String,
    full_key: String,
    /// The part being filled, allocated at its part's size.
    buffer: Vec<u8>,
    /// The store's permit for `buffer`; it goes with the part to its upload.
    permit: Option<OwnedSemaphorePermit>,
    upload_id: Option<String>,
    parts: Vec<CompletedPart>,
    in_flight: JoinSet<Result<CompletedPart, StoreError>>,
    next_part: i32,
    size: u64,
    finished: bool,
}

impl S3Writer {
    fn part_size(&self) -> usize {
        let growth = ((self.next_part - 1) / 2500).min(3) as u32;
        self.store.config.part_size << growth
    }

    async fn start_upload(&mut self) -> Result<String, StoreError> {
        if let Some(id) = &self.upload_id {
            return Ok(id.clone());
        }
        self.abort_earlier_uploads().await;
        let output = self
            .store
            .client
            .create_multipart_upload()
            .bucket(&self.store.config.bucket)
            .key(&self.full_key)
            .send()
            .await
            .map_err(|e| {
                self.store
                    .remote_error(&self.key, "start multipart upload", e)
            })?;
        let id = output
            .upload_id()
            .ok_or_else(|| StoreError::Remote {
                location: self.store.location(&self.key),
                action: "start multipart upload",
                message: "the response has no upload id".into(),
                retryable: true,
            })?
            .to_string();
        self.upload_id = Some(id.clone());
        Ok(id)
    }

    /// Aborts incomplete multipart uploads of this very key that an earlier, killed
    /// writer left (they cost storage and are invisible to listings). Keys are one
    /// writer's each (the plan checker refuses two units on one key), so an upload of
    /// this key that is still open is a dead attempt's. A store that does not allow
    /// listing uploads keeps them: that is logged, not fatal.
    async fn abort_earlier_uploads(&self) {
        let client = &self.store.client;
        let bucket = &self.store.config.bucket;
        let listed = client
            .list_multipart_uploads()
            .bucket(bucket)
            .prefix(&self.full_key)
            .send()
            .await;
        let uploads = match listed {
            Ok(out) => out.uploads().to_vec(),
            Err(e) => {
                tracing::debug!(key = %self.key, error = %e, "cannot list earlier multipart uploads");
                return;
            }
        };
        for upload in uploads {
            let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else {
                continue;
            };
            if key != self.full_key {
                continue;
            }
            tracing::debug!(key = %self.key, upload = id, "aborting an earlier incomplete upload");
            let _ = client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(id)
                .send()
                .await;
        }
    }

    async fn wait_one(&mut self) -> Result<(), StoreError> {
        if let Some(result) = self.in_flight.join_next().await {
            let part = result.expect("part upload task does not panic")?;
            self.parts.push(part);
        }
        Ok(())
    }

    /// Collects the uploads that have ended, failing on the first failed one.
    fn reap(&mut self) -> Result<(), StoreError> {
        while let Some(result) = self.in_flight.try_join_next() {
            let part = result.expect("part upload task does not panic")?;
            self.parts.push(part);
        }
        Ok(())
    }

    /// A part buffer and its permit, waiting for the permit when the store's are all
    /// taken.
    async fn fresh_buffer(&mut self) -> Result<(), StoreError> {
        self.reap()?;
        let permit = self
            .store
            .parts
            .clone()
            .acquire_owned()
            .await
            .expect("the part budget is never closed");
        self.buffer = Vec::with_capacity(self.part_size());
        self.permit = Some(permit);
        Ok(())
    }

    async fn upload(
        &mut self,
        data: Bytes,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<(), StoreError> {
        let upload_id = self.start_upload().await?;
        self.reap()?;
        let number = self.next_part;
        self.next_part += 1;
        let client = self.store.client.clone();
        let bucket = self.store.config.bucket.clone();
        let full_key = self.full_key.clone();
        let location = self.store.location(&self.key);
        self.in_flight.spawn(async move {
            // Released when the part is uploaded (or the upload fails).
            let _permit = permit;
            let output = client
                .upload_part()
                .bucket(bucket)
                .key(full_key)
                .upload_id(upload_id)
                .part_number(number)
                .body(SdkByteStream::from(data))
                .send()
                .await
                .map_err(|e| remote_error(location, "upload part", e))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(output.e_tag().map(str::to_string))
                .build())
        });
        Ok(())
    }

    async fn abort_upload(&mut self) {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        if let Some(id) = self.upload_id.take() {
            let _ = self
                .store
                .client
                .abort_multipart_upload()
                .bucket(&self.store.config.bucket)
                .key(&self.full_key)
                .upload_id(id)
                .send()
                .await;
        }
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.in_flight.abort_all();
        if let (Some(id), Ok(handle)) =
            (self.upload_id.take(), tokio::runtime::Handle::try_current())
        {
            let client = self.store.client.clone();
            let bucket = self.store.config.bucket.clone();
            let key = self.full_key.clone();
            handle.spawn(async move {
                let _ = client
                    .abort_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await;
            });
        }
    }
}

#[async_trait::async_trait]
impl ObjectWriter for S3Writer {
    async fn write(&mut self, data: Bytes) -> Result<(), StoreError> {
        self.size += data.len() as u64;
        let mut rest = &data[..];
        while !rest.is_empty() {
            if self.permit.is_none() {
                if let Err(e) = self.fresh_buffer().await {
                    self.abort_upload().await;
                    self.finished = true;
                    return Err(e);
                }
            }
            let room = self.part_size() - self.buffer.len();
            let take = room.min(rest.len());
            self.buffer.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buffer.len() >= self.part_size() {
                let part = Bytes::from(std::mem::take(&mut self.buffer));
                let permit = self.permit.take();
                if let Err(e) = self.upload(part, permit).await {
                    self.abort_upload().await;
                    self.finished = true;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<ObjectMeta, StoreError> {
        let result = async {
            if self.upload_id.is_none() {
                // Small object: one PutObject.
                self.abort_earlier_uploads().await;
                let data = Bytes::from(std::mem::take(&mut self.buffer));
                // Held until the object is written: its bytes are the part's.
                let _permit = self.permit.take();
                let output = self
                    .store
                    .client
                    .put_object()
                    .bucket(&self.store.config.bucket)
                    .key(&self.full_key)
                    .body(SdkByteStream::from(data))
                    .send()
                    .await
                    .map_err(|e| self.store.remote_error(&self.key, "put", e))?;
                return Ok(output.e_tag().map(str::to_string));
            }
            if !self.buffer.is_empty() {
                let last = Bytes::from(std::mem::take(&mut self.buffer));
                let permit = self.permit.take();
                self.upload(last, permit).await?;
            }
            self.permit = None;
            while !self.in_flight.is_empty() {
                self.wait_one().await?;
            }
            let mut parts = std::mem::take(&mut self.parts);
            parts.sort_by_key(|p| p.part_number());
            let upload_id = self.upload_id.clone().expect("upload was started");
            let output = self
                .store
                .client
                .complete_multipart_upload()
                .bucket(&self.store.config.bucket)
                .key(&self.full_key)
                .upload_id(upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| {
                    self.store
                        .remote_error(&self.key, "complete multipart upload", e)
                })?;
            self.upload_id = None;
            Ok(output.e_tag().map(str::to_string))
        }
        .await;
        match result {
            Ok(version) => {
                self.finished = true;
                Ok(ObjectMeta {
                    key: self.key.clone(),
                    size: self.size,
                    version,
                })
            }
            Err(e) => {
                self.abort_upload().await;
                self.finished = true;
                Err(e)
            }
        }
    }

    async fn abort(mut self: Box<Self>) {
        self.abort_upload().await;
        self.finished = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_url_encoded_for_servers() {
        assert_eq!(url_encode_key("a b/ü.csv"), "a%20b/%C3%BC.csv");
        assert_eq!(join_prefix("/exp/", "k"), "exp/k");
        assert_eq!(join_prefix("", "k"), "k");
    }
}
