//! A private sshd on loopback, for the tests that run geats the way a
//! controller does over SSH.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::procs::{free_port, wait_port, Guard};
use super::{need_root, out_text, run_with_stdin, Missing};

/// An sshd on 127.0.0.1 with its own host key, config and authorized key,
/// all under `dir`.
pub struct Sshd {
    pub guard: Guard,
    pub port: u16,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
}

/// Why the sshd tests cannot run here, if they cannot.
pub fn sshd_missing() -> Option<Missing> {
    if let Some(m) = need_root("needs root (sshd logs in as root)") {
        return Some(m);
    }
    for tool in ["/usr/sbin/sshd", "/usr/bin/ssh", "/usr/bin/ssh-keygen"] {
        if !Path::new(tool).is_file() {
            return Some(Missing::file(tool, &format!("{tool} is missing (apt-get install openssh-server openssh-client)")));
        }
    }
    None
}

pub fn keygen(path: &Path) {
    let o = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "geats-test", "-f"]).arg(path).output().unwrap();
    assert!(o.status.success(), "ssh-keygen: {}", out_text(&o));
}

impl Sshd {
    pub fn start(dir: &Path) -> Sshd {
        Sshd::start_with(dir, "")
    }

    /// Start with extra sshd_config lines.
    pub fn start_with(dir: &Path, extra: &str) -> Sshd {
        let d = dir.join("sshd");
        std::fs::create_dir_all(&d).unwrap();
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        // sshd insists on its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = free_port();
        let config = d.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\nPidFile {pf}\n\
                 PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPrintMotd no\nLogLevel VERBOSE\n{extra}",
                hk = d.join("host_key").display(),
                ak = d.join("authorized_keys").display(),
                pf = d.join("sshd.pid").display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("sshd.log")).unwrap();
        // -D: stay in the foreground, so the child's pid is sshd's.
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut guard = Guard::new("sshd", child);
        let up = wait_port(port, Duration::from_secs(10), &mut guard);
        assert!(up, "sshd did not listen on {port}: {}", std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default());
        Sshd { guard, port, key: d.join("client_key"), known_hosts: d.join("known_hosts") }
    }

    /// `ssh root@127.0.0.1 REMOTE` with `input` on stdin.
    pub fn run(&self, remote: &str, input: &[u8]) -> std::process::Output {
        let mut c = Command::new("ssh");
        c.args(["-F", "/dev/null", "-p", &self.port.to_string(), "-i"])
            .arg(&self.key)
            .args(["-o", "StrictHostKeyChecking=no", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args(["root@127.0.0.1", remote]);
        run_with_stdin(c, input)
    }
}
