//! `flow graph`: the task graph as Graphviz dot or Mermaid.

use std::path::PathBuf;

use super::{load_plan, EXIT_FAILED, EXIT_OK};
use crate::graph::expand::expand;
use crate::graph::render;

#[derive(Debug, Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum GraphFormat {
    Dot,
    Mermaid,
}

#[derive(Debug, clap::Args)]
pub struct GraphArgs {
    pub plan: PathBuf,
    #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
    pub format: GraphFormat,
    /// Override a plan variable: NAME=VALUE (repeatable).
    #[arg(long = "var", value_parser = super::parse_var)]
    pub vars: Vec<(String, String)>,
}

pub fn run(args: &GraphArgs) -> u8 {
    let (plan, templates) = match load_plan(&args.plan, &args.vars) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let partitions = match super::plan::stored_partitions(&plan, &templates) {
        Ok(p) => p,
        Err(e) => {
            crate::errln!("error: cannot read the state of plan {}: {e:#}", plan.name);
            return EXIT_FAILED;
        }
    };
    let graph = match expand(&plan, &templates, &partitions) {
        Ok(g) => g,
        Err(e) => {
            crate::errln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    match args.format {
        GraphFormat::Dot => super::emit(&render::dot(&graph, &plan.name)),
        GraphFormat::Mermaid => super::emit(&render::mermaid(&graph)),
    }
    EXIT_OK
}
