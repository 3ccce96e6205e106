//! Graph rendering for `flow graph`: Graphviz dot and Mermaid.
//!
//! Destructive tasks are drawn in red and verifying tasks in green so a reviewer can
//! see at a glance that every red node has a green node upstream.

use std::fmt::Write as _;

use super::TaskGraph;

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Graphviz dot.
pub fn dot(graph: &TaskGraph, name: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", dot_escape(name));
    out.push_str("  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n");
    for index in graph.indices() {
        let t = graph.task(index);
        let style = if t.is_destructive() {
            ", color=red, fontcolor=red"
        } else if t.verifies {
            ", color=darkgreen"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  n{} [label=\"{}\\n{}\"{}];",
            index.index(),
            dot_escape(t.id.as_str()),
            t.kind,
            style
        );
    }
    for index in graph.indices() {
        for dep in graph.dependencies(index) {
            let _ = writeln!(out, "  n{} -> n{};", dep.index(), index.index());
        }
    }
    out.push_str("}\n");
    out
}

fn mermaid_escape(s: &str) -> String {
    s.replace('"', "#quot;")
}

/// Mermaid flowchart.
pub fn mermaid(graph: &TaskGraph) -> String {
    let mut out = String::from("flowchart LR\n");
    for index in graph.indices() {
        let t = graph.task(index);
        let _ = writeln!(
            out,
            "  n{}[\"{}<br/>{}\"]",
            index.index(),
            mermaid_escape(t.id.as_str()),
            t.kind
        );
        if t.is_destructive() {
            let _ = writeln!(out, "  class n{} destructive", index.index());
        } else if t.verifies {
            let _ = writeln!(out, "  class n{} verify", index.index());
        }
    }
    for index in graph.indices() {
        for dep in graph.dependencies(index) {
            let _ = writeln!(out, "  n{} --> n{}", dep.index(), index.index());
        }
    }
    out.push_str("  classDef destructive stroke:#c00,color:#c00\n");
    out.push_str("  classDef verify stroke:#070\n");
    out
}
