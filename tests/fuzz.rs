//! Issue 11, point 5: property tests (proptest; `cargo fuzz` needs a
//! nightly toolchain, which CI does not install) over the input side of a
//! request: envelope parsing, schema validation and definition checking.
//!
//! - arbitrary bytes, and JSON built from the request grammar with
//!   hostile leaves, never panic the parser, and every refusal is one of
//!   the input error codes;
//! - geats' own schema validator and the reference `jsonschema` crate
//!   agree on every generated `data` object;
//! - what is accepted is safe: names match the name pattern, and a
//!   definition survives a serde round trip unchanged;
//! - an accepted request runs as a dry run through the manager (the whole
//!   definition check against the configured VM types and storage) with
//!   no panic and no `internal` error, and writes nothing.
//!
//! A normal `cargo test` runs a few cases (`GEATS_FUZZ_CASES`, default
//! 64); `GEATS_FUZZ_SECS=600` keeps generating fresh cases for that long
//! (docs/architecture.md records the last long run). A failure prints the
//! minimal case; add it to `REGRESSIONS` below.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};

use geats::error::{Error, ErrorCode};

/// Inputs kept as regression cases: those that once failed a property
/// (none so far, see docs/architecture.md), and seeds at the edges the
/// generators reach only rarely.
const REGRESSIONS: &[&str] = &[
    r#"{"action":"define","data":{"vm_name":"a","dry_run":true,"definition":{"ram":1e400}}}"#,
    r#"{"action":"define","data":{"vm_name":"a","dry_run":true,"definition":{"ram":18446744073709551615,"cpus":4294967296}}}"#,
    r#"{"action":"define","data":{"vm_name":"a","dry_run":true,"definition":{"storage":[{"name":"root","type":"img","size":"99999999999999999999T"}]}}}"#,
    r#"{"action":"define","data":{"vm_name":"a","dry_run":true,"definition":{"network":[{"name":"eth0","ipaddr":"255.255.255.255/0","gateway":"0.0.0.0"}]}}}"#,
    r#"{"action":"provision","data":{"vm_name":"a","dry_run":true,"definition":{"vm_type":"lxc","template":"busybox","storage":[{"name":"root","type":"img"},{"name":"root","type":"dir"}]}}}"#,
    r#"{"action":"start","uniqid":"","data":{"vm_name":"a\u0000"}}"#,
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("JSON has no NaN", |f| f.is_finite()).prop_map(|f| json!(f)),
        prop_oneof![Just(0i64), Just(-1), Just(4), Just(64), Just(16 << 20), Just(i64::MAX)].prop_map(|n| json!(n)),
        text().prop_map(Value::String),
    ]
}

/// Strings: mostly plausible, sometimes hostile.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z0-9][A-Za-z0-9_.-]{0,8}",
        4 => "[a-z]{1,4}[0-9]{0,2}",
        2 => Just("busybox".to_string()),
        2 => Just("root".to_string()),
        2 => Just("eth0".to_string()),
        1 => Just("10.0.0.5/24".to_string()),
        1 => Just("02:03:04:05:06:07".to_string()),
        1 => Just("1G".to_string()),
        1 => Just("/srv".to_string()),
        1 => "(\\.\\.|/|-|\\n|\\x00|;|\\$\\(|`| |\u{435}|\u{200b}|lxc\\.|[a-z0-9]){0,12}",
        1 => ".{0,70}",
        1 => "[0-9]{1,25}[KMGT]?",
        1 => "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(/[0-9]{1,2})?",
    ]
}

/// Any JSON, a few levels deep.
fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value for a known key: usually of the right shape, sometimes any.
/// Known keys of an object, each with the strategy of its value.
type Known = &'static [(&'static str, fn() -> BoxedStrategy<Value>)];

fn field(known: Known) -> impl Strategy<Value = Value> {
    let n = known.len();
    // Mostly known keys with well-shaped values; now and then an unknown
    // key or a value of any shape.
    prop::collection::vec((0..n * 12 + 1, prop::bool::weighted(0.08), value(), text()), 0..6).prop_flat_map(move |picks| {
        let mut strategies: Vec<BoxedStrategy<(String, Value)>> = Vec::new();
        for (i, wild, v, k) in picks {
            if i == n * 12 {
                strategies.push(Just((k, v)).boxed());
            } else {
                let (key, make) = known[i % n];
                if wild {
                    strategies.push(Just((key.to_string(), v)).boxed());
                } else {
                    strategies.push(make().prop_map(move |v| (key.to_string(), v)).boxed());
                }
            }
        }
        strategies.prop_map(|kvs| Value::Object(kvs.into_iter().collect::<Map<String, Value>>()))
    })
}

fn s() -> BoxedStrategy<Value> {
    text().prop_map(Value::String).boxed()
}
fn n() -> BoxedStrategy<Value> {
    prop_oneof![6 => (0i64..5000).prop_map(|n| json!(n)), 1 => leaf()].boxed()
}
fn b() -> BoxedStrategy<Value> {
    prop_oneof![6 => any::<bool>().prop_map(Value::Bool), 1 => leaf()].boxed()
}
fn nic() -> BoxedStrategy<Value> {
    const K: Known =
        &[("name", s), ("type", s), ("bridge", s), ("hwaddr", s), ("ipaddr", s), ("netmask", s), ("gateway", s)];
    field(K).boxed()
}
fn vol() -> BoxedStrategy<Value> {
    const K: Known = &[("name", s), ("type", s), ("size", s), ("mountpoint", s)];
    field(K).boxed()
}
fn nics() -> BoxedStrategy<Value> {
    prop::collection::vec(nic(), 0..3).prop_map(Value::Array).boxed()
}
fn vols() -> BoxedStrategy<Value> {
    prop::collection::vec(vol(), 0..3).prop_map(Value::Array).boxed()
}
fn meta() -> BoxedStrategy<Value> {
    prop::collection::btree_map(text(), text(), 0..3).prop_map(|m| json!(m)).boxed()
}
fn vm_type() -> BoxedStrategy<Value> {
    prop_oneof![Just(json!("dummy")), Just(json!("lxc")), s()].boxed()
}

fn definition() -> BoxedStrategy<Value> {
    const K: Known = &[
        ("name", s),
        ("description", s),
        ("vm_type", vm_type),
        ("template", s),
        ("network", nics),
        ("storage", vols),
        ("ram", n),
        ("cpus", n),
        ("transient", b),
        ("metadata", meta),
    ];
    field(K).boxed()
}

/// A request: a known action (or not), data shaped by the grammar.
fn request() -> impl Strategy<Value = Value> {
    let action = prop_oneof![
        9 => prop::sample::select(geats::request::Action::NAMES.to_vec()).prop_map(str::to_string),
        1 => text(),
    ];
    const K: Known =
        &[("definition", definition), ("dry_run", b), ("request_id", s), ("vm_destination", s)];
    (action, field(K), text(), prop::bool::weighted(0.9), prop::option::weighted(0.2, text())).prop_map(|(a, mut data, name, named, uniqid)| {
        if named {
            data["vm_name"] = json!(name);
        }
        // Most of the time, make it a dry run so the manager check runs.
        if data.get("dry_run").is_none() {
            data["dry_run"] = json!(true);
        }
        let mut r = json!({"action": a, "data": data});
        if let Some(u) = uniqid {
            r["uniqid"] = json!(u);
        }
        r
    })
}

/// How the generated cases fared: refused, accepted, dry run succeeded,
/// dry run refused by the definition check.
static TALLY: [AtomicU64; 4] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

fn count(i: usize) {
    TALLY[i].fetch_add(1, Ordering::Relaxed);
}

fn name_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && b.len() <= 63 && b[0].is_ascii_alphanumeric() && b.iter().all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

/// The properties, for one input.
fn check(bytes: &[u8], manager: &geats::manager::Manager) -> Result<(), TestCaseError> {
    let parsed = std::panic::catch_unwind(|| geats::agent::parse_request(bytes, 1 << 20));
    let Ok(parsed) = parsed else { return Err(TestCaseError::fail("the parser panicked")) };
    // Schema agreement for well-formed requests with a known action.
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        if let (Some(a), Some(d)) = (v["action"].as_str(), v.get("data")) {
            if geats::request::Action::NAMES.contains(&a) && d.is_object() {
                crate::schemas::agree(&format!("request/{a}.json"), d, "fuzz");
            }
        }
    }
    let req = match parsed {
        Err(e) => {
            let code = Error::from(e).code();
            prop_assert!(matches!(code, ErrorCode::InvalidData | ErrorCode::MissingData | ErrorCode::UnknownAction), "refused as {code}");
            count(0);
            return Ok(());
        }
        Ok(r) => r,
    };
    count(1);
    if let Some(vm) = req.action.vm() {
        prop_assert!(name_ok(vm.as_str()), "accepted name {vm:?}");
    }
    if let geats::request::Action::Define(_, def) | geats::request::Action::Provision(_, def) = &req.action {
        let text = serde_json::to_string(def).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: geats::definition::Definition = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        prop_assert_eq!(&back, &**def);
    }
    if req.dry_run {
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| manager.execute(&req)));
        let Ok(out) = out else { return Err(TestCaseError::fail("the dry run panicked")) };
        match out {
            Ok(_) => count(2),
            Err(e) => {
                prop_assert!(e.code() != ErrorCode::Internal, "internal error: {}", e.message());
                count(3);
            }
        }
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("GEATS_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(64)
}

fn manager(root: &std::path::Path) -> geats::manager::Manager {
    let toml = "[storage_types.img]\ndriver = \"sparsefile\"\nadapters = [\"loop\", \"filesystem\"]\n[vm_types.lxc]\ndriver = \"lxc\"\nvalid_storage_types = [\"img\", \"dir\"]\n";
    let config = geats::config::Config::from_toml(toml, None, Some(root.to_path_buf())).expect("config");
    geats::manager::Manager::new(config)
}

/// Run `strategy` for `cases()` cases, or for `GEATS_FUZZ_SECS` seconds
/// of fresh cases; panics with the minimal failing input.
fn run<S: Strategy>(name: &str, strategy: S, bytes: impl Fn(&S::Value) -> Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("var/lib/geats/templates")).unwrap();
    crate::common::lxc::busybox_template(&dir.path().join("var/lib/geats/templates"), "busybox");
    let m = manager(dir.path());
    let before = crate::common::snapshot_tree(dir.path());
    let secs: u64 = std::env::var("GEATS_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let start = Instant::now();
    let mut total = 0u64;
    loop {
        let mut runner = TestRunner::new(Config { cases: if secs > 0 { 2000 } else { cases() }, failure_persistence: None, ..Config::default() });
        let r = runner.run(&strategy, |v| check(&bytes(&v), &m));
        if let Err(e) = r {
            panic!("{name}: {e}");
        }
        total += u64::from(runner.config().cases);
        if start.elapsed() >= Duration::from_secs(secs) {
            break;
        }
    }
    assert_eq!(crate::common::snapshot_tree(dir.path()), before, "{name}: a dry run wrote something");
    let t: Vec<u64> = TALLY.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    eprintln!(
        "{name}: {total} cases in {:?}, no failure (so far in this process: {} refused, {} accepted; dry runs: {} ran, {} refused by the definition check)",
        start.elapsed(),
        t[0],
        t[1],
        t[2],
        t[3]
    );
}

#[test]
fn issue_11_fuzz_arbitrary_bytes() {
    if let Some(m) = crate::common::lxc::missing().filter(|w| w.why.contains("busybox")) {
        return crate::common::skip("issue_11_fuzz_arbitrary_bytes", &m);
    }
    run("arbitrary bytes", prop::collection::vec(any::<u8>(), 0..512), |b| b.clone());
}

#[test]
fn issue_11_fuzz_request_grammar() {
    if let Some(m) = crate::common::lxc::missing().filter(|w| w.why.contains("busybox")) {
        return crate::common::skip("issue_11_fuzz_request_grammar", &m);
    }
    run("request grammar", request(), |v| v.to_string().into_bytes());
}

#[test]
fn issue_11_fuzz_regressions() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path());
    for r in REGRESSIONS {
        if let Err(e) = check(r.as_bytes(), &m) {
            panic!("regression {r}: {e}");
        }
    }
}
