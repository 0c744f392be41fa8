//! Docs as tests: the fenced `console` blocks of a Markdown file run as
//! commands, their following lines compared with the output.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{bin, manifest, out_text};

/// The fenced blocks of a doc: (info string, text).
pub fn doc_blocks(doc: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(manifest().join(doc)).unwrap();
    let mut out = Vec::new();
    let mut cur: Option<(String, String, usize)> = None;
    for line in text.lines() {
        let t = line.trim_start();
        match &mut cur {
            None => {
                if let Some(info) = t.strip_prefix("```") {
                    cur = Some((info.trim().to_string(), String::new(), line.len() - t.len()));
                }
            }
            Some((info, body, indent)) => {
                if t.starts_with("```") {
                    out.push((info.clone(), body.clone()));
                    cur = None;
                } else {
                    body.push_str(line.get(*indent..).unwrap_or(line.trim_start()));
                    body.push('\n');
                }
            }
        }
    }
    out
}

/// Does `text` match the pattern line, where `...` stands for any text?
pub fn line_matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split("...").collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// Do the output lines match the expected ones (a line `...` = any lines)?
pub fn lines_match(expected: &[&str], actual: &[&str]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((&"...", rest)) => (0..=actual.len()).any(|i| lines_match(rest, &actual[i..])),
        Some((e, rest)) => actual.split_first().is_some_and(|(a, arest)| line_matches(e, a) && lines_match(rest, arest)),
    }
}

/// Run every `console` block of `doc` that `pick` selects: each `$ ` line
/// is a command run by bash in `cwd` with exactly `vars` as environment;
/// the lines up to the next `$ ` are its expected stdout. Returns how many
/// commands ran.
pub fn run_doc_console(doc: &str, pick: &dyn Fn(&str) -> bool, cwd: &Path, vars: &[(&str, String)]) -> usize {
    let mut n = 0;
    for (info, body) in doc_blocks(doc) {
        if info != "console" || !pick(&body) {
            continue;
        }
        let mut cmds: Vec<(String, Vec<&str>)> = Vec::new();
        for line in body.lines() {
            match line.strip_prefix("$ ") {
                Some(c) => cmds.push((c.to_string(), Vec::new())),
                None => cmds.last_mut().unwrap_or_else(|| panic!("{doc}: output before a command in:\n{body}")).1.push(line),
            }
        }
        for (cmd, expected) in cmds {
            let o = Command::new("bash")
                .args(["-c", &cmd])
                .env_clear()
                .envs(vars.iter().map(|(k, v)| (*k, v)))
                .current_dir(cwd)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&o.stdout);
            let actual: Vec<&str> = stdout.lines().collect();
            assert!(o.status.success(), "{doc}: `{cmd}` failed: {}", out_text(&o));
            assert!(lines_match(&expected, &actual), "{doc}: `{cmd}`\nexpected:\n{}\ngot:\n{stdout}\nstderr:\n{}", expected.join("\n"), String::from_utf8_lossy(&o.stderr));
            n += 1;
        }
    }
    n
}


/// A `bin` directory with `geats` on it, for doc commands.
pub fn doc_bin(dir: &Path) -> PathBuf {
    let b = dir.join("bin");
    std::fs::create_dir_all(&b).unwrap();
    std::os::unix::fs::symlink(bin(), b.join("geats")).unwrap();
    b
}
