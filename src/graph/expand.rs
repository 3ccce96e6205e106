//! Expansion: a checked plan (plus, at apply time, the partitions each split listed)
//! becomes a frozen [`TaskGraph`].
//!
//! Each table is expanded by its strategy through a [`TableBuilder`], which names tasks
//! (`<table>/<partition>/<kind>`), attaches the table's common inputs to every task's
//! fingerprint, and remembers the table's tasks so steps can run `after` a table.
//! Partitions come from the split's stored output at apply time, from the plan's
//! declared list or range offline, or are not known yet (only the split is shown).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use petgraph::graph::NodeIndex;

use super::{
    GraphError, Partition, Placement, Task, TaskGraph, TaskId, TaskInputs, TaskKind, WorkUnit,
};
use crate::plan::identity::{identity, object_location};
use crate::plan::schema::ConnectionKind;
use crate::plan::{Mode, PartitionSource, Plan, StepKind, TableSpec, VolumeSpec};
use crate::strategy::volume::VolumeSink;
use crate::strategy::TaskSink;
use crate::templates::{env_value, Templates};

/// Partitions listed by each table's split, by table index.
pub type PartitionMap = BTreeMap<usize, Vec<Arc<Partition>>>;

/// Expands `plan` into a checked task graph. Tables missing from `partitions` use the
/// plan's declared partitions, or only their split task when partitions are listed
/// online.
pub fn expand(
    plan: &Plan,
    templates: &Templates,
    partitions: &PartitionMap,
) -> Result<TaskGraph, GraphError> {
    let mut graph = TaskGraph::new();
    let template_inputs = TemplateInputs::new(templates);
    let identities: BTreeMap<&str, String> = plan
        .connections
        .iter()
        .map(|(name, c)| (name.as_str(), identity(c, plan.base_dir())))
        .collect();
    let mut table_tasks: HashMap<&str, Vec<NodeIndex>> = HashMap::new();
    for table in &plan.tables {
        let known = known_partitions(table, partitions);
        let common = common_inputs(table, &identities);
        let mut builder =
            TableBuilder::new(&mut graph, plan, templates, table, common, &template_inputs);
        table
            .strategy
            .strategy()
            .expand(plan, table, known.as_deref(), &mut builder)?;
        let tasks = builder.tasks;
        if let Some(group) = &table.group {
            table_tasks
                .entry(group.as_str())
                .or_default()
                .extend(tasks.iter().copied());
        }
        table_tasks.insert(table.name.as_str(), tasks);
    }
    check_object_keys(plan, &graph)?;
    for volume in &plan.volumes {
        let mut builder = VolumeBuilder {
            graph: &mut graph,
            volume,
            common: Arc::new(volume_inputs(volume, &identities)),
            tasks: Vec::new(),
        };
        volume.strategy.strategy().expand(volume, &mut builder)?;
        let tasks = builder.tasks;
        table_tasks.insert(volume.name.as_str(), tasks);
    }
    for step in &plan.steps {
        let task = step_task(plan, templates, step, &identities);
        let index = graph.add(task)?;
        for after in &step.after {
            if let Some(tasks) = table_tasks.get(after.as_str()) {
                for &t in tasks {
                    graph.depend(index, t);
                }
            } else {
                graph.depend_on_id(index, &TaskId(after.clone()))?;
            }
        }
    }
    for volume in &plan.volumes {
        // The entry's first tasks wait for what its `after` names.
        let roots: Vec<NodeIndex> = table_tasks[volume.name.as_str()]
            .iter()
            .copied()
            .filter(|&t| graph.dependencies(t).next().is_none())
            .collect();
        for after in &volume.after {
            for &root in &roots {
                match table_tasks.get(after.as_str()) {
                    Some(tasks) => {
                        for &t in tasks {
                            graph.depend(root, t);
                        }
                    }
                    None => graph.depend_on_id(root, &TaskId(after.clone()))?,
                }
            }
        }
    }
    graph.check()?;
    Ok(graph)
}

/// Builds one volume entry's tasks; its strategy calls it.
struct VolumeBuilder<'g> {
    graph: &'g mut TaskGraph,
    volume: &'g VolumeSpec,
    common: Arc<BTreeMap<String, String>>,
    tasks: Vec<NodeIndex>,
}

impl VolumeSink for VolumeBuilder<'_> {
    fn task(
        &mut self,
        name: &str,
        kind: TaskKind,
        placement: Placement,
        connections: Vec<String>,
        inputs: BTreeMap<String, String>,
    ) -> Result<NodeIndex, GraphError> {
        let task = Task::new(
            format!("{}/{name}", self.volume.name),
            kind,
            WorkUnit::Volume {
                volume: self.volume.index,
            },
            connections,
            placement,
            TaskInputs::new(self.common.clone(), inputs),
        );
        let index = self.graph.add(task)?;
        self.tasks.push(index);
        Ok(index)
    }

    fn depend(&mut self, task: NodeIndex, after: NodeIndex) {
        self.graph.depend(task, after);
    }
}

/// Inputs every task of a volume entry shares: where the volume is, where it goes, the
/// strategy's settings and the identities of the connections.
fn volume_inputs(
    volume: &VolumeSpec,
    identities: &BTreeMap<&str, String>,
) -> BTreeMap<String, String> {
    let mut inputs = BTreeMap::from([
        ("strategy".to_string(), volume.strategy.name().to_string()),
        ("ec2".to_string(), volume.ec2.clone()),
        ("source".to_string(), volume.source.connection.clone()),
        ("namespace".to_string(), volume.source.namespace.clone()),
        ("claim".to_string(), volume.source.claim.clone()),
        ("target".to_string(), volume.target.connection.clone()),
        (
            "target_namespace".to_string(),
            volume.target.namespace.clone(),
        ),
        ("target_claim".to_string(), volume.target.claim.clone()),
    ]);
    if let Some(s) = &volume.statefulset {
        inputs.insert("statefulset".into(), s.clone());
    }
    for (k, v) in &volume.settings {
        inputs.insert(format!("settings.{k}"), v.to_string());
    }
    for name in [
        &volume.ec2,
        &volume.source.connection,
        &volume.target.connection,
    ] {
        if let Some(id) = identities.get(name.as_str()) {
            inputs.insert(format!("{CONNECTION_INPUT}{name}"), id.clone());
        }
    }
    inputs
}

/// The partitions of a table known without (more) querying the source.
pub fn known_partitions(table: &TableSpec, listed: &PartitionMap) -> Option<Vec<Arc<Partition>>> {
    if let Some(p) = listed.get(&table.index) {
        return Some(p.clone());
    }
    match &table.partitions {
        PartitionSource::Whole => Some(vec![Arc::new(Partition {
            id: "all".into(),
            value: None,
            filter: None,
            rows: None,
            bytes: None,
            chunks: vec![],
        })]),
        PartitionSource::Declared(ids) => Some(
            ids.iter()
                .map(|id| {
                    Arc::new(Partition {
                        id: id.clone(),
                        value: Some(id.clone()),
                        filter: table
                            .partition_expr
                            .as_ref()
                            .map(|expr| format!("({expr}) = {}", literal_for_id(id))),
                        rows: None,
                        bytes: None,
                        chunks: vec![],
                    })
                })
                .collect(),
        ),
        PartitionSource::Online => None,
    }
}

/// A declared id as an SQL literal: numbers stay numbers, anything else is quoted.
fn literal_for_id(id: &str) -> String {
    if !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()) {
        id.to_string()
    } else {
        crate::templates::quote_sql_string(id)
    }
}

/// Refuses two tasks that would write the same object (two export units, or a unit and
/// a manifest, on one key of one store): the second would overwrite the first and its
/// verify could still pass on what the other wrote.
fn check_object_keys(plan: &Plan, graph: &TaskGraph) -> Result<(), GraphError> {
    let mut writers: HashMap<String, &Task> = HashMap::new();
    for task in graph.tasks() {
        if !matches!(task.kind, TaskKind::Export | TaskKind::Manifest) {
            continue;
        }
        let (Some(key), Some(table)) = (task.inputs.get("path"), task.unit.table()) else {
            continue;
        };
        let Some(target) = plan.tables[table].target.as_deref() else {
            continue;
        };
        let Some(location) = object_location(plan.connection(target), plan.base_dir(), key) else {
            continue;
        };
        if let Some(first) = writers.insert(location, task) {
            return Err(GraphError::KeyCollision {
                key: key.clone(),
                target: target.to_string(),
                first: first.id.clone(),
                second: task.id.clone(),
            });
        }
    }
    Ok(())
}

fn step_task(
    plan: &Plan,
    templates: &Templates,
    step: &crate::plan::StepSpec,
    identities: &BTreeMap<&str, String>,
) -> Task {
    let mut inputs = BTreeMap::new();
    let kind = match step.kind {
        StepKind::Sql => TaskKind::Sql,
        StepKind::Exec => TaskKind::Exec,
    };
    // Rendered with env placeholders: the fingerprint follows the text, not secrets.
    let rendered =
        render_step_text(plan, templates, step, false).unwrap_or_else(|_| step.text.clone());
    inputs.insert(
        match step.kind {
            StepKind::Sql => "sql".to_string(),
            StepKind::Exec => "run".to_string(),
        },
        rendered,
    );
    for (name, value) in &step.env {
        inputs.insert(format!("env.{name}"), value.raw().to_string());
    }
    if let Some(cwd) = &step.cwd {
        inputs.insert("cwd".into(), cwd.display().to_string());
    }
    let mut connections: Vec<String> = step.connection.iter().cloned().collect();
    connections.extend(step.uses.iter().cloned());
    for name in &connections {
        if let Some(id) = identities.get(name.as_str()) {
            inputs.insert(format!("{CONNECTION_INPUT}{name}"), id.clone());
        }
    }
    let placement = match step.kind {
        StepKind::Sql => Placement::InServer,
        StepKind::Exec => Placement::External,
    };
    let mut task = Task::new(
        step.id.clone(),
        kind,
        WorkUnit::Step { step: step.index },
        connections,
        placement,
        inputs,
    );
    task.once = step.once;
    task.destructive = step.destructive;
    task.verifies = step.verifies;
    task
}

/// Renders a step's text; `reveal` = true only for execution (real env values).
pub fn render_step_text(
    plan: &Plan,
    templates: &Templates,
    step: &crate::plan::StepSpec,
    reveal: bool,
) -> Result<String, crate::templates::TemplateError> {
    let ctx = minijinja::context! {
        plan => minijinja::context! { name => plan.name.clone() },
        vars => plan.vars.clone(),
        env => env_value(reveal),
        step => minijinja::context! { id => step.id.clone() },
    };
    let what = match step.kind {
        StepKind::Sql => "sql",
        StepKind::Exec => "run",
    };
    templates.render_str(what, &step.text, &ctx)
}

/// Builds one table's tasks; strategies call it.
pub struct TableBuilder<'g> {
    graph: &'g mut TaskGraph,
    templates: &'g Templates,
    table: &'g TableSpec,
    common: BTreeMap<String, String>,
    template_inputs: &'g TemplateInputs,
    /// The kind of the table's source connection (which engine's templates it renders).
    source_kind: ConnectionKind,
    /// The shared inputs of each kind of task (common + its templates), built once.
    shared: HashMap<TaskKind, Arc<BTreeMap<String, String>>>,
    /// The table's `path` template, compiled once.
    path_template: Option<minijinja::Template<'g, 'g>>,
    /// The part of the path context every unit of the table shares.
    path_base: minijinja::Value,
    /// Every task of the table, in insertion order.
    pub tasks: Vec<NodeIndex>,
}

impl<'g> TableBuilder<'g> {
    fn new(
        graph: &'g mut TaskGraph,
        plan: &'g Plan,
        templates: &'g Templates,
        table: &'g TableSpec,
        common: BTreeMap<String, String>,
        template_inputs: &'g TemplateInputs,
    ) -> Self {
        TableBuilder {
            graph,
            templates,
            table,
            common,
            template_inputs,
            source_kind: plan.connection(&table.source).kind,
            shared: HashMap::new(),
            path_template: table
                .path
                .as_deref()
                .and_then(|text| templates.compile(text).ok()),
            path_base: path_base_context(plan, table),
            tasks: Vec::new(),
        }
    }

    pub fn table(&self) -> &TableSpec {
        self.table
    }

    fn add(
        &mut self,
        id: String,
        kind: TaskKind,
        unit: WorkUnit,
        placement: Placement,
        connections: Vec<String>,
        inputs: BTreeMap<String, String>,
    ) -> Result<NodeIndex, GraphError> {
        let shared = self
            .shared
            .entry(kind)
            .or_insert_with(|| {
                Arc::new(self.template_inputs.shared_for(
                    self.table,
                    self.source_kind,
                    kind,
                    &self.common,
                ))
            })
            .clone();
        let inputs = TaskInputs::new(shared, inputs);
        let mut task = Task::new(id, kind, unit, connections, placement, inputs);
        let uses_a_changed_template = SUPERSEDED_TEXTS
            .iter()
            .any(|(name, _)| task.inputs.contains_key(&format!("{TEMPLATE_INPUT}{name}")));
        if !uses_a_changed_template {
            task.superseded = Some(self.template_inputs.superseded.clone());
        }
        let index = self.graph.add(task)?;
        self.tasks.push(index);
        Ok(index)
    }

    /// The row condition of a unit: partition AND bounds AND chunk (`1` when none).
    pub fn unit_filter(&self, partition: &Partition, chunk: Option<u32>) -> String {
        let mut parts = Vec::new();
        if let Some(f) = &partition.filter {
            parts.push(format!("({f})"));
        }
        if let Some(b) = self.table.bounds_filter() {
            parts.push(b);
        }
        if let Some(c) = chunk.and_then(|c| partition.chunks.iter().find(|k| k.index == c)) {
            parts.push(format!("({})", c.filter));
        }
        if parts.is_empty() {
            "1".to_string()
        } else {
            parts.join(" AND ")
        }
    }
}

/// What a strategy adds a table's tasks through.
impl TaskSink for TableBuilder<'_> {
    /// A task about the whole table: `<table>/<name>`.
    fn table_task(
        &mut self,
        name: &str,
        kind: TaskKind,
        placement: Placement,
        connections: Vec<String>,
        inputs: BTreeMap<String, String>,
    ) -> Result<NodeIndex, GraphError> {
        let id = format!("{}/{name}", self.table.name);
        let unit = WorkUnit::Table {
            table: self.table.index,
        };
        self.add(id, kind, unit, placement, connections, inputs)
    }

    /// The split task (`<table>/split`, reading the source's metadata) of a table in
    /// partition mode; None in mode all, which has nothing to list.
    fn split_task(&mut self) -> Result<Option<NodeIndex>, GraphError> {
        if !self.is_partitioned() {
            return Ok(None);
        }
        let source = self.table.source.clone();
        // The declared partitions are what the split lists: another list is another split.
        let mut inputs = BTreeMap::new();
        if let PartitionSource::Declared(ids) = &self.table.partitions {
            inputs.insert("partitions".to_string(), ids.join(","));
        }
        self.table_task(
            "split",
            TaskKind::Split,
            Placement::Metadata,
            vec![source],
            inputs,
        )
        .map(Some)
    }

    /// A task about one partition (or chunk): `<table>/<partition>[/cNNN]/<name>`.
    /// `filter` (the full row condition of the unit) is added to the inputs.
    fn partition_task(
        &mut self,
        (partition, chunk): (&Arc<Partition>, Option<u32>),
        name: &str,
        kind: TaskKind,
        placement: Placement,
        connections: Vec<String>,
        mut inputs: BTreeMap<String, String>,
    ) -> Result<NodeIndex, GraphError> {
        let id = match chunk {
            Some(c) => format!("{}/{}/c{c:03}/{name}", self.table.name, partition.id),
            None => format!("{}/{}/{name}", self.table.name, partition.id),
        };
        inputs.insert("partition".into(), partition.id.clone());
        inputs.insert("filter".into(), self.unit_filter(partition, chunk));
        let unit = WorkUnit::Partition {
            table: self.table.index,
            partition: partition.clone(),
            chunk,
        };
        self.add(id, kind, unit, placement, connections, inputs)
    }

    /// `task` runs after `after`.
    fn depend(&mut self, task: NodeIndex, after: NodeIndex) {
        self.graph.depend(task, after);
    }

    /// Renders the table's `path` template for one unit (export object key).
    fn render_path(
        &self,
        default: &str,
        partition: &Partition,
        chunk: Option<u32>,
    ) -> Result<String, GraphError> {
        let ctx = minijinja::context! {
            partition_id => &partition.id,
            partition => &partition.id,
            chunk => format!("{:03}", chunk.unwrap_or(0)),
            ..self.path_base.clone()
        };
        match &self.path_template {
            Some(t) => t
                .render(&ctx)
                .map(|s| s.trim().to_string())
                .map_err(|e| GraphError::Template(format!("table {}: path: {e}", self.table.name))),
            None => {
                let text = self.table.path.as_deref().unwrap_or(default);
                self.templates
                    .render_str("path", text, &ctx)
                    .map_err(|e| GraphError::Template(e.to_string()))
            }
        }
    }

    fn is_partitioned(&self) -> bool {
        self.table.mode == Mode::Partition
    }
}

/// Context of a table's `path` template.
pub fn path_context(
    plan: &Plan,
    table: &TableSpec,
    partition_id: &str,
    chunk: Option<u32>,
) -> minijinja::Value {
    minijinja::context! {
        partition_id => partition_id,
        partition => partition_id,
        chunk => format!("{:03}", chunk.unwrap_or(0)),
        ..path_base_context(plan, table)
    }
}

/// The unit-independent part of the `path` context.
fn path_base_context(plan: &Plan, table: &TableSpec) -> minijinja::Value {
    minijinja::context! {
        plan => minijinja::context! { name => plan.name.clone() },
        table => minijinja::context! {
            name => table.name.clone(),
            database => table.database.clone(),
            table => table.table.clone().unwrap_or_default(),
        },
        ext => table.format.extension(),
        format => table.format.clickhouse_name(),
        vars => plan.vars.clone(),
        options => table.options.clone(),
        env => env_value(false),
    }
}

/// Prefix of the inputs that hold a connection's identity (`connection.ch`).
pub const CONNECTION_INPUT: &str = "connection.";

/// Inputs every task of a table shares: a change to any of them dirties the table.
fn common_inputs(
    table: &TableSpec,
    identities: &BTreeMap<&str, String>,
) -> BTreeMap<String, String> {
    let mut inputs = BTreeMap::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            inputs.insert(k.to_string(), v);
        }
    };
    put("strategy", Some(table.strategy.name().to_string()));
    put("source", Some(table.source.clone()));
    put("database", Some(table.database.clone()));
    put("table", table.table.clone());
    put("query", table.query.clone());
    put("lower", table.lower.clone());
    put("upper", table.upper.clone());
    put("partition_expr", table.partition_expr.clone());
    put("split_by", table.split_by.clone());
    put("max_rows", table.max_rows.map(|v| v.to_string()));
    put("max_bytes", table.max_bytes.map(|v| v.to_string()));
    put("target", table.target.clone());
    put("target_database", table.target_database.clone());
    put("target_table", table.target_table.clone());
    for (k, v) in &table.options {
        inputs.insert(format!("options.{k}"), v.clone());
    }
    // A strategy setting is an input under the name it had when settings were written
    // among the template variables (`options.to_volume`), with the same text, so a
    // task recorded then keeps its fingerprint; validate refuses a setting in
    // `options`, so the two never meet.
    for (k, v) in &table.settings {
        inputs.insert(format!("options.{k}"), v.to_string());
    }
    // Where the data comes from and goes to: a moved source or target dirties the table.
    for name in std::iter::once(&table.source).chain(table.target.iter()) {
        if let Some(id) = identities.get(name.as_str()) {
            inputs.insert(format!("{CONNECTION_INPUT}{name}"), id.clone());
        }
    }
    inputs
}

/// The templates of a task as inputs: `template.<name>` = a hash of the text in effect
/// (built-in or the plan's `templates_dir`), for the templates the task's strategy says
/// it renders — a changed template dirties the tasks that use it, and only those.
struct TemplateInputs {
    hashes: BTreeMap<String, String>,
    /// What an earlier flow recorded instead: one hash over every built-in template
    /// (input `templates`); a task recorded that way and unchanged since stays done.
    superseded: Arc<BTreeMap<String, String>>,
}

/// The input an earlier flow recorded in place of the `template.*` inputs.
pub const SUPERSEDED_TEMPLATES_INPUT: &str = "templates";
/// Prefix of a task's template inputs.
pub const TEMPLATE_INPUT: &str = "template.";

/// The built-in templates the superseded `templates` input hashed: every template flow
/// shipped while that rule was in effect. Fixed here so that a template added since
/// (another engine's, a new statement) leaves that hash — and so the tasks recorded
/// with it — as they were.
const SUPERSEDED_TEMPLATE_SET: &[&str] = &[
    ".keep",
    "clickhouse/attach_partition.sql.j2",
    "clickhouse/chunk_rows.sql.j2",
    "clickhouse/columns.sql.j2",
    "clickhouse/count.sql.j2",
    "clickhouse/count_by_partition.sql.j2",
    "clickhouse/count_not_in.sql.j2",
    "clickhouse/count_s3.sql.j2",
    "clickhouse/create_database.sql.j2",
    "clickhouse/create_like.sql.j2",
    "clickhouse/create_marker.sql.j2",
    "clickhouse/create_table.sql.j2",
    "clickhouse/database_engine.sql.j2",
    "clickhouse/drop_partition.sql.j2",
    "clickhouse/drop_table.sql.j2",
    "clickhouse/exchange_tables.sql.j2",
    "clickhouse/export_s3.sql.j2",
    "clickhouse/insert_select.sql.j2",
    "clickhouse/insert_stream.sql.j2",
    "clickhouse/list_tables.sql.j2",
    "clickhouse/marker_info.sql.j2",
    "clickhouse/move_partition.sql.j2",
    "clickhouse/part_disks.sql.j2",
    "clickhouse/partition_id_rows.sql.j2",
    "clickhouse/partition_values.sql.j2",
    "clickhouse/parts.sql.j2",
    "clickhouse/policy_candidates.sql.j2",
    "clickhouse/quantiles.sql.j2",
    "clickhouse/rename_swap.sql.j2",
    "clickhouse/replace_partition.sql.j2",
    "clickhouse/select.sql.j2",
    "clickhouse/storage_policy.sql.j2",
    "clickhouse/table_info.sql.j2",
    "clickhouse/version.sql.j2",
];

/// Built-in templates of that set whose text changed since, with the text the
/// superseded input hashed: the hash is computed as it was, and a task that uses one
/// of them is not carried over (its statement is not the one it ran: it runs again).
const SUPERSEDED_TEXTS: &[(&str, &str)] = &[(
    "clickhouse/insert_select.sql.j2",
    "{# Copy rows inside one server. #}\nINSERT INTO {{ target }} ({{ columns }})\nSELECT \
     {{ columns }}\nFROM {{ from }}\n{%- if filter %}\nWHERE {{ filter }}\n{%- endif %}\n",
)];

/// The text the superseded `templates` input hashed for `name`, whose text in effect
/// is `src`: the old built-in text where flow's own changed since, else `src`.
fn superseded_text<'a>(name: &str, src: &'a str) -> &'a str {
    match SUPERSEDED_TEXTS.iter().find(|(n, _)| *n == name) {
        Some((_, old)) if crate::templates::builtin_source(name) == Some(src) => old,
        _ => src,
    }
}

impl TemplateInputs {
    fn new(templates: &Templates) -> Self {
        let mut hashes = BTreeMap::new();
        let mut all = blake3::Hasher::new();
        for name in crate::templates::builtin_template_names() {
            if let Some(src) = templates.source(&name) {
                if SUPERSEDED_TEMPLATE_SET.contains(&name.as_str()) {
                    all.update(name.as_bytes());
                    all.update(superseded_text(&name, &src).as_bytes());
                }
                let hash = blake3::hash(src.as_bytes()).to_hex()[..16].to_string();
                hashes.insert(name, hash);
            }
        }
        let legacy = all.finalize().to_hex()[..16].to_string();
        TemplateInputs {
            hashes,
            superseded: Arc::new(BTreeMap::from([(
                SUPERSEDED_TEMPLATES_INPUT.to_string(),
                legacy,
            )])),
        }
    }

    /// The table's shared inputs plus the templates a task of `kind` uses.
    fn shared_for(
        &self,
        table: &TableSpec,
        source: ConnectionKind,
        kind: TaskKind,
        common: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut inputs = common.clone();
        for name in table.strategy.strategy().templates(source, kind) {
            if let Some(hash) = self.hashes.get(name) {
                inputs.insert(format!("{TEMPLATE_INPUT}{name}"), hash.clone());
            }
        }
        inputs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_superseded_hash_reads_changed_built_ins_as_they_were_and_overrides_as_they_are() {
        let name = "clickhouse/insert_select.sql.j2";
        let shipped = crate::templates::builtin_source(name).unwrap();
        let old = SUPERSEDED_TEXTS[0].1;
        assert_ne!(shipped, old, "the shipped text changed since");
        assert_eq!(superseded_text(name, shipped), old);
        assert_eq!(superseded_text(name, "INSERT my own"), "INSERT my own");
        let unchanged = crate::templates::builtin_source("clickhouse/count.sql.j2").unwrap();
        assert_eq!(
            superseded_text("clickhouse/count.sql.j2", unchanged),
            unchanged
        );
        for (name, _) in SUPERSEDED_TEXTS {
            assert!(SUPERSEDED_TEMPLATE_SET.contains(name), "{name}");
        }
    }
}
