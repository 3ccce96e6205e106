//! Every unknown key and every out-of-range integer of a plan file, at once.
//!
//! serde stops at the first problem, so a plan with two misspelt keys would take two
//! runs of `flow validate` to fix. Before deserializing, the checker walks the parsed
//! TOML (with spans) alongside the JSON Schema that `flow schema` publishes — the one
//! description of which keys exist — and reports each unknown key (with the closest
//! known one) and each integer too large for flow. Values of known keys are left to
//! serde, which then runs only when this walk found nothing.

use std::borrow::Cow;

use serde_json::Value as Json;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::diagnostic::Diagnostic;
use super::schema::PlanFile;

/// The diagnostics of the walk; empty when every key is known.
pub fn check(text: &str) -> Vec<Diagnostic> {
    let Ok(document) = DeTable::parse(text) else {
        // Syntax errors are serde's to report, with their span.
        return Vec::new();
    };
    let schema = schemars::schema_for!(PlanFile);
    let root = schema.as_value();
    let mut out = Vec::new();
    let span = document.span();
    walk_table(document.get_ref(), span, root, root, "", &mut out);
    // In the order of the file, whatever order the parsed tables iterate in.
    out.sort_by_key(|d| d.span.as_ref().map_or(0, |s| s.start));
    out
}

/// Follows `$ref` and picks the non-null branch of an optional value.
fn resolve<'a>(schema: &'a Json, root: &'a Json) -> &'a Json {
    let mut schema = schema;
    for _ in 0..8 {
        if let Some(name) = schema
            .get("$ref")
            .and_then(Json::as_str)
            .and_then(|r| r.strip_prefix("#/$defs/"))
        {
            match root.get("$defs").and_then(|d| d.get(name)) {
                Some(s) => schema = s,
                None => return schema,
            }
            continue;
        }
        let branches = schema
            .get("anyOf")
            .or_else(|| schema.get("oneOf"))
            .and_then(Json::as_array);
        if let Some(branch) = branches.and_then(|b| {
            b.iter()
                .find(|s| s.get("type").and_then(Json::as_str) != Some("null"))
        }) {
            schema = branch;
            continue;
        }
        return schema;
    }
    schema
}

fn walk(
    value: &Spanned<DeValue<'_>>,
    schema: &Json,
    root: &Json,
    path: &str,
    out: &mut Vec<Diagnostic>,
) {
    let schema = resolve(schema, root);
    match value.get_ref() {
        DeValue::Table(table) => walk_table(table, value.span(), schema, root, path, out),
        DeValue::Array(items) => {
            if let Some(item) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    walk(v, item, root, &format!("{path}[{i}]"), out);
                }
            }
        }
        DeValue::Integer(int) => {
            let digits = int.as_str().replace('_', "");
            if i64::from_str_radix(&digits, int.radix()).is_err() {
                out.push(Diagnostic::error(
                    Some(value.span()),
                    format!(
                        "`{path}` = {} is too large: integers in a plan are at most {}",
                        int.as_str(),
                        i64::MAX
                    ),
                    "too large",
                    "write a smaller number (see the key's range in the README)",
                ));
            }
        }
        _ => {}
    }
}

fn walk_table(
    table: &DeTable<'_>,
    _span: std::ops::Range<usize>,
    schema: &Json,
    root: &Json,
    path: &str,
    out: &mut Vec<Diagnostic>,
) {
    let properties = schema.get("properties").and_then(Json::as_object);
    let additional = schema.get("additionalProperties");
    for (key, value) in table {
        let name: &Cow<'_, str> = key.get_ref();
        let child = if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        };
        if let Some(s) = properties.and_then(|p| p.get(name.as_ref())) {
            walk(value, s, root, &child, out);
            continue;
        }
        match additional {
            Some(Json::Bool(false)) => {
                let known: Vec<&str> = properties
                    .map(|p| p.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                out.push(unknown_key(key.span(), name, path, &known));
            }
            Some(s @ Json::Object(_)) => walk(value, s, root, &child, out),
            _ => {}
        }
    }
}

fn unknown_key(span: std::ops::Range<usize>, key: &str, path: &str, known: &[&str]) -> Diagnostic {
    let section = if path.is_empty() {
        "at the top level".to_string()
    } else {
        format!("in `{path}`")
    };
    let closest = known
        .iter()
        .map(|k| (strsim::jaro_winkler(key, k), *k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k);
    let help = match closest {
        Some(k) => format!("did you mean `{k}`? `flow schema` lists every key"),
        None => "remove the key or fix its spelling; `flow schema` lists every key".to_string(),
    };
    Diagnostic::error(
        Some(span),
        format!(
            "unknown key `{key}` {section}; known keys: {}",
            known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        format!("unknown key `{key}`"),
        help,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unknown_key_is_reported_with_the_closest_known_one() {
        let text = "[plan]\nname = \"t\"\nconcurrancy = 4\n\n[connections.ch]\nkind = \"clickhouse\"\nurl = \"http://x\"\nmax_conurrency = 4\n\n[[tables]]\nsource = \"ch\"\nstrategy = \"export\"\noptions = { anything = \"ok\" }\nlowr = \"a\"\n";
        let found = check(text);
        let messages: Vec<&str> = found.iter().map(|d| d.help.as_str()).collect();
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(messages[0].contains("`concurrency`"), "{messages:?}");
        assert!(messages[1].contains("`max_concurrency`"), "{messages:?}");
        assert!(messages[2].contains("`lower`"), "{messages:?}");
        assert!(found[1].message.contains("in `connections.ch`"));
    }

    #[test]
    fn integers_past_i64_say_so() {
        let found = check("[plan]\nname = \"t\"\nconcurrency = 99999999999999999999\n");
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].message.contains("too large"), "{found:#?}");
        assert!(check("[plan]\nname = \"t\"\nconcurrency = 0x7fff_ffff\n").is_empty());
    }
}
