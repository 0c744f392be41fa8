//! CLI renderers: tables and short lines for humans, JSON for scripts.
//! With `agent/reply.rs`, the only writers of stdout.

#![allow(clippy::disallowed_macros)]

use std::io::Write;

use serde::Serialize;

use crate::db::Event;
use crate::manager::reply::{HealthReport, InfoReply, ListRow, Reply, RowState, StatusReply};
use crate::names::VmName;
use crate::state::VmState;

// `println!` panics when stdout is a pipe its reader closed (`geats list |
// head`); these drop what cannot be written instead, and the command ends
// as it would have.
macro_rules! println {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}
macro_rules! print {
    ($($t:tt)*) => {{
        let _ = write!(std::io::stdout().lock(), $($t)*);
    }};
}

/// Print pretty JSON, keys sorted as the agent's replies have them.
pub fn print_json<T: Serialize + ?Sized>(v: &T) {
    let value = serde_json::to_value(v).unwrap_or_default();
    println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
}

/// Write bytes to stdout as they are.
pub fn print_bytes(b: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(b);
    let _ = out.flush();
}

/// Print text as is.
pub fn print_text(t: &str) {
    print!("{t}");
}

fn state_str(s: &VmState) -> String {
    if s.substate == s.power.as_str() {
        s.substate.clone()
    } else {
        format!("{} ({})", s.power.as_str(), s.substate)
    }
}

/// A replayed reply's `[state, substate]`.
fn json_state_str(v: &serde_json::Value) -> String {
    match v.as_array().map(|a| a.iter().filter_map(serde_json::Value::as_str).collect::<Vec<_>>()) {
        Some(a) if a.len() == 2 && a[0] == a[1] => a[0].to_string(),
        Some(a) if a.len() == 2 => format!("{} ({})", a[0], a[1]),
        _ => "unknown".into(),
    }
}

/// One line for a mutating action.
pub fn print_action(action: &str, vm_name: Option<&VmName>, reply: &Reply) {
    let vm = vm_name.map(|v| v.to_string()).unwrap_or_default();
    let what = |changed: bool| if changed { "done" } else { "nothing to do" };
    match reply {
        Reply::DryRun(d) => {
            println!("{vm}: {action} (dry run) would run:");
            for s in &d.steps {
                println!("  - {s}");
            }
            if d.steps.is_empty() {
                println!("  nothing: already done");
            }
        }
        Reply::Define(r) => {
            println!("{vm}: {action}: {}; now {}", what(r.changed), state_str(&r.state));
            if !r.applied_live.is_empty() {
                println!("  applied to the running VM: {}", r.applied_live.join(", "));
            }
            if !r.pending.is_empty() {
                println!("  pending until its next start: {}", r.pending.join(", "));
            }
        }
        Reply::Power(r) => println!("{vm}: {action}: {}; now {}", what(r.changed), state_str(&r.state)),
        Reply::AdminLock(r) => println!("{vm}: {action}: {}; {}", what(r.changed), if r.locked { "locked" } else { "unlocked" }),
        Reply::Removed(r) => println!("{vm}: {action}: {}", what(r.changed)),
        Reply::Snapshot(r) => {
            println!("{vm}: snapshot {} taken at {}", r.snapshot, r.created);
            for old in &r.expired {
                println!("{vm}: snapshot {old} deleted (the definition keeps fewer)");
            }
        }
        Reply::Restore(r) => println!("{vm}: restored snapshot {}; now {}", r.snapshot, state_str(&r.state)),
        Reply::Replayed(v) => {
            let changed = what(reply.changed().unwrap_or(false));
            match v.get("state") {
                Some(s) => println!("{vm}: {action}: {changed} (answered from the journal); now {}", json_state_str(s)),
                None => println!("{vm}: {action}: {changed} (answered from the journal)"),
            }
        }
        Reply::Migrate(r) => println!("{}", migrated(r)),
        Reply::Status(_) | Reply::Info(_) | Reply::Events(_) => print_json(reply),
        Reply::Reconcile(r) => {
            let verb = if r.dry_run { "would start" } else { "started" };
            let names = |v: &[VmName]| if v.is_empty() { "none".to_string() } else { v.iter().map(VmName::to_string).collect::<Vec<_>>().join(", ") };
            println!("reconcile: {verb}: {}", names(&r.started));
            for f in &r.failed {
                println!("reconcile: failed: {}: {} [{}]", f.vm, f.message, f.errorcode);
            }
            if !r.skipped.is_empty() {
                println!("reconcile: left stopped (autostart false): {}", names(&r.skipped));
            }
        }
        Reply::Repaired(r) => {
            for rep in &r.repaired {
                println!("{vm}: repaired an interrupted {} (journal entry {}): {}", rep.action, rep.journal_id, rep.resolution.replace('_', " "));
            }
            print_action(action, vm_name, &r.reply);
        }
    }
}

/// One line about a moved VM: where, how much, how long.
pub fn migrated(r: &crate::manager::reply::MigrateReply) -> String {
    let then = if r.started { "started there" } else { "stopped" };
    format!("{}: moved to {}: {} volume(s), {} bytes in {:.1} s; {then}", r.vm, r.destination, r.volumes.len(), r.bytes, r.duration_s)
}

/// stdout as a file, for a byte stream (`geats export NAME -`): not
/// through std's line buffer, which scans binary data for newlines.
pub fn stdout_raw() -> std::io::Result<std::fs::File> {
    use std::os::fd::AsFd;
    Ok(std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?))
}

fn render<C: AsRef<str>>(headers: &[&str], rows: &[impl AsRef<[C]>]) {
    // Columns are as wide as their widest cell, in characters (a byte
    // count for the usual ASCII cell).
    let width = |c: &str| if c.is_ascii() { c.len() } else { c.chars().count() };
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.as_ref().iter().enumerate() {
            if let Some(w) = w.get_mut(i) {
                *w = (*w).max(width(c.as_ref()));
            }
        }
    }
    // The whole table in one buffer and one write: a line at a time was
    // a write(2) per row (stdout is line-buffered) and a `format!` per cell.
    let mut out = String::with_capacity((rows.len() + 1) * (w.iter().sum::<usize>() + 2 * w.len() + 1));
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        for (i, c) in cells.enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(c);
            let mut pad = w.get(i).copied().unwrap_or(0).saturating_sub(width(c));
            while pad > 0 {
                let n = pad.min(SPACES.len());
                out.push_str(&SPACES[..n]);
                pad -= n;
            }
        }
        out.truncate(out.trim_end_matches(' ').len());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for r in rows {
        line(&mut r.as_ref().iter().map(AsRef::as_ref));
    }
    print!("{out}");
}

const SPACES: &str = "                                ";

/// `geats snapshots VM`: name, created, size; oldest first.
pub fn print_snapshots(rows: &[crate::manager::reply::SnapshotInfo]) {
    let rows: Vec<Vec<String>> = rows.iter().map(|s| vec![s.name.to_string(), s.created.clone(), bytes(s.size_bytes)]).collect();
    render(&["NAME", "CREATED", "SIZE"], &rows);
}

/// The `geats list` table.
pub fn print_list(rows: &[ListRow]) {
    use std::borrow::Cow;
    let cells: Vec<[Cow<'_, str>; 6]> = rows
        .iter()
        .map(|r| {
            [
                Cow::Borrowed(r.name.as_str()),
                match &r.state {
                    RowState::Observed(s) if s.substate == s.power.as_str() => Cow::Borrowed(s.substate.as_str()),
                    RowState::Observed(s) => Cow::Owned(state_str(s)),
                    RowState::Kept => Cow::Borrowed("kept"),
                },
                Cow::Borrowed(if r.locked { "yes" } else { "no" }),
                Cow::Borrowed(r.vm_type.as_str()),
                Cow::Borrowed(r.ip.as_deref().unwrap_or("-")),
                Cow::Owned(megabytes(r.ram)),
            ]
        })
        .collect();
    render(&["NAME", "STATE", "LOCKED", "TYPE", "IP", "MEMORY"], &cells);
}

fn megabytes(mb: Option<u64>) -> String {
    mb.map(|m| format!("{m}M")).unwrap_or_else(|| "-".into())
}

fn bytes(v: Option<u64>) -> String {
    match v {
        None => "-".into(),
        Some(b) if b >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        Some(b) if b >= 1 << 20 => format!("{:.1}M", b as f64 / (1u64 << 20) as f64),
        Some(b) if b >= 1 << 10 => format!("{:.1}K", b as f64 / 1024.0),
        Some(b) => format!("{b}B"),
    }
}

fn or_dash(v: Option<impl std::fmt::Display>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// The `geats info` screen.
pub fn print_info(i: &InfoReply) {
    let d = &i.definition;
    println!("Name:        {}", i.name);
    println!("Type:        {}", i.vm_type);
    println!("State:       {}", state_str(&i.state));
    println!("Desired:     {}", or_dash(i.health.desired.as_ref()));
    println!("Health:      {}", health_str(&i.health));
    println!("Locked:      {}", if i.locked { "yes" } else { "no" });
    println!("Privileged:  {}", if i.privileged { "yes (root inside is root on the host)" } else { "no" });
    if let Some(desc) = &d.description {
        println!("Description: {}", desc.replace(['\n', '\r'], " "));
    }
    println!("Template:    {}", or_dash(d.template.as_ref()));
    println!("IP:          {}", or_dash(i.ip.as_ref()));
    println!("Memory:      {} used, limit {}", bytes(i.usage.memory_bytes), megabytes(d.ram));
    if let Some(c) = i.usage.cpu_seconds {
        println!("CPU time:    {c:.2} s");
    }
    if let Some(n) = d.cpus {
        println!("CPUs:        {n}");
    }
    for nic in &d.network {
        println!("NIC:         {} {} {} {}", nic.name, nic.kind().as_str(), or_dash(nic.bridge.as_ref()), or_dash(nic.ipaddr.as_ref()));
    }
    for v in &i.storage {
        println!(
            "Volume:      {} ({}) used {} of {}{}",
            v.name,
            v.storage_type,
            bytes(v.used_bytes),
            bytes(v.size_bytes),
            v.mountpoint.as_ref().map(|m| format!(" at {m}")).unwrap_or_default()
        );
    }
    for s in &i.snapshots {
        println!("Snapshot:    {} {} {}", s.name, s.created, bytes(s.size_bytes));
    }
    if let Some(c) = &i.console {
        println!("Console:     {}", c.join(" "));
    }
    if !i.pending.is_empty() {
        println!("Pending:     {} (applied at the next start)", i.pending.join(", "));
    }
}

/// The `geats status` screen.
pub fn print_status(st: &StatusReply) {
    let h = &st.status;
    let kb = |v: u64| bytes(Some(v * 1024));
    println!("Host:     {}", if h.hostname.is_empty() { "-" } else { &h.hostname });
    println!("CPUs:     {}", h.cpu_count);
    let la: Vec<String> = h.load_avg.iter().map(|v| format!("{v:.2}")).collect();
    println!("Load:     {}", la.join(" "));
    println!("Memory:   {} total, {} used, {} free; {}M promised to VMs", kb(h.mem_total), kb(h.mem_used), kb(h.mem_free), h.ram_promised);
    println!("Swap:     {} total, {} used", kb(h.swap_total), kb(h.swap_used));
    for (k, free) in &h.storage {
        if let Some(name) = k.strip_prefix("storage_").and_then(|r| r.strip_suffix("_free_kb")) {
            let total = h.storage.get(&format!("storage_{name}_total_kb")).map(|t| t * 1024);
            println!("Storage:  {name}: {} free of {}", kb(*free), bytes(total));
        }
    }
    println!();
    let rows: Vec<Vec<String>> = st
        .vms
        .iter()
        .map(|(n, v)| {
            vec![n.to_string(), state_str(&v.state), or_dash(v.health.desired.as_ref()), health_str(&v.health), v.vm_type.to_string()]
        })
        .collect();
    render(&["NAME", "STATE", "DESIRED", "HEALTH", "TYPE"], &rows);
}

/// Health with what explains it: the action in flight, the exit reason.
fn health_str(h: &HealthReport) -> String {
    let mut s = h.health.as_str().to_string();
    if let Some(f) = &h.in_flight {
        s.push_str(&format!(" ({} for {:.0} s by {})", f.action, f.running_s, f.caller.as_deref().unwrap_or("?")));
    }
    if let Some(r) = &h.exit_reason {
        s.push_str(&format!(" ({})", r.replace(['\n', '\r'], " ")));
    }
    s
}

/// One line per event, for `geats events` (also while following, so no
/// column widths that depend on later lines).
pub fn print_event(e: &Event) {
    let outcome = match (e.ok, &e.errorcode) {
        (true, _) => "ok".to_string(),
        (false, Some(c)) => format!("failed: {c}"),
        (false, None) => "drift".to_string(),
    };
    let mut line = format!(
        "{:>6}  {}  {}  {}  {}  {}  {}",
        e.seq,
        e.time,
        e.vm.as_deref().unwrap_or("-"),
        e.kind,
        outcome,
        e.caller.as_deref().unwrap_or("-"),
        e.request_id.as_deref().unwrap_or("-")
    );
    if let Some(d) = &e.detail {
        line.push_str(&format!("  {}", d.replace(['\n', '\r'], " ")));
    }
    println!("{line}");
}

/// One value as a line of JSON, flushed at once (`geats events --follow
/// --json`; a `geats receive` answer the sender is waiting for).
pub fn print_json_line<T: Serialize + ?Sized>(v: &T) {
    use std::io::Write;
    let value = serde_json::to_value(v).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

/// The `geats history` table.
pub fn print_history(entries: &[crate::db::JournalEntry]) {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.started.clone(),
                e.vm.clone().unwrap_or_else(|| "-".into()),
                e.action.clone(),
                e.outcome.clone().unwrap_or_else(|| "(running or interrupted)".into()),
                match e.changed {
                    Some(true) => "yes".into(),
                    Some(false) => "no".into(),
                    None => "-".into(),
                },
                e.caller.clone().unwrap_or_else(|| "-".into()),
                e.request_id.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    render(&["STARTED", "VM", "ACTION", "OUTCOME", "CHANGED", "CALLER", "REQUEST ID"], &rows);
}

/// The `geats check` table (nothing when there is no difference).
pub fn print_check(diffs: &[crate::manager::Difference]) {
    if diffs.is_empty() {
        println!("no differences: the database agrees with the VM types and the storage");
        return;
    }
    let repair = diffs.iter().any(|d| d.repaired.is_some());
    let rows: Vec<Vec<String>> = diffs
        .iter()
        .map(|d| {
            let mut r = vec![d.vm.clone(), d.kind.to_string(), d.detail.clone()];
            if repair {
                r.push(if d.repaired == Some(true) { "yes".into() } else { "no".into() });
            }
            r
        })
        .collect();
    let headers: &[&str] = if repair { &["VM", "KIND", "DETAIL", "REPAIRED"] } else { &["VM", "KIND", "DETAIL"] };
    render(headers, &rows);
}
