//! `flow validate`: offline checks of plan files, for CI.

use std::path::PathBuf;

use super::{vars_map, OutputFormat, EXIT_FAILED, EXIT_OK};
use crate::check::{load, LoadOptions};

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Plan files.
    #[arg(required = true)]
    pub plans: Vec<PathBuf>,
    /// text, or json (one object per diagnostic, for CI annotations).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    /// Override a plan variable: NAME=VALUE (repeatable).
    #[arg(long = "var", value_parser = super::parse_var)]
    pub vars: Vec<(String, String)>,
}

pub fn run(args: &ValidateArgs) -> u8 {
    let options = LoadOptions {
        vars: vars_map(&args.vars),
    };
    let mut invalid = 0;
    let mut json = Vec::new();
    for path in &args.plans {
        match load(path, &options) {
            Ok(loaded) => {
                let valid = loaded.plan.is_some();
                if let Some(plan) = &loaded.plan {
                    crate::plan::secrets::install(plan);
                }
                if !valid {
                    invalid += 1;
                }
                match args.format {
                    OutputFormat::Text => {
                        if !loaded.diagnostics.items.is_empty() {
                            crate::redact::to_stderr(&loaded.diagnostics.render(&loaded.source));
                        }
                        if valid {
                            crate::outln!("ok: {}", path.display());
                        } else {
                            crate::outln!(
                                "invalid: {} ({} error(s))",
                                path.display(),
                                loaded.diagnostics.errors()
                            );
                        }
                    }
                    OutputFormat::Json => {
                        json.push(serde_json::json!({
                            "file": path.display().to_string(),
                            "valid": valid,
                            "diagnostics": loaded.diagnostics.to_json(&loaded.source),
                        }));
                    }
                }
            }
            Err(e) => {
                invalid += 1;
                match args.format {
                    OutputFormat::Text => {
                        crate::errln!("error: cannot read plan {}: {e}", path.display());
                        crate::outln!("invalid: {}", path.display());
                    }
                    OutputFormat::Json => json.push(serde_json::json!({
                        "file": path.display().to_string(),
                        "valid": false,
                        "diagnostics": [{"file": path.display().to_string(), "severity": "error",
                            "message": format!("cannot read the file: {e}"), "help": "check the path"}],
                    })),
                }
            }
        }
    }
    if args.format == OutputFormat::Json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&json).expect("diagnostics serialize")
        );
    }
    if invalid > 0 {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}
