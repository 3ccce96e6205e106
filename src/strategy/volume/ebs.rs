//! `ebs-copy` and `ebs-swap`: a Kubernetes claim's EBS volume, snapshotted and made
//! into a new volume.
//!
//! - **ebs-copy** binds the new volume to a new claim elsewhere (another namespace or
//!   cluster): `quiesce` → `snapshot` → `unquiesce` (the source runs again as soon as
//!   the snapshot is taken) and `snapshot` → `restore` → `verify` → `bind`. Nothing is
//!   replaced, so nothing is destructive.
//! - **ebs-swap** puts the new volume under the same claim (another volume type, zone
//!   or key): `quiesce` → `snapshot` → `restore` → `verify` → `swap` → `unquiesce`.
//!   The swap is destructive (it deletes the claim, after setting its PV to Retain), so
//!   it runs after the verify, which checked the new volume; the StatefulSet is scaled
//!   back only after the claim exists again on the new PV. The old PV and volume are
//!   kept for a rollback.

use std::collections::BTreeMap;

use super::{VolumeRequirements, VolumeSink, VolumeStrategy};
use crate::plan::VolumeSpec;
use crate::strategy::{Setting, SettingKind};
use crate::task::{GraphError, Placement, TaskKind};

/// EBS volume types CreateVolume takes.
pub const VOLUME_TYPES: &[&str] = &["gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"];

const SETTINGS: &[Setting] = &[
    Setting {
        key: "availability_zone",
        kind: SettingKind::Text,
        help: "the zone of the new volume, e.g. \"us-east-1b\" (default: the old volume's)",
    },
    Setting {
        key: "volume_type",
        kind: SettingKind::Choice(VOLUME_TYPES),
        help: "one of gp2, gp3, io1, io2, st1, sc1, standard (default: the old volume's)",
    },
    Setting {
        key: "iops",
        kind: SettingKind::Integer,
        help: "provisioned IOPS of the new volume (gp3, io1, io2), e.g. 3000",
    },
    Setting {
        key: "throughput",
        kind: SettingKind::Integer,
        help: "throughput of the new volume in MiB/s (gp3), e.g. 125",
    },
    Setting {
        key: "kms_key_id",
        kind: SettingKind::Text,
        help: "the KMS key the new volume is encrypted with (an id, ARN or alias)",
    },
];

/// `ebs-copy`.
pub struct EbsCopy;
/// `ebs-swap`.
pub struct EbsSwap;

/// The tasks both strategies begin with: quiesce (when a StatefulSet is named),
/// snapshot, restore, verify. Returns (quiesce, snapshot, verify).
fn snapshot_chain(
    volume: &VolumeSpec,
    sink: &mut dyn VolumeSink,
) -> Result<
    (
        Option<petgraph::graph::NodeIndex>,
        petgraph::graph::NodeIndex,
        petgraph::graph::NodeIndex,
    ),
    GraphError,
> {
    let k8s = volume.source.connection.clone();
    let ec2 = volume.ec2.clone();
    let quiesce = match &volume.statefulset {
        Some(_) => Some(sink.task(
            "quiesce",
            TaskKind::Quiesce,
            Placement::Metadata,
            vec![k8s.clone()],
            BTreeMap::new(),
        )?),
        None => None,
    };
    let snapshot = sink.task(
        "snapshot",
        TaskKind::Snapshot,
        Placement::InServer,
        vec![ec2.clone(), k8s],
        BTreeMap::new(),
    )?;
    if let Some(q) = quiesce {
        sink.depend(snapshot, q);
    }
    let restore = sink.task(
        "restore",
        TaskKind::Restore,
        Placement::InServer,
        vec![ec2.clone()],
        BTreeMap::new(),
    )?;
    sink.depend(restore, snapshot);
    let verify = sink.task(
        "verify",
        TaskKind::Verify,
        Placement::Metadata,
        vec![ec2, volume.target.connection.clone()],
        BTreeMap::new(),
    )?;
    sink.depend(verify, restore);
    Ok((quiesce, snapshot, verify))
}

fn unquiesce(
    volume: &VolumeSpec,
    sink: &mut dyn VolumeSink,
) -> Result<petgraph::graph::NodeIndex, GraphError> {
    sink.task(
        "unquiesce",
        TaskKind::Unquiesce,
        Placement::Metadata,
        vec![volume.source.connection.clone()],
        BTreeMap::new(),
    )
}

impl VolumeStrategy for EbsCopy {
    fn summary(&self) -> &'static str {
        "snapshot a claim's EBS volume and bind a new volume made of it to a new claim elsewhere"
    }

    fn requirements(&self) -> VolumeRequirements {
        VolumeRequirements {
            has_target: true,
            needs_statefulset: false,
        }
    }

    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }

    fn expand(&self, volume: &VolumeSpec, sink: &mut dyn VolumeSink) -> Result<(), GraphError> {
        let (quiesce, snapshot, verify) = snapshot_chain(volume, sink)?;
        if quiesce.is_some() {
            let back = unquiesce(volume, sink)?;
            sink.depend(back, snapshot);
        }
        let bind = sink.task(
            "bind",
            TaskKind::Bind,
            Placement::Metadata,
            vec![volume.target.connection.clone()],
            BTreeMap::new(),
        )?;
        sink.depend(bind, verify);
        Ok(())
    }

    fn mode_line(&self, volume: &VolumeSpec) -> String {
        format!(
            "copy: a snapshot of {} becomes a new volume on {}{}",
            volume.source,
            volume.target,
            match &volume.statefulset {
                Some(s) => format!(" (StatefulSet {s} scaled to 0 until the snapshot is taken)"),
                None => " (no StatefulSet named: the snapshot is crash-consistent only)".into(),
            }
        )
    }
}

impl VolumeStrategy for EbsSwap {
    fn summary(&self) -> &'static str {
        "replace a claim's EBS volume by a new volume made of its snapshot, keeping the old one"
    }

    fn requirements(&self) -> VolumeRequirements {
        VolumeRequirements {
            has_target: false,
            needs_statefulset: true,
        }
    }

    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }

    fn expand(&self, volume: &VolumeSpec, sink: &mut dyn VolumeSink) -> Result<(), GraphError> {
        let (_, _, verify) = snapshot_chain(volume, sink)?;
        let swap = sink.task(
            "swap",
            TaskKind::Swap,
            Placement::Metadata,
            vec![volume.source.connection.clone(), volume.ec2.clone()],
            BTreeMap::new(),
        )?;
        sink.depend(swap, verify);
        // Only once the claim is on the new PV: a StatefulSet scaled up without its
        // claim makes a new, empty one from its template.
        let back = unquiesce(volume, sink)?;
        sink.depend(back, swap);
        Ok(())
    }

    fn mode_line(&self, volume: &VolumeSpec) -> String {
        format!(
            "swap in place: {} gets a new volume made of its snapshot (StatefulSet {} at 0 \
             until then; the old PV is kept with reclaim policy Retain)",
            volume.source,
            volume.statefulset.as_deref().unwrap_or("?")
        )
    }
}
