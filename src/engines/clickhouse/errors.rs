//! ClickHouse errors and the retry decision.
//!
//! The server says what went wrong with an error code (`X-ClickHouse-Exception-Code`,
//! and `Code: N` at the start of the error text, which the `clickhouse` crate keeps).
//! Retries are decided from that code, never from a guess at the text: overload and
//! network codes are transient, everything else with a code (syntax, unknown table,
//! access denied, type mismatch…) is permanent. Without a code, transport failures
//! (connection refused or reset, timeouts, 5xx from a proxy) are transient.
//!
//! Messages may quote the statement, which can hold S3 keys; [`ChError`]s are built
//! through [`Redactor`] so no secret value reaches a log, state or report.

use std::fmt;

/// A failed ClickHouse request.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ChError {
    /// The connection name from the plan.
    pub connection: String,
    /// What flow was doing ("count rows of default.trips partition 201506").
    pub action: String,
    /// The server's error code, when it sent one.
    pub code: Option<u32>,
    pub message: String,
    pub retryable: bool,
}

impl fmt::Display for ChError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "clickhouse `{}`: {}: ", self.connection, self.action)?;
        if let Some(code) = self.code {
            if let Some(name) = code_name(code) {
                write!(f, "[{name}] ")?;
            }
        }
        f.write_str(&self.message)
    }
}

impl ChError {
    /// A failure flow detected itself (not reported by the server).
    pub fn flow(connection: &str, action: impl Into<String>, message: impl Into<String>) -> Self {
        ChError {
            connection: connection.to_string(),
            action: action.into(),
            code: None,
            message: message.into(),
            retryable: false,
        }
    }

    pub fn transient(mut self) -> Self {
        self.retryable = true;
        self
    }
}

/// Removes secret values (S3 keys in `s3()` calls, passwords) from error text; the
/// one redaction of the project, see [`crate::redact`].
pub use crate::redact::Redactor;

/// Builds a [`ChError`] from a crate error.
pub fn from_client(
    connection: &str,
    action: impl Into<String>,
    err: &clickhouse::error::Error,
    redactor: &Redactor,
) -> ChError {
    use clickhouse::error::Error as E;
    let text = describe(err);
    let code = parse_code(&text);
    let retryable = match err {
        E::Network(_) | E::TimedOut => true,
        // Corruption in transit: a new request gets a new stream.
        E::Decompression(_) => true,
        E::BadResponse(_) => match code {
            Some(c) => is_transient_code(c),
            None => is_transient_status_text(&text),
        },
        _ => code.is_some_and(is_transient_code),
    };
    ChError {
        connection: connection.to_string(),
        action: action.into(),
        code,
        message: redactor.redact(&clean(&text)).into_owned(),
        retryable,
    }
}

fn describe(err: &clickhouse::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !msg.contains(&s_text) {
            msg.push_str(&format!(": {s_text}"));
        }
        source = s.source();
    }
    msg
}

/// Shortens the server text: drops the `bad response: ` prefix and the stack trace
/// some versions append.
fn clean(text: &str) -> String {
    let text = text.strip_prefix("bad response: ").unwrap_or(text);
    let text = match text.find("Stack trace") {
        Some(i) => text[..i].trim_end(),
        None => text,
    };
    let text = text.trim();
    if text.len() > 2000 {
        let mut end = 2000;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &text[..end])
    } else {
        text.to_string()
    }
}

/// The error code in ClickHouse error text: `Code: 60. DB::Exception…` (new),
/// `Code: 60, e.displayText() = …` (old), or the bare `Code: 60` the crate builds
/// from the exception header.
pub fn parse_code(text: &str) -> Option<u32> {
    let start = text.find("Code: ")? + "Code: ".len();
    let digits: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Whether an error code is worth retrying.
pub fn is_transient_code(code: u32) -> bool {
    matches!(
        code,
        3       // UNEXPECTED_END_OF_FILE (connection cut)
        | 159   // TIMEOUT_EXCEEDED
        | 160   // TOO_SLOW
        | 164   // READONLY (replica in read-only mode for a while)
        | 202   // TOO_MANY_SIMULTANEOUS_QUERIES
        | 203   // NO_FREE_CONNECTION
        | 209   // SOCKET_TIMEOUT
        | 210   // NETWORK_ERROR
        | 241   // MEMORY_LIMIT_EXCEEDED (usually other queries; retry later)
        | 242   // TABLE_IS_READ_ONLY
        | 252   // TOO_MANY_PARTS
        | 285   // TOO_FEW_LIVE_REPLICAS
        | 319   // UNKNOWN_STATUS_OF_INSERT
        | 425   // SYSTEM_ERROR
        | 473   // DEADLOCK_AVOIDED
        | 499   // S3_ERROR (throttling, transient network)
        | 999   // KEEPER_EXCEPTION
        | 1000 // POCO_EXCEPTION (network-level in practice)
    )
}

fn is_transient_status_text(text: &str) -> bool {
    ["502", "503", "504", "429"]
        .iter()
        .any(|s| text.starts_with(s) || text.contains(&format!("bad response: {s}")))
}

/// Names of the codes flow talks about, for readable messages.
pub fn code_name(code: u32) -> Option<&'static str> {
    Some(match code {
        3 => "UNEXPECTED_END_OF_FILE",
        36 => "BAD_ARGUMENTS",
        43 => "ILLEGAL_TYPE_OF_ARGUMENT",
        47 => "UNKNOWN_IDENTIFIER",
        48 => "NOT_IMPLEMENTED",
        57 => "TABLE_ALREADY_EXISTS",
        60 => "UNKNOWN_TABLE",
        62 => "SYNTAX_ERROR",
        73 => "UNKNOWN_FORMAT",
        81 => "UNKNOWN_DATABASE",
        115 => "UNKNOWN_SETTING",
        159 => "TIMEOUT_EXCEEDED",
        160 => "TOO_SLOW",
        164 => "READONLY",
        202 => "TOO_MANY_SIMULTANEOUS_QUERIES",
        203 => "NO_FREE_CONNECTION",
        209 => "SOCKET_TIMEOUT",
        210 => "NETWORK_ERROR",
        241 => "MEMORY_LIMIT_EXCEEDED",
        242 => "TABLE_IS_READ_ONLY",
        252 => "TOO_MANY_PARTS",
        285 => "TOO_FEW_LIVE_REPLICAS",
        319 => "UNKNOWN_STATUS_OF_INSERT",
        386 => "NO_COMMON_TYPE",
        425 => "SYSTEM_ERROR",
        473 => "DEADLOCK_AVOIDED",
        478 => "UNKNOWN_POLICY",
        497 => "ACCESS_DENIED",
        499 => "S3_ERROR",
        516 => "AUTHENTICATION_FAILED",
        999 => "KEEPER_EXCEPTION",
        1000 => "POCO_EXCEPTION",
        _ => return None,
    })
}

/// Finds a ClickHouse exception written into a result body after streaming began
/// (HTTP status 200 already sent). Old servers append `Code: N, e.displayText() = …`,
/// newer ones `Code: N. DB::Exception: …`, 25.11+ frame it with `__exception__`.
/// `tail` is the last few KiB of the body. Returns the exception text.
pub fn exception_in_tail(tail: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(tail);
    let trimmed = text.trim_end();
    if trimmed.ends_with("__exception__") {
        let body = trimmed.trim_end_matches("__exception__");
        let start = body.rfind("Code: ").unwrap_or(0);
        return Some(body[start..].trim().to_string());
    }
    // The exception is the last line of the body.
    let last_line_start = trimmed.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let last = &trimmed[last_line_start..];
    let mut search = last;
    while let Some(at) = search.find("Code: ") {
        let rest = &search[at..];
        let digits = rest["Code: ".len()..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .count();
        let after = &rest["Code: ".len() + digits..];
        if digits > 0
            && (after.starts_with(". DB::Exception") || after.starts_with(", e.displayText() = "))
        {
            return Some(rest.trim().to_string());
        }
        search = &rest["Code: ".len()..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_parsed_from_old_and_new_text() {
        assert_eq!(
            parse_code(
                "bad response: Code: 60, e.displayText() = DB::Exception: Table x doesn't exist."
            ),
            Some(60)
        );
        assert_eq!(
            parse_code("Code: 159. DB::Exception: Timeout exceeded"),
            Some(159)
        );
        assert_eq!(parse_code("Code: 252"), Some(252));
        assert_eq!(parse_code("no code here"), None);
    }

    #[test]
    fn retry_decisions_follow_codes() {
        for c in [159, 252, 210, 209, 202, 241] {
            assert!(is_transient_code(c), "{c}");
        }
        for c in [62, 60, 497, 81, 43] {
            assert!(!is_transient_code(c), "{c}");
        }
    }

    #[test]
    fn secrets_are_redacted() {
        let r = Redactor::new().with("AKIASECRETKEY").with("ab");
        assert_eq!(
            r.redact("s3('u', 'AKIASECRETKEY', 'x') ab abc"),
            "s3('u', '***', 'x') *** abc"
        );
    }

    #[test]
    fn exceptions_at_the_end_of_a_stream_are_found() {
        let old = b"1,2\n3,4\nCode: 241, e.displayText() = DB::Exception: Memory limit exceeded, e.what() = DB::Exception\n";
        assert!(exception_in_tail(old).unwrap().starts_with("Code: 241"));
        let new = b"1,2\nCode: 159. DB::Exception: Timeout exceeded. (TIMEOUT_EXCEEDED) (version 24.3.1)\n";
        assert!(exception_in_tail(new).is_some());
        let data = b"\"a\",\"Code: 1 DB::Exception is my data\"\n";
        assert!(exception_in_tail(data).is_none());
        assert!(exception_in_tail(b"1,2\n3,4\n").is_none());
    }
}
