//! Conformance suite of the Kubernetes API stand-in (support/k8s_standin/, service `k8s`).
//!
//! No Kubernetes API server runs on the test machines, so flow's PV/PVC volume swap is
//! tested against a stand-in. These tests hold the stand-in to the behaviour of a real
//! cluster that a swap depends on, through real clients: the machine's `kubectl` (v1.32,
//! with the kubeconfig the stand-in writes) and the `kube` crate. EBS volumes live in the
//! stack's EC2 (moto), checked with aws-sdk-ec2. When one of these fails, the stand-in
//! is wrong, not flow.
//!
//! Each test works in a namespace of its own; its PVs (cluster-scoped) carry the label
//! `flow-test=<namespace>` and are deleted with it.

mod support;

use std::future::Future;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event, Namespace, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, Error, ResourceExt};
use serde_json::{json, Value};

const ZONE: &str = "us-east-1a";
const OTHER_ZONE: &str = "us-east-1b";
const WAIT: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------ helpers

/// A test's own namespace on the stand-in, with kubectl and kube clients for it.
struct Cluster {
    client: Client,
    ns: String,
    kubeconfig: String,
    /// kubectl's discovery cache, removed with the cluster handle.
    cache: tempfile::TempDir,
}

impl Cluster {
    async fn new(prefix: &str) -> Self {
        let kubeconfig = support::env("FLOW_TEST_KUBECONFIG");
        let kc =
            Kubeconfig::read_from(&kubeconfig).expect("the stand-in's kubeconfig should parse");
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("a kube config from the stand-in's kubeconfig");
        let client = Client::try_from(config).expect("a kube client");
        let ns = support::unique_name(prefix).replace('_', "-");
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .expect("create the test namespace");
        let cache = tempfile::Builder::new()
            .prefix("flow-standin-kubectl-")
            .tempdir()
            .expect("a kubectl cache directory");
        Cluster {
            client,
            ns,
            kubeconfig,
            cache,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn pvs(&self) -> Api<PersistentVolume> {
        Api::all(self.client.clone())
    }

    /// A PV name unique to this test.
    fn pv_name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.ns)
    }

    /// `kubectl --namespace NS ARGS...` with the stand-in's kubeconfig.
    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(["--namespace", &self.ns, "--request-timeout", "20s"])
            .args(args)
            .output()
            .expect("kubectl (v1.32) should be installed at /usr/bin/kubectl")
    }

    /// kubectl that must succeed; returns its stdout.
    fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).expect("kubectl prints UTF-8")
    }

    /// kubectl that must fail; returns its stderr.
    fn kubectl_err(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(!out.status.success(), "kubectl {args:?} should have failed");
        String::from_utf8(out.stderr).expect("kubectl prints UTF-8")
    }

    /// `kubectl create -f -` with a JSON document on stdin.
    fn kubectl_create(&self, doc: &Value, extra: &[&str]) -> Output {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(["--namespace", &self.ns, "create", "-f", "-"])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl should start");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(doc.to_string().as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    async fn pv(&self, name: &str) -> Option<PersistentVolume> {
        self.pvs().get_opt(name).await.expect("get PV")
    }

    async fn claim(&self, name: &str) -> Option<PersistentVolumeClaim> {
        self.api::<PersistentVolumeClaim>()
            .get_opt(name)
            .await
            .expect("get PVC")
    }

    async fn pod(&self, name: &str) -> Option<Pod> {
        self.api::<Pod>().get_opt(name).await.expect("get pod")
    }

    /// Events of this namespace (and of PVs, in `default`) about `name`.
    async fn events_about(&self, name: &str) -> Vec<Event> {
        let mut out = Vec::new();
        for ns in [self.ns.as_str(), "default"] {
            let lp = ListParams::default().fields(&format!("involvedObject.name={name}"));
            out.extend(
                Api::<Event>::namespaced(self.client.clone(), ns)
                    .list(&lp)
                    .await
                    .unwrap()
                    .items,
            );
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Best effort: the namespace takes its claims and pods; then the labelled PVs go.
        let _ = self.kubectl(&["delete", "namespace", &self.ns, "--wait=false"]);
        let selector = format!("flow-test={}", self.ns);
        let _ = self.kubectl(&["delete", "pv", "-l", &selector, "--wait=false"]);
    }
}

/// Polls `check` every 25 ms until it gives Some, for at most WAIT; panics naming `what`.
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn phase_of_pv(pv: &PersistentVolume) -> String {
    pv.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

fn phase_of_claim(c: &PersistentVolumeClaim) -> String {
    c.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The Status of an API refusal; panics if the call did not fail with one.
fn api_status<T: std::fmt::Debug>(r: Result<T, Error>) -> kube::core::Status {
    match r {
        Err(Error::Api(status)) => *status,
        other => panic!("expected an API error with a Status body, got {other:?}"),
    }
}

/// EC2 the stand-in talks to: FLOW_K8S_EC2_ENDPOINT if the stack was started with one, else moto.
fn ec2() -> aws_sdk_ec2::Client {
    match std::env::var("FLOW_K8S_EC2_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => {
            let config = aws_sdk_ec2::config::Builder::new()
                .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
                .region(aws_sdk_ec2::config::Region::new(support::aws_region()))
                .endpoint_url(endpoint)
                .credentials_provider(aws_credential_types::Credentials::new(
                    "test",
                    "test",
                    None,
                    None,
                    "flow-tests",
                ))
                .build();
            aws_sdk_ec2::Client::from_conf(config)
        }
        _ => support::ec2_client(),
    }
}

async fn ebs_volume(zone: &str) -> String {
    ec2()
        .create_volume()
        .availability_zone(zone)
        .size(10)
        .send()
        .await
        .expect("CreateVolume in the stack's EC2")
        .volume_id
        .expect("a volume id")
}

async fn ebs_exists(id: &str) -> bool {
    match ec2().describe_volumes().volume_ids(id).send().await {
        Ok(out) => !out.volumes().is_empty(),
        Err(e) => {
            let code = e
                .as_service_error()
                .and_then(|s| s.meta().code())
                .unwrap_or_default()
                .to_string();
            assert_eq!(
                code, "InvalidVolume.NotFound",
                "DescribeVolumes {id}: {e:?}"
            );
            false
        }
    }
}

/// A static EBS CSI PV (what step 8 of the swap creates), pre-bound to `claim` if given.
fn ebs_pv(
    c: &Cluster,
    name: &str,
    volume: &str,
    zone: &str,
    claim: Option<&str>,
    policy: &str,
) -> Value {
    let mut pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": {"flow-test": c.ns}},
        "spec": {
            "capacity": {"storage": "10Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": policy,
            "storageClassName": "",
            "csi": {"driver": "ebs.csi.aws.com", "volumeHandle": volume, "fsType": "ext4"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "topology.ebs.csi.aws.com/zone", "operator": "In", "values": [zone]}]}]}}
        }
    });
    if let Some(claim) = claim {
        pv["spec"]["claimRef"] = json!({"namespace": c.ns, "name": claim});
    }
    pv
}

fn claim_doc(name: &str, volume: Option<&str>) -> Value {
    let mut pvc = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                 "resources": {"requests": {"storage": "10Gi"}}}
    });
    if let Some(v) = volume {
        pvc["spec"]["volumeName"] = json!(v);
    }
    pvc
}

fn sts_doc(name: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "serviceName": name,
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "db", "image": "clickhouse/clickhouse-server"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                         "resources": {"requests": {"storage": "10Gi"}}}}]
        }
    })
}

async fn create_pv(c: &Cluster, doc: Value) -> PersistentVolume {
    c.pvs()
        .create(
            &PostParams::default(),
            &serde_json::from_value(doc).unwrap(),
        )
        .await
        .expect("create PV")
}

async fn create_claim(c: &Cluster, doc: Value) -> PersistentVolumeClaim {
    c.api::<PersistentVolumeClaim>()
        .create(
            &PostParams::default(),
            &serde_json::from_value(doc).unwrap(),
        )
        .await
        .expect("create PVC")
}

async fn create_sts(c: &Cluster, doc: Value) -> StatefulSet {
    c.api::<StatefulSet>()
        .create(
            &PostParams::default(),
            &serde_json::from_value(doc).unwrap(),
        )
        .await
        .expect("create StatefulSet")
}

async fn wait_claim_phase(c: &Cluster, name: &str, phase: &str) -> PersistentVolumeClaim {
    wait_for(&format!("PVC {name} {phase}"), || async {
        c.claim(name).await.filter(|p| phase_of_claim(p) == phase)
    })
    .await
}

async fn wait_pv_phase(c: &Cluster, name: &str, phase: &str) -> PersistentVolume {
    wait_for(&format!("PV {name} {phase}"), || async {
        c.pv(name).await.filter(|p| phase_of_pv(p) == phase)
    })
    .await
}

async fn wait_pod_ready(c: &Cluster, name: &str) -> Pod {
    wait_for(&format!("pod {name} Ready"), || async {
        c.pod(name).await.filter(pod_ready)
    })
    .await
}

async fn wait_gone<F, Fut, T>(what: &str, mut get: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for(what, || {
        let f = get();
        async move {
            if f.await.is_none() {
                Some(())
            } else {
                None
            }
        }
    })
    .await
}

/// A StatefulSet `name` with one replica whose claim `data-<name>-0` is bound to a
/// static PV on a new EBS volume in `zone`; returns (PV name, volume id) once the pod is Ready.
async fn running_sts(c: &Cluster, name: &str, zone: &str, policy: &str) -> (String, String) {
    let volume = ebs_volume(zone).await;
    let pv = c.pv_name(name);
    let claim = format!("data-{name}-0");
    create_pv(c, ebs_pv(c, &pv, &volume, zone, Some(&claim), policy)).await;
    create_claim(c, claim_doc(&claim, Some(&pv))).await;
    create_sts(c, sts_doc(name, 1)).await;
    wait_pod_ready(c, &format!("{name}-0")).await;
    (pv, volume)
}

// ------------------------------------------------------------------ discovery

#[tokio::test]
async fn standin_discovery_serves_short_names_and_versions() {
    let c = Cluster::new("k8s_disc").await;
    let version = c.client.apiserver_version().await.expect("GET /version");
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "32")
    );
    assert!(
        version.git_version.contains("standin"),
        "{}",
        version.git_version
    );

    let resources = c.kubectl_ok(&["api-resources", "--no-headers"]);
    for (short, name) in [
        ("pv", "persistentvolumes"),
        ("pvc", "persistentvolumeclaims"),
        ("sts", "statefulsets"),
        ("po", "pods"),
    ] {
        assert!(
            resources
                .lines()
                .any(|l| l.split_whitespace().take(2).eq([name, short])),
            "kubectl api-resources lacks {name} ({short}):\n{resources}"
        );
    }
    // Short names resolve (kubectl fails with "doesn't have a resource type" otherwise).
    c.kubectl_ok(&["get", "pv"]);
    c.kubectl_ok(&["get", "pvc,sts,pods"]);
    let err = c.kubectl_err(&["get", "deployments"]);
    assert!(
        err.contains("the server doesn't have a resource type \"deployments\""),
        "{err}"
    );
}

// ------------------------------------------------------------------ PV binder

#[tokio::test]
async fn standin_binder_binds_a_prebound_pair_in_order_and_fills_claim_uid() {
    let c = Cluster::new("k8s_bind").await;
    let pv_name = c.pv_name("pv");
    let volume = ebs_volume(ZONE).await;
    // Watch both kinds from now on, to see the order of the binder's writes.
    let start = c
        .pvs()
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let wp = WatchParams::default().timeout(10);
    let mut pv_events = c
        .pvs()
        .watch(
            &wp.clone().fields(&format!("metadata.name={pv_name}")),
            &start,
        )
        .await
        .unwrap()
        .boxed();
    let mut claim_events = c
        .api::<PersistentVolumeClaim>()
        .watch(&wp, &start)
        .await
        .unwrap()
        .boxed();

    create_pv(
        &c,
        ebs_pv(&c, &pv_name, &volume, ZONE, Some("data"), "Retain"),
    )
    .await;
    let created = create_claim(&c, claim_doc("data", Some(&pv_name))).await;
    assert_eq!(
        phase_of_claim(&created),
        "Pending",
        "a new claim starts Pending"
    );

    let mut pv_bound_at = None;
    while let Some(ev) = pv_events.try_next().await.unwrap() {
        if let WatchEvent::Modified(pv) | WatchEvent::Added(pv) = ev {
            if phase_of_pv(&pv) == "Bound" {
                pv_bound_at = Some(pv.resource_version().unwrap().parse::<u64>().unwrap());
                break;
            }
        }
    }
    let mut claim_bound_at = None;
    while let Some(ev) = claim_events.try_next().await.unwrap() {
        if let WatchEvent::Modified(pvc) = ev {
            if phase_of_claim(&pvc) == "Bound" {
                claim_bound_at = Some(pvc.resource_version().unwrap().parse::<u64>().unwrap());
                break;
            }
        }
    }
    let (pv_at, claim_at) = (
        pv_bound_at.expect("PV Bound event"),
        claim_bound_at.expect("PVC Bound event"),
    );
    assert!(
        pv_at < claim_at,
        "the PV is Bound (rv {pv_at}) before its claim (rv {claim_at})"
    );

    let pv = c.pv(&pv_name).await.unwrap();
    let claim = c.claim("data").await.unwrap();
    let claim_ref = pv.spec.as_ref().unwrap().claim_ref.as_ref().unwrap();
    assert_eq!(
        claim_ref.uid.as_deref(),
        Some(claim.uid().unwrap().as_str()),
        "claimRef.uid is filled"
    );
    assert_eq!(
        claim
            .annotations()
            .get("pv.kubernetes.io/bind-completed")
            .map(String::as_str),
        Some("yes")
    );
    let status = claim.status.unwrap();
    assert_eq!(status.capacity.unwrap()["storage"].0, "10Gi");
    assert_eq!(
        pv.finalizers(),
        ["kubernetes.io/pv-protection"],
        "PVs get the pv-protection finalizer at creation"
    );
    assert_eq!(
        claim.metadata.finalizers.unwrap(),
        ["kubernetes.io/pvc-protection"]
    );

    // kubectl sees the same, and `kubectl wait` works on a JSONPath condition.
    c.kubectl_ok(&[
        "wait",
        "--for=jsonpath={.status.phase}=Bound",
        "pvc/data",
        "--timeout=5s",
    ]);
    let phase = c.kubectl_ok(&[
        "get",
        "pv",
        &pv_name,
        "-o",
        "jsonpath={.status.phase} {.spec.claimRef.name}",
    ]);
    assert_eq!(phase, "Bound data");
}

#[tokio::test]
async fn standin_binder_refuses_a_volume_bound_to_another_claim_or_too_small() {
    let c = Cluster::new("k8s_refuse").await;
    let pv_name = c.pv_name("pv");
    let volume = ebs_volume(ZONE).await;
    create_pv(
        &c,
        ebs_pv(&c, &pv_name, &volume, ZONE, Some("owner"), "Retain"),
    )
    .await;
    create_claim(&c, claim_doc("owner", Some(&pv_name))).await;
    wait_claim_phase(&c, "owner", "Bound").await;

    create_claim(&c, claim_doc("intruder", Some(&pv_name))).await;
    let events = wait_for("FailedBinding of the intruder", || async {
        let evs = c.events_about("intruder").await;
        evs.into_iter()
            .find(|e| e.reason.as_deref() == Some("FailedBinding"))
    })
    .await;
    assert!(events
        .message
        .unwrap()
        .contains("already bound to a different claim"));
    assert_eq!(
        phase_of_claim(&c.claim("intruder").await.unwrap()),
        "Pending"
    );

    // A claim asking for more than the PV has stays Pending with the binder's reason.
    let small = c.pv_name("small");
    create_pv(
        &c,
        ebs_pv(&c, &small, &ebs_volume(ZONE).await, ZONE, None, "Retain"),
    )
    .await;
    let mut big = claim_doc("big", Some(&small));
    big["spec"]["resources"]["requests"]["storage"] = json!("20Gi");
    create_claim(&c, big).await;
    let ev = wait_for("FailedBinding of the big claim", || async {
        c.events_about("big")
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("FailedBinding"))
    })
    .await;
    assert!(ev.message.unwrap().contains("requested PV is too small"));
    assert_eq!(phase_of_pv(&c.pv(&small).await.unwrap()), "Available");
}

// ------------------------------------------------------------------ reclaim policy

#[tokio::test]
async fn standin_deleting_a_claim_keeps_a_retain_pv_and_its_volume() {
    let c = Cluster::new("k8s_retain").await;
    let pv_name = c.pv_name("pv");
    let volume = ebs_volume(ZONE).await;
    create_pv(
        &c,
        ebs_pv(&c, &pv_name, &volume, ZONE, Some("data"), "Retain"),
    )
    .await;
    create_claim(&c, claim_doc("data", Some(&pv_name))).await;
    wait_claim_phase(&c, "data", "Bound").await;

    let out = c.kubectl_ok(&["delete", "pvc", "data"]); // waits until it is gone
    assert!(
        out.contains("persistentvolumeclaim \"data\" deleted"),
        "{out}"
    );
    assert!(c.claim("data").await.is_none());
    let pv = wait_pv_phase(&c, &pv_name, "Released").await;
    assert!(
        pv.spec.unwrap().claim_ref.is_some(),
        "a Released PV keeps its claimRef"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        phase_of_pv(&c.pv(&pv_name).await.unwrap()),
        "Released",
        "Retain keeps the PV"
    );
    assert!(ebs_exists(&volume).await, "Retain keeps the EBS volume");
}

#[tokio::test]
async fn standin_deleting_a_claim_of_a_delete_pv_deletes_the_pv_and_its_ebs_volume() {
    let c = Cluster::new("k8s_delete").await;
    let pv_name = c.pv_name("pv");
    let volume = ebs_volume(ZONE).await;
    let mut doc = ebs_pv(&c, &pv_name, &volume, ZONE, Some("data"), "Delete");
    // dynamically provisioned by the EBS CSI driver: the usual Delete PV
    doc["metadata"]["annotations"] = json!({"pv.kubernetes.io/provisioned-by": "ebs.csi.aws.com"});
    create_pv(&c, doc).await;
    create_claim(&c, claim_doc("data", Some(&pv_name))).await;
    wait_claim_phase(&c, "data", "Bound").await;
    assert!(ebs_exists(&volume).await);

    c.kubectl_ok(&["delete", "pvc", "data"]);
    wait_gone(&format!("PV {pv_name} deleted"), || c.pv(&pv_name)).await;
    assert!(
        !ebs_exists(&volume).await,
        "the Delete policy deleted EBS volume {volume}"
    );

    // A Delete PV that no provisioner made has no deleter: it goes Failed, the volume stays.
    let static_pv = c.pv_name("static");
    let kept = ebs_volume(ZONE).await;
    create_pv(
        &c,
        ebs_pv(&c, &static_pv, &kept, ZONE, Some("other"), "Delete"),
    )
    .await;
    create_claim(&c, claim_doc("other", Some(&static_pv))).await;
    wait_claim_phase(&c, "other", "Bound").await;
    c.kubectl_ok(&["delete", "pvc", "other"]);
    let failed = wait_pv_phase(&c, &static_pv, "Failed").await;
    assert!(failed
        .status
        .unwrap()
        .message
        .unwrap()
        .contains("no deletable volume plugin matched"));
    assert!(ebs_exists(&kept).await);
}

// ------------------------------------------------------------------ protection

#[tokio::test]
async fn standin_a_claim_in_use_stays_terminating_until_its_pod_goes() {
    let c = Cluster::new("k8s_protect").await;
    let (pv_name, _) = running_sts(&c, "db", ZONE, "Retain").await;

    let out = c.kubectl_ok(&["delete", "pvc", "data-db-0", "--wait=false"]);
    assert!(out.contains("deleted"), "{out}");
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let claim = c
            .claim("data-db-0")
            .await
            .expect("the claim in use is still there");
        assert!(
            claim.metadata.deletion_timestamp.is_some(),
            "Terminating: deletionTimestamp set"
        );
        assert_eq!(claim.finalizers(), ["kubernetes.io/pvc-protection"]);
        assert_eq!(phase_of_claim(&claim), "Bound");
        assert_eq!(phase_of_pv(&c.pv(&pv_name).await.unwrap()), "Bound");
    }
    // A Bound PV is protected too: deleting it leaves it Terminating.
    c.kubectl_ok(&["delete", "pv", &pv_name, "--wait=false"]);
    let pv = c.pv(&pv_name).await.unwrap();
    assert!(pv.metadata.deletion_timestamp.is_some() && phase_of_pv(&pv) == "Bound");

    // The pod goes (scale to 0): the claim goes, then the PV is released and goes.
    c.kubectl_ok(&["scale", "statefulset", "db", "--replicas=0"]);
    wait_gone("pod db-0 gone", || c.pod("db-0")).await;
    wait_gone("PVC data-db-0 gone", || c.claim("data-db-0")).await;
    wait_gone("PV gone once released", || c.pv(&pv_name)).await;
}

// ------------------------------------------------------------------ StatefulSet

#[tokio::test]
async fn standin_scale_up_after_the_claim_was_deleted_creates_a_new_empty_claim() {
    let c = Cluster::new("k8s_trap").await;
    let (pv_name, _) = running_sts(&c, "ch", ZONE, "Retain").await;
    let old_uid = c.claim("data-ch-0").await.unwrap().uid().unwrap();
    let sts = c.api::<StatefulSet>().get("ch").await.unwrap();
    let pod = c.pod("ch-0").await.unwrap();
    assert_eq!(pod.owner_references()[0].uid, sts.uid().unwrap());
    assert_eq!(pod.labels()["statefulset.kubernetes.io/pod-name"], "ch-0");

    // Scale down through the scale subresource (merge patch, as kubectl scale sends).
    let scale = c
        .api::<StatefulSet>()
        .patch_scale(
            "ch",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await
        .unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(0));
    wait_gone("pod ch-0 gone", || c.pod("ch-0")).await;
    assert!(
        c.claim("data-ch-0").await.is_some(),
        "whenScaled: Retain keeps the claim on scale-down"
    );

    c.kubectl_ok(&["delete", "pvc", "data-ch-0"]);
    wait_pv_phase(&c, &pv_name, "Released").await;
    // Scale up with no claim in place: the controller makes a new one from the template.
    c.kubectl_ok(&["scale", "statefulset", "ch", "--replicas=1"]);
    let fresh = wait_for("a new claim data-ch-0", || async {
        c.claim("data-ch-0").await
    })
    .await;
    assert_ne!(fresh.uid().unwrap(), old_uid, "a different claim");
    assert_eq!(
        fresh.spec.as_ref().unwrap().volume_name,
        None,
        "not bound to the old PV: an empty volume"
    );
    assert_eq!(fresh.labels()["app"], "ch", "labelled from the selector");
    let pod = wait_for("pod ch-0 re-created", || async { c.pod("ch-0").await }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pod = c.pod("ch-0").await.unwrap_or(pod);
    assert!(!pod_ready(&pod), "the pod waits for its (unbindable) claim");
    assert_eq!(
        phase_of_claim(&c.claim("data-ch-0").await.unwrap()),
        "Pending"
    );
    assert_eq!(
        phase_of_pv(&c.pv(&pv_name).await.unwrap()),
        "Released",
        "the old PV is not reused"
    );
    let created = c.events_about("ch").await;
    assert!(
        created
            .iter()
            .any(|e| e.reason.as_deref() == Some("SuccessfulCreate")
                && e.message.as_deref()
                    == Some("create Claim data-ch-0 Pod ch-0 in StatefulSet ch success")),
        "the controller reports the claim it made: {created:?}"
    );
}

#[tokio::test]
async fn standin_statefulset_makes_ordered_pods_and_scales_down_from_the_top() {
    let c = Cluster::new("k8s_order").await;
    let mut claims = Vec::new();
    for i in 0..3 {
        let pv = c.pv_name(&format!("pv{i}"));
        let claim = format!("data-web-{i}");
        create_pv(
            &c,
            ebs_pv(
                &c,
                &pv,
                &ebs_volume(ZONE).await,
                ZONE,
                Some(&claim),
                "Retain",
            ),
        )
        .await;
        create_claim(&c, claim_doc(&claim, Some(&pv))).await;
        claims.push(claim);
    }
    let start = c
        .api::<Pod>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    create_sts(&c, sts_doc("web", 3)).await;
    for i in 0..3 {
        wait_pod_ready(&c, &format!("web-{i}")).await;
    }
    // OrderedReady: pod N+1 is created only after pod N is Ready.
    let mut events = c
        .api::<Pod>()
        .watch(&WatchParams::default().timeout(1), &start)
        .await
        .unwrap()
        .boxed();
    let mut order = Vec::new();
    while let Some(ev) = events.try_next().await.unwrap() {
        match ev {
            WatchEvent::Added(p) => order.push(format!("add {}", p.name_any())),
            WatchEvent::Modified(p) if pod_ready(&p) => {
                order.push(format!("ready {}", p.name_any()))
            }
            _ => {}
        }
    }
    order.dedup();
    assert_eq!(
        order,
        [
            "add web-0",
            "ready web-0",
            "add web-1",
            "ready web-1",
            "add web-2",
            "ready web-2"
        ]
    );
    let sts = wait_for("status.readyReplicas 3", || async {
        let s = c.api::<StatefulSet>().get("web").await.unwrap();
        (s.status.as_ref()?.ready_replicas == Some(3)).then_some(s)
    })
    .await;
    assert_eq!(
        sts.status.unwrap().observed_generation,
        sts.metadata.generation
    );

    let listed = c
        .api::<Pod>()
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 3, "labelSelector lists the set's pods");
    assert!(c
        .api::<Pod>()
        .list(&ListParams::default().labels("app=other"))
        .await
        .unwrap()
        .items
        .is_empty());

    c.kubectl_ok(&["scale", "sts", "web", "--replicas=1"]);
    wait_gone("web-2 gone", || c.pod("web-2")).await;
    assert!(c.pod("web-1").await.is_some(), "web-2 goes before web-1");
    wait_gone("web-1 gone", || c.pod("web-1")).await;
    assert!(c.pod("web-0").await.is_some());
    for claim in &claims {
        assert!(
            c.claim(claim).await.is_some(),
            "scale-down keeps claims (whenScaled: Retain)"
        );
    }
}

// ------------------------------------------------------------------ conflicts, patch

#[tokio::test]
async fn standin_a_stale_resource_version_gets_409_with_a_status_body() {
    let c = Cluster::new("k8s_conflict").await;
    let pv_name = c.pv_name("pv");
    let stale = create_pv(
        &c,
        ebs_pv(&c, &pv_name, "vol-00000000000000001", ZONE, None, "Delete"),
    )
    .await;
    wait_pv_phase(&c, &pv_name, "Available").await;

    let err = api_status(
        c.pvs()
            .replace(&pv_name, &PostParams::default(), &stale)
            .await,
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        err.status,
        Some(kube::core::response::StatusSummary::Failure)
    );
    assert_eq!(
        err.message,
        format!("Operation cannot be fulfilled on persistentvolumes \"{pv_name}\": the object has been \
                 modified; please apply your changes to the latest version and try again")
    );
    assert_eq!(err.details.unwrap().name, pv_name);

    // The current version is accepted, and bumps the resourceVersion.
    let mut current = c.pv(&pv_name).await.unwrap();
    current
        .spec
        .as_mut()
        .unwrap()
        .persistent_volume_reclaim_policy = Some("Retain".into());
    let updated = c
        .pvs()
        .replace(&pv_name, &PostParams::default(), &current)
        .await
        .unwrap();
    assert_ne!(updated.resource_version(), current.resource_version());

    // A merge patch carrying a stale resourceVersion is a precondition too.
    let patch = json!({"metadata": {"resourceVersion": stale.resource_version()}, "spec": {"persistentVolumeReclaimPolicy": "Delete"}});
    let err = api_status(
        c.pvs()
            .patch(&pv_name, &PatchParams::default(), &Patch::Merge(patch))
            .await,
    );
    assert_eq!(err.code, 409);

    // kubectl replace with the stale object: the same refusal.
    let mut doc = serde_json::to_value(&stale).unwrap();
    doc["metadata"]["labels"]["x"] = json!("y");
    let path = std::env::temp_dir().join(format!("{pv_name}.json"));
    std::fs::write(&path, doc.to_string()).unwrap();
    let err = c.kubectl_err(&["replace", "-f", path.to_str().unwrap()]);
    std::fs::remove_file(&path).ok();
    assert!(err.contains("the object has been modified"), "{err}");

    // Scale with a precondition: PUT …/scale with a stale resourceVersion is 409.
    create_sts(&c, sts_doc("s", 0)).await;
    let scale = c.api::<StatefulSet>().get_scale("s").await.unwrap();
    c.api::<StatefulSet>()
        .patch_scale(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await
        .unwrap();
    c.kubectl_ok(&["label", "sts", "s", "touched=yes"]);
    let err = api_status(
        c.api::<StatefulSet>()
            .replace_scale("s", &PostParams::default(), &scale)
            .await,
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    // kubectl's --current-replicas precondition (GET scale, PUT scale with its version)
    // and the omitted zero: `"spec":{}` means 0 replicas.
    c.kubectl_ok(&["scale", "sts", "s", "--current-replicas=0", "--replicas=0"]);
    let err = c.kubectl_err(&["scale", "sts", "s", "--current-replicas=2", "--replicas=0"]);
    assert!(err.contains("Expected replicas to be 2, was 0"), "{err}");
}

#[tokio::test]
async fn standin_merge_and_json_patches_through_kubectl() {
    let c = Cluster::new("k8s_patch").await;
    let pv_name = c.pv_name("pv");
    create_pv(
        &c,
        ebs_pv(&c, &pv_name, "vol-00000000000000002", ZONE, None, "Delete"),
    )
    .await;

    // Step 6 of the swap, as kubectl sends it.
    c.kubectl_ok(&[
        "patch",
        "pv",
        &pv_name,
        "--type=merge",
        "-p",
        r#"{"spec":{"persistentVolumeReclaimPolicy":"Retain"}}"#,
    ]);
    let policy = |pv: PersistentVolume| pv.spec.unwrap().persistent_volume_reclaim_policy.unwrap();
    assert_eq!(policy(c.pv(&pv_name).await.unwrap()), "Retain");
    c.kubectl_ok(&[
        "patch",
        "pv",
        &pv_name,
        "--type=json",
        "-p",
        r#"[{"op":"test","path":"/spec/persistentVolumeReclaimPolicy","value":"Retain"},
            {"op":"replace","path":"/spec/persistentVolumeReclaimPolicy","value":"Delete"},
            {"op":"add","path":"/metadata/labels/flow~1task","value":"t1"}]"#,
    ]);
    let pv = c.pv(&pv_name).await.unwrap();
    assert_eq!(pv.labels()["flow/task"], "t1");
    assert_eq!(policy(pv), "Delete");
    // A failing test operation fails the whole patch.
    let err = c.kubectl_err(&[
        "patch",
        "pv",
        &pv_name,
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/persistentVolumeReclaimPolicy","value":"Retain"},
            {"op":"test","path":"/spec/storageClassName","value":"gp3"}]"#,
    ]);
    assert!(err.contains("test operation"), "{err}");
    assert_eq!(policy(c.pv(&pv_name).await.unwrap()), "Delete");
    // The volume source is immutable (a swap must create a new PV).
    let err = c.kubectl_err(&[
        "patch",
        "pv",
        &pv_name,
        "--type=merge",
        "-p",
        r#"{"spec":{"csi":{"volumeHandle":"vol-other"}}}"#,
    ]);
    assert!(
        err.contains("spec.persistentvolumesource is immutable after creation"),
        "{err}"
    );

    // labelSelector on list, through both clients.
    let listed = c.kubectl_ok(&["get", "pv", "-l", "flow/task=t1", "-o", "name"]);
    assert_eq!(listed.trim(), format!("persistentvolume/{pv_name}"));
    let lp = ListParams::default().labels(&format!("flow-test={},flow/task in (t1,t2)", c.ns));
    assert_eq!(c.pvs().list(&lp).await.unwrap().items.len(), 1);
    let lp = ListParams::default().labels(&format!("flow-test={},!flow/task", c.ns));
    assert!(c.pvs().list(&lp).await.unwrap().items.is_empty());
}

// ------------------------------------------------------------------ delete propagation

#[tokio::test]
async fn standin_delete_honours_propagation_policies() {
    let c = Cluster::new("k8s_propagate").await;
    for name in ["orphan", "fg", "bg"] {
        let mut doc = sts_doc(name, 1);
        doc["spec"]["volumeClaimTemplates"] = json!([]);
        create_sts(&c, doc).await;
        wait_pod_ready(&c, &format!("{name}-0")).await;
    }
    // Orphan: the StatefulSet goes, its pod stays without an owner.
    c.api::<StatefulSet>()
        .delete("orphan", &DeleteParams::orphan())
        .await
        .unwrap();
    wait_gone("sts orphan gone", || async {
        c.api::<StatefulSet>().get_opt("orphan").await.unwrap()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pod = c.pod("orphan-0").await.expect("an orphaned pod stays");
    assert!(pod.owner_references().is_empty());

    // Foreground: the owner waits, with the foregroundDeletion finalizer, for its pods.
    let fg = c
        .api::<StatefulSet>()
        .delete("fg", &DeleteParams::foreground())
        .await
        .unwrap();
    let fg = fg
        .left()
        .expect("the StatefulSet is returned while it waits");
    assert!(fg.finalizers().contains(&"foregroundDeletion".to_string()));
    assert!(fg.metadata.deletion_timestamp.is_some());
    wait_gone("pod fg-0 gone", || c.pod("fg-0")).await;
    wait_gone("sts fg gone after its pod", || async {
        c.api::<StatefulSet>().get_opt("fg").await.unwrap()
    })
    .await;

    // Background (kubectl's default): the owner goes at once, the pod after.
    c.kubectl_ok(&["delete", "sts", "bg"]);
    assert!(c
        .api::<StatefulSet>()
        .get_opt("bg")
        .await
        .unwrap()
        .is_none());
    wait_gone("pod bg-0 collected", || c.pod("bg-0")).await;

    // Preconditions: a DELETE with a wrong uid is a 409.
    let pv_name = c.pv_name("pre");
    create_pv(
        &c,
        ebs_pv(&c, &pv_name, "vol-00000000000000003", ZONE, None, "Retain"),
    )
    .await;
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("wrong".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    let err = api_status(c.pvs().delete(&pv_name, &dp).await);
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert!(
        err.message
            .contains("Precondition failed: UID in precondition: wrong"),
        "{}",
        err.message
    );
}

// ------------------------------------------------------------------ zones and attach

#[tokio::test]
async fn standin_zone_mismatch_keeps_the_pod_pending_with_failed_attach() {
    let c = Cluster::new("k8s_zone").await;
    // The PV says us-east-1a, the EBS volume is in us-east-1b.
    let volume = ebs_volume(OTHER_ZONE).await;
    let pv_name = c.pv_name("pv");
    create_pv(
        &c,
        ebs_pv(&c, &pv_name, &volume, ZONE, Some("data-z-0"), "Retain"),
    )
    .await;
    create_claim(&c, claim_doc("data-z-0", Some(&pv_name))).await;
    create_sts(&c, sts_doc("z", 1)).await;
    wait_claim_phase(&c, "data-z-0", "Bound").await; // binding does not look at zones

    let event = wait_for("FailedAttachVolume on z-0", || async {
        c.events_about("z-0")
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("FailedAttachVolume"))
    })
    .await;
    let message = event.message.unwrap();
    assert!(
        message.contains("InvalidVolume.ZoneMismatch") && message.contains(&volume),
        "{message}"
    );
    let pod = c.pod("z-0").await.unwrap();
    assert_eq!(
        pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some("standin-node-us-east-1a"),
        "scheduled by the PV's affinity"
    );
    assert_eq!(
        pod.status.as_ref().unwrap().phase.as_deref(),
        Some("Pending")
    );
    assert!(!pod_ready(&pod));
    let err = c.kubectl_err(&["wait", "--for=condition=Ready", "pod/z-0", "--timeout=1s"]);
    assert!(err.contains("timed out"), "{err}");

    // A PV whose volume does not exist in EC2 fails to attach with NotFound.
    let missing = c.pv_name("missing");
    create_pv(
        &c,
        ebs_pv(
            &c,
            &missing,
            "vol-0000000000000dead",
            ZONE,
            Some("data-m-0"),
            "Retain",
        ),
    )
    .await;
    create_claim(&c, claim_doc("data-m-0", Some(&missing))).await;
    create_sts(&c, sts_doc("m", 1)).await;
    let event = wait_for("FailedAttachVolume on m-0", || async {
        c.events_about("m-0")
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("FailedAttachVolume"))
    })
    .await;
    assert!(event.message.unwrap().contains("NotFound"));

    // Two PVs in different zones for one pod: unschedulable (volume node affinity conflict).
    let mut doc = sts_doc("two", 1);
    doc["spec"]["volumeClaimTemplates"] = json!([
        doc["spec"]["volumeClaimTemplates"][0].clone(),
        {"metadata": {"name": "logs"}, "spec": doc["spec"]["volumeClaimTemplates"][0]["spec"].clone()}
    ]);
    for (tmpl, zone) in [("data", ZONE), ("logs", OTHER_ZONE)] {
        let pv = c.pv_name(&format!("two-{tmpl}"));
        let claim = format!("{tmpl}-two-0");
        create_pv(
            &c,
            ebs_pv(
                &c,
                &pv,
                &ebs_volume(zone).await,
                zone,
                Some(&claim),
                "Retain",
            ),
        )
        .await;
        create_claim(&c, claim_doc(&claim, Some(&pv))).await;
    }
    create_sts(&c, doc).await;
    let event = wait_for("FailedScheduling on two-0", || async {
        c.events_about("two-0").await.into_iter().find(|e| {
            e.reason.as_deref() == Some("FailedScheduling")
                && e.message
                    .as_deref()
                    .is_some_and(|m| m.contains("volume node affinity conflict"))
        })
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
}

// ------------------------------------------------------------------ watch

#[tokio::test]
async fn standin_watch_streams_changes_in_order_and_honours_selectors() {
    let c = Cluster::new("k8s_watch").await;
    let claims = c.api::<PersistentVolumeClaim>();
    let start = claims
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let all = claims
        .watch(&WatchParams::default().timeout(3), &start)
        .await
        .unwrap();
    let labelled = claims
        .watch(
            &WatchParams::default().labels("keep=yes").timeout(3),
            &start,
        )
        .await
        .unwrap();

    let mut doc = claim_doc("w", None);
    doc["metadata"]["labels"] = json!({"keep": "yes"});
    create_claim(&c, doc).await;
    claims
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"keep": "no"}}})),
        )
        .await
        .unwrap();
    claims.delete("w", &DeleteParams::default()).await.unwrap();

    let seen: Vec<(String, String)> = all
        .take_while(|e| futures::future::ready(!matches!(e, Ok(WatchEvent::Deleted(_)))))
        .map(|e| match e.unwrap() {
            WatchEvent::Added(p) => (
                "ADDED".to_string(),
                p.labels().get("keep").cloned().unwrap_or_default(),
            ),
            WatchEvent::Modified(p) => (
                "MODIFIED".to_string(),
                p.labels().get("keep").cloned().unwrap_or_default(),
            ),
            other => (format!("{other:?}"), String::new()),
        })
        .collect()
        .await;
    assert_eq!(
        seen.first(),
        Some(&("ADDED".to_string(), "yes".to_string()))
    );
    assert!(
        seen.contains(&("MODIFIED".to_string(), "no".to_string())),
        "{seen:?}"
    );
    let mut versions = Vec::new();
    let filtered: Vec<&str> = labelled
        .take(2)
        .map(|e| match e.unwrap() {
            WatchEvent::Added(p) => {
                versions.push(p.resource_version().unwrap().parse::<u64>().unwrap());
                "ADDED"
            }
            // The label no longer matches: the selector's watch reports it gone.
            WatchEvent::Deleted(p) => {
                versions.push(p.resource_version().unwrap().parse::<u64>().unwrap());
                "DELETED"
            }
            _ => "OTHER",
        })
        .collect()
        .await;
    assert_eq!(filtered, ["ADDED", "DELETED"]);
    assert!(versions[0] < versions[1]);

    // kubectl's watch prints the object as it changes.
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args([
            "--namespace",
            &c.ns,
            "get",
            "pvc",
            "--watch",
            "--output-watch-events",
            "-o",
            "json",
            "--request-timeout",
            "3s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    create_claim(&c, claim_doc("k", None)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill().ok();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with(r#"{"type":"ADDED""#) && l.contains(r#""name":"k""#)),
        "kubectl --watch printed {text:?}"
    );

    // A watch from an unparsable version is refused.
    let err = api_status(
        claims
            .watch(&WatchParams::default(), "not-a-version")
            .await
            .map(|_| ()),
    );
    assert_eq!(err.code, 400);
}

// ------------------------------------------------------------------ bad input

#[tokio::test]
async fn standin_refuses_bad_objects_with_the_api_servers_status() {
    let c = Cluster::new("k8s_bad").await;
    let claims = c.api::<PersistentVolumeClaim>();

    let mut doc = claim_doc("Bad_Name", None);
    let err = api_status(
        claims
            .create(
                &PostParams::default(),
                &serde_json::from_value(doc.clone()).unwrap(),
            )
            .await,
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert!(
        err.message
            .starts_with("PersistentVolumeClaim \"Bad_Name\" is invalid: metadata.name"),
        "{}",
        err.message
    );

    doc["metadata"]["name"] = json!("no-modes");
    doc["spec"]["accessModes"] = json!([]);
    let err = api_status(
        claims
            .create(
                &PostParams::default(),
                &serde_json::from_value(doc).unwrap(),
            )
            .await,
    );
    assert_eq!(err.code, 422);
    let causes = err.details.unwrap().causes;
    assert_eq!(causes[0].field, "spec.accessModes");

    // Label keys follow the label syntax (prefix/name).
    let mut bad_label = claim_doc("labelled", None);
    bad_label["metadata"]["labels"] = json!({"bad key!": "v"});
    let err = api_status(
        claims
            .create(
                &PostParams::default(),
                &serde_json::from_value(bad_label).unwrap(),
            )
            .await,
    );
    assert_eq!(err.code, 422);
    assert!(
        err.message
            .contains("\"bad key!\": name part must consist of"),
        "{}",
        err.message
    );

    // A PV needs a volume source.
    let err = c.kubectl_create(
        &json!({"apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": c.pv_name("nosource"), "labels": {"flow-test": c.ns}},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"]}}),
        &[],
    );
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("must specify a volume type"));

    // kubectl's default strict field validation names an unknown field.
    let mut typo = claim_doc("typo", None);
    typo["spec"]["storageClass"] = json!("");
    let out = c.kubectl_create(&typo, &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field \"spec.storageClass\""));
    assert!(c.claim("typo").await.is_none());

    // Same name twice: 409 AlreadyExists.
    create_claim(&c, claim_doc("twice", None)).await;
    let err = api_status(
        claims
            .create(
                &PostParams::default(),
                &serde_json::from_value(claim_doc("twice", None)).unwrap(),
            )
            .await,
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "AlreadyExists"));

    // Unknown object, unknown namespace, read-only pods, bad selectors, server-side apply.
    let err = api_status(claims.get("nothing").await);
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
    assert_eq!(err.message, "persistentvolumeclaims \"nothing\" not found");
    let elsewhere: Api<PersistentVolumeClaim> =
        Api::namespaced(c.client.clone(), "no-such-namespace");
    let err = api_status(
        elsewhere
            .create(
                &PostParams::default(),
                &serde_json::from_value(claim_doc("x", None)).unwrap(),
            )
            .await,
    );
    assert_eq!(
        (err.code, err.message.as_str()),
        (404, "namespaces \"no-such-namespace\" not found")
    );
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
    )
    .unwrap();
    let err = api_status(c.api::<Pod>().create(&PostParams::default(), &pod).await);
    assert_eq!(err.code, 405);
    assert!(
        err.message.contains("create a StatefulSet instead"),
        "{}",
        err.message
    );
    let err = api_status(claims.list(&ListParams::default().labels("a in (b")).await);
    assert_eq!((err.code, err.reason.as_str()), (400, "BadRequest"));
    let err = api_status(
        claims
            .list(&ListParams::default().fields("spec.volumeName=x"))
            .await,
    );
    assert!(
        err.message
            .contains("field label not supported: spec.volumeName"),
        "{}",
        err.message
    );
    let err = api_status(
        claims
            .patch(
                "twice",
                &PatchParams::apply("flow"),
                &Patch::Apply(json!({"metadata": {"labels": {"a": "b"}}})),
            )
            .await,
    );
    assert_eq!(err.code, 415);

    // The StatefulSet's claim templates are immutable (a swap cannot edit them).
    create_sts(&c, sts_doc("fixed", 0)).await;
    let err = c.kubectl_err(&["patch", "sts", "fixed", "--type=json", "-p",
        r#"[{"op":"replace","path":"/spec/volumeClaimTemplates/0/spec/resources/requests/storage","value":"20Gi"}]"#]);
    assert!(
        err.contains("updates to statefulset spec for fields other than"),
        "{err}"
    );
}

// ------------------------------------------------------------------ the swap

/// ENGINES-NEXT §2.6 end to end with kubectl, the calls of §2.8: scale down, keep the
/// old volume (Retain), replace the claim by one on a new PV, scale up, pod Ready on it.
#[tokio::test]
async fn standin_the_documented_swap_sequence_works_with_kubectl() {
    let c = Cluster::new("k8s_swap").await;
    let (old_pv, old_volume) = running_sts(&c, "ch", ZONE, "Delete").await;
    c.kubectl_ok(&[
        "annotate",
        "pv",
        &old_pv,
        "pv.kubernetes.io/provisioned-by=ebs.csi.aws.com",
    ]);

    c.kubectl_ok(&["scale", "statefulset", "ch", "--replicas=0"]);
    c.kubectl_ok(&["wait", "--for=delete", "pod/ch-0", "--timeout=10s"]);
    let pv = c.kubectl_ok(&[
        "get",
        "pvc",
        "data-ch-0",
        "-o",
        "jsonpath={.spec.volumeName}",
    ]);
    assert_eq!(pv, old_pv);
    c.kubectl_ok(&[
        "patch",
        "pv",
        &old_pv,
        "--type=merge",
        "-p",
        r#"{"spec":{"persistentVolumeReclaimPolicy":"Retain"}}"#,
    ]);
    c.kubectl_ok(&["delete", "pvc", "data-ch-0"]);

    let new_volume = ebs_volume(ZONE).await;
    let new_pv = c.pv_name("new");
    let mut pv_doc = ebs_pv(&c, &new_pv, &new_volume, ZONE, Some("data-ch-0"), "Retain");
    pv_doc["metadata"]["labels"]["flow/task"] = json!("swap");
    let out = c.kubectl_create(&pv_doc, &["--validate=false"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = c.kubectl_create(&claim_doc("data-ch-0", Some(&new_pv)), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.kubectl_ok(&[
        "wait",
        "--for=jsonpath={.status.phase}=Bound",
        "pvc/data-ch-0",
        "--timeout=10s",
    ]);

    c.kubectl_ok(&["scale", "statefulset", "ch", "--replicas=1"]);
    c.kubectl_ok(&["wait", "--for=condition=Ready", "pod/ch-0", "--timeout=10s"]);
    let bound = c.kubectl_ok(&[
        "get",
        "pvc",
        "data-ch-0",
        "-o",
        "jsonpath={.spec.volumeName}",
    ]);
    assert_eq!(bound, new_pv);
    assert_eq!(phase_of_pv(&c.pv(&old_pv).await.unwrap()), "Released");
    assert!(
        ebs_exists(&old_volume).await,
        "Retain before the claim's delete kept the old volume"
    );
    c.kubectl_ok(&["delete", "pv", &old_pv, "--wait=false"]);
    wait_gone("old PV deleted", || c.pv(&old_pv)).await;
    assert!(
        ebs_exists(&old_volume).await,
        "deleting a Retain PV keeps its EBS volume"
    );
}

/// A field of the wrong JSON type anywhere the stand-in reads is a 400 naming the field,
/// as the API server's decoder answers ("cannot be handled as a …"), never a 500.
/// Sent as raw HTTP: kubectl and kube would refuse to build such bodies.
#[tokio::test]
async fn standin_wrong_json_types_are_refused_with_400_naming_the_field() {
    let c = Cluster::new("k8s_types").await;
    let pv_path = "/api/v1/persistentvolumes".to_string();
    let claim_path = format!("/api/v1/namespaces/{}/persistentvolumeclaims", c.ns);
    let sts_path = format!("/apis/apps/v1/namespaces/{}/statefulsets", c.ns);
    let pv = ebs_pv(
        &c,
        &c.pv_name("types"),
        "vol-00000000000000004",
        ZONE,
        None,
        "Retain",
    );
    let cases: Vec<(&str, Value, Value, &str)> = vec![
        (
            &pv_path,
            pv.clone(),
            json!({"metadata": "not-an-object"}),
            "metadata",
        ),
        (
            &pv_path,
            pv.clone(),
            json!({"metadata": {"labels": ["a"]}}),
            "metadata.labels",
        ),
        (
            &pv_path,
            pv.clone(),
            json!({"metadata": {"finalizers": "x"}}),
            "metadata.finalizers",
        ),
        (&pv_path, pv.clone(), json!({"spec": ["a"]}), "spec"),
        (
            &pv_path,
            pv.clone(),
            json!({"spec": {"accessModes": "ReadWriteOnce"}}),
            "spec.accessModes",
        ),
        (
            &pv_path,
            pv.clone(),
            json!({"spec": {"capacity": "10Gi"}}),
            "spec.capacity",
        ),
        (
            &pv_path,
            pv.clone(),
            json!({"spec": {"claimRef": "data"}}),
            "spec.claimRef",
        ),
        (
            &pv_path,
            pv.clone(),
            json!({"spec": {"csi": {"volumeHandle": 7}}}),
            "spec.csi.volumeHandle",
        ),
        (
            &pv_path,
            pv.clone(),
            json!({"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": {"a": 1}}}}}),
            "spec.nodeAffinity.required.nodeSelectorTerms",
        ),
        (
            &claim_path,
            claim_doc("types", None),
            json!({"spec": {"resources": {"requests": ["10Gi"]}}}),
            "spec.resources.requests",
        ),
        (
            &claim_path,
            claim_doc("types", None),
            json!({"spec": {"volumeName": 3}}),
            "spec.volumeName",
        ),
        (
            &sts_path,
            sts_doc("types", 1),
            json!({"spec": {"replicas": "3"}}),
            "spec.replicas",
        ),
        (
            &sts_path,
            sts_doc("types", 1),
            json!({"spec": {"volumeClaimTemplates": {"a": 1}}}),
            "spec.volumeClaimTemplates",
        ),
        (
            &sts_path,
            sts_doc("types", 1),
            json!({"spec": {"template": {"spec": {"containers": {"name": "c"}}}}}),
            "spec.template.spec.containers",
        ),
        (
            &sts_path,
            sts_doc("types", 1),
            json!({"spec": {"selector": {"matchLabels": "app"}}}),
            "spec.selector.matchLabels",
        ),
    ];
    for (path, mut doc, patch, field) in cases {
        json_merge(&mut doc, patch);
        let (code, body) = raw_request("POST", path, &doc.to_string());
        let status: Value = serde_json::from_str(&body)
            .unwrap_or_else(|_| panic!("{field}: not a Status body: {body}"));
        assert_eq!(
            (code, status["reason"].as_str()),
            (400, Some("BadRequest")),
            "{field}: {body}"
        );
        let message = status["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("field {field} ")),
            "{field}: {message}"
        );
    }
    // The same through PATCH: a merge patch that makes a field the wrong type.
    let name = c.pv_name("typed");
    create_pv(
        &c,
        ebs_pv(&c, &name, "vol-00000000000000005", ZONE, None, "Retain"),
    )
    .await;
    let err = c.kubectl_err(&[
        "patch",
        "pv",
        &name,
        "--type=merge",
        "-p",
        r#"{"spec":{"accessModes":{"a":1}}}"#,
    ]);
    assert!(
        err.contains("(BadRequest)") && err.contains("field spec.accessModes "),
        "{err}"
    );
    assert!(c.pv(&name).await.is_some());
    // The other bodies: Scale, DeleteOptions, and the status subresource.
    create_sts(&c, sts_doc("types", 0)).await;
    let sts = format!("{sts_path}/types");
    let others: Vec<(&str, String, &str, &str, &str)> = vec![
        (
            "PUT",
            format!("{sts}/scale"),
            "application/json",
            r#"{"spec":"x"}"#,
            "spec",
        ),
        (
            "PUT",
            format!("{sts}/scale"),
            "application/json",
            r#"{"metadata":"x","spec":{"replicas":1}}"#,
            "metadata",
        ),
        (
            "PATCH",
            format!("{sts}/scale"),
            "application/merge-patch+json",
            r#"{"metadata":{"resourceVersion":7}}"#,
            "metadata.resourceVersion",
        ),
        (
            "DELETE",
            sts.clone(),
            "application/json",
            r#"{"preconditions":"x"}"#,
            "preconditions",
        ),
        (
            "DELETE",
            sts.clone(),
            "application/json",
            r#"{"gracePeriodSeconds":"x"}"#,
            "gracePeriodSeconds",
        ),
        (
            "PATCH",
            format!("{sts}/status"),
            "application/merge-patch+json",
            r#"{"status":"x"}"#,
            "status",
        ),
        (
            "PATCH",
            format!("{sts}/status"),
            "application/merge-patch+json",
            r#"{"status":{"replicas":"x"}}"#,
            "status.replicas",
        ),
    ];
    for (method, path, ctype, body, field) in others {
        let (code, answer) = raw_request_typed(method, &path, ctype, body);
        let status: Value =
            serde_json::from_str(&answer).unwrap_or_else(|_| panic!("{method} {path}: {answer}"));
        assert_eq!(
            (code, status["reason"].as_str()),
            (400, Some("BadRequest")),
            "{method} {path} {body}: {answer}"
        );
        assert!(
            status["message"]
                .as_str()
                .unwrap()
                .contains(&format!("field {field} ")),
            "{answer}"
        );
    }
    assert!(
        c.api::<StatefulSet>()
            .get_opt("types")
            .await
            .unwrap()
            .is_some(),
        "the refused DELETEs deleted nothing"
    );

    // Not JSON at all.
    let (code, body) = raw_request("POST", &claim_path, "{not json");
    assert_eq!(code, 400, "{body}");
}

/// One HTTP/1.1 request to the stand-in with a JSON body; (status code, body).
fn raw_request(method: &str, path: &str, body: &str) -> (u16, String) {
    raw_request_typed(method, path, "application/json", body)
}

fn raw_request_typed(method: &str, path: &str, content_type: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let url = support::env("FLOW_TEST_K8S_URL");
    let authority = url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(authority).expect("connect to the stand-in");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

fn json_merge(doc: &mut Value, patch: Value) {
    match (doc, patch) {
        (Value::Object(d), Value::Object(p)) => {
            for (k, v) in p {
                match d.get_mut(&k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        json_merge(existing, v)
                    }
                    _ => {
                        d.insert(k, v);
                    }
                }
            }
        }
        (d, p) => *d = p,
    }
}
