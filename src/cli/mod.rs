//! The command line: one file per subcommand, human and JSON output.
//!
//! Exit codes (also in the README): 0 success; 1 the plan is invalid or the run
//! failed; 2 usage error (bad flags, `apply` on a plan with state but neither
//! `--resume` nor `--restart`); 3 the plan is locked by another run (also: `unlock
//! --force` refused a live holder, or a run lost its lock and stopped); 130 interrupted.

pub mod apply;
pub mod graph;
pub mod plan;
pub mod schema;
pub mod state_cmd;
pub mod status;
pub mod unlock;
pub mod validate;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::check::{load, LoadOptions};
use crate::plan::Plan;
use crate::templates::Templates;

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_LOCKED: u8 = 3;
pub const EXIT_INTERRUPTED: u8 = 130;

const EXAMPLES: &str = "\
Examples:
  flow validate plans/*.toml                 check plans offline (CI)
  flow plan plans/trips.toml --offline       what would run, without a database
  flow plan plans/trips.toml --format json   tasks with ids, kinds, dependencies, state
  flow graph plans/trips.toml --format dot | dot -Tsvg > trips.svg
  flow apply plans/trips.toml                run it
  flow apply plans/trips.toml --resume       continue after a crash or Ctrl-C
  flow status plans/trips.toml               done / pending / failed per task";

#[derive(Debug, Parser)]
#[command(
    name = "flow",
    version,
    about = "Declarative database data migrations: plan, verify, apply, resume",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `--format` of commands that print results.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check plans offline: syntax, references, cycles, templates, verify-before-destroy.
    Validate(validate::ValidateArgs),
    /// Show what would run: tables, partitions, tasks, and their state.
    Plan(plan::PlanArgs),
    /// Print the task graph as Graphviz dot or Mermaid.
    Graph(graph::GraphArgs),
    /// Run the plan: bounded concurrency, verify before destroy, durable state.
    Apply(apply::ApplyArgs),
    /// Show each task's state from the last run.
    Status(status::StatusArgs),
    /// Change recorded task state (reset tasks to pending).
    State(state_cmd::StateArgs),
    /// Break the lock of a run that died.
    Unlock(unlock::UnlockArgs),
    /// Print the JSON Schema of plan files (for editors).
    Schema,
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Parses `NAME=VALUE` for `--var`.
pub fn parse_var(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not NAME=VALUE")),
    }
}

/// `--var` pairs as a map.
pub fn vars_map(vars: &[(String, String)]) -> BTreeMap<String, String> {
    vars.iter().cloned().collect()
}

/// Loads and checks a plan, printing diagnostics to stderr. Err carries the exit code.
pub fn load_plan(path: &Path, vars: &[(String, String)]) -> Result<(Plan, Templates), u8> {
    let options = LoadOptions {
        vars: vars_map(vars),
    };
    let loaded = match load(path, &options) {
        Ok(l) => l,
        Err(e) => {
            crate::errln!(
                "error: cannot read plan {}: {e}\n  help: check the path",
                path.display()
            );
            return Err(EXIT_FAILED);
        }
    };
    if !loaded.diagnostics.items.is_empty() {
        crate::redact::to_stderr(&loaded.diagnostics.render(&loaded.source));
    }
    if let Some(plan) = &loaded.plan {
        crate::plan::secrets::install(plan);
    }
    let Some(plan) = loaded.plan else {
        crate::errln!(
            "{}: {} error(s); nothing was run",
            path.display(),
            loaded.diagnostics.errors()
        );
        return Err(EXIT_FAILED);
    };
    match Templates::new(plan.templates_dir.as_deref()) {
        Ok(t) => Ok((plan, t)),
        Err(e) => {
            crate::errln!("error: {e}");
            Err(EXIT_FAILED)
        }
    }
}

fn init_logging(verbose: u8, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour codes only on a terminal: a CI log or a file gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(crate::redact::MakeRedacted(std::io::stderr));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    crate::redact::install_panic_hook();
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.log_format);
    let code = run(cli);
    ExitCode::from(code)
}

fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// Writes command output to stdout, masked by the run's redactor; a closed pipe
/// (`| head`) ends output quietly.
pub fn emit(text: &str) {
    use std::io::Write as _;
    let text = crate::redact::text(text);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

fn run(cli: Cli) -> u8 {
    let result = match cli.command {
        Command::Validate(args) => Ok(validate::run(&args)),
        Command::Plan(args) => block_on(plan::run(&args)),
        Command::Graph(args) => Ok(graph::run(&args)),
        Command::Schema => Ok(schema::run()),
        Command::Apply(args) => block_on(apply::run(&args)),
        Command::Status(args) => block_on(status::run(&args)),
        Command::State(args) => block_on(state_cmd::run(&args)),
        Command::Unlock(args) => block_on(unlock::run(&args)),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "flow", &mut script);
            emit(&String::from_utf8_lossy(&script));
            Ok(EXIT_OK)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            crate::errln!("error: {e:#}");
            EXIT_FAILED
        }
    }
}
