//! The import graph between flow's top-level modules, read from the source: no cycle
//! may appear (ARCHITECTURE.md, "Layers"). An import that closes one fails this test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Edges `from → to` that lie on a cycle today (none: the list only shrinks, and it is
/// empty).
const KNOWN_KNOTS: &[(&str, &str)] = &[];

fn modules(src: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(src)
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            let name = path.file_stem()?.to_str()?.to_string();
            let is_module = path.is_dir() || path.extension().is_some_and(|x| x == "rs");
            (is_module && name != "lib" && name != "main").then_some(name)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn sources(path: &Path, out: &mut Vec<std::path::PathBuf>) {
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            sources(&e.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|x| x == "rs") {
        out.push(path.to_path_buf());
    }
}

/// The modules `module` names through `crate::<module>` outside comments.
fn imports(src: &Path, module: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut files = Vec::new();
    let dir = src.join(module);
    if dir.is_dir() {
        sources(&dir, &mut files);
    }
    let file = src.join(format!("{module}.rs"));
    if file.is_file() {
        files.push(file);
    }
    let mut found = BTreeSet::new();
    for f in files {
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            let mut rest = code;
            while let Some(at) = rest.find("crate::") {
                // `$crate::…` in a macro body is expanded where the macro is used.
                let in_macro = rest[..at].ends_with('$');
                rest = &rest[at + "crate::".len()..];
                if in_macro {
                    continue;
                }
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name != module && known.contains(&name) {
                    found.insert(name);
                }
            }
        }
    }
    found
}

#[test]
fn no_import_cycle_between_top_level_modules_beyond_the_known_knots() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let names = modules(&src);
    let known: BTreeSet<String> = names.iter().cloned().collect();
    let graph: BTreeMap<String, BTreeSet<String>> = names
        .iter()
        .map(|m| (m.clone(), imports(&src, m, &known)))
        .collect();
    assert!(graph.len() >= 10, "the modules were found: {graph:?}");
    assert!(
        graph["exec"].contains("state"),
        "the scan sees real imports: {graph:?}"
    );
    let reaches = |from: &str, to: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            if m == to {
                return true;
            }
            if seen.insert(m.clone()) {
                todo.extend(graph[&m].iter().cloned());
            }
        }
        false
    };
    let on_cycles: BTreeSet<(String, String)> = graph
        .iter()
        .flat_map(|(from, tos)| tos.iter().map(move |to| (from.clone(), to.clone())))
        .filter(|(from, to)| reaches(to, from))
        .collect();
    let allowed: BTreeSet<(String, String)> = KNOWN_KNOTS
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let new: Vec<_> = on_cycles.difference(&allowed).collect();
    assert!(
        new.is_empty(),
        "these imports close a cycle between top-level modules: {new:?} \
         (move the shared item into a lower module, e.g. a leaf like `task`)"
    );
    let untied: Vec<_> = allowed.difference(&on_cycles).collect();
    assert!(
        untied.is_empty(),
        "these knots are untied: delete them from KNOWN_KNOTS: {untied:?}"
    );
}
