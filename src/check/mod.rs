//! Checking: a parsed [`PlanFile`] becomes a [`Plan`], or a list of every problem.
//!
//! The checker never stops at the first mistake: it walks the whole file, records a
//! [`Diagnostic`] per problem (thing, problem, fix, span) and only builds the plan when
//! there are none. Parse errors (bad TOML, unknown keys, wrong types) come from serde
//! with their span; everything after that is checked here (`[[volumes]]` entries in
//! [`volumes`]).

mod volumes;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use petgraph::graph::DiGraph;
use toml::Spanned;

use crate::graph::expand::{expand, path_context, PartitionMap};
use crate::graph::GraphError;
use crate::plan::destructive;
use crate::plan::diagnostic::{Diagnostic, Diagnostics, SourceFile};
use crate::plan::interpolate::Interpolated;
use crate::plan::partitions::expand_range;
use crate::plan::schema::{
    ConnectionDef, ConnectionKind, Mode, PlanFile, StepDef, StepKind, TableDef,
};
use crate::plan::secrets;
use crate::plan::{
    Connection, ExportFormat, Formatting, PartitionSource, Plan, ServerSide, SettingValue,
    StepSpec, TableSpec,
};
use crate::strategy::StrategyKind;
use crate::templates::Templates;

/// Longest `pause_between` of a connection.
pub const MAX_PAUSE_BETWEEN: Duration = Duration::from_secs(24 * 3600);
/// Longest first retry delay.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(3600);
/// Longest step `timeout` (a copy of terabytes may take days, not years).
pub const MAX_STEP_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

/// Options that change how a plan is read.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--var NAME=VALUE` overrides of `[plan.vars]`.
    pub vars: BTreeMap<String, String>,
}

/// The outcome of loading a plan: the plan when it is valid, and every diagnostic.
#[derive(Debug)]
pub struct Loaded {
    pub source: Arc<SourceFile>,
    pub plan: Option<Plan>,
    /// The graph the checker expanded (offline partitions) to prove the plan runnable.
    pub graph: Option<crate::graph::TaskGraph>,
    pub diagnostics: Diagnostics,
}

/// Reads and checks a plan file.
pub fn load(path: &Path, options: &LoadOptions) -> std::io::Result<Loaded> {
    let bytes = std::fs::read(path)?;
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => return Ok(not_utf8(path, &e)),
    };
    Ok(check_source(
        SourceFile {
            path: path.to_path_buf(),
            text,
        },
        options,
    ))
}

/// A plan that is not UTF-8: one diagnostic at the first bad byte. The excerpt shows
/// the text with the bad bytes replaced; the valid prefix (and so the offset) is the
/// same in both.
fn not_utf8(path: &Path, e: &std::string::FromUtf8Error) -> Loaded {
    let offset = e.utf8_error().valid_up_to();
    let bytes = e.as_bytes();
    let source = Arc::new(SourceFile {
        path: path.to_path_buf(),
        text: String::from_utf8_lossy(bytes).into_owned(),
    });
    let byte = bytes[offset];
    let mut diagnostics = Diagnostics::default();
    diagnostics.push(Diagnostic::error(
        Some(offset..offset + char::REPLACEMENT_CHARACTER.len_utf8()),
        format!(
            "the plan is not UTF-8 text: byte 0x{byte:02x} at offset {offset} is not valid UTF-8"
        ),
        "not UTF-8",
        "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
    ));
    Loaded {
        source,
        plan: None,
        graph: None,
        diagnostics,
    }
}

/// Checks plan text (the file name is used in messages and to resolve relative paths).
pub fn check_source(source: SourceFile, options: &LoadOptions) -> Loaded {
    let source = Arc::new(source);
    let mut diagnostics = Diagnostics::default();
    let unknown = crate::plan::keys::check(&source.text);
    if !unknown.is_empty() {
        diagnostics.items = unknown;
        diagnostics.sort();
        return Loaded {
            source,
            plan: None,
            graph: None,
            diagnostics,
        };
    }
    let file: PlanFile = match toml::from_str(&source.text) {
        Ok(f) => f,
        Err(e) => {
            diagnostics.push(parse_diagnostic(&e));
            for range in secrets::secret_ranges_in_text(&source.text) {
                diagnostics.mask(range);
            }
            return Loaded {
                source,
                plan: None,
                graph: None,
                diagnostics,
            };
        }
    };
    let mut checker = Checker {
        source: source.clone(),
        diags: Diagnostics::default(),
    };
    let checked = checker.check(file, options);
    let mut diagnostics = checker.diags;
    diagnostics.sort();
    let (plan, graph) = match checked {
        Some((plan, graph)) if !diagnostics.has_errors() => (Some(plan), graph),
        _ => (None, None),
    };
    Loaded {
        source,
        plan,
        graph,
        diagnostics,
    }
}

fn parse_diagnostic(e: &toml::de::Error) -> Diagnostic {
    let message = e
        .message()
        .trim()
        .replace("expected i64", "expected an integer")
        .replace("expected a boolean", "expected true or false");
    let help = if message.starts_with("unknown field") {
        "remove the key or fix its spelling; `flow schema` lists every key"
    } else if message.starts_with("missing field") {
        "add the key; `flow schema` lists the required keys"
    } else if message.starts_with("unknown variant") {
        "use one of the values listed"
    } else if message.starts_with("invalid type") {
        "write the value with the type the key expects (quotes for strings, none for numbers)"
    } else {
        "fix the TOML syntax at the caret"
    };
    let (message, label) = match message.split_once(", expected") {
        Some((head, _)) if head.starts_with("unknown field") => (message.clone(), head.to_string()),
        _ => (message.clone(), "here".to_string()),
    };
    Diagnostic::error(e.span(), message, label, help)
}

struct Checker {
    source: Arc<SourceFile>,
    diags: Diagnostics,
}

fn span<T>(s: &Spanned<T>) -> Option<Range<usize>> {
    Some(s.span())
}

/// Longest plan, table or step name: names become file names (`<name>.report.json`,
/// log files), and a file name has at most 255 bytes.
pub const MAX_NAME_LEN: usize = 128;

/// A name that can be part of a file name and a task id: letters, digits, `_`, `-`,
/// `.`, not starting with `.` (`..` would leave the state folder), not too long.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Keys each connection kind uses, in the order `flow schema` documents them.
fn keys_for(kind: ConnectionKind) -> &'static [&'static str] {
    match kind {
        ConnectionKind::Clickhouse => &[
            "url",
            "user",
            "password",
            "database",
            "settings",
            "max_concurrency",
            "pause_between",
        ],
        ConnectionKind::Mysql => &[
            "url",
            "user",
            "password",
            "database",
            "max_concurrency",
            "pause_between",
        ],
        ConnectionKind::Starrocks => &[
            "url",
            "user",
            "password",
            "database",
            "http_url",
            "max_concurrency",
            "pause_between",
        ],
        ConnectionKind::S3 => &[
            "endpoint",
            "bucket",
            "region",
            "prefix",
            "path_style",
            "access_key_id",
            "secret_access_key",
            "settings",
            "max_concurrency",
            "pause_between",
        ],
        ConnectionKind::Fs => &["path", "max_concurrency", "pause_between"],
        ConnectionKind::Ec2 => &[
            "endpoint",
            "region",
            "access_key_id",
            "secret_access_key",
            "max_concurrency",
            "pause_between",
        ],
        ConnectionKind::Kubernetes => {
            &["kubeconfig", "context", "max_concurrency", "pause_between"]
        }
    }
}

fn required_for(kind: ConnectionKind) -> &'static [&'static str] {
    match kind {
        ConnectionKind::Clickhouse | ConnectionKind::Mysql | ConnectionKind::Starrocks => &["url"],
        ConnectionKind::S3 => &["bucket"],
        ConnectionKind::Fs => &["path"],
        ConnectionKind::Ec2 | ConnectionKind::Kubernetes => &[],
    }
}

impl Checker {
    fn error(
        &mut self,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        label: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.diags
            .push(Diagnostic::error(span, message, label, help));
    }

    fn check(
        &mut self,
        file: PlanFile,
        options: &LoadOptions,
    ) -> Option<(Plan, Option<crate::graph::TaskGraph>)> {
        let section_span = file.plan.span();
        let section = file.plan.into_inner();
        let name = section.name.get_ref().trim().to_string();
        if name.len() > MAX_NAME_LEN {
            self.error(
                span(&section.name),
                format!(
                    "plan name is {} characters long, too long to name a state file",
                    name.len()
                ),
                "too long",
                format!("use at most {MAX_NAME_LEN} characters (e.g. name = \"trips-export\")"),
            );
        } else if !valid_name(&name) {
            self.error(
                span(&section.name),
                format!("plan name \"{name}\" cannot name a state file"),
                "invalid name",
                "use letters, digits, `-`, `_` or `.`, not starting with `.` (e.g. name = \"trips-export\")",
            );
        }
        let concurrency = self.positive(section.concurrency.as_ref(), "plan concurrency", 4);
        let retries = match &section.retries {
            Some(r) if *r.get_ref() < 0 || *r.get_ref() > 100 => {
                self.error(
                    span(r),
                    "plan retries must be between 0 and 100",
                    "out of range",
                    "set retries = 3 (attempts after the first for transient errors)",
                );
                3
            }
            Some(r) => *r.get_ref() as u32,
            None => 3,
        };
        let retry_backoff = self
            .duration(
                section.retry_backoff.as_ref(),
                "plan retry_backoff",
                MAX_RETRY_BACKOFF,
            )
            .unwrap_or(Duration::from_secs(2));
        let base = self
            .source
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let resolve_dir = |p: &str| -> PathBuf {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                p
            } else {
                base.join(p)
            }
        };
        let state_dir = resolve_dir(section.state_dir.as_deref().unwrap_or(".flow"));
        if let Some(file) = state_dir
            .ancestors()
            .find(|p| p.exists())
            .filter(|p| !p.is_dir())
        {
            self.error(
                Some(section_span.clone()),
                format!(
                    "state_dir {} cannot hold the plan's state: {} is a file, not a folder",
                    state_dir.display(),
                    file.display()
                ),
                "in this section",
                "set state_dir to a folder (it is created when missing), or move the file away",
            );
        }
        let templates_dir = section.templates_dir.as_deref().map(resolve_dir);
        if let Some(dir) = &templates_dir {
            if !dir.is_dir() {
                self.error(
                    Some(section_span.clone()),
                    format!("templates_dir {} is not a directory", dir.display()),
                    "in this section",
                    "create the directory or remove templates_dir to use the built-in templates",
                );
            }
        }
        let templates = match Templates::new(templates_dir.as_deref().filter(|d| d.is_dir())) {
            Ok(t) => Some(t),
            Err(e) => {
                self.error(
                    Some(section_span.clone()),
                    format!("a template override does not parse: {e}"),
                    "templates_dir",
                    "fix the template syntax (minijinja / Jinja2)",
                );
                None
            }
        };
        let report_path = section
            .report
            .as_deref()
            .map(resolve_dir)
            .unwrap_or_else(|| state_dir.join(format!("{name}.report.json")));
        let mut vars = section.vars.clone();
        vars.extend(options.vars.clone());

        let connections = self.connections(&file.connections);
        let mut tables = Vec::new();
        let mut table_names: HashMap<String, Range<usize>> = HashMap::new();
        for (index, def) in file.tables.iter().enumerate() {
            if let Some(t) = self.table(index, def, &connections) {
                if let Some(first) = table_names.get(&t.name) {
                    let (line, _) = self.source.line_col(first.start);
                    self.error(
                        Some(t.span.clone()),
                        format!(
                            "table name \"{}\" is used twice (first at line {line})",
                            t.name
                        ),
                        "duplicate",
                        "give one of them `name = \"…\"` so task ids stay unique",
                    );
                } else {
                    table_names.insert(t.name.clone(), t.span.clone());
                }
                tables.push(t);
            }
        }
        let volumes = self.volumes(&file.volumes, &connections, &mut table_names);
        let steps = self.steps(&file.steps, &connections, &table_names);
        self.volume_afters(&file.volumes, &steps, &table_names);

        let plan = Plan {
            name,
            description: section.description.clone(),
            source: self.source.clone(),
            concurrency,
            state_dir,
            templates_dir,
            report_path,
            retries,
            retry_backoff,
            vars,
            connections,
            tables,
            volumes,
            steps,
        };
        // Rendered even when other errors were found, so every error shows at once.
        let templates = templates?;
        self.templates_render(&plan, &templates);
        if self.diags.has_errors() {
            return None;
        }
        let graph = match expand(&plan, &templates, &PartitionMap::new()) {
            Ok(graph) => Some(graph),
            Err(e) => {
                self.graph_error(&plan, e);
                None
            }
        };
        Some((plan, graph))
    }

    fn positive(&mut self, v: Option<&Spanned<i64>>, what: &str, default: usize) -> usize {
        match v {
            Some(n) if *n.get_ref() < 1 || *n.get_ref() > 10_000 => {
                self.error(
                    span(n),
                    format!("{what} must be between 1 and 10000"),
                    "out of range",
                    format!("set it to a positive number of tasks, e.g. {default}"),
                );
                default
            }
            Some(n) => *n.get_ref() as usize,
            None => default,
        }
    }

    /// A duration no longer than `max`: longer ones are refused here, so no timer, pause
    /// or backoff at run time ever has to handle an absurd value.
    fn duration(
        &mut self,
        v: Option<&Spanned<String>>,
        what: &str,
        max: Duration,
    ) -> Option<Duration> {
        let v = v?;
        let limit = humantime::format_duration(max);
        match humantime::parse_duration(v.get_ref()) {
            Ok(d) if d > max => {
                self.error(
                    span(v),
                    format!(
                        "{what} \"{}\" is longer than the limit of {limit}",
                        v.get_ref()
                    ),
                    "too long",
                    format!("write a duration of at most {limit}"),
                );
                None
            }
            Ok(d) => Some(d),
            Err(humantime::DurationError::NumberOverflow) => {
                self.error(
                    span(v),
                    format!("{what} \"{}\" is too large to be a duration", v.get_ref()),
                    "too long",
                    format!("write a duration of at most {limit}"),
                );
                None
            }
            Err(e) => {
                self.error(
                    span(v),
                    format!("{what} \"{}\" is not a duration: {e}", v.get_ref()),
                    "not a duration",
                    "write a duration like \"500ms\", \"1s\", \"2m\" or \"1h 30m\"",
                );
                None
            }
        }
    }

    fn interpolated(&mut self, v: Option<&Spanned<String>>, what: &str) -> Option<Interpolated> {
        let v = v?;
        match Interpolated::parse(v.get_ref()) {
            Ok(i) => Some(i),
            Err(e) => {
                self.error(
                    span(v),
                    format!("{what}: {e}"),
                    "bad reference",
                    "write ${env:NAME} or ${env:NAME:-default}; write $${ for a literal ${",
                );
                None
            }
        }
    }

    /// Refuses clear text in a secret position; the excerpt of the error masks the value.
    fn clear_secret(&mut self, value: &Interpolated, at: Range<usize>, what: &str, fix: &str) {
        if let Some(why) = secrets::clear_text(value) {
            self.diags.mask(at.clone());
            self.error(
                Some(at),
                format!("{what} {why}"),
                "secret in the plan",
                format!("read it from the environment, with no default: {fix}"),
            );
        }
    }

    /// Every secret position of a connection: keys, URL userinfo, secret settings.
    fn clear_secrets(&mut self, name: &str, def: &ConnectionDef) {
        let env_name = |key: &str| {
            format!(
                "{}_{}",
                name.to_uppercase().replace('-', "_"),
                key.to_uppercase()
            )
        };
        for (key, value) in [
            ("password", &def.password),
            ("access_key_id", &def.access_key_id),
            ("secret_access_key", &def.secret_access_key),
        ] {
            let Some(v) = value else { continue };
            let Ok(parsed) = Interpolated::parse(v.get_ref()) else {
                continue;
            };
            // A key id alone names an account; only a clear one beside an env reference
            // or as a default is refused, like any secret built from clear text.
            if key == "access_key_id" && parsed.is_literal() {
                continue;
            }
            self.clear_secret(
                &parsed,
                v.span(),
                &format!("connection \"{name}\": `{key}`"),
                &format!("{key} = \"${{env:{}}}\"", env_name(key)),
            );
        }
        for (key, value) in [
            ("url", &def.url),
            ("endpoint", &def.endpoint),
            ("http_url", &def.http_url),
        ] {
            let Some(v) = value else { continue };
            let Some(password) = secrets::userinfo_password(v.get_ref()) else {
                continue;
            };
            if let Ok(parsed) = Interpolated::parse(password) {
                self.clear_secret(
                    &parsed,
                    v.span(),
                    &format!("connection \"{name}\": the password in the userinfo of `{key}`"),
                    &format!(
                        "{key} = \"${{env:{}}}\" holding the whole URL, or no password in the URL and password = \"${{env:{}}}\"",
                        env_name(key),
                        env_name("password")
                    ),
                );
            }
        }
        for (key, v) in &def.settings {
            match Interpolated::parse(v.get_ref()) {
                Ok(parsed) if secrets::name_marks_secret(key) => self.clear_secret(
                    &parsed,
                    v.span(),
                    &format!("connection \"{name}\": setting `{key}`"),
                    &format!("{key} = \"${{env:{}}}\"", env_name(key)),
                ),
                Ok(_) => {}
                Err(e) => self.error(
                    Some(v.span()),
                    format!("connection \"{name}\": setting `{key}`: {e}"),
                    "bad reference",
                    "write ${env:NAME} or ${env:NAME:-default}; write $${ for a literal ${",
                ),
            }
        }
    }

    fn connections(
        &mut self,
        defs: &BTreeMap<Spanned<String>, Spanned<ConnectionDef>>,
    ) -> BTreeMap<String, Connection> {
        let mut out = BTreeMap::new();
        for (name, def) in defs {
            let name_str = name.get_ref().clone();
            if !valid_name(&name_str) || name_str.contains('.') {
                self.error(
                    span(name),
                    format!("connection name \"{name_str}\" is not a plain name"),
                    "invalid name",
                    "use letters, digits, `-` or `_`",
                );
            }
            let def_span = def.span();
            let def = def.get_ref();
            let kind = *def.kind.get_ref();
            let present: Vec<(&str, Option<Range<usize>>)> = [
                ("url", def.url.as_ref().map(|s| s.span())),
                ("user", def.user.as_ref().map(|s| s.span())),
                ("password", def.password.as_ref().map(|s| s.span())),
                ("database", def.database.as_ref().map(|s| s.span())),
                (
                    "max_concurrency",
                    def.max_concurrency.as_ref().map(|s| s.span()),
                ),
                (
                    "pause_between",
                    def.pause_between.as_ref().map(|s| s.span()),
                ),
                ("endpoint", def.endpoint.as_ref().map(|s| s.span())),
                ("bucket", def.bucket.as_ref().map(|s| s.span())),
                ("region", def.region.as_ref().map(|s| s.span())),
                ("prefix", def.prefix.as_ref().map(|s| s.span())),
                ("path_style", def.path_style.map(|_| def_span.clone())),
                (
                    "access_key_id",
                    def.access_key_id.as_ref().map(|s| s.span()),
                ),
                (
                    "secret_access_key",
                    def.secret_access_key.as_ref().map(|s| s.span()),
                ),
                ("path", def.path.as_ref().map(|s| s.span())),
                ("http_url", def.http_url.as_ref().map(|s| s.span())),
                (
                    "settings",
                    (!def.settings.is_empty()).then(|| def_span.clone()),
                ),
            ]
            .into_iter()
            .filter_map(|(k, s)| s.map(|s| (k, Some(s))))
            .collect();
            let allowed = keys_for(kind);
            for (key, key_span) in &present {
                if !allowed.contains(key) {
                    self.error(
                        key_span.clone(),
                        format!(
                            "connection \"{name_str}\": key `{key}` does not apply to a {} connection",
                            kind.as_str()
                        ),
                        "not used by this kind",
                        format!(
                            "remove it; a {} connection uses: {}",
                            kind.as_str(),
                            allowed.join(", ")
                        ),
                    );
                }
            }
            for key in required_for(kind) {
                if !present.iter().any(|(k, _)| k == key) {
                    self.error(
                        Some(def_span.clone()),
                        format!(
                            "connection \"{name_str}\" ({}) has no `{key}`",
                            kind.as_str()
                        ),
                        "in this connection",
                        format!("add `{key} = \"…\"`"),
                    );
                }
            }
            if kind == ConnectionKind::S3 {
                self.s3_settings(&name_str, def);
            }
            self.clear_secrets(&name_str, def);
            let what = |k: &str| format!("connection \"{name_str}\" {k}");
            let url = self.interpolated(def.url.as_ref(), &what("url"));
            if let (Some(u), Some(raw)) = (&url, &def.url) {
                if u.is_literal() {
                    let ok = match kind {
                        ConnectionKind::Clickhouse => {
                            u.raw().starts_with("http://") || u.raw().starts_with("https://")
                        }
                        ConnectionKind::Mysql | ConnectionKind::Starrocks => {
                            u.raw().starts_with("mysql://")
                        }
                        _ => true,
                    };
                    if !ok {
                        let example = if kind == ConnectionKind::Clickhouse {
                            "http://127.0.0.1:8123 (the HTTP interface)"
                        } else {
                            "mysql://127.0.0.1:3306"
                        };
                        self.error(
                            span(raw),
                            format!(
                                "connection \"{name_str}\": url \"{}\" has the wrong scheme",
                                match secrets::userinfo_password(u.raw()) {
                                    Some(p) => u.raw().replacen(p, crate::redact::MASK, 1),
                                    None => u.raw().to_string(),
                                }
                            ),
                            "wrong scheme",
                            format!("write it as {example}"),
                        );
                    }
                }
            }
            for (key, value) in [
                ("url", &def.url),
                ("endpoint", &def.endpoint),
                ("http_url", &def.http_url),
            ] {
                // A password in clear in the userinfo is reported (masked) as a clear
                // secret already: one error for one problem.
                let clear_password = |raw: &str| {
                    secrets::userinfo_password(raw)
                        .and_then(|p| Interpolated::parse(p).ok())
                        .is_some_and(|p| secrets::clear_text(&p).is_some())
                };
                if let Some(v) = value
                    .as_ref()
                    .filter(|v| url_has_credentials(v.get_ref()) && !clear_password(v.get_ref()))
                {
                    let fix = if kind.is_sql() {
                        "remove them from the URL; write user = \"…\" and password = \"${env:…}\""
                    } else {
                        "remove them from the URL; write access_key_id and secret_access_key = \"${env:…}\", or use the AWS default chain"
                    };
                    self.error(
                        span(v),
                        format!("connection \"{name_str}\": `{key}` has credentials in it (user:password@)"),
                        "credentials in a URL",
                        fix,
                    );
                }
            }
            let bucket = self.interpolated(def.bucket.as_ref(), &what("bucket"));
            if let (Some(b), Some(raw)) = (&bucket, &def.bucket) {
                if b.is_literal() && !(3..=63).contains(&b.raw().len()) {
                    self.error(
                        span(raw),
                        format!(
                            "connection \"{name_str}\": bucket \"{}\" must be 3 to 63 characters",
                            b.raw()
                        ),
                        "invalid bucket name",
                        "use a valid S3 bucket name",
                    );
                }
            }
            let max_concurrency = def
                .max_concurrency
                .as_ref()
                .map(|m| self.positive(Some(m), &what("max_concurrency"), 1));
            let pause_between = self.duration(
                def.pause_between.as_ref(),
                &what("pause_between"),
                MAX_PAUSE_BETWEEN,
            );
            let connection = Connection {
                name: name_str.clone(),
                kind,
                url,
                user: self.interpolated(def.user.as_ref(), &what("user")),
                password: self.interpolated(def.password.as_ref(), &what("password")),
                database: self.interpolated(def.database.as_ref(), &what("database")),
                max_concurrency,
                pause_between,
                endpoint: self.interpolated(def.endpoint.as_ref(), &what("endpoint")),
                bucket,
                region: self.interpolated(def.region.as_ref(), &what("region")),
                prefix: self.interpolated(def.prefix.as_ref(), &what("prefix")),
                path_style: def.path_style,
                access_key_id: self
                    .interpolated(def.access_key_id.as_ref(), &what("access_key_id")),
                secret_access_key: self
                    .interpolated(def.secret_access_key.as_ref(), &what("secret_access_key")),
                path: self.interpolated(def.path.as_ref(), &what("path")),
                http_url: self.interpolated(def.http_url.as_ref(), &what("http_url")),
                kubeconfig: def.kubeconfig.as_ref().map(|p| {
                    let p = PathBuf::from(p.get_ref());
                    if p.is_absolute() {
                        p
                    } else {
                        self.source.path.parent().map(|d| d.join(&p)).unwrap_or(p)
                    }
                }),
                context: self.interpolated(def.context.as_ref(), &what("context")),
                settings: def
                    .settings
                    .iter()
                    .map(|(k, v)| (k.clone(), v.get_ref().clone()))
                    .collect(),
                span: def_span,
            };
            out.insert(name_str, connection);
        }
        out
    }

    /// Checks a connection reference; returns its kind when it exists.
    fn reference(
        &mut self,
        r: &Spanned<String>,
        what: &str,
        connections: &BTreeMap<String, Connection>,
    ) -> Option<ConnectionKind> {
        match connections.get(r.get_ref()) {
            Some(c) => Some(c.kind),
            None => {
                let known: Vec<&str> = connections.keys().map(String::as_str).collect();
                let help = if known.is_empty() {
                    format!("declare it: [connections.{}] with a kind", r.get_ref())
                } else {
                    format!(
                        "use one of: {}, or declare [connections.{}]",
                        known.join(", "),
                        r.get_ref()
                    )
                };
                self.error(
                    span(r),
                    format!("{what} \"{}\" is not a declared connection", r.get_ref()),
                    "unknown connection",
                    help,
                );
                None
            }
        }
    }

    /// The settings of an s3 connection: the part size of its multipart uploads and the
    /// part buffers its writers share (the store's memory bound is their product).
    fn s3_settings(&mut self, name: &str, def: &ConnectionDef) {
        use crate::engines::store::s3::{
            setting_number, MAX_PARTS_IN_FLIGHT, MAX_PART_SIZE, MIN_PART_SIZE,
        };
        for (key, value) in &def.settings {
            let (range, fix) = match key.as_str() {
                "part_size" => (
                    MIN_PART_SIZE..=MAX_PART_SIZE,
                    "bytes per part, from 5242880 (5 MiB, S3's minimum) to 5368709120 (5 GiB)",
                ),
                "parts_in_flight" => (
                    1..=MAX_PARTS_IN_FLIGHT,
                    "part buffers the store's writers share, 1 to 256 (memory: part_size × this)",
                ),
                _ => {
                    self.error(
                        span(value),
                        format!("connection \"{name}\": setting `{key}` is not known for an s3 connection"),
                        "unknown setting",
                        "an s3 connection takes settings = { part_size = \"…\", parts_in_flight = \"…\" }",
                    );
                    continue;
                }
            };
            if !setting_number(value.get_ref()).is_some_and(|n| range.contains(&n)) {
                self.error(
                    span(value),
                    format!(
                        "connection \"{name}\": setting `{key}` = \"{}\" is out of range",
                        value.get_ref()
                    ),
                    "invalid setting",
                    fix,
                );
            }
        }
    }

    /// A table's strategy settings (`settings`): each strategy declares its own (name,
    /// kind); an unknown one, another strategy's, or a value of the wrong kind is an
    /// error at its line — it would be ignored otherwise. A setting written among the
    /// template variables (`options`, where settings were once written) is refused with
    /// the fix, not read as a template variable. Returns the checked values.
    fn settings(
        &mut self,
        def: &TableDef,
        label: &str,
        strategy: StrategyKind,
    ) -> BTreeMap<String, SettingValue> {
        let declared = |key: &str| {
            StrategyKind::ALL.iter().find_map(|owner| {
                owner
                    .strategy()
                    .settings()
                    .iter()
                    .find(|s| s.key == key)
                    .map(|s| (*owner, s))
            })
        };
        let own: Vec<&str> = strategy
            .strategy()
            .settings()
            .iter()
            .map(|s| s.key)
            .collect();
        let mut checked = BTreeMap::new();
        for (key, value) in &def.settings {
            match declared(key) {
                None => self.error(
                    span(value),
                    format!(
                        "table {label}: strategy \"{}\" has no setting `{key}`",
                        strategy.name()
                    ),
                    "unknown setting",
                    if own.is_empty() {
                        format!(
                            "remove it: strategy \"{}\" has no settings (template variables go in `options`)",
                            strategy.name()
                        )
                    } else {
                        format!(
                            "its settings are `{}` (template variables go in `options`, server settings in the connection's `settings`)",
                            own.join("`, `")
                        )
                    },
                ),
                Some((owner, _)) if owner != strategy => self.error(
                    span(value),
                    format!(
                        "table {label}: `settings.{key}` is a setting of strategy \"{}\", not of \"{}\"",
                        owner.name(),
                        strategy.name()
                    ),
                    "not used by this strategy",
                    "remove it",
                ),
                Some((_, setting)) => match setting.kind.check(value.get_ref()) {
                    Ok(v) => {
                        checked.insert(key.clone(), v);
                    }
                    Err(problem) => self.error(
                        span(value),
                        format!(
                            "table {label}: `settings.{key}` = {}: {problem}",
                            value.get_ref()
                        ),
                        "invalid setting",
                        setting.help,
                    ),
                },
            }
        }
        for (key, value) in &def.options {
            if let Some((owner, setting)) = declared(key) {
                // The value as TOML of the setting's type.
                let written = match (setting.kind, value.get_ref().as_str()) {
                    (crate::strategy::SettingKind::Bool, b @ ("true" | "false")) => b.to_string(),
                    (crate::strategy::SettingKind::Bool, _) => "true (or false)".to_string(),
                    (_, text) => toml::Value::String(text.to_string()).to_string(),
                };
                self.error(
                    span(value),
                    format!(
                        "table {label}: `options.{key}` is a setting of strategy \"{}\"; `options` holds template variables only",
                        owner.name()
                    ),
                    "a setting, not a template variable",
                    format!("write it as `settings.{key} = {written}` in this table"),
                );
            }
        }
        checked
    }

    /// What the source engine cannot do, checked against the table entry: its formats
    /// and the keys it cannot honour (the facts come from the engine registry).
    fn source_limits(
        &mut self,
        def: &TableDef,
        label: &str,
        kind: ConnectionKind,
        strategy: StrategyKind,
    ) {
        let limits = strategy.strategy().source_limits(kind);
        if let (Some(formats), Some(f)) = (limits.formats, &def.format) {
            if let Some(format) = ExportFormat::parse(f.get_ref()) {
                if !formats.contains(&format) {
                    let names: Vec<String> = formats
                        .iter()
                        .map(|f| format!("\"{}\"", f.name()))
                        .collect();
                    self.error(
                        span(f),
                        format!(
                            "table {label}: a {} source cannot write format \"{}\"",
                            kind.as_str(),
                            f.get_ref()
                        ),
                        "format not available from this source",
                        format!("use format = {}", names.join(" or ")),
                    );
                }
            }
        }
        for (key, fix) in limits.unsupported {
            if let Some(at) = table_key_span(def, key) {
                self.error(
                    Some(at),
                    format!(
                        "table {label}: `{key}` is not available from a {} source",
                        kind.as_str()
                    ),
                    "not supported by this source",
                    *fix,
                );
            }
        }
    }

    fn table(
        &mut self,
        index: usize,
        def: &Spanned<TableDef>,
        connections: &BTreeMap<String, Connection>,
    ) -> Option<TableSpec> {
        let table_span = def.span();
        let def = def.get_ref();
        let errors_before = self.diags.errors();
        let text = |s: &Option<Spanned<String>>| s.as_ref().map(|v| v.get_ref().trim().to_string());

        let strategy = match StrategyKind::parse(def.strategy.get_ref()) {
            Some(s) => Some(s),
            None => {
                self.error(
                    span(&def.strategy),
                    format!("strategy \"{}\" is not known", def.strategy.get_ref()),
                    "unknown strategy",
                    format!("use one of: {}", StrategyKind::names()),
                );
                None
            }
        };
        let database = text(&def.database).unwrap_or_else(|| "default".to_string());
        let table_name = text(&def.table);
        let query = text(&def.query);
        let label = table_name
            .clone()
            .map(|t| format!("{database}.{t}"))
            .or_else(|| text(&def.name))
            .unwrap_or_else(|| format!("tables[{index}]"));
        let source_kind =
            self.reference(&def.source, &format!("table {label}: source"), connections);
        let target_kind = def
            .target
            .as_ref()
            .and_then(|t| self.reference(t, &format!("table {label}: target"), connections));

        match (&table_name, &query) {
            (Some(_), Some(_)) => self.error(
                def.query.as_ref().map(|q| q.span()),
                format!("table {label} has both `table` and `query`"),
                "one of them",
                "keep `table` to move a table, or `query` (with `name`) to export a query result",
            ),
            (None, None) => self.error(
                Some(table_span.clone()),
                format!("tables[{index}] has neither `table` nor `query`"),
                "in this entry",
                "add `table = \"…\"` (and `database`), or `query = \"SELECT …\"` with `name`",
            ),
            _ => {}
        }
        if query.is_some() && def.name.is_none() {
            self.error(
                def.query.as_ref().map(|q| q.span()),
                format!("query table tables[{index}] has no `name`"),
                "needs a name",
                "add `name = \"…\"`: it names the task ids and output files",
            );
        }
        if let Some(n) = &def.name {
            if !valid_name(n.get_ref()) {
                self.error(
                    span(n),
                    format!("table name \"{}\" cannot be part of a task id", n.get_ref()),
                    "invalid name",
                    "use letters, digits, `-`, `_` or `.` (not first), at most 128 characters",
                );
            }
        }

        let mut settings = BTreeMap::new();
        if let Some(strategy) = strategy {
            settings = self.settings(def, &label, strategy);
            let entry = crate::strategy::EntryContext {
                label: &label,
                database: &database,
                table: table_name.as_deref(),
                same_server: &|a, b| same_server(connections, a, b),
            };
            for p in strategy.strategy().check_entry(def, &entry) {
                self.error(
                    p.at.or_else(|| Some(table_span.clone())),
                    p.message,
                    p.label,
                    p.help,
                );
            }
            let req = strategy.strategy().requirements();
            if let Some(kind) = source_kind {
                if !req.source_kinds.contains(&kind) {
                    self.error(
                        span(&def.source),
                        format!(
                            "table {label}: strategy \"{}\" needs a {} source, \"{}\" is {}",
                            strategy.name(),
                            kinds(&req.source_kinds),
                            def.source.get_ref(),
                            kind.as_str()
                        ),
                        "wrong kind of connection",
                        format!(
                            "point `source` at a {} connection",
                            kinds(&req.source_kinds)
                        ),
                    );
                } else {
                    self.source_limits(def, &label, kind, strategy);
                }
            }
            match (&def.target, target_kind) {
                (None, _) if req.target_required => self.error(
                    Some(table_span.clone()),
                    format!(
                        "table {label}: strategy \"{}\" needs a `target`",
                        strategy.name()
                    ),
                    "no target",
                    format!(
                        "add `target = \"…\"` naming a {} connection",
                        kinds(&req.target_kinds)
                    ),
                ),
                (Some(t), _) if req.target_kinds.is_empty() => self.error(
                    span(t),
                    format!(
                        "table {label}: strategy \"{}\" has no target",
                        strategy.name()
                    ),
                    "not used",
                    "remove `target`; the strategy works on the source itself",
                ),
                (Some(t), Some(kind)) if !req.target_kinds.contains(&kind) => self.error(
                    span(t),
                    format!(
                        "table {label}: strategy \"{}\" needs a {} target, \"{}\" is {}",
                        strategy.name(),
                        kinds(&req.target_kinds),
                        t.get_ref(),
                        kind.as_str()
                    ),
                    "wrong kind of connection",
                    format!(
                        "point `target` at a {} connection",
                        kinds(&req.target_kinds)
                    ),
                ),
                _ => {}
            }
            if query.is_some() && !req.allows_query {
                self.error(
                    def.query.as_ref().map(|q| q.span()),
                    format!(
                        "table {label}: strategy \"{}\" cannot take a `query`",
                        strategy.name()
                    ),
                    "query not allowed",
                    "use strategy = \"export\" for a query, or name a `table`",
                );
            }
            if table_name.as_deref() == Some("*") && !req.allows_whole_database {
                self.error(
                    def.table.as_ref().map(|t| t.span()),
                    format!(
                        "table {label}: strategy \"{}\" cannot take table = \"*\"",
                        strategy.name()
                    ),
                    "whole database not allowed",
                    "name one table, or use strategy = \"s3-policy\" for a whole database",
                );
            }
        }

        let default_mode = if query.is_some() {
            Mode::All
        } else if def.partition_expr.is_some()
            || def.partitions.is_some()
            || def.partition_range.is_some()
            || strategy.is_some_and(|s| s.strategy().requirements().partitioned)
        {
            Mode::Partition
        } else {
            Mode::All
        };
        let mode = def
            .mode
            .as_ref()
            .map(|m| *m.get_ref())
            .unwrap_or(default_mode);
        if query.is_some() && mode == Mode::Partition {
            self.error(
                def.mode.as_ref().map(|m| m.span()),
                format!("table {label}: a query is exported whole"),
                "query with mode = \"partition\"",
                "remove `mode` (or set mode = \"all\"); bound the rows inside the query",
            );
        }
        if mode == Mode::All {
            for (key, present) in [
                (
                    "partition_expr",
                    def.partition_expr.as_ref().map(|s| s.span()),
                ),
                ("partitions", def.partitions.as_ref().map(|s| s.span())),
                (
                    "partition_range",
                    def.partition_range.as_ref().map(|s| s.span()),
                ),
                ("split_by", def.split_by.as_ref().map(|s| s.span())),
            ] {
                if let Some(s) = present {
                    self.error(
                        Some(s),
                        format!("table {label}: `{key}` has no effect with mode = \"all\""),
                        "ignored in mode all",
                        "remove it, or set mode = \"partition\"",
                    );
                }
            }
            if strategy.is_some_and(|s| s.strategy().requirements().partitioned) {
                self.error(
                    def.mode.as_ref().map(|m| m.span()),
                    format!(
                        "table {label}: strategy \"{}\" works partition by partition",
                        def.strategy.get_ref()
                    ),
                    "mode all not supported",
                    "remove mode = \"all\"",
                );
            }
        }
        let partitions = match (&def.partitions, &def.partition_range) {
            (Some(p), Some(_)) => {
                self.error(
                    span(p),
                    format!("table {label} has both `partitions` and `partition_range`"),
                    "one of them",
                    "keep the explicit list or the generated range, not both",
                );
                PartitionSource::Online
            }
            (Some(p), None) => {
                let mut seen = BTreeSet::new();
                for id in p.get_ref() {
                    if !seen.insert(id) {
                        self.error(
                            span(p),
                            format!("table {label}: partition \"{id}\" is listed twice"),
                            "duplicate partition",
                            "list each partition once",
                        );
                    }
                    if id.is_empty() || id.contains('/') || id == "." || id == ".." {
                        self.error(
                            span(p),
                            format!("table {label}: partition id \"{id}\" cannot be part of a task id"),
                            "invalid partition id",
                            "write the partition id as ClickHouse shows it in system.parts.partition_id",
                        );
                    }
                }
                if p.get_ref().is_empty() {
                    self.error(
                        span(p),
                        format!("table {label}: `partitions` is empty"),
                        "nothing to do",
                        "list at least one partition, or remove the key to list them from the source",
                    );
                }
                PartitionSource::Declared(p.get_ref().clone())
            }
            (None, Some(r)) => match expand_range(r.get_ref()) {
                Ok(ids) => PartitionSource::Declared(ids),
                Err(msg) => {
                    self.error(
                        span(r),
                        format!("table {label}: partition_range: {msg}"),
                        "bad range",
                        "write partition_range = { from = \"2015-06\", to = \"2015-08\", step = \"month\" }",
                    );
                    PartitionSource::Online
                }
            },
            (None, None) if mode == Mode::All => PartitionSource::Whole,
            (None, None) => PartitionSource::Online,
        };
        let partitions = if mode == Mode::All {
            PartitionSource::Whole
        } else {
            partitions
        };
        let before_sizes = self.diags.errors();
        let max_rows = self.size(def.max_rows.as_ref(), &format!("table {label}: max_rows"));
        let max_bytes = self.size(def.max_bytes.as_ref(), &format!("table {label}: max_bytes"));
        // A size already reported as wrong is not also reported as missing.
        let sizes_valid = self.diags.errors() == before_sizes;
        match (&def.split_by, max_rows.or(max_bytes)) {
            _ if !sizes_valid => {}
            (Some(s), None) => self.error(
                span(s),
                format!("table {label}: `split_by` without `max_rows` or `max_bytes`"),
                "no size to split at",
                "add max_rows = 100_000_000 (or max_bytes) so big partitions are split",
            ),
            (None, Some(_)) => self.error(
                def.max_rows
                    .as_ref()
                    .or(def.max_bytes.as_ref())
                    .map(|s| s.span()),
                format!("table {label}: `max_rows`/`max_bytes` without `split_by`"),
                "no column to split by",
                "add split_by = \"<a time column>\" so oversized partitions can be cut",
            ),
            _ => {}
        }
        for (key, v) in [
            ("lower", &def.lower),
            ("upper", &def.upper),
            ("partition_expr", &def.partition_expr),
        ] {
            if let Some(v) = v {
                if v.get_ref().trim().is_empty() {
                    self.error(
                        span(v),
                        format!("table {label}: `{key}` is empty"),
                        "empty",
                        "remove the key or write an SQL expression",
                    );
                } else if v.get_ref().contains(';') {
                    self.error(
                        span(v),
                        format!("table {label}: `{key}` contains `;`"),
                        "one expression only",
                        "write a single SQL expression without `;`",
                    );
                }
            }
        }
        let format = match &def.format {
            Some(f) => match ExportFormat::parse(f.get_ref()) {
                Some(fmt) => fmt,
                None => {
                    self.error(
                        span(f),
                        format!("table {label}: format \"{}\" is not supported", f.get_ref()),
                        "unknown format",
                        format!("use one of: {}", ExportFormat::NAMES.join(", ")),
                    );
                    ExportFormat::Csv
                }
            },
            None => ExportFormat::Csv,
        };
        let server_side = match def.server_side.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("auto") => ServerSide::Auto,
            Some("always") => ServerSide::Always,
            Some("never") => ServerSide::Never,
            Some(other) => {
                self.error(
                    def.server_side.as_ref().map(|s| s.span()),
                    format!("table {label}: server_side \"{other}\" is not known"),
                    "unknown value",
                    "use \"auto\", \"always\" or \"never\"",
                );
                ServerSide::Auto
            }
        };
        let formatting = match def.formatting.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("auto") => Formatting::Auto,
            Some("server") => Formatting::Server,
            Some(other) => {
                self.error(
                    def.formatting.as_ref().map(|s| s.span()),
                    format!("table {label}: formatting \"{other}\" is not known"),
                    "unknown value",
                    "use \"auto\" (flow formats where it can) or \"server\"",
                );
                Formatting::Auto
            }
        };
        // Keys only one strategy uses (copy and s3-policy move the table's own
        // partitions whole, so the export's keys mean nothing to them): each strategy
        // declares its own.
        for owner in StrategyKind::ALL {
            if strategy.is_none_or(|s| s == *owner) {
                continue;
            }
            for key in owner.strategy().own_keys() {
                if let Some(s) = table_key_span(def, key) {
                    self.error(
                        Some(s),
                        format!(
                            "table {label}: `{key}` is used by strategy \"{}\" only",
                            owner.name()
                        ),
                        "not used by this strategy",
                        "remove it",
                    );
                }
            }
        }
        if self.diags.errors() > errors_before {
            return None;
        }
        let strategy = strategy?;
        let name = text(&def.name).unwrap_or_else(|| match (&table_name, &query) {
            (Some(t), _) => format!("{database}.{t}"),
            _ => format!("tables[{index}]"),
        });
        Some(TableSpec {
            index,
            name,
            group: None,
            source: def.source.get_ref().clone(),
            database,
            table: table_name,
            query,
            mode,
            partition_expr: text(&def.partition_expr),
            lower: text(&def.lower),
            upper: text(&def.upper),
            partitions,
            split_by: text(&def.split_by),
            max_rows,
            max_bytes,
            strategy,
            target: text(&def.target),
            target_database: text(&def.target_database),
            target_table: text(&def.target_table),
            format,
            path: def.path.as_ref().map(|p| p.get_ref().clone()),
            path_span: def.path.as_ref().map(|p| p.span()),
            storage_policy: text(&def.storage_policy).unwrap_or_else(|| "s3".into()),
            swap: def
                .swap
                .unwrap_or(strategy.strategy().requirements().swap_by_default),
            keep_old: def.keep_old.unwrap_or(true),
            server_side,
            formatting,
            settings,
            options: def
                .options
                .iter()
                .map(|(k, v)| (k.clone(), v.get_ref().clone()))
                .collect(),
            span: table_span,
        })
    }

    fn size(&mut self, v: Option<&Spanned<i64>>, what: &str) -> Option<u64> {
        let v = v?;
        if *v.get_ref() < 1 {
            self.error(
                span(v),
                format!("{what} must be positive"),
                "not positive",
                "write a positive number, e.g. 100_000_000",
            );
            return None;
        }
        Some(*v.get_ref() as u64)
    }

    fn steps(
        &mut self,
        defs: &[Spanned<StepDef>],
        connections: &BTreeMap<String, Connection>,
        tables: &HashMap<String, Range<usize>>,
    ) -> Vec<StepSpec> {
        let mut ids: HashMap<String, Range<usize>> = HashMap::new();
        for def in defs {
            let id = def.get_ref().id.get_ref();
            if let Some(first) = ids.get(id) {
                let (line, _) = self.source.line_col(first.start);
                self.error(
                    span(&def.get_ref().id),
                    format!("step id \"{id}\" is used twice (first at line {line})"),
                    "duplicate id",
                    "give every step its own id",
                );
            } else if tables.contains_key(id) {
                self.error(
                    span(&def.get_ref().id),
                    format!("step id \"{id}\" is also a table or volume name"),
                    "ambiguous in `after`",
                    "rename the step",
                );
            } else if !valid_name(id) {
                self.error(
                    span(&def.get_ref().id),
                    format!("step id \"{id}\" cannot be a task id"),
                    "invalid id",
                    "use letters, digits, `-`, `_` or `.` (not first), at most 128 characters",
                );
            } else {
                ids.insert(id.clone(), def.get_ref().id.span());
            }
        }
        let mut out = Vec::new();
        for (index, spanned) in defs.iter().enumerate() {
            let step_span = spanned.span();
            let def = spanned.get_ref();
            let id = def.id.get_ref().clone();
            let kind = *def.kind.get_ref();
            let text = match kind {
                StepKind::Exec => {
                    if let Some(s) = &def.sql {
                        self.error(
                            span(s),
                            format!("exec step \"{id}\" has `sql`"),
                            "sql in an exec step",
                            "use `run = \"…\"` for a command, or kind = \"sql\" with a connection",
                        );
                    }
                    if let Some(c) = &def.connection {
                        self.error(
                            span(c),
                            format!("exec step \"{id}\" has `connection`"),
                            "not used by exec",
                            "use `uses = \"…\"` to take a connection's concurrency permit",
                        );
                    }
                    def.run.as_ref().map(|r| r.get_ref().clone())
                }
                StepKind::Sql => {
                    if let Some(r) = &def.run {
                        self.error(
                            span(r),
                            format!("sql step \"{id}\" has `run`"),
                            "run in an sql step",
                            "use `sql = \"…\"`, or kind = \"exec\" for a command",
                        );
                    }
                    match &def.connection {
                        None => self.error(
                            Some(step_span.clone()),
                            format!("sql step \"{id}\" has no `connection`"),
                            "no connection",
                            "add `connection = \"…\"` naming a clickhouse, mysql or starrocks connection",
                        ),
                        Some(c) => {
                            if let Some(k) = self.reference(c, &format!("step \"{id}\": connection"), connections) {
                                if !k.is_sql() {
                                    self.error(
                                        span(c),
                                        format!("step \"{id}\": connection \"{}\" is {}, which runs no SQL", c.get_ref(), k.as_str()),
                                        "not an SQL connection",
                                        "use a clickhouse, mysql or starrocks connection, or an exec step",
                                    );
                                }
                            }
                        }
                    }
                    def.sql.as_ref().map(|s| s.get_ref().clone())
                }
            };
            let Some(text) = text else {
                let key = if kind == StepKind::Exec { "run" } else { "sql" };
                self.error(
                    Some(step_span.clone()),
                    format!("step \"{id}\" has no `{key}`"),
                    "nothing to run",
                    format!("add `{key} = \"…\"`"),
                );
                continue;
            };
            let known: Vec<&str> = ids
                .keys()
                .chain(tables.keys())
                .map(String::as_str)
                .collect();
            self.after_names(&format!("step \"{id}\""), &def.after, known);
            if let Some(u) = &def.uses {
                self.reference(u, &format!("step \"{id}\": uses"), connections);
            }
            let timeout = self.duration(
                def.timeout.as_ref(),
                &format!("step \"{id}\" timeout"),
                MAX_STEP_TIMEOUT,
            );
            if let (Some(t), Some(raw)) = (timeout, &def.timeout) {
                if t.is_zero() {
                    self.error(
                        span(raw),
                        format!("step \"{id}\" timeout is zero: the step would be stopped at once"),
                        "zero",
                        "remove `timeout` (no limit) or give the step time, e.g. timeout = \"30m\"",
                    );
                }
            }
            let mut env = BTreeMap::new();
            for (k, v) in &def.env {
                match Interpolated::parse(v.get_ref()) {
                    Ok(i) => {
                        if secrets::name_marks_secret(k) {
                            self.clear_secret(
                                &i,
                                v.span(),
                                &format!("step \"{id}\": env `{k}`"),
                                &format!("{k} = \"${{env:{k}}}\""),
                            );
                        }
                        env.insert(k.clone(), i);
                    }
                    Err(e) => self.error(
                        Some(v.span()),
                        format!("step \"{id}\": env {k}: {e}"),
                        "bad reference",
                        "write ${env:NAME} or ${env:NAME:-default}",
                    ),
                }
            }
            let text_span = match kind {
                StepKind::Exec => def.run.as_ref(),
                StepKind::Sql => def.sql.as_ref(),
            }
            .map(|t| t.span())
            .unwrap_or_else(|| step_span.clone());
            out.push(StepSpec {
                index,
                id,
                kind,
                text,
                text_span,
                connection: def.connection.as_ref().map(|c| c.get_ref().clone()),
                after: def.after.iter().map(|a| a.get_ref().clone()).collect(),
                env,
                cwd: def.cwd.as_ref().map(PathBuf::from),
                timeout,
                once: def.once,
                destructive: def.destructive == Some(true),
                destructive_declared: def.destructive,
                verifies: def.verifies,
                uses: def.uses.as_ref().map(|u| u.get_ref().clone()),
                span: step_span,
            });
        }
        self.step_cycles(defs);
        self.unverified_destructive(&out, tables);
        out
    }

    /// Reports each cycle in `after` with the edges that close it.
    /// Each name in `after` (of the entry `who`) is one of `known`: a step, a table or a
    /// volume.
    fn after_names(&mut self, who: &str, after: &[Spanned<String>], mut known: Vec<&str>) {
        known.sort();
        for a in after {
            if known.binary_search(&a.get_ref().as_str()).is_err() {
                self.error(
                    span(a),
                    format!(
                        "{who}: `after` names \"{}\", which is no step, table or volume",
                        a.get_ref()
                    ),
                    "unknown dependency",
                    format!("use one of: {}", known.join(", ")),
                );
            }
        }
    }

    fn step_cycles(&mut self, defs: &[Spanned<StepDef>]) {
        let mut graph = DiGraph::<usize, Range<usize>>::new();
        let nodes: Vec<_> = (0..defs.len()).map(|i| graph.add_node(i)).collect();
        let index: HashMap<&str, usize> = defs
            .iter()
            .enumerate()
            .map(|(i, d)| (d.get_ref().id.get_ref().as_str(), i))
            .collect();
        for (i, d) in defs.iter().enumerate() {
            for a in &d.get_ref().after {
                if let Some(&j) = index.get(a.get_ref().as_str()) {
                    graph.add_edge(nodes[j], nodes[i], a.span());
                }
            }
        }
        for scc in petgraph::algo::tarjan_scc(&graph) {
            let cyclic = scc.len() > 1 || graph.find_edge(scc[0], scc[0]).is_some();
            if !cyclic {
                continue;
            }
            let members: BTreeSet<_> = scc.iter().copied().collect();
            let mut edges = Vec::new();
            let mut first_span = None;
            for e in graph.edge_indices() {
                let (from, to) = graph.edge_endpoints(e).expect("edge exists");
                if members.contains(&from) && members.contains(&to) {
                    let from_id = defs[graph[from]].get_ref().id.get_ref();
                    let to_id = defs[graph[to]].get_ref().id.get_ref();
                    edges.push(format!("\"{from_id}\" from the `after` of \"{to_id}\""));
                    let s = graph[e].clone();
                    if first_span
                        .as_ref()
                        .is_none_or(|f: &Range<usize>| s.start < f.start)
                    {
                        first_span = Some(s);
                    }
                }
            }
            let mut names: Vec<&str> = scc
                .iter()
                .map(|n| defs[graph[*n]].get_ref().id.get_ref().as_str())
                .collect();
            names.sort();
            self.error(
                first_span,
                format!(
                    "steps {} wait for each other in a cycle",
                    names
                        .iter()
                        .map(|n| format!("\"{n}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "part of the cycle",
                format!("remove one of: {}", edges.join("; ")),
            );
        }
    }

    /// A destructive step needs a table or a verifying step among its `after` closure.
    fn unverified_destructive(
        &mut self,
        steps: &[StepSpec],
        tables: &HashMap<String, Range<usize>>,
    ) {
        let by_id: HashMap<&str, &StepSpec> = steps.iter().map(|s| (s.id.as_str(), s)).collect();
        for step in steps.iter().filter(|s| s.destructive) {
            let mut stack: Vec<&str> = step.after.iter().map(String::as_str).collect();
            let mut seen = BTreeSet::new();
            let mut verified = false;
            while let Some(id) = stack.pop() {
                if !seen.insert(id) {
                    continue;
                }
                if tables.contains_key(id) {
                    verified = true;
                    break;
                }
                if let Some(s) = by_id.get(id) {
                    if s.verifies {
                        verified = true;
                        break;
                    }
                    stack.extend(s.after.iter().map(String::as_str));
                }
            }
            if !verified {
                self.error(
                    Some(step.span.clone()),
                    format!("destructive step \"{}\" can run before anything is verified", step.id),
                    "nothing verified before it",
                    "add `after = [\"<table name or a step with verifies = true>\"]` so it runs only after a passed verify",
                );
            }
        }
    }

    /// Renders every plan template with sample values, so typos fail validation.
    fn templates_render(&mut self, plan: &Plan, templates: &Templates) {
        for table in &plan.tables {
            if let Some(path) = &table.path {
                let ctx = path_context(plan, table, "201501", Some(0));
                match templates.render_str("path", path, &ctx) {
                    Err(e) => self.error(
                        Some(table.span.clone()),
                        format!("table {}: the `path` template does not render: {e}", table.name),
                        "in this table",
                        "use the variables table.name, table.database, table.table, partition_id, chunk, ext, format, vars.*, options.*",
                    ),
                    // The store refuses such keys at run time; say so now.
                    Ok(key) => {
                        if let Err(e) = crate::engines::store::check_key(&key) {
                            self.error(
                                Some(table.span.clone()),
                                format!("table {}: the `path` template gives an unusable key: {e}", table.name),
                                "in this table",
                                "write a relative path inside the target, without `..`, e.g. path = \"{{ table.name }}/{{ partition_id }}/part-{{ chunk }}.{{ ext }}\"",
                            );
                        }
                    }
                }
            }
        }
        for step in &plan.steps {
            let rendered = crate::graph::expand::render_step_text(plan, templates, step, false);
            let conn = step
                .connection
                .as_ref()
                .and_then(|c| plan.connections.get(c));
            if let (Ok(text), Some(conn)) = (&rendered, conn) {
                let kind = conn.kind;
                if step.kind == StepKind::Sql {
                    if let Some((problem, fix)) = destructive::refusal(step, text, kind) {
                        self.error(
                            Some(step.text_span.clone()),
                            problem,
                            "rendered statement",
                            fix,
                        );
                    }
                }
            }
            if let Err(e) = rendered {
                self.error(
                    Some(step.span.clone()),
                    format!(
                        "step \"{}\": the {} template does not render: {e}",
                        step.id,
                        if step.kind == StepKind::Sql {
                            "sql"
                        } else {
                            "run"
                        }
                    ),
                    "in this step",
                    "use the variables plan.name, vars.*, env.NAME, step.id",
                );
            }
        }
    }

    fn graph_error(&mut self, plan: &Plan, e: GraphError) {
        let span = match &e {
            GraphError::DuplicateId(id)
            | GraphError::Cycle(id)
            | GraphError::UnverifiedDestructive(id) => plan
                .steps
                .iter()
                .find(|s| s.id == id.0)
                .map(|s| s.span.clone())
                .or_else(|| {
                    plan.tables
                        .iter()
                        .find(|t| id.0.starts_with(&format!("{}/", t.name)))
                        .map(|t| t.span.clone())
                })
                .or_else(|| {
                    plan.volumes
                        .iter()
                        .find(|v| id.0.starts_with(&format!("{}/", v.name)))
                        .map(|v| v.span.clone())
                }),
            GraphError::KeyCollision { second: id, .. } => plan
                .tables
                .iter()
                .find(|t| id.0.starts_with(&format!("{}/", t.name)))
                .map(|t| t.path_span.clone().unwrap_or_else(|| t.span.clone())),
            GraphError::PathNotUnique { table, .. } => plan
                .tables
                .iter()
                .find(|t| &t.name == table)
                .map(|t| t.path_span.clone().unwrap_or_else(|| t.span.clone())),
            _ => None,
        };
        self.error(
            span,
            format!("the plan does not expand into a valid task graph: {e}"),
            "here",
            e.help(),
        );
    }
}

/// A URL with a user or password before the host (`http://user:secret@host`): they
/// would end up in logs and state with the URL, and the plan's own keys are ignored.
fn url_has_credentials(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.contains('@')
}

/// Two connections reach the same server: the same connection, or the same literal URL.
fn same_server(connections: &BTreeMap<String, Connection>, a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let url = |name: &str| {
        connections
            .get(name)
            .and_then(|c| c.url.as_ref())
            .filter(|u| u.is_literal())
            .map(|u| u.raw().trim_end_matches('/').to_ascii_lowercase())
    };
    matches!((url(a), url(b)), (Some(x), Some(y)) if x == y)
}

/// The span of a table key a strategy or an engine may refuse; None when it is not set
/// (or not one of these keys).
fn table_key_span(def: &TableDef, key: &str) -> Option<Range<usize>> {
    match key {
        "partitions" => def.partitions.as_ref().map(|s| s.span()),
        "partition_range" => def.partition_range.as_ref().map(|s| s.span()),
        "partition_expr" => def.partition_expr.as_ref().map(|s| s.span()),
        "server_side" => def.server_side.as_ref().map(|s| s.span()),
        "formatting" => def.formatting.as_ref().map(|s| s.span()),
        "split_by" => def.split_by.as_ref().map(|s| s.span()),
        "query" => def.query.as_ref().map(|s| s.span()),
        "format" => def.format.as_ref().map(|s| s.span()),
        "path" => def.path.as_ref().map(|s| s.span()),
        "storage_policy" => def.storage_policy.as_ref().map(|s| s.span()),
        "target_database" => def.target_database.as_ref().map(|s| s.span()),
        "target_table" => def.target_table.as_ref().map(|s| s.span()),
        _ => None,
    }
}

fn kinds(k: &[ConnectionKind]) -> String {
    k.iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(" or ")
}
