//! Reading ClickHouse's `Native` format, as the HTTP interface sends it.
//!
//! Why: a server asked for CSV formats every value itself, in the one thread that
//! answers the query; asked for `Native`, it sends its columns almost as they are on
//! disk and flow formats them (see [`super::text_out`]) — the split the server and
//! `clickhouse-client` use. Only the column types flow can format exactly are parsed;
//! any other type makes [`NativeReader`] report [`NativeError::Unsupported`] and the
//! caller asks the server to format instead.
//!
//! A block over HTTP (no protocol revision): varint column count, varint row count,
//! then per column its name, its type name (both varint-length strings) and its data
//! for all rows: fixed-width values little-endian; `String` a varint length and bytes
//! per row; `Nullable(T)` a null byte per row, then `T` for all rows.

use bytes::{Bytes, BytesMut};

/// Why a stream could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NativeError {
    /// A column type flow does not format itself (the server should format instead).
    #[error("column `{column}` has type {data_type}, which flow does not format itself")]
    Unsupported { column: String, data_type: String },
    /// No block arrived (18.x sends nothing for a small compressed result; an empty
    /// result has no block to take the header from).
    #[error("the server sent no rows in Native")]
    NoBlocks,
    #[error("malformed Native stream: {0}")]
    Malformed(String),
}

/// A column type flow can read and format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Integers of 1, 2, 4 or 8 bytes.
    Int {
        width: usize,
        signed: bool,
    },
    Float32,
    Float64,
    Bool,
    /// Decimal32/64/128 by width in bytes, with its scale.
    Decimal {
        width: usize,
        scale: u32,
    },
    /// Days since 1970-01-01, UInt16.
    Date,
    /// Days since 1970-01-01, Int32.
    Date32,
    /// Seconds since the epoch, UInt32, shown in the zone (None = the server's).
    DateTime {
        zone: Option<String>,
    },
    /// Ticks of 10^-scale seconds since the epoch, Int64.
    DateTime64 {
        scale: u32,
        zone: Option<String>,
    },
    String,
    FixedString(usize),
    /// Enum8/Enum16: (value, name) pairs sorted by value.
    Enum {
        width: usize,
        names: Vec<(i16, Vec<u8>)>,
    },
    Nullable(Box<Kind>),
}

impl Kind {
    /// Parses a type name as the server writes it; None when flow cannot format it.
    pub fn parse(ty: &str) -> Option<Kind> {
        let ty = ty.trim();
        let (base, args) = match ty.find('(') {
            Some(i) if ty.ends_with(')') => (&ty[..i], Some(&ty[i + 1..ty.len() - 1])),
            Some(_) => return None,
            None => (ty, None),
        };
        let int = |width, signed| Some(Kind::Int { width, signed });
        match (base, args) {
            ("UInt8", None) => int(1, false),
            ("UInt16", None) => int(2, false),
            ("UInt32", None) => int(4, false),
            ("UInt64", None) => int(8, false),
            ("Int8", None) => int(1, true),
            ("Int16", None) => int(2, true),
            ("Int32", None) => int(4, true),
            ("Int64", None) => int(8, true),
            ("Float32", None) => Some(Kind::Float32),
            ("Float64", None) => Some(Kind::Float64),
            ("Bool", None) => Some(Kind::Bool),
            ("Date", None) => Some(Kind::Date),
            ("Date32", None) => Some(Kind::Date32),
            ("String", None) => Some(Kind::String),
            ("DateTime", None) => Some(Kind::DateTime { zone: None }),
            ("DateTime", Some(a)) => Some(Kind::DateTime {
                zone: Some(unquote(a)?),
            }),
            ("DateTime64", Some(a)) => {
                let mut parts = a.splitn(2, ',');
                let scale: u32 = parts.next()?.trim().parse().ok()?;
                let zone = match parts.next() {
                    Some(z) => Some(unquote(z)?),
                    None => None,
                };
                (scale <= 9).then_some(Kind::DateTime64 { scale, zone })
            }
            ("FixedString", Some(a)) => a.trim().parse().ok().map(Kind::FixedString),
            ("Decimal", Some(a)) => {
                let (p, s) = a.split_once(',')?;
                let precision: u32 = p.trim().parse().ok()?;
                let scale: u32 = s.trim().parse().ok()?;
                let width = match precision {
                    1..=9 => 4,
                    10..=18 => 8,
                    19..=38 => 16,
                    _ => return None,
                };
                (scale <= precision).then_some(Kind::Decimal { width, scale })
            }
            ("Decimal32" | "Decimal64" | "Decimal128", Some(a)) => {
                let scale: u32 = a.trim().parse().ok()?;
                let width = match base {
                    "Decimal32" => 4,
                    "Decimal64" => 8,
                    _ => 16,
                };
                Some(Kind::Decimal { width, scale })
            }
            ("Enum8", Some(a)) => enum_names(a).map(|names| Kind::Enum { width: 1, names }),
            ("Enum16", Some(a)) => enum_names(a).map(|names| Kind::Enum { width: 2, names }),
            ("Nullable", Some(a)) => {
                let inner = Kind::parse(a)?;
                (!matches!(inner, Kind::Nullable(_))).then(|| Kind::Nullable(Box::new(inner)))
            }
            _ => None,
        }
    }

    /// A time column's zone (None inside: the server's); None for other kinds.
    pub fn zone(self) -> Option<Option<String>> {
        match self {
            Kind::DateTime { zone } | Kind::DateTime64 { zone, .. } => Some(zone),
            Kind::Nullable(inner) => inner.zone(),
            _ => None,
        }
    }

    /// Bytes per value for fixed-width kinds.
    fn fixed_width(&self) -> Option<usize> {
        match self {
            Kind::Int { width, .. } | Kind::Decimal { width, .. } => Some(*width),
            Kind::Enum { width, .. } => Some(*width),
            Kind::Float32 | Kind::Date32 | Kind::DateTime { .. } => Some(4),
            Kind::Float64 | Kind::DateTime64 { .. } => Some(8),
            Kind::Bool => Some(1),
            Kind::Date => Some(2),
            Kind::FixedString(n) => Some(*n),
            Kind::String | Kind::Nullable(_) => None,
        }
    }
}

/// `'text'` with backslash escapes → text.
fn unquote(s: &str) -> Option<String> {
    let (text, rest) = quoted_prefix(s.trim().as_bytes())?;
    rest.iter()
        .all(u8::is_ascii_whitespace)
        .then(|| String::from_utf8(text).ok())
        .flatten()
}

/// Reads a single-quoted literal at the start of `s`; returns it and what follows.
fn quoted_prefix(s: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut rest = s.strip_prefix(b"'")?;
    let mut out = Vec::new();
    loop {
        match rest {
            [b'\\', c, tail @ ..] => {
                out.push(match c {
                    b'n' => b'\n',
                    b't' => b'\t',
                    b'r' => b'\r',
                    b'0' => 0,
                    b'b' => 8,
                    b'f' => 12,
                    b'a' => 7,
                    b'v' => 11,
                    other => *other,
                });
                rest = tail;
            }
            [b'\'', b'\'', tail @ ..] => {
                out.push(b'\'');
                rest = tail;
            }
            [b'\'', tail @ ..] => return Some((out, tail)),
            [c, tail @ ..] => {
                out.push(*c);
                rest = tail;
            }
            [] => return None,
        }
    }
}

/// `'a' = 1, 'b' = 2` → sorted (value, name) pairs.
fn enum_names(args: &str) -> Option<Vec<(i16, Vec<u8>)>> {
    let mut rest = args.trim_start().as_bytes();
    let mut names = Vec::new();
    while !rest.is_empty() {
        let (name, tail) = quoted_prefix(rest)?;
        let tail = std::str::from_utf8(tail).ok()?.trim_start();
        let tail = tail.strip_prefix('=')?.trim_start();
        let end = tail.find(',').unwrap_or(tail.len());
        let value: i16 = tail[..end].trim().parse().ok()?;
        names.push((value, name));
        rest = tail[end..]
            .strip_prefix(',')
            .unwrap_or(&tail[end..])
            .trim_start()
            .as_bytes();
    }
    names.sort_by_key(|(v, _)| *v);
    (!names.is_empty()).then_some(names)
}

/// One column of a block: its data, and where each string starts when it has strings.
#[derive(Debug)]
pub struct ColumnData {
    pub name: String,
    /// The type as the server names it (for messages).
    pub data_type: String,
    pub kind: Kind,
    /// Fixed-width values, or the strings' bytes (varints included).
    pub data: Bytes,
    /// Per row, 1 = NULL (Nullable columns).
    pub nulls: Option<Bytes>,
    /// Per row (start, length) of a String value within `data`.
    pub strings: Vec<(usize, usize)>,
}

/// A decoded block.
#[derive(Debug)]
pub struct Block {
    pub rows: usize,
    pub columns: Vec<ColumnData>,
}

/// Incremental reader: push decompressed bytes, take complete blocks.
#[derive(Default)]
pub struct NativeReader {
    buffer: BytesMut,
    /// Don't try to parse again before the buffer holds this many bytes.
    need: usize,
}

/// Why a parse attempt stopped.
enum Stop {
    /// At least this many bytes in all are needed.
    More(usize),
    Fail(NativeError),
}

impl From<NativeError> for Stop {
    fn from(e: NativeError) -> Self {
        Stop::Fail(e)
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<std::ops::Range<usize>, Stop> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or_else(|| malformed("size overflow"))?;
        if end > self.buf.len() {
            return Err(Stop::More(end));
        }
        let range = self.pos..end;
        self.pos = end;
        Ok(range)
    }

    fn varint(&mut self) -> Result<u64, Stop> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(Stop::More(self.pos + 1));
            };
            self.pos += 1;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed("varint longer than 10 bytes"))
    }

    fn text(&mut self, what: &str) -> Result<String, Stop> {
        let len = self.varint()? as usize;
        if len > 1 << 20 {
            return Err(malformed(&format!("{what} of {len} bytes")));
        }
        let range = self.take(len)?;
        String::from_utf8(self.buf[range].to_vec())
            .map_err(|_| malformed(&format!("{what} is not UTF-8")))
    }
}

fn malformed(what: &str) -> Stop {
    Stop::Fail(NativeError::Malformed(what.to_string()))
}

impl NativeReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes; returns the blocks they complete.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Block>, NativeError> {
        self.buffer.extend_from_slice(data);
        let mut blocks = Vec::new();
        while !self.buffer.is_empty() && self.buffer.len() >= self.need {
            match self.parse() {
                Ok((block, used)) => {
                    let frozen = self.buffer.split_to(used).freeze();
                    blocks.push(block.attach(&frozen));
                    self.need = 0;
                }
                Err(Stop::More(n)) => {
                    self.need = n;
                    break;
                }
                Err(Stop::Fail(e)) => return Err(e),
            }
        }
        Ok(blocks)
    }

    /// Call at the end of the stream: leftover bytes mean it was cut short.
    pub fn finish(&self) -> Result<(), NativeError> {
        if self.buffer.is_empty() {
            Ok(())
        } else {
            Err(NativeError::Malformed(format!(
                "the stream ends inside a block ({} bytes left over)",
                self.buffer.len()
            )))
        }
    }

    /// Parses one block from the front of the buffer: column layouts as ranges.
    fn parse(&self) -> Result<(Layout, usize), Stop> {
        let mut c = Cursor {
            buf: &self.buffer,
            pos: 0,
        };
        let columns = c.varint()? as usize;
        let rows = c.varint()? as usize;
        if columns > 100_000 || rows > 1 << 32 {
            return Err(malformed(&format!(
                "block of {columns} columns, {rows} rows"
            )));
        }
        let mut layout = Layout {
            rows,
            columns: Vec::with_capacity(columns),
        };
        for _ in 0..columns {
            let name = c.text("column name")?;
            let data_type = c.text("column type")?;
            let kind = Kind::parse(&data_type).ok_or_else(|| {
                Stop::Fail(NativeError::Unsupported {
                    column: name.clone(),
                    data_type: data_type.clone(),
                })
            })?;
            let (nulls, inner) = match &kind {
                Kind::Nullable(inner) => (Some(c.take(rows)?), inner.as_ref()),
                other => (None, other),
            };
            let start = c.pos;
            let mut strings = Vec::new();
            match inner.fixed_width() {
                Some(w) => {
                    c.take(
                        rows.checked_mul(w)
                            .ok_or_else(|| malformed("size overflow"))?,
                    )?;
                }
                None => {
                    strings.reserve(rows);
                    for _ in 0..rows {
                        let len = c.varint()? as usize;
                        let range = c.take(len).map_err(|stop| match stop {
                            // Every remaining string needs at least its length byte.
                            Stop::More(n) => Stop::More(n + rows - strings.len() - 1),
                            fail => fail,
                        })?;
                        strings.push((range.start - start, len));
                    }
                }
            }
            layout.columns.push(ColumnLayout {
                name,
                data_type,
                kind,
                nulls,
                data: start..c.pos,
                strings,
            });
        }
        Ok((layout, c.pos))
    }
}

struct ColumnLayout {
    name: String,
    data_type: String,
    kind: Kind,
    nulls: Option<std::ops::Range<usize>>,
    data: std::ops::Range<usize>,
    strings: Vec<(usize, usize)>,
}

struct Layout {
    rows: usize,
    columns: Vec<ColumnLayout>,
}

impl Layout {
    /// Turns ranges into shared slices of the block's bytes.
    fn attach(self, bytes: &Bytes) -> Block {
        Block {
            rows: self.rows,
            columns: self
                .columns
                .into_iter()
                .map(|c| ColumnData {
                    name: c.name,
                    data_type: c.data_type,
                    kind: c.kind,
                    data: bytes.slice(c.data),
                    nulls: c.nulls.map(|r| bytes.slice(r)),
                    strings: c.strings,
                })
                .collect(),
        }
    }
}

impl ColumnData {
    /// Whether row `i` is NULL.
    #[inline]
    pub fn is_null(&self, i: usize) -> bool {
        self.nulls.as_ref().is_some_and(|n| n[i] != 0)
    }

    /// The value's kind (the inner kind of a Nullable).
    pub fn value_kind(&self) -> &Kind {
        match &self.kind {
            Kind::Nullable(inner) => inner,
            other => other,
        }
    }

    /// The `width` bytes of row `i` of a fixed-width column.
    #[inline]
    pub fn fixed(&self, i: usize, width: usize) -> &[u8] {
        &self.data[i * width..(i + 1) * width]
    }

    /// The bytes of row `i` of a String column.
    #[inline]
    pub fn string(&self, i: usize) -> &[u8] {
        let (start, len) = self.strings[i];
        &self.data[start..start + len]
    }
}

/// Reads a little-endian integer of 1, 2, 4, 8 or 16 bytes, sign-extended when
/// `signed` (fixed-size reads: no call to `memcpy` per value).
#[inline]
pub fn le_int(bytes: &[u8], signed: bool) -> i128 {
    macro_rules! read {
        ($signed:ty, $unsigned:ty) => {{
            let raw = bytes.try_into().expect("width checked by the match");
            if signed {
                i128::from(<$signed>::from_le_bytes(raw))
            } else {
                i128::from(<$unsigned>::from_le_bytes(raw))
            }
        }};
    }
    match bytes.len() {
        1 => read!(i8, u8),
        2 => read!(i16, u16),
        4 => read!(i32, u32),
        8 => read!(i64, u64),
        16 => {
            let raw: [u8; 16] = bytes.try_into().expect("16 bytes");
            i128::from_le_bytes(raw)
        }
        other => unreachable!("no integer of {other} bytes in Native"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn text(s: &str, out: &mut Vec<u8>) {
        varint(s.len() as u64, out);
        out.extend_from_slice(s.as_bytes());
    }

    fn block() -> Vec<u8> {
        let mut b = Vec::new();
        varint(3, &mut b);
        varint(2, &mut b);
        text("id", &mut b);
        text("UInt32", &mut b);
        b.extend_from_slice(&7u32.to_le_bytes());
        b.extend_from_slice(&8u32.to_le_bytes());
        text("s", &mut b);
        text("Nullable(String)", &mut b);
        b.extend_from_slice(&[0, 1]);
        text("a\"b", &mut b);
        text("", &mut b);
        text("e", &mut b);
        text("Enum8('x' = 1, 'it''s' = -2)", &mut b);
        b.extend_from_slice(&[1, (-2i8) as u8]);
        b
    }

    #[test]
    fn blocks_parse_across_any_cut() {
        let mut stream = block();
        stream.extend(block());
        for cut in 0..stream.len() {
            let mut r = NativeReader::new();
            let mut blocks = r.push(&stream[..cut]).unwrap();
            blocks.extend(r.push(&stream[cut..]).unwrap());
            r.finish().unwrap();
            assert_eq!(blocks.len(), 2, "cut {cut}");
            let b = &blocks[1];
            assert_eq!(b.rows, 2);
            assert_eq!(b.columns[0].fixed(1, 4), 8u32.to_le_bytes());
            assert_eq!(b.columns[1].string(0), b"a\"b");
            assert!(b.columns[1].is_null(1));
            assert_eq!(
                b.columns[2].kind,
                Kind::Enum {
                    width: 1,
                    names: vec![(-2, b"it's".to_vec()), (1, b"x".to_vec())]
                }
            );
        }
    }

    #[test]
    fn types_flow_cannot_format_are_named() {
        let mut b = Vec::new();
        varint(1, &mut b);
        varint(1, &mut b);
        text("tags", &mut b);
        text("Array(String)", &mut b);
        let err = NativeReader::new().push(&b).unwrap_err();
        assert_eq!(
            err,
            NativeError::Unsupported {
                column: "tags".into(),
                data_type: "Array(String)".into()
            }
        );
        for ty in [
            "LowCardinality(String)",
            "UUID",
            "Decimal(76, 2)",
            "Map(String, UInt8)",
        ] {
            assert_eq!(Kind::parse(ty), None, "{ty}");
        }
        assert_eq!(
            Kind::parse("DateTime64(3, 'Asia/Shanghai')"),
            Some(Kind::DateTime64 {
                scale: 3,
                zone: Some("Asia/Shanghai".into())
            })
        );
        assert_eq!(
            Kind::parse("Nullable(DateTime('Asia/Tokyo'))").and_then(Kind::zone),
            Some(Some("Asia/Tokyo".to_string()))
        );
        assert_eq!(Kind::parse("DateTime").and_then(Kind::zone), Some(None));
        assert_eq!(Kind::parse("String").and_then(Kind::zone), None);
        assert_eq!(
            Kind::parse("Decimal(10, 2)"),
            Some(Kind::Decimal { width: 8, scale: 2 })
        );
    }

    #[test]
    fn a_truncated_stream_is_an_error() {
        let stream = block();
        let mut r = NativeReader::new();
        assert!(r.push(&stream[..stream.len() - 1]).unwrap().is_empty());
        assert!(r.finish().is_err());
    }

    #[test]
    fn integers_sign_extend() {
        assert_eq!(le_int(&[0xff], true), -1);
        assert_eq!(le_int(&[0xff], false), 255);
        assert_eq!(le_int(&(-5i64).to_le_bytes(), true), -5);
    }
}
