//! The plugin boundary as `docs/plugins.md` shows it: its example driver
//! is the real `tmpfs` driver, compiled into geats through its one line in
//! the registry, and driven here through the agent like any other.

use std::path::Path;

use serde_json::json;

use crate::common::{self, Env};

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Rust block that follows `<!-- example: PATH -->` in the doc.
fn example_block(doc: &str, path: &str) -> Option<String> {
    let marker = format!("<!-- example: {path} -->");
    let after = &doc[doc.find(&marker)? + marker.len()..];
    let start = after.find("```rust\n")? + "```rust\n".len();
    let end = after[start..].find("\n```")?;
    Some(after[start..start + end + 1].to_string())
}

#[test]
fn plugins_doc_example_is_the_compiled_tmpfs_driver() {
    let doc = std::fs::read_to_string(manifest().join("docs/plugins.md")).expect("docs/plugins.md");
    let shown = example_block(&doc, "src/storage/tmpfs.rs").expect("docs/plugins.md shows src/storage/tmpfs.rs after its marker");
    let source = std::fs::read_to_string(manifest().join("src/storage/tmpfs.rs")).expect("tmpfs.rs");
    assert_eq!(shown, source, "docs/plugins.md's example differs from src/storage/tmpfs.rs: copy the file into the doc");
    // Its one line in the registry is what makes it a driver.
    assert!(geats::storage::DRIVERS.iter().any(|d| d.name == "tmpfs" && d.default_root == Some("var/lib/geats/tmpfs")));
    let registry = std::fs::read_to_string(manifest().join("src/storage/mod.rs")).expect("storage/mod.rs");
    assert!(registry.contains("tmpfs::Tmpfs;"), "the registry line of the example");
}

#[test]
fn registry_names_every_driver_in_its_errors() {
    let env = Env::with_config("[storage_types.x]\ndriver = \"zfs\"\n");
    let e = env.fail("define", json!({"vm_name": "v1", "definition": {"vm_type": "dummy", "storage": [{"name": "r", "type": "x"}]}}));
    assert_eq!(e["errorcode"], "config_invalid", "{e}");
    let msg = e["message"].as_str().unwrap_or_default();
    for d in geats::storage::DRIVERS {
        assert!(msg.contains(d.name), "{msg} lacks {}", d.name);
    }
    let env = Env::with_config("[vm_types.x]\ndriver = \"kvm\"\n");
    let e = env.fail("define", json!({"vm_name": "v1", "definition": {"vm_type": "x"}}));
    assert_eq!(e["errorcode"], "config_invalid", "{e}");
    assert!(e["message"].as_str().unwrap_or_default().contains("known: dummy, lxc"), "{e}");
}

#[test]
fn storage_kind_a_vm_type_cannot_use_is_refused_before_any_step() {
    // LXC needs a directory; a bare image file (no adapters) is refused at
    // the volume's pointer, and nothing is created.
    let env = Env::with_config("[storage_types.img]\ndriver = \"sparsefile\"\n");
    let def = json!({"storage": [{"name": "root", "type": "img", "size": "8M"}]});
    let e = env.fail("define", json!({"vm_name": "c1", "definition": def}));
    assert_eq!(e["errorcode"], "invalid_data", "{e}");
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(msg.contains("/definition/storage/0/type") && msg.contains("a file") && msg.contains("filesystem adapter"), "{msg}");
    assert!(!env.root().join("var/lib/geats/images").exists(), "nothing created");
}

#[test]
fn tmpfs_driver_through_the_agent() {
    if !common::is_root() {
        return common::skip("tmpfs_driver_through_the_agent", &common::Missing::root("mounting a tmpfs needs root"));
    }
    let env = Env::with_config("[storage_types.scratch]\ndriver = \"tmpfs\"\nmode = \"0700\"\n");
    let def = json!({"vm_type": "dummy", "storage": [{"name": "scratch", "type": "scratch", "size": "16M"}]});
    let dir = env.root().join("var/lib/geats/tmpfs/t1/scratch");
    let mounted = |p: &Path| geats::sys::mount::mounts().iter().any(|m| m.mount_point == p && m.fstype == "tmpfs");
    env.ok("define", json!({"vm_name": "t1", "definition": def}));
    assert!(dir.is_dir() && !mounted(&dir), "defined, not active");
    env.ok("start", json!({"vm_name": "t1"}));
    assert!(mounted(&dir), "start mounts the tmpfs");
    let info = env.ok("info", json!({"vm_name": "t1"}));
    assert_eq!(info["storage"][0]["driver"], "tmpfs", "{info}");
    assert_eq!(info["storage"][0]["size_bytes"], 16 << 20, "{info}");
    assert_eq!(info["storage"][0]["active"], true, "{info}");
    std::fs::write(dir.join("scratch-file"), "x").expect("write into the tmpfs");
    env.ok("stop", json!({"vm_name": "t1"}));
    assert!(!mounted(&dir), "stop unmounts it");
    assert!(!dir.join("scratch-file").exists(), "scratch data is gone with the mount");
    env.ok("start", json!({"vm_name": "t1"}));
    assert!(mounted(&dir));
    env.ok("deprovision", json!({"vm_name": "t1"}));
    assert!(!mounted(&dir) && !dir.exists(), "deprovision unmounts and removes it");
    // A bad setting is the config's error, naming the key.
    let env = Env::with_config("[storage_types.scratch]\ndriver = \"tmpfs\"\nmode = \"rwx\"\n");
    let e = env.fail("define", json!({"vm_name": "t1", "definition": def}));
    assert_eq!(e["errorcode"], "config_invalid", "{e}");
    assert!(e["message"].as_str().unwrap_or_default().contains("storage_types.scratch.mode"), "{e}");
}
