//! `${env:VAR}` and `${env:VAR:-default}` in plan values.
//!
//! Values are kept in their written form ([`Interpolated`]) and resolved only where they
//! are used, so the plan model, `flow plan` output, fingerprints, state and logs show
//! `${env:CH_PASSWORD}`, never the password. Resolved text is a [`Secret`] whose
//! `Debug`/`Display` are redacted. `$${` writes a literal `${`.

use std::fmt;

/// A plan value that may reference environment variables.
#[derive(Clone, PartialEq, Eq)]
pub struct Interpolated {
    raw: String,
    pieces: Vec<Piece>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Env {
        name: String,
        default: Option<String>,
    },
}

/// Why a value could not be parsed or resolved. Messages never contain values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolateError {
    #[error("unterminated `${{` (missing `}}`)")]
    Unterminated,
    #[error("`${{{0}}}` is not a known reference; only `${{env:NAME}}` and `${{env:NAME:-default}}` are")]
    UnknownReference(String),
    #[error("`{0}` is not a valid environment variable name")]
    BadName(String),
    #[error("environment variable `{0}` is not set")]
    Unset(String),
}

impl Interpolated {
    /// Parses `raw`; syntax errors are reported without any environment access.
    pub fn parse(raw: &str) -> Result<Self, InterpolateError> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = raw;
        while let Some(pos) = rest.find('$') {
            text.push_str(&rest[..pos]);
            let after = &rest[pos..];
            if let Some(stripped) = after.strip_prefix("$${") {
                text.push_str("${");
                rest = stripped;
            } else if let Some(body_start) = after.strip_prefix("${") {
                let end = body_start.find('}').ok_or(InterpolateError::Unterminated)?;
                let body = &body_start[..end];
                let Some(spec) = body.strip_prefix("env:") else {
                    return Err(InterpolateError::UnknownReference(body.to_string()));
                };
                let (name, default) = match spec.split_once(":-") {
                    Some((n, d)) => (n, Some(d.to_string())),
                    None => (spec, None),
                };
                let valid = !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !name.starts_with(|c: char| c.is_ascii_digit());
                if !valid {
                    return Err(InterpolateError::BadName(name.to_string()));
                }
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Env {
                    name: name.to_string(),
                    default,
                });
                rest = &body_start[end + 1..];
            } else {
                text.push('$');
                rest = &after[1..];
            }
        }
        text.push_str(rest);
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Interpolated {
            raw: raw.to_string(),
            pieces,
        })
    }

    /// The value as written (safe to show).
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// Names of the environment variables referenced.
    pub fn env_names(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Env { name, .. } => Some(name.as_str()),
            Piece::Text(_) => None,
        })
    }

    /// True when a `${env:NAME:-default}` has a non-empty default.
    pub fn has_default(&self) -> bool {
        self.pieces
            .iter()
            .any(|p| matches!(p, Piece::Env { default: Some(d), .. } if !d.is_empty()))
    }

    /// True when the value has text outside its environment references.
    pub fn has_text(&self) -> bool {
        self.pieces
            .iter()
            .any(|p| matches!(p, Piece::Text(t) if !t.is_empty()))
    }

    /// True when the value references no environment variable.
    pub fn is_literal(&self) -> bool {
        self.env_names().next().is_none()
    }

    /// Resolves against the process environment.
    pub fn resolve(&self) -> Result<Secret, InterpolateError> {
        self.resolve_with(|name| std::env::var(name).ok())
    }

    /// Resolves against `lookup` (tests, `--var`).
    pub fn resolve_with(
        &self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Secret, InterpolateError> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Env { name, default } => match (lookup(name), default) {
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => return Err(InterpolateError::Unset(name.clone())),
                },
            }
        }
        Ok(Secret(out))
    }
}

/// Resolves an optional value of a plan key; the error names the key, never a value.
pub fn resolve_key(value: &Option<Interpolated>, key: &str) -> Result<Option<Secret>, String> {
    value
        .as_ref()
        .map(|v| v.resolve().map_err(|e| format!("`{key}`: {e}")))
        .transpose()
}

impl fmt::Debug for Interpolated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.raw)
    }
}

impl fmt::Display for Interpolated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// A resolved value that may be secret; shows as `***`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself; call only where it is handed to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "SET").then(|| "s3cr3t".to_string())
    }

    #[test]
    fn resolves_values_defaults_and_escapes() {
        let v = Interpolated::parse("a${env:SET}b${env:UNSET:-dflt}$${env:X}").unwrap();
        assert_eq!(
            v.resolve_with(env).unwrap().expose(),
            "as3cr3tbdflt${env:X}"
        );
        assert_eq!(v.raw(), "a${env:SET}b${env:UNSET:-dflt}$${env:X}");
        assert_eq!(v.env_names().collect::<Vec<_>>(), vec!["SET", "UNSET"]);
    }

    #[test]
    fn unset_without_default_is_an_error_naming_the_variable() {
        let v = Interpolated::parse("${env:UNSET}").unwrap();
        assert_eq!(
            v.resolve_with(env),
            Err(InterpolateError::Unset("UNSET".into()))
        );
    }

    #[test]
    fn syntax_errors() {
        assert_eq!(
            Interpolated::parse("${env:X"),
            Err(InterpolateError::Unterminated)
        );
        assert!(matches!(
            Interpolated::parse("${var:X}"),
            Err(InterpolateError::UnknownReference(_))
        ));
        assert!(matches!(
            Interpolated::parse("${env:1X}"),
            Err(InterpolateError::BadName(_))
        ));
        assert_eq!(Interpolated::parse("$5 and $x").unwrap().raw(), "$5 and $x");
    }

    #[test]
    fn secrets_are_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** \"***\"");
    }
}
