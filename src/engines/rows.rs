//! Counting rows in an export stream, as the bytes pass.
//!
//! The count is what an export claims to have written, checked against the source's
//! `count()`. It must be exact for the format:
//! - CSV: a record ends at a newline outside double quotes (strings may contain
//!   newlines; `""` inside quotes toggles twice and so needs no special case);
//!   minus the header line of CSVWithNames;
//! - TSV and JSONEachRow: one row per line (newlines inside values are escaped);
//!   minus the header line of TSVWithNames;
//! - Parquet: `num_rows` from the file footer (FileMetaData, thrift compact protocol);
//! - Native: not counted from bytes (it would need a decoder for every type); the
//!   verify step relies on the server's count and the completed stream.
//!
//! The tracker also keeps the last bytes of the stream, where ClickHouse writes an
//! exception that happens after the response has started.

use crate::plan::ExportFormat;

/// Bytes kept for exception detection.
const TAIL: usize = 4096;
/// Bytes kept for a Parquet footer.
const PARQUET_TAIL: usize = 8 << 20;

/// Counts rows and hashes bytes of one export stream.
pub struct StreamTracker {
    format: ExportFormat,
    newlines: u64,
    in_quotes: bool,
    last_byte: Option<u8>,
    bytes: u64,
    hasher: blake3::Hasher,
    /// The last chunks (shared, not copied), at least `tail_keep` bytes when available.
    tail: std::collections::VecDeque<bytes::Bytes>,
    tail_len: usize,
    tail_keep: usize,
}

/// What a finished stream contained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSummary {
    /// Data rows, when the format lets them be counted from bytes.
    pub rows: Option<u64>,
    pub bytes: u64,
    /// blake3 of the bytes, hex.
    pub blake3: String,
}

impl StreamTracker {
    pub fn new(format: ExportFormat) -> Self {
        StreamTracker {
            format,
            newlines: 0,
            in_quotes: false,
            last_byte: None,
            bytes: 0,
            hasher: blake3::Hasher::new(),
            tail: std::collections::VecDeque::new(),
            tail_len: 0,
            tail_keep: if format == ExportFormat::Parquet {
                PARQUET_TAIL
            } else {
                TAIL
            },
        }
    }

    pub fn feed(&mut self, chunk: &bytes::Bytes) {
        let data: &[u8] = chunk;
        if data.is_empty() {
            return;
        }
        self.bytes += data.len() as u64;
        self.hasher.update(data);
        match self.format {
            ExportFormat::Csv => {
                let (newlines, in_quotes) = csv_records(data, self.in_quotes);
                self.in_quotes = in_quotes;
                self.newlines += newlines;
            }
            ExportFormat::Tsv | ExportFormat::JsonEachRow => {
                self.newlines += count_newlines(data);
            }
            ExportFormat::Native | ExportFormat::Parquet => {}
        }
        self.last_byte = data.last().copied();
        self.tail.push_back(chunk.clone());
        self.tail_len += data.len();
        while let Some(front) = self.tail.front() {
            if self.tail_len - front.len() >= self.tail_keep {
                self.tail_len -= front.len();
                self.tail.pop_front();
            } else {
                break;
            }
        }
    }

    /// The last `n` bytes seen (or fewer), copied out.
    fn last_bytes(&self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n.min(self.tail_len));
        let skip = self.tail_len.saturating_sub(n);
        let mut seen = 0;
        for chunk in &self.tail {
            let end = seen + chunk.len();
            if end > skip {
                out.extend_from_slice(&chunk[skip.saturating_sub(seen)..]);
            }
            seen = end;
        }
        out
    }

    /// The last bytes seen (for exception detection).
    pub fn tail(&self) -> Vec<u8> {
        self.last_bytes(TAIL)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn finish(self) -> StreamSummary {
        let records = || {
            let unterminated = self.last_byte.is_some_and(|b| b != b'\n') as u64;
            self.newlines + unterminated
        };
        let rows = match self.format {
            ExportFormat::Csv | ExportFormat::Tsv => Some(records().saturating_sub(1)),
            ExportFormat::JsonEachRow => Some(records()),
            ExportFormat::Parquet => parquet_rows(&self.last_bytes(PARQUET_TAIL)),
            ExportFormat::Native => None,
        };
        StreamSummary {
            rows,
            bytes: self.bytes,
            blake3: self.hasher.finalize().to_hex().to_string(),
        }
    }
}

/// Newlines outside double quotes in `data`, and whether `data` ends inside quotes.
///
/// 64 bytes at a time: bit masks of quotes and newlines, then the "inside quotes" mask
/// is the prefix-xor of the quote mask (a newline is inside quotes when an odd number
/// of quotes precedes it), flipped when the previous block ended inside quotes. The
/// masks come from SSE2 compares on x86_64 and a plain loop elsewhere; this keeps row
/// counting far below the cost of receiving the bytes.
pub fn csv_records(data: &[u8], mut in_quotes: bool) -> (u64, bool) {
    let mut newlines = 0u64;
    let mut blocks = data.chunks_exact(64);
    for block in blocks.by_ref() {
        let block: &[u8; 64] = block.try_into().expect("chunks_exact yields 64 bytes");
        let (quotes, lines) = masks(block);
        let mut inside = prefix_xor(quotes);
        if in_quotes {
            inside = !inside;
        }
        newlines += u64::from((lines & !inside).count_ones());
        in_quotes ^= quotes.count_ones() & 1 == 1;
    }
    for &b in blocks.remainder() {
        in_quotes ^= b == b'"';
        newlines += u64::from(b == b'\n' && !in_quotes);
    }
    (newlines, in_quotes)
}

/// Newlines in `data` (TSV, JSONEachRow: one row per line).
pub fn count_newlines(data: &[u8]) -> u64 {
    let mut blocks = data.chunks_exact(64);
    let mut n = 0u64;
    for block in blocks.by_ref() {
        let block: &[u8; 64] = block.try_into().expect("chunks_exact yields 64 bytes");
        n += u64::from(masks(block).1.count_ones());
    }
    n + blocks.remainder().iter().filter(|&&b| b == b'\n').count() as u64
}

fn prefix_xor(mut m: u64) -> u64 {
    m ^= m << 1;
    m ^= m << 2;
    m ^= m << 4;
    m ^= m << 8;
    m ^= m << 16;
    m ^= m << 32;
    m
}

#[cfg(target_arch = "x86_64")]
fn masks(block: &[u8; 64]) -> (u64, u64) {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of the x86_64 baseline; loads are unaligned and stay
    // inside the 64-byte block.
    unsafe {
        let quote = _mm_set1_epi8(b'"' as i8);
        let newline = _mm_set1_epi8(b'\n' as i8);
        let mut q = 0u64;
        let mut n = 0u64;
        for i in 0..4 {
            let v = _mm_loadu_si128(block.as_ptr().add(i * 16) as *const __m128i);
            q |= (_mm_movemask_epi8(_mm_cmpeq_epi8(v, quote)) as u16 as u64) << (i * 16);
            n |= (_mm_movemask_epi8(_mm_cmpeq_epi8(v, newline)) as u16 as u64) << (i * 16);
        }
        (q, n)
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn masks(block: &[u8; 64]) -> (u64, u64) {
    let mut q = 0u64;
    let mut n = 0u64;
    for (i, &b) in block.iter().enumerate() {
        q |= u64::from(b == b'"') << i;
        n |= u64::from(b == b'\n') << i;
    }
    (q, n)
}

/// `num_rows` of a Parquet file from its last bytes; None when the footer is not
/// complete in `tail` or cannot be read.
pub fn parquet_rows(tail: &[u8]) -> Option<u64> {
    let n = tail.len();
    if n < 12 || &tail[n - 4..] != b"PAR1" {
        return None;
    }
    let len = u32::from_le_bytes(tail[n - 8..n - 4].try_into().ok()?) as usize;
    let start = n.checked_sub(8 + len)?;
    let mut r = Compact {
        data: &tail[start..n - 8],
        pos: 0,
    };
    let mut field = 0i16;
    loop {
        let header = r.byte()?;
        if header == 0 {
            return None; // end of struct without num_rows
        }
        let ty = header & 0x0f;
        let delta = (header >> 4) as i16;
        field = if delta == 0 {
            r.zigzag()? as i16
        } else {
            field + delta
        };
        if field == 3 && ty == 6 {
            let rows = r.zigzag()?;
            return u64::try_from(rows).ok();
        }
        r.skip(ty, 0)?;
    }
}

/// A minimal thrift compact-protocol reader: enough to skip fields.
struct Compact<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Compact<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.data.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(out);
            }
        }
        None
    }

    fn zigzag(&mut self) -> Option<i64> {
        let v = self.varint()?;
        Some((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn skip(&mut self, ty: u8, depth: usize) -> Option<()> {
        if depth > 32 {
            return None;
        }
        match ty {
            1 | 2 => {}
            3 => {
                self.byte()?;
            }
            4..=6 => {
                self.varint()?;
            }
            7 => self.pos = self.pos.checked_add(8).filter(|&p| p <= self.data.len())?,
            8 => {
                let len = self.varint()? as usize;
                self.pos = self
                    .pos
                    .checked_add(len)
                    .filter(|&p| p <= self.data.len())?;
            }
            9 | 10 => {
                let h = self.byte()?;
                let size = if h >> 4 == 15 {
                    self.varint()? as usize
                } else {
                    (h >> 4) as usize
                };
                let elem = h & 0x0f;
                for _ in 0..size {
                    // Booleans in lists are one byte each.
                    if elem == 1 || elem == 2 {
                        self.byte()?;
                    } else {
                        self.skip(elem, depth + 1)?;
                    }
                }
            }
            11 => {
                let size = self.varint()? as usize;
                if size > 0 {
                    let kv = self.byte()?;
                    for _ in 0..size {
                        self.skip(kv >> 4, depth + 1)?;
                        self.skip(kv & 0x0f, depth + 1)?;
                    }
                }
            }
            12 => loop {
                let h = self.byte()?;
                if h == 0 {
                    break;
                }
                if h >> 4 == 0 {
                    self.zigzag()?;
                }
                self.skip(h & 0x0f, depth + 1)?;
            },
            _ => return None,
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(format: ExportFormat, chunks: &[&[u8]]) -> Option<u64> {
        let mut t = StreamTracker::new(format);
        for c in chunks {
            t.feed(&bytes::Bytes::copy_from_slice(c));
        }
        t.finish().rows
    }

    #[test]
    fn csv_newlines_inside_quotes_are_not_records() {
        let data: &[&[u8]] = &[
            b"\"a\",\"b\"\n1,\"x\ny\"\n2,\"he said \"",
            b"\"hi\"\", \nok\"\n3,\\N\n",
        ];
        assert_eq!(count(ExportFormat::Csv, data), Some(3));
        assert_eq!(count(ExportFormat::Csv, &[b"\"a\"\n"]), Some(0));
        assert_eq!(count(ExportFormat::Csv, &[]), Some(0));
    }

    #[test]
    fn block_counter_agrees_with_a_byte_by_byte_count() {
        fn slow(data: &[u8], mut q: bool) -> (u64, bool) {
            let mut n = 0;
            for &b in data {
                q ^= b == b'"';
                n += u64::from(b == b'\n' && !q);
            }
            (n, q)
        }
        let alphabet = b"ab\",\n\"\n,x";
        for seed in 0..200u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let len = rng.usize(0..400);
            let data: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            for start in [false, true] {
                assert_eq!(csv_records(&data, start), slow(&data, start), "seed {seed}");
                // Split at a random point: the state carries over.
                let cut = rng.usize(0..=len);
                let (a, q) = csv_records(&data[..cut], start);
                let (b, q) = csv_records(&data[cut..], q);
                assert_eq!((a + b, q), slow(&data, start), "seed {seed} cut {cut}");
            }
        }
    }

    #[test]
    fn tsv_and_json_count_lines() {
        assert_eq!(
            count(ExportFormat::Tsv, &[b"a\tb\n1\tx\\ny\n2\tz\n"]),
            Some(2)
        );
        assert_eq!(
            count(
                ExportFormat::JsonEachRow,
                &[b"{\"a\":1}\n{\"a\":\"\\n\"}\n"]
            ),
            Some(2)
        );
        assert_eq!(count(ExportFormat::Native, &[b"xx"]), None);
    }

    #[test]
    fn parquet_footer_num_rows() {
        // FileMetaData { 1: version=1 (i32), 2: schema=[] (list<struct>), 3: num_rows=1000 (i64) }
        let mut meta = vec![0x15, 0x02, 0x19, 0x0c, 0x16];
        let mut v = 2000u64; // zigzag(1000)
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                meta.push(b);
                break;
            }
            meta.push(b | 0x80);
        }
        meta.push(0);
        let mut file = b"PAR1data".to_vec();
        file.extend_from_slice(&meta);
        file.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        file.extend_from_slice(b"PAR1");
        assert_eq!(parquet_rows(&file), Some(1000));
        assert_eq!(parquet_rows(b"PAR1garbage"), None);
    }
}
