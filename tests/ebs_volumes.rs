//! `[[volumes]]` entries end to end: `flow apply` snapshots a StatefulSet's EBS volume,
//! makes a new volume of it and binds it (ebs-copy: a new claim in another namespace;
//! ebs-swap: the same claim, the old PV kept with Retain), on the test stack's EC2
//! stand-in (`FLOW_TEST_EC2_URL`: moto with real pending/creating states and
//! ClientToken) and Kubernetes API stand-in (`FLOW_TEST_KUBECONFIG`: PV binder,
//! pvc-protection, a StatefulSet controller that makes a missing claim from its
//! template, pods Ready only when their EBS volume exists in the PV's zone).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::Filter;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{json, Value};

const ZONE: &str = "us-east-1a";
const OTHER_ZONE: &str = "us-east-1b";
const CLAIM: &str = "data-db-0";

/// Namespaces of one test on the stand-in, a StatefulSet `db` with one replica on an
/// EBS volume, and a plan folder.
struct Site {
    client: kube::Client,
    source_ns: String,
    target_ns: String,
    old_pv: String,
    old_volume: String,
    /// Signs this test's EC2 requests (the stand-in scopes rules and logs by it).
    key: String,
    plan_name: String,
    dir: tempfile::TempDir,
}

impl Site {
    async fn new(prefix: &str, reclaim: &str) -> Site {
        let client = kube_client().await.expect("a kube client for the stand-in");
        let name = support::unique_name(prefix).replace('_', "-");
        let (source_ns, target_ns) = (format!("{name}-src"), format!("{name}-dst"));
        for ns in [&source_ns, &target_ns] {
            let doc: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
            Api::<Namespace>::all(client.clone())
                .create(&PostParams::default(), &doc)
                .await
                .expect("create a test namespace");
        }
        let old_volume = support::ec2_client()
            .create_volume()
            .availability_zone(ZONE)
            .size(10)
            .volume_type(aws_sdk_ec2::types::VolumeType::Gp2)
            .send()
            .await
            .expect("CreateVolume")
            .volume_id
            .expect("a volume id");
        let old_pv = format!("{name}-old");
        let site = Site {
            client,
            source_ns,
            target_ns,
            old_pv,
            old_volume,
            key: format!("AKIA{}", name.replace('-', "").to_uppercase()),
            plan_name: name.clone(),
            dir: tempfile::tempdir().unwrap(),
        };
        site.create_pv(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": site.old_pv, "labels": {"flow-test": name}},
            "spec": {
                "capacity": {"storage": "10Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": reclaim,
                "storageClassName": "",
                "csi": {"driver": "ebs.csi.aws.com", "volumeHandle": site.old_volume, "fsType": "ext4"},
                "claimRef": {"namespace": site.source_ns, "name": CLAIM},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "topology.ebs.csi.aws.com/zone", "operator": "In", "values": [ZONE]}]}]}}
            }
        }))
        .await;
        let claims: Api<PersistentVolumeClaim> =
            Api::namespaced(site.client.clone(), &site.source_ns);
        claims
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": CLAIM},
                    "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                             "volumeName": site.old_pv,
                             "resources": {"requests": {"storage": "10Gi"}}}
                }))
                .unwrap(),
            )
            .await
            .expect("create the claim");
        site.statefulsets(&site.source_ns)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": "db"},
                    "spec": {
                        "serviceName": "db", "replicas": 1,
                        "selector": {"matchLabels": {"app": "db"}},
                        "template": {"metadata": {"labels": {"app": "db"}},
                                     "spec": {"containers": [{"name": "db", "image": "clickhouse/clickhouse-server"}]}},
                        "volumeClaimTemplates": [{"metadata": {"name": "data"},
                            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                                     "resources": {"requests": {"storage": "10Gi"}}}}]
                    }
                }))
                .unwrap(),
            )
            .await
            .expect("create the StatefulSet");
        site.wait_ready(1).await;
        site
    }

    async fn create_pv(&self, doc: Value) {
        Api::<PersistentVolume>::all(self.client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(doc).unwrap(),
            )
            .await
            .expect("create PV");
    }

    fn statefulsets(&self, ns: &str) -> Api<StatefulSet> {
        Api::namespaced(self.client.clone(), ns)
    }

    async fn statefulset(&self) -> StatefulSet {
        self.statefulsets(&self.source_ns)
            .get("db")
            .await
            .expect("get StatefulSet db")
    }

    async fn claim(&self, ns: &str) -> Option<PersistentVolumeClaim> {
        Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), ns)
            .get_opt(CLAIM)
            .await
            .expect("get claim")
    }

    async fn pv(&self, name: &str) -> Option<PersistentVolume> {
        Api::<PersistentVolume>::all(self.client.clone())
            .get_opt(name)
            .await
            .expect("get PV")
    }

    /// The claim still on the old PV, which is still `Delete`: nothing was replaced.
    async fn assert_untouched(&self) {
        let claim = self.claim(&self.source_ns).await.expect("the claim");
        assert_eq!(claim_pv(&claim), (self.old_pv.clone(), "Bound".into()));
        let old = self.pv(&self.old_pv).await.expect("the old PV");
        let policy = old.spec.and_then(|s| s.persistent_volume_reclaim_policy);
        assert_eq!(
            policy.as_deref(),
            Some("Delete"),
            "nothing touched the old PV"
        );
    }

    async fn wait_ready(&self, replicas: i32) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = self
                .statefulset()
                .await
                .status
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            if ready == replicas {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "StatefulSet db: {ready} of {replicas} Ready after 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes the plan; `entry` is the `[[volumes]]` entry's body after its name.
    fn plan(&self, entry: &str) -> PathBuf {
        let text = format!(
            r#"
[plan]
name = "{name}"

[connections.aws]
kind = "ec2"
endpoint = "{ec2}"
region = "us-east-1"
access_key_id = "${{env:EBS_TEST_KEY_ID}}"
secret_access_key = "${{env:EBS_TEST_SECRET}}"

[connections.k8s]
kind = "kubernetes"
kubeconfig = "{kubeconfig}"

[[volumes]]
name = "db-data"
ec2 = "aws"
source = "k8s"
namespace = "{ns}"
claim = "{CLAIM}"
statefulset = "db"
{entry}
"#,
            name = self.plan_name,
            ec2 = support::env("FLOW_TEST_EC2_URL"),
            kubeconfig = support::env("FLOW_TEST_KUBECONFIG"),
            ns = self.source_ns,
        );
        let path = self.dir.path().join("volumes.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn flow(&self, args: &[&str], plan: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flow"));
        cmd.args(args)
            .arg(plan)
            .env("EBS_TEST_KEY_ID", &self.key)
            .env("EBS_TEST_SECRET", "ebs-test-secret-value")
            .env("NO_COLOR", "1");
        cmd
    }

    fn apply(&self, plan: &Path, resume: bool) -> Output {
        let mut args = vec!["apply"];
        if resume {
            args.push("--resume");
        }
        self.flow(&args, plan).output().expect("flow runs")
    }

    fn ec2(&self) -> aws_sdk_ec2::Client {
        let config = aws_sdk_ec2::config::Builder::new()
            .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
            .region(aws_sdk_ec2::config::Region::new("us-east-1"))
            .endpoint_url(support::env("FLOW_TEST_EC2_URL"))
            .credentials_provider(aws_credential_types::Credentials::new(
                &self.key,
                "x",
                None,
                None,
                "ebs-tests",
            ))
            .build();
        aws_sdk_ec2::Client::from_conf(config)
    }

    /// The snapshots and volumes this plan made (tagged `flow/plan`).
    async fn made(
        &self,
    ) -> (
        Vec<aws_sdk_ec2::types::Snapshot>,
        Vec<aws_sdk_ec2::types::Volume>,
    ) {
        let by_plan = Filter::builder()
            .name("tag:flow/plan")
            .values(&self.plan_name)
            .build();
        let ec2 = self.ec2();
        let snapshots = ec2
            .describe_snapshots()
            .filters(by_plan.clone())
            .send()
            .await
            .expect("DescribeSnapshots")
            .snapshots
            .unwrap_or_default();
        let volumes = ec2
            .describe_volumes()
            .filters(by_plan)
            .send()
            .await
            .expect("DescribeVolumes")
            .volumes
            .unwrap_or_default();
        (snapshots, volumes)
    }

    async fn volume_exists(&self, id: &str) -> bool {
        match self.ec2().describe_volumes().volume_ids(id).send().await {
            Ok(out) => !out.volumes().is_empty(),
            Err(_) => false,
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        // A client of its own: the test's client runs on the test's runtime, which this
        // thread blocks.
        let namespaces = [self.source_ns.clone(), self.target_ns.clone()];
        let old_pv = self.old_pv.clone();
        support::block_on_thread(async move {
            let Ok(client) = kube_client().await else {
                return;
            };
            for ns in namespaces {
                let _ = Api::<Namespace>::all(client.clone())
                    .delete(&ns, &DeleteParams::default())
                    .await;
            }
            let _ = Api::<PersistentVolume>::all(client)
                .delete(&old_pv, &DeleteParams::default())
                .await;
        });
    }
}

async fn kube_client() -> Result<kube::Client, String> {
    let kubeconfig = support::env("FLOW_TEST_KUBECONFIG");
    let kc = Kubeconfig::read_from(&kubeconfig).map_err(|e| e.to_string())?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}",
        support::output_text(out)
    );
}

fn annotations(sts: &StatefulSet) -> Vec<String> {
    sts.metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_keys()
        .filter(|k| k.starts_with("flow/"))
        .collect()
}

fn claim_pv(c: &PersistentVolumeClaim) -> (String, String) {
    (
        c.spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .unwrap_or_default(),
        c.status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default(),
    )
}

fn pv_handle(pv: &PersistentVolume) -> String {
    pv.spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .map(|c| c.volume_handle.clone())
        .unwrap_or_default()
}

fn pv_zone(pv: &PersistentVolume) -> String {
    let json = serde_json::to_value(pv).unwrap();
    json["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
        ["values"][0]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn ebs_copy_binds_a_volume_made_of_a_snapshot_to_a_new_claim_in_another_namespace() {
    let site = Site::new("ebs_copy", "Delete").await;
    let plan = site.plan(&format!(
        "strategy = \"ebs-copy\"\ntarget_namespace = \"{}\"\n",
        site.target_ns
    ));
    // `flow plan` (online) says where the volume is and that the target claim is free.
    let shown = site.flow(&["plan"], &plan).output().unwrap();
    let said = support::output_text(&shown);
    assert!(shown.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "volume db-data: claim {}/{CLAIM} on k8s is on PV {} (EBS {}, 10 GiB, gp2, zone {ZONE}, reclaim policy Delete)",
            site.source_ns, site.old_pv, site.old_volume
        )) && said.contains("is free"),
        "{said}"
    );
    let metrics = site.dir.path().join("volumes.prom");
    let out = site
        .flow(
            &["apply", "--metrics-file", metrics.to_str().unwrap()],
            &plan,
        )
        .output()
        .expect("flow runs");
    assert_ok(&out, "flow apply");
    // The metrics count the entry like a table.
    let prom = std::fs::read_to_string(&metrics).expect("the metrics file");
    let gauge = |name: &str| format!("{name}{{plan=\"{}\"}} ", site.plan_name);
    for (name, value) in [
        ("total_volumes", 1),
        ("completed_volumes", 1),
        ("failed_volumes", 0),
    ] {
        assert!(
            prom.contains(&format!("{}{value}", gauge(name))),
            "{name} should be {value}:\n{prom}"
        );
    }

    // One snapshot of the old volume, one new volume of it, both tagged with the task.
    let (snapshots, volumes) = site.made().await;
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    assert_eq!(snapshots[0].volume_id(), Some(site.old_volume.as_str()));
    assert_eq!(volumes.len(), 1, "{volumes:?}");
    let new = &volumes[0];
    assert_eq!(new.snapshot_id(), snapshots[0].snapshot_id());
    assert_eq!(new.availability_zone(), Some(ZONE));
    let tag = |k: &str| {
        new.tags()
            .iter()
            .find(|t| t.key() == Some(k))
            .and_then(|t| t.value())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(tag("flow/task"), "db-data/restore");

    // The target claim is bound to a static PV of the new volume, in its zone.
    let target = site.claim(&site.target_ns).await.expect("the target claim");
    let (pv_name, phase) = claim_pv(&target);
    assert_eq!(phase, "Bound");
    let pv = site.pv(&pv_name).await.expect("the new PV");
    assert_eq!(pv_handle(&pv), new.volume_id().unwrap());
    assert_eq!(pv_zone(&pv), ZONE);
    assert_eq!(
        pv.spec
            .as_ref()
            .unwrap()
            .persistent_volume_reclaim_policy
            .as_deref(),
        Some("Retain")
    );

    // The source is as it was: its claim on the old PV, the StatefulSet back at 1
    // replica, Ready, with no annotation of flow's left.
    let source = site.claim(&site.source_ns).await.expect("the source claim");
    assert_eq!(claim_pv(&source), (site.old_pv.clone(), "Bound".into()));
    site.wait_ready(1).await;
    let sts = site.statefulset().await;
    assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(1));
    assert!(annotations(&sts).is_empty(), "{:?}", annotations(&sts));

    // The report has the entry with its tasks; a resumed run does nothing more.
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(
            site.dir
                .path()
                .join(format!(".flow/{}.report.json", site.plan_name)),
        )
        .expect("the report"),
    )
    .unwrap();
    let tasks: Vec<&str> = report["volumes"][0]["tasks"]
        .as_array()
        .expect("the volume's tasks")
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        tasks,
        [
            "db-data/quiesce",
            "db-data/snapshot",
            "db-data/unquiesce",
            "db-data/restore",
            "db-data/verify",
            "db-data/bind"
        ]
    );
    assert_eq!(report["volumes"][0]["status"], "done");
    let again = site.apply(&plan, true);
    assert_ok(&again, "flow apply --resume");
    let shown = support::output_text(&site.flow(&["plan"], &plan).output().unwrap());
    assert!(
        shown.contains(&format!("is on flow's PV {pv_name}")),
        "{shown}"
    );
    let (snapshots_after, volumes_after) = site.made().await;
    assert_eq!((snapshots_after.len(), volumes_after.len()), (1, 1));
    // The EC2 secret is in no output, state or report.
    let text = support::output_text(&out) + &support::output_text(&again);
    assert!(!text.contains("ebs-test-secret-value"), "{text}");
    for file in std::fs::read_dir(site.dir.path().join(".flow")).unwrap() {
        let path = file.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains("ebs-test-secret-value"),
                "{} holds the secret",
                path.display()
            );
        }
    }
}

#[tokio::test]
async fn ebs_swap_puts_a_new_volume_under_the_claim_and_keeps_the_old_one_retained() {
    // The old PV is `Delete`: deleting its claim without setting Retain first would
    // delete the old volume with it.
    let site = Site::new("ebs_swap", "Delete").await;
    let plan = site.plan(&format!(
        "strategy = \"ebs-swap\"\nsettings = {{ volume_type = \"gp3\", availability_zone = \"{OTHER_ZONE}\" }}\n"
    ));
    let out = site.apply(&plan, false);
    assert_ok(&out, "flow apply");

    let (snapshots, volumes) = site.made().await;
    assert_eq!(
        (snapshots.len(), volumes.len()),
        (1, 1),
        "{snapshots:?} {volumes:?}"
    );
    let new = &volumes[0];
    assert_eq!(new.availability_zone(), Some(OTHER_ZONE));
    assert_eq!(new.volume_type().map(|t| t.as_str()), Some("gp3"));

    // The claim is on a PV of the new volume in the new zone; the pod runs on it.
    let claim = site.claim(&site.source_ns).await.expect("the claim");
    let (pv_name, phase) = claim_pv(&claim);
    assert_eq!(phase, "Bound");
    assert_ne!(pv_name, site.old_pv);
    let pv = site.pv(&pv_name).await.expect("the new PV");
    assert_eq!(pv_handle(&pv), new.volume_id().unwrap());
    assert_eq!(pv_zone(&pv), OTHER_ZONE);
    site.wait_ready(1).await;
    assert!(annotations(&site.statefulset().await).is_empty());

    // The old PV is kept, Retain, Released; its volume is still there.
    let old = site.pv(&site.old_pv).await.expect("the old PV is kept");
    assert_eq!(
        old.spec
            .as_ref()
            .unwrap()
            .persistent_volume_reclaim_policy
            .as_deref(),
        Some("Retain")
    );
    assert_eq!(
        old.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Released")
    );
    assert!(
        site.volume_exists(&site.old_volume).await,
        "the old volume is kept"
    );

    // The plan shows the chain with its destructive swap after the verify.
    let shown = site.flow(&["plan", "--offline"], &plan).output().unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("volume db-data [ebs-swap]"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("swap") && l.contains("DESTRUCTIVE")),
        "{text}"
    );
}

/// Kills six runs at random moments, then resumes to the end: one snapshot and one
/// volume were made, whatever the kills hit. Returns the volumes made.
async fn kill_then_finish(site: &Site, plan: &Path) -> Vec<aws_sdk_ec2::types::Volume> {
    let kills = kill_at_random_moments(site, plan).await;
    let out = site.apply(plan, true);
    assert_ok(&out, &format!("flow apply --resume after {kills} kill(s)"));
    let (snapshots, volumes) = site.made().await;
    assert_eq!(snapshots.len(), 1, "after {kills} kill(s): {snapshots:?}");
    assert_eq!(volumes.len(), 1, "after {kills} kill(s): {volumes:?}");
    volumes
}

/// Runs `flow apply` (then `--resume`) six times, each SIGKILLed after a random 150 ms
/// to 2.5 s unless it ended first; returns how many were killed.
async fn kill_at_random_moments(site: &Site, plan: &Path) -> u32 {
    let mut kills = 0;
    for round in 0..6 {
        let mut args = vec!["apply"];
        if round > 0 {
            args.push("--resume");
        }
        let mut child = site
            .flow(&args, plan)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("flow starts");
        let wait = Duration::from_millis(fastrand::u64(150..2500));
        let started = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if started.elapsed() >= wait {
                child.kill().expect("SIGKILL flow");
                kills += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.wait();
    }
    kills
}

#[tokio::test]
async fn ebs_swap_killed_at_random_moments_makes_one_snapshot_one_volume_and_finishes() {
    let site = Site::new("ebs_kill", "Delete").await;
    let plan = site.plan("strategy = \"ebs-swap\"\n");
    let volumes = kill_then_finish(&site, &plan).await;
    let claim = site.claim(&site.source_ns).await.expect("the claim");
    let (pv_name, phase) = claim_pv(&claim);
    assert_eq!(phase, "Bound");
    let pv = site.pv(&pv_name).await.expect("the new PV");
    assert_eq!(pv_handle(&pv), volumes[0].volume_id().unwrap());
    site.wait_ready(1).await;
    let sts = site.statefulset().await;
    assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(1));
    assert!(annotations(&sts).is_empty(), "{:?}", annotations(&sts));
    assert!(site.volume_exists(&site.old_volume).await);
}

/// A snapshot that ends in `error`: the restore fails for good, naming the snapshot and
/// the fix; nothing is bound, the old PV is untouched (still `Delete`). After the reset
/// the fix names, a new snapshot is taken (the failed one is not reused) and the swap
/// completes.
#[tokio::test]
async fn ebs_swap_after_a_failed_snapshot_touches_nothing_and_a_reset_takes_a_new_one() {
    let site = Site::new("ebs_snapfail", "Delete").await;
    let ec2_url = support::env("FLOW_TEST_EC2_URL");
    let (code, body) = support::standin_control(
        &ec2_url,
        "POST",
        "/_standin/rules",
        Some(
            &json!({"action": "CreateSnapshot", "access_key": site.key, "outcome": "error", "seconds": 1}),
        ),
    );
    assert_eq!(code, 200, "{body}");
    let plan = site.plan("strategy = \"ebs-swap\"\n");
    let out = site.apply(&plan, false);
    assert!(!out.status.success(), "{}", support::output_text(&out));
    let text = support::output_text(&out);
    assert!(
        text.contains("failed")
            && text.contains("flow state reset")
            && text.contains("db-data/snapshot"),
        "{text}"
    );
    site.assert_untouched().await;
    let (snapshots, volumes) = site.made().await;
    assert_eq!((snapshots.len(), volumes.len()), (1, 0));

    let reset = site
        .flow(&["state", "reset"], &plan)
        .arg("db-data/snapshot")
        .output()
        .unwrap();
    assert_ok(&reset, "flow state reset");
    let out = site.apply(&plan, true);
    assert_ok(&out, "flow apply --resume after the reset");
    let (snapshots, volumes) = site.made().await;
    assert_eq!(snapshots.len(), 2, "a new snapshot beside the failed one");
    assert_eq!(volumes.len(), 1);
    let good = snapshots
        .iter()
        .find(|s| s.state().map(|s| s.as_str()) == Some("completed"))
        .expect("a completed snapshot");
    assert_eq!(volumes[0].snapshot_id(), good.snapshot_id());
    let (pv_name, phase) = claim_pv(&site.claim(&site.source_ns).await.unwrap());
    assert_eq!(phase, "Bound");
    assert_eq!(
        pv_handle(&site.pv(&pv_name).await.unwrap()),
        volumes[0].volume_id().unwrap()
    );
    site.wait_ready(1).await;
}

/// Verify, then destroy — checked again at run time: the StatefulSet is scaled back up
/// by someone else while the snapshot completes. The verify of the new volume passes,
/// but the swap, right before it would delete the claim, finds a pod running and
/// refuses; the claim and the old PV are as they were.
#[tokio::test]
async fn ebs_swap_refuses_when_a_pod_runs_again_before_the_claim_is_replaced() {
    let site = Site::new("ebs_podback", "Delete").await;
    let (code, body) = support::standin_control(
        &support::env("FLOW_TEST_EC2_URL"),
        "POST",
        "/_standin/rules",
        Some(&json!({"action": "CreateSnapshot", "access_key": site.key, "seconds": 4})),
    );
    assert_eq!(code, 200, "{body}");
    let plan = site.plan("strategy = \"ebs-swap\"\n");
    let child = site
        .flow(&["apply"], &plan)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("flow starts");
    // Once the snapshot is taken (pending), scale the StatefulSet back by hand.
    let deadline = Instant::now() + Duration::from_secs(20);
    while site.made().await.0.is_empty() {
        assert!(Instant::now() < deadline, "no snapshot after 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    site.statefulsets(&site.source_ns)
        .patch(
            "db",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .expect("scale db back to 1");
    site.wait_ready(1).await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = support::output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("run again; the claim is not replaced"),
        "{text}"
    );
    assert!(
        text.contains("done db-data/verify"),
        "the verify passed first: {text}"
    );
    site.assert_untouched().await;
}

/// A zone EC2 does not have: the restore fails for good with EC2's own error, the copy's
/// source is running again (its unquiesce follows the snapshot, not the restore), and no
/// claim is made in the target namespace.
#[tokio::test]
async fn ebs_copy_into_a_zone_ec2_does_not_have_fails_the_restore_and_the_source_runs_again() {
    let site = Site::new("ebs_zone", "Delete").await;
    let plan = site.plan(&format!(
        "strategy = \"ebs-copy\"\ntarget_namespace = \"{}\"\nsettings = {{ availability_zone = \"us-east-1z\" }}\n",
        site.target_ns
    ));
    let out = site.apply(&plan, false);
    let text = support::output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("InvalidZone.NotFound"), "{text}");
    assert!(text.contains("db-data/restore"), "{text}");
    assert!(text.contains("done db-data/unquiesce"), "{text}");
    site.wait_ready(1).await;
    assert!(annotations(&site.statefulset().await).is_empty());
    assert!(
        site.claim(&site.target_ns).await.is_none(),
        "no target claim"
    );
    site.assert_untouched().await;
    let (snapshots, volumes) = site.made().await;
    assert_eq!((snapshots.len(), volumes.len()), (1, 0));
}

/// A kubeconfig that is not there, or a context it does not have: the first task that
/// needs the cluster fails with the connection, the file or context and the fix; no
/// panic, nothing else runs.
#[test]
fn a_missing_kubeconfig_or_context_fails_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = support::env("FLOW_TEST_KUBECONFIG");
    for (file, context, expect) in [
        (
            "/nonexistent/kubeconfig",
            "",
            "kubeconfig /nonexistent/kubeconfig",
        ),
        (kubeconfig.as_str(), "context = \"nope\"\n", "nope"),
    ] {
        let plan = dir.path().join("bad.toml");
        std::fs::write(
            &plan,
            format!(
                r#"
[plan]
name = "bad-kubeconfig"
state_dir = "state"
[connections.aws]
kind = "ec2"
region = "us-east-1"
[connections.k8s]
kind = "kubernetes"
kubeconfig = "{file}"
{context}
[[volumes]]
name = "v"
strategy = "ebs-swap"
ec2 = "aws"
source = "k8s"
namespace = "db"
claim = "data-db-0"
statefulset = "db"
"#
            ),
        )
        .unwrap();
        let _ = std::fs::remove_dir_all(dir.path().join("state"));
        let out = Command::new(env!("CARGO_BIN_EXE_flow"))
            .arg("apply")
            .arg(&plan)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let text = support::output_text(&out);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(
            text.contains("connection `k8s`")
                && text.contains(expect)
                && text.contains("fix `kubeconfig` / `context`"),
            "{text}"
        );
        assert!(text.contains("v/quiesce"), "{text}");
        assert!(!text.contains("panicked"), "{text}");
    }
}

#[tokio::test]
async fn ebs_copy_killed_at_random_moments_makes_one_snapshot_one_volume_one_claim() {
    let site = Site::new("ebs_copykill", "Delete").await;
    let plan = site.plan(&format!(
        "strategy = \"ebs-copy\"\ntarget_namespace = \"{}\"\n",
        site.target_ns
    ));
    let volumes = kill_then_finish(&site, &plan).await;
    let (pv_name, phase) = claim_pv(&site.claim(&site.target_ns).await.expect("the target claim"));
    assert_eq!(phase, "Bound");
    assert_eq!(
        pv_handle(&site.pv(&pv_name).await.unwrap()),
        volumes[0].volume_id().unwrap()
    );
    site.wait_ready(1).await;
    assert!(annotations(&site.statefulset().await).is_empty());
    site.assert_untouched().await;
}
