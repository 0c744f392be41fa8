//! The LXC config file geats writes for a container, as pure functions of
//! the definition, the attached volumes and the VM type's settings.
//!
//! Every value that reaches a line is either a validated type
//! ([`crate::names`], [`crate::definition::MacAddr`], an [`Ipv4Addr`]) or a
//! path from the configuration, and [`ConfigWriter::set`] refuses any value
//! with a control character, so no request can add a line. The description
//! is never written.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::definition::{check_mountpoint, Definition, NicType};
use crate::names::VmName;
use crate::vm::{AttachedVolume, VmError};

/// Is `k` an acceptable extra config key (`^lxc\.[a-z0-9_.]+$`)?
pub fn valid_key(k: &str) -> bool {
    k.len() > 4
        && k.starts_with("lxc.")
        && k[4..].chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
}

/// Is `v` usable as a config value (one line, no control characters)?
pub fn valid_value(v: &str) -> bool {
    !v.chars().any(char::is_control)
}

/// Builds the config text line by line, refusing unsafe values.
#[derive(Debug, Default)]
pub struct ConfigWriter {
    text: String,
}

impl ConfigWriter {
    /// Add `key = value`; `pointer` names where the value came from.
    pub fn set(&mut self, key: &str, value: &str, pointer: &str) -> Result<(), VmError> {
        if !valid_key(key) {
            return Err(VmError::Invalid { pointer: pointer.into(), problem: format!("{key:?} is not an LXC config key") });
        }
        if !valid_value(value) || value.trim() != value {
            return Err(VmError::Invalid {
                pointer: pointer.into(),
                problem: format!("value {value:?} for {key} contains a control character or surrounding whitespace"),
            });
        }
        self.text.push_str(key);
        self.text.push_str(" = ");
        self.text.push_str(value);
        self.text.push('\n');
        Ok(())
    }

    /// Add a comment line (fixed text only).
    fn comment(&mut self, c: &str) {
        self.text.push_str("# ");
        self.text.push_str(c);
        self.text.push('\n');
    }

    /// The text.
    pub fn finish(self) -> String {
        self.text
    }
}

fn path_value(p: &Path, pointer: &str) -> Result<String, VmError> {
    let s = p.to_str().ok_or_else(|| VmError::Invalid { pointer: pointer.into(), problem: format!("path {} is not UTF-8", p.display()) })?;
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(VmError::Invalid { pointer: pointer.into(), problem: format!("path {s:?} contains whitespace or a control character") });
    }
    Ok(s.to_string())
}

fn broadcast(addr: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
    Ipv4Addr::from(u32::from(addr) | !mask)
}

/// The inputs of a config besides the definition.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// The container's root directory.
    pub rootfs: PathBuf,
    /// The attached volumes (the first is the root).
    pub volumes: &'a [AttachedVolume],
    /// Extra keys from the VM type's settings, written last.
    pub extra: &'a BTreeMap<String, String>,
    /// Confinement: id map, idmapped mounts, seccomp, AppArmor.
    pub security: Security,
}

/// What confines a container, decided by the VM type from its settings,
/// the definition and the host (see [`super::confine`]).
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// The id map of an unprivileged container; `None` when privileged.
    pub idmap: Option<super::confine::IdShift>,
    /// Present the rootfs through an idmapped mount.
    pub rootfs_idmapped: bool,
    /// Per volume (by index; the root's is ignored): bind it idmapped.
    pub idmapped_volumes: Vec<bool>,
    /// The seccomp policy file, when the kernel supports seccomp.
    pub seccomp: Option<PathBuf>,
    /// Confine with LXC's generated AppArmor profile (AppArmor enabled).
    pub apparmor: bool,
    /// Device allow-list lines beyond [`super::confine::DEVICES`].
    pub devices: Vec<&'static str>,
    /// One-line notes written as comments (shown by `info --config`).
    pub notes: Vec<String>,
}

/// The period of the CPU quota, microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Generate the config of `vm`.
pub fn render(vm: &VmName, def: &Definition, inp: &Inputs<'_>) -> Result<String, VmError> {
    let mut w = ConfigWriter::default();
    w.comment(&format!("LXC config of {vm}, written by geats; `geats define` rewrites it"));
    w.set("lxc.uts.name", vm.as_str(), "/vm_name")?;
    for n in &inp.security.notes {
        // Notes are geats' own text; a control character would end the line.
        w.comment(&n.replace(|c: char| c.is_control(), " "));
    }
    let sec = &inp.security;
    w.set("lxc.rootfs.path", &format!("dir:{}", path_value(&inp.rootfs, "/definition/storage/0")?), "/definition/storage/0")?;
    if let Some(m) = &sec.idmap {
        w.set("lxc.idmap", &format!("u 0 {} {}", m.uid, m.range), "")?;
        w.set("lxc.idmap", &format!("g 0 {} {}", m.gid, m.range), "")?;
        if sec.rootfs_idmapped {
            w.set("lxc.rootfs.options", "idmap=container", "")?;
        }
    }
    w.set("lxc.autodev", "1", "")?;
    w.set("lxc.tty.max", "1", "")?;
    w.set("lxc.pty.max", "16", "")?;
    w.set("lxc.mount.auto", "proc:mixed sys:mixed", "")?;
    w.set("lxc.cap.drop", super::confine::CAP_DROP, "")?;
    // Both cgroup layouts, as for the limits below.
    for v in ["lxc.cgroup", "lxc.cgroup2"] {
        w.set(&format!("{v}.devices.deny"), "a", "")?;
        for d in super::confine::DEVICES.iter().chain(&sec.devices) {
            w.set(&format!("{v}.devices.allow"), d, "")?;
        }
    }
    if let Some(p) = &sec.seccomp {
        w.set("lxc.seccomp.profile", &path_value(p, "")?, "")?;
    }
    if sec.apparmor {
        w.set("lxc.apparmor.profile", "generated", "")?;
        w.set("lxc.apparmor.allow_nesting", "0", "")?;
    }
    if let Some(ram) = def.ram {
        // Both cgroup layouts: LXC ignores (with a warning) the keys of
        // the layout the host does not use, and the wrong ones alone would
        // be ignored silently.
        w.set("lxc.cgroup.memory.limit_in_bytes", &format!("{ram}M"), "/definition/ram")?;
        w.set("lxc.cgroup2.memory.max", &format!("{ram}M"), "/definition/ram")?;
    }
    if let Some(cpus) = def.cpus {
        let quota = u64::from(cpus) * CPU_PERIOD_US;
        w.set("lxc.cgroup.cpu.cfs_period_us", &CPU_PERIOD_US.to_string(), "/definition/cpus")?;
        w.set("lxc.cgroup.cpu.cfs_quota_us", &quota.to_string(), "/definition/cpus")?;
        w.set("lxc.cgroup2.cpu.max", &format!("{quota} {CPU_PERIOD_US}"), "/definition/cpus")?;
    }
    if def.network.is_empty() {
        w.set("lxc.net.0.type", "empty", "")?;
    }
    for (i, nic) in def.network.iter().enumerate() {
        let ptr = format!("/definition/network/{i}");
        let k = |s: &str| format!("lxc.net.{i}.{s}");
        match nic.kind() {
            NicType::None => {
                w.set(&k("type"), "empty", &ptr)?;
                continue;
            }
            NicType::Veth => {
                w.set(&k("type"), "veth", &ptr)?;
            }
            NicType::Macvlan => {
                w.set(&k("type"), "macvlan", &ptr)?;
                w.set(&k("macvlan.mode"), "bridge", &ptr)?;
            }
        }
        if let Some(b) = &nic.bridge {
            w.set(&k("link"), b.as_str(), &format!("{ptr}/bridge"))?;
        }
        w.set(&k("flags"), "up", &ptr)?;
        w.set(&k("name"), nic.name.as_str(), &format!("{ptr}/name"))?;
        if let Some(m) = &nic.hwaddr {
            w.set(&k("hwaddr"), &m.to_string(), &format!("{ptr}/hwaddr"))?;
        }
        let cidr = nic.cidr().map_err(|problem| VmError::Invalid { pointer: format!("{ptr}/ipaddr"), problem })?;
        if let Some(c) = cidr {
            // With the broadcast: without it LXC sets brd 0.0.0.255.
            w.set(&k("ipv4.address"), &format!("{c} {}", broadcast(c.addr, c.prefix)), &format!("{ptr}/ipaddr"))?;
        }
        if let Some(g) = nic.gateway {
            w.set(&k("ipv4.gateway"), &g.to_string(), &format!("{ptr}/gateway"))?;
        }
    }
    for (i, v) in inp.volumes.iter().enumerate().skip(1) {
        let ptr = format!("/definition/storage/{i}");
        let (Some(dir), Some(mp)) = (v.directory(), &v.mountpoint) else { continue };
        check_mountpoint(mp).map_err(|problem| VmError::Invalid { pointer: format!("{ptr}/mountpoint"), problem })?;
        let host = path_value(dir, &ptr)?;
        let idmap = if sec.idmap.is_some() && sec.idmapped_volumes.get(i).copied().unwrap_or(false) { ",idmap=container" } else { "" };
        w.set("lxc.mount.entry", &format!("{host} {} none bind,create=dir{idmap} 0 0", mp.trim_start_matches('/')), &ptr)?;
    }
    for (key, value) in inp.extra {
        w.set(key, value, "")?;
    }
    Ok(w.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> VmName {
        VmName::new("web1").unwrap()
    }

    fn def(v: serde_json::Value) -> Definition {
        serde_json::from_value(v).unwrap()
    }

    fn vol(name: &str, dir: &str, mp: Option<&str>) -> AttachedVolume {
        AttachedVolume {
            name: crate::names::VolumeName::new(name).unwrap(),
            mountpoint: mp.map(str::to_string),
            provides: crate::storage::Provides::directory(dir.into()),
        }
    }

    #[test]
    fn full_config_snapshot() {
        let d = def(serde_json::json!({
            "description": "two lines\nlxc.cgroup.devices.allow = a",
            "ram": 256, "cpus": 2,
            "network": [
                {"name": "eth0", "bridge": "br0", "hwaddr": "02:00:0a:63:00:02", "ipaddr": "10.99.0.2/24", "gateway": "10.99.0.1"},
                {"name": "eth1", "type": "macvlan", "bridge": "enp1s0", "ipaddr": "192.168.1.5", "netmask": "255.255.255.0"},
                {"name": "eth2", "type": "none"}
            ],
            "storage": [{"name": "root", "type": "dir"}, {"name": "data", "type": "dir", "mountpoint": "/srv/data"}]
        }));
        let vols = [vol("root", "/var/lib/geats/volumes/web1/root", None), vol("data", "/var/lib/geats/volumes/web1/data", Some("/srv/data"))];
        let extra: BTreeMap<String, String> = [("lxc.apparmor.profile".to_string(), "unconfined".to_string())].into();
        let security = Security {
            idmap: Some(super::super::confine::DEFAULT_MAP),
            rootfs_idmapped: true,
            idmapped_volumes: vec![true, true],
            seccomp: Some("/var/lib/lxc/web1/seccomp".into()),
            apparmor: true,
            devices: vec!["c 10:200 rwm"],
            notes: vec!["unprivileged".into()],
        };
        let text = render(&vm(), &d, &Inputs { rootfs: "/var/lib/geats/volumes/web1/root".into(), volumes: &vols, extra: &extra, security }).unwrap();
        assert!(!text.contains("devices.allow = a"), "the description leaked into the config");
        insta::assert_snapshot!(text);
    }

    #[test]
    fn minimal_config_has_no_network() {
        let text = render(&vm(), &def(serde_json::json!({})), &Inputs { rootfs: "/r/web1".into(), volumes: &[], extra: &BTreeMap::new(), security: Security::default() }).unwrap();
        assert!(text.contains("lxc.net.0.type = empty\n"), "{text}");
        assert!(!text.contains("memory") && !text.contains("cpu"), "{text}");
    }

    /// Issue 12: a privileged container has no id map and no idmapped
    /// mount, but the same cap drops and device allow-list.
    #[test]
    fn issue_12_privileged_is_still_fenced() {
        let vols = [vol("root", "/r", None), vol("data", "/d", Some("/srv"))];
        let sec = Security { idmapped_volumes: vec![true, true], notes: vec!["a\nlxc.x = 1".into()], ..Security::default() };
        let text = render(&vm(), &def(serde_json::json!({"privileged": true})), &Inputs { rootfs: "/r".into(), volumes: &vols, extra: &BTreeMap::new(), security: sec }).unwrap();
        assert!(!text.contains("lxc.idmap") && !text.contains("idmap=container"), "{text}");
        assert!(!text.contains("\nlxc.x"), "a note added a line: {text}");
        assert!(text.contains("lxc.cap.drop = mac_admin mac_override sys_module sys_rawio sys_time\n"), "{text}");
        assert!(text.contains("lxc.cgroup.devices.deny = a\n") && text.contains("lxc.cgroup2.devices.deny = a\n"), "{text}");
        assert!(text.contains("lxc.cgroup2.devices.allow = c 136:* rwm\n") && !text.contains("10:229"), "{text}");
    }

    #[test]
    fn no_value_can_add_a_line() {
        let mut w = ConfigWriter::default();
        assert!(w.set("lxc.uts.name", "a\nlxc.x = 1", "/p").is_err());
        assert!(w.set("lxc.uts.name", "a\rb", "/p").is_err());
        assert!(w.set("lxc.Bad", "a", "/p").is_err());
        assert!(w.set("lxc.a\nb", "a", "/p").is_err());
        let vols = [vol("root", "/r", None), vol("data", "/d ata", Some("/srv"))];
        let e = render(&vm(), &def(serde_json::json!({})), &Inputs { rootfs: "/r".into(), volumes: &vols, extra: &BTreeMap::new(), security: Security::default() }).unwrap_err();
        assert!(e.to_string().starts_with("/definition/storage/1"), "{e}");
        let e = render(&vm(), &def(serde_json::json!({})), &Inputs { rootfs: "/r\n/x".into(), volumes: &[], extra: &BTreeMap::new(), security: Security::default() }).unwrap_err();
        assert!(e.to_string().contains("control"), "{e}");
    }

    #[test]
    fn keys() {
        assert!(valid_key("lxc.apparmor.profile"));
        assert!(valid_key("lxc.cgroup2.memory.max"));
        assert!(!valid_key("lxc."));
        assert!(!valid_key("lxc.A"));
        assert!(!valid_key("foo.bar"));
        assert!(!valid_key("lxc.a b"));
        assert_eq!(broadcast("10.99.0.2".parse().unwrap(), 24).to_string(), "10.99.0.255");
        assert_eq!(broadcast("10.99.0.2".parse().unwrap(), 32).to_string(), "10.99.0.2");
        assert_eq!(broadcast("10.99.0.2".parse().unwrap(), 0).to_string(), "255.255.255.255");
    }
}
