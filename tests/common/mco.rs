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

/// One live MCollective at a time in this test binary: each is a RabbitMQ
/// and an mcollectived, too heavy to run side by side on a small host.
static LIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The full loopback path for one geats root: a private RabbitMQ with
/// STOMP on 127.0.0.1, an `mcollectived` (identity `node1.test`) with the
/// committed agent files that runs the geats under test, and a client
/// config (identity `ops.client`). Everything is stopped by pid on drop.
pub struct LiveMco {
    /// The directory with the configs and logs (also the clients' HOME).
    pub dir: PathBuf,
    /// The client config `mco` and the Ruby API client use.
    pub client_cfg: PathBuf,
    // Field order is drop order: the daemon before the broker, the lock last.
    daemon: Guard,
    broker: Broker,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

impl LiveMco {
    /// Start the broker and the daemon for `root` (its `GEATS_ROOT`) and
    /// `config` (its `GEATS_CONFIG`); returns once the daemon subscribed.
    pub fn start(root: &Path, config: &Path) -> LiveMco {
        let one = LIVE.lock().unwrap_or_else(|p| p.into_inner());
        let d = root.join("mco");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("facts.yaml"), "--- {}\n").unwrap();
        let lib = mco_libdir(root);
        let broker = Broker::start(root);
        let stomp = broker.stomp_port;
        let server_cfg = d.join("server.cfg");
        let log = d.join("mcollectived.log");
        std::fs::write(
            &server_cfg,
            mco_cfg(&d, &lib, stomp, &format!(
                "identity = node1.test\nlogfile = {}\nloglevel = debug\ndaemonize = 0\nregisterinterval = 0\nplugin.geats.command = {}\n",
                log.display(),
                super::bin().display()
            )),
        )
        .unwrap();
        let client_cfg = d.join("client.cfg");
        std::fs::write(&client_cfg, mco_cfg(&d, &lib, stomp, &format!("identity = ops.client\nlogger_type = file\nlogfile = {}\nloglevel = info\n", d.join("client.log").display()))).unwrap();
        // Where MCollective's Ruby API looks first ($HOME/.mcollective),
        // as a client such as Vagoth's finds its config.
        std::fs::copy(&client_cfg, d.join(".mcollective")).unwrap();

        // mcollectived passes its whole environment to implemented_by commands.
        let daemon = Command::new("/usr/sbin/mcollectived")
            .arg("--config")
            .arg(&server_cfg)
            .arg("--no-daemonize")
            .env("GEATS_ROOT", root)
            .env("GEATS_CONFIG", config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("mcollectived.out")).unwrap())
            .spawn()
            .unwrap();
        let mut live = LiveMco { dir: d.clone(), client_cfg, daemon: Guard::new("mcollectived", daemon), broker, _one_at_a_time: one };
        let end = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Subscribing to /exchange/mcollective_broadcast/geats") && text.contains("Subscribing to /exchange/mcollective_directed/node1.test") {
                break;
            }
            let died = live.daemon.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(died.is_none() && std::time::Instant::now() < end, "mcollectived did not subscribe:\n{text}\n{}", std::fs::read_to_string(d.join("mcollectived.out")).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(100));
        }
        live
    }

    /// `mco rpc ARGS -I node1.test -j`: (exit code, the JSON results).
    pub fn rpc(&self, args: &[&str]) -> (i32, serde_json::Value) {
        let o = Command::new("mco")
            .arg("rpc")
            .args(args)
            .arg("--config")
            .arg(&self.client_cfg)
            .args(["-I", "node1.test", "-j"])
            .env("HOME", &self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("mco rpc {args:?}: not JSON ({e}): {}", super::out_text(&o)));
        (o.status.code().unwrap_or(-1), v)
    }

    /// Calls through MCollective's Ruby RPC client API, the way a
    /// controller's driver makes them (`tests/mco/api_client.rb`): each
    /// call is `[action, arguments, timeout]` with string keys, addressed
    /// to node1.test; returns per call its results (`sender`,
    /// `statuscode`, `statusmsg`, `data` per node) and the seconds the
    /// client waited for them.
    pub fn api_calls(&self, calls: &serde_json::Value) -> Vec<(serde_json::Value, f64)> {
        let mut c = Command::new("ruby");
        c.arg(manifest().join("tests/mco/api_client.rb")).env("HOME", &self.dir);
        let o = super::run_with_stdin(c, calls.to_string().as_bytes());
        assert!(o.status.success(), "api_client.rb: {}", super::out_text(&o));
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), calls.as_array().map(Vec::len).unwrap_or(0), "{}", super::out_text(&o));
        lines.into_iter().map(|l| (l["results"].clone(), l["seconds"].as_f64().unwrap_or(f64::NAN))).collect()
    }

    /// Stop the daemon, then the broker (and its Erlang VM and epmd),
    /// and check nothing of the broker is left.
    pub fn stop(mut self) {
        self.daemon.stop(Duration::from_secs(10));
        self.broker.stop();
        assert!(our_epmd(self.broker.epmd_port).is_empty(), "epmd left running");
    }
}
