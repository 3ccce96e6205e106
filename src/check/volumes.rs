//! Checking `[[volumes]]` entries: connections of the right kinds, Kubernetes names
//! that the API server takes, what the entry's strategy requires (a StatefulSet, a
//! target claim or none), its typed settings, and the names its `after` gives.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use toml::Spanned;

use super::{span, valid_name, Checker};
use crate::plan::schema::{ConnectionKind, VolumeDef};
use crate::plan::{ClaimRef, Connection, StepSpec, VolumeSpec, VolumeStrategyKind};

/// A DNS-1123 label (namespaces): at most 63 of `a-z`, `0-9`, `-`, alphanumeric at both
/// ends.
fn dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A DNS-1123 subdomain (claims, StatefulSets): dot-separated labels, at most 253.
fn dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(dns_label)
}

impl Checker {
    fn kube_name(&mut self, value: &Spanned<String>, label: &str, what: &str, subdomain: bool) {
        let name = value.get_ref();
        let ok = if subdomain {
            dns_subdomain(name)
        } else {
            dns_label(name)
        };
        if !ok {
            self.error(
                span(value),
                format!("volume {label}: {what} \"{name}\" is not a Kubernetes name"),
                "invalid name",
                format!(
                    "use lowercase letters, digits and `-`{}, starting and ending with a letter or digit, at most {} characters",
                    if subdomain { " (and `.` between parts)" } else { "" },
                    if subdomain { 253 } else { 63 }
                ),
            );
        }
    }

    fn connection_of_kind(
        &mut self,
        r: &Spanned<String>,
        what: &str,
        kind: ConnectionKind,
        connections: &BTreeMap<String, Connection>,
    ) {
        if let Some(found) = self.reference(r, what, connections) {
            if found != kind {
                self.error(
                    span(r),
                    format!(
                        "{what} \"{}\" is a {} connection, not {}",
                        r.get_ref(),
                        found.as_str(),
                        kind.as_str()
                    ),
                    "wrong kind",
                    format!("name a connection with kind = \"{}\"", kind.as_str()),
                );
            }
        }
    }

    /// The checked `[[volumes]]` entries; their names join `names` (what `after` may
    /// give), refused when a table has one.
    pub(super) fn volumes(
        &mut self,
        defs: &[Spanned<VolumeDef>],
        connections: &BTreeMap<String, Connection>,
        names: &mut HashMap<String, Range<usize>>,
    ) -> Vec<VolumeSpec> {
        let mut out = Vec::new();
        for spanned in defs {
            let entry_span = spanned.span();
            let def = spanned.get_ref();
            let errors_before = self.diags.errors();
            let name = def.name.get_ref().trim().to_string();
            let label = name.clone();
            if !valid_name(&name) {
                self.error(
                    span(&def.name),
                    format!("volume name \"{name}\" cannot be a task id"),
                    "invalid name",
                    "use letters, digits, `-`, `_` or `.` (not first), at most 128 characters",
                );
            } else if let Some(first) = names.get(&name) {
                let (line, _) = self.source.line_col(first.start);
                self.error(
                    span(&def.name),
                    format!("volume name \"{name}\" is used twice (first at line {line})"),
                    "duplicate",
                    "give every table and volume its own name",
                );
            } else {
                names.insert(name.clone(), def.name.span());
            }
            let strategy = VolumeStrategyKind::parse(def.strategy.get_ref());
            if strategy.is_none() {
                self.error(
                    span(&def.strategy),
                    format!(
                        "volume {label}: strategy \"{}\" is not a volume strategy",
                        def.strategy.get_ref()
                    ),
                    "unknown strategy",
                    format!("use one of: {}", VolumeStrategyKind::names()),
                );
            }
            self.connection_of_kind(
                &def.ec2,
                &format!("volume {label}: ec2"),
                ConnectionKind::Ec2,
                connections,
            );
            self.connection_of_kind(
                &def.source,
                &format!("volume {label}: source"),
                ConnectionKind::Kubernetes,
                connections,
            );
            if let Some(t) = &def.target {
                self.connection_of_kind(
                    t,
                    &format!("volume {label}: target"),
                    ConnectionKind::Kubernetes,
                    connections,
                );
            }
            self.kube_name(&def.namespace, &label, "namespace", false);
            self.kube_name(&def.claim, &label, "claim", true);
            if let Some(s) = &def.statefulset {
                self.kube_name(s, &label, "statefulset", true);
            }
            if let Some(n) = &def.target_namespace {
                self.kube_name(n, &label, "target_namespace", false);
            }
            if let Some(c) = &def.target_claim {
                self.kube_name(c, &label, "target_claim", true);
            }
            let Some(strategy) = strategy else { continue };
            let needs = strategy.strategy().requirements();
            if needs.needs_statefulset && def.statefulset.is_none() {
                self.error(
                    Some(entry_span.clone()),
                    format!(
                        "volume {label}: strategy \"{}\" needs the StatefulSet using the claim",
                        strategy.name()
                    ),
                    "no statefulset",
                    "add `statefulset = \"<name>\"`: it is scaled to 0 while its volume is replaced, and back after",
                );
            }
            let source = ClaimRef {
                connection: def.source.get_ref().clone(),
                namespace: def.namespace.get_ref().clone(),
                claim: def.claim.get_ref().clone(),
            };
            let target = if needs.has_target {
                let target = ClaimRef {
                    connection: def
                        .target
                        .as_ref()
                        .map_or_else(|| source.connection.clone(), |t| t.get_ref().clone()),
                    namespace: def
                        .target_namespace
                        .as_ref()
                        .map_or_else(|| source.namespace.clone(), |t| t.get_ref().clone()),
                    claim: def
                        .target_claim
                        .as_ref()
                        .map_or_else(|| source.claim.clone(), |t| t.get_ref().clone()),
                };
                if target == source {
                    self.error(
                        Some(entry_span.clone()),
                        format!(
                            "volume {label}: the target is the source {source}; ebs-copy makes a new claim and replaces none"
                        ),
                        "target = source",
                        "set `target_namespace` (or `target`, `target_claim`) to where the copy goes, or use strategy \"ebs-swap\" to replace the claim's volume",
                    );
                }
                target
            } else {
                for (key, value) in [
                    ("target", &def.target),
                    ("target_namespace", &def.target_namespace),
                    ("target_claim", &def.target_claim),
                ] {
                    if let Some(v) = value {
                        self.error(
                            span(v),
                            format!(
                                "volume {label}: strategy \"{}\" has no `{key}`: it replaces the volume of `claim` itself",
                                strategy.name()
                            ),
                            "not used by this strategy",
                            "remove it, or use strategy \"ebs-copy\" to bind the new volume to another claim",
                        );
                    }
                }
                source.clone()
            };
            let settings = self.volume_settings(def, &label, strategy);
            self.zone_in_region(def, &label, connections);
            if errors_before != self.diags.errors() {
                continue;
            }
            out.push(VolumeSpec {
                index: out.len(),
                name,
                strategy,
                ec2: def.ec2.get_ref().clone(),
                source,
                statefulset: def.statefulset.as_ref().map(|s| s.get_ref().clone()),
                target,
                after: def.after.iter().map(|a| a.get_ref().clone()).collect(),
                settings,
                span: entry_span,
            });
        }
        self.shared_workloads(&out);
        out
    }

    /// Two entries may not quiesce one StatefulSet (the first one's unquiesce would
    /// start its pods while the second one's snapshot is taken), nor put a volume under
    /// one claim.
    fn shared_workloads(&mut self, volumes: &[VolumeSpec]) {
        let mut quiesced: HashMap<(&str, &str, &str), &str> = HashMap::new();
        let mut claims: HashMap<&ClaimRef, &str> = HashMap::new();
        for v in volumes {
            if let Some(sts) = &v.statefulset {
                let key = (
                    v.source.connection.as_str(),
                    v.source.namespace.as_str(),
                    sts.as_str(),
                );
                if let Some(first) = quiesced.insert(key, &v.name) {
                    self.error(
                        Some(v.span.clone()),
                        format!(
                            "volume {}: StatefulSet {}/{sts} is quiesced by volume {first} too",
                            v.name, v.source.namespace
                        ),
                        "one StatefulSet, two entries",
                        "quiesce each StatefulSet from one entry: put the other claims in a plan of their own, run after this one; one entry's unquiesce would start the pods while the other's snapshot is taken (several claims in one entry are not supported yet)",
                    );
                }
            }
            if let Some(first) = claims.insert(&v.target, &v.name) {
                self.error(
                    Some(v.span.clone()),
                    format!(
                        "volume {}: {} gets a new volume from volume {first} too",
                        v.name, v.target
                    ),
                    "one claim, two entries",
                    "give each entry its own target claim",
                );
            }
        }
    }

    fn volume_settings(
        &mut self,
        def: &VolumeDef,
        label: &str,
        strategy: VolumeStrategyKind,
    ) -> BTreeMap<String, crate::plan::SettingValue> {
        let declared = strategy.strategy().settings();
        let mut checked = BTreeMap::new();
        for (key, value) in &def.settings {
            let Some(setting) = declared.iter().find(|s| s.key == key) else {
                let keys: Vec<&str> = declared.iter().map(|s| s.key).collect();
                self.error(
                    span(value),
                    format!(
                        "volume {label}: strategy \"{}\" has no setting `{key}`",
                        strategy.name()
                    ),
                    "unknown setting",
                    format!("its settings are `{}`", keys.join("`, `")),
                );
                continue;
            };
            match setting.kind.check(value.get_ref()) {
                Ok(v) => {
                    checked.insert(key.clone(), v);
                }
                Err(problem) => self.error(
                    span(value),
                    format!(
                        "volume {label}: `settings.{key}` = {}: {problem}",
                        value.get_ref()
                    ),
                    "invalid setting",
                    setting.help,
                ),
            }
        }
        let volume_type = checked.get("volume_type").map(|v| v.to_string());
        if let (Some(t), Some(at)) = (volume_type.as_deref(), def.settings.get("throughput")) {
            if t != "gp3" {
                self.error(
                    span(at),
                    format!("volume {label}: `settings.throughput` is for gp3 volumes, not {t}"),
                    "not for this volume type",
                    "remove it, or set `volume_type = \"gp3\"`",
                );
            }
        }
        checked
    }

    /// `availability_zone` is a zone of the ec2 connection's region (`us-east-1b` of
    /// `us-east-1`), when the region is written in the plan: a volume is made in the
    /// region its client talks to.
    fn zone_in_region(
        &mut self,
        def: &VolumeDef,
        label: &str,
        connections: &BTreeMap<String, Connection>,
    ) {
        let (Some(zone), Some(region)) = (
            def.settings.get("availability_zone"),
            connections
                .get(def.ec2.get_ref())
                .and_then(|c| c.region.as_ref())
                .filter(|r| r.is_literal()),
        ) else {
            return;
        };
        let (Some(zone_text), region) = (zone.get_ref().as_str(), region.raw()) else {
            return;
        };
        let suffix = zone_text.strip_prefix(region).unwrap_or_default();
        if suffix.is_empty()
            || !suffix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            self.error(
                span(zone),
                format!(
                    "volume {label}: `settings.availability_zone` = \"{zone_text}\" is not a zone of region {region} (connection `{}`)",
                    def.ec2.get_ref()
                ),
                "zone of another region",
                format!("use a zone of {region} (e.g. \"{region}a\"), or an ec2 connection of the zone's region; a snapshot is copied across regions by CopySnapshot, which flow does not do"),
            );
        }
    }

    /// Each name in a volume's `after` names a step, a table or a volume.
    pub(super) fn volume_afters(
        &mut self,
        defs: &[Spanned<VolumeDef>],
        steps: &[StepSpec],
        names: &HashMap<String, Range<usize>>,
    ) {
        let known: Vec<&str> = names
            .keys()
            .map(String::as_str)
            .chain(steps.iter().map(|s| s.id.as_str()))
            .collect();
        for def in defs {
            let def = def.get_ref();
            let who = format!("volume {}", def.name.get_ref());
            self.after_names(&who, &def.after, known.clone());
        }
    }
}
