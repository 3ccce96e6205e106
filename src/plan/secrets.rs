//! Which plan values are secret: the positions, the clear-text check, and the values a
//! run must mask.
//!
//! Secret positions: a connection's `password`, `access_key_id` and
//! `secret_access_key`; the password of a URL's userinfo (`url`, `endpoint`,
//! `http_url`); `settings` whose key names a secret; every value of an exec step's
//! `env`; and the environment variables a step template reads (`{{ env.X }}`) whose
//! name marks them secret. One list serves two jobs, so they cannot drift apart:
//! `flow validate` refuses clear text in a secret position ([`clear_text`]), and a
//! run masks every value resolved into one ([`values`], handed to
//! [`crate::redact::install`]).

use std::collections::BTreeMap;

use super::interpolate::Interpolated;
use super::Plan;

pub use crate::redact::name_marks_secret;

/// Why a value in a secret position holds a secret in clear, or None.
pub fn clear_text(value: &Interpolated) -> Option<&'static str> {
    if value.raw().is_empty() {
        None
    } else if value.is_literal() {
        Some("is written in clear text in the plan")
    } else if value.has_default() {
        Some("has a default in clear text (`${env:NAME:-…}`)")
    } else if value.has_text() {
        Some("joins clear text to an environment reference")
    } else {
        None
    }
}

/// The password part of a URL's userinfo (`scheme://user:PASSWORD@host`), as written.
pub fn userinfo_password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    // The authority ends at the first `/`, `?` or `#` — outside `${…}` references.
    let mut depth = 0usize;
    let mut end = rest.len();
    let bytes = rest.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'{' if i > 0 && bytes[i - 1] == b'$' => depth += 1,
            b'}' if depth > 0 => depth -= 1,
            b'/' | b'?' | b'#' if depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let authority = &rest[..end];
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

fn push_resolved(
    out: &mut Vec<String>,
    value: &Interpolated,
    lookup: &dyn Fn(&str) -> Option<String>,
) {
    for name in value.env_names() {
        if let Some(v) = lookup(name) {
            out.push(v);
        }
    }
    if let Ok(v) = value.resolve_with(lookup) {
        out.push(v.into_inner());
    }
}

fn push_userinfo(
    out: &mut Vec<String>,
    url: &Interpolated,
    lookup: &dyn Fn(&str) -> Option<String>,
) {
    if let Some(raw) = userinfo_password(url.raw()) {
        if let Ok(part) = Interpolated::parse(raw) {
            push_resolved(out, &part, lookup);
        }
    }
    if let Ok(resolved) = url.resolve_with(lookup) {
        if let Some(p) = userinfo_password(resolved.expose()) {
            out.push(p.to_string());
            let decoded = percent_encoding::percent_decode_str(p).decode_utf8_lossy();
            out.push(decoded.into_owned());
        }
    }
}

/// The secret-named environment variables a template may read: those whose name
/// appears in its text (`{{ env.MY_TOKEN }}`, `{{ env["MY_TOKEN"] }}`). A name built
/// at render time (`env[vars.name]`) cannot be known here; the template's `env`
/// object adds such a value to the redactor as it reads it
/// ([`crate::templates::EnvObject`]).
pub fn template_env_names<'a>(text: &str, env: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    env.into_iter()
        .filter(|name| name_marks_secret(name) && text.contains(name))
        .collect()
}

/// Every secret value of `plan`, resolved with `lookup` (the process environment in a
/// run): what the run's redactor masks.
pub fn values(plan: &Plan, env: &BTreeMap<String, String>) -> Vec<String> {
    let lookup = &|name: &str| env.get(name).cloned();
    let mut out = Vec::new();
    for conn in plan.connections.values() {
        for value in [&conn.password, &conn.access_key_id, &conn.secret_access_key]
            .into_iter()
            .flatten()
        {
            push_resolved(&mut out, value, lookup);
        }
        for url in [&conn.url, &conn.endpoint, &conn.http_url]
            .into_iter()
            .flatten()
        {
            push_userinfo(&mut out, url, lookup);
        }
        for (key, value) in &conn.settings {
            if name_marks_secret(key) {
                match Interpolated::parse(value) {
                    Ok(v) => push_resolved(&mut out, &v, lookup),
                    Err(_) => out.push(value.clone()),
                }
            }
        }
    }
    for step in &plan.steps {
        for value in step.env.values() {
            if !value.is_literal() {
                push_resolved(&mut out, value, lookup);
            }
        }
        for name in template_env_names(&step.text, env.keys().map(String::as_str)) {
            out.push(env[name].clone());
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Byte ranges of `text` (a plan file that may not even parse) holding string values
/// of secret-named keys or URL userinfo passwords: what an excerpt of a TOML syntax
/// error must not show, read line by line without the TOML parser.
pub fn secret_ranges_in_text(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let bytes = line.as_bytes();
        let mut key_start = 0;
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'{' | b',' => key_start = i + 1,
                b'=' => {
                    let key = line[key_start..i]
                        .trim()
                        .trim_matches(|c| c == '"' || c == '\'');
                    let mut j = i + 1;
                    while j < bytes.len() && bytes[j] == b' ' {
                        j += 1;
                    }
                    let Some(&quote) = bytes.get(j).filter(|q| matches!(q, b'"' | b'\'')) else {
                        i += 1;
                        continue;
                    };
                    let mut end = j + 1;
                    while end < bytes.len() && bytes[end] != quote && bytes[end] != b'\n' {
                        end += if bytes[end] == b'\\' && quote == b'"' {
                            2
                        } else {
                            1
                        };
                    }
                    let end = end.min(bytes.len());
                    let value = &line[j + 1..end];
                    if name_marks_secret(key) {
                        out.push(line_start + j + 1..line_start + end);
                    } else if let Some(p) = userinfo_password(value) {
                        let at = value.find(p).unwrap_or(0);
                        out.push(line_start + j + 1 + at..line_start + j + 1 + at + p.len());
                    }
                    i = end;
                    key_start = end + 1;
                }
                _ => {}
            }
            i += 1;
        }
        line_start += line.len();
    }
    out
}

/// Installs the secrets of `plan`, resolved from the process environment, into the
/// process-wide redactor.
pub fn install(plan: &Plan) {
    let env: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    crate::redact::install(values(plan, &env));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_are_found_in_text_that_does_not_parse() {
        let text = "password = \"hunter2\nurl = \"http://u:pw@h\"\nenv = { A = \"1\", PGPASSWORD = 'x' }\nname = \"n\"";
        let shown: Vec<&str> = secret_ranges_in_text(text)
            .into_iter()
            .map(|r| &text[r])
            .collect();
        assert_eq!(shown, vec!["hunter2", "pw", "x"]);
    }

    #[test]
    fn names_that_mark_secrets() {
        for n in [
            "PGPASSWORD",
            "api_token",
            "AWS_SECRET_ACCESS_KEY",
            "my_credentials",
        ] {
            assert!(name_marks_secret(n), "{n}");
        }
        for n in ["MODE", "PATH", "user"] {
            assert!(!name_marks_secret(n), "{n}");
        }
    }

    #[test]
    fn clear_text_in_secret_positions() {
        let check = |raw: &str| clear_text(&Interpolated::parse(raw).unwrap());
        assert_eq!(check("${env:PW}"), None);
        assert_eq!(check("${env:A}${env:B}"), None);
        assert_eq!(check(""), None);
        assert!(check("hunter2").is_some());
        assert!(check("${env:PW:-hunter2}").is_some());
        assert!(check("pre${env:PW}").is_some());
        assert_eq!(check("${env:PW:-}"), None);
    }

    #[test]
    fn userinfo_passwords_are_found() {
        assert_eq!(userinfo_password("http://u:pw@h:1/x"), Some("pw"));
        assert_eq!(userinfo_password("http://u:${env:P}@h"), Some("${env:P}"));
        assert_eq!(userinfo_password("http://u@h/a:b@c"), None);
        assert_eq!(userinfo_password("http://h:8123/?a=b@c"), None);
        assert_eq!(userinfo_password("${env:URL}"), None);
        assert_eq!(
            userinfo_password("http://u:${env:P:-a/b}@h/x"),
            Some("${env:P:-a/b}")
        );
    }

    #[test]
    fn secret_named_variables_a_template_reads() {
        let text = "a {{ env.MY_TOKEN }} {{ env['DB_PASSWORD'] }} {{ env.MODE }}";
        let env = ["MY_TOKEN", "DB_PASSWORD", "MODE", "OTHER_TOKEN"];
        assert_eq!(
            template_env_names(text, env),
            vec!["MY_TOKEN", "DB_PASSWORD"]
        );
    }
}
