//! Connection identity: what a connection points at, for fingerprints and for finding
//! two writers of one object.
//!
//! Every task that uses a connection has the connection's identity among its inputs, so
//! a plan whose source or target moved (another url, path, bucket, prefix, endpoint,
//! database, server setting) runs the affected tasks again instead of trusting work
//! that was done somewhere else. Secrets are never part of an identity: passwords and
//! keys are left out, a URL's userinfo is cut off, settings whose name marks a secret
//! are skipped. A value that references the environment is identified by its text as
//! written plus a short hash of what it resolves to now, so a changed variable is seen
//! without its value being stored.

use std::path::{Path, PathBuf};

use super::schema::ConnectionKind;
use super::{Connection, Interpolated};

/// The identity of `conn`, one line of `name=value` pairs in a fixed order.
pub fn identity(conn: &Connection, base_dir: &Path) -> String {
    let mut parts = vec![format!("kind={}", conn.kind.as_str())];
    let mut put = |name: &str, value: Option<String>| {
        if let Some(v) = value {
            parts.push(format!("{name}={v}"));
        }
    };
    put(
        "url",
        conn.url.as_ref().map(|v| described(v, strip_userinfo)),
    );
    put(
        "http_url",
        conn.http_url.as_ref().map(|v| described(v, strip_userinfo)),
    );
    put(
        "database",
        conn.database.as_ref().map(|v| described(v, same)),
    );
    put(
        "endpoint",
        conn.endpoint.as_ref().map(|v| described(v, same)),
    );
    put("region", conn.region.as_ref().map(|v| described(v, same)));
    put("bucket", conn.bucket.as_ref().map(|v| described(v, same)));
    put("prefix", conn.prefix.as_ref().map(|v| described(v, same)));
    put("path_style", conn.path_style.map(|v| v.to_string()));
    if conn.kind == ConnectionKind::Fs {
        put(
            "path",
            fs_root(conn, base_dir).map(|p| p.display().to_string()),
        );
    }
    put(
        "kubeconfig",
        conn.kubeconfig.as_ref().map(|p| p.display().to_string()),
    );
    put("context", conn.context.as_ref().map(|v| described(v, same)));
    for (name, value) in &conn.settings {
        if !super::secrets::name_marks_secret(name) {
            parts.push(format!("settings.{name}={value}"));
        }
    }
    parts.join(" ")
}

/// Where an object of a store connection lives, as one comparable string: the same
/// string for two (connection, key) pairs means the same object. None for connections
/// that are not object stores.
pub fn object_location(conn: &Connection, base_dir: &Path, key: &str) -> Option<String> {
    match conn.kind {
        ConnectionKind::Fs => {
            fs_root(conn, base_dir).map(|root| root.join(key).display().to_string())
        }
        ConnectionKind::S3 => {
            let text = |v: &Option<Interpolated>| {
                v.as_ref()
                    .map(|v| {
                        v.resolve()
                            .map(|s| s.into_inner())
                            .unwrap_or_else(|_| v.raw().to_string())
                    })
                    .unwrap_or_default()
            };
            let prefix = text(&conn.prefix);
            let full: Vec<&str> = prefix
                .split('/')
                .chain(key.split('/'))
                .filter(|s| !s.is_empty())
                .collect();
            Some(format!(
                "s3 {} {} {}",
                text(&conn.endpoint),
                text(&conn.bucket),
                full.join("/")
            ))
        }
        _ => None,
    }
}

/// The root directory of an `fs` connection, absolute (relative paths are relative to
/// the plan's directory); the text as written when it does not resolve now.
fn fs_root(conn: &Connection, base_dir: &Path) -> Option<PathBuf> {
    let path = conn.path.as_ref()?;
    let text = path
        .resolve()
        .map(|s| s.into_inner())
        .unwrap_or_else(|_| path.raw().to_string());
    let joined = base_dir.join(text);
    Some(std::path::absolute(&joined).unwrap_or(joined))
}

fn same(v: String) -> String {
    v
}

/// A value as written; with environment references, plus a hash of what it resolves
/// to now (after `clean`), so a changed variable changes the identity.
fn described(v: &Interpolated, clean: fn(String) -> String) -> String {
    if v.is_literal() {
        return clean(v.raw().to_string());
    }
    match v.resolve() {
        Ok(resolved) => {
            let hash = blake3::hash(clean(resolved.into_inner()).as_bytes());
            format!("{}#{}", v.raw(), &hash.to_hex()[..12])
        }
        Err(_) => v.raw().to_string(),
    }
}

/// `scheme://user:pass@host/…` → `scheme://host/…`.
fn strip_userinfo(url: String) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url;
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}{}", &url[..scheme_end + 3], &rest[at + 1..]),
        None => url,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_cut_off() {
        assert_eq!(
            strip_userinfo("http://u:p%40ss@h:8123/x?y=1".into()),
            "http://h:8123/x?y=1"
        );
        assert_eq!(strip_userinfo("http://h/a@b".into()), "http://h/a@b");
        assert_eq!(strip_userinfo("mysql://h".into()), "mysql://h");
    }
}
