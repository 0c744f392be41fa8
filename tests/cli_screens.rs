//! The human CLI's screens (insta snapshots), `--json`, exit codes,
//! completions and the man page.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::common::{cli_ok, dummy_definition, out_text, run_with_stdin, Env};


/// A root with a running VM, a locked stopped one and one with a dir volume.
fn cli_env() -> Env {
    let env = Env::new();
    let web1 = json!({"vm_type": "dummy", "name": "web1", "description": "Front end", "ram": 512, "cpus": 2, "template": "debian12",
        "network": [{"name": "eth0", "bridge": "br0", "ipaddr": "10.0.0.5/24", "gateway": "10.0.0.1"}],
        "storage": [{"name": "root", "type": "dir"}]});
    env.ok("define", json!({"vm_name": "web1", "definition": web1}));
    env.ok("start", json!({"vm_name": "web1"}));
    env.ok("define", json!({"vm_name": "db1", "definition": dummy_definition("db1")}));
    env.ok("lock", json!({"vm_name": "db1"}));
    env
}

/// Filters for the screens: the temp root, sizes that depend on the host's
/// filesystem, and (with `host`) the host's own figures.
fn snapshot_settings(env: &Env, host: bool) -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(&regex_lite::escape(&env.root().display().to_string()), "[ROOT]");
    settings.add_filter(r"used [0-9.]+[BKMG] of", "used [SIZE] of");
    if host {
        settings.add_filter(r"(?m)^(Host|CPUs|Load|Swap):(\s+).*$", "$1:$2[HOST]");
        settings.add_filter(r"(?m)^Memory:(\s+).* total, .* used, .* free;", "Memory:$1[HOST] total, [HOST] used, [HOST] free;");
        settings.add_filter(r"(?m)^Storage:(\s+)(\S+): .* free of .*$", "Storage:$1$2: [HOST] free of [HOST]");
    }
    settings
}

/// The screens of `geats list`, `geats info` and `geats status`.
#[test]
fn cli_screens() {
    let env = cli_env();
    snapshot_settings(&env, false).bind(|| {
        insta::assert_snapshot!("cli_list", cli_ok(&env, &["list"]));
        insta::assert_snapshot!("cli_info", cli_ok(&env, &["info", "web1"]));
        insta::assert_snapshot!("cli_info_locked", cli_ok(&env, &["info", "db1"]));
        insta::assert_snapshot!("cli_start_again", cli_ok(&env, &["start", "web1"]));
        insta::assert_snapshot!("cli_stop_dry_run", cli_ok(&env, &["stop", "web1", "--dry-run"]));
    });
    snapshot_settings(&env, true).bind(|| {
        insta::assert_snapshot!("cli_status", cli_ok(&env, &["status"]));
    });
    // NO_COLOR changes nothing (there is no colour to turn off).
    let mut c = env.cmd();
    c.env("NO_COLOR", "1").arg("list");
    let o = run_with_stdin(c, b"");
    assert_eq!(String::from_utf8(o.stdout).unwrap(), cli_ok(&env, &["list"]));
}

/// `--json` wherever a table is printed, with the same facts as the table.
#[test]
fn cli_json_everywhere() {
    let env = cli_env();
    let list: Value = serde_json::from_str(&cli_ok(&env, &["list", "--json"])).unwrap();
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let web1 = rows.iter().find(|r| r["name"] == "web1").unwrap();
    assert_eq!((web1["state"].clone(), web1["locked"].clone(), web1["ram"].clone()), (json!(["running", "running"]), json!(false), json!(512)));
    assert_eq!(rows.iter().find(|r| r["name"] == "db1").unwrap()["locked"], true);
    let info: Value = serde_json::from_str(&cli_ok(&env, &["info", "web1", "--json"])).unwrap();
    crate::common::schema::check_reply("info", &info);
    let status: Value = serde_json::from_str(&cli_ok(&env, &["status", "--json"])).unwrap();
    crate::common::schema::check_reply("status", &status);
    let history: Value = serde_json::from_str(&cli_ok(&env, &["history", "--json"])).unwrap();
    assert!(history.as_array().unwrap().len() >= 4);
    let templates: Value = serde_json::from_str(&cli_ok(&env, &["templates", "--json"])).unwrap();
    assert!(templates.is_array());
    let start: Value = serde_json::from_str(&cli_ok(&env, &["start", "web1", "--json"])).unwrap();
    crate::common::schema::check_reply("start", &start);
}

/// Exit codes of the CLI are the documented classes.
#[test]
fn cli_exit_codes() {
    let env = cli_env();
    let code = |args: &[&str]| env.cli(args).status.code();
    assert_eq!(code(&["info", "nosuch"]), Some(1));
    assert_eq!(code(&["undefine", "db1"]), Some(1)); // locked
    assert_eq!(code(&["start", "bad/name"]), Some(4));
    assert_eq!(code(&["migrate", "web1", "host2"]), Some(1));
    let o = env.cli(&["info", "nosuch"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("[not_found]"), "{}", out_text(&o));
    // The man page documents them.
    let man = cli_ok(&env, &["man"]);
    for line in geats::cli::EXIT_CODES.lines() {
        let (c, text) = line.split_once("  ").unwrap();
        assert!(man.contains(&format!("\\fB{c}\\fR")) && man.contains(&text.replace('-', "\\-")), "man page lacks exit code {c}");
    }
}

/// `geats completions bash` is a script bash accepts; `geats man` is roff.
#[test]
fn cli_completions_and_man() {
    let env = Env::new();
    let script = cli_ok(&env, &["completions", "bash"]);
    assert!(script.contains("complete -F _geats") && script.contains("provision"), "{script}");
    let path = env.root().join("geats.bash");
    std::fs::write(&path, &script).unwrap();
    let o = Command::new("bash").arg("-c").arg(r#"source "$1" && complete -p geats"#).arg("bash").arg(&path).output().unwrap();
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("_geats"), "{}", out_text(&o));
    for shell in ["zsh", "fish"] {
        assert!(!cli_ok(&env, &["completions", shell]).is_empty());
    }
    assert_eq!(env.cli(&["completions", "tcsh"]).status.code(), Some(2), "clap refuses an unknown shell");
    let man = cli_ok(&env, &["man"]);
    assert!(man.contains(".TH geats 1") && man.contains(".SH SYNOPSIS") && man.contains(".SH \"EXIT STATUS\""), "{man}");
    for cmd in ["list", "provision", "agent", "ddl", "completions"] {
        assert!(man.contains(&format!("geats\\-{cmd}")) || man.contains(cmd), "man page lacks {cmd}");
    }
    // groff renders it without warnings where groff is installed.
    if Path::new("/usr/bin/groff").is_file() {
        let mut c = Command::new("groff");
        c.args(["-man", "-Tutf8", "-ww", "-z"]);
        let o = run_with_stdin(c, man.as_bytes());
        assert!(o.status.success() && o.stderr.is_empty(), "{}", out_text(&o));
    }
}

/// Issue 13, acceptance 4: a kept VM (undefined, volumes kept) is visible:
/// `geats list --all` shows it with the state `kept` (plain `list` does
/// not), and `status` carries it under `kept`, never inside `vms`.
#[test]
fn issue_13_kept_vms_are_visible() {
    let env = cli_env();
    env.ok("stop", json!({"vm_name": "web1"}));
    env.ok("undefine", json!({"vm_name": "web1"}));
    // Plain list: defined VMs only, as before.
    let list = cli_ok(&env, &["list"]);
    assert!(!list.contains("web1"), "{list}");
    // --all: the kept VM too, with the state kept.
    let all = cli_ok(&env, &["list", "--all"]);
    let row = all.lines().find(|l| l.starts_with("web1 ")).unwrap_or_else(|| panic!("web1 missing: {all}"));
    assert_eq!(row.split_whitespace().nth(1), Some("kept"), "{all}");
    assert!(all.lines().any(|l| l.starts_with("db1 ") && l.contains("stopped")), "{all}");
    let rows: Value = serde_json::from_str(&cli_ok(&env, &["list", "--all", "--json"])).unwrap();
    let web1 = rows.as_array().unwrap().iter().find(|r| r["name"] == "web1").unwrap();
    assert_eq!(web1["state"], json!(["kept", "kept"]));
    // status: under `kept` with its definition and kept volumes, not in `vms`.
    let s = env.ok("status", json!({}));
    assert!(s["vms"].get("web1").is_none(), "{s:#}");
    assert_eq!(s["kept"]["web1"]["definition"]["name"], "web1", "{s:#}");
    assert_eq!(s["kept"]["web1"]["volumes"], json!(["root"]), "{s:#}");
    assert!(s["vms"].get("db1").is_some() && s["kept"].get("db1").is_none(), "{s:#}");
    let cli_status: Value = serde_json::from_str(&cli_ok(&env, &["status", "--json"])).unwrap();
    assert_eq!(cli_status["kept"], s["kept"]);
    // deprovision destroys the kept data: gone from both.
    env.ok("deprovision", json!({"vm_name": "web1"}));
    assert_eq!(env.ok("status", json!({}))["kept"], json!({}));
    assert!(!cli_ok(&env, &["list", "--all"]).contains("web1"));
}

/// `geats list | head -0`: a reader that closed the pipe ends the listing,
/// not with a panic (`println!` panics on a broken pipe).
#[test]
fn issue_15_closed_stdout_is_not_a_panic() {
    let env = cli_env();
    for args in [&["list"][..], &["info", "web1"], &["status"], &["events"]] {
        let (reader, writer) = nix::unistd::pipe().expect("pipe");
        drop(reader);
        let out = env.cmd().args(args).stdout(std::process::Stdio::from(writer)).output().expect("run geats");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "geats {args:?} panicked on a closed stdout: {err}");
        assert_eq!(out.status.code(), Some(0), "geats {args:?}: {err}");
    }
}
