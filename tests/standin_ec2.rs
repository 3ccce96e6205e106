//! Conformance suite of the EC2 stand-in (support/ec2/ec2_front.py, `scripts/services up
//! ec2`): the AWS SDK for Rust, its waiters and a plain describe loop see the states,
//! idempotency and errors of the real EC2 API that moto alone does not give.
//!
//! Each test signs with its own access key id: the stand-in scopes its rules (timings,
//! injected faults) and its request log by that key, so tests running in parallel
//! against the one stand-in do not see each other's faults.

mod support;

use std::time::{Duration, Instant};

use aws_sdk_ec2::client::Waiters;
use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::{AsyncSleep, Credentials, Sleep};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{Filter, ResourceType, SnapshotState, Tag, TagSpecification, VolumeState};
use serde_json::{json, Value};
use support::{env, unique_name};

const ZONE: &str = "us-east-1a";

// ------------------------------------------------------------------ helpers

/// The SDK's waiters wait at least 15 s between polls (the botocore model's delay);
/// tests shrink every sleep of the SDK (waiter delays, retry backoff) by this factor
/// through the client's `sleep_impl` hook. Time itself runs normally.
const SLEEP_DIVISOR: u32 = 50;

#[derive(Debug)]
struct ShortSleep;

impl AsyncSleep for ShortSleep {
    fn sleep(&self, duration: Duration) -> Sleep {
        let short = duration / SLEEP_DIVISOR;
        Sleep::new(tokio::time::sleep(short))
    }
}

/// One test's view of the stand-in: its own access key, an SDK client signing with it.
struct Standin {
    url: String,
    key: String,
    ec2: aws_sdk_ec2::Client,
    volumes: Vec<String>,
    snapshots: Vec<String>,
}

impl Standin {
    fn new(prefix: &str) -> Self {
        Self::with_attempts(prefix, 3)
    }

    /// `attempts`: the SDK's standard retry mode with this many attempts in all.
    fn with_attempts(prefix: &str, attempts: u32) -> Self {
        let url = env("FLOW_TEST_EC2_URL");
        let key = unique_name(prefix);
        Standin {
            ec2: client(&url, &key, attempts),
            url,
            key,
            volumes: Vec::new(),
            snapshots: Vec::new(),
        }
    }

    /// POSTs a rule for this test's access key; returns its id.
    fn rule(&self, mut rule: Value) -> u64 {
        rule["access_key"] = json!(self.key);
        let (code, body) =
            support::standin_control(&self.url, "POST", "/_standin/rules", Some(&rule));
        assert_eq!(code, 200, "rule {rule} refused: {body}");
        body["id"].as_u64().expect("the rule's id")
    }

    /// (action, HTTP status) of every request this test's key made, in order.
    fn requests(&self) -> Vec<(String, u64)> {
        let (code, body) = support::standin_control(
            &self.url,
            "GET",
            &format!("/_standin/requests?access_key={}", self.key),
            None,
        );
        assert_eq!(code, 200, "{body}");
        body.as_array()
            .expect("a list of requests")
            .iter()
            .map(|r| {
                (
                    r["action"].as_str().unwrap_or_default().to_string(),
                    r["status"].as_u64().unwrap_or_default(),
                )
            })
            .collect()
    }

    async fn volume(&mut self, size: i32) -> String {
        let out = self
            .ec2
            .create_volume()
            .availability_zone(ZONE)
            .size(size)
            .send()
            .await
            .expect("CreateVolume through the stand-in");
        let id = out.volume_id().expect("a volume id").to_string();
        self.volumes.push(id.clone());
        id
    }

    async fn snapshot(
        &mut self,
        volume: &str,
    ) -> aws_sdk_ec2::operation::create_snapshot::CreateSnapshotOutput {
        let out = self
            .ec2
            .create_snapshot()
            .volume_id(volume)
            .send()
            .await
            .expect("CreateSnapshot through the stand-in");
        self.snapshots
            .push(out.snapshot_id().expect("a snapshot id").to_string());
        out
    }

    /// A plain describe loop, as flow's resumable engine polls: (state, progress) of
    /// every poll until the state is no longer pending.
    async fn poll_snapshot(&self, id: &str) -> Vec<(SnapshotState, String)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        loop {
            let out = self
                .ec2
                .describe_snapshots()
                .snapshot_ids(id)
                .send()
                .await
                .expect("DescribeSnapshots");
            let snap = &out.snapshots()[0];
            let state = snap.state().cloned().expect("a snapshot state");
            seen.push((
                state.clone(),
                snap.progress().unwrap_or_default().to_string(),
            ));
            if state != SnapshotState::Pending {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "snapshot {id} still pending after 30 s: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = support::standin_control(
            &self.url,
            "DELETE",
            &format!("/_standin/rules?access_key={}", self.key),
            None,
        );
        let (url, key) = (self.url.clone(), self.key.clone());
        let (volumes, snapshots) = (self.volumes.clone(), self.snapshots.clone());
        support::block_on_thread(async move {
            let ec2 = client(&url, &key, 3);
            for id in snapshots {
                let _ = ec2.delete_snapshot().snapshot_id(id).send().await;
            }
            for id in volumes {
                let _ = ec2.delete_volume().volume_id(id).send().await;
            }
        });
    }
}

fn client(url: &str, key: &str, attempts: u32) -> aws_sdk_ec2::Client {
    let config = aws_sdk_ec2::config::Builder::new()
        .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
        .region(aws_sdk_ec2::config::Region::new(env(
            "FLOW_TEST_AWS_REGION",
        )))
        .endpoint_url(url)
        .credentials_provider(Credentials::new(key, "test", None, None, "standin-tests"))
        .retry_config(RetryConfig::standard().with_max_attempts(attempts))
        .sleep_impl(ShortSleep)
        .build();
    aws_sdk_ec2::Client::from_conf(config)
}

/// A request to the stand-in's control API with curl (method, path, JSON body) →
/// (HTTP status, JSON answer).
fn percent(progress: &str) -> u32 {
    progress
        .trim_end_matches('%')
        .parse()
        .unwrap_or_else(|_| panic!("progress {progress:?} is not N%"))
}

// ------------------------------------------------------------------ snapshots

#[tokio::test]
async fn snapshot_is_pending_first_then_completed_with_progress_rising() {
    let mut s = Standin::new("ec2_pending");
    s.rule(json!({"action": "CreateSnapshot", "seconds": 1.5, "times": null}));
    let volume = s.volume(1).await;

    let started = Instant::now();
    let created = s.snapshot(&volume).await;
    assert_eq!(
        created.state(),
        Some(&SnapshotState::Pending),
        "CreateSnapshot answers pending"
    );
    let id = created.snapshot_id().unwrap().to_string();

    let seen = s.poll_snapshot(&id).await;
    assert_eq!(
        seen[0].0,
        SnapshotState::Pending,
        "first describe: {seen:?}"
    );
    let (last_state, last_progress) = seen.last().unwrap();
    assert_eq!(*last_state, SnapshotState::Completed, "{seen:?}");
    assert_eq!(last_progress, "100%");
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "completed after {:?}, before its 1.5 s pending time",
        started.elapsed()
    );
    let progress: Vec<u32> = seen.iter().map(|(_, p)| percent(p)).collect();
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress must not fall: {progress:?}"
    );
    assert!(
        progress.iter().any(|p| *p > 0 && *p < 100),
        "a pending snapshot shows progress between 0% and 100%: {progress:?}"
    );
}

#[tokio::test]
async fn status_filter_sees_the_reported_states() {
    let mut s = Standin::new("ec2_filter");
    s.rule(json!({"action": "CreateSnapshot", "seconds": 1.0}));
    let volume = s.volume(1).await;
    let id = s.snapshot(&volume).await.snapshot_id().unwrap().to_string();

    let with_status = |status: &'static str| {
        let ec2 = s.ec2.clone();
        let id = id.clone();
        async move {
            ec2.describe_snapshots()
                .snapshot_ids(id)
                .filters(Filter::builder().name("status").values(status).build())
                .send()
                .await
                .expect("DescribeSnapshots with a status filter")
                .snapshots()
                .len()
        }
    };
    assert_eq!(
        with_status("pending").await,
        1,
        "status=pending finds the new snapshot"
    );
    assert_eq!(
        with_status("completed").await,
        0,
        "status=completed does not, yet"
    );
    s.poll_snapshot(&id).await;
    assert_eq!(with_status("pending").await, 0);
    assert_eq!(with_status("completed").await, 1);
}

#[tokio::test]
async fn injected_error_snapshot_ends_in_error_for_loop_and_waiter() {
    let mut s = Standin::new("ec2_error");
    s.rule(json!({"action": "CreateSnapshot", "outcome": "error", "seconds": 0.8}));
    let volume = s.volume(1).await;
    let id = s.snapshot(&volume).await.snapshot_id().unwrap().to_string();

    let seen = s.poll_snapshot(&id).await;
    assert_eq!(seen[0].0, SnapshotState::Pending, "{seen:?}");
    assert_eq!(seen.last().unwrap().0, SnapshotState::Error, "{seen:?}");
    let described = s
        .ec2
        .describe_snapshots()
        .snapshot_ids(&id)
        .send()
        .await
        .unwrap();
    assert!(
        described.snapshots()[0]
            .state_message()
            .is_some_and(|m| !m.is_empty()),
        "an error snapshot carries a state message"
    );

    // The SDK waiter's failure acceptor (any `error`) ends the wait at once.
    let err = s
        .ec2
        .wait_until_snapshot_completed()
        .snapshot_ids(&id)
        .wait(Duration::from_secs(600))
        .await
        .expect_err("waiting for an error snapshot to complete must fail");
    match err {
        aws_sdk_ec2::waiters::snapshot_completed::WaitUntilSnapshotCompletedError::FailureState(
            f,
        ) => {
            let out = f.final_poll().as_result().expect("the last poll succeeded");
            assert_eq!(out.snapshots()[0].state(), Some(&SnapshotState::Error));
        }
        other => panic!("expected the waiter's failure state, got {other:?}"),
    }
}

// ------------------------------------------------------------------ waiters

#[tokio::test]
async fn sdk_waiters_wait_through_creating_and_pending() {
    let mut s = Standin::new("ec2_waiters");
    s.rule(json!({"action": "CreateVolume", "seconds": 0.6}));
    s.rule(json!({"action": "CreateSnapshot", "seconds": 0.6}));

    let created = s
        .ec2
        .create_volume()
        .availability_zone(ZONE)
        .size(2)
        .send()
        .await
        .unwrap();
    assert_eq!(
        created.state(),
        Some(&VolumeState::Creating),
        "CreateVolume answers creating"
    );
    let volume = created.volume_id().unwrap().to_string();
    s.volumes.push(volume.clone());
    let first = s
        .ec2
        .describe_volumes()
        .volume_ids(&volume)
        .send()
        .await
        .unwrap();
    assert_eq!(first.volumes()[0].state(), Some(&VolumeState::Creating));

    let done = s
        .ec2
        .wait_until_volume_available()
        .volume_ids(&volume)
        .wait(Duration::from_secs(600))
        .await
        .expect("the volume becomes available");
    let out = done.as_result().expect("the last poll succeeded");
    assert_eq!(out.volumes()[0].state(), Some(&VolumeState::Available));

    let id = s.snapshot(&volume).await.snapshot_id().unwrap().to_string();
    let done = s
        .ec2
        .wait_until_snapshot_completed()
        .snapshot_ids(&id)
        .wait(Duration::from_secs(600))
        .await
        .expect("the snapshot completes");
    let snap = &done.as_result().unwrap().snapshots()[0];
    assert_eq!(snap.state(), Some(&SnapshotState::Completed));
    assert_eq!(snap.progress(), Some("100%"));

    let log = s.requests();
    let count = |action: &str| log.iter().filter(|(a, _)| a == action).count();
    assert!(
        count("DescribeVolumes") >= 3,
        "the volume waiter polled more than once: {log:?}"
    );
    assert!(
        count("DescribeSnapshots") >= 2,
        "the snapshot waiter polled more than once: {log:?}"
    );
}

// ------------------------------------------------------------------ CreateVolume

#[tokio::test]
async fn create_volume_client_token_same_volume_or_mismatch() {
    let mut s = Standin::new("ec2_token");
    let token = unique_name("tok");
    let tag = TagSpecification::builder()
        .resource_type(ResourceType::Volume)
        .tags(Tag::builder().key("flow/task").value(&token).build())
        .build();
    let ec2 = s.ec2.clone();
    let create = |size: i32, zone: &'static str| {
        ec2.create_volume()
            .availability_zone(zone)
            .size(size)
            .client_token(&token)
            .tag_specifications(tag.clone())
            .send()
    };

    let first = create(3, ZONE).await.expect("first CreateVolume");
    let id = first.volume_id().unwrap().to_string();
    s.volumes.push(id.clone());
    let again = create(3, ZONE).await.expect("the same request again");
    assert_eq!(
        again.volume_id(),
        Some(id.as_str()),
        "same token, same parameters: same volume"
    );
    assert_eq!(again.size(), Some(3));

    for (size, zone) in [(4, ZONE), (3, "us-east-1b")] {
        let err = create(size, zone)
            .await
            .expect_err("other parameters, same token");
        assert_eq!(
            err.code(),
            Some("IdempotentParameterMismatch"),
            "size {size} zone {zone}: {err:?}"
        );
        assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(400));
    }

    let tagged = s
        .ec2
        .describe_volumes()
        .filters(
            Filter::builder()
                .name("tag:flow/task")
                .values(&token)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        tagged.volumes().len(),
        1,
        "one volume for one token: {tagged:?}"
    );
}

#[tokio::test]
async fn zone_outside_the_region_is_refused() {
    let s = Standin::new("ec2_zone");
    let token = unique_name("zone");
    // a zone of another region (hashicorp/terraform #6110), a zone that does not exist
    for zone in ["eu-west-1a", "us-east-1z"] {
        let err = s
            .ec2
            .create_volume()
            .availability_zone(zone)
            .size(1)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Volume)
                    .tags(Tag::builder().key("flow/task").value(&token).build())
                    .build(),
            )
            .send()
            .await
            .expect_err("a zone outside us-east-1");
        assert_eq!(err.code(), Some("InvalidZone.NotFound"), "{zone}: {err:?}");
        assert_eq!(
            err.message(),
            Some(format!("The zone '{zone}' does not exist.").as_str())
        );
        assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(400));
    }
    let made = s
        .ec2
        .describe_volumes()
        .filters(
            Filter::builder()
                .name("tag:flow/task")
                .values(&token)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(
        made.volumes().is_empty(),
        "a refused request creates nothing"
    );
}

// ------------------------------------------------------------------ throttling

#[tokio::test]
async fn throttling_is_request_limit_exceeded_and_the_sdk_retries_it() {
    let mut s = Standin::new("ec2_throttle");
    let volume = s.volume(1).await;

    s.rule(json!({"action": "DescribeVolumes", "error": "RequestLimitExceeded", "times": 2}));
    let out = s
        .ec2
        .describe_volumes()
        .volume_ids(&volume)
        .send()
        .await
        .expect("two throttled attempts, then the SDK's third succeeds");
    assert_eq!(out.volumes().len(), 1);
    let describes: Vec<u64> = s
        .requests()
        .into_iter()
        .filter(|(a, _)| a == "DescribeVolumes")
        .map(|(_, status)| status)
        .collect();
    assert_eq!(
        describes,
        vec![503, 503, 200],
        "the SDK retried the throttled calls"
    );

    // Always throttled: without retries the caller sees the code itself.
    let once = Standin::with_attempts("ec2_throttle1", 1);
    once.rule(json!({"action": "DescribeVolumes", "error": "RequestLimitExceeded", "times": null}));
    let err = once
        .ec2
        .describe_volumes()
        .volume_ids(&volume)
        .send()
        .await
        .expect_err("throttled");
    assert_eq!(err.code(), Some("RequestLimitExceeded"), "{err:?}");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(503));
    assert_eq!(once.requests().len(), 1);
}

// ------------------------------------------------------------------ one state with moto

#[tokio::test]
async fn volumes_of_the_stand_in_are_moto_volumes() {
    let mut s = Standin::new("ec2_shared");
    let volume = s.volume(5).await;
    // The stack's moto (FLOW_TEST_S3_ENDPOINT) holds the same volume: other services
    // (S3, a Kubernetes stand-in deleting volumes) see one state.
    let moto = support::ec2_client();
    let there = moto
        .describe_volumes()
        .volume_ids(&volume)
        .send()
        .await
        .unwrap();
    assert_eq!(there.volumes()[0].size(), Some(5));
    s.ec2
        .delete_volume()
        .volume_id(&volume)
        .send()
        .await
        .expect("DeleteVolume through the stand-in");
    let err = moto
        .describe_volumes()
        .volume_ids(&volume)
        .send()
        .await
        .expect_err("deleted in moto too");
    assert_eq!(err.code(), Some("InvalidVolume.NotFound"), "{err:?}");
    s.volumes.clear();
}

// ------------------------------------------------------------------ control API input

#[test]
fn bad_rules_are_refused_with_the_reason() {
    let url = env("FLOW_TEST_EC2_URL");
    for (rule, says) in [
        (json!({"error": "RequestLimitExceeded"}), "action"),
        (json!({"action": "CreateSnapshot"}), "needs"),
        (
            json!({"action": "CreateSnapshot", "outcome": "broken"}),
            "outcome",
        ),
        (
            json!({"action": "CreateSnapshot", "seconds": 1, "times": 0}),
            "times",
        ),
        (
            json!({"action": "CreateSnapshot", "seconds": 1, "times": true}),
            "times",
        ),
        (
            json!({"action": "CreateSnapshot", "seconds": 1, "colour": "red"}),
            "unknown rule keys",
        ),
        (
            json!({"action": "CreateSnapshot", "seconds": "soon"}),
            "seconds",
        ),
        (
            json!({"action": "CreateSnapshot", "seconds": -1}),
            "seconds",
        ),
        (
            json!({"action": "DescribeVolumes", "error": "<Code/>"}),
            "error code",
        ),
        (json!([1, 2]), "JSON object"),
    ] {
        let (code, body) = support::standin_control(&url, "POST", "/_standin/rules", Some(&rule));
        assert_eq!(code, 400, "{rule} should be refused: {body}");
        let text = body["error"].as_str().unwrap_or_default();
        assert!(
            text.contains(says),
            "{rule}: the reason {text:?} should mention {says:?}"
        );
    }
}

#[tokio::test]
async fn copy_snapshot_is_pending_too() {
    let mut s = Standin::new("ec2_copy");
    s.rule(json!({"action": "CreateSnapshot", "seconds": 0.0}));
    s.rule(json!({"action": "CopySnapshot", "seconds": 1.0}));
    let volume = s.volume(1).await;
    let source = s.snapshot(&volume).await.snapshot_id().unwrap().to_string();
    assert_eq!(
        s.poll_snapshot(&source).await[0].0,
        SnapshotState::Completed
    );

    let copy = s
        .ec2
        .copy_snapshot()
        .source_snapshot_id(&source)
        .source_region(env("FLOW_TEST_AWS_REGION"))
        .send()
        .await
        .expect("CopySnapshot");
    let id = copy.snapshot_id().unwrap().to_string();
    s.snapshots.push(id.clone());
    let seen = s.poll_snapshot(&id).await;
    assert_eq!(
        seen[0].0,
        SnapshotState::Pending,
        "a copy starts pending: {seen:?}"
    );
    assert_eq!(seen.last().unwrap().0, SnapshotState::Completed, "{seen:?}");
}

#[tokio::test]
async fn rules_touch_only_their_own_access_key() {
    let mut a = Standin::with_attempts("ec2_scope_a", 1);
    let b = Standin::with_attempts("ec2_scope_b", 1);
    let volume = a.volume(1).await;
    a.rule(json!({"action": "*", "error": "RequestLimitExceeded", "times": null}));
    let err = a
        .ec2
        .describe_volumes()
        .volume_ids(&volume)
        .send()
        .await
        .expect_err("a is throttled");
    assert_eq!(err.code(), Some("RequestLimitExceeded"));
    b.ec2
        .describe_volumes()
        .volume_ids(&volume)
        .send()
        .await
        .expect("b is not throttled by a's rule");
    assert_eq!(b.requests(), vec![("DescribeVolumes".to_string(), 200)]);
    // params narrow a rule further: only requests naming this volume are throttled
    b.rule(json!({"action": "DescribeVolumes", "params": {"VolumeId.1": volume}, "error": "RequestLimitExceeded"}));
    b.ec2
        .describe_volumes()
        .send()
        .await
        .expect("another request of b passes");
    let err = b
        .ec2
        .describe_volumes()
        .volume_ids(&volume)
        .send()
        .await
        .expect_err("throttled");
    assert_eq!(err.code(), Some("RequestLimitExceeded"));
}
