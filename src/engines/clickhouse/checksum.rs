//! The order-independent row checksum: `sum(cityHash64(<columns>))`.
//!
//! `sum` (wrapping at 2^64) rather than `groupBitXor`: a duplicated row changes a sum
//! but cancels out of a xor. The hash arguments are chosen per column type so that the
//! same rows give the same checksum on ClickHouse 18.16 and on current releases, which
//! lets `copy` compare across servers:
//!
//! - types both hash natively (integers, floats, strings, Date/DateTime, Enum, tuples
//!   of those) are passed as they are;
//! - `Nullable(T)` becomes `isNull(c), if(isNull(c), <T's default>, assumeNotNull(c))`
//!   (old servers refuse Nullable arguments; a NULL would otherwise be skipped by `sum`).
//!   Under a NULL the server keeps an arbitrary hidden value (`if(x, NULL, n)` stores
//!   `n` there); a file or another server holds the type's default instead, so the
//!   hidden value is a storage artefact, not data, and never reaches the hash;
//! - floats hash with every NaN as the one canonical NaN: a NaN's sign and payload
//!   (`0/0` is a negative NaN on x86) do not survive a text format or another writer;
//! - `LowCardinality(T)` hashes like `T`;
//! - Decimals and UUIDs, which 18.16 cannot hash, become canonical text (trailing
//!   fractional zeros removed: 18.16 prints `1.5000`, current releases `1.5`);
//! - arrays of such types are mapped element-wise to canonical text; anything else
//!   (maps, JSON, nested tuples of odd types) falls back to `toString(c)`.

/// One column of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub data_type: String,
}

/// What the two sides of one comparison have in common.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compared {
    /// The sides may have other column types (a target created with `Decimal(12, 2)`
    /// for a source's `Decimal(10, 2)`): every value is hashed in a canonical text form
    /// that all versions and widths agree on.
    AnyTypes,
    /// Both sides have the same column types (a policy move; a copy whose target has
    /// the source's types, on one server or from 18.16 to a current release): Decimals
    /// and UUIDs are hashed as their bytes (`reinterpretAsString`), not as canonical
    /// text, which costs the server a conversion and a regular expression per value.
    /// One type has one byte layout in every version flow supports (18.16 and 26.9 give
    /// the same hashes for table columns; tests/clickhouse_engine.rs checks it).
    SameTypes,
}

/// How the checksums of two sides with these columns are compared: as bytes where both
/// have the same columns with the same types, in canonical text otherwise.
pub fn compared_for(a: &[Column], b: &[Column]) -> Compared {
    if a == b {
        Compared::SameTypes
    } else {
        Compared::AnyTypes
    }
}

/// The checksum expression over `columns` (an UInt64, wrapping sum), comparable
/// across server versions.
pub fn checksum_expr(columns: &[Column]) -> String {
    checksum_expr_for(columns, Compared::AnyTypes)
}

/// The checksum expression over `columns` for checksums compared as `compared`.
pub fn checksum_expr_for(columns: &[Column], compared: Compared) -> String {
    let mut args = Vec::new();
    for c in columns {
        args.extend(hash_args(
            &crate::templates::quote_identifier(&c.name),
            &c.data_type,
            0,
            compared,
        ));
    }
    if args.is_empty() {
        return "count()".into();
    }
    format!("sum(cityHash64({}))", args.join(", "))
}

fn unwrap<'a>(ty: &'a str, name: &str) -> Option<&'a str> {
    ty.strip_prefix(name)
        .and_then(|r| r.strip_prefix('('))
        .and_then(|r| r.strip_suffix(')'))
        .map(str::trim)
}

fn is_natively_hashable(ty: &str) -> bool {
    let base = ty.split('(').next().unwrap_or(ty).trim();
    matches!(
        base,
        "UInt8"
            | "UInt16"
            | "UInt32"
            | "UInt64"
            | "Int8"
            | "Int16"
            | "Int32"
            | "Int64"
            | "Float32"
            | "Float64"
            | "String"
            | "FixedString"
            | "Date"
            | "DateTime"
            | "Enum8"
            | "Enum16"
    )
}

fn is_float(ty: &str) -> bool {
    matches!(ty.trim(), "Float32" | "Float64")
}

/// A float with every NaN replaced by the canonical one (`nan`).
fn canonical_nan(expr: &str) -> String {
    format!("if(isNaN({expr}), nan, {expr})")
}

fn is_decimal(ty: &str) -> bool {
    ty.starts_with("Decimal")
}

/// Arguments of cityHash64 for one value of type `ty`.
fn hash_args(expr: &str, ty: &str, depth: usize, compared: Compared) -> Vec<String> {
    let ty = ty.trim();
    if let Some(inner) = unwrap(ty, "LowCardinality") {
        return hash_args(expr, inner, depth, compared);
    }
    if let Some(inner) = unwrap(ty, "Nullable") {
        let value = format!("assumeNotNull({expr})");
        let mut args = vec![format!("isNull({expr})")];
        args.extend(hash_args(
            &format!("if(isNull({expr}), defaultValueOfArgumentType({value}), {value})"),
            inner,
            depth,
            compared,
        ));
        return args;
    }
    if is_float(ty) {
        return vec![canonical_nan(expr)];
    }
    let as_bytes_on_one_server =
        |t: &str| compared == Compared::SameTypes && (is_decimal(t) || t == "UUID");
    if is_natively_hashable(ty) {
        return vec![expr.to_string()];
    }
    if as_bytes_on_one_server(ty) {
        return vec![format!("reinterpretAsString({expr})")];
    }
    if is_decimal(ty) || ty == "UUID" {
        return vec![canonical_text(expr, ty, depth)];
    }
    if let Some(inner) = unwrap(ty, "Array") {
        if is_float(inner) {
            let var = format!("x{depth}");
            return vec![format!(
                "arrayMap({var} -> {}, {expr})",
                canonical_nan(&var)
            )];
        }
        if is_natively_hashable(inner) {
            return vec![expr.to_string()];
        }
        if as_bytes_on_one_server(inner.trim()) {
            let var = format!("x{depth}");
            return vec![format!(
                "arrayMap({var} -> reinterpretAsString({var}), {expr})"
            )];
        }
        let var = format!("x{depth}");
        return vec![format!(
            "arrayMap({var} -> {}, {expr})",
            canonical_text(&var, inner, depth + 1)
        )];
    }
    if let Some(inner) = unwrap(ty, "Tuple") {
        if split_top_level(inner).iter().all(|t| {
            let t = strip_field_name(t);
            is_natively_hashable(t) && !is_float(t)
        }) {
            return vec![expr.to_string()];
        }
    }
    vec![format!("toString({expr})")]
}

/// A String expression that prints a value the same way on every server version.
fn canonical_text(expr: &str, ty: &str, depth: usize) -> String {
    let ty = ty.trim();
    if let Some(inner) = unwrap(ty, "LowCardinality") {
        return canonical_text(expr, inner, depth);
    }
    if let Some(inner) = unwrap(ty, "Nullable") {
        return format!(
            "if(isNull({expr}), '\\\\N', {})",
            canonical_text(&format!("assumeNotNull({expr})"), inner, depth)
        );
    }
    if is_decimal(ty) {
        return format!(
            "replaceRegexpOne(toString({expr}), '(\\\\.[0-9]*[1-9])0+$|\\\\.0+$', '\\\\1')"
        );
    }
    if is_float(ty) {
        return format!("toString({})", canonical_nan(expr));
    }
    if let Some(inner) = unwrap(ty, "Array") {
        let var = format!("x{depth}");
        return format!(
            "toString(arrayMap({var} -> {}, {expr}))",
            canonical_text(&var, inner, depth + 1)
        );
    }
    format!("toString({expr})")
}

fn strip_field_name(t: &str) -> &str {
    // Named tuple fields: `a Int32`.
    let t = t.trim();
    match t.split_once(' ') {
        Some((first, rest)) if !first.contains('(') => rest.trim(),
        _ => t,
    }
}

fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut quote = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '\'' => quote = !quote,
            '(' if !quote => depth += 1,
            ')' if !quote => depth = depth.saturating_sub(1),
            ',' if !quote && depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str) -> Column {
        Column {
            name: name.into(),
            data_type: ty.into(),
        }
    }

    #[test]
    fn per_type_arguments() {
        let e = checksum_expr(&[
            col("d", "Date"),
            col("n", "Nullable(Int32)"),
            col("k", "LowCardinality(String)"),
            col("x", "Decimal(18, 4)"),
            col("a", "Array(String)"),
            col("ad", "Array(Decimal(9, 2))"),
            col("t", "Tuple(Int32, String)"),
            col("u", "UUID"),
        ]);
        assert!(
            e.starts_with(
                "sum(cityHash64(`d`, isNull(`n`), \
             if(isNull(`n`), defaultValueOfArgumentType(assumeNotNull(`n`)), assumeNotNull(`n`)), \
             `k`, replaceRegexpOne(toString(`x`)"
            ),
            "{e}"
        );
        assert!(
            e.contains("arrayMap(x0 -> replaceRegexpOne(toString(x0)"),
            "{e}"
        );
        assert!(e.contains(", `a`, "), "{e}");
        assert!(e.contains(", `t`, toString(`u`)"), "{e}");
    }

    #[test]
    fn every_nan_hashes_as_one() {
        let e = checksum_expr(&[
            col("f", "Float64"),
            col("nf", "Nullable(Float32)"),
            col("af", "Array(Float64)"),
            col("tf", "Tuple(Int32, Float64)"),
        ]);
        assert!(e.contains("if(isNaN(`f`), nan, `f`)"), "{e}");
        assert!(
            e.contains("if(isNaN(if(isNull(`nf`), defaultValueOfArgumentType(assumeNotNull(`nf`)), assumeNotNull(`nf`))), nan,"),
            "{e}"
        );
        assert!(
            e.contains("arrayMap(x0 -> if(isNaN(x0), nan, x0), `af`)"),
            "{e}"
        );
        assert!(e.contains("toString(`tf`)"), "{e}");
    }

    #[test]
    fn on_one_server_decimals_and_uuids_hash_as_their_bytes() {
        let cols = [
            col("x", "Decimal(18, 4)"),
            col("nx", "Nullable(Decimal(9, 2))"),
            col("ad", "Array(Decimal(9, 2))"),
            col("u", "UUID"),
            col("f", "Float64"),
        ];
        let e = checksum_expr_for(&cols, Compared::SameTypes);
        assert!(!e.contains("replaceRegexpOne"), "{e}");
        assert!(!e.contains("toString"), "{e}");
        assert!(
            e.starts_with("sum(cityHash64(reinterpretAsString(`x`), isNull(`nx`)"),
            "{e}"
        );
        assert!(
            e.contains(
                ", arrayMap(x0 -> reinterpretAsString(x0), `ad`), reinterpretAsString(`u`), \
                 if(isNaN(`f`), nan, `f`)))"
            ),
            "{e}"
        );
        // Across servers the same columns still hash as canonical text.
        assert!(checksum_expr(&cols).contains("replaceRegexpOne(toString(`x`)"));
    }
}
