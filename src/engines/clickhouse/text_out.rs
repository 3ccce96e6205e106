//! Formatting Native blocks as CSVWithNames or TabSeparatedWithNames, byte for byte
//! as the server would have written them.
//!
//! Why: see [`super::native`] — formatting in flow takes that work off the server's
//! single output thread, as `clickhouse-client` does. The output must be the server's
//! own, so every rule here was read off ClickHouse 18.16 and a current release and is
//! checked against both in `tests/clickhouse_export.rs`:
//! - CSV quotes strings, enums, dates and times with `"` (doubled inside); numbers and
//!   booleans bare; NULL is `\N`. TSV writes everything bare, escaping `\b \f \n \r \t
//!   \0 \\ \'` in strings.
//! - Floats: the shortest digits that read back to the same value; plain notation for
//!   decimal exponents −6 ≤ e < 21, else `1.5e-7`, `1e21`; `inf`, `-inf`, `nan`, `-0`.
//! - Decimals keep the scale's trailing zeros only where the server does
//!   ([`TextProfile::decimal_trailing_zeros`]).
//! - Times are shown in the column's zone or the server's; 18.x prints the zero date as
//!   `0000-00-00`, mishandles dates near 2106 and minutes in zones offset by half
//!   hours — a value flow cannot format exactly is [`NativeError::Unsupported`], and
//!   the caller lets the server format instead.
//!
//! What the server does is not guessed: [`TextProfile`] comes from a probe query whose
//! answer must match what flow would write, or flow does not format at all.

use bytes::Bytes;

use super::checksum::Column;
use super::native::{le_int, Block, ColumnData, Kind, NativeError};

/// Which text format to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextStyle {
    /// CSVWithNames.
    Csv,
    /// TabSeparatedWithNames.
    Tsv,
}

/// How one server writes text, learned by a probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextProfile {
    /// The zone of DateTime columns without one (the server's or session's).
    pub server_zone: String,
    /// `12.50` rather than `12.5` for a Decimal(_, 2).
    pub decimal_trailing_zeros: bool,
    /// 18.x date tables: zero dates print as `0000-00-00`; dates past 2099 and times
    /// in zones not offset by whole hours are left to the server.
    pub legacy_dates: bool,
    /// The probe had a Bool and flow wrote it as the server did.
    pub booleans: bool,
}

/// The probe: one row of values whose text differs between server generations and
/// settings, asked in CSV, TSV and Native (see [`TextProfile::learn`]).
pub const PROBE_SQL: &str = "SELECT timezone() AS zone, toDate(0) AS zero_date, \
     toDecimal32(1, 2) AS decimal, toFloat64(1.5e-7) AS small, toFloat64(1e21) AS large, \
     toFloat32(0.1) AS single, -toFloat64(0) AS negative_zero, 'a\"b\\t\\'\\\\,' AS text, \
     toFixedString('x', 2) AS fixed, toDateTime(86400 * 365 + 3661) AS time, \
     CAST(NULL AS Nullable(UInt8)) AS nothing, CAST('x' AS Enum8('x' = 1)) AS choice, \
     toDecimal64(-5, 3) AS negative";
/// The probe plus a Bool, for servers that have the type.
pub fn probe_sql_with_bool() -> String {
    format!("SELECT *, CAST(1 AS Bool) AS flag FROM ({PROBE_SQL})")
}

/// The probe's answers.
pub struct ProbeAnswers<'a> {
    pub csv: &'a [u8],
    pub tsv: &'a [u8],
    pub native: &'a [u8],
}

impl TextProfile {
    /// Reads the zone and the date and decimal style off the probe's CSV answer, then
    /// formats its Native answer with them: the profile holds only if flow's CSV and
    /// TSV equal the server's byte for byte (so a changed delimiter, NULL text, line
    /// end, quoting or boolean text turns flow's formatting off).
    pub fn learn(answers: &ProbeAnswers<'_>) -> Option<TextProfile> {
        let line = std::str::from_utf8(answers.csv).ok()?;
        let mut fields = line.split(',');
        let zone = fields.next()?.strip_prefix('"')?.strip_suffix('"')?;
        let legacy_dates = match fields.next()? {
            "\"0000-00-00\"" => true,
            "\"1970-01-01\"" => false,
            _ => return None,
        };
        let decimal_trailing_zeros = match fields.next()? {
            "1.00" => true,
            "1" => false,
            _ => return None,
        };
        let blocks = super::native::NativeReader::new()
            .push(answers.native)
            .ok()?;
        let block = blocks.first()?;
        let profile = TextProfile {
            server_zone: zone.to_string(),
            decimal_trailing_zeros,
            legacy_dates,
            booleans: block.columns.iter().any(|c| c.kind == Kind::Bool),
        };
        let described: Vec<Column> = block
            .columns
            .iter()
            .map(|c| Column {
                name: c.name.clone(),
                // Only a time column's described type is read (for its zone); the
                // probe's time is in the server's zone.
                data_type: match c.value_kind() {
                    Kind::DateTime { .. } => "DateTime".into(),
                    _ => String::new(),
                },
            })
            .collect();
        for (style, expected) in [(TextStyle::Csv, answers.csv), (TextStyle::Tsv, answers.tsv)] {
            let mut writer = TextWriter::new(style, profile.clone(), described.clone());
            writer.write_block(block).ok()?;
            let text = writer.take();
            // The header line is not part of the answer (plain CSV / TSV).
            let body = &text[text.iter().position(|&b| b == b'\n')? + 1..];
            if body != expected {
                return None;
            }
        }
        Some(profile)
    }
}

/// Flush the output buffer at about this size.
pub const CHUNK: usize = 1 << 20;

/// Formats the blocks of one stream.
pub struct TextWriter {
    style: TextStyle,
    profile: TextProfile,
    /// The columns as the server describes the query (Native over HTTP names a
    /// DateTime's type without its zone; this is where the zone comes from).
    described: Vec<Column>,
    /// Per column, the first block's name and kind (every block must agree).
    columns: Vec<(String, Kind)>,
    clocks: Vec<Option<ZoneClock>>,
    days: DayCache,
    out: Vec<u8>,
    rows: u64,
}

impl TextWriter {
    pub fn new(style: TextStyle, profile: TextProfile, described: Vec<Column>) -> Self {
        TextWriter {
            style,
            profile,
            described,
            columns: Vec::new(),
            clocks: Vec::new(),
            days: DayCache::default(),
            out: Vec::with_capacity(CHUNK + (64 << 10)),
            rows: 0,
        }
    }

    /// Rows formatted so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Whether the header line has been written (a first block arrived).
    pub fn started(&self) -> bool {
        !self.columns.is_empty()
    }

    /// Formats a block's rows (and the header before the first block).
    pub fn write_block(&mut self, block: &Block) -> Result<(), NativeError> {
        if self.columns.is_empty() {
            self.start(block)?;
        } else if block.columns.len() != self.columns.len()
            || block
                .columns
                .iter()
                .zip(&self.columns)
                .any(|(c, (name, kind))| &c.name != name || &c.kind != kind)
        {
            return Err(NativeError::Malformed(
                "a block's columns differ from the first block's".into(),
            ));
        }
        let sep = self.separator();
        for row in 0..block.rows {
            for (i, column) in block.columns.iter().enumerate() {
                if i > 0 {
                    self.out.push(sep);
                }
                self.value(column, i, row)?;
            }
            self.out.push(b'\n');
        }
        self.rows += block.rows as u64;
        Ok(())
    }

    /// The formatted bytes when at least a chunk's worth is ready.
    pub fn take_chunk(&mut self) -> Option<Bytes> {
        (self.out.len() >= CHUNK).then(|| self.take())
    }

    /// Everything formatted and not yet taken.
    pub fn take(&mut self) -> Bytes {
        let next = Vec::with_capacity(CHUNK + (64 << 10));
        Bytes::from(std::mem::replace(&mut self.out, next))
    }

    fn separator(&self) -> u8 {
        match self.style {
            TextStyle::Csv => b',',
            TextStyle::Tsv => b'\t',
        }
    }

    fn start(&mut self, block: &Block) -> Result<(), NativeError> {
        if block.columns.len() != self.described.len() {
            return Err(NativeError::Unsupported {
                column: "(all)".into(),
                data_type: format!(
                    "{} columns where the query was described with {}",
                    block.columns.len(),
                    self.described.len()
                ),
            });
        }
        for (i, column) in block.columns.iter().enumerate() {
            let described = self.described[i].clone();
            if described.name != column.name {
                return Err(unsupported(column));
            }
            if i > 0 {
                self.out.push(self.separator());
            }
            self.string(column.name.as_bytes());
            let clock = match column.value_kind() {
                Kind::DateTime { .. } | Kind::DateTime64 { .. } => {
                    // The described type carries the zone the Native header lost.
                    let unknown_zone = || NativeError::Unsupported {
                        column: column.name.clone(),
                        data_type: format!("{} (a zone flow cannot load)", described.data_type),
                    };
                    let zone = Kind::parse(&described.data_type)
                        .and_then(|k| k.zone())
                        .ok_or_else(unknown_zone)?;
                    let name = zone.as_deref().unwrap_or(&self.profile.server_zone);
                    Some(ZoneClock::new(name).ok_or_else(unknown_zone)?)
                }
                _ => None,
            };
            self.clocks.push(clock);
            self.columns
                .push((column.name.clone(), column.kind.clone()));
        }
        self.out.push(b'\n');
        Ok(())
    }

    fn value(&mut self, column: &ColumnData, index: usize, row: usize) -> Result<(), NativeError> {
        if column.is_null(row) {
            put(&mut self.out, b"\\N");
            return Ok(());
        }
        let quote = self.style == TextStyle::Csv;
        match column.value_kind() {
            Kind::Int { width, signed } => {
                let bytes = column.fixed(row, *width);
                let mut buf = itoa::Buffer::new();
                let text = match (width, signed) {
                    (8, false) => buf.format(u64::from_le_bytes(bytes.try_into().expect("8"))),
                    (8, true) => buf.format(i64::from_le_bytes(bytes.try_into().expect("8"))),
                    _ => buf.format(le_int(bytes, *signed) as i64),
                };
                put(&mut self.out, text.as_bytes());
            }
            Kind::Float32 => {
                let v = f32::from_le_bytes(column.fixed(row, 4).try_into().expect("4"));
                write_float(&mut self.out, v.is_sign_negative(), v.classify(), |b| {
                    b.format_finite(v)
                });
            }
            Kind::Float64 => {
                let v = f64::from_le_bytes(column.fixed(row, 8).try_into().expect("8"));
                write_float(&mut self.out, v.is_sign_negative(), v.classify(), |b| {
                    b.format_finite(v)
                });
            }
            Kind::Bool if !self.profile.booleans => return Err(unsupported(column)),
            Kind::Bool => {
                let v = column.fixed(row, 1)[0] != 0;
                put(&mut self.out, if v { b"true" } else { b"false" });
            }
            Kind::Decimal { width, scale } => {
                let v = le_int(column.fixed(row, *width), true);
                write_decimal(
                    &mut self.out,
                    v,
                    *scale,
                    self.profile.decimal_trailing_zeros,
                );
            }
            Kind::Date => {
                let days = u16::from_le_bytes(column.fixed(row, 2).try_into().expect("2"));
                self.open(quote);
                if self.profile.legacy_dates && days == 0 {
                    put(&mut self.out, b"0000-00-00");
                } else if self.profile.legacy_dates && days > LEGACY_LAST_DAY {
                    return Err(unsupported_value(column, "a date after 2099"));
                } else {
                    self.days.write(&mut self.out, i64::from(days));
                }
                self.open(quote);
            }
            Kind::Date32 => {
                let days = i32::from_le_bytes(column.fixed(row, 4).try_into().expect("4"));
                if !(FIRST_DAY_1900..=LAST_DAY_2299).contains(&i64::from(days)) {
                    return Err(unsupported_value(column, "a date outside 1900–2299"));
                }
                self.open(quote);
                self.days.write(&mut self.out, i64::from(days));
                self.open(quote);
            }
            Kind::DateTime { .. } => {
                let secs = u32::from_le_bytes(column.fixed(row, 4).try_into().expect("4"));
                self.open(quote);
                if self.profile.legacy_dates && secs == 0 {
                    put(&mut self.out, b"0000-00-00 00:00:00");
                } else if self.profile.legacy_dates && i64::from(secs) >= LEGACY_END_SECS {
                    return Err(unsupported_value(column, "a time after 2099"));
                } else {
                    let clock = self.clocks[index].as_mut().expect("clock for DateTime");
                    let offset = clock.offset(i64::from(secs));
                    if self.profile.legacy_dates && offset % 3600 != 0 {
                        return Err(unsupported_value(
                            column,
                            "a time in a zone whose offset is not whole hours",
                        ));
                    }
                    self.days
                        .write_time(&mut self.out, i64::from(secs) + offset);
                }
                self.open(quote);
            }
            Kind::DateTime64 { scale, .. } => {
                let ticks = i64::from_le_bytes(column.fixed(row, 8).try_into().expect("8"));
                let unit = 10i64.pow(*scale);
                let (secs, frac) = (ticks.div_euclid(unit), ticks.rem_euclid(unit));
                if !(FIRST_DAY_1900 * 86_400..(LAST_DAY_2299 + 1) * 86_400).contains(&secs) {
                    // The server clamps those its own way.
                    return Err(unsupported_value(column, "a time outside 1900–2299"));
                }
                let clock = self.clocks[index].as_mut().expect("clock for DateTime64");
                let local = secs + clock.offset(secs);
                self.open(quote);
                self.days.write_time(&mut self.out, local);
                if *scale > 0 {
                    self.out.push(b'.');
                    pad(&mut self.out, frac as u64, *scale as usize);
                }
                self.open(quote);
            }
            Kind::String => self.string(column.string(row)),
            Kind::FixedString(n) => self.string(column.fixed(row, *n)),
            Kind::Enum { width, names } => {
                let v = le_int(column.fixed(row, *width), true) as i16;
                let name = names
                    .binary_search_by_key(&v, |(value, _)| *value)
                    .map(|i| names[i].1.as_slice())
                    .map_err(|_| {
                        NativeError::Malformed(format!(
                            "column `{}` holds {v}, which its enum does not name",
                            column.name
                        ))
                    })?;
                self.string(name);
            }
            Kind::Nullable(_) => unreachable!("value_kind unwraps Nullable"),
        }
        Ok(())
    }

    fn open(&mut self, quote: bool) {
        if quote {
            self.out.push(b'"');
        }
    }

    fn string(&mut self, s: &[u8]) {
        match self.style {
            TextStyle::Csv => {
                self.out.push(b'"');
                let mut rest = s;
                while let Some(i) = rest.iter().position(|&b| b == b'"') {
                    put(&mut self.out, &rest[..=i]);
                    self.out.push(b'"');
                    rest = &rest[i + 1..];
                }
                put(&mut self.out, rest);
                self.out.push(b'"');
            }
            TextStyle::Tsv => {
                let mut rest = s;
                while let Some(i) = rest.iter().position(|&b| tsv_escape(b).is_some()) {
                    put(&mut self.out, &rest[..i]);
                    self.out.push(b'\\');
                    self.out.push(tsv_escape(rest[i]).expect("found above"));
                    rest = &rest[i + 1..];
                }
                put(&mut self.out, rest);
            }
        }
    }
}

/// The escape letter of a byte TSV escapes.
#[inline]
fn tsv_escape(b: u8) -> Option<u8> {
    match b {
        b'\\' => Some(b'\\'),
        b'\'' => Some(b'\''),
        b'\n' => Some(b'n'),
        b'\t' => Some(b't'),
        b'\r' => Some(b'r'),
        0 => Some(b'0'),
        8 => Some(b'b'),
        12 => Some(b'f'),
        _ => None,
    }
}

fn unsupported(column: &ColumnData) -> NativeError {
    NativeError::Unsupported {
        column: column.name.clone(),
        data_type: column.data_type.clone(),
    }
}

fn unsupported_value(column: &ColumnData, what: &str) -> NativeError {
    NativeError::Unsupported {
        column: column.name.clone(),
        data_type: format!(
            "{} holding {what} (old servers print those their own way)",
            column.data_type
        ),
    }
}

/// The range of Date32 and DateTime64 (1900-01-01 to 2299-12-31), in days.
const FIRST_DAY_1900: i64 = -25_567;
const LAST_DAY_2299: i64 = 120_529;
/// 2099-12-31: the last day flow formats for an 18.x server.
const LEGACY_LAST_DAY: u16 = 47_481;
/// 2100-01-01 00:00:00 UTC.
const LEGACY_END_SECS: i64 = 4_102_444_800;

/// A zone's offset, remembering the interval between two transitions it last found.
struct ZoneClock {
    zone: jiff::tz::TimeZone,
    /// Offset in seconds, valid for timestamps in start..end.
    cached: Option<(i64, i64, i64)>,
}

impl ZoneClock {
    fn new(name: &str) -> Option<ZoneClock> {
        let zone = match name {
            "UTC" | "Etc/UTC" | "Etc/UCT" | "UCT" | "Universal" | "Zulu" => jiff::tz::TimeZone::UTC,
            other => jiff::tz::TimeZone::get(other).ok()?,
        };
        Some(ZoneClock { zone, cached: None })
    }

    #[inline]
    fn offset(&mut self, secs: i64) -> i64 {
        if let Some((start, end, offset)) = self.cached {
            if start <= secs && secs < end {
                return offset;
            }
        }
        self.lookup(secs)
    }

    fn lookup(&mut self, secs: i64) -> i64 {
        let Ok(at) = jiff::Timestamp::from_second(secs) else {
            return 0;
        };
        let offset = i64::from(self.zone.to_offset(at).seconds());
        let start = self
            .zone
            .preceding(
                at.checked_add(jiff::SignedDuration::from_secs(1))
                    .unwrap_or(at),
            )
            .next()
            .map_or(i64::MIN, |t| t.timestamp().as_second());
        let end = self
            .zone
            .following(at)
            .next()
            .map_or(i64::MAX, |t| t.timestamp().as_second());
        self.cached = Some((start, end, offset));
        offset
    }
}

/// Civil date of a day number (days since 1970-01-01), proleptic Gregorian.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DD` of the last day written: rows of a partition share few days, and
/// finding a civil date takes divisions.
#[derive(Default)]
struct DayCache {
    day: Option<i64>,
    text: [u8; 10],
}

impl DayCache {
    /// Writes the date of a day number (years 1000–9999, which every date type's
    /// range flow formats stays within).
    #[inline]
    fn write(&mut self, out: &mut Vec<u8>, days: i64) {
        if self.day != Some(days) {
            let (y, m, d) = civil(days);
            let y = y as usize;
            self.text[..2].copy_from_slice(&DIGITS2[y / 100 % 100]);
            self.text[2..4].copy_from_slice(&DIGITS2[y % 100]);
            self.text[4] = b'-';
            self.text[5..7].copy_from_slice(&DIGITS2[m as usize]);
            self.text[7] = b'-';
            self.text[8..10].copy_from_slice(&DIGITS2[d as usize]);
            self.day = Some(days);
        }
        put(out, &self.text);
    }

    /// `YYYY-MM-DD hh:mm:ss` of local seconds since the epoch.
    #[inline]
    fn write_time(&mut self, out: &mut Vec<u8>, local_secs: i64) {
        self.write(out, local_secs.div_euclid(86_400));
        let s = local_secs.rem_euclid(86_400) as usize;
        let text = [
            b' ',
            DIGITS2[s / 3600][0],
            DIGITS2[s / 3600][1],
            b':',
            DIGITS2[s / 60 % 60][0],
            DIGITS2[s / 60 % 60][1],
            b':',
            DIGITS2[s % 60][0],
            DIGITS2[s % 60][1],
        ];
        put(out, &text);
    }
}

/// Appends `s`: short values (most of a row's) without a call to `memcpy`, whose
/// call costs more than copying a few bytes.
#[inline(always)]
fn put(out: &mut Vec<u8>, s: &[u8]) {
    let n = s.len();
    if n > 16 {
        out.extend_from_slice(s);
        return;
    }
    out.reserve(16);
    let len = out.len();
    // SAFETY: `reserve(16)` leaves at least 16 writable bytes after `len`, and every
    // write below stays within `dst[..n]` with n ≤ 16; reads stay within `s`.
    unsafe {
        let src = s.as_ptr();
        let dst = out.as_mut_ptr().add(len);
        if n >= 8 {
            // Two 8-byte moves that overlap when n < 16.
            let head = std::ptr::read_unaligned(src as *const u64);
            let tail = std::ptr::read_unaligned(src.add(n - 8) as *const u64);
            std::ptr::write_unaligned(dst as *mut u64, head);
            std::ptr::write_unaligned(dst.add(n - 8) as *mut u64, tail);
        } else if n >= 4 {
            let head = std::ptr::read_unaligned(src as *const u32);
            let tail = std::ptr::read_unaligned(src.add(n - 4) as *const u32);
            std::ptr::write_unaligned(dst as *mut u32, head);
            std::ptr::write_unaligned(dst.add(n - 4) as *mut u32, tail);
        } else if n > 0 {
            *dst = *src;
            *dst.add(n / 2) = *src.add(n / 2);
            *dst.add(n - 1) = *src.add(n - 1);
        }
        out.set_len(len + n);
    }
}

/// "00" to "99".
const DIGITS2: [[u8; 2]; 100] = {
    let mut t = [[0u8; 2]; 100];
    let mut i = 0;
    while i < 100 {
        t[i] = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
        i += 1;
    }
    t
};

/// `v` in decimal, left-padded with zeros to `width` digits.
#[inline]
fn pad(out: &mut Vec<u8>, v: u64, width: usize) {
    let mut buf = itoa::Buffer::new();
    let text = buf.format(v);
    for _ in text.len()..width {
        out.push(b'0');
    }
    put(out, text.as_bytes());
}

fn write_decimal(out: &mut Vec<u8>, v: i128, scale: u32, trailing_zeros: bool) {
    if v < 0 {
        out.push(b'-');
    }
    let magnitude = v.unsigned_abs();
    let mut buf = itoa::Buffer::new();
    if let (Ok(small), true) = (u64::try_from(magnitude), scale < 20) {
        // Decimal32/64: 64-bit arithmetic (128-bit division is a library call).
        let unit = 10u64.pow(scale);
        put(out, buf.format(small / unit).as_bytes());
        return write_fraction(out, u128::from(small % unit), scale, trailing_zeros);
    }
    let unit = 10u128.pow(scale);
    put(out, buf.format(magnitude / unit).as_bytes());
    write_fraction(out, magnitude % unit, scale, trailing_zeros);
}

/// `.ddd` of a decimal's fraction (nothing for scale 0, or a zero fraction shown
/// without trailing zeros).
fn write_fraction(out: &mut Vec<u8>, frac: u128, scale: u32, trailing_zeros: bool) {
    if scale == 0 || (!trailing_zeros && frac == 0) {
        return;
    }
    let mut digits = scale as usize;
    let mut buf = itoa::Buffer::new();
    let text = if let Ok(mut frac) = u64::try_from(frac) {
        while !trailing_zeros && frac.is_multiple_of(10) {
            frac /= 10;
            digits -= 1;
        }
        buf.format(frac)
    } else {
        let mut frac = frac;
        while !trailing_zeros && frac.is_multiple_of(10) {
            frac /= 10;
            digits -= 1;
        }
        buf.format(frac)
    };
    out.push(b'.');
    out.extend(std::iter::repeat_n(b'0', digits - text.len()));
    put(out, text.as_bytes());
}

/// Writes a float the server's way; `shortest` gives ryu's text of a finite value.
#[inline]
fn write_float(
    out: &mut Vec<u8>,
    negative: bool,
    class: std::num::FpCategory,
    shortest: impl FnOnce(&mut ryu::Buffer) -> &str,
) {
    use std::num::FpCategory;
    match class {
        FpCategory::Nan => return put(out, b"nan"),
        FpCategory::Infinite => return put(out, if negative { b"-inf" } else { b"inf" }),
        FpCategory::Zero => return put(out, if negative { b"-0" } else { b"0" }),
        FpCategory::Normal | FpCategory::Subnormal => {}
    }
    let mut buf = ryu::Buffer::new();
    let text = shortest(&mut buf).as_bytes();
    // ryu writes `[-]d.ddd`, `[-]ddd.0` or `[-]d.ddde[-]x`: take digits and exponent.
    let (mantissa, exp) = match text.iter().position(|&b| b == b'e') {
        Some(i) => (
            &text[..i],
            std::str::from_utf8(&text[i + 1..])
                .ok()
                .and_then(|e| e.parse::<i32>().ok())
                .unwrap_or(0),
        ),
        None => (text, 0),
    };
    let mantissa = mantissa.strip_prefix(b"-").unwrap_or(mantissa);
    let point = mantissa
        .iter()
        .position(|&b| b == b'.')
        .unwrap_or(mantissa.len());
    let mut digits = [0u8; 40];
    let mut n = 0;
    for &b in mantissa.iter().filter(|b| b.is_ascii_digit()) {
        digits[n] = b;
        n += 1;
    }
    // value = 0.<digits> × 10^decimal_point, with leading and trailing zeros trimmed.
    let mut decimal_point = point as i32 + exp;
    let lead = digits[..n].iter().take_while(|&&b| b == b'0').count();
    decimal_point -= lead as i32;
    let digits = &digits[lead..n];
    let digits = &digits[..digits.len() - digits.iter().rev().take_while(|&&b| b == b'0').count()];
    if negative {
        out.push(b'-');
    }
    let exponent = decimal_point - 1;
    if (-6..21).contains(&exponent) {
        if decimal_point <= 0 {
            put(out, b"0.");
            out.extend(std::iter::repeat_n(b'0', (-decimal_point) as usize));
            put(out, digits);
        } else if decimal_point as usize >= digits.len() {
            put(out, digits);
            out.extend(std::iter::repeat_n(
                b'0',
                decimal_point as usize - digits.len(),
            ));
        } else {
            let (int, frac) = digits.split_at(decimal_point as usize);
            put(out, int);
            out.push(b'.');
            put(out, frac);
        }
    } else {
        out.push(digits[0]);
        if digits.len() > 1 {
            out.push(b'.');
            put(out, &digits[1..]);
        }
        out.push(b'e');
        let mut buf = itoa::Buffer::new();
        put(out, buf.format(exponent).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float(v: f64) -> String {
        let mut out = Vec::new();
        write_float(&mut out, v.is_sign_negative(), v.classify(), |b| {
            b.format_finite(v)
        });
        String::from_utf8(out).unwrap()
    }

    fn float32(v: f32) -> String {
        let mut out = Vec::new();
        write_float(&mut out, v.is_sign_negative(), v.classify(), |b| {
            b.format_finite(v)
        });
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn floats_read_off_the_server() {
        // Each pair was printed by ClickHouse 18.16 and 26 alike.
        for (v, text) in [
            (1e21, "1e21"),
            (1e20, "100000000000000000000"),
            (123456789012345678901.0, "123456789012345680000"),
            (1e22, "1e22"),
            (1e-6, "0.000001"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (0.1, "0.1"),
            (-0.0, "-0"),
            (1.0, "1"),
            (100.0, "100"),
            (1e17, "100000000000000000"),
            (1.7976931348623157e308, "1.7976931348623157e308"),
            (12345.678, "12345.678"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
            (0.000123, "0.000123"),
            (1e-5, "0.00001"),
            (-1.5e300, "-1.5e300"),
            (33333333.3333333, "33333333.3333333"),
            (5e-324, "5e-324"),
        ] {
            assert_eq!(float(v), text, "{v:e}");
        }
        assert_eq!(float32(33333333.3333333), "33333334");
        assert_eq!(float32(1.234_567_9e20), "123456790000000000000");
        assert_eq!(float32(0.1), "0.1");
    }

    #[test]
    fn short_and_long_appends_copy_exactly() {
        let source: Vec<u8> = (0..40u8).collect();
        for n in 0..=40 {
            let mut out = b"ab".to_vec();
            put(&mut out, &source[..n]);
            assert_eq!(&out[..2], b"ab");
            assert_eq!(&out[2..], &source[..n], "{n} bytes");
        }
    }

    #[test]
    fn decimals_with_and_without_trailing_zeros() {
        let d = |v, scale, zeros| {
            let mut out = Vec::new();
            write_decimal(&mut out, v, scale, zeros);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(d(1250, 2, true), "12.50");
        assert_eq!(d(1250, 2, false), "12.5");
        assert_eq!(d(-50, 3, true), "-0.050");
        assert_eq!(d(-50, 3, false), "-0.05");
        assert_eq!(d(0, 4, true), "0.0000");
        assert_eq!(d(0, 4, false), "0");
        assert_eq!(d(30, 1, false), "3");
        assert_eq!(d(123, 0, true), "123");
        assert_eq!(d(-1_234_500_000_000, 10, false), "-123.45");
    }

    #[test]
    fn dates_and_zones() {
        let mut out = Vec::new();
        let mut days = DayCache::default();
        days.write(&mut out, 18_321);
        assert_eq!(out, b"2020-02-29");
        out.clear();
        days.write(&mut out, -25_567);
        assert_eq!(out, b"1900-01-01");
        out.clear();
        days.write_time(&mut out, 4_294_967_295);
        assert_eq!(out, b"2106-02-07 06:28:15");
        out.clear();
        days.write_time(&mut out, 4_294_967_295 - (6 * 3600 + 28 * 60 + 15));
        assert_eq!(out, b"2106-02-07 00:00:00");
        let mut shanghai = ZoneClock::new("Asia/Shanghai").unwrap();
        assert_eq!(shanghai.offset(1_577_836_800), 8 * 3600);
        let mut london = ZoneClock::new("Europe/London").unwrap();
        // 2020-03-29 01:00 UTC: summer time starts; just before and at it.
        assert_eq!(london.offset(1_585_443_599), 0);
        assert_eq!(london.offset(1_585_443_600), 3600);
        assert_eq!(london.offset(1_585_443_599), 0);
        assert!(ZoneClock::new("Not/AZone").is_none());
    }

    #[test]
    fn probes_are_refused_when_the_header_fields_are_unknown() {
        let answers = |csv: &'static [u8]| ProbeAnswers {
            csv,
            tsv: b"",
            native: b"",
        };
        assert_eq!(
            TextProfile::learn(&answers(b"\"UTC\";\"1970-01-01\";1\n")),
            None
        );
        assert_eq!(
            TextProfile::learn(&answers(b"\"UTC\",\"1970-01-01\",1.0\n")),
            None
        );
    }
}
