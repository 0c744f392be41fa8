//! The generated DDLs: `agent-ddl/` is exactly what `geats ddl` writes.

use crate::common::{manifest, out_text, Env};


/// `agent-ddl/` is exactly what `geats ddl` generates from the schemas.
#[test]
fn ddl_files_are_generated_from_the_schemas() {
    let env = Env::new();
    let out_dir = env.root().join("ddl");
    let o = env.cli(&["ddl", "--out", out_dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", out_text(&o));
    let committed = manifest().join("agent-ddl");
    let mut generated = Vec::new();
    for f in geats::ddl::generate().unwrap() {
        let fresh = std::fs::read_to_string(out_dir.join(f.path)).unwrap();
        assert_eq!(fresh, f.text, "{}: the binary and the library disagree", f.path);
        let old = std::fs::read_to_string(committed.join(f.path)).unwrap_or_default();
        assert!(old == fresh, "agent-ddl/{} is stale: run `geats ddl --out agent-ddl/` and commit it", f.path);
        generated.push(f.path.to_string());
    }
    // Nothing else in agent-ddl/ (a stale file would be installed too).
    let mut present = Vec::new();
    let mut stack = vec![committed.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                present.push(e.path().strip_prefix(&committed).unwrap().display().to_string());
            }
        }
    }
    present.sort();
    generated.sort();
    assert_eq!(present, generated);
    // Printing them works too.
    let o = env.cli(&["ddl"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("==> geats.json <=="), "{}", out_text(&o));
}
