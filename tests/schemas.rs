//! The schemas are tested artifacts: each compiles under the reference
//! validator (the `jsonschema` crate), uses only keywords geats' built-in
//! validator understands, and both validators agree on every fixture
//! request and on a corpus of generated mutations; serde agrees with the
//! schema on what a definition is.

use serde_json::{json, Value};

use crate::common::schema::{reference, reference_validate};

/// Every fixture request file under tests/fixtures/requests whose body is
/// a JSON object with a known action: (file, action, data).
pub fn fixture_requests() -> Vec<(String, String, Value)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/requests");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("fixtures").flatten().map(|e| e.path()).collect();
    files.sort();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
        let (Some(action), Some(data)) = (v.get("action").and_then(Value::as_str), v.get("data")) else { continue };
        if geats::request::Action::NAMES.contains(&action) {
            out.push((f.file_name().unwrap().to_string_lossy().into_owned(), action.to_string(), data.clone()));
        }
    }
    out
}

#[test]
fn every_schema_compiles_under_the_reference_validator() {
    for (name, _) in geats::schema::SCHEMAS {
        let _ = reference(name);
    }
}

pub fn agree(name: &str, data: &Value, context: &str) {
    let ours = geats::schema::validate(name, data);
    let theirs = reference_validate(name, data);
    match (&ours, &theirs) {
        (Ok(()), Ok(())) => {}
        (Err(o), Err(t)) => {
            let ours_missing = o.iter().any(|v| v.missing);
            let theirs_missing = t.iter().any(|(_, req)| *req);
            assert_eq!(ours_missing, theirs_missing, "{context}: missing-ness differs: ours {o:?} theirs {t:?}");
            // The first pointer we report must match one the reference
            // reports: the same value, or (for "required" and unknown keys,
            // which the reference reports on the parent object) its parent.
            let first = &o[0].pointer;
            let parent = first.rsplit_once('/').map(|(p, _)| p.to_string()).unwrap_or_default();
            assert!(t.iter().any(|(p, _)| p == first || *p == parent || p.starts_with(first.as_str())), "{context}: pointer {first} not among {t:?}");
        }
        _ => panic!("{context}: validators disagree on {data}: ours {ours:?}, reference {theirs:?}"),
    }
}

#[test]
fn validators_agree_on_every_fixture() {
    let fixtures = fixture_requests();
    assert!(fixtures.len() >= 20, "only {} fixtures", fixtures.len());
    for (file, action, data) in &fixtures {
        let mut data = data.clone();
        // The transport turns a string definition into an object first.
        if let Some(Value::String(s)) = data.get("definition") {
            if let Ok(v) = serde_json::from_str::<Value>(s) {
                data["definition"] = v;
            }
        }
        agree(&format!("request/{action}.json"), &data, file);
    }
}

/// Values that exercise every keyword: wrong types, bounds, patterns.
fn mutations() -> Vec<Value> {
    vec![
        json!(null), json!(true), json!(0), json!(-1), json!(1.5), json!(16777217), json!(""), json!("x"),
        json!("web1"), json!("a/b"), json!(".."), json!("a\nb"), json!("a b"), json!("a".repeat(63)),
        json!("a".repeat(64)), json!("a".repeat(300)), json!("10.0.0.5"), json!("10.0.0.5/24"),
        json!("02:00:00:00:00:01"), json!("veth"), json!("bogus"), json!([]), json!([1]), json!({}),
        json!({"name": "eth0"}), json!({"name": "v", "type": "dir"}), json!({"K": "v"}), json!({"bad-key": "v"}),
    ]
}

#[test]
fn validators_agree_on_mutated_requests() {
    let base_def = json!({"vm_type": "dummy", "template": "busybox", "ram": 256, "cpus": 1, "transient": false,
        "metadata": {"ROLE": "web"}, "description": "d",
        "network": [{"name": "eth0", "type": "veth", "bridge": "br0", "hwaddr": "02:00:00:00:00:01",
                     "ipaddr": "10.0.0.5", "netmask": "255.255.255.0", "gateway": "10.0.0.1"}],
        "storage": [{"name": "root", "type": "dir", "size": "1G", "mountpoint": "/srv"}]});
    let mut n = 0;
    for action in geats::request::Action::NAMES {
        let mut base = json!({"vm_name": "web1", "process_results": true});
        if matches!(action, "define" | "provision") {
            base["definition"] = base_def.clone();
        }
        if action == "migrate" {
            base["vm_destination"] = json!("host2");
        }
        if action == "status" {
            base = json!({});
        }
        let name = format!("request/{action}.json");
        agree(&name, &base, action);
        let keys: Vec<String> = base.as_object().unwrap().keys().cloned().collect();
        for k in keys.iter().chain(["dry_run".to_string(), "request_id".to_string(), "extra".to_string()].iter()) {
            for m in mutations() {
                let mut d = base.clone();
                d[k.as_str()] = m.clone();
                agree(&name, &d, &format!("{action} {k}={m}"));
                n += 1;
            }
            let mut d = base.clone();
            d.as_object_mut().unwrap().remove(k);
            agree(&name, &d, &format!("{action} without {k}"));
        }
        if matches!(action, "define" | "provision") {
            for path in ["/name", "/vm_type", "/template", "/ram", "/cpus", "/transient", "/metadata", "/description",
                         "/network", "/network/0", "/network/0/name", "/network/0/type", "/network/0/ipaddr",
                         "/network/0/hwaddr", "/network/0/netmask", "/storage", "/storage/0", "/storage/0/name",
                         "/storage/0/size", "/storage/0/mountpoint", "/storage/0/fstype", "/bogus", "/network/0/bogus"] {
                for m in mutations() {
                    let mut d = base.clone();
                    set(&mut d["definition"], path, m.clone());
                    agree(&name, &d, &format!("{action} definition{path}={m}"));
                    n += 1;
                }
            }
        }
    }
    assert!(n > 1000, "only {n} mutations");
}

fn set(v: &mut Value, pointer: &str, new: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let Some(p) = v.pointer_mut(parent) else { return };
    match p {
        Value::Object(m) => {
            m.insert(key.to_string(), new);
        }
        Value::Array(a) => {
            if let Ok(i) = key.parse::<usize>() {
                if i < a.len() {
                    a[i] = new;
                }
            }
        }
        _ => {}
    }
}

#[test]
fn serde_accepts_what_the_schema_accepts() {
    for (file, action, data) in fixture_requests() {
        if !matches!(action.as_str(), "define" | "provision") {
            continue;
        }
        let Some(def) = data.get("definition").filter(|d| d.is_object()) else { continue };
        let schema_ok = geats::schema::validate("definition.json", def).is_ok();
        let serde_ok = serde_json::from_value::<geats::definition::Definition>(def.clone()).is_ok();
        if schema_ok {
            assert!(serde_ok, "{file}: schema accepts but serde refuses {def}");
        }
        if serde_ok && !schema_ok {
            // Serde is laxer on bounds (lengths, ranges); it must not be laxer on keys.
            let e = geats::schema::validate("definition.json", def).unwrap_err();
            // (metadata keys are map keys, checked by Definition::check.)
            assert!(
                !e.iter().any(|v| v.message.contains("is not allowed") && !v.pointer.starts_with("/metadata/")),
                "{file}: serde accepts unknown key: {e:?}"
            );
        }
    }
}
