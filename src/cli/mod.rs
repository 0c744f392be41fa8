//! The human CLI, successor of the old `vmctl`: clap structs and a short
//! function per command. Every command that acts builds the same
//! [`crate::request::Request`] the agent builds and goes through the same
//! validation and [`Manager`].

mod table;

/// Print text on stdout as is (for `geats agent --help`, answered before clap).
pub use table::print_text;

use std::io::Read;
use std::os::fd::AsFd;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use crate::config::Config;
use crate::error::{Error, ExitClass};
use crate::manager::Manager;
use crate::names::VmName;
use crate::request::{self, RequestError};

const AFTER_HELP: &str = "Exit codes: 0 ok, 1 action failed, 2 unknown action, 3 missing data, 4 invalid data, 5 other error.\nOutput has no colour. `geats man` prints the manual.";

/// geats: a local resource manager for LXC containers and other VMs.
#[derive(Debug, Parser)]
#[command(name = "geats", version, about, long_about = None, propagate_version = true, after_help = AFTER_HELP)]
pub struct Cli {
    /// Config file (default: $GEATS_CONFIG, else ROOT/etc/geats/geats.toml, else the embedded defaults).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// More log output on stderr (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// `geats [--config P] [-v|-q] list [--json] [--all]` read without
    /// clap, which builds its whole command tree (every subcommand and
    /// option) to parse any command line: about half a million
    /// instructions, a third of what `geats list` cost (issue 15: `list`
    /// no slower than `status`). Every other command line, and any form
    /// of these clap would read differently (repeated flags, `-vq`,
    /// `--`, a value that looks like an option), returns `None` and goes
    /// to clap. `args` excludes argv\[0\].
    pub fn parse_list(args: &[String]) -> Option<Cli> {
        let (mut config, mut verbose, mut quiet, mut json, mut all, mut list) = (None, 0u8, false, false, false, false);
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let seen = match a.as_str() {
                // After the subcommand clap counts these afresh (a
                // global's value from the subcommand wins): left to clap.
                "-v" | "--verbose" if !list => {
                    verbose = verbose.checked_add(1)?;
                    false
                }
                "-q" | "--quiet" if !list => std::mem::replace(&mut quiet, true),
                "--config" if !list => {
                    let v = it.next().filter(|v| !v.starts_with('-') && !v.is_empty())?;
                    config.replace(PathBuf::from(v)).is_some()
                }
                "list" => std::mem::replace(&mut list, true),
                "--json" if list => std::mem::replace(&mut json, true),
                "--all" if list => std::mem::replace(&mut all, true),
                _ => match a.strip_prefix("--config=") {
                    Some(v) if !list && !v.is_empty() => config.replace(PathBuf::from(v)).is_some(),
                    _ => return None,
                },
            };
            if seen {
                return None;
            }
        }
        list.then_some(Cli { config, verbose, quiet, command: Command::List { json, all } })
    }
}

/// Options of commands that change something.
#[derive(Debug, clap::Args)]
pub struct ActOpts {
    /// Validate and show the steps without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the reply as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List VMs: name, state, lock, type, IP, memory.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also list kept VMs (undefined, volumes kept), with the state `kept`.
        #[arg(long)]
        all: bool,
    },
    /// Show one VM.
    Info {
        /// The VM.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Print the generated hypervisor config (e.g. the LXC config).
        #[arg(long = "config", id = "show_config")]
        show_config: bool,
    },
    /// Host figures and every VM's state.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create or update a VM from a JSON or YAML definition file ("-": stdin).
    Define {
        /// The VM.
        name: String,
        /// The definition file.
        file: PathBuf,
        /// Acting options.
        #[command(flatten)]
        opts: ActOpts,
    },
    /// Define, format the volumes and install the template afresh.
    Provision {
        /// The VM.
        name: String,
        /// The definition file.
        file: PathBuf,
        /// Acting options.
        #[command(flatten)]
        opts: ActOpts,
    },
    /// Change some keys of a VM's definition: `geats set web1 ram=256 cpus=2`.
    ///
    /// A partial define: keys are `ram` (MB), `cpus` and `description`;
    /// `none` removes a limit. A running VM takes `ram` and `cpus` at once;
    /// what cannot change live waits for its next start (listed as pending).
    Set {
        /// The VM.
        name: String,
        /// KEY=VALUE pairs.
        #[arg(required = true, value_name = "KEY=VALUE")]
        settings: Vec<String>,
        /// Acting options.
        #[command(flatten)]
        opts: ActOpts,
    },
    /// Start every VM whose desired state is running and that does not run
    /// (at boot: contrib/geats-reconcile.service), in boot_priority order.
    ///
    /// Exit 0 when every VM it should start runs, 1 when a start failed.
    Reconcile {
        /// Acting options.
        #[command(flatten)]
        opts: ActOpts,
    },
    /// Start a VM.
    Start(VmArgs),
    /// Power a VM off at once.
    Stop(VmArgs),
    /// Ask a VM to halt cleanly.
    Shutdown(VmArgs),
    /// Reboot a VM.
    Reboot(VmArgs),
    /// Remove a VM from the hypervisor, keeping its volumes unless transient.
    Undefine(VmArgs),
    /// Undefine a VM and destroy its volumes.
    Deprovision(VmArgs),
    /// Set the admin lock (refuses undefine and deprovision).
    Lock(VmArgs),
    /// Clear the admin lock.
    Unlock(VmArgs),
    /// Take a snapshot of every volume of a VM (`--delete`: remove one;
    /// `--due`: take the scheduled snapshots that are due, for a timer).
    Snapshot {
        /// The VM.
        #[arg(required_unless_present = "due")]
        name: Option<String>,
        /// The snapshot's name.
        #[arg(required_unless_present = "due")]
        snapshot: Option<String>,
        /// Delete the snapshot instead.
        #[arg(long, conflicts_with = "due")]
        delete: bool,
        /// Snapshot every VM whose definition's `snapshots.schedule` is due, named auto-YYYYMMDD-HHMM.
        #[arg(long, conflicts_with_all = ["name", "snapshot"])]
        due: bool,
        /// Acting options.
        #[command(flatten)]
        opts: ActOpts,
    },
    /// Bring every volume of a VM back to a snapshot (a running VM is shut down and started again).
    Restore {
        /// The VM.
        name: String,
        /// The snapshot.
        snapshot: String,
        /// Acting options.
        #[command(flatten)]
        opts: ActOpts,
    },
    /// List a VM's snapshots, oldest first.
    Snapshots {
        /// The VM.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move a VM to another host: shut it down, stream it to `geats receive` there, start it there if it ran, deprovision it here.
    Migrate {
        /// The VM.
        name: String,
        /// The destination host (replaces {destination} in `[migration] command`).
        destination: String,
        /// Acting options.
        #[command(flatten)]
        opts: ActOpts,
    },
    /// Write a stopped VM's stream (definition and volumes) to FILE ("-": stdout); the VM stays.
    Export {
        /// The VM.
        name: String,
        /// The file to write ("-": stdout).
        file: PathBuf,
        /// Shut a running VM down first (it stays stopped) instead of refusing.
        #[arg(long)]
        stop: bool,
        /// Print the reply as JSON (on stderr when FILE is "-").
        #[arg(long)]
        json: bool,
    },
    /// Define a VM with its data from a stream written by `geats export` ("-": stdin).
    Import {
        /// The stream file ("-": stdin).
        file: PathBuf,
        /// Print the reply as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Receive a VM stream on stdin from `geats migrate` on another host; answers JSON lines on stdout.
    Receive,
    /// Show the operation journal.
    History {
        /// Only this VM.
        name: Option<String>,
        /// How many entries.
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the event feed: lifecycle changes, failures and drifts, oldest first.
    Events {
        /// Only events with a greater seq (a previous run's last seq).
        #[arg(long, default_value_t = 0, value_name = "N")]
        since: i64,
        /// Keep polling and print events as they come (Ctrl-C ends).
        #[arg(long)]
        follow: bool,
        /// Seconds between polls with --follow.
        #[arg(long, default_value_t = 1.0, value_name = "SECS")]
        interval: f64,
        /// Print JSON: the reply, or with --follow one event per line.
        #[arg(long)]
        json: bool,
    },
    /// List the OS templates.
    Templates {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a lost database from the VM record files.
    Recover,
    /// Compare the database with the VM types and the storage and list
    /// every difference. Exit 0: none; 1: some; 2 or more: the check
    /// could not run.
    Check {
        /// Print a JSON array of `{vm, kind, detail}`.
        #[arg(long)]
        json: bool,
        /// Fix what can be fixed safely (finish or undo interrupted
        /// actions, write missing VM configs and record files again from
        /// the database), then say what is left.
        #[arg(long)]
        repair: bool,
    },
    /// Attach to a VM's console.
    Console {
        /// The VM.
        name: String,
    },
    /// Run a command inside a VM.
    Exec {
        /// The VM.
        name: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run one request as an MCollective/Choria agent or a stdio JSON agent.
    ///
    /// `geats agent REQUEST_FILE REPLY_FILE [PROTOCOL]` (MCollective's
    /// implemented_by, Choria's external agent protocol), or `geats agent
    /// --stdio` (request on stdin, envelope on stdout). The binary named
    /// `geats_jsonagent` is `geats agent --stdio`.
    #[command(disable_help_flag = true)]
    Agent {
        /// [--config PATH] (--stdio | REQUEST_FILE REPLY_FILE [PROTOCOL])
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Write the MCollective and Choria DDLs and the Ruby agent stub.
    ///
    /// They are generated from the request and reply schemas, so they cannot
    /// drift from what geats accepts. Without --out they are printed.
    Ddl {
        /// Directory to write geats.ddl, geats.json, geats.rb and geats/systemu_fix.rb into.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) generated from this command line.
    Man,
    /// ssh to a VM's primary IP.
    Ssh {
        /// [USER@]NAME
        target: String,
        /// Further ssh arguments.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

/// A VM name plus the acting options.
#[derive(Debug, clap::Args)]
pub struct VmArgs {
    /// The VM.
    pub name: String,
    /// Acting options.
    #[command(flatten)]
    pub opts: ActOpts,
}

/// Run the CLI; returns the exit code.
pub fn run(cli: Cli) -> u8 {
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("geats: error: {} [{}]", e.message(), e.code());
            let c = e.code().exit_class();
            if c == ExitClass::Ok {
                1
            } else {
                c.code()
            }
        }
    }
}

fn caller() -> String {
    let user = std::env::var("SUDO_USER").or_else(|_| std::env::var("USER")).unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

fn vm_name(s: &str) -> Result<VmName, Error> {
    VmName::new(s).map_err(|e| RequestError::invalid("/vm_name", e).into())
}

fn read_definition(file: &PathBuf) -> Result<Value, Error> {
    let mut text = String::new();
    if file.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text).map_err(|source| RequestError::Unreadable { path: "<stdin>".into(), source })?;
    } else {
        text = std::fs::read_to_string(file).map_err(|e| RequestError::invalid("/definition", format!("cannot read {}: {e}", file.display())))?;
    }
    // JSON first; YAML (a superset) for the original's example files.
    match serde_json::from_str::<Value>(&text) {
        Ok(v) => Ok(v),
        Err(json_err) => serde_norway::from_str::<Value>(&text).map_err(|yaml_err| {
            RequestError::invalid("/definition", format!("{} is neither JSON ({json_err}) nor YAML ({yaml_err})", file.display())).into()
        }),
    }
}

fn act(m: &Manager, action: &str, mut data: Value, opts: &ActOpts) -> Result<u8, Error> {
    if opts.dry_run {
        data["dry_run"] = Value::Bool(true);
    }
    let req = request::parse(action, data, Some(caller()), None)?;
    let reply = m.execute(&req)?;
    if opts.json {
        table::print_json(&reply);
    } else {
        table::print_action(action, req.action.vm(), &reply);
    }
    Ok(0)
}

fn dispatch(cli: Cli) -> Result<u8, Error> {
    // Commands that need no config or database.
    match &cli.command {
        // main.rs runs the agent before clap; this arm keeps it in --help
        // and the man page, and works the same if reached.
        Command::Agent { args } => {
            let mut a = crate::agent::AgentArgs::parse(args).map_err(|e| RequestError::invalid("/", e))?;
            if a.config.is_none() {
                a.config = cli.config.clone();
            }
            return Ok(crate::agent::run(&a));
        }
        Command::Ddl { out } => return ddl(out.as_deref()),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut buf = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "geats", &mut buf);
            table::print_bytes(&buf);
            return Ok(0);
        }
        Command::Man => {
            let mut buf = Vec::new();
            man_page(&mut buf).map_err(|e| Error::Internal(format!("cannot render the man page: {e}")))?;
            table::print_bytes(&buf);
            return Ok(0);
        }
        _ => {}
    }
    let config = Config::load(cli.config.as_deref())?;
    let m = Manager::new(config);
    match cli.command {
        Command::List { json, all } => {
            let mut rows = m.list()?;
            if all {
                rows.extend(m.list_kept()?);
                rows.sort_by(|a, b| a.name.cmp(&b.name));
            }
            if json {
                table::print_json(&rows);
            } else {
                table::print_list(&rows);
            }
            Ok(0)
        }
        Command::Info { name, json, show_config } => {
            let vm = vm_name(&name)?;
            if show_config {
                let (_rec, vmt) = m.vm_type_of(&vm)?;
                match vmt.config_text(&vm) {
                    Some(t) => table::print_text(&t),
                    None => return Err(Error::NotSupported(format!("VM {vm}'s type has no config file to show"))),
                }
                return Ok(0);
            }
            let info = m.info(&vm)?;
            if json {
                table::print_json(&info);
            } else {
                table::print_info(&info);
            }
            Ok(0)
        }
        Command::Status { json } => {
            let s = m.status()?;
            if json {
                table::print_json(&s);
            } else {
                table::print_status(&s);
            }
            Ok(0)
        }
        Command::Define { name, file, opts } => {
            let def = read_definition(&file)?;
            act(&m, "define", json!({"vm_name": name, "definition": def}), &opts)
        }
        Command::Provision { name, file, opts } => {
            let def = read_definition(&file)?;
            act(&m, "provision", json!({"vm_name": name, "definition": def}), &opts)
        }
        Command::Set { name, settings, opts } => {
            let vm = vm_name(&name)?;
            let (rec, _vmt) = m.vm_type_of(&vm)?;
            let mut def = serde_json::to_value(&rec.definition).map_err(|e| Error::Internal(format!("cannot serialise the definition of {vm}: {e}")))?;
            for kv in &settings {
                set_key(&mut def, kv)?;
            }
            act(&m, "define", json!({"vm_name": name, "definition": def}), &opts)
        }
        Command::Reconcile { opts } => {
            let mut data = json!({});
            if opts.dry_run {
                data["dry_run"] = Value::Bool(true);
            }
            let req = request::parse("reconcile", data, Some(caller()), None)?;
            let reply = m.execute(&req)?;
            let failed = matches!(&reply, crate::manager::Reply::Reconcile(r) if !r.failed.is_empty());
            if opts.json {
                table::print_json(&reply);
            } else {
                table::print_action("reconcile", None, &reply);
            }
            Ok(u8::from(failed))
        }
        Command::Start(a) => act(&m, "start", json!({"vm_name": a.name}), &a.opts),
        Command::Stop(a) => act(&m, "stop", json!({"vm_name": a.name}), &a.opts),
        Command::Shutdown(a) => act(&m, "shutdown", json!({"vm_name": a.name}), &a.opts),
        Command::Reboot(a) => act(&m, "reboot", json!({"vm_name": a.name}), &a.opts),
        Command::Undefine(a) => act(&m, "undefine", json!({"vm_name": a.name}), &a.opts),
        Command::Deprovision(a) => act(&m, "deprovision", json!({"vm_name": a.name}), &a.opts),
        Command::Lock(a) => act(&m, "lock", json!({"vm_name": a.name}), &a.opts),
        Command::Unlock(a) => act(&m, "unlock", json!({"vm_name": a.name}), &a.opts),
        Command::Snapshot { name, snapshot, delete, due, opts } => {
            if due {
                return snapshot_due(&m, &opts);
            }
            let action = if delete { "delete_snapshot" } else { "snapshot" };
            act(&m, action, json!({"vm_name": name, "snapshot": snapshot}), &opts)
        }
        Command::Restore { name, snapshot, opts } => act(&m, "restore", json!({"vm_name": name, "snapshot": snapshot}), &opts),
        Command::Snapshots { name, json } => {
            let vm = vm_name(&name)?;
            let list = m.snapshots(&vm)?;
            if json {
                table::print_json(&list);
            } else {
                table::print_snapshots(&list);
            }
            Ok(0)
        }
        Command::Migrate { name, destination, opts } => act(&m, "migrate", json!({"vm_name": name, "vm_destination": destination}), &opts),
        Command::Export { name, file, stop, json } => export(&m, &name, &file, stop, json),
        Command::Import { file, json } => import(&m, &file, json),
        Command::Receive => {
            let mut input = std::io::BufReader::with_capacity(1 << 20, stream_fd(std::io::stdin().as_fd())?);
            match m.receive(&mut input, true, &mut |v| table::print_json_line(v)) {
                Ok(reply) => {
                    let mut v = reply.to_json();
                    v["success"] = Value::Bool(true);
                    v["phase"] = Value::from(if matches!(reply, crate::manager::Reply::DryRun(_)) { "checked" } else { "committed" });
                    if !matches!(reply, crate::manager::Reply::DryRun(_)) {
                        table::print_json_line(&v);
                    }
                    Ok(0)
                }
                Err(e) => {
                    tracing::error!("receive: {}", e.message());
                    table::print_json_line(&json!({"success": false, "errorcode": e.code().as_str(), "message": e.message(), "retryable": e.code().retryable()}));
                    Ok(e.code().exit_class().code())
                }
            }
        }
        Command::History { name, limit, json } => {
            let vm = name.as_deref().map(vm_name).transpose()?;
            let entries = m.history(vm.as_ref(), limit)?;
            if json {
                table::print_json(&entries);
            } else {
                table::print_history(&entries);
            }
            Ok(0)
        }
        Command::Events { since, follow, interval, json } => events(&m, since, follow, interval, json),
        Command::Templates { json } => {
            let t = crate::template::available(&m.config().template_dir);
            if json {
                table::print_json(&t);
            } else {
                for n in t {
                    table::print_text(&format!("{n}\n"));
                }
            }
            Ok(0)
        }
        Command::Recover => {
            let names = m.recover()?;
            table::print_text(&format!("recovered {} VM(s){}{}\n", names.len(), if names.is_empty() { "" } else { ": " }, names.join(", ")));
            Ok(0)
        }
        Command::Check { json, repair } => {
            let found = if repair { m.check_repair() } else { m.check() };
            let diffs = match found {
                Ok(d) => d,
                // 1 means "differences": a check that cannot run is 2 or more.
                Err(e) => {
                    eprintln!("geats: error: {} [{}]", e.message(), e.code());
                    return Ok(e.code().exit_class().code().max(2));
                }
            };
            if json {
                table::print_json(&diffs);
            } else {
                table::print_check(&diffs);
            }
            Ok(u8::from(diffs.iter().any(|d| d.repaired != Some(true))))
        }
        Command::Console { name } => {
            let vm = vm_name(&name)?;
            let (_rec, vmt) = m.vm_type_of(&vm)?;
            let argv = vmt.console_command(&vm).ok_or_else(|| Error::NotSupported(format!("VM {vm}'s type has no console")))?;
            interactive(argv)
        }
        Command::Exec { name, command } => {
            let vm = vm_name(&name)?;
            let (_rec, vmt) = m.vm_type_of(&vm)?;
            let argv = vmt.exec_command(&vm, &command).ok_or_else(|| Error::NotSupported(format!("VM {vm}'s type cannot run commands")))?;
            interactive(argv)
        }
        Command::Agent { .. } | Command::Ddl { .. } | Command::Completions { .. } | Command::Man => Ok(0),
        Command::Ssh { target, args } => {
            let (user, name) = match target.split_once('@') {
                Some((u, n)) => (Some(u.to_string()), n.to_string()),
                None => (None, target.clone()),
            };
            if let Some(u) = &user {
                if u.is_empty() || !u.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) || u.starts_with('-') {
                    return Err(RequestError::invalid("/user", format!("user {u:?} is not a valid user name")).into());
                }
            }
            let vm = vm_name(&name)?;
            let (rec, vmt) = m.vm_type_of(&vm)?;
            let ip = vmt
                .primary_ip(&vm, &rec.definition.network)
                .ok_or_else(|| Error::InvalidState { vm: vm.clone(), action: "ssh", reason: "it has no known IP address (is it running?)".into() })?;
            let mut argv = vec!["ssh".to_string()];
            argv.extend(args);
            argv.push(match user {
                Some(u) => format!("{u}@{ip}"),
                None => ip,
            });
            interactive(argv)
        }
    }
}

/// Apply one `KEY=VALUE` of `geats set` to a definition (as JSON, so the
/// define that follows validates it like any other).
fn set_key(def: &mut Value, kv: &str) -> Result<(), Error> {
    let Some((key, value)) = kv.split_once('=') else {
        return Err(RequestError::invalid("/definition", format!("{kv:?} is not KEY=VALUE (keys: ram, cpus, description)")).into());
    };
    let pointer = format!("/definition/{key}");
    let new = match (key, value) {
        ("ram" | "cpus", "none") => Value::Null,
        ("ram" | "cpus", v) => {
            let n: u64 = v.parse().map_err(|_| RequestError::invalid(&pointer, format!("{v:?} is not a whole number (or none)")))?;
            json!(n)
        }
        ("description", v) => json!(v),
        (other, _) => return Err(RequestError::invalid(&pointer, format!("geats set does not change {other:?} (keys: ram, cpus, description); use geats define with a file")).into()),
    };
    if let Some(obj) = def.as_object_mut() {
        if new.is_null() {
            obj.remove(key);
        } else {
            obj.insert(key.to_string(), new);
        }
    }
    Ok(())
}

/// `geats snapshot --due`: one line per snapshot taken; exit 1 if any failed.
fn snapshot_due(m: &Manager, opts: &ActOpts) -> Result<u8, Error> {
    if opts.dry_run {
        return Err(RequestError::invalid("/dry_run", "snapshot --due has no dry run").into());
    }
    let mut failed = 0;
    let mut out = Vec::new();
    for d in m.snapshot_due(Some(caller()))? {
        match d.result {
            Ok(reply) => {
                if opts.json {
                    out.push(json!({"vm_name": d.vm, "reply": reply.to_json()}));
                } else {
                    table::print_action("snapshot", Some(&d.vm), &reply);
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("geats: error: {}: {} [{}]", d.vm, e.message(), e.code());
                out.push(json!({"vm_name": d.vm, "errorcode": e.code().as_str(), "message": e.message()}));
            }
        }
    }
    if opts.json {
        table::print_json(&out);
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

/// `geats events`: one page, or with `follow` every event as it comes.
/// Each poll is the agent's `events` request, validated the same way.
fn events(m: &Manager, mut since: i64, follow: bool, interval: f64, json: bool) -> Result<u8, Error> {
    if !(0.05..=3600.0).contains(&interval) {
        return Err(RequestError::invalid("/interval", format!("{interval} is not a number of seconds from 0.05 to 3600")).into());
    }
    loop {
        let req = request::parse("events", json!({"since": since}), Some(caller()), None)?;
        let crate::manager::Reply::Events(page) = m.execute(&req)? else {
            return Err(Error::Internal("events answered something else".into()));
        };
        if page.gap {
            tracing::warn!(since, "events after {since} were pruned (see [events] in the config); showing what is kept");
        }
        match (follow, json) {
            (false, true) => table::print_json(&page),
            (true, true) => page.events.iter().for_each(table::print_json_line),
            (_, false) => page.events.iter().for_each(table::print_event),
        }
        // A page that ended at the limit: ask again at once.
        let full = page.events.len() as u32 >= request::Action::EVENTS_LIMIT;
        since = page.last_seq;
        if !follow {
            return Ok(0);
        }
        if !full {
            std::thread::sleep(std::time::Duration::from_secs_f64(interval));
        }
    }
}

/// `geats export NAME FILE|-`.
fn export(m: &Manager, name: &str, file: &std::path::Path, stop: bool, json: bool) -> Result<u8, Error> {
    let vm = vm_name(name)?;
    let to_stdout = file.as_os_str() == "-";
    // A device or a pipe (`/dev/null`, `/dev/stdout`, a FIFO) is written
    // to as by `>`: a temp file renamed over it would replace the host's.
    let to_stream = !to_stdout
        && std::fs::metadata(file).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_char_device() || m.file_type().is_fifo()
        });
    let reply = if to_stream {
        let f = std::fs::OpenOptions::new().write(true).open(file).map_err(crate::error::io("open", file))?;
        let mut out = std::io::BufWriter::with_capacity(64 << 10, f);
        let r = m.export(&vm, stop, &file.display().to_string(), &mut out)?;
        std::io::Write::flush(&mut out).map_err(crate::error::io("write", file))?;
        r
    } else if to_stdout {
        // Frames are written whole; a smaller buffer only gathers the
        // small pieces between them, so the reader gets each frame as
        // soon as it is full.
        let out = table::stdout_raw().map_err(crate::error::io("duplicate", std::path::Path::new("<stdout>")))?;
        crate::stream::grow_pipe(out.as_fd());
        let mut out = std::io::BufWriter::with_capacity(64 << 10, out);
        let r = m.export(&vm, stop, "<stdout>", &mut out)?;
        std::io::Write::flush(&mut out).map_err(crate::error::io("write", std::path::Path::new("<stdout>")))?;
        r
    } else {
        // Written beside the target and renamed, so a failed export
        // leaves no half file under the name.
        let tmp = file.with_extension("geats-export-partial");
        let f = std::fs::File::create(&tmp).map_err(crate::error::io("create", &tmp))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
        let r = m.export(&vm, stop, &file.display().to_string(), &mut out).and_then(|r| {
            let f = out.into_inner().map_err(|e| crate::error::io("write", &tmp)(e.into_error()))?;
            f.sync_all().map_err(crate::error::io("sync", &tmp))?;
            std::fs::rename(&tmp, file).map_err(crate::error::io("rename", &tmp))?;
            Ok(r)
        });
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r?
    };
    let crate::manager::Reply::Migrate(r) = &reply else { return Ok(0) };
    let text = if json { reply.to_json().to_string() } else { table::migrated(r) };
    if to_stdout {
        eprintln!("{text}");
    } else {
        table::print_text(&format!("{text}\n"));
    }
    Ok(0)
}

/// Standard input as a file for the VM stream (read through one large
/// buffer), a pipe grown to take a few frames.
fn stream_fd(fd: std::os::fd::BorrowedFd<'_>) -> Result<std::fs::File, Error> {
    let f = std::fs::File::from(fd.try_clone_to_owned().map_err(crate::error::io("duplicate", std::path::Path::new("<stdio>")))?);
    crate::stream::grow_pipe(std::os::fd::AsFd::as_fd(&f));
    Ok(f)
}

/// `geats import FILE|-`.
fn import(m: &Manager, file: &std::path::Path, json: bool) -> Result<u8, Error> {
    let reply = if file.as_os_str() == "-" {
        let mut input = std::io::BufReader::with_capacity(1 << 20, stream_fd(std::io::stdin().as_fd())?);
        m.receive(&mut input, false, &mut |_| {})?
    } else {
        let f = std::fs::File::open(file).map_err(|e| RequestError::invalid("/file", format!("cannot read {}: {e}", file.display())))?;
        let mut input = std::io::BufReader::with_capacity(1 << 20, f);
        m.receive(&mut input, false, &mut |_| {})?
    };
    if json {
        table::print_json(&reply);
    } else if let crate::manager::Reply::Migrate(r) = &reply {
        table::print_text(&format!("{}: imported from {}: {} volume(s)\n", r.vm, file.display(), r.volumes.len()));
    }
    Ok(0)
}

fn interactive(argv: Vec<String>) -> Result<u8, Error> {
    let code = crate::sys::exec::Cmd::new(argv).interactive()?;
    Ok(code.clamp(0, 255) as u8)
}

/// `geats ddl`: write the generated files under `out`, or print them.
fn ddl(out: Option<&std::path::Path>) -> Result<u8, Error> {
    let files = crate::ddl::generate().map_err(|e| Error::Internal(e.to_string()))?;
    match out {
        Some(dir) => {
            for f in &files {
                let path = dir.join(f.path);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(crate::error::io("create", parent))?;
                }
                std::fs::write(&path, &f.text).map_err(crate::error::io("write", &path))?;
                tracing::info!(path = %path.display(), "written");
            }
        }
        None => {
            for f in &files {
                table::print_text(&format!("==> {} <==\n{}", f.path, f.text));
            }
        }
    }
    Ok(0)
}

/// The exit codes, for the man page and `--help`.
pub const EXIT_CODES: &str = "\
0  success (also: the stdio agent wrote an envelope, whatever its outcome)
1  the action failed (VM locked, busy, not found, tool or storage failure)
2  unknown action
3  missing data: a required key or argument is absent
4  invalid data: bad name, schema violation, bad definition
5  other error: a bug, or a request file that cannot be opened";

/// Render the man page of the whole command line, with the exit codes.
pub fn man_page(w: &mut dyn std::io::Write) -> std::io::Result<()> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    man.render_subcommands_section(w)?;
    let mut roff = clap_mangen::roff::Roff::new();
    roff.control("SH", ["EXIT STATUS"]);
    for line in EXIT_CODES.lines() {
        let (code, text) = line.split_once("  ").unwrap_or((line, ""));
        roff.control("TP", []);
        roff.text([clap_mangen::roff::bold(code)]);
        roff.text([clap_mangen::roff::roman(text)]);
    }
    roff.control("SH", ["ENVIRONMENT"]);
    for (var, text) in [
        ("GEATS_CONFIG", "config file, when --config is not given"),
        ("GEATS_ROOT", "prefix of every default path (default /)"),
        ("GEATS_LOG", "log level on stderr: error, warn, info, debug, trace"),
        ("NO_COLOR", "geats prints no colour (it never does when stdout is not a terminal)"),
    ] {
        roff.control("TP", []);
        roff.text([clap_mangen::roff::bold(var)]);
        roff.text([clap_mangen::roff::roman(text)]);
    }
    roff.to_writer(w)?;
    man.render_version_section(w)?;
    man.render_authors_section(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    /// Where the hand parser answers, clap answers the same; where clap
    /// reads a line differently or refuses it, the hand parser declines.
    #[test]
    fn parse_list_agrees_with_clap() {
        let taken = [
            "list",
            "list --json",
            "list --all --json",
            "--config /etc/g.toml list",
            "--config=/etc/g.toml list --all",
            "-v list",
            "-v -v list",
            "--verbose --quiet list --json",
        ];
        for line in taken {
            let fast = Cli::parse_list(&args(line)).unwrap_or_else(|| panic!("{line}: declined"));
            let clap = Cli::try_parse_from(std::iter::once("geats".to_string()).chain(args(line))).unwrap_or_else(|e| panic!("{line}: clap: {e}"));
            assert_eq!(format!("{fast:?}"), format!("{clap:?}"), "{line}");
        }
        let declined = [
            "",
            "info a",
            "list extra",
            "list --json --json",
            "list --config /x",
            "--config list",
            "--config -q list",
            "--config=",
            "-q -q list",
            "list -q",
            "-v -v list -v",
            "-vq list",
            "list --",
            "list --help",
            "--version",
            "list list",
            "agent list",
            "--jso list",
        ];
        for line in declined {
            assert!(Cli::parse_list(&args(line)).is_none(), "{line}: taken");
        }
    }
}
