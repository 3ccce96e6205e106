//! flow: declarative database data migrations.
//!
//! A TOML plan ([`plan`]) is checked, expanded into a DAG of idempotent tasks
//! ([`graph`]) through the table strategies ([`strategy`]), and run by a bounded,
//! resumable scheduler ([`exec`]) that records every task in durable [`state`]; the
//! [`engines`] do the work against ClickHouse, object stores, MySQL and commands.

#![warn(unreachable_pub)]

pub mod check;
pub mod cli;
pub mod engines;
pub mod exec;
pub mod graph;
pub mod metrics;
pub mod plan;
pub mod process;
pub mod redact;
pub mod report;
pub mod run;
pub mod runtime;
pub mod state;
pub mod strategy;
pub mod task;
pub mod templates;
pub mod warnings;
