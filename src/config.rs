//! The configuration: `geats.toml` (or the embedded defaults) turned into a
//! [`Config`]. Every path geats touches comes from here.
//!
//! Where it comes from, first match wins: `--config PATH`, `$GEATS_CONFIG`,
//! `ROOT/etc/geats/geats.toml` if it exists, else the embedded defaults.
//! `ROOT` is `$GEATS_ROOT`, else the file's `root`, else `/`, and prefixes
//! every default path. Named VM types and storage types from the file are
//! added to the embedded ones (`lxc`, `dummy`; `dir`, `dummy`), replacing an
//! embedded one of the same name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::names::TypeName;

/// A problem with the configuration; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a wrong key.
    #[error("config file {path}, line {line}: {problem}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// A key has an unusable value.
    #[error("config file {path}: key {key}: {problem}")]
    Invalid {
        /// The file, or `<embedded defaults>`.
        path: PathBuf,
        /// The dotted key.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

/// The file's shape. Unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    root: Option<PathBuf>,
    database: Option<PathBuf>,
    records_dir: Option<PathBuf>,
    template_dir: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    lock_timeout: Option<f64>,
    busy_timeout: Option<f64>,
    request_limit: Option<usize>,
    boot_parallel: Option<usize>,
    default_vm_type: Option<String>,
    #[serde(default)]
    vm_types: BTreeMap<String, VmTypeConfig>,
    #[serde(default)]
    storage_types: BTreeMap<String, StorageTypeConfig>,
    #[serde(default)]
    events: EventsFile,
    #[serde(default)]
    hooks: HooksFile,
    migration: Option<MigrationFile>,
}

/// `[events]`: the retention of the event feed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsFile {
    keep: Option<u64>,
    max_age_days: Option<f64>,
}

/// `[hooks]`: programs run after an event is committed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HooksFile {
    on_event: Option<PathBuf>,
    timeout: Option<f64>,
    #[serde(default)]
    by_kind: BTreeMap<String, PathBuf>,
}

/// The event kinds a hook may be configured for: every mutating action
/// and the two drifts.
pub const EVENT_KINDS: [&str; 12] = [
    "define", "provision", "start", "stop", "shutdown", "reboot", "undefine", "deprovision", "lock", "unlock", "down_unexpected", "up_unexpected",
];

/// The hooks: which program runs for an event, and for how long at most.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    /// Run for every event without a program of its own kind.
    pub on_event: Option<PathBuf>,
    /// Run for events of one kind, instead of `on_event`.
    pub by_kind: BTreeMap<String, PathBuf>,
    /// How long all the hooks of one request may take together.
    pub timeout: Duration,
}

impl Hooks {
    /// The program for an event of `kind`, if any.
    pub fn for_kind(&self, kind: &str) -> Option<&Path> {
        self.by_kind.get(kind).or(self.on_event.as_ref()).map(PathBuf::as_path)
    }
}

/// The `[migration]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrationFile {
    command: Option<Vec<String>>,
    timeout: Option<f64>,
}

/// How `migrate` reaches a destination.
#[derive(Debug, Clone)]
pub struct MigrationConfig {
    /// The argv that runs `geats receive` on the destination, with
    /// `{destination}` replaced in each argument; no shell.
    pub command: Vec<String>,
    /// How long the receiver may take to answer once the stream ended.
    pub timeout: Duration,
}

/// The default `[migration] command`.
pub const MIGRATION_COMMAND: [&str; 6] = ["ssh", "-o", "BatchMode=yes", "root@{destination}", "geats", "receive"];

/// A configured VM type: its driver and the driver's own settings.
#[derive(Debug, Clone, Deserialize)]
pub struct VmTypeConfig {
    /// Which implementation: `lxc` or `dummy`.
    pub driver: String,
    /// Storage types a definition of this VM type may use (empty: any).
    #[serde(default)]
    pub valid_storage_types: Vec<String>,
    /// Driver-specific keys, checked by the driver.
    #[serde(flatten)]
    pub settings: toml::Table,
}

/// A configured storage type: a driver, its settings and an adapter chain.
#[derive(Debug, Clone, Deserialize)]
pub struct StorageTypeConfig {
    /// Which implementation: `dir`, `dummy`, `sparsefile`, ...
    pub driver: String,
    /// Adapters applied in order on top of the driver (`loop`, `filesystem`).
    #[serde(default)]
    pub adapters: Vec<String>,
    /// Driver- and adapter-specific keys, checked by them.
    #[serde(flatten)]
    pub settings: toml::Table,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from, or `None` for the embedded defaults.
    pub source: Option<PathBuf>,
    /// The prefix of every default path.
    pub root: PathBuf,
    /// The SQLite database.
    pub database: PathBuf,
    /// Where each VM's definition and volume records are kept beside the
    /// database, so `geats recover` can rebuild it.
    pub records_dir: PathBuf,
    /// Where OS template archives live.
    pub template_dir: PathBuf,
    /// How long a request waits for another action on the same VM.
    pub lock_timeout: Duration,
    /// SQLite's busy timeout.
    pub busy_timeout: Duration,
    /// The largest request accepted, in bytes.
    pub request_limit: usize,
    /// How many VMs of one boot priority `geats reconcile` starts at once,
    /// if set; [`Config::boot_parallel`] gives the default.
    pub boot_parallel: Option<usize>,
    /// Where measurements worth keeping for a while are cached (`cache_dir`,
    /// default `ROOT/run/geats`: a tmpfs on most hosts, emptied at boot).
    pub cache_dir: PathBuf,
    /// The VM type of a definition that names none.
    pub default_vm_type: TypeName,
    /// The VM types by name.
    pub vm_types: BTreeMap<TypeName, VmTypeConfig>,
    /// The storage types by name.
    pub storage_types: BTreeMap<TypeName, StorageTypeConfig>,
    /// Keep at most this many events (`[events] keep`, default 10000).
    pub events_keep: u64,
    /// Keep no event older than this (`[events] max_age_days`, default 30).
    pub events_max_age: Duration,
    /// `[hooks]`.
    pub hooks: Hooks,
    /// `[migration]`.
    pub migration: MigrationConfig,
}

/// The embedded defaults' name for diagnostics.
pub const EMBEDDED: &str = "<embedded defaults>";

impl Config {
    /// How many VMs of one boot priority `geats reconcile` starts at once:
    /// `boot_parallel`, else the number of CPUs this process may use.
    pub fn boot_parallel(&self) -> usize {
        self.boot_parallel.unwrap_or_else(|| std::thread::available_parallelism().map(usize::from).unwrap_or(1))
    }

    /// Load following the documented order.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let env_root = std::env::var_os("GEATS_ROOT").filter(|v| !v.is_empty()).map(PathBuf::from);
        let path = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => match std::env::var_os("GEATS_CONFIG").filter(|v| !v.is_empty()) {
                Some(p) => Some(PathBuf::from(p)),
                None => {
                    let root = env_root.clone().unwrap_or_else(|| PathBuf::from("/"));
                    let p = root.join("etc/geats/geats.toml");
                    p.is_file().then_some(p)
                }
            },
        };
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(&p).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
                Config::from_toml(&text, Some(p), env_root)
            }
            None => Config::from_toml("", None, env_root),
        }
    }

    /// Build from TOML text. `env_root` overrides the file's `root`.
    pub fn from_toml(text: &str, source: Option<PathBuf>, env_root: Option<PathBuf>) -> Result<Config, ConfigError> {
        let shown = source.clone().unwrap_or_else(|| PathBuf::from(EMBEDDED));
        let file: FileConfig = if text.trim().is_empty() {
            FileConfig::default()
        } else {
            toml::from_str(text).map_err(|e| {
                let problem = e.message().trim().to_string();
                ConfigError::Parse { path: shown.clone(), line: error_line(text, e.span(), &problem), problem }
            })?
        };
        let invalid = |key: &str, problem: String| ConfigError::Invalid { path: shown.clone(), key: key.to_string(), problem };
        let root = env_root.or(file.root).unwrap_or_else(|| PathBuf::from("/"));
        if !root.is_absolute() {
            return Err(invalid("root", format!("{} is not an absolute path", root.display())));
        }
        let abs = |key: &str, v: Option<PathBuf>, default: &str| -> Result<PathBuf, ConfigError> {
            match v {
                Some(p) if p.is_absolute() => Ok(p),
                Some(p) => Err(invalid(key, format!("{} is not an absolute path", p.display()))),
                None => Ok(root.join(default)),
            }
        };
        let seconds = |key: &str, v: Option<f64>, default: f64| -> Result<Duration, ConfigError> {
            let v = v.unwrap_or(default);
            if !(0.0..=86400.0).contains(&v) {
                return Err(invalid(key, format!("{v} is not a number of seconds between 0 and 86400")));
            }
            Ok(Duration::from_secs_f64(v))
        };
        let mut vm_types = default_vm_types();
        for (name, t) in file.vm_types {
            let n = TypeName::new(&name).map_err(|e| invalid(&format!("vm_types.{name}"), e.to_string()))?;
            vm_types.insert(n, t);
        }
        let mut storage_types = default_storage_types();
        for (name, t) in file.storage_types {
            let n = TypeName::new(&name).map_err(|e| invalid(&format!("storage_types.{name}"), e.to_string()))?;
            storage_types.insert(n, t);
        }
        let default_vm_type = TypeName::new(file.default_vm_type.unwrap_or_else(|| "lxc".into()))
            .map_err(|e| invalid("default_vm_type", e.to_string()))?;
        if !vm_types.contains_key(&default_vm_type) {
            return Err(invalid("default_vm_type", format!("{default_vm_type} is not a configured VM type")));
        }
        for (name, t) in &vm_types {
            for s in &t.valid_storage_types {
                if !storage_types.keys().any(|k| k.as_str() == s) {
                    return Err(invalid(
                        &format!("vm_types.{name}.valid_storage_types"),
                        format!("{s} is not a configured storage type"),
                    ));
                }
            }
        }
        let events_keep = file.events.keep.unwrap_or(10_000);
        if events_keep == 0 {
            return Err(invalid("events.keep", "0 would keep no event; use at least 1".into()));
        }
        let days = file.events.max_age_days.unwrap_or(30.0);
        if !(days > 0.0 && days <= 36_500.0) {
            return Err(invalid("events.max_age_days", format!("{days} is not a number of days above 0 and at most 36500")));
        }
        let events_max_age = Duration::from_secs_f64(days * 86400.0);
        let hook_path = |key: &str, p: PathBuf| -> Result<PathBuf, ConfigError> {
            if p.is_absolute() {
                Ok(p)
            } else {
                Err(invalid(key, format!("{} is not an absolute path (hooks run without a shell or a search path)", p.display())))
            }
        };
        let on_event = file.hooks.on_event.map(|p| hook_path("hooks.on_event", p)).transpose()?;
        let mut by_kind = BTreeMap::new();
        for (kind, p) in file.hooks.by_kind {
            let key = format!("hooks.by_kind.{kind}");
            if !EVENT_KINDS.contains(&kind.as_str()) {
                return Err(invalid(&key, format!("{kind} is not an event kind ({})", EVENT_KINDS.join(", "))));
            }
            by_kind.insert(kind, hook_path(&key, p)?);
        }
        let hooks = Hooks { on_event, by_kind, timeout: seconds("hooks.timeout", file.hooks.timeout, 10.0)? };
        let request_limit = file.request_limit.unwrap_or(1 << 20);
        if request_limit < 1024 {
            return Err(invalid("request_limit", format!("{request_limit} bytes is too small; use at least 1024")));
        }
        // The default (the CPUs, from the cgroup's quota) is only looked up
        // by `reconcile`, not by every request.
        let boot_parallel = file.boot_parallel;
        if let Some(n) = boot_parallel.filter(|n| !(1..=1024).contains(n)) {
            return Err(invalid("boot_parallel", format!("{n} is not from 1 to 1024")));
        }
        let mig = file.migration.unwrap_or_default();
        let command = mig.command.unwrap_or_else(|| MIGRATION_COMMAND.iter().map(|s| s.to_string()).collect());
        if command.first().map_or(true, |c| c.is_empty()) {
            return Err(invalid("migration.command", "must name a program: an argv list like [\"ssh\", \"root@{destination}\", \"geats\", \"receive\"]".into()));
        }
        let migration = MigrationConfig { command, timeout: seconds("migration.timeout", mig.timeout, 600.0)? };
        Ok(Config {
            boot_parallel,
            migration,
            database: abs("database", file.database, "var/lib/geats/geats.db")?,
            records_dir: abs("records_dir", file.records_dir, "var/lib/geats/records")?,
            template_dir: abs("template_dir", file.template_dir, "var/lib/geats/templates")?,
            cache_dir: abs("cache_dir", file.cache_dir, "run/geats")?,
            lock_timeout: seconds("lock_timeout", file.lock_timeout, 10.0)?,
            busy_timeout: seconds("busy_timeout", file.busy_timeout, 30.0)?,
            request_limit,
            default_vm_type,
            vm_types,
            storage_types,
            events_keep,
            events_max_age,
            hooks,
            source,
            root,
        })
    }

    /// The file name used in diagnostics.
    pub fn shown_source(&self) -> PathBuf {
        self.source.clone().unwrap_or_else(|| PathBuf::from(EMBEDDED))
    }

    /// A path under the root (for defaults of driver settings).
    pub fn under_root(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// An error about a key of this config.
    pub fn invalid(&self, key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { path: self.shown_source(), key: key.into(), problem: problem.into() }
    }

    /// Deserialize a driver's settings table, naming `prefix` in errors.
    pub fn settings<T: serde::de::DeserializeOwned>(&self, prefix: &str, table: &toml::Table) -> Result<T, ConfigError> {
        toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| self.invalid(prefix, e.message().trim().to_string()))
    }

    /// A path setting: absolute if given, else `default` under the root.
    pub fn path_setting(&self, key: &str, v: Option<PathBuf>, default: &str) -> Result<PathBuf, ConfigError> {
        match v {
            Some(p) if p.is_absolute() => Ok(p),
            Some(p) => Err(self.invalid(key, format!("{} is not an absolute path", p.display()))),
            None => Ok(self.under_root(default)),
        }
    }
}

/// The 1-based line of a TOML error. For an unknown key the span covers
/// the whole table, so the key's own line is looked up within it.
fn error_line(text: &str, span: Option<std::ops::Range<usize>>, problem: &str) -> usize {
    let span = span.unwrap_or(0..0);
    let start = span.start.min(text.len());
    let line_of = |offset: usize| text[..offset].matches('\n').count() + 1;
    if let Some(key) = problem.strip_prefix("unknown field `").and_then(|r| r.split('`').next()) {
        let end = span.end.clamp(start, text.len());
        let mut offset = start;
        for l in text[start..end].split_inclusive('\n') {
            let t = l.trim_start();
            if t.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('=')) {
                return line_of(offset);
            }
            offset += l.len();
        }
    }
    line_of(start)
}

fn table(pairs: &[(&str, toml::Value)]) -> toml::Table {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn default_vm_types() -> BTreeMap<TypeName, VmTypeConfig> {
    let mut m = BTreeMap::new();
    let mut put = |name: &str, driver: &str, valid: &[&str]| {
        if let Ok(n) = TypeName::new(name) {
            m.insert(
                n,
                VmTypeConfig {
                    driver: driver.into(),
                    valid_storage_types: valid.iter().map(|s| s.to_string()).collect(),
                    settings: table(&[]),
                },
            );
        }
    };
    put("lxc", "lxc", &[]);
    put("dummy", "dummy", &[]);
    m
}

fn default_storage_types() -> BTreeMap<TypeName, StorageTypeConfig> {
    let mut m = BTreeMap::new();
    let mut put = |name: &str, driver: &str| {
        if let Ok(n) = TypeName::new(name) {
            m.insert(n, StorageTypeConfig { driver: driver.into(), adapters: vec![], settings: table(&[]) });
        }
    };
    put("dir", "dir");
    put("dummy", "dummy");
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_live_under_root() {
        let c = Config::from_toml("", None, Some("/tmp/x".into())).unwrap();
        assert_eq!(c.database, Path::new("/tmp/x/var/lib/geats/geats.db"));
        assert_eq!(c.default_vm_type.as_str(), "lxc");
        assert!(c.vm_types.keys().any(|k| k.as_str() == "dummy"));
        assert!(c.storage_types.keys().any(|k| k.as_str() == "dir"));
    }

    #[test]
    fn bad_key_names_file_line_and_key() {
        let e = Config::from_toml("root = \"/\"\nbogus = 1\n", Some("/etc/g.toml".into()), None).unwrap_err().to_string();
        assert!(e.contains("/etc/g.toml") && e.contains("line 2") && e.contains("bogus"), "{e}");
    }

    #[test]
    fn events_and_hooks() {
        let c = Config::from_toml("", None, None).unwrap();
        assert_eq!((c.events_keep, c.events_max_age), (10_000, Duration::from_secs(30 * 86400)));
        assert!(c.hooks.for_kind("start").is_none());
        let t = "[events]\nkeep = 5\n[hooks]\non_event = \"/a\"\ntimeout = 2\n[hooks.by_kind]\ndown_unexpected = \"/b\"\n";
        let c = Config::from_toml(t, None, None).unwrap();
        assert_eq!(c.events_keep, 5);
        assert_eq!(c.hooks.for_kind("start"), Some(Path::new("/a")));
        assert_eq!(c.hooks.for_kind("down_unexpected"), Some(Path::new("/b")));
        assert_eq!(c.hooks.timeout, Duration::from_secs(2));
        for bad in ["[hooks]\non_event = \"rel\"\n", "[hooks.by_kind]\nexplode = \"/x\"\n", "[events]\nkeep = 0\n"] {
            assert!(Config::from_toml(bad, None, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn relative_path_refused() {
        let e = Config::from_toml("database = \"rel.db\"\n", Some("/c.toml".into()), None).unwrap_err().to_string();
        assert!(e.contains("key database") && e.contains("absolute"), "{e}");
    }

    #[test]
    fn unknown_storage_type_in_vm_type_refused() {
        let t = "[vm_types.x]\ndriver = \"dummy\"\nvalid_storage_types = [\"nope\"]\n";
        let e = Config::from_toml(t, Some("/c.toml".into()), None).unwrap_err().to_string();
        assert!(e.contains("vm_types.x.valid_storage_types") && e.contains("nope"), "{e}");
    }
}
