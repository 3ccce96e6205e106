//! SQL literals the server writes itself.
//!
//! Partition values and split boundaries must be written back into filters exactly as
//! the server reads them: a Date, a tuple `(201506,'eu')`, a string with quotes. Rather
//! than re-format typed values (and get time zones, escapes or float digits wrong),
//! flow asks for them in the `Values` output format, which prints SQL literals, and
//! splits that text into fields here. `system.parts.partition` uses the same quoting,
//! so the two can be compared as text.

/// Splits `Values` output — `(a,b),(c,d)` — into rows of literal texts.
pub fn parse_values(text: &str) -> Result<Vec<Vec<String>>, String> {
    let mut rows = Vec::new();
    let mut chars = text.trim().char_indices().peekable();
    let src = text.trim();
    loop {
        // Skip separators between rows.
        while let Some(&(_, c)) = chars.peek() {
            if c == ',' || c.is_whitespace() {
                chars.next();
            } else {
                break;
            }
        }
        let Some((_, c)) = chars.next() else {
            break;
        };
        if c != '(' {
            return Err(format!("expected `(` in Values output, found `{c}`"));
        }
        let mut fields = Vec::new();
        let mut depth = 0usize;
        let mut in_string = false;
        let mut start = None::<usize>;
        let mut closed = false;
        while let Some((i, c)) = chars.next() {
            if start.is_none() && !(depth == 0 && (c == ')' || c == ',')) {
                start = Some(i);
            }
            if in_string {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '\'' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '\'' => in_string = true,
                '(' | '[' | '{' => depth += 1,
                ')' if depth == 0 => {
                    if let Some(s) = start.take() {
                        fields.push(src[s..i].trim().to_string());
                    }
                    closed = true;
                    break;
                }
                ')' | ']' | '}' => depth = depth.saturating_sub(1),
                ',' if depth == 0 => {
                    let s = start.take().unwrap_or(i);
                    fields.push(src[s..i].trim().to_string());
                }
                _ => {}
            }
        }
        if !closed {
            return Err("unterminated row in Values output".into());
        }
        rows.push(fields);
    }
    Ok(rows)
}

/// Whether a literal is SQL NULL.
pub fn is_null(literal: &str) -> bool {
    literal.eq_ignore_ascii_case("NULL")
}

/// The condition selecting rows whose `expr` equals `literal` (NULL-aware).
pub fn equals_filter(expr: &str, literal: &str) -> String {
    if is_null(literal) {
        format!("({expr}) IS NULL")
    } else {
        format!("({expr}) = {literal}")
    }
}

/// A file-name-safe partition id from a value literal: `201506` → `201506`,
/// `'2015-06-01'` → `2015-06-01`, `(201506,'eu')` → `201506-eu`. When anything had to
/// be replaced, a short hash of the literal keeps distinct values distinct.
pub fn id_from_literal(literal: &str) -> String {
    let inner = literal
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or(literal.trim());
    let fields = match parse_values(&format!("({inner})")) {
        Ok(mut rows) if rows.len() == 1 => rows.remove(0),
        _ => vec![inner.to_string()],
    };
    let mut lossy = false;
    let mut parts = Vec::new();
    for field in fields {
        if is_null(&field) {
            // A string 'NULL' must not share an id with SQL NULL.
            lossy = true;
        }
        let unquoted = field
            .strip_prefix('\'')
            .and_then(|s| s.strip_suffix('\''))
            .unwrap_or(&field);
        let mut out = String::new();
        for c in unquoted.chars() {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                out.push(c);
            } else {
                lossy = true;
                out.push('_');
            }
        }
        parts.push(out);
    }
    let mut id = parts.join("-");
    if id.is_empty() || id.starts_with('.') || id.len() > 100 {
        lossy = true;
        id.truncate(100);
    }
    if lossy {
        let hash = blake3::hash(literal.as_bytes()).to_hex();
        id = format!(
            "{}{}{}",
            id,
            if id.is_empty() { "" } else { "-" },
            &hash[..8]
        );
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_rows_and_fields() {
        let rows = parse_values("((201507,'us'),1),((201506,'e\\'u,)'),2)").unwrap();
        assert_eq!(
            rows,
            vec![
                vec!["(201507,'us')".to_string(), "1".to_string()],
                vec!["(201506,'e\\'u,)')".to_string(), "2".to_string()],
            ]
        );
        let rows = parse_values("('2015-06-01',[1,2],NULL)").unwrap();
        assert_eq!(rows[0], vec!["'2015-06-01'", "[1,2]", "NULL"]);
        assert_eq!(parse_values("").unwrap(), Vec::<Vec<String>>::new());
        assert!(parse_values("(1,2").is_err());
    }

    #[test]
    fn ids_are_readable_and_distinct() {
        assert_eq!(id_from_literal("201506"), "201506");
        assert_eq!(id_from_literal("'2015-06-01'"), "2015-06-01");
        assert_eq!(id_from_literal("(201506,'eu')"), "201506-eu");
        let a = id_from_literal("'a b'");
        let b = id_from_literal("'a_b'");
        assert_ne!(a, b);
        assert!(a.starts_with("a_b-"));
        assert!(id_from_literal("NULL").starts_with("NULL-"));
        assert_eq!(id_from_literal("'NULL'"), "NULL");
    }

    #[test]
    fn null_aware_filters() {
        assert_eq!(equals_filter("k", "NULL"), "(k) IS NULL");
        assert_eq!(
            equals_filter("toYYYYMM(d)", "201506"),
            "(toYYYYMM(d)) = 201506"
        );
    }
}
