//! `flow plan`: what would run — per table the partitions, the step chain, which steps
//! are destructive and where each runs — and, when the plan has state, what is done.
//!
//! `--offline` never reaches a database: partitions come from the plan (explicit list
//! or range) or are shown as "listed at apply time". Without it, partitions listed by
//! an earlier run's splits are read from the state, with each task's status, and the
//! tables of a whole-database entry (`table = "*"`) are listed on the server as `apply`
//! lists them (a read-only query), so the plan shows each table's chain.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::Serialize;

use super::{load_plan, OutputFormat, EXIT_FAILED, EXIT_OK};
use crate::graph::expand::{expand, known_partitions, PartitionMap};
use crate::graph::{Placement, TaskGraph, TaskId, TaskKind};
use crate::plan::{PartitionSource, Plan};
use crate::templates::Templates;

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    pub plan: PathBuf,
    /// Do not read state or reach any server.
    #[arg(long)]
    pub offline: bool,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    /// Override a plan variable: NAME=VALUE (repeatable).
    #[arg(long = "var", value_parser = super::parse_var)]
    pub vars: Vec<(String, String)>,
}

#[derive(Debug, Serialize)]
pub struct PlanJson {
    pub plan: String,
    pub concurrency: usize,
    pub tables: Vec<TableJson>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeJson>,
    pub steps: Vec<String>,
    pub tasks: Vec<TaskJson>,
}

#[derive(Debug, Serialize)]
pub struct VolumeJson {
    pub name: String,
    pub strategy: &'static str,
    /// The claim whose volume is snapshotted, and the claim the new volume goes to.
    pub source: String,
    pub target: String,
    pub mode: String,
    pub chain: Vec<ChainStep>,
}

#[derive(Debug, Serialize)]
pub struct TableJson {
    pub name: String,
    pub strategy: &'static str,
    pub source: String,
    pub target: Option<String>,
    /// "declared", "listed" (from state), "online" (listed at apply time), "whole".
    pub partitions_from: &'static str,
    pub partitions: Vec<String>,
    /// How the strategy moves the table, when it has more than one way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    pub chain: Vec<ChainStep>,
}

#[derive(Debug, Serialize)]
pub struct ChainStep {
    pub kind: TaskKind,
    pub placement: Placement,
    pub destructive: bool,
}

#[derive(Debug, Serialize)]
pub struct TaskJson {
    pub id: String,
    pub kind: TaskKind,
    pub placement: Placement,
    pub destructive: bool,
    pub connections: Vec<String>,
    pub depends_on: Vec<String>,
    pub fingerprint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Partitions listed by splits of an earlier run, read from the plan's state.
pub fn stored_partitions(plan: &Plan, templates: &Templates) -> anyhow::Result<PartitionMap> {
    let db = plan.state_db_path();
    let Some(records) = crate::state::read_records(&db)? else {
        return Ok(PartitionMap::new());
    };
    let splits = expand(plan, templates, &PartitionMap::new())?;
    Ok(crate::state::listed_partitions(
        &splits,
        &crate::state::by_id(records),
        &db,
    )?)
}

/// Builds the JSON/text model of a plan's graph; `status` gives each task's state.
pub fn describe(
    plan: &Plan,
    graph: &TaskGraph,
    chain_graph: &TaskGraph,
    listed: &PartitionMap,
    statuses: Option<&HashMap<TaskId, (String, Option<String>)>>,
) -> PlanJson {
    let mut tables = Vec::new();
    for table in &plan.tables {
        let partitions_from = if listed.contains_key(&table.index) {
            "listed"
        } else {
            match table.partitions {
                PartitionSource::Whole => "whole",
                PartitionSource::Declared(_) => "declared",
                PartitionSource::Online => "online",
            }
        };
        let partitions = known_partitions(table, listed)
            .map(|ps| ps.iter().map(|p| p.id.clone()).collect())
            .unwrap_or_default();
        let chain = chain_of(chain_graph, |t| t.unit.table() == Some(table.index));
        tables.push(TableJson {
            name: table.name.clone(),
            strategy: table.strategy.name(),
            source: table.source.clone(),
            target: table.target.clone(),
            partitions_from,
            partitions,
            mode: table.strategy.strategy().mode_line(table),
            chain,
        });
    }
    let volumes = plan
        .volumes
        .iter()
        .map(|v| VolumeJson {
            name: v.name.clone(),
            strategy: v.strategy.name(),
            source: v.source.to_string(),
            target: v.target.to_string(),
            mode: v.strategy.strategy().mode_line(v),
            chain: chain_of(chain_graph, |t| t.unit.volume() == Some(v.index)),
        })
        .collect();
    let tasks = graph
        .topological()
        .into_iter()
        .map(|i| {
            let t = graph.task(i);
            let mut depends_on: Vec<String> = graph
                .dependencies(i)
                .map(|d| graph.task(d).id.0.clone())
                .collect();
            depends_on.sort();
            let (status, reason) = match statuses.and_then(|s| s.get(&t.id)) {
                Some((s, r)) => (Some(s.clone()), r.clone()),
                None => (None, None),
            };
            TaskJson {
                id: t.id.0.clone(),
                kind: t.kind,
                placement: t.placement,
                destructive: t.is_destructive(),
                connections: t.connections.clone(),
                depends_on,
                fingerprint: t.fingerprint.0.clone(),
                status,
                reason,
            }
        })
        .collect();
    PlanJson {
        plan: plan.name.clone(),
        concurrency: plan.concurrency,
        tables,
        volumes,
        steps: plan.steps.iter().map(|s| s.id.clone()).collect(),
        tasks,
    }
}

/// The kinds of an entry's tasks, each once, in the order the graph holds them.
fn chain_of(graph: &TaskGraph, of_entry: impl Fn(&crate::graph::Task) -> bool) -> Vec<ChainStep> {
    let mut chain: Vec<ChainStep> = Vec::new();
    let mut seen = BTreeMap::new();
    for t in graph.tasks().filter(|t| of_entry(t)) {
        if seen.insert(t.kind, ()).is_none() {
            chain.push(ChainStep {
                kind: t.kind,
                placement: t.placement,
                destructive: t.is_destructive(),
            });
        }
    }
    chain
}

fn render_chain(out: &mut String, chain: &[ChainStep]) {
    use std::fmt::Write as _;
    for step in chain {
        let _ = writeln!(
            out,
            "  {:<10} {}{}",
            step.kind.as_str(),
            placement_word(step.placement),
            if step.destructive {
                "  DESTRUCTIVE (runs only after its verify)"
            } else {
                ""
            }
        );
    }
}

fn placement_word(p: Placement) -> &'static str {
    match p {
        Placement::InServer => "in server",
        Placement::Streamed => "streamed through flow",
        Placement::Metadata => "metadata",
        Placement::External => "external command",
    }
}

/// Human rendering of [`PlanJson`].
pub fn render_text(model: &PlanJson) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan {} — {} task(s), concurrency {}",
        model.plan,
        model.tasks.len(),
        model.concurrency
    );
    for t in &model.tables {
        let _ = writeln!(out);
        let target = t
            .target
            .as_ref()
            .map(|x| format!(" → {x}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "table {} [{}] {}{}",
            t.name, t.strategy, t.source, target
        );
        let parts = match t.partitions_from {
            "online" => "listed from the source at apply time".to_string(),
            "whole" => "the whole table as one unit".to_string(),
            from => {
                let shown: Vec<&str> = t.partitions.iter().take(8).map(String::as_str).collect();
                let more = t.partitions.len().saturating_sub(shown.len());
                format!(
                    "{} {} ({}){}",
                    t.partitions.len(),
                    if t.partitions.len() == 1 {
                        "partition"
                    } else {
                        "partitions"
                    },
                    from,
                    if shown.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ": {}{}",
                            shown.join(", "),
                            if more > 0 {
                                format!(", … +{more}")
                            } else {
                                String::new()
                            }
                        )
                    }
                )
            }
        };
        let _ = writeln!(out, "  partitions: {parts}");
        if let Some(mode) = &t.mode {
            let _ = writeln!(out, "  mode: {mode}");
        }
        render_chain(&mut out, &t.chain);
    }
    for v in &model.volumes {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "volume {} [{}] {} → {}",
            v.name, v.strategy, v.source, v.target
        );
        let _ = writeln!(out, "  mode: {}", v.mode);
        render_chain(&mut out, &v.chain);
    }
    if !model.steps.is_empty() {
        let _ = writeln!(out, "\nsteps: {}", model.steps.join(", "));
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &model.tasks {
        if let Some(s) = &t.status {
            *counts.entry(s.as_str()).or_default() += 1;
        }
    }
    if !counts.is_empty() {
        let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
        let _ = writeln!(out, "\nstate: {}", summary.join(", "));
        for t in model
            .tasks
            .iter()
            .filter(|t| t.status.as_deref() != Some("done") && t.reason.is_some())
        {
            let _ = writeln!(
                out,
                "  {} {}: {}",
                t.status.as_deref().unwrap_or("?"),
                t.id,
                t.reason.as_deref().unwrap_or_default()
            );
        }
    }
    out
}

/// For each table, whether its target fits its migration (read-only): for s3-policy, a
/// copy onto a policy whose first volume is local, or a volume that is not of S3 disks,
/// is said now rather than at the table's prepare. For each volume entry, the EBS
/// volume its claim is on, and whether the claim it goes to is free.
async fn say_preflights(plan: &Plan, templates: &Templates) {
    let runner =
        crate::runtime::TableRunner::new(std::sync::Arc::new(plan.clone()), templates.clone());
    for table in &plan.tables {
        match runner.preflight(table).await {
            Ok(None) => {}
            Ok(Some(fit)) => crate::errln!("table {}: {fit}", table.name),
            Err(e) if e.retryable => crate::errln!(
                "warning: table {}: the target was not checked: {}",
                table.name,
                e.message
            ),
            Err(e) => crate::errln!(
                "warning: table {}: {} (its prepare step will refuse it)",
                table.name,
                e.message
            ),
        }
    }
    let volumes = crate::runtime::VolumeRunner::new(std::sync::Arc::new(plan.clone()));
    for volume in &plan.volumes {
        match volumes.preflight(volume).await {
            Ok(found) => crate::errln!("volume {}: {found}", volume.name),
            Err(e) => crate::errln!(
                "warning: volume {}: {} (its tasks will refuse it)",
                volume.name,
                e.message
            ),
        }
    }
}

pub async fn run(args: &PlanArgs) -> anyhow::Result<u8> {
    let (plan, templates) = match load_plan(&args.plan, &args.vars) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    // Whole-database entries become the tables `apply` would list now (read-only), so
    // the plan shows their chains; offline, or when the server cannot be asked, the
    // entry is shown as it is, with its split.
    let plan = if args.offline || plan.wildcard_tables().is_empty() {
        plan
    } else {
        match crate::run::list_whole_databases(plan.clone(), &templates).await {
            Ok((listed, said)) => {
                for (entry, tables) in said {
                    crate::errln!(
                        "{entry}: {} table(s) to move now: {}",
                        tables.len(),
                        tables.join(", ")
                    );
                }
                listed
            }
            Err(e) => {
                crate::errln!(
                    "warning: {e:#}; showing whole-database entries unlisted (apply lists them when it runs)"
                );
                plan
            }
        }
    };
    if !args.offline {
        say_preflights(&plan, &templates).await;
    }
    let listed = if args.offline {
        PartitionMap::new()
    } else {
        stored_partitions(&plan, &templates)?
    };
    let graph = match expand(&plan, &templates, &listed) {
        Ok(g) => g,
        Err(e) => {
            crate::errln!("error: {e}");
            return Ok(EXIT_FAILED);
        }
    };
    // Tables whose partitions are listed at apply time show their chain on a placeholder.
    let mut placeholder = listed.clone();
    for table in &plan.tables {
        if known_partitions(table, &listed).is_none() {
            placeholder.insert(
                table.index,
                vec![std::sync::Arc::new(crate::graph::Partition {
                    id: "<partition>".into(),
                    value: None,
                    filter: None,
                    rows: None,
                    bytes: None,
                    chunks: vec![],
                })],
            );
        }
    }
    let chain_graph = expand(&plan, &templates, &placeholder)?;
    let statuses = if args.offline {
        None
    } else {
        crate::state::plan_status_at(&plan.state_db_path(), &graph)?.map(|decisions| {
            decisions
                .into_iter()
                .map(|d| (d.id.clone(), (d.label().to_string(), d.reason())))
                .collect::<HashMap<_, _>>()
        })
    };
    let model = describe(&plan, &graph, &chain_graph, &listed, statuses.as_ref());
    match args.format {
        OutputFormat::Text => super::emit(&render_text(&model)),
        OutputFormat::Json => super::emit(&(serde_json::to_string_pretty(&model)? + "\n")),
    }
    Ok(EXIT_OK)
}
