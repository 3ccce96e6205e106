//! ClickHouse's own compressed framing of HTTP responses (`compress=1`).
//!
//! Why: ClickHouse up to the 20s writes HTTP responses through 4 KiB chunks; an
//! uncompressed 1 GB export is a quarter million chunks, and receiving them costs
//! more CPU than formatting them. With `compress=1` the server sends LZ4 blocks of up
//! to 1 MiB of data, three to five times fewer bytes and chunks, on every version
//! (18.16 included). Each block: 16-byte CityHash128 checksum, method byte (0x82 LZ4,
//! 0x02 none), compressed size (u32 LE, including the 9-byte header), decompressed
//! size (u32 LE), payload. The checksum is verified; a block that does not parse is
//! either an exception the server wrote after the data began (returned as text) or
//! corruption (an error).

use bytes::{Buf, Bytes, BytesMut};

const CHECKSUM: usize = 16;
const HEADER: usize = 9;
/// Largest block accepted (the server's default is 1 MiB; be generous).
const MAX_BLOCK: usize = 256 << 20;

/// What went wrong while decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// Text where a block should start: the server's late exception.
    #[error("{0}")]
    Exception(String),
    #[error("corrupt compressed response: {0}")]
    Corrupt(String),
}

/// Incremental decoder: push network chunks, get decompressed data.
#[derive(Default)]
pub struct BlockDecoder {
    buffer: BytesMut,
}

impl BlockDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes; returns every block completed by them.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Bytes>, BlockError> {
        self.buffer.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(block) = self.next_block()? {
            out.push(block);
        }
        Ok(out)
    }

    /// Call at the end of the stream: leftover bytes are an exception or truncation.
    pub fn finish(self) -> Result<(), BlockError> {
        if self.buffer.is_empty() {
            Ok(())
        } else if looks_like_text(&self.buffer) {
            Err(BlockError::Exception(
                String::from_utf8_lossy(&self.buffer).trim().to_string(),
            ))
        } else {
            Err(BlockError::Corrupt(format!(
                "the response ends inside a block ({} bytes left over)",
                self.buffer.len()
            )))
        }
    }

    fn next_block(&mut self) -> Result<Option<Bytes>, BlockError> {
        if self.buffer.len() < CHECKSUM + HEADER {
            return Ok(None);
        }
        let method = self.buffer[CHECKSUM];
        let compressed = u32::from_le_bytes(
            self.buffer[CHECKSUM + 1..CHECKSUM + 5]
                .try_into()
                .expect("4 bytes"),
        ) as usize;
        let decompressed = u32::from_le_bytes(
            self.buffer[CHECKSUM + 5..CHECKSUM + 9]
                .try_into()
                .expect("4 bytes"),
        ) as usize;
        let sane = matches!(method, 0x82 | 0x02)
            && (HEADER..=MAX_BLOCK).contains(&compressed)
            && decompressed <= MAX_BLOCK;
        if !sane {
            if looks_like_exception_start(&self.buffer) {
                // Text, not a block: keep collecting until finish().
                return Ok(None);
            }
            return Err(BlockError::Corrupt(format!(
                "unknown block header (method {method:#04x}, sizes {compressed}/{decompressed})"
            )));
        }
        if self.buffer.len() < CHECKSUM + compressed {
            return Ok(None);
        }
        let frame = self.buffer.split_to(CHECKSUM + compressed);
        let expected = u128::from_le_bytes(frame[..CHECKSUM].try_into().expect("16 bytes"));
        let actual = cityhash_rs::cityhash_102_128(&frame[CHECKSUM..]).rotate_right(64);
        if expected != actual {
            if looks_like_exception_start(&frame) {
                let mut text = frame.to_vec();
                text.extend_from_slice(&self.buffer);
                self.buffer.clear();
                return Err(BlockError::Exception(
                    String::from_utf8_lossy(&text).trim().to_string(),
                ));
            }
            return Err(BlockError::Corrupt("block checksum mismatch".into()));
        }
        let mut payload = frame;
        payload.advance(CHECKSUM + HEADER);
        match method {
            0x02 => Ok(Some(payload.freeze())),
            _ => {
                let out = lz4_flex::block::decompress(&payload, decompressed)
                    .map_err(|e| BlockError::Corrupt(format!("LZ4: {e}")))?;
                if out.len() != decompressed {
                    return Err(BlockError::Corrupt(format!(
                        "LZ4 block gave {} bytes, header said {decompressed}",
                        out.len()
                    )));
                }
                Ok(Some(Bytes::from(out)))
            }
        }
    }
}

fn looks_like_exception_start(bytes: &[u8]) -> bool {
    bytes.starts_with(b"Code: ")
        || bytes.starts_with(b"\nCode: ")
        || bytes.starts_with(b"__exception__")
        || bytes.starts_with(b"\r\n__exception__")
}

fn looks_like_text(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok() && bytes.windows(6).any(|w| w == b"Code: ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(data: &[u8]) -> Vec<u8> {
        let compressed = lz4_flex::block::compress(data);
        let mut body = vec![0x82];
        body.extend_from_slice(&((compressed.len() + HEADER) as u32).to_le_bytes());
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(&compressed);
        let checksum = cityhash_rs::cityhash_102_128(&body).rotate_right(64);
        let mut out = checksum.to_le_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn blocks_decode_across_chunk_boundaries() {
        let a = b"\"a\",\"b\"\n1,2\n".repeat(1000);
        let b = b"3,4\n".to_vec();
        let mut stream = frame(&a);
        stream.extend(frame(&b));
        for cut in [1, 7, 25, 100, stream.len() - 1] {
            let mut d = BlockDecoder::new();
            let mut out = Vec::new();
            for piece in [&stream[..cut], &stream[cut..]] {
                for block in d.push(piece).unwrap() {
                    out.extend_from_slice(&block);
                }
            }
            d.finish().unwrap();
            let mut expected = a.clone();
            expected.extend_from_slice(&b);
            assert_eq!(out, expected, "cut {cut}");
        }
    }

    #[test]
    fn late_exceptions_and_corruption_are_errors() {
        let mut stream = frame(b"1,2\n");
        stream.extend_from_slice(
            b"Code: 241, e.displayText() = DB::Exception: Memory limit (total) exceeded\n",
        );
        let mut d = BlockDecoder::new();
        assert_eq!(d.push(&stream).unwrap().len(), 1);
        assert!(matches!(d.finish(), Err(BlockError::Exception(t)) if t.starts_with("Code: 241")));

        let mut bad = frame(b"1,2\n");
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        let mut d = BlockDecoder::new();
        assert!(matches!(d.push(&bad), Err(BlockError::Corrupt(_))));

        let truncated = &frame(b"1,2\n")[..20];
        let mut d = BlockDecoder::new();
        d.push(truncated).unwrap();
        assert!(matches!(d.finish(), Err(BlockError::Corrupt(_))));
    }
}
