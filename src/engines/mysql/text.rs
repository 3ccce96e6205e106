//! Rows from the MySQL text protocol written as CSV or TSV with a header line, the way
//! ClickHouse writes `CSVWithNames` and `TabSeparatedWithNames`, so either side reads
//! the other's files.
//!
//! The text protocol sends every value as the server prints it (numbers, dates,
//! decimals exactly), or NULL. CSV quotes every value that is not a number, doubling
//! inner quotes, and writes NULL as an unquoted `\N`; TSV escapes backslash, tab,
//! newline, carriage return and NUL, and writes NULL as `\N`. Binary values are written
//! byte for byte.

use mysql_async::consts::ColumnType;
use mysql_async::Value;

use crate::plan::ExportFormat;

/// Whether the server prints a column of this type as a bare number.
pub(crate) fn is_numeric(t: ColumnType) -> bool {
    use ColumnType::*;
    matches!(
        t,
        MYSQL_TYPE_TINY
            | MYSQL_TYPE_SHORT
            | MYSQL_TYPE_LONG
            | MYSQL_TYPE_INT24
            | MYSQL_TYPE_LONGLONG
            | MYSQL_TYPE_FLOAT
            | MYSQL_TYPE_DOUBLE
            | MYSQL_TYPE_DECIMAL
            | MYSQL_TYPE_NEWDECIMAL
            | MYSQL_TYPE_YEAR
    )
}

/// Formats rows of one result into the bytes of a file.
pub(crate) struct TextFormat {
    format: ExportFormat,
    /// Per column: written bare (numbers) or quoted (CSV).
    bare: Vec<bool>,
}

impl TextFormat {
    /// None when `format` is not a text format flow writes from MySQL.
    pub(crate) fn new(format: ExportFormat, types: &[ColumnType]) -> Option<Self> {
        matches!(format, ExportFormat::Csv | ExportFormat::Tsv).then(|| TextFormat {
            format,
            bare: types.iter().map(|t| is_numeric(*t)).collect(),
        })
    }

    /// The header line.
    pub(crate) fn header(&self, names: &[String], out: &mut Vec<u8>) {
        for (i, name) in names.iter().enumerate() {
            self.separator(i, out);
            match self.format {
                ExportFormat::Csv => csv_quoted(name.as_bytes(), out),
                _ => tsv_escaped(name.as_bytes(), out),
            }
        }
        out.push(b'\n');
    }

    /// One row; `None` is a value the result did not hold (never, for a whole row).
    pub(crate) fn row<'v>(
        &self,
        values: impl IntoIterator<Item = Option<&'v Value>>,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        for (i, value) in values.into_iter().enumerate() {
            self.separator(i, out);
            match value {
                Some(Value::NULL) => out.extend_from_slice(b"\\N"),
                Some(Value::Bytes(bytes)) => match self.format {
                    ExportFormat::Csv if self.bare.get(i).copied().unwrap_or(false) => {
                        out.extend_from_slice(bytes)
                    }
                    ExportFormat::Csv => csv_quoted(bytes, out),
                    _ => tsv_escaped(bytes, out),
                },
                None => return Err(format!("column {}: the row holds no value", i + 1)),
                // The text protocol sends only text and NULL; anything else means a
                // prepared statement slipped in, whose values would print otherwise.
                Some(other) => {
                    return Err(format!(
                        "column {}: unexpected binary value {other:?}",
                        i + 1
                    ))
                }
            }
        }
        out.push(b'\n');
        Ok(())
    }

    fn separator(&self, i: usize, out: &mut Vec<u8>) {
        if i > 0 {
            out.push(if self.format == ExportFormat::Csv {
                b','
            } else {
                b'\t'
            });
        }
    }
}

fn csv_quoted(bytes: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in bytes {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
}

fn tsv_escaped(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0 => out.extend_from_slice(b"\\0"),
            b => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(v: &str) -> Value {
        Value::Bytes(v.as_bytes().to_vec())
    }

    #[test]
    fn csv_quotes_all_but_numbers_and_writes_null_bare() {
        let f = TextFormat::new(
            ExportFormat::Csv,
            &[
                ColumnType::MYSQL_TYPE_LONGLONG,
                ColumnType::MYSQL_TYPE_VAR_STRING,
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        f.header(&["id".into(), "na\"me".into()], &mut out);
        f.row([&text("-7"), &text("a \"b\"\nc,d")].map(Some), &mut out)
            .unwrap();
        f.row([&Value::NULL, &text("\\N")].map(Some), &mut out)
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"id\",\"na\"\"me\"\n-7,\"a \"\"b\"\"\nc,d\"\n\\N,\"\\N\"\n"
        );
    }

    #[test]
    fn tsv_escapes_what_would_break_a_line() {
        let f = TextFormat::new(ExportFormat::Tsv, &[ColumnType::MYSQL_TYPE_BLOB]).unwrap();
        let mut out = Vec::new();
        f.row([Some(&Value::Bytes(b"a\tb\nc\\d\re\0".to_vec()))], &mut out)
            .unwrap();
        f.row([Some(&Value::NULL)], &mut out).unwrap();
        assert_eq!(out, b"a\\tb\\nc\\\\d\\re\\0\n\\N\n");
    }

    #[test]
    fn only_text_formats() {
        assert!(TextFormat::new(ExportFormat::Parquet, &[]).is_none());
        assert!(TextFormat::new(ExportFormat::Native, &[]).is_none());
    }
}
