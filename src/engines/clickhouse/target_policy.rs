//! The storage policy an s3-policy move goes to, as the server defines it, and whether
//! it fits the mode the plan asks for — read once by each step's prepare and by
//! `flow plan` (which says what does not fit before anything runs).
//!
//! - A copy (no `to_volume`) writes its parts to the policy's first volume: that volume
//!   must hold no local disk, or the copy stays local.
//! - In place (`to_volume`), the parts go to that volume: it must exist and hold only
//!   remote (object storage) disks. The server itself checks, when the table is put on
//!   the policy, that the policy holds the table's current volumes and disks.

use std::collections::BTreeSet;

use minijinja::context;

use super::{json_str, Ch, ChError};
use crate::task::TaskFailure;

/// One volume of a policy, in the server's order (by priority).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    pub disks: Vec<String>,
}

/// A policy as the server defines it (and, once checked, which of its disks are local).
#[derive(Clone, Debug)]
pub struct TargetPolicy {
    pub name: String,
    pub volumes: Vec<Volume>,
    local_disks: BTreeSet<String>,
}

fn fail(msg: String) -> TaskFailure {
    TaskFailure::permanent(msg)
}

impl TargetPolicy {
    /// Reads policy `name` and the server's disk types, and checks that the policy fits
    /// the mode (see [`Self::fits`]); returns it and a line saying how it fits.
    pub async fn check(
        ch: &Ch,
        name: &str,
        to_volume: Option<&str>,
    ) -> Result<(Self, String), TaskFailure> {
        let mut policy = Self::read(ch, name).await?;
        policy.local_disks = local_disks(ch).await?;
        let fit = policy.fits(to_volume)?;
        Ok((policy, fit))
    }

    /// Reads policy `name` (not the disk types); fails when the server has no such
    /// policy.
    pub async fn read(ch: &Ch, name: &str) -> Result<Self, TaskFailure> {
        let rows = ch
            .rows(
                &format!("look up storage policy {name}"),
                "storage_policy",
                context! { policy => name },
            )
            .await?;
        if rows.is_empty() {
            return Err(fail(format!(
                "s3-policy: storage policy `{name}` does not exist on the server \
                 (system.storage_policies); define it in the server's storage_configuration \
                 or fix `storage_policy`"
            )));
        }
        let volumes = rows
            .iter()
            .map(|r| Volume {
                name: json_str(r, "volume_name").unwrap_or_default(),
                disks: r
                    .get("disks")
                    .and_then(|d| d.as_array())
                    .into_iter()
                    .flatten()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect(),
            })
            .collect();
        Ok(TargetPolicy {
            name: name.to_string(),
            volumes,
            local_disks: BTreeSet::new(),
        })
    }

    /// The disks of volume `name`; fails naming the policy's volumes when it has none
    /// of that name.
    pub fn volume_disks(&self, name: &str) -> Result<BTreeSet<String>, TaskFailure> {
        let volume = self
            .volumes
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| {
                fail(format!(
                    "s3-policy: storage policy `{}` has no volume `{name}` (its volumes: {}); fix \
                 `settings.to_volume`",
                    self.name,
                    self.volume_names(0)
                ))
            })?;
        Ok(volume.disks.iter().cloned().collect())
    }

    fn volume_names(&self, skip: usize) -> String {
        let names: Vec<&str> = self
            .volumes
            .iter()
            .skip(skip)
            .map(|v| v.name.as_str())
            .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    /// Whether the policy fits the mode: a copy (`to_volume` None) or a move in place
    /// to `to_volume`. The error names what does not fit and the fix.
    fn fits(&self, to_volume: Option<&str>) -> Result<String, TaskFailure> {
        match to_volume {
            None => {
                let Some(first) = self.volumes.first() else {
                    return Ok(String::new());
                };
                if let Some(local) = first.disks.iter().find(|d| self.local_disks.contains(*d)) {
                    return Err(fail(format!(
                        "s3-policy: storage policy `{}` writes new parts to its first volume \
                         `{}`, which has local disk `{local}`: a copy onto it would stay local; \
                         to have the server move the parts to an S3 volume of it in place, set \
                         `settings.to_volume` (its other volumes: {}), or name a policy of S3 \
                         disks only",
                        self.name,
                        first.name,
                        self.volume_names(1)
                    )));
                }
                Ok(format!(
                    "copy onto policy `{}`: its first volume `{}` has no local disk",
                    self.name, first.name
                ))
            }
            Some(volume) => {
                let disks = self.volume_disks(volume)?;
                let local: Vec<&String> = disks
                    .iter()
                    .filter(|d| self.local_disks.contains(*d))
                    .collect();
                if !local.is_empty() {
                    return Err(fail(format!(
                        "s3-policy: volume `{volume}` of policy `{}` keeps parts on local \
                         disk(s) {}; `settings.to_volume` must name a volume of S3 (object \
                         storage) disks",
                        self.name,
                        local
                            .iter()
                            .map(|d| d.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                Ok(format!(
                    "in place onto volume `{volume}` of policy `{}`: disks {}",
                    self.name,
                    disks.iter().cloned().collect::<Vec<_>>().join(", ")
                ))
            }
        }
    }
}

/// The server's disks of type Local.
async fn local_disks(ch: &Ch) -> Result<BTreeSet<String>, ChError> {
    let types = ch
        .rows("list the server's disks", "disk_types", context! {})
        .await?;
    Ok(types
        .iter()
        .filter(|r| json_str(r, "type").is_some_and(|t| t.eq_ignore_ascii_case("local")))
        .filter_map(|r| json_str(r, "name"))
        .collect())
}
