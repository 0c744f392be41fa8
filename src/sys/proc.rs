//! Readers of `/proc`: host memory and load, process liveness.

use std::collections::BTreeMap;

/// `/proc/meminfo` values in kB, by key (`MemTotal`, `MemFree`, ...).
pub fn meminfo() -> BTreeMap<String, u64> {
    // /proc/meminfo lines look like: "MemTotal:       24610608 kB"
    let text = super::fsutil::read_small("/proc/meminfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (k, rest) = l.split_once(':')?;
            let v = rest.split_whitespace().next()?.parse().ok()?;
            Some((k.to_string(), v))
        })
        .collect()
}

/// The 1, 5 and 15 minute load averages from `/proc/loadavg`
/// ("0.52 0.58 0.59 1/389 12345").
pub fn loadavg() -> [f64; 3] {
    let text = super::fsutil::read_small("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|s| s.parse().unwrap_or(0.0));
    [it.next().unwrap_or(0.0), it.next().unwrap_or(0.0), it.next().unwrap_or(0.0)]
}

/// Online CPUs.
pub fn cpu_count() -> u64 {
    std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1)
}

/// The start time of a process in clock ticks since boot (field 22 of
/// `/proc/PID/stat`), or `None` if it does not exist.
pub fn start_time(pid: i64) -> Option<u64> {
    let text = super::fsutil::read_small(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; fields
    // after the last ')' are plain. starttime is field 22, i.e. the 20th
    // after the ')'.
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Is the process `pid` with this start time still alive? A reused pid has
/// another start time; a zombie (killed, not yet reaped by its parent) is
/// dead: it will never release anything.
pub fn alive(pid: i64, start: u64) -> bool {
    start_time(pid) == Some(start) && !zombie(pid)
}

/// Is some process `pid` alive (not a zombie)? Without a start time to
/// compare, a reused pid counts as alive: for callers that only err on
/// the side of keeping something.
pub fn running(pid: i64) -> bool {
    start_time(pid).is_some() && !zombie(pid)
}

/// Is `pid` a zombie (state `Z` in `/proc/PID/stat`, the field after the
/// command name)?
fn zombie(pid: i64) -> bool {
    let Ok(text) = super::fsutil::read_small(format!("/proc/{pid}/stat")) else { return false };
    text.rfind(')').and_then(|i| text[i + 1..].split_whitespace().next()).is_some_and(|s| s == "Z" || s == "X")
}

/// A pidfd of process `pid`: readable once it has exited (Linux 5.3+;
/// `None` before, or when there is no such process).
pub fn pidfd_open(pid: u32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new file
    // descriptor (or -1), which is owned from here on.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Make sure nothing this process creates is group- or world-writable,
/// whatever umask the caller left (`umask 000` would make every directory
/// geats creates 0777). Files that need to be private ask for 0600.
pub fn restrict_umask() {
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    // Keep a stricter umask the caller chose.
    nix::sys::stat::umask(old | nix::sys::stat::Mode::from_bits_truncate(0o022));
}

/// End this process at once with SIGKILL, as a crash would: no unwinding,
/// no destructors, no lease release. Only the fault-injection point
/// (`GEATS_FAULT_KILL_AT`) calls it.
pub fn kill_self() {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
}

/// The host name, from the kernel.
pub fn hostname() -> String {
    super::fsutil::read_small("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive() {
        let pid = std::process::id() as i64;
        let st = start_time(pid).unwrap();
        assert!(alive(pid, st));
        assert!(!alive(pid, st + 1));
        assert!(meminfo().contains_key("MemTotal"));
    }
}
