//! Problems found in a plan, each naming the thing, the problem and the fix, and
//! pointing at the plan file (line, column, an excerpt with a caret).
//!
//! The checker collects every diagnostic before reporting, so one `flow validate`
//! shows all mistakes at once. Rendering uses miette without colours so golden files
//! and CI logs are stable; `--format json` gives the same facts for CI annotations.

use std::fmt::Write as _;
use std::ops::Range;
use std::path::PathBuf;

use miette::{GraphicalReportHandler, GraphicalTheme, NamedSource, SourceSpan};
use serde::Serialize;

/// The text of a plan file and the name it is shown under.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

impl SourceFile {
    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    pub fn display_name(&self) -> String {
        self.path.display().to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// What is wrong, naming the thing (`connection "lake" …`).
    pub message: String,
    /// Byte range in the plan file.
    pub span: Option<Range<usize>>,
    /// Short text under the caret.
    pub label: String,
    /// How to fix it.
    pub help: String,
}

impl Diagnostic {
    pub fn error(
        span: Option<Range<usize>>,
        message: impl Into<String>,
        label: impl Into<String>,
        help: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            span,
            label: label.into(),
            help: help.into(),
        }
    }

    pub fn warning(
        span: Option<Range<usize>>,
        message: impl Into<String>,
        label: impl Into<String>,
        help: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(span, message, label, help)
        }
    }
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{message}")]
struct Rendered {
    message: String,
    #[source_code]
    source_code: NamedSource<String>,
    #[label("{label}")]
    span: Option<SourceSpan>,
    label: String,
    #[help]
    help: Option<String>,
    #[diagnostic(severity)]
    severity: miette::Severity,
}

/// Diagnostics of one plan file.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics {
    pub items: Vec<Diagnostic>,
    /// Byte ranges of the file that hold secrets: excerpts show them as `*`.
    pub masked: Vec<Range<usize>>,
}

/// JSON shape of one diagnostic (`flow validate --format json`).
#[derive(Debug, Serialize)]
pub struct DiagnosticJson<'a> {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub severity: Severity,
    pub message: &'a str,
    pub help: &'a str,
}

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.items.push(d);
    }

    /// Hides `range` of the file in every excerpt.
    pub fn mask(&mut self, range: Range<usize>) {
        self.masked.push(range);
    }

    /// The file's text with the masked ranges blanked out by `*`, one per byte, so
    /// every span still points where it did. The quotes of a masked string stay.
    fn excerpt_text(&self, source: &SourceFile) -> String {
        let mut bytes = source.text.clone().into_bytes();
        for r in &self.masked {
            let end = r.end.min(bytes.len());
            let start = r.start.min(end);
            let inner = match &bytes[start..end] {
                [b'"', .., b'"'] | [b'\'', .., b'\''] => start + 1..end - 1,
                _ => start..end,
            };
            for b in &mut bytes[inner] {
                *b = b'*';
            }
        }
        // Whole strings are masked, and their ends are quotes: still UTF-8; the lossy
        // conversion only guards against a range that cut a character.
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }

    pub fn errors(&self) -> usize {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    /// Sorts by position so output follows the file.
    pub fn sort(&mut self) {
        self.items
            .sort_by_key(|d| d.span.as_ref().map(|s| s.start).unwrap_or(usize::MAX));
    }

    /// Human rendering: `file:line:col`, the excerpt with a caret, and the fix.
    pub fn render(&self, source: &SourceFile) -> String {
        let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
            .with_width(100)
            .with_context_lines(1);
        let mut out = String::new();
        let text = self.excerpt_text(source);
        for d in &self.items {
            let location = match &d.span {
                Some(span) => {
                    let (line, col) = source.line_col(span.start);
                    format!("{}:{line}:{col}", source.display_name())
                }
                None => source.display_name(),
            };
            let word = match d.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            let _ = writeln!(out, "{word}: {location}: {}", d.message);
            let rendered = Rendered {
                message: d.message.clone(),
                source_code: NamedSource::new(source.display_name(), text.clone()),
                span: d.span.clone().map(|s| {
                    let len = s.len().max(1);
                    SourceSpan::from((
                        s.start.min(source.text.len()),
                        len.min(source.text.len().saturating_sub(s.start)),
                    ))
                }),
                label: d.label.clone(),
                help: (!d.help.is_empty()).then(|| d.help.clone()),
                severity: match d.severity {
                    Severity::Error => miette::Severity::Error,
                    Severity::Warning => miette::Severity::Warning,
                },
            };
            let _ = handler.render_report(&mut out, &rendered);
            out.push('\n');
        }
        out
    }

    pub fn to_json<'a>(&'a self, source: &SourceFile) -> Vec<DiagnosticJson<'a>> {
        self.items
            .iter()
            .map(|d| {
                let (line, column) = match &d.span {
                    Some(s) => {
                        let (l, c) = source.line_col(s.start);
                        (Some(l), Some(c))
                    }
                    None => (None, None),
                };
                DiagnosticJson {
                    file: source.display_name(),
                    line,
                    column,
                    severity: d.severity,
                    message: &d.message,
                    help: &d.help,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let s = SourceFile {
            path: "p.toml".into(),
            text: "a = 1\nbé = 2\n".into(),
        };
        assert_eq!(s.line_col(0), (1, 1));
        assert_eq!(s.line_col(6), (2, 1));
        assert_eq!(s.line_col(9), (2, 3));
    }
}
