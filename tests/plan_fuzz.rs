//! Property tests of loading and checking: whatever the input, `check_source` returns
//! diagnostics or a plan — it never panics — and a plan it accepts always expands.

use std::path::PathBuf;

use flow::check::{check_source, LoadOptions};
use flow::graph::expand::{expand, PartitionMap};
use flow::plan::SourceFile;
use flow::templates::Templates;
use proptest::prelude::*;

fn check(text: &str) {
    let loaded = check_source(
        SourceFile {
            path: PathBuf::from("fuzz.toml"),
            text: text.to_string(),
        },
        &LoadOptions::default(),
    );
    // Rendering diagnostics must not panic either (spans at odd offsets, unicode).
    let _ = loaded.diagnostics.render(&loaded.source);
    let _ = loaded.diagnostics.to_json(&loaded.source);
    if let Some(plan) = loaded.plan {
        let templates = Templates::new(None).unwrap();
        expand(&plan, &templates, &PartitionMap::new()).expect("a checked plan expands");
    }
}

fn example_plans() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("plans");
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    out.sort();
    out
}

const TOKENS: &[&str] = &[
    "\"",
    "'",
    "[",
    "]",
    "[[tables]]",
    "[[steps]]",
    "[[volumes]]",
    "strategy = \"ebs-swap\"",
    "kind = \"kubernetes\"",
    "settings = { iops = 99999999999 }",
    "[connections.x]",
    "=",
    "\n",
    "{{",
    "}}",
    "{%",
    "${env:",
    "}",
    "${env:A:-b}",
    "after = [\"a\"]",
    "kind = \"fs\"",
    "mode = \"all\"",
    "strategy = \"copy\"",
    "table = \"*\"",
    "destructive = true",
    "é",
    "\u{0}",
    "#",
    "0",
    "-1",
    "99999999999999999999",
    "partitions = []",
    "step = \"day\"",
    "split_by = \"d\"",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        check(&text);
    }

    #[test]
    fn mutated_example_plans_never_panic(
        plan in 0usize..6,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..40, 0usize..TOKENS.len()), 1..6),
    ) {
        let plans = example_plans();
        let mut text = plans[plan % plans.len()].clone();
        for (at, cut, token) in edits {
            let mut pos = at.index(text.len() + 1);
            while !text.is_char_boundary(pos) { pos -= 1; }
            let mut end = (pos + cut).min(text.len());
            while !text.is_char_boundary(end) { end -= 1; }
            text.replace_range(pos..end, TOKENS[token]);
        }
        check(&text);
    }
}

#[test]
fn example_plans_check_and_expand() {
    for text in example_plans() {
        check(&text);
    }
}
