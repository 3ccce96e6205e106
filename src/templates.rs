//! Templates: one minijinja environment for every piece of text flow renders.
//!
//! Built-in templates (SQL and command templates under `templates/` in the source tree)
//! are embedded at build time; a plan's `templates_dir` overrides any of them by
//! relative name (`clickhouse/export.sql.j2`). Undefined variables are errors, so a
//! typo in a template is caught by `flow validate`, not at 3 a.m. during a run.
//!
//! Rendering is bounded: every render gets [`FUEL`] units of work (minijinja counts
//! instructions), so a hostile or mistaken loop nest in a plan is refused by
//! `flow validate` in well under a second instead of running for hours. Built-in
//! templates use a few hundred units; a plan template that needs more is doing far
//! more than rendering a statement or a path.
//!
//! Templates see `env` as an object: when rendering for display, fingerprints and
//! checks it yields `${env:NAME}` placeholders; only rendering for execution reveals
//! values, and that text is never logged or stored.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use include_dir::{include_dir, Dir};
use minijinja::value::{Enumerator, Object, Value};
use minijinja::{Environment, UndefinedBehavior};

static BUILTIN: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/templates");

/// Errors rendering a template; the message names the template and the problem.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template `{name}`: {message}")]
    Render { name: String, message: String },
    #[error("template `{0}` does not exist (built-in names: {1})")]
    Missing(String, String),
}

/// The environment of built-in and user templates.
#[derive(Clone)]
pub struct Templates {
    env: Arc<Environment<'static>>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Templates")
    }
}

fn builtin_names(dir: &Dir<'_>, out: &mut Vec<String>) {
    for file in dir.files() {
        out.push(file.path().to_string_lossy().replace('\\', "/"));
    }
    for sub in dir.dirs() {
        builtin_names(sub, out);
    }
}

/// Names of the built-in templates (`clickhouse/export.sql.j2`, …).
pub fn builtin_template_names() -> Vec<String> {
    let mut names = Vec::new();
    builtin_names(&BUILTIN, &mut names);
    names.sort();
    names
}

/// The text flow ships for a built-in template (whatever a plan's `templates_dir` says).
pub fn builtin_source(name: &str) -> Option<&'static str> {
    BUILTIN.get_file(name).and_then(|f| f.contents_utf8())
}

/// Units of work (template instructions) one render may use.
pub const FUEL: u64 = 1_000_000;

fn new_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(FUEL));
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(false);
    env.add_filter("sql_string", |s: String| quote_sql_string(&s));
    env.add_filter("ident", |s: String| quote_identifier(&s));
    env
}

impl Templates {
    /// Built-in templates, overridden by files under `user_dir` when given.
    pub fn new(user_dir: Option<&Path>) -> Result<Self, TemplateError> {
        let mut env = new_environment();
        let mut names = Vec::new();
        builtin_names(&BUILTIN, &mut names);
        for name in names {
            let file = BUILTIN
                .get_file(&name)
                .expect("listed names come from the embedded directory");
            let text = file.contents_utf8().unwrap_or_default().to_string();
            env.add_template_owned(name.clone(), text)
                .map_err(|e| TemplateError::Render {
                    name: name.clone(),
                    message: e.to_string(),
                })?;
        }
        if let Some(dir) = user_dir {
            for path in walk(dir) {
                let name = path
                    .strip_prefix(dir)
                    .expect("walked paths are below dir")
                    .to_string_lossy()
                    .replace('\\', "/");
                let text = std::fs::read_to_string(&path).map_err(|e| TemplateError::Render {
                    name: name.clone(),
                    message: format!("cannot read {}: {e}", path.display()),
                })?;
                env.add_template_owned(name.clone(), text)
                    .map_err(|e| TemplateError::Render {
                        name: name.clone(),
                        message: e.to_string(),
                    })?;
            }
        }
        Ok(Templates { env: Arc::new(env) })
    }

    /// [`Self::render`] inside a task that may render only `allowed` (the templates its
    /// fingerprint covers; None outside a task). A debug build refuses any other, so a
    /// test that runs the task finds a template missing from its list.
    pub fn render_in_task(
        &self,
        name: &str,
        ctx: &Value,
        allowed: Option<&[&'static str]>,
    ) -> Result<String, TemplateError> {
        debug_assert!(
            allowed.is_none_or(|allowed| allowed.contains(&name)),
            "{name} is rendered by a task whose fingerprint does not cover it: add it to \
             the templates its strategy or engine lists for that kind of task"
        );
        self.render(name, ctx)
    }

    /// Renders a named template (`clickhouse/export.sql.j2`).
    pub fn render(&self, name: &str, ctx: &Value) -> Result<String, TemplateError> {
        let template = self.env.get_template(name).map_err(|_| {
            let mut names = Vec::new();
            builtin_names(&BUILTIN, &mut names);
            TemplateError::Missing(name.to_string(), names.join(", "))
        })?;
        template
            .render(ctx)
            .map(|s| s.trim().to_string())
            .map_err(|e| TemplateError::Render {
                name: name.to_string(),
                message: describe(&e),
            })
    }

    /// The source text of a named template (part of task fingerprints).
    pub fn source(&self, name: &str) -> Option<String> {
        self.env
            .get_template(name)
            .ok()
            .map(|t| t.source().to_string())
    }

    /// Renders inline template text from a plan (`path`, `run`, `sql`).
    pub fn render_str(&self, what: &str, text: &str, ctx: &Value) -> Result<String, TemplateError> {
        self.env.render_str(text, ctx).map_err(|e| {
            let unknown = if e.kind() == minijinja::ErrorKind::UndefinedError {
                self.undefined_names(text, ctx)
            } else {
                Vec::new()
            };
            let message = if unknown.is_empty() {
                describe(&e)
            } else {
                format!(
                    "{} not defined",
                    unknown
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                        + if unknown.len() == 1 { " is" } else { " are" }
                )
            };
            TemplateError::Render {
                name: what.to_string(),
                message,
            }
        })
    }

    /// Compiles inline template text once, for rendering many times.
    pub fn compile<'s>(
        &'s self,
        text: &'s str,
    ) -> Result<minijinja::Template<'s, 's>, TemplateError> {
        self.env
            .template_from_str(text)
            .map_err(|e| TemplateError::Render {
                name: "inline".into(),
                message: describe(&e),
            })
    }

    /// Variables a template uses that the context does not have (for error messages).
    fn undefined_names(&self, text: &str, ctx: &Value) -> Vec<String> {
        let Ok(template) = self.env.template_from_str(text) else {
            return Vec::new();
        };
        let mut names: Vec<String> = template
            .undeclared_variables(true)
            .into_iter()
            .filter(|path| {
                let root = path.split('.').next().unwrap_or_default();
                if self.env.globals().any(|(name, _)| name == root) {
                    return false;
                }
                let mut value = ctx.clone();
                for part in path.split('.') {
                    match value.get_attr(part) {
                        Ok(v) if !v.is_undefined() => value = v,
                        _ => return true,
                    }
                }
                false
            })
            .collect();
        names.sort();
        names
    }
}

fn describe(e: &minijinja::Error) -> String {
    if e.kind() == minijinja::ErrorKind::OutOfFuel {
        return format!(
            "it does more than {FUEL} steps of work (a loop nest over large ranges?); \
             templates render one statement, command or path: compute big lists outside flow"
        );
    }
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// `env` inside templates. `reveal = false` yields `${env:NAME}` placeholders. Revealed,
/// a secret-named variable's value is added to the process's redactor before the
/// rendered text can reach any writer — also when the name is computed as the template
/// renders (`env[vars.name]`), which no check of the template's text can see.
#[derive(Debug)]
pub struct EnvObject {
    pub reveal: bool,
}

impl Object for EnvObject {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let name = key.as_str()?;
        if self.reveal {
            let value = std::env::var(name).ok()?;
            if crate::redact::name_marks_secret(name) {
                crate::redact::install([&value]);
            }
            Some(Value::from(value))
        } else {
            Some(Value::from(format!("${{env:{name}}}")))
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::NonEnumerable
    }
}

/// The `env` value for a template context.
pub fn env_value(reveal: bool) -> Value {
    Value::from_object(EnvObject { reveal })
}

/// A single-quoted SQL string literal with backslash and quote escaped (ClickHouse and
/// MySQL both read this form).
pub fn quote_sql_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A back-quoted identifier (ClickHouse, MySQL, StarRocks).
pub fn quote_identifier(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('`');
    for c in s.chars() {
        match c {
            '`' => out.push_str("\\`"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('`');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_what_would_break_out() {
        assert_eq!(quote_sql_string("it's \\ ok"), "'it\\'s \\\\ ok'");
        assert_eq!(quote_identifier("we`ird"), "`we\\`ird`");
    }

    #[test]
    fn env_placeholders_hide_values() {
        std::env::set_var("FLOW_TEMPLATES_TEST_SECRET", "hunter2");
        let t = Templates::new(None).unwrap();
        let ctx = minijinja::context! { env => env_value(false) };
        let shown = t
            .render_str("run", "pg_dump {{ env.FLOW_TEMPLATES_TEST_SECRET }}", &ctx)
            .unwrap();
        assert_eq!(shown, "pg_dump ${env:FLOW_TEMPLATES_TEST_SECRET}");
        let ctx = minijinja::context! { env => env_value(true) };
        let real = t
            .render_str("run", "pg_dump {{ env.FLOW_TEMPLATES_TEST_SECRET }}", &ctx)
            .unwrap();
        assert_eq!(real, "pg_dump hunter2");
    }

    #[test]
    fn a_hostile_loop_nest_runs_out_of_fuel_instead_of_running_for_hours() {
        let t = Templates::new(None).unwrap();
        let nest =
            "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}";
        let err = t
            .render_str("run", nest, &minijinja::context! {})
            .unwrap_err();
        assert!(err.to_string().contains("steps of work"), "{err}");
        // An ordinary loop is far below the limit.
        let ok = "{% for a in range(1000) %}{{ a }},{% endfor %}";
        assert!(t.render_str("run", ok, &minijinja::context! {}).is_ok());
    }

    #[test]
    fn undefined_variables_are_errors() {
        let t = Templates::new(None).unwrap();
        let err = t
            .render_str("path", "{{ partiton_id }}", &minijinja::context! {})
            .unwrap_err();
        assert!(
            err.to_string().contains("`partiton_id` is not defined"),
            "{err}"
        );
    }
}
