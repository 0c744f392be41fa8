//! CLI renderers: tables and short lines for humans, JSON for scripts.
//! With `agent/reply.rs`, the only writers of stdout.

#![allow(clippy::disallowed_macros)]

use serde_json::{json, Value};

use crate::names::VmName;

/// Print pretty JSON.
pub fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Write bytes to stdout as they are.
pub fn print_bytes(b: &[u8]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(b);
    let _ = out.flush();
}

/// Print text as is.
pub fn print_text(t: &str) {
    print!("{t}");
}

fn state_str(v: &Value) -> String {
    match v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>()) {
        Some(a) if a.len() == 2 && a[0] == a[1] => a[0].to_string(),
        Some(a) if a.len() == 2 => format!("{} ({})", a[0], a[1]),
        _ => "unknown".into(),
    }
}

/// One line for a mutating action.
pub fn print_action(action: &str, vm: Option<&VmName>, reply: &Value) {
    let vm = vm.map(|v| v.to_string()).unwrap_or_default();
    if reply.get("dry_run").is_some() {
        println!("{vm}: {action} (dry run) would run:");
        for s in reply["steps"].as_array().into_iter().flatten() {
            println!("  - {}", s.as_str().unwrap_or_default());
        }
        if reply["steps"].as_array().is_some_and(|a| a.is_empty()) {
            println!("  nothing: already done");
        }
        return;
    }
    let changed = reply.get("changed").and_then(Value::as_bool).unwrap_or(false);
    let what = if changed { "done" } else { "nothing to do" };
    match (reply.get("state"), reply.get("locked")) {
        (Some(s), _) => println!("{vm}: {action}: {what}; now {}", state_str(s)),
        (_, Some(l)) => println!("{vm}: {action}: {what}; {}", if l.as_bool() == Some(true) { "locked" } else { "unlocked" }),
        _ => println!("{vm}: {action}: {what}"),
    }
}

fn render(headers: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<width$}", width = w[i])).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// The `geats list` table.
pub fn print_list(rows: &[Value]) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r["name"].as_str().unwrap_or_default().to_string(),
                state_str(&r["state"]),
                if r["locked"].as_bool() == Some(true) { "yes".into() } else { "no".into() },
                r["vm_type"].as_str().unwrap_or("-").to_string(),
                r["ip"].as_str().unwrap_or("-").to_string(),
                r["ram"].as_u64().map(|m| format!("{m}M")).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    render(&["NAME", "STATE", "LOCKED", "TYPE", "IP", "MEMORY"], &cells);
}

fn bytes(v: &Value) -> String {
    match v.as_u64() {
        None => "-".into(),
        Some(b) if b >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        Some(b) if b >= 1 << 20 => format!("{:.1}M", b as f64 / (1u64 << 20) as f64),
        Some(b) if b >= 1 << 10 => format!("{:.1}K", b as f64 / 1024.0),
        Some(b) => format!("{b}B"),
    }
}

/// The `geats info` screen.
pub fn print_info(i: &Value) {
    let d = &i["definition"];
    let s = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| "-".into());
    println!("Name:        {}", s(&i["name"]));
    println!("Type:        {}", s(&i["vm_type"]));
    println!("State:       {}", state_str(&i["state"]));
    println!("Locked:      {}", if i["locked"].as_bool() == Some(true) { "yes" } else { "no" });
    if let Some(desc) = d["description"].as_str() {
        println!("Description: {}", desc.replace(['\n', '\r'], " "));
    }
    println!("Template:    {}", s(&d["template"]));
    println!("IP:          {}", s(&i["ip"]));
    println!("Memory:      {} used, limit {}", bytes(&i["usage"]["memory_bytes"]), d["ram"].as_u64().map(|m| format!("{m}M")).unwrap_or_else(|| "-".into()));
    if let Some(c) = i["usage"]["cpu_seconds"].as_f64() {
        println!("CPU time:    {c:.2} s");
    }
    if let Some(n) = d["cpus"].as_u64() {
        println!("CPUs:        {n}");
    }
    for nic in d["network"].as_array().into_iter().flatten() {
        println!(
            "NIC:         {} {} {} {}",
            s(&nic["name"]),
            nic["type"].as_str().unwrap_or("veth"),
            s(&nic["bridge"]),
            s(&nic["ipaddr"])
        );
    }
    for v in i["storage"].as_array().into_iter().flatten() {
        println!(
            "Volume:      {} ({}) used {} of {}{}",
            s(&v["name"]),
            s(&v["type"]),
            bytes(&v["used_bytes"]),
            bytes(&v["size_bytes"]),
            v["mountpoint"].as_str().map(|m| format!(" at {m}")).unwrap_or_default()
        );
    }
    if let Some(c) = i["console"].as_array() {
        let argv: Vec<&str> = c.iter().filter_map(Value::as_str).collect();
        println!("Console:     {}", argv.join(" "));
    }
}

/// The `geats status` screen.
pub fn print_status(st: &Value) {
    let h = &st["status"];
    let kb = |k: &str| bytes(&json!(h[k].as_u64().map(|v| v * 1024)));
    println!("Host:     {}", h["hostname"].as_str().unwrap_or("-"));
    println!("CPUs:     {}", h["cpu_count"]);
    let la: Vec<String> = h["load_avg"].as_array().into_iter().flatten().map(|v| format!("{:.2}", v.as_f64().unwrap_or(0.0))).collect();
    println!("Load:     {}", la.join(" "));
    println!("Memory:   {} total, {} used, {} free; {}M promised to VMs", kb("mem_total"), kb("mem_used"), kb("mem_free"), h["ram_promised"]);
    println!("Swap:     {} total, {} used", kb("swap_total"), kb("swap_used"));
    if let Some(o) = h.as_object() {
        for (k, v) in o {
            if let Some(name) = k.strip_prefix("storage_").and_then(|r| r.strip_suffix("_free_kb")) {
                let total = o.get(&format!("storage_{name}_total_kb")).cloned().unwrap_or(Value::Null);
                println!(
                    "Storage:  {name}: {} free of {}",
                    bytes(&json!(v.as_u64().map(|x| x * 1024))),
                    bytes(&json!(total.as_u64().map(|x| x * 1024)))
                );
            }
        }
    }
    println!();
    let rows: Vec<Vec<String>> = st["vms"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(n, v)| vec![n.clone(), state_str(&v["state"]), v["definition"]["vm_type"].as_str().unwrap_or("-").to_string()])
        .collect();
    render(&["NAME", "STATE", "TYPE"], &rows);
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
