//! Reading a container's runtime state from the kernel and LXC's runtime
//! traces, without spawning a process per container.
//!
//! - Running: LXC's monitor listens on the abstract unix socket
//!   `@LXCPATH/NAME/command` for exactly as long as the container runs
//!   (when `LXCPATH/NAME/command` is too long for a socket address, LXC
//!   names it `@lxc/<fnv64a of "LXCPATH/NAME">/command`). A `connect`
//!   answers for one container, one read of `/proc/net/unix` for many
//!   ([`Listeners`]).
//! - The monitor pid: the pid file `lxc-start -p` writes (deleted at stop),
//!   checked against `/proc/PID/cmdline` = `[lxc monitor] LXCPATH NAME`.
//! - The init pid: the monitor's only child
//!   (`/proc/M/task/M/children`).
//! - Its cgroups: `/proc/INIT/cgroup`; usage and the freezer state come
//!   from the cgroup files (v1 hierarchies under `/sys/fs/cgroup/<ctrl>`,
//!   v2 under `/sys/fs/cgroup` or, on a hybrid host, `/sys/fs/cgroup/unified`).
//! - IPv4 addresses: rtnetlink (`sys::netlink`), else the `/32 host LOCAL`
//!   entries of `/proc/INIT/net/fib_trie`.
//!
//! One write: [`MigrationWarmup`] begins the grace period LXC's monitor
//! would otherwise wait for at its first cgroup migration.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::sys::fsutil::{read_small, read_small_bytes};

/// The cgroup file system root.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// FNV-1a, 64 bit, as LXC hashes long socket names.
fn fnv_64a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The name (after the leading `@`) of the monitor's command socket.
pub fn command_socket(lxcpath: &Path, name: &str) -> String {
    let lp = lxcpath.to_string_lossy();
    let plain = format!("{lp}/{name}/command");
    // sun_path is 108 bytes: a leading NUL, the name and a trailing NUL.
    if plain.len() < 106 {
        plain
    } else {
        format!("lxc/{:016x}/command", fnv_64a(format!("{lp}/{name}").as_bytes()))
    }
}

/// The abstract unix socket names listening now (without the `@`).
///
/// `/proc/net/unix`:
/// ```text
/// Num       RefCount Protocol Flags    Type St Inode Path
/// 0000000000000000: 00000002 00000000 00010000 0001 01 27871 @/var/lib/lxc/c1/command
/// ```
pub fn abstract_sockets() -> HashSet<String> {
    abstract_sockets_in(&read_small("/proc/net/unix").unwrap_or_default())
}

fn abstract_sockets_in(text: &str) -> HashSet<String> {
    text.lines().skip(1).filter_map(abstract_name).map(str::to_string).collect()
}

/// Is the abstract unix socket `name` (without the `@`) listening now?
/// One non-blocking `connect`, as LXC's own tools find out whether a
/// container runs (`lxc_cmd`: `ECONNREFUSED` is not running). It costs
/// the same whatever runs on the host (8 us here), where a read of
/// `/proc/net/unix` costs the whole socket table (95 us here for 54
/// sockets, more on a busy host). LXC's monitor accepts the connection
/// and closes it at the end of stream without a word (it logs that at
/// TRACE). A full backlog (`EAGAIN`) is a listener too; an error that
/// says neither (a security module refusing, say) falls back to the
/// table.
pub fn listening(name: &str) -> bool {
    connects(name).unwrap_or_else(|| listening_in(&read_small("/proc/net/unix").unwrap_or_default(), name))
}

/// Whether a stream `connect` to the abstract name `name` finds a
/// listener; `None` when the answer says neither.
fn connects(name: &str) -> Option<bool> {
    use nix::errno::Errno;
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    let addr = UnixAddr::new_abstract(name.as_bytes()).ok()?;
    let fd = socket::socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None).ok()?;
    loop {
        return match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) | Err(Errno::EAGAIN) => Some(true),
            Err(Errno::ECONNREFUSED | Errno::ENOENT) => Some(false),
            Err(Errno::EINTR) => continue,
            Err(_) => None,
        };
    }
}

/// "Is this socket listening?" for the containers of one reader, asked
/// the cheaper way for their number: a `connect` each for a few
/// ([`listening`]), one read of the socket table for more
/// ([`abstract_sockets`]; about a dozen connects cost one read here).
pub enum Listeners {
    /// A `connect` per question.
    Each,
    /// The listening names, read once.
    Table(HashSet<String>),
}

impl Listeners {
    /// At most this many questions are asked one `connect` each.
    pub const EACH_MAX: usize = 8;

    /// For `n` questions.
    pub fn for_count(n: usize) -> Listeners {
        if n > Self::EACH_MAX {
            Listeners::Table(abstract_sockets())
        } else {
            Listeners::Each
        }
    }

    /// Is `name` listening?
    pub fn contains(&self, name: &str) -> bool {
        match self {
            Listeners::Each => listening(name),
            Listeners::Table(set) => set.contains(name),
        }
    }
}

/// `listening` on the text of `/proc/net/unix`: one substring search over
/// the whole text (a search per line set up its searcher on every line),
/// then the line of each hit is parsed; the header line is skipped.
fn listening_in(text: &str, name: &str) -> bool {
    let needle = format!("@{name}");
    text.match_indices(&needle).any(|(i, _)| {
        let start = text[..i].rfind('\n').map_or(0, |p| p + 1);
        let end = text[i..].find('\n').map_or(text.len(), |p| i + p);
        start > 0 && abstract_name(&text[start..end]) == Some(name)
    })
}

/// The abstract socket name of one `/proc/net/unix` line: the path column
/// (after 7 columns) without its leading `@` and trailing `@`s (LXC pads
/// some names with NULs, which the kernel prints as `@`).
fn abstract_name(line: &str) -> Option<&str> {
    let mut rest = line;
    for _ in 0..7 {
        rest = rest.trim_start();
        rest = &rest[rest.find(char::is_whitespace)?..];
    }
    rest.trim().strip_prefix('@').map(|s| s.trim_end_matches('@'))
}

/// The monitor pid from LXC's pid file, if that process is still the
/// monitor of this container.
pub fn monitor_pid(pidfile: &Path, lxcpath: &Path, name: &str) -> Option<i32> {
    let pid: i32 = read_small(pidfile).ok()?.trim().parse().ok()?;
    is_monitor(pid, lxcpath, name).then_some(pid)
}

fn is_monitor(pid: i32, lxcpath: &Path, name: &str) -> bool {
    let Ok(cmd) = read_small_bytes(format!("/proc/{pid}/cmdline")) else { return false };
    let cmd = String::from_utf8_lossy(&cmd);
    let cmd = cmd.trim_end_matches('\0');
    cmd == format!("[lxc monitor] {} {name}", lxcpath.to_string_lossy())
}

/// Is an `lxc-*` tool running on container `name` of `lxcpath`? geats runs
/// them as `lxc-TOOL -P LXCPATH -n NAME ...`, so `/proc/PID/cmdline`
/// reads e.g. `lxc-stop\0-P\0/var/lib/lxc\0-n\0web1\0-k\0`.
pub fn tools_running(lxcpath: &Path, name: &str) -> bool {
    let want = format!("\0-P\0{}\0-n\0{name}\0", lxcpath.to_string_lossy());
    let Ok(rd) = std::fs::read_dir("/proc") else { return false };
    rd.flatten().any(|e| {
        if !e.file_name().to_str().is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit())) {
            return false;
        }
        let Ok(cmd) = read_small_bytes(e.path().join("cmdline")) else { return false };
        let cmd = String::from_utf8_lossy(&cmd);
        let prog = cmd.split('\0').next().unwrap_or_default();
        prog.rsplit('/').next().is_some_and(|p| p.starts_with("lxc-")) && format!("{cmd}\0").contains(&want)
    })
}

/// Find the monitors of containers under `lxcpath` by scanning `/proc`
/// once (for containers started without geats' pid file).
pub fn scan_monitors(lxcpath: &Path) -> BTreeMap<String, i32> {
    let prefix = format!("[lxc monitor] {} ", lxcpath.to_string_lossy());
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(cmd) = read_small_bytes(format!("/proc/{pid}/cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd);
        if let Some(name) = cmd.trim_end_matches('\0').strip_prefix(&prefix) {
            out.insert(name.to_string(), pid);
        }
    }
    out
}

/// The container's init: the monitor's child.
pub fn init_pid(monitor: i32) -> Option<i32> {
    let s = read_small(format!("/proc/{monitor}/task/{monitor}/children")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Where a process's cgroups are.
#[derive(Debug, Default, Clone)]
pub struct Cgroups {
    /// v1 controller → directory.
    pub v1: BTreeMap<String, PathBuf>,
    /// The v2 directory (unified hierarchy).
    pub v2: Option<PathBuf>,
}

/// Is the host pure cgroup v2? Asked once per process (`status` asks
/// for every running container).
pub fn pure_v2() -> bool {
    static PURE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PURE.get_or_init(|| Path::new(CGROUP_ROOT).join("cgroup.controllers").exists())
}

/// The cgroup directories of `pid`.
///
/// `/proc/PID/cgroup` on a hybrid host:
/// ```text
/// 4:memory:/lxc.payload.c1
/// 1:cpu,cpuacct:/lxc.payload.c1
/// 0::/lxc.payload.c1
/// ```
pub fn cgroups(pid: i32) -> Cgroups {
    let text = read_small(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    parse_cgroups(&text, pure_v2())
}

/// The v1 controllers [`Cgroups`] reads or writes.
const V1_USED: [&str; 4] = ["memory", "cpu", "cpuacct", "freezer"];

fn parse_cgroups(text: &str, pure_v2: bool) -> Cgroups {
    let root = Path::new(CGROUP_ROOT);
    let mut c = Cgroups::default();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_id), Some(ctrls), Some(path)) = (f.next(), f.next(), f.next()) else { continue };
        let rel = path.trim_start_matches('/');
        if ctrls.is_empty() {
            let base = if pure_v2 { root.to_path_buf() } else { root.join("unified") };
            c.v2 = Some(base.join(rel));
        } else {
            // Only the controllers geats reads or writes: a hybrid host
            // lists ten hierarchies, and `status` asks for every running
            // container.
            for ctrl in ctrls.split(',').filter(|c| V1_USED.contains(c)) {
                c.v1.insert(ctrl.to_string(), root.join(ctrls).join(rel));
            }
        }
    }
    c
}

fn no_controller(name: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotFound, format!("the container has no {name} cgroup controller"))
}

fn read_u64(p: &Path) -> Option<u64> {
    read_small(p).ok()?.trim().parse().ok()
}

impl Cgroups {
    fn v2_file(&self, f: &str) -> Option<PathBuf> {
        self.v2.as_ref().map(|d| d.join(f)).filter(|p| p.exists())
    }

    /// Memory in use, bytes.
    pub fn memory(&self) -> Option<u64> {
        if let Some(v) = self.v2_file("memory.current").and_then(|p| read_u64(&p)) {
            return Some(v);
        }
        read_u64(&self.v1.get("memory")?.join("memory.usage_in_bytes"))
    }

    /// The memory limit, bytes (`None` when unlimited).
    pub fn memory_limit(&self) -> Option<u64> {
        if let Some(p) = self.v2_file("memory.max") {
            return read_u64(&p);
        }
        read_u64(&self.v1.get("memory")?.join("memory.limit_in_bytes")).filter(|v| *v < (1 << 62))
    }

    /// CPU time used, seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        if let Some(p) = self.v2_file("cpu.stat") {
            let text = read_small(p).ok()?;
            let usec: u64 = text.lines().find_map(|l| l.strip_prefix("usage_usec "))?.trim().parse().ok()?;
            return Some(usec as f64 / 1e6);
        }
        read_u64(&self.v1.get("cpuacct")?.join("cpuacct.usage")).map(|ns| ns as f64 / 1e9)
    }

    /// Set the memory limit, bytes (`None`: unlimited), in whichever
    /// hierarchy holds the memory controller. The kernel may refuse a
    /// limit below what is in use (v1: EBUSY after reclaim fails).
    pub fn set_memory_limit(&self, bytes: Option<u64>) -> std::io::Result<()> {
        if let Some(p) = self.v2_file("memory.max") {
            return std::fs::write(p, bytes.map_or_else(|| "max".to_string(), |b| b.to_string()));
        }
        let dir = self.v1.get("memory").ok_or_else(|| no_controller("memory"))?;
        std::fs::write(dir.join("memory.limit_in_bytes"), bytes.map_or_else(|| "-1".to_string(), |b| b.to_string()))
    }

    /// Set the CPU quota per `period_us` (`None`: unlimited).
    pub fn set_cpu_quota(&self, quota_us: Option<u64>, period_us: u64) -> std::io::Result<()> {
        if let Some(p) = self.v2_file("cpu.max") {
            let q = quota_us.map_or_else(|| "max".to_string(), |q| q.to_string());
            return std::fs::write(p, format!("{q} {period_us}"));
        }
        let dir = self.v1.get("cpu").ok_or_else(|| no_controller("cpu"))?;
        std::fs::write(dir.join("cpu.cfs_period_us"), period_us.to_string())?;
        std::fs::write(dir.join("cpu.cfs_quota_us"), quota_us.map_or_else(|| "-1".to_string(), |q| q.to_string()))
    }

    /// Is it frozen (or freezing)? Asked where LXC freezes it, as
    /// `lxc-info -s` asks: the v1 `freezer` hierarchy's `freezer.state`
    /// where the container has one (a hybrid host: `lxc-freeze` writes
    /// there, and the unified hierarchy's `cgroup.freeze` is not LXC's
    /// state), else the v2 `cgroup.freeze` (read without asking first
    /// whether it exists: an absent one reads as not frozen). One file per
    /// running container, which `status` reads for every one.
    pub fn frozen(&self) -> bool {
        if let Some(d) = self.v1.get("freezer") {
            return read_small(d.join("freezer.state")).is_ok_and(|s| matches!(s.trim(), "FROZEN" | "FREEZING"));
        }
        self.v2.as_ref().is_some_and(|d| read_small(d.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1"))
    }
}

/// The IPv4 addresses of each of `pids`' network namespaces, loopback
/// excluded, in ascending order: what `ip -4 addr` shows inside. Asked
/// through one rtnetlink socket (`sys::netlink`, about half the cost of a
/// `fib_trie` read each); a namespace without an id, and every one left
/// once netlink has failed, from `fib_trie`, which lists the addresses of
/// the interfaces that are up.
pub fn ipv4s_of(pids: &[i32]) -> Vec<Vec<Ipv4Addr>> {
    let mut rtnl = if pids.is_empty() { None } else { crate::sys::netlink::Rtnl::open().ok() };
    let ids = match rtnl.as_mut().map(|r| r.nsids_of(pids)) {
        Some(Ok(ids)) => ids,
        _ => vec![None; pids.len()],
    };
    pids.iter()
        .zip(ids)
        .map(|(&pid, id)| {
            if let (Some(r), Some(id)) = (rtnl.as_mut(), id) {
                match r.ipv4s_in(id) {
                    Ok(ips) => return ips,
                    Err(e) => {
                        tracing::debug!(pid, error = %e, "rtnetlink failed; reading fib_trie");
                        rtnl = None;
                    }
                }
            }
            ipv4s_in_fib_trie(pid)
        })
        .collect()
}

/// The addresses of `pid`'s namespace from its `fib_trie`.
fn ipv4s_in_fib_trie(pid: i32) -> Vec<Ipv4Addr> {
    parse_fib_trie(&read_small(format!("/proc/{pid}/net/fib_trie")).unwrap_or_default())
}

/// `/proc/PID/net/fib_trie`:
/// ```text
///      |-- 10.99.0.2
///         /32 host LOCAL
/// ```
fn parse_fib_trie(text: &str) -> Vec<Ipv4Addr> {
    // Only the addresses of `/32 host LOCAL` entries are parsed: most
    // `|-- ` lines are networks and broadcasts.
    let mut last: Option<&str> = None;
    let mut out = Vec::new();
    for l in text.lines() {
        let t = l.trim_start();
        if let Some(a) = t.strip_prefix("|-- ") {
            last = Some(a.trim());
        } else if t.starts_with("/32 host LOCAL") {
            if let Some(a) = last.and_then(|a| a.parse::<Ipv4Addr>().ok()) {
                if !a.is_loopback() && !out.contains(&a) {
                    out.push(a);
                }
            }
        }
    }
    out
}

/// The RCU grace period that the kernel's cgroup migration lock
/// (`cgroup_threadgroup_rwsem`) waits for when no migration ran in the
/// last grace period, begun in the background so that LXC's monitor finds
/// it passed, or under way, when it migrates: into `lxc.monitor.NAME` as a
/// container starts, out of it as the container stops.
///
/// Without it the monitor itself waits the whole grace period (`perf`:
/// ~10 ms of `synchronize_rcu` under `cgroup_procs_write_start`, on
/// start and on stop; docs/performance.md). A thread moves this process
/// into the cgroup it is already in, a migration that changes nothing but
/// takes the lock. Errors are ignored: a host without the unified
/// hierarchy, or with a read-only one, gains nothing and loses nothing.
/// Dropping it waits for the thread (at most one grace period), so the
/// process never ends with it blocked.
pub struct MigrationWarmup(Option<std::thread::JoinHandle<()>>);

/// When this process last began a warm-up, in milliseconds since
/// [`WARMUP_EPOCH`] plus one (0: never).
static LAST_WARMUP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static WARMUP_EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// A warm-up begun this recently is still under way, or its grace period
/// has passed and the lock skips the next one: a second would add a
/// thread and a place in the cgroup mutex's queue ahead of the monitor.
const WARMUP_RECENT_MS: u64 = 20;

impl MigrationWarmup {
    /// Start the thread; a host that refuses one more thread gets none,
    /// and so does a second call within [`WARMUP_RECENT_MS`] of the last
    /// (the manager begins one before the lease, `start` and `stop` again
    /// for the callers that did not).
    pub fn begin() -> MigrationWarmup {
        use std::sync::atomic::Ordering::Relaxed;
        let now = u64::try_from(WARMUP_EPOCH.get_or_init(std::time::Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let last = LAST_WARMUP.load(Relaxed);
        if last != 0 && now.saturating_sub(last) < WARMUP_RECENT_MS {
            return MigrationWarmup(None);
        }
        LAST_WARMUP.store(now, Relaxed);
        let warm = || {
            let text = read_small("/proc/self/cgroup").unwrap_or_default();
            if let Some(procs) = own_procs_file(&text, pure_v2()) {
                let _ = std::fs::write(procs, std::process::id().to_string());
            }
        };
        MigrationWarmup(std::thread::Builder::new().name("cgroup-warmup".into()).spawn(warm).ok())
    }
}

impl Drop for MigrationWarmup {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            let _ = t.join();
        }
    }
}

/// The `cgroup.procs` of the unified-hierarchy cgroup that
/// `/proc/self/cgroup` (`text`) names, under `/sys/fs/cgroup` (pure v2) or
/// `/sys/fs/cgroup/unified` (hybrid); `None` on a v1-only host.
fn own_procs_file(text: &str, pure_v2: bool) -> Option<PathBuf> {
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let base = if pure_v2 { PathBuf::from(CGROUP_ROOT) } else { Path::new(CGROUP_ROOT).join("unified") };
    Some(base.join(rel.trim_start_matches('/')).join("cgroup.procs"))
}

/// The cgroup root and each hierarchy mounted below it (`/sys/fs/cgroup`
/// and, on a v1 or hybrid host, `memory`, `unified`, ...).
fn cgroup_bases() -> Vec<PathBuf> {
    let root = Path::new(CGROUP_ROOT);
    let mut bases = vec![root.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(root) {
        bases.extend(rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
    }
    bases
}

/// Does any cgroup hierarchy have `lxc.payload.NAME` or `lxc.monitor.NAME`
/// (LXC's default layout)? A few `stat`s, however many containers exist.
pub fn has_cgroups(name: &str) -> bool {
    cgroup_bases().iter().any(|base| ["lxc.payload.", "lxc.monitor."].iter().any(|p| base.join(format!("{p}{name}")).exists()))
}

/// Remove empty cgroups left by an earlier run of container `name`
/// (`lxc.payload.NAME[-N]`, `lxc.monitor.NAME[-N]`, depth first), so the
/// next start gets the plain name. `rmdir` refuses a cgroup with processes,
/// so a live one is never touched.
pub fn remove_stale_cgroups(name: &str) {
    for base in cgroup_bases() {
        let Ok(rd) = std::fs::read_dir(&base) else { continue };
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let ours = ["lxc.payload.", "lxc.monitor."].iter().any(|p| {
                n.strip_prefix(p).is_some_and(|rest| {
                    rest == name || rest.strip_prefix(name).and_then(|s| s.strip_prefix('-')).is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
                })
            });
            if ours {
                rmdir_tree(&e.path());
            }
        }
    }
}

fn rmdir_tree(p: &Path) {
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                rmdir_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(p);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names() {
        assert_eq!(command_socket(Path::new("/var/lib/lxc"), "c1"), "/var/lib/lxc/c1/command");
        let long = Path::new("/tmp").join("x".repeat(100));
        let s = command_socket(&long, "c1");
        assert!(s.starts_with("lxc/") && s.ends_with("/command") && s.len() == 4 + 16 + 8, "{s}");
        // Known FNV-1a 64 test vectors.
        assert_eq!(fnv_64a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv_64a(b"a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn unix_socket_lines() {
        let l = "0000000000000000: 00000002 00000000 00010000 0001 01 27871 @/var/lib/lxc/c1/command";
        assert_eq!(abstract_name(l), Some("/var/lib/lxc/c1/command"));
        assert_eq!(abstract_name("0000000000000000: 00000002 00000000 00010000 0001 01 27871 @lxc/0123456789abcdef/command@@"), Some("lxc/0123456789abcdef/command"));
        assert_eq!(abstract_name("0000000000000000: 00000002 00000000 00010000 0001 01 27871 /run/x.sock"), None);
        assert_eq!(abstract_name("0000000000000000: 00000002 00000000 00010000 0001 01 27871"), None);
        assert_eq!(abstract_name("0000000000000000: 00000002 00000000 00010000 0001 01 27871 "), None);
        let text = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1 @/var/lib/lxc/c10/command\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 2 /var/lib/lxc/c2/command\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 3 @/var/lib/lxc/c3/command@@\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 4 @/var/lib/lxc/c4/command";
        assert!(!listening_in(text, "/var/lib/lxc/c1/command"));
        assert!(!listening_in(text, "/var/lib/lxc/c2/command"), "not abstract");
        assert!(listening_in(text, "/var/lib/lxc/c3/command"));
        assert!(listening_in(text, "/var/lib/lxc/c4/command"), "last line, no newline");
        assert!(listening_in(text, "/var/lib/lxc/c10/command"));
        assert!(!listening_in(text, "lib/lxc/c10/command"), "a suffix is not the name");
        let set = abstract_sockets_in(text);
        for n in ["/var/lib/lxc/c1/command", "/var/lib/lxc/c2/command", "/var/lib/lxc/c3/command", "/var/lib/lxc/c4/command", "/var/lib/lxc/c10/command"] {
            assert_eq!(set.contains(n), listening_in(text, n), "{n}");
        }
    }

    /// A listener is found by a `connect`, also among more names than
    /// are asked one by one (then from the socket table); a name nobody
    /// listens on, or no longer, is not.
    #[test]
    fn listeners_by_connect_and_by_table() {
        use std::os::linux::net::SocketAddrExt;
        let name = |tag: &str| format!("geats-test/{}/{tag}/command", std::process::id());
        let (up, down) = (name("up"), name("down"));
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(up.as_bytes()).unwrap();
        let l = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
        assert_eq!(connects(&up), Some(true));
        assert_eq!(connects(&down), Some(false));
        assert!(listening(&up) && !listening(&down));
        for n in [1, Listeners::EACH_MAX + 1] {
            let ls = Listeners::for_count(n);
            assert_eq!(matches!(ls, Listeners::Table(_)), n > Listeners::EACH_MAX);
            assert!(ls.contains(&up) && !ls.contains(&down), "{n} questions");
        }
        // The connection the check made waits in the backlog; accepting it
        // finds the end of stream at once (as LXC's monitor does).
        let (mut c, _) = l.accept().unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut c, &mut buf).unwrap(), 0);
        drop(l);
        assert!(!listening(&up), "closed: nothing listens");
    }

    #[test]
    fn cgroup_lines() {
        let c = parse_cgroups("9:name=systemd:/lxc.payload.c1\n5:devices:/lxc.payload.c1\n4:memory:/lxc.payload.c1\n1:cpu,cpuacct:/lxc.payload.c1\n0::/lxc.payload.c1\n", false);
        assert_eq!(c.v1["memory"], Path::new("/sys/fs/cgroup/memory/lxc.payload.c1"));
        assert_eq!(c.v1["cpu"], Path::new("/sys/fs/cgroup/cpu,cpuacct/lxc.payload.c1"));
        assert_eq!(c.v1["cpuacct"], Path::new("/sys/fs/cgroup/cpu,cpuacct/lxc.payload.c1"));
        assert_eq!(c.v1.len(), 3, "only the controllers geats uses: {c:?}");
        assert_eq!(c.v2.as_deref(), Some(Path::new("/sys/fs/cgroup/unified/lxc.payload.c1")));
        let c = parse_cgroups("0::/lxc.payload.c1\n", true);
        assert_eq!(c.v2.as_deref(), Some(Path::new("/sys/fs/cgroup/lxc.payload.c1")));
    }

    #[test]
    fn frozen_is_asked_where_lxc_freezes() {
        let d = tempfile::tempdir().unwrap();
        let (v1, v2) = (d.path().join("freezer"), d.path().join("unified"));
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::create_dir_all(&v2).unwrap();
        let hybrid = Cgroups { v1: BTreeMap::from([("freezer".to_string(), v1.clone())]), v2: Some(v2.clone()) };
        let pure = Cgroups { v1: BTreeMap::new(), v2: Some(v2.clone()) };
        std::fs::write(v1.join("freezer.state"), "THAWED\n").unwrap();
        std::fs::write(v2.join("cgroup.freeze"), "1\n").unwrap();
        // A hybrid host: lxc-freeze writes the v1 freezer, and lxc-info
        // reads it alone (a unified `cgroup.freeze` set by hand is RUNNING).
        assert!(!hybrid.frozen());
        assert!(pure.frozen(), "no v1 freezer: the unified hierarchy's");
        for (state, frozen) in [("FROZEN\n", true), ("FREEZING\n", true), ("THAWED\n", false)] {
            std::fs::write(v1.join("freezer.state"), state).unwrap();
            std::fs::write(v2.join("cgroup.freeze"), "0\n").unwrap();
            assert_eq!(hybrid.frozen(), frozen, "{state}");
        }
        std::fs::remove_file(v2.join("cgroup.freeze")).unwrap();
        assert!(!pure.frozen(), "no cgroup.freeze reads as not frozen");
    }

    #[test]
    fn warmup_writes_to_the_cgroup_the_process_is_in() {
        let hybrid = "9:name=systemd:/\n4:memory:/process_api/77e4\n0::/user.slice/session-3.scope\n";
        assert_eq!(own_procs_file(hybrid, false).unwrap(), Path::new("/sys/fs/cgroup/unified/user.slice/session-3.scope/cgroup.procs"));
        assert_eq!(own_procs_file("0::/system.slice/geats.service\n", true).unwrap(), Path::new("/sys/fs/cgroup/system.slice/geats.service/cgroup.procs"));
        assert_eq!(own_procs_file("0::/\n", true).unwrap(), Path::new("/sys/fs/cgroup/cgroup.procs"));
        assert_eq!(own_procs_file("4:memory:/x\n1:cpu:/x\n", false), None, "a v1-only host has no unified cgroup to name");
    }

    /// A warm-up with its thread: other tests of this process may have
    /// begun one within the window, so wait the window out and retry.
    /// Also when it was begun.
    fn begun() -> (MigrationWarmup, std::time::Instant) {
        for _ in 0..20 {
            let at = std::time::Instant::now();
            let w = MigrationWarmup::begin();
            if w.0.is_some() {
                return (w, at);
            }
            std::thread::sleep(std::time::Duration::from_millis(WARMUP_RECENT_MS + 5));
        }
        panic!("no warm-up thread began in 20 tries");
    }

    #[test]
    fn a_second_warmup_soon_after_is_skipped() {
        for _ in 0..10 {
            let (first, at) = begun();
            let second = MigrationWarmup::begin();
            // A test thread descheduled past the window between the two
            // calls (a loaded host) proves nothing: try again.
            if at.elapsed() < std::time::Duration::from_millis(WARMUP_RECENT_MS / 2) {
                assert!(second.0.is_none());
                return;
            }
            drop((first, second));
        }
        panic!("never two calls within {} ms", WARMUP_RECENT_MS / 2);
    }

    #[test]
    fn warmup_leaves_the_process_where_it_was() {
        let before = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        drop(begun().0);
        assert_eq!(std::fs::read_to_string("/proc/self/cgroup").unwrap(), before);
    }

    #[test]
    fn fib_trie() {
        let t = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.99.0.2\n        /32 host LOCAL\n     |-- 10.99.0.255\n        /32 link BROADCAST\n  |-- 127.0.0.1\n     /32 host LOCAL\nLocal:\n     |-- 10.99.0.2\n        /32 host LOCAL\n";
        assert_eq!(parse_fib_trie(t), vec!["10.99.0.2".parse::<Ipv4Addr>().unwrap()]);
    }

    #[test]
    fn addresses_by_netlink_and_by_fib_trie_agree() {
        use crate::sys::netlink::testing::ThreadNetns;
        // One namespace with an id (netlink answers), one without (read
        // from its fib_trie), asked together.
        let (Some(with), Some(without)) = (ThreadNetns::new(&[[10, 77, 1, 1]], true), ThreadNetns::new(&[[10, 77, 1, 2]], false)) else { return };
        let addr = |s: &str| vec![s.parse::<Ipv4Addr>().unwrap()];
        assert_eq!(ipv4s_of(&[with.tid, without.tid]), vec![addr("10.77.1.1"), addr("10.77.1.2")]);
        assert_eq!(ipv4s_in_fib_trie(with.tid), addr("10.77.1.1"));
        assert_eq!(ipv4s_of(&[]), Vec::<Vec<Ipv4Addr>>::new());
    }
}
