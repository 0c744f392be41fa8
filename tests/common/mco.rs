//! MCollective for tests: the agent files installed in a private libdir,
//! and a private RabbitMQ broker with STOMP on loopback.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use super::{manifest, need_commands, need_root, Missing};
use super::procs::{free_port, kill_pid, wait_port, Guard};

/// Why the Ruby/MCollective tests cannot run here, if they cannot.
pub fn mco_missing() -> Option<Missing> {
    const HOW: &str = "apt-get install ruby mcollective mcollective-client";
    if let Some(m) = need_commands(&["ruby"], HOW) {
        return Some(m);
    }
    for lib in ["mcollective", "systemu"] {
        let ok = Command::new("ruby")
            .args(["-e", &format!("require '{lib}'")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Some(Missing::ruby_lib(lib, &format!("ruby cannot load {lib} ({HOW})")));
        }
    }
    None
}

/// An MCollective libdir holding the committed agent files, the way an
/// operator installs them: `LIBDIR/mcollective/agent/{geats.ddl,geats.rb,geats/}`.
pub fn mco_libdir(under: &Path) -> PathBuf {
    let lib = under.join("mcolib");
    let agent = lib.join("mcollective/agent");
    std::fs::create_dir_all(agent.join("geats")).unwrap();
    for f in ["geats.ddl", "geats.rb", "geats/systemu_fix.rb"] {
        std::fs::copy(manifest().join("agent-ddl").join(f), agent.join(f)).unwrap();
    }
    lib
}


/// Why the loopback MCollective path cannot run here, if it cannot.
pub fn live_mco_missing() -> Option<Missing> {
    if let Some(m) = mco_missing() {
        return Some(m);
    }
    if let Some(m) = need_root("needs root (the broker and mcollectived run as the test's user, the agent as root)") {
        return Some(m);
    }
    for tool in ["/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmqctl", "/usr/sbin/mcollectived", "/usr/bin/mco"] {
        if !Path::new(tool).is_file() {
            return Some(Missing::file(tool, &format!("{tool} is missing (apt-get install rabbitmq-server mcollective mcollective-client)")));
        }
    }
    None
}

/// The epmd that our broker started (`epmd -daemon`, reparented to init):
/// the process named epmd whose environment holds our ERL_EPMD_PORT.
pub fn our_epmd(port: u16) -> Vec<i32> {
    let want = format!("ERL_EPMD_PORT={port}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if std::fs::read_to_string(e.path().join("comm")).map(|c| c.trim() == "epmd").unwrap_or(false) {
            let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
            if env.split(|b| *b == 0).any(|v| v == want.as_bytes()) {
                out.push(pid);
            }
        }
    }
    out
}

/// A RabbitMQ broker with STOMP on 127.0.0.1, all of it (node name, ports,
/// epmd, cookie, data) private to the test directory.
pub struct Broker {
    pub shell: Guard,
    pub pid_file: PathBuf,
    pub epmd_port: u16,
    pub stomp_port: u16,
}

impl Broker {
    pub fn start(dir: &Path) -> Broker {
        let r = dir.join("rmq");
        for d in ["home", "mnesia", "log"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        let (amqp, stomp, dist, epmd) = (free_port(), free_port(), free_port(), free_port());
        std::fs::write(
            r.join("definitions.json"),
            json!({
                "users": [{"name": "mcollective", "password": "marionette", "tags": "administrator"}],
                "vhosts": [{"name": "/mcollective"}],
                "permissions": [{"user": "mcollective", "vhost": "/mcollective", "configure": ".*", "write": ".*", "read": ".*"}],
                "exchanges": [
                    {"name": "mcollective_broadcast", "vhost": "/mcollective", "type": "topic", "durable": true, "auto_delete": false, "internal": false, "arguments": {}},
                    {"name": "mcollective_directed", "vhost": "/mcollective", "type": "direct", "durable": true, "auto_delete": false, "internal": false, "arguments": {}}
                ]
            })
            .to_string(),
        )
        .unwrap();
        std::fs::write(
            r.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{amqp}\nstomp.listeners.tcp.1 = 127.0.0.1:{stomp}\nloopback_users = none\n\
                 definitions.import_backend = local_filesystem\ndefinitions.local.path = {}\n\
                 log.console = true\nlog.console.level = warning\nlog.file = false\n",
                r.join("definitions.json").display()
            ),
        )
        .unwrap();
        std::fs::write(r.join("enabled_plugins"), "[rabbitmq_stomp].\n").unwrap();
        let p = |s: &str| r.join(s).display().to_string();
        let env: Vec<(String, String)> = [
            ("HOME", p("home")),
            ("RABBITMQ_NODENAME", format!("geatstest{}@localhost", std::process::id())),
            ("RABBITMQ_DIST_PORT", dist.to_string()),
            ("ERL_EPMD_PORT", epmd.to_string()),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
            ("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}".into()),
            ("RABBITMQ_CONFIG_FILE", p("rabbitmq.conf")),
            ("RABBITMQ_MNESIA_BASE", p("mnesia")),
            ("RABBITMQ_LOG_BASE", p("log")),
            ("RABBITMQ_PID_FILE", p("rabbit.pid")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", p("enabled_plugins")),
            ("RABBITMQ_ENABLED_PLUGINS", "rabbitmq_stomp".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let out = std::fs::File::create(r.join("server.out")).unwrap();
        let child = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(&r)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut b = Broker { shell: Guard::new("rabbitmq-server", child), pid_file: r.join("rabbit.pid"), epmd_port: epmd, stomp_port: stomp };
        let up = wait_port(stomp, Duration::from_secs(90), &mut b.shell);
        assert!(up, "RabbitMQ did not open STOMP on {stomp}:\n{}", std::fs::read_to_string(r.join("server.out")).unwrap_or_default());
        b
    }

    pub fn stop(&mut self) {
        let beam = std::fs::read_to_string(&self.pid_file).ok().and_then(|s| s.trim().parse::<i32>().ok());
        // rabbitmq-server's shell turns SIGTERM into a clean broker stop.
        self.shell.stop(Duration::from_secs(30));
        if let Some(pid) = beam {
            kill_pid("beam (rabbitmq)", pid);
        }
        for pid in our_epmd(self.epmd_port) {
            kill_pid("epmd", pid);
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn mco_cfg(dir: &Path, lib: &Path, stomp: u16, extra: &str) -> String {
    format!(
        "main_collective = mcollective\ncollectives = mcollective\nlibdir = {lib}\nsecurityprovider = psk\nplugin.psk = geats-test-psk\n\
         connector = rabbitmq\nplugin.rabbitmq.vhost = /mcollective\nplugin.rabbitmq.pool.size = 1\n\
         plugin.rabbitmq.pool.1.host = 127.0.0.1\nplugin.rabbitmq.pool.1.port = {stomp}\n\
         plugin.rabbitmq.pool.1.user = mcollective\nplugin.rabbitmq.pool.1.password = marionette\n\
         factsource = yaml\nplugin.yaml = {facts}\ncolor = 0\n{extra}",
        lib = lib.display(),
        facts = dir.join("facts.yaml").display()
    )
}
