//! Table definitions under a new name.
//!
//! `copy` creates its target from the source's own `CREATE TABLE` text
//! (`system.tables.create_table_query`), so the target has the same columns, codecs,
//! engine, partition key and settings. Only the head (`CREATE TABLE db.name [UUID …]`)
//! changes; the definition after it is kept byte for byte.

/// The definition part of a `CREATE TABLE` statement: everything from the column
/// list on (`(a Int32, …) ENGINE = …`). Errors say what was expected.
pub fn definition(create: &str) -> Result<String, String> {
    let text = create.trim();
    let mut rest = strip_keyword(text, "CREATE")
        .or_else(|| strip_keyword(text, "ATTACH"))
        .ok_or_else(|| format!("expected `CREATE TABLE …`, got `{}`", head(text)))?;
    rest = strip_keyword(rest, "TABLE")
        .ok_or_else(|| format!("expected `CREATE TABLE …`, got `{}`", head(text)))?;
    if let Some(r) = strip_keyword(rest, "IF") {
        rest = strip_keyword(r, "NOT")
            .and_then(|r| strip_keyword(r, "EXISTS"))
            .ok_or("expected `IF NOT EXISTS`")?;
    }
    // The table name: identifiers joined by dots.
    loop {
        rest = skip_identifier(rest)
            .ok_or_else(|| format!("cannot read the table name in `{}`", head(text)))?;
        match rest.strip_prefix('.') {
            Some(r) => rest = r,
            None => break,
        }
    }
    rest = rest.trim_start();
    if let Some(r) = strip_keyword(rest, "UUID") {
        let r = r.trim_start();
        let end = r
            .strip_prefix('\'')
            .and_then(|s| s.find('\''))
            .ok_or("cannot read the UUID")?;
        rest = r[end + 2..].trim_start();
    }
    if !rest.starts_with('(') {
        return Err(format!(
            "expected a column list after the table name in `{}`",
            head(text)
        ));
    }
    Ok(rest.to_string())
}

fn head(s: &str) -> String {
    s.chars().take(80).collect()
}

fn strip_keyword<'a>(s: &'a str, kw: &str) -> Option<&'a str> {
    let s = s.trim_start();
    if s.len() >= kw.len()
        && s[..kw.len()].eq_ignore_ascii_case(kw)
        && s[kw.len()..]
            .chars()
            .next()
            .is_none_or(|c| c.is_whitespace() || c == '(')
    {
        Some(&s[kw.len()..])
    } else {
        None
    }
}

/// Skips one identifier (bare, `back-quoted` or "double-quoted"); returns the rest.
fn skip_identifier(s: &str) -> Option<&str> {
    let s = s.trim_start();
    let mut chars = s.char_indices();
    let (_, first) = chars.next()?;
    if first == '`' || first == '"' {
        let mut escaped = false;
        for (i, c) in chars {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == first {
                return Some(&s[i + 1..]);
            }
        }
        return None;
    }
    if !(first.is_alphanumeric() || first == '_') {
        return None;
    }
    let end = s
        .char_indices()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_' || *c == '$'))
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    Some(&s[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_of_old_and_new_servers() {
        let old = "CREATE TABLE default.t1 ( d Date,  k String) ENGINE = MergeTree PARTITION BY (toYYYYMM(d), k) ORDER BY d SETTINGS index_granularity = 8192";
        assert_eq!(
            definition(old).unwrap(),
            "( d Date,  k String) ENGINE = MergeTree PARTITION BY (toYYYYMM(d), k) ORDER BY d SETTINGS index_granularity = 8192"
        );
        let new =
            "CREATE TABLE `my db`.`we.ird` UUID '6d0d…' (`d` Date) ENGINE = MergeTree ORDER BY d";
        assert_eq!(
            definition(new).unwrap(),
            "(`d` Date) ENGINE = MergeTree ORDER BY d"
        );
        assert!(definition("CREATE VIEW v AS SELECT 1").is_err());
    }
}
