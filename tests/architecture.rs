//! The module graph of `src/`: every module imports only from layers
//! below its own, so there is no circle and no import upwards. The layers
//! are those of `docs/architecture.md`, top first: cli → agent, ddl →
//! manager → error → vm → storage, db, stream → request → config, definition,
//! template → names, state, schema → sys.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const LAYERS: &[&[&str]] = &[
    &["cli"],
    &["agent", "ddl"],
    &["manager"],
    &["error"],
    &["vm"],
    &["storage", "db", "stream"],
    &["request"],
    &["config", "definition", "template"],
    &["names", "state", "schema"],
    &["sys"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The product code of a file: without its `#[cfg(test)]` module and
/// without comments (doc links are not imports).
fn product_code(text: &str) -> String {
    let code = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    code.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// Top-level module → the other top-level modules it names as `crate::X`.
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read src").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().map_or(true, |x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(src).expect("under src");
            let top = rel.components().next().expect("component").as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
            if top == "lib" || top == "main" {
                continue;
            }
            let text = product_code(&std::fs::read_to_string(&p).expect("read"));
            let mut rest = text.as_str();
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + "crate::".len()..];
                let name: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                if !name.is_empty() && name != top {
                    out.entry(top.clone()).or_default().insert(name);
                }
            }
            out.entry(top).or_default();
        }
    }
    out
}

#[test]
fn modules_import_only_from_lower_layers() {
    let graph = imports(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let mut wrong = Vec::new();
    for (module, deps) in &graph {
        let Some(mine) = layer(module) else {
            wrong.push(format!("module {module} is in no layer: add it to LAYERS and docs/architecture.md"));
            continue;
        };
        for d in deps {
            match layer(d) {
                Some(theirs) if theirs > mine => {}
                Some(_) => wrong.push(format!("{module} imports {d}, which is not below it")),
                None => wrong.push(format!("{module} imports {d}, which is in no layer")),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The scan itself works: the manager uses the VM types and storage.
    assert!(graph["manager"].contains("vm") && graph["manager"].contains("storage"), "{graph:?}");
}

#[test]
fn architecture_doc_states_the_layers() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md")).expect("doc");
    let line = LAYERS.iter().map(|l| l.join(", ")).collect::<Vec<_>>().join(" → ");
    assert!(doc.contains(&line), "docs/architecture.md should state the layers as `{line}`");
}
