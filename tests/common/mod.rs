//! The test harness: a private geats root per test under a temp dir, and
//! helpers that run the built binary as the agent (stdio or MCollective
//! files) or the CLI, printing argv, status, stdout and stderr on failure.

#![allow(dead_code)]

pub mod docs;
pub mod lxc;
pub mod mco;
pub mod procs;
pub mod schema;
pub mod sshd;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// The geats binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_geats"))
}

/// The source tree (for `agent-ddl/`, `docs/`, fixtures).
pub fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A finished command's status, stdout and stderr, for assertion messages.
pub fn out_text(o: &Output) -> String {
    format!("status {:?}\nstdout:\n{}\nstderr:\n{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Run the CLI, expect success, and return its stdout (which never holds
/// an escape sequence).
pub fn cli_ok(env: &Env, args: &[&str]) -> String {
    let o = env.cli(args);
    assert!(o.status.success(), "geats {args:?}: {}", out_text(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    // No colour: stdout here is a pipe, and geats never colours anyway.
    assert!(!text.contains('\u{1b}'), "escape sequence in `geats {args:?}`: {text:?}");
    text
}

/// Are we root? Privileged tests print a reason and return otherwise.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// What this machine lacks that a test needs, with a precondition that
/// `scripts/test.sh` checks on its own: under CI a skip is accepted only
/// when its precondition really holds on the machine (`check`), so a test
/// that skips by mistake (a broken detection, a renamed tool) fails CI
/// instead of hiding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// Machine-checkable precondition: `not-root`, `absent:PATH`,
    /// `no-command:NAME` (not in any directory of geats's child PATH),
    /// `no-ruby-lib:NAME`, or `unverifiable` (never accepted under CI).
    pub check: String,
    /// What a human reads: what is missing and how to install it.
    pub why: String,
}

impl Missing {
    /// Not running as root.
    pub fn root(why: &str) -> Missing {
        Missing { check: "not-root".into(), why: why.into() }
    }

    /// A file (a tool, a device node) does not exist.
    pub fn file(path: &str, why: &str) -> Missing {
        Missing { check: format!("absent:{path}"), why: why.into() }
    }

    /// A program is in none of the directories of geats's child PATH.
    pub fn command(name: &str, why: &str) -> Missing {
        Missing { check: format!("no-command:{name}"), why: why.into() }
    }

    /// `ruby -e "require 'NAME'"` fails.
    pub fn ruby_lib(name: &str, why: &str) -> Missing {
        Missing { check: format!("no-ruby-lib:{name}"), why: why.into() }
    }

    /// A reason no script can check: always a failure under CI.
    pub fn unverifiable(why: &str) -> Missing {
        Missing { check: "unverifiable".into(), why: why.into() }
    }
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

/// `Missing::root` unless we are root.
pub fn need_root(why: &str) -> Option<Missing> {
    (!is_root()).then(|| Missing::root(why))
}

/// `Missing::command` for the first of `tools` geats would not find.
pub fn need_commands(tools: &[&str], why: &str) -> Option<Missing> {
    tools.iter().find(|t| !geats::sys::exec::have(t)).map(|t| Missing::command(t, &format!("{t} is not installed ({why})")))
}

/// Report a skipped test: `SKIPPED <test>: <reason>` on stderr, written
/// past libtest's capture so it shows in every run, and, when
/// `GEATS_TEST_SKIP_LOG` names a file, one line `test<TAB>check<TAB>reason`
/// appended to it for `scripts/test.sh` to list and check.
pub fn skip(test: &str, missing: &Missing) {
    // eprintln! would be captured (and dropped) for a passing test.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {}", missing.why);
    if let Some(log) = std::env::var_os("GEATS_TEST_SKIP_LOG") {
        record_skip(Path::new(&log), test, missing);
    }
}

/// Append one skip to the log `scripts/test.sh` reads.
pub fn record_skip(log: &Path, test: &str, missing: &Missing) {
    let line = format!("{test}\t{}\t{}\n", missing.check, missing.why.replace(['\t', '\n'], " "));
    let written = std::fs::OpenOptions::new().create(true).append(true).open(log).and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!("cannot record the skip of {test} in {}: {e}", log.display());
    }
}

/// A private geats installation: its own ROOT, config and database.
#[derive(Debug)]
pub struct Env {
    /// Holds the directory until drop.
    pub dir: tempfile::TempDir,
    /// Extra config TOML appended to the generated config.
    pub config: PathBuf,
}

impl Env {
    /// A fresh root with the embedded defaults.
    pub fn new() -> Env {
        Env::with_config("")
    }

    /// A fresh root with extra config TOML.
    pub fn with_config(toml: &str) -> Env {
        let dir = tempfile::Builder::new().prefix("geats-test-").tempdir().expect("tempdir");
        // Like /var/lib: traversable, so an unprivileged container's root
        // can reach its volumes (geats fences off each VM's own directory).
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod tempdir");
        let config = dir.path().join("geats.toml");
        std::fs::write(&config, toml).expect("write config");
        Env { dir, config }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A command for the binary with this env's root and config.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin());
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("GEATS_ROOT", self.root())
            .env("GEATS_CONFIG", &self.config);
        c
    }

    /// Run `geats agent --stdio` with `input`; returns (exit code, parsed
    /// stdout envelope, stderr).
    pub fn stdio(&self, input: &str) -> (i32, Value, String) {
        let mut c = self.cmd();
        c.args(["agent", "--stdio"]);
        let out = run_with_stdin(c, input.as_bytes());
        let code = out.status.code().unwrap_or(-1);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!("stdout is not one JSON envelope ({e}):\nstdin: {input}\nstatus: {:?}\nstdout: {stdout}\nstderr: {}", out.status, String::from_utf8_lossy(&out.stderr))
        });
        (code, v, String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Run an action through stdio and expect success; returns `data`.
    pub fn ok(&self, action: &str, data: Value) -> Value {
        let req = serde_json::json!({"action": action, "data": data});
        let (code, v, err) = self.stdio(&req.to_string());
        assert_eq!(code, 0, "exit code for {req}: stderr {err}");
        assert_eq!(v["success"], Value::Bool(true), "request {req} failed: {v}\nstderr: {err}");
        schema::check_reply(action, &v["data"]);
        v["data"].clone()
    }

    /// Run an action through stdio and expect failure; returns the envelope.
    pub fn fail(&self, action: &str, data: Value) -> Value {
        let req = serde_json::json!({"action": action, "data": data});
        let (code, v, err) = self.stdio(&req.to_string());
        assert_eq!(code, 0, "exit code for {req}: stderr {err}");
        assert_eq!(v["success"], Value::Bool(false), "request {req} should fail: {v}");
        check_envelope(action, &v);
        v
    }

    /// Run `geats agent REQ REPLY` (MCollective) with the request text;
    /// returns (exit code, reply file text, stderr).
    pub fn mco(&self, request: &str) -> (i32, String, String) {
        let req = self.root().join("mco-request.json");
        let rep = self.root().join("mco-reply.json");
        std::fs::write(&req, request).expect("write request");
        std::fs::write(&rep, "").expect("create reply");
        let mut c = self.cmd();
        c.arg("agent").arg(&req).arg(&rep);
        let out = run_with_stdin(c, b"");
        (
            out.status.code().unwrap_or(-1),
            std::fs::read_to_string(&rep).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Run the CLI with arguments; returns the output.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut c = self.cmd();
        c.args(args);
        run_with_stdin(c, b"")
    }
}

/// Validate a stdio envelope: a success's data against the action's reply
/// schema, a failure against the error schema.
pub fn check_envelope(action: &str, v: &Value) {
    match v["success"].as_bool() {
        Some(true) => {
            assert_eq!(v.as_object().map(|o| o.len()), Some(2), "extra envelope keys: {v}");
            if geats::schema::source(&format!("reply/{action}.json")).is_some() {
                schema::check_reply(action, &v["data"]);
            }
        }
        Some(false) => {
            let mut o = v.clone();
            if let Some(m) = o.as_object_mut() {
                m.remove("success");
            }
            schema::check_error(&o);
        }
        None => panic!("envelope without success: {v}"),
    }
}

/// Run a command feeding `input` on stdin.
pub fn run_with_stdin(mut c: Command, input: &[u8]) -> Output {
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    if let Some(mut sin) = child.stdin.take() {
        let _ = sin.write_all(input);
    }
    child.wait_with_output().expect("wait")
}

/// Every file under `dir` with its content (or "<dir>"), for before/after
/// comparisons. The SQLite database is compared by a dump, not by bytes.
pub fn snapshot_tree(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&p) else { continue };
        for e in rd.flatten() {
            let path = e.path();
            let rel = path.strip_prefix(dir).unwrap_or(&path).display().to_string();
            if rel.ends_with("-wal") || rel.ends_with("-shm") {
                continue;
            }
            if path.is_dir() {
                out.push((rel, "<dir>".into()));
                stack.push(path);
            } else if rel.ends_with(".db") {
                out.push((rel, db_dump(&path)));
            } else {
                out.push((rel, std::fs::read_to_string(&path).unwrap_or_else(|_| "<binary>".into())));
            }
        }
    }
    out.sort();
    out
}

/// A textual dump of every table of a geats database.
pub fn db_dump(path: &Path) -> String {
    let conn = rusqlite::Connection::open(path).expect("open db");
    let mut s = String::new();
    for t in ["vms", "volumes", "op_locks", "journal"] {
        let mut st = conn.prepare(&format!("SELECT * FROM {t} ORDER BY 1")).expect("prepare");
        let n = st.column_count();
        let rows = st
            .query_map([], |r| {
                let mut cells = Vec::new();
                for i in 0..n {
                    let v: rusqlite::types::Value = r.get(i)?;
                    cells.push(format!("{v:?}"));
                }
                Ok(cells.join("|"))
            })
            .expect("query");
        for r in rows {
            s.push_str(&format!("{t}: {}\n", r.expect("row")));
        }
    }
    s
}

/// The original project's dummy definition.
pub fn dummy_definition(name: &str) -> Value {
    serde_json::json!({"vm_type": "dummy", "name": name, "description": "Dummy VM",
        "network": [{"name": "eth0", "ipaddr": "192.168.1.200", "netmask": "255.255.255.0",
                     "gateway": "192.168.1.1", "hwaddr": "02:03:04:05:06:07"}],
        "storage": [{"name": "dummy", "type": "dummy"}]})
}

/// The mounts at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<geats::sys::mount::MountEntry> {
    let d = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    geats::sys::mount::mounts().into_iter().filter(|m| m.mount_point.starts_with(&d) || m.mount_point.starts_with(dir)).collect()
}

/// Every attached loop device and its backing file, as `losetup -a` shows
/// them: `/dev/loop1: [65024]:10010795 (/tmp/x/v.img (deleted))`.
pub fn loop_devices() -> Vec<(PathBuf, String)> {
    let Ok(out) = Command::new("losetup").arg("-a").output() else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (dev, rest) = l.split_once(':')?;
            let file = rest.find('(').map(|i| rest[i + 1..].trim_end().trim_end_matches(')').to_string()).unwrap_or_default();
            Some((PathBuf::from(dev.trim()), file))
        })
        .collect()
}

/// Mounts and loop devices under `dir`.
pub fn leftovers(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = mounts_under(dir).into_iter().map(|m| format!("mount {}", m.mount_point.display())).collect();
    let losetup = Command::new("losetup").arg("-a").output().expect("losetup -a");
    for line in String::from_utf8_lossy(&losetup.stdout).lines() {
        if line.contains(&*dir.to_string_lossy()) {
            out.push(format!("loop {line}"));
        }
    }
    out
}

/// Unmount everything under `dir` (deepest first) and detach loop devices
/// backed by files under it.
pub fn release_under(dir: &Path) {
    let mut mounts: Vec<PathBuf> = mounts_under(dir).into_iter().map(|m| m.mount_point).collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for m in mounts {
        let _ = Command::new("umount").arg("-l").arg(&m).status();
    }
    for (dev, file) in loop_devices() {
        if file.starts_with(&*dir.to_string_lossy()) {
            let _ = Command::new("losetup").arg("-d").arg(&dev).status();
        }
    }
}

