//! Volume strategies: what a `[[volumes]]` entry turns into.
//!
//! The counterpart of [`crate::strategy::Strategy`] for entries that are not tables: a
//! volume strategy declares its settings and its rules on an entry, and expands the
//! entry into tasks through a [`VolumeSink`] (which the graph builder implements: ids
//! `<volume>/<name>`, the entry's shared inputs on every task). The tasks run through
//! the engines' volume roles (`engines::volume`: a block store and a claim host), in
//! `runtime::volume_tasks`. Adding one is a module here, a variant of
//! [`VolumeStrategyKind`] and its line in [`VolumeStrategyKind::strategy`].

pub mod ebs;

use std::collections::BTreeMap;

use petgraph::graph::NodeIndex;

use crate::plan::VolumeSpec;
use crate::strategy::Setting;
use crate::task::{GraphError, Placement, TaskKind};

pub use crate::plan::VolumeStrategyKind;

/// What a volume strategy adds its tasks through.
pub trait VolumeSink {
    /// A task of the entry: `<volume>/<name>`.
    fn task(
        &mut self,
        name: &str,
        kind: TaskKind,
        placement: Placement,
        connections: Vec<String>,
        inputs: BTreeMap<String, String>,
    ) -> Result<NodeIndex, GraphError>;
    /// `task` runs after `after`.
    fn depend(&mut self, task: NodeIndex, after: NodeIndex);
}

/// Which keys of a `[[volumes]]` entry a strategy reads.
pub struct VolumeRequirements {
    /// Whether it makes a claim elsewhere (`target`, `target_namespace`,
    /// `target_claim`); otherwise it replaces the volume of the source claim.
    pub has_target: bool,
    /// Whether `statefulset` must be given.
    pub needs_statefulset: bool,
}

/// One volume strategy.
pub trait VolumeStrategy: Sync {
    /// What it is for, one line.
    fn summary(&self) -> &'static str;
    fn requirements(&self) -> VolumeRequirements;
    /// The settings it reads from the entry's `settings`.
    fn settings(&self) -> &'static [Setting];
    /// Adds the entry's tasks.
    fn expand(&self, volume: &VolumeSpec, sink: &mut dyn VolumeSink) -> Result<(), GraphError>;
    /// What `flow plan` says of the entry, one line.
    fn mode_line(&self, volume: &VolumeSpec) -> String;
}

/// Each kind's strategy.
impl VolumeStrategyKind {
    pub fn strategy(self) -> &'static dyn VolumeStrategy {
        match self {
            VolumeStrategyKind::EbsCopy => &ebs::EbsCopy,
            VolumeStrategyKind::EbsSwap => &ebs::EbsSwap,
        }
    }
}
