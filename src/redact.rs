//! Redaction: one mask over every text flow writes.
//!
//! A run knows its secrets once the plan is loaded: the values resolved from
//! `${env:…}` in secret positions and the secret-named environment values its
//! templates use ([`crate::plan::secrets`] lists them). They go into one
//! [`Redactor`], installed for the process ([`install`]); every writer passes its
//! text through it — the tracing writer ([`MakeRedacted`]), the CLI's stdout/stderr
//! ([`crate::outln!`], [`crate::errln!`]), failure messages as they enter the scheduler
//! (so state, report and summary get them masked), exec output as it is captured
//! ([`capture`]), the report and metrics files. Writers do not each decide what is
//! secret; they ask here.
//!
//! The rule, as CI systems mask job logs:
//! - every occurrence of a value is replaced by `***`, wherever it appears; when
//!   occurrences of several values overlap, the union is masked (a longer secret that
//!   contains a shorter one is masked whole);
//! - a value also hides in its percent-encoded form (URL userinfo) and its JSON-escaped
//!   form (JSON logs, state, report);
//! - values shorter than [`MIN_ANYWHERE`] characters are masked where they stand as a
//!   whole value — not inside a longer word (a password `x` is masked in `user:x@host`,
//!   `password x` and `"x"`, not in `index`). Masking them inside words would make every
//!   output unreadable and would show where the short value occurs anyway;
//! - the empty value is no secret.
//!
//! Captured output is masked as a stream: a secret split across two reads of a pipe is
//! still found, because the last bytes of each read are held back until the next.

use std::borrow::Cow;
use std::io::Write;
use std::ops::Range;
use std::sync::{Arc, RwLock};

use aho_corasick::AhoCorasick;

/// Words that make a name (an environment variable, a setting, an env key) secret.
const SECRET_WORDS: &[&str] = &["PASSWORD", "PASSWD", "SECRET", "TOKEN", "KEY", "CREDENTIAL"];

/// Whether a name marks its value as secret (`PGPASSWORD`, `api_token`, `s3_secret`).
pub fn name_marks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_WORDS.iter().any(|w| upper.contains(w))
}

/// What a masked value is replaced with.
pub const MASK: &str = "***";

/// Values shorter than this (in characters) are masked only as whole values.
pub const MIN_ANYWHERE: usize = 4;

/// A set of secret values and the automata that find them.
#[derive(Clone, Default)]
pub struct Redactor {
    values: Vec<String>,
    /// Masked wherever they occur.
    anywhere: Option<AhoCorasick>,
    /// Masked only between word boundaries.
    whole: Option<AhoCorasick>,
    /// Bytes of the longest pattern: what a stream must hold back.
    longest: usize,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} values)", self.values.len())
    }
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// The forms a value can take in flow's output.
fn forms(value: &str) -> Vec<String> {
    let mut out = vec![value.to_string()];
    let encoded = percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC)
        .to_string();
    let json = serde_json::to_string(value).expect("a string serializes");
    let json = json[1..json.len() - 1].to_string();
    for form in [encoded, json] {
        if !out.contains(&form) {
            out.push(form);
        }
    }
    out
}

impl Redactor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds values to hide (empty ones are ignored).
    pub fn extend<S: AsRef<str>>(&mut self, values: impl IntoIterator<Item = S>) {
        let mut changed = false;
        for v in values {
            let v = v.as_ref();
            if !v.is_empty() && !self.values.iter().any(|x| x == v) {
                self.values.push(v.to_string());
                changed = true;
            }
        }
        if changed {
            self.build();
        }
    }

    pub fn add(&mut self, value: &str) {
        self.extend([value]);
    }

    pub fn with(mut self, value: &str) -> Self {
        self.add(value);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    fn build(&mut self) {
        let mut anywhere = Vec::new();
        let mut whole = Vec::new();
        for v in &self.values {
            let list = if v.chars().count() >= MIN_ANYWHERE {
                &mut anywhere
            } else {
                &mut whole
            };
            for f in forms(v) {
                if !list.contains(&f) {
                    list.push(f);
                }
            }
        }
        self.longest = anywhere
            .iter()
            .chain(&whole)
            .map(String::len)
            .max()
            .unwrap_or(0);
        let automaton = |p: &[String]| {
            (!p.is_empty())
                .then(|| AhoCorasick::new(p).expect("literal patterns always build an automaton"))
        };
        self.anywhere = automaton(&anywhere);
        self.whole = automaton(&whole);
    }

    /// Byte ranges to mask in `text`, merged and sorted.
    fn ranges(&self, text: &[u8]) -> Vec<Range<usize>> {
        let mut found: Vec<Range<usize>> = Vec::new();
        if let Some(ac) = &self.anywhere {
            found.extend(ac.find_overlapping_iter(text).map(|m| m.range()));
        }
        if let Some(ac) = &self.whole {
            found.extend(
                ac.find_overlapping_iter(text)
                    .map(|m| m.range())
                    .filter(|r| {
                        let before = r.start == 0 || !is_word_byte(text[r.start - 1]);
                        let after = r.end == text.len() || !is_word_byte(text[r.end]);
                        before && after
                    }),
            );
        }
        found.sort_by_key(|r| (r.start, r.end));
        let mut merged: Vec<Range<usize>> = Vec::new();
        for r in found {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        merged
    }

    fn mask_bytes(&self, text: &[u8], ranges: &[Range<usize>]) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len());
        let mut at = 0;
        for r in ranges {
            out.extend_from_slice(&text[at..r.start]);
            out.extend_from_slice(MASK.as_bytes());
            at = r.end;
        }
        out.extend_from_slice(&text[at..]);
        out
    }

    /// `text` with every secret masked.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if self.values.is_empty() {
            return Cow::Borrowed(text);
        }
        let ranges = self.ranges(text.as_bytes());
        if ranges.is_empty() {
            return Cow::Borrowed(text);
        }
        let bytes = self.mask_bytes(text.as_bytes(), &ranges);
        // Patterns are whole UTF-8 strings, so cuts fall on character boundaries.
        Cow::Owned(String::from_utf8(bytes).expect("masking whole UTF-8 values keeps UTF-8"))
    }
}

static INSTALLED: RwLock<Option<Arc<Redactor>>> = RwLock::new(None);

/// Adds `values` to the process-wide redactor every writer uses.
pub fn install<S: AsRef<str>>(values: impl IntoIterator<Item = S>) {
    let mut slot = INSTALLED.write().unwrap_or_else(|p| p.into_inner());
    let mut next = slot.as_deref().cloned().unwrap_or_default();
    next.extend(values);
    *slot = Some(Arc::new(next));
}

/// The process-wide redactor.
pub fn current() -> Arc<Redactor> {
    INSTALLED
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_default()
}

/// `text` masked with the process-wide redactor.
pub fn text(text: &str) -> String {
    current().redact(text).into_owned()
}

/// Makes a panic's report on stderr go through the redactor too: the default hook
/// writes the panic message as it is, and a message may quote a value (a URL with its
/// password, a rendered statement). Installed once, before anything runs.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("a panic without a message");
        let report = panic_report(
            thread.name().unwrap_or("<unnamed>"),
            &info.location().map(|l| l.to_string()).unwrap_or_default(),
            message,
            &std::backtrace::Backtrace::capture().to_string(),
        );
        let _ = std::io::stderr().write_all(text(&report).as_bytes());
    }));
}

/// What the panic hook writes (before masking), like the default hook's report.
fn panic_report(thread: &str, location: &str, message: &str, backtrace: &str) -> String {
    let mut report = format!("thread '{thread}' panicked at {location}:\n{message}\n");
    if backtrace.is_empty() || backtrace.starts_with("disabled") {
        report.push_str(
            "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n",
        );
    } else {
        report.push_str(&format!("stack backtrace:\n{backtrace}\n"));
    }
    report
}

/// Masks a byte stream: [`push`](StreamMask::push) returns what can be written now,
/// holding back the bytes a secret could still continue into.
pub struct StreamMask {
    redactor: Arc<Redactor>,
    pending: Vec<u8>,
}

impl StreamMask {
    pub fn new(redactor: Arc<Redactor>) -> Self {
        StreamMask {
            redactor,
            pending: Vec::new(),
        }
    }

    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(bytes);
        // Hold back one byte more than the longest pattern: a whole-value match needs
        // the byte after it to be known.
        let keep = self.redactor.longest + 1;
        let mut cut = self.pending.len().saturating_sub(keep);
        let ranges = self.redactor.ranges(&self.pending);
        if let Some(r) = ranges.iter().find(|r| r.start < cut && r.end > cut) {
            cut = r.start;
        }
        let done: Vec<Range<usize>> = ranges.into_iter().filter(|r| r.end <= cut).collect();
        let out = self.redactor.mask_bytes(&self.pending[..cut], &done);
        self.pending.drain(..cut);
        out
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let ranges = self.redactor.ranges(&self.pending);
        let out = self.redactor.mask_bytes(&self.pending, &ranges);
        self.pending.clear();
        out
    }
}

/// Copies a child's output into `file`, masked with the process-wide redactor.
pub async fn capture(
    mut from: impl tokio::io::AsyncRead + Unpin,
    file: std::fs::File,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut to = tokio::fs::File::from_std(file);
    let mut mask = StreamMask::new(current());
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        to.write_all(&mask.push(&buf[..n])).await?;
    }
    to.write_all(&mask.finish()).await?;
    to.flush().await
}

/// A tracing writer that masks each formatted event before it reaches `inner`.
pub struct MakeRedacted<M>(pub M);

/// One event's text, masked and written when the event is complete.
pub struct RedactedWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> Write for RedactedWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let text = String::from_utf8_lossy(&self.buf).into_owned();
            self.buf.clear();
            self.inner.write_all(current().redact(&text).as_bytes())?;
        }
        self.inner.flush()
    }
}

impl<W: Write> Drop for RedactedWriter<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

impl<'a, M> tracing_subscriber::fmt::MakeWriter<'a> for MakeRedacted<M>
where
    M: tracing_subscriber::fmt::MakeWriter<'a>,
{
    type Writer = RedactedWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactedWriter {
            inner: self.0.make_writer(),
            buf: Vec::new(),
        }
    }
}

/// Prints a line to stdout through the process-wide redactor (a closed pipe ends
/// output quietly).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::emit(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// Prints a line to stderr through the process-wide redactor.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::redact::to_stderr(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// Writes `text` to stderr, masked.
pub fn to_stderr(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(current().redact(text).as_bytes());
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn every_occurrence_and_every_form_is_masked() {
        let r = Redactor::new().with("AKIASECRETKEY").with("p@ss/w\"rd");
        assert_eq!(
            r.redact("s3('u', 'AKIASECRETKEY', 'x') AKIASECRETKEY"),
            "s3('u', '***', 'x') ***"
        );
        assert_eq!(
            r.redact("http://u:p%40ss%2Fw%22rd@h {\"pw\":\"p@ss/w\\\"rd\"} p@ss/w\"rd"),
            "http://u:***@h {\"pw\":\"***\"} ***"
        );
    }

    #[test]
    fn overlapping_and_nested_secrets_are_masked_whole() {
        let r = Redactor::new().with("abcdef").with("defxyz").with("cde");
        assert_eq!(r.redact("1abcdefxyz2"), "1***2");
        let r = Redactor::new().with("secret").with("my-secret-value");
        assert_eq!(r.redact("[my-secret-value] [secret]"), "[***] [***]");
    }

    #[test]
    fn short_values_are_masked_as_whole_values_only() {
        let r = Redactor::new().with("x").with("ab");
        assert_eq!(r.redact("user:x@host"), "user:***@host");
        assert_eq!(
            r.redact("password x, {\"pw\":\"ab\"}"),
            "password ***, {\"pw\":\"***\"}"
        );
        assert_eq!(r.redact("index abc xab"), "index abc xab");
        assert_eq!(r.redact("x"), "***");
        // A short value next to a long one that contains it.
        let r = Redactor::new().with("ab").with("bcdefg");
        assert_eq!(r.redact("abcdefg"), "a***");
        assert_eq!(Redactor::new().with("").redact("text"), "text");
    }

    #[test]
    fn a_stream_masks_secrets_split_across_reads() {
        let r = Arc::new(Redactor::new().with("hunter2hunter2").with("q"));
        let text = b"line one hunter2hunter2\nq and hunter2hunter2 end q";
        for split in 1..text.len() {
            for step in [1, 3, split] {
                let mut m = StreamMask::new(r.clone());
                let mut out = Vec::new();
                for chunk in text.chunks(step) {
                    out.extend(m.push(chunk));
                }
                out.extend(m.finish());
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    "line one ***\n*** and *** end ***",
                    "chunks of {step}"
                );
            }
        }
    }
}
