//! Engines: the code that talks to databases, stores and commands. What runs a task
//! of a plan (which engine, which strategy) is the layer above, [`crate::runtime`].

pub mod aws;
pub mod clickhouse;
pub mod clients;
pub mod ec2;
pub mod export;
pub mod kubernetes;
pub mod migration;
pub mod mysql;
pub mod registry;
pub mod rows;
pub mod source;
pub mod store;
pub mod volume;

/// `a AND b AND c` of the present parts, each parenthesized; None when empty.
pub fn and_all<'a>(parts: impl IntoIterator<Item = Option<&'a str>>) -> Option<String> {
    let parts: Vec<String> = parts
        .into_iter()
        .flatten()
        .filter(|p| !p.trim().is_empty())
        .map(|p| format!("({p})"))
        .collect();
    if parts.is_empty() {
        None
    } else {
        Some(parts.join(" AND "))
    }
}
