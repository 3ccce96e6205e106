//! EBS through the EC2 API: the [`BlockStore`] of `[[volumes]]` entries.
//!
//! Only `CreateVolume` has an idempotency token in the EC2 API; snapshots are found
//! again by tag. So every snapshot and volume flow makes is tagged at creation
//! (`flow/key`, `flow/plan`, `flow/task`), and looked up by that tag before anything is
//! created; a new volume also carries a `ClientToken` derived from the key and its
//! snapshot, so two attempts racing (or one retried by the SDK) make one volume. Waits
//! are not here: the caller polls `snapshot` / `volume`, so a killed run resumes its
//! wait from the ids it finds again.

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification, VolumeType};

use crate::engines::aws::{sdk_config, AwsError, AwsSettings};
use crate::engines::volume::{
    BlockStore, BlockVolume, EffectKey, NewVolume, Snapshot, SnapshotState, KEY_TAG, PLAN_TAG,
    TASK_TAG,
};
use crate::plan::Connection;
use crate::task::TaskFailure;

/// One EC2 connection of a plan.
#[derive(Clone, Debug)]
pub struct Ebs {
    client: aws_sdk_ec2::Client,
    connection: String,
}

impl Ebs {
    /// Builds the client; no request is made.
    pub async fn connect(connection: &Connection) -> Result<Self, TaskFailure> {
        let resolve = |v: &Option<crate::plan::Interpolated>, what: &str| {
            v.as_ref().map(|v| v.resolve()).transpose().map_err(|e| {
                TaskFailure::permanent(format!(
                    "connection `{}`: {what}: {e}; set it before running flow",
                    connection.name
                ))
            })
        };
        let endpoint = resolve(&connection.endpoint, "endpoint")?;
        let region = resolve(&connection.region, "region")?;
        let id = resolve(&connection.access_key_id, "access_key_id")?;
        let secret = resolve(&connection.secret_access_key, "secret_access_key")?;
        let shared = sdk_config(AwsSettings {
            endpoint: endpoint.as_ref().map(|e| e.expose()),
            region: region.as_ref().map(|r| r.expose()),
            access_key_id: id.as_ref(),
            secret_access_key: secret.as_ref(),
        })
        .await
        .map_err(|e| TaskFailure::permanent(format!("connection `{}`: {e}", connection.name)))?;
        Ok(Ebs {
            client: aws_sdk_ec2::Client::new(&shared),
            connection: connection.name.clone(),
        })
    }

    fn failure<E>(&self, action: &str, err: aws_sdk_ec2::error::SdkError<E>) -> TaskFailure
    where
        E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        self.failure_of(action, AwsError::of(err))
    }

    /// Nothing when EC2 answered `not_found` (the id names nothing), else the failure.
    fn missing_or<E>(
        &self,
        action: &str,
        not_found: &str,
        err: aws_sdk_ec2::error::SdkError<E>,
    ) -> Result<(), TaskFailure>
    where
        E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        let e = AwsError::of(err);
        if e.code.as_deref() == Some(not_found) {
            Ok(())
        } else {
            Err(self.failure_of(action, e))
        }
    }

    fn failure_of(&self, action: &str, e: AwsError) -> TaskFailure {
        let mut message = format!("connection `{}`: {action}: {}", self.connection, e.text);
        if e.code.as_deref() == Some("IdempotentParameterMismatch") {
            message.push_str(
                "; a volume was made under this task's token with other parameters: \
                 delete the volume tagged with this task's flow/key, then resume",
            );
        }
        TaskFailure {
            message,
            retryable: e.retryable,
        }
    }
}

fn tags(resource: ResourceType, key: &EffectKey) -> TagSpecification {
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
    TagSpecification::builder()
        .resource_type(resource)
        .tags(tag(KEY_TAG, &key.key))
        .tags(tag(PLAN_TAG, &key.plan))
        .tags(tag(TASK_TAG, &key.task))
        .build()
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn snapshot_of(s: &aws_sdk_ec2::types::Snapshot) -> Snapshot {
    use aws_sdk_ec2::types::SnapshotState as S;
    let state = match s.state() {
        Some(S::Completed) => SnapshotState::Completed,
        Some(S::Error) => SnapshotState::Error {
            message: s
                .state_message()
                .unwrap_or("the snapshot failed")
                .to_string(),
        },
        _ => SnapshotState::Pending {
            progress: s.progress().map(str::to_string),
        },
    };
    Snapshot {
        id: s.snapshot_id().unwrap_or_default().to_string(),
        volume_id: s.volume_id().unwrap_or_default().to_string(),
        size_gib: s.volume_size().unwrap_or_default(),
        state,
    }
}

fn volume_of(v: &aws_sdk_ec2::types::Volume) -> BlockVolume {
    BlockVolume {
        id: v.volume_id().unwrap_or_default().to_string(),
        zone: v.availability_zone().unwrap_or_default().to_string(),
        size_gib: v.size().unwrap_or_default(),
        state: v
            .state()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        snapshot_id: v
            .snapshot_id()
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        volume_type: v.volume_type().map(|t| t.as_str().to_string()),
    }
}

/// The token of one volume request: the task's key and the snapshot it is made of (a
/// request for another snapshot is another volume, not a parameter mismatch).
fn client_token(request: &NewVolume, key: &EffectKey) -> String {
    let h = blake3::hash(format!("{}\0{}", key.key, request.snapshot_id).as_bytes());
    format!("flow-{}", &h.to_hex()[..48])
}

#[async_trait::async_trait]
impl BlockStore for Ebs {
    async fn volume(&self, id: &str) -> Result<Option<BlockVolume>, TaskFailure> {
        match self.client.describe_volumes().volume_ids(id).send().await {
            Ok(out) => Ok(out.volumes().first().map(volume_of)),
            Err(e) => self
                .missing_or(
                    &format!("DescribeVolumes {id}"),
                    "InvalidVolume.NotFound",
                    e,
                )
                .map(|()| None),
        }
    }

    async fn snapshot(&self, id: &str) -> Result<Option<Snapshot>, TaskFailure> {
        match self
            .client
            .describe_snapshots()
            .snapshot_ids(id)
            .send()
            .await
        {
            Ok(out) => Ok(out.snapshots().first().map(snapshot_of)),
            Err(e) => self
                .missing_or(
                    &format!("DescribeSnapshots {id}"),
                    "InvalidSnapshot.NotFound",
                    e,
                )
                .map(|()| None),
        }
    }

    async fn find_or_create_snapshot(
        &self,
        volume_id: &str,
        key: &EffectKey,
    ) -> Result<Snapshot, TaskFailure> {
        let found = self
            .client
            .describe_snapshots()
            .filters(filter(&format!("tag:{KEY_TAG}"), &key.key))
            .filters(filter("volume-id", volume_id))
            .send()
            .await
            .map_err(|e| self.failure("DescribeSnapshots by tag", e))?;
        // A snapshot that failed is not the one to restore from: take another.
        if let Some(s) = found
            .snapshots()
            .iter()
            .map(snapshot_of)
            .find(|s| !matches!(s.state, SnapshotState::Error { .. }))
        {
            return Ok(s);
        }
        let out = self
            .client
            .create_snapshot()
            .volume_id(volume_id)
            .description(format!("flow {} {}", key.plan, key.task))
            .tag_specifications(tags(ResourceType::Snapshot, key))
            .send()
            .await
            .map_err(|e| self.failure(&format!("CreateSnapshot of {volume_id}"), e))?;
        Ok(Snapshot {
            id: out.snapshot_id().unwrap_or_default().to_string(),
            volume_id: volume_id.to_string(),
            size_gib: out.volume_size().unwrap_or_default(),
            state: SnapshotState::Pending {
                progress: out.progress().map(str::to_string),
            },
        })
    }

    async fn find_or_create_volume(
        &self,
        request: &NewVolume,
        key: &EffectKey,
    ) -> Result<BlockVolume, TaskFailure> {
        let found = self
            .client
            .describe_volumes()
            .filters(filter(&format!("tag:{KEY_TAG}"), &key.key))
            .filters(filter("snapshot-id", &request.snapshot_id))
            .send()
            .await
            .map_err(|e| self.failure("DescribeVolumes by tag", e))?;
        if let Some(v) = found
            .volumes()
            .iter()
            .map(volume_of)
            .find(|v| v.state != "error" && v.state != "deleting" && v.state != "deleted")
        {
            return Ok(v);
        }
        let mut create = self
            .client
            .create_volume()
            .snapshot_id(&request.snapshot_id)
            .availability_zone(&request.zone)
            .client_token(client_token(request, key))
            .tag_specifications(tags(ResourceType::Volume, key));
        if let Some(t) = &request.volume_type {
            create = create.volume_type(VolumeType::from(t.as_str()));
        }
        if let Some(iops) = request.iops {
            create = create.iops(iops);
        }
        if let Some(throughput) = request.throughput {
            create = create.throughput(throughput);
        }
        if let Some(kms) = &request.kms_key_id {
            create = create.encrypted(true).kms_key_id(kms);
        }
        let out = create.send().await.map_err(|e| {
            self.failure(
                &format!(
                    "CreateVolume from {} in {}",
                    request.snapshot_id, request.zone
                ),
                e,
            )
        })?;
        Ok(BlockVolume {
            id: out.volume_id().unwrap_or_default().to_string(),
            zone: out.availability_zone().unwrap_or_default().to_string(),
            size_gib: out.size().unwrap_or_default(),
            state: out
                .state()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            snapshot_id: out.snapshot_id().map(str::to_string),
            volume_type: out.volume_type().map(|t| t.as_str().to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_follows_the_key_and_the_snapshot_and_fits_ec2() {
        let key = EffectKey::new("p", "v/restore", &["in"]);
        let req = |snap: &str| NewVolume {
            snapshot_id: snap.into(),
            zone: "us-east-1a".into(),
            volume_type: None,
            iops: None,
            throughput: None,
            kms_key_id: None,
        };
        let a = client_token(&req("snap-1"), &key);
        assert_eq!(a, client_token(&req("snap-1"), &key));
        assert_ne!(a, client_token(&req("snap-2"), &key));
        assert_ne!(
            a,
            client_token(&req("snap-1"), &EffectKey::new("p", "w/restore", &["in"]))
        );
        assert!(a.len() <= 64 && a.is_ascii(), "{a}");
    }
}
