//! LXC test helpers: a busybox template built in Rust from Debian's
//! static `/bin/busybox`, a bridge that is deleted on drop, and a guard that
//! powers off every container a test made, also when the test panics.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why an LXC test cannot run here, if it cannot.
pub fn missing() -> Option<super::Missing> {
    use super::Missing;
    if let Some(m) = super::need_root("needs root") {
        return Some(m);
    }
    for tool in ["lxc-start", "lxc-stop", "lxc-info", "lxc-attach", "ip"] {
        if !["/usr/bin", "/usr/sbin", "/bin", "/sbin"].iter().any(|d| Path::new(d).join(tool).is_file()) {
            return Some(Missing::command(tool, &format!("{tool} is not installed (apt-get install lxc iproute2)")));
        }
    }
    if !Path::new(BUSYBOX).is_file() {
        return Some(Missing::file(BUSYBOX, &format!("{BUSYBOX} is missing (apt-get install busybox-static)")));
    }
    None
}

/// Debian's static busybox.
pub const BUSYBOX: &str = "/bin/busybox";

/// Run a command (argv, no shell); returns (exit code, stdout, stderr).
pub fn run(argv: &[&str]) -> (i32, String, String) {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"));
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

const INITTAB: &str = "::sysinit:/etc/init.d/rcS\n::respawn:-/bin/sh\ntty1::respawn:/sbin/getty -L tty1 115200 vt100\n::ctrlaltdel:/sbin/reboot\n::shutdown:/bin/sync\n";

const RCS: &str = r#"#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mkdir -p /proc /sys /dev/pts /dev/shm /run /tmp
grep -q ' /proc ' /proc/mounts 2>/dev/null || mount -t proc proc /proc
grep -q ' /dev/pts ' /proc/mounts || mount -t devpts devpts /dev/pts 2>/dev/null
grep -q ' /run ' /proc/mounts || mount -t tmpfs run /run 2>/dev/null
HOSTNAME=; IFACE=eth0; IPV4=; GATEWAY=
[ -f /etc/hostname ] && HOSTNAME=$(cat /etc/hostname)
[ -f /etc/firstboot.config ] && . /etc/firstboot.config
[ -n "$HOSTNAME" ] && hostname "$HOSTNAME"
ip link set lo up
if [ -n "$IPV4" ] && ip link show "$IFACE" >/dev/null 2>&1; then
  ip link set "$IFACE" up
  ip addr add "$IPV4" dev "$IFACE" 2>/dev/null
  [ -n "$GATEWAY" ] && ip route replace default via "$GATEWAY" dev "$IFACE"
fi
echo "rcS done: $(hostname)" > /run/rcS.done
"#;

/// Write a busybox rootfs archive `DIR/NAME.tar.gz`: busybox init as PID 1,
/// an applet symlink for each of `busybox --list-full`, an rcS that applies
/// `/etc/firstboot.config`, and no `/etc/hostname` (geats writes it).
pub fn busybox_template(dir: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("template dir");
    let path = dir.join(format!("{name}.tar.gz"));
    let file = std::fs::File::create(&path).expect("create template");
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    let dir_entry = |b: &mut tar::Builder<_>, p: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, p, std::io::empty()).expect("dir");
    };
    for (d, mode) in [
        ("bin", 0o755), ("sbin", 0o755), ("usr", 0o755), ("usr/bin", 0o755), ("usr/sbin", 0o755), ("etc", 0o755), ("etc/init.d", 0o755),
        ("dev", 0o755), ("proc", 0o755), ("sys", 0o755), ("tmp", 0o1777), ("root", 0o700), ("run", 0o755), ("var", 0o755), ("var/log", 0o755),
        ("mnt", 0o755), ("home", 0o755),
    ] {
        dir_entry(&mut b, d, mode);
    }
    let file_entry = |b: &mut tar::Builder<_>, p: &str, mode: u32, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, p, data).expect("file");
    };
    let bb = std::fs::read(BUSYBOX).expect("read busybox");
    file_entry(&mut b, "bin/busybox", 0o755, &bb);
    file_entry(&mut b, "etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n");
    file_entry(&mut b, "etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n");
    file_entry(&mut b, "etc/shadow", 0o600, b"root::0:0:99999:7:::\n");
    file_entry(&mut b, "etc/fstab", 0o644, b"");
    file_entry(&mut b, "etc/hosts", 0o644, b"127.0.0.1 localhost\n");
    file_entry(&mut b, "etc/inittab", 0o644, INITTAB.as_bytes());
    file_entry(&mut b, "etc/init.d/rcS", 0o755, RCS.as_bytes());
    let (code, list, err) = run(&[BUSYBOX, "--list-full"]);
    assert_eq!(code, 0, "busybox --list-full: {err}");
    let mut seen = std::collections::HashSet::new();
    for p in list.lines().map(str::trim).filter(|p| !p.is_empty() && *p != "bin/busybox") {
        if !seen.insert(p.to_string()) {
            continue;
        }
        let target = if p.starts_with("bin/") && !p[4..].contains('/') { "busybox" } else { "/bin/busybox" };
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_link(&mut h, p, target).expect("symlink");
    }
    for (p, t) in [("sbin/init", "/bin/busybox"), ("bin/sh", "busybox")] {
        if !seen.contains(p) {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, p, t).expect("symlink");
        }
    }
    b.into_inner().expect("finish tar").finish().expect("finish gzip");
    path
}

/// A Linux bridge with an address, deleted on drop.
#[derive(Debug)]
pub struct Bridge {
    /// Its name (at most 15 characters).
    pub name: String,
}

impl Bridge {
    /// Create bridge `name` with address `cidr` (e.g. `10.213.7.1/24`), up.
    pub fn new(name: &str, cidr: &str) -> Bridge {
        assert!(name.len() <= 15, "bridge name {name} is too long");
        let _ = run(&["ip", "link", "del", name]);
        let (c, _, e) = run(&["ip", "link", "add", name, "type", "bridge"]);
        assert_eq!(c, 0, "ip link add {name}: {e}");
        let br = Bridge { name: name.to_string() };
        for argv in [vec!["ip", "link", "set", name, "up"], vec!["ip", "addr", "add", cidr, "dev", name]] {
            let (c, _, e) = run(&argv);
            assert_eq!(c, 0, "{argv:?}: {e}");
        }
        br
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let (c, _, e) = run(&["ip", "link", "del", &self.name]);
        if c != 0 {
            eprintln!("cleanup: could not delete bridge {}: {e}", self.name);
        }
    }
}

/// Powers off the named containers of an lxcpath on drop (the temp dir
/// holding their files is removed by the `Env` after this).
#[derive(Debug)]
pub struct Containers {
    /// The lxcpath.
    pub lxcpath: PathBuf,
    /// The containers.
    pub names: Vec<String>,
}

impl Containers {
    /// Guard `names` under `lxcpath`.
    pub fn new(lxcpath: &Path, names: &[&str]) -> Containers {
        Containers { lxcpath: lxcpath.to_path_buf(), names: names.iter().map(|s| s.to_string()).collect() }
    }

    /// `lxc-info -s -H` of one container: `RUNNING`, `STOPPED`, or the
    /// error text when LXC does not know it.
    pub fn lxc_state(&self, name: &str) -> String {
        let lp = self.lxcpath.to_string_lossy().into_owned();
        let (c, out, err) = run(&["lxc-info", "-P", &lp, "-n", name, "-s", "-H"]);
        if c == 0 {
            out.trim().to_string()
        } else {
            format!("error: {}", err.trim())
        }
    }

    /// `lxc-info -p -H`: the init pid.
    pub fn lxc_pid(&self, name: &str) -> Option<i64> {
        let lp = self.lxcpath.to_string_lossy().into_owned();
        let (_, out, _) = run(&["lxc-info", "-P", &lp, "-n", name, "-p", "-H"]);
        out.trim().parse().ok()
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        self.cleanup();
        // Empty lock directories up to /run/lxc/lock.
        let mut p = Path::new("/run/lxc/lock").join(self.lxcpath.strip_prefix("/").unwrap_or(&self.lxcpath));
        while p != Path::new("/run/lxc/lock") && std::fs::remove_dir(&p).is_ok() {
            if !p.pop() {
                break;
            }
        }
    }
}

impl Containers {
    fn cleanup(&mut self) {
        let lp = self.lxcpath.to_string_lossy().into_owned();
        for n in &self.names {
            if self.lxc_state(n) != "STOPPED" && !self.lxc_state(n).starts_with("error") {
                let (c, _, e) = run(&["lxc-stop", "-P", &lp, "-n", n, "-k"]);
                if c != 0 {
                    eprintln!("cleanup: could not stop container {n}: {e}");
                }
            }
            // LXC's lock directory for this lxcpath (a private temp path).
            let lock = Path::new("/run/lxc/lock").join(self.lxcpath.strip_prefix("/").unwrap_or(&self.lxcpath));
            let _ = std::fs::remove_file(lock.join(format!(".{n}")));
            // Failed starts can leave empty cgroups named after the container.
            if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
                let mut bases: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
                bases.push(PathBuf::from("/sys/fs/cgroup"));
                for base in bases {
                    for prefix in ["lxc.payload.", "lxc.monitor."] {
                        let p = base.join(format!("{prefix}{n}"));
                        if p.is_dir() {
                            let _ = std::fs::remove_dir(p.join(".lxc"));
                            let _ = std::fs::remove_dir(&p);
                        }
                    }
                }
            }
        }
    }
}
