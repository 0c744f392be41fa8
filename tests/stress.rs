//! Issue 11, point 3: 8 workers send 1000 random lifecycle requests over
//! 10 real LXC containers through the agent binary, alternating the stdio
//! and MCollective transports. Every answer is one valid reply; the only
//! failures accepted are `busy` and `not_found`; all are answered within
//! 5 minutes; no two actions ever ran on one VM at once (journal spans);
//! then a last round defines every VM and starts every second one, and
//! `status` agrees exactly with `lxc-ls`; defining each again and
//! deprovisioning it leaves no config, volume, mount or loop device.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::lxc::{busybox_template, missing, run, Containers};
use crate::common::{check_envelope, leftovers, run_with_stdin, schema, skip, Env};

const WORKERS: usize = 8;
const REQUESTS: usize = 1000;
const VMS: usize = 10;

/// xorshift64*: enough randomness for a request mix, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

fn definition() -> Value {
    json!({"template": "busybox", "ram": 64})
}

/// One request through one transport; returns `Ok(data)` or
/// `Err(errorcode)`, and panics on anything that is not one valid reply.
fn send(env: &Env, worker: usize, mco: bool, req: &Value) -> Result<Value, String> {
    let action = req["action"].as_str().unwrap();
    if mco {
        let dir = env.root().join(format!("w{worker}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (rq, rp) = (dir.join("request.json"), dir.join("reply.json"));
        std::fs::write(&rq, req.to_string()).unwrap();
        std::fs::write(&rp, "").unwrap();
        let mut c = env.cmd();
        c.arg("agent").arg(&rq).arg(&rp);
        let out = run_with_stdin(c, b"");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("database is locked") && !stderr.contains("panicked"), "{req}: {stderr}");
        let text = std::fs::read_to_string(&rp).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{req} (mco): the reply file is not one reply ({e}): {text:?} {stderr}"));
        match out.status.code() {
            Some(0) => {
                schema::check_reply(action, &v);
                Ok(v)
            }
            Some(1) => {
                schema::check_error(&v);
                Err(v["errorcode"].as_str().unwrap().to_string())
            }
            other => panic!("{req} (mco): exit {other:?}: {text} {stderr}"),
        }
    } else {
        let (code, v, stderr) = env.stdio(&req.to_string());
        assert_eq!(code, 0, "{req}: {stderr}");
        assert!(!stderr.contains("database is locked") && !stderr.contains("panicked"), "{req}: {stderr}");
        check_envelope(action, &v);
        if v["success"] == json!(true) {
            Ok(v["data"].clone())
        } else {
            Err(v["errorcode"].as_str().unwrap().to_string())
        }
    }
}

fn lxc_ls(lxcpath: &Path, running: bool) -> BTreeSet<String> {
    let lp = lxcpath.to_string_lossy().into_owned();
    let mut argv = vec!["lxc-ls", "-P", &lp, "-1"];
    if running {
        argv.push("--running");
    }
    let (c, out, err) = run(&argv);
    assert_eq!(c, 0, "lxc-ls: {err}");
    out.split_whitespace().map(str::to_string).collect()
}

#[test]
fn issue_11_stress_1000_requests_8_workers_10_containers() {
    if let Some(why) = missing() {
        return skip("issue_11_stress_1000_requests_8_workers_10_containers", &why);
    }
    let env = Arc::new(Env::new());
    busybox_template(&env.root().join("var/lib/geats/templates"), "busybox");
    let names: Vec<String> = (0..VMS).map(|i| format!("gs{}v{i}", std::process::id())).collect();
    let lxcpath = env.root().join("var/lib/lxc");
    let guard = Containers::new(&lxcpath, &names.iter().map(String::as_str).collect::<Vec<_>>());
    let names = Arc::new(names);
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for w in 0..WORKERS {
        let (env, names, next) = (env.clone(), names.clone(), next.clone());
        handles.push(std::thread::spawn(move || {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((w as u64 + 1) * 0x1000_0001));
            let mut tally: BTreeMap<String, usize> = BTreeMap::new();
            while next.fetch_add(1, Ordering::SeqCst) < REQUESTS {
                let vm = &names[rng.next(VMS)];
                let req = match rng.next(10) {
                    0 | 1 => json!({"action": "define", "data": {"vm_name": vm, "definition": definition()}}),
                    2 | 3 => json!({"action": "start", "data": {"vm_name": vm}}),
                    4 | 5 => json!({"action": "stop", "data": {"vm_name": vm}}),
                    6 => json!({"action": "info", "data": {"vm_name": vm}}),
                    7 => json!({"action": "undefine", "data": {"vm_name": vm}}),
                    8 => json!({"action": "deprovision", "data": {"vm_name": vm}}),
                    _ => json!({"action": "status", "data": {}}),
                };
                let mco = rng.next(2) == 0;
                let key = match send(&env, w, mco, &req) {
                    Ok(_) => "ok".to_string(),
                    Err(code) => {
                        assert!(code == "busy" || code == "not_found", "{req}: failed with {code}");
                        code
                    }
                };
                *tally.entry(key).or_default() += 1;
            }
            tally
        }));
    }
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for h in handles {
        for (k, n) in h.join().expect("a worker failed") {
            *tally.entry(k).or_default() += n;
        }
    }
    let took = t0.elapsed();
    eprintln!("issue_11_stress: {REQUESTS} requests by {WORKERS} workers in {took:?}: {tally:?}");
    assert_eq!(tally.values().sum::<usize>(), REQUESTS);
    assert!(took < Duration::from_secs(300), "took {took:?}");
    // No two actions on one VM overlapped, and none was left open.
    let conn = rusqlite::Connection::open(env.root().join("var/lib/geats/geats.db")).unwrap();
    let mut st = conn.prepare("SELECT vm, started, ended FROM journal ORDER BY vm, started").unwrap();
    let rows: Vec<(String, String, Option<String>)> = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect();
    for w in rows.windows(2) {
        let ((v0, _, e0), (v1, s1, _)) = (&w[0], &w[1]);
        let e0 = e0.as_ref().unwrap_or_else(|| panic!("an action on {v0} never ended"));
        if v0 == v1 {
            assert!(e0 <= s1, "overlapping actions on {v0}: {w:?}");
        }
    }
    // The last round: every VM defined, every second one running.
    for (i, vm) in names.iter().enumerate() {
        env.ok("define", json!({"vm_name": vm, "definition": definition()}));
        env.ok(if i % 2 == 0 { "start" } else { "stop" }, json!({"vm_name": vm}));
    }
    let status = env.ok("status", json!({}));
    let listed: BTreeSet<String> = status["vms"].as_object().unwrap().keys().cloned().collect();
    let running: BTreeSet<String> = status["vms"].as_object().unwrap().iter().filter(|(_, v)| v["state"][0] == "running").map(|(k, _)| k.clone()).collect();
    assert_eq!(listed, lxc_ls(&lxcpath, false), "status and lxc-ls list different containers");
    assert_eq!(running, lxc_ls(&lxcpath, true), "status and lxc-ls --running disagree");
    assert_eq!(running.len(), VMS / 2);
    for vm in names.iter() {
        env.ok("define", json!({"vm_name": vm, "definition": definition()}));
        env.ok("deprovision", json!({"vm_name": vm}));
        assert!(!lxcpath.join(vm).exists(), "{vm}: the container directory is left");
        assert!(!env.root().join("var/lib/geats/rootfs").join(vm).exists(), "{vm}: the root volume is left");
    }
    assert_eq!(lxc_ls(&lxcpath, false), BTreeSet::new());
    assert_eq!(leftovers(env.root()), Vec::<String>::new());
    drop(guard);
}
