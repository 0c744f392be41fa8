//! The VM definition: what a `define` or `provision` request carries.
//!
//! The wire shape is `schemas/definition.json`; these structs refuse unknown
//! fields too, so serde and the schema agree (a test checks both on every
//! fixture). Everything that can reach a path, a command line or an LXC
//! config line is a validated type here ([`crate::names`], [`MacAddr`],
//! [`Ipv4Cidr`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::names::{BridgeName, NicName, TemplateName, TypeName, VmName, VolumeName};

/// A VM definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// The VM's name; when present it must equal the request's `vm_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<VmName>,
    /// Free text for humans; never written into a config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The VM type; the configured default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_type: Option<TypeName>,
    /// The OS template installed onto the root volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateName>,
    /// Network interfaces, in order.
    #[serde(default)]
    pub network: Vec<Nic>,
    /// Storage volumes; the first is the root volume.
    #[serde(default)]
    pub storage: Vec<VolumeSpec>,
    /// Memory limit in MB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram: Option<u64>,
    /// CPU limit in cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// A transient VM's data is destroyed when it is undefined.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transient: bool,
    /// Key/value pairs written to the guest's firstboot config.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Run without a user namespace (root inside is root on the host);
    /// containers are unprivileged unless this is true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// Whether `geats reconcile` (at boot) starts it when its desired
    /// state is running; true when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autostart: Option<bool>,
    /// Boot order for `geats reconcile`: higher first; equal priorities
    /// start in parallel. 0 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_priority: Option<i32>,
    /// Seconds `geats reconcile` waits after this VM's priority group
    /// before starting the next (the largest of the group counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_delay: Option<u32>,
    /// Snapshot retention and schedule (`geats snapshot --due`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<SnapshotPolicy>,
}

/// What a definition asks of snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotPolicy {
    /// Keep at most this many: a new snapshot beyond it deletes the oldest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<u32>,
    /// Take one named by date when one is due (`geats snapshot --due`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
}

/// How often `geats snapshot --due` takes a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Once an hour.
    Hourly,
    /// Once a day.
    Daily,
    /// Once a week.
    Weekly,
}

impl Schedule {
    /// The period, seconds.
    pub fn period_s(self) -> i64 {
        match self {
            Schedule::Hourly => 3600,
            Schedule::Daily => 86_400,
            Schedule::Weekly => 7 * 86_400,
        }
    }
}

/// How a NIC attaches to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NicType {
    /// A veth pair with the host end on `bridge`.
    Veth,
    /// A macvlan on the host interface `bridge`.
    Macvlan,
    /// No network device (the interface is only recorded).
    None,
}

impl NicType {
    /// The word in a definition.
    pub fn as_str(self) -> &'static str {
        match self {
            NicType::Veth => "veth",
            NicType::Macvlan => "macvlan",
            NicType::None => "none",
        }
    }
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    /// The interface name inside the VM, e.g. `eth0`.
    pub name: NicName,
    /// How it attaches; `veth` when absent.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub nic_type: Option<NicType>,
    /// The host bridge (veth) or parent interface (macvlan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<BridgeName>,
    /// The MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hwaddr: Option<MacAddr>,
    /// IPv4 address, plain (with `netmask`) or `ADDR/PREFIX`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipaddr: Option<String>,
    /// Dotted netmask for a plain `ipaddr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netmask: Option<Ipv4Addr>,
    /// Default gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
}

impl Nic {
    /// The attachment type, defaulting to veth.
    pub fn kind(&self) -> NicType {
        self.nic_type.unwrap_or(NicType::Veth)
    }

    /// The address with its prefix, combining `ipaddr` and `netmask`.
    pub fn cidr(&self) -> Result<Option<Ipv4Cidr>, String> {
        let Some(ip) = &self.ipaddr else { return Ok(None) };
        let c = Ipv4Cidr::parse(ip, self.netmask)?;
        Ok(Some(c))
    }
}

/// A storage volume of a definition. Driver-specific keys are kept in
/// `options` and checked by the storage type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// The volume's name within the VM.
    pub name: VolumeName,
    /// The configured storage type.
    #[serde(rename = "type")]
    pub storage_type: TypeName,
    /// Size such as `512M`, `10G` or a number of bytes, for sized drivers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<serde_json::Value>,
    /// Where a non-root volume is mounted inside the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mountpoint: Option<String>,
    /// Further driver-specific keys.
    #[serde(flatten)]
    pub options: BTreeMap<String, serde_json::Value>,
}

/// A unicast MAC address `xx:xx:xx:xx:xx:xx`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(String);

impl TryFrom<String> for MacAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let ok = parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
        if !ok {
            return Err(format!("hwaddr {s:?} is not a MAC address like 02:00:00:00:00:01"));
        }
        let first = u8::from_str_radix(parts[0], 16).map_err(|e| e.to_string())?;
        if first & 1 == 1 {
            return Err(format!("hwaddr {s} is a multicast address; the first byte must be even"));
        }
        Ok(MacAddr(s.to_ascii_lowercase()))
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An IPv4 address with a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length, 0 to 32.
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// Parse `ADDR/PREFIX`, or `ADDR` with a dotted netmask (or /32).
    pub fn parse(s: &str, netmask: Option<Ipv4Addr>) -> Result<Ipv4Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => {
                if netmask.is_some() {
                    return Err(format!("ipaddr {s:?} has a prefix and a netmask is given too; use one"));
                }
                let p: u8 = p.parse().ok().filter(|p| *p <= 32).ok_or_else(|| format!("ipaddr {s:?} has a prefix that is not 0 to 32"))?;
                (a, p)
            }
            None => {
                let p = match netmask {
                    Some(m) => netmask_prefix(m).ok_or_else(|| format!("netmask {m} is not a contiguous netmask"))?,
                    None => 32,
                };
                (s, p)
            }
        };
        let addr: Ipv4Addr = a.parse().map_err(|_| format!("ipaddr {s:?} is not an IPv4 address"))?;
        Ok(Ipv4Cidr { addr, prefix: p })
    }

    /// The prefix as a dotted netmask (`/24` → `255.255.255.0`).
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(self.prefix.min(32))).unwrap_or(0))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn netmask_prefix(m: Ipv4Addr) -> Option<u8> {
    let v = u32::from(m);
    let ones = v.leading_ones();
    (v.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

/// Is `k` usable as a firstboot.config key (a shell variable name)?
pub fn valid_metadata_key(k: &str) -> bool {
    let mut cs = k.chars();
    matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && k.len() <= 64
}

impl Definition {
    /// Semantic checks the schema cannot express. Returns the JSON pointer
    /// (relative to the definition) and the problem.
    pub fn check(&self, vm: &VmName) -> Result<(), (String, String)> {
        if let Some(n) = &self.name {
            if n != vm {
                return Err(("/name".into(), format!("name {n} differs from vm_name {vm}")));
            }
        }
        for (i, nic) in self.network.iter().enumerate() {
            nic.cidr().map_err(|e| (format!("/network/{i}/ipaddr"), e))?;
            if nic.netmask.is_some() && nic.ipaddr.is_none() {
                return Err((format!("/network/{i}/netmask"), "netmask given without ipaddr".into()));
            }
            if matches!(nic.kind(), NicType::Veth | NicType::Macvlan) && nic.bridge.is_none() && nic.nic_type.is_some() {
                return Err((format!("/network/{i}/bridge"), "a veth or macvlan NIC needs a bridge (host interface)".into()));
            }
            if self.network[..i].iter().any(|o| o.name == nic.name) {
                return Err((format!("/network/{i}/name"), format!("NIC name {} is used twice", nic.name)));
            }
        }
        for (i, v) in self.storage.iter().enumerate() {
            if self.storage[..i].iter().any(|o| o.name == v.name) {
                return Err((format!("/storage/{i}/name"), format!("volume name {} is used twice", v.name)));
            }
            if let Some(mp) = &v.mountpoint {
                check_mountpoint(mp).map_err(|e| (format!("/storage/{i}/mountpoint"), e))?;
            }
        }
        for k in self.metadata.keys() {
            if !valid_metadata_key(k) {
                return Err((format!("/metadata/{k}"), format!("metadata key {k:?} must match ^[A-Za-z_][A-Za-z0-9_]{{0,63}}$")));
            }
        }
        Ok(())
    }
}

/// A definition as its canonical JSON text: compact, the keys of every
/// object sorted; byte for byte what a reply prints for it (replies go
/// through `serde_json::Value`, whose maps are sorted). The database keeps
/// definitions in this form (schema version 5), so `status` copies each
/// one into its reply as it is, without parsing it into a [`Definition`]
/// and serialising it again (two fifths of a `status` of 1000 VMs,
/// callgrind).
///
/// Serialised by any other serializer (the CLI's `--json`, a reply
/// wrapped with its repairs), it is the same JSON object, parsed again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionJson(String);

impl DefinitionJson {
    /// The canonical text of a definition.
    pub fn of(def: &Definition) -> Result<DefinitionJson, serde_json::Error> {
        Ok(DefinitionJson(serde_json::to_value(def)?.to_string()))
    }

    /// Text already known to be canonical JSON: what geats stored with
    /// [`DefinitionJson::of`], which the caller has checked to be valid JSON
    /// (a stored value is external data).
    pub(crate) fn from_stored(text: String) -> DefinitionJson {
        DefinitionJson(text)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The definition.
    pub fn parse(&self) -> Result<Definition, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

impl Serialize for DefinitionJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v: serde_json::Value = serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        v.serialize(s)
    }
}

/// A mount point inside the VM: absolute, normalised, no `..`, no control
/// characters or whitespace.
pub fn check_mountpoint(mp: &str) -> Result<(), String> {
    if !mp.starts_with('/') || mp == "/" {
        return Err(format!("mountpoint {mp:?} must be an absolute path other than /"));
    }
    if mp.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("mountpoint {mp:?} contains whitespace or a control character"));
    }
    if mp.split('/').any(|s| s == ".." || s == ".") || mp.contains("//") {
        return Err(format!("mountpoint {mp:?} must not contain '.', '..' or '//'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_is_what_a_reply_prints() {
        let v = serde_json::json!({"vm_type": "dummy", "name": "d", "description": "\u{e9} \"q\" \n", "ram": 5,
            "network": [{"name": "eth0", "type": "veth", "bridge": "br0", "ipaddr": "10.0.0.5/24"}],
            "storage": [{"type": "dir", "name": "root", "size": "1G", "zz": 1, "aa": true, "mountpoint": "/srv"}],
            "metadata": {"Z": "1", "A": "2"}, "snapshots": {"schedule": "daily", "keep": 2}});
        let def: Definition = serde_json::from_value(v).unwrap();
        let c = DefinitionJson::of(&def).unwrap();
        assert_eq!(c.as_str(), serde_json::to_string(&serde_json::to_value(&def).unwrap()).unwrap());
        assert!(c.as_str().starts_with(r#"{"description":"#), "{}", c.as_str());
        assert_eq!(c.parse().unwrap(), def);
        // Through another serializer: the same object.
        assert_eq!(serde_json::to_value(&c).unwrap(), serde_json::to_value(&def).unwrap());
        assert_eq!(DefinitionJson::of(&c.parse().unwrap()).unwrap(), c, "canonical is a fixed point");
    }

    #[test]
    fn original_dummy_example_parses() {
        let v = serde_json::json!({"vm_type": "dummy", "name": "dummy", "description": "Dummy VM",
            "network": [{"name": "eth0", "ipaddr": "192.168.1.200", "netmask": "255.255.255.0",
            "gateway": "192.168.1.1", "hwaddr": "02:03:04:05:06:07"}],
            "storage": [{"name": "dummy", "type": "dummy"}]});
        let d: Definition = serde_json::from_value(v).unwrap();
        d.check(&VmName::new("dummy").unwrap()).unwrap();
        assert_eq!(d.network[0].cidr().unwrap().unwrap().to_string(), "192.168.1.200/24");
    }

    #[test]
    fn cidr_forms() {
        assert_eq!(Ipv4Cidr::parse("10.0.0.5/24", None).unwrap().prefix, 24);
        assert!(Ipv4Cidr::parse("10.0.0.5/33", None).is_err());
        assert!(Ipv4Cidr::parse("10.0.0.5", Some("255.0.255.0".parse().unwrap())).is_err());
        assert!(Ipv4Cidr::parse("10.0.0.5\nlxc.x=1", None).is_err());
        let mask = |s: &str, m: Option<&str>| Ipv4Cidr::parse(s, m.map(|m| m.parse().unwrap())).unwrap().netmask().to_string();
        assert_eq!(mask("10.0.0.5/24", None), "255.255.255.0");
        assert_eq!(mask("10.0.0.5/0", None), "0.0.0.0");
        assert_eq!(mask("10.0.0.5/32", None), "255.255.255.255");
        assert_eq!(mask("10.0.0.5/20", None), "255.255.240.0");
        assert_eq!(mask("10.0.0.5", Some("255.255.254.0")), "255.255.254.0");
    }

    #[test]
    fn mac_refuses_junk() {
        assert!(MacAddr::try_from("01:00:00:00:00:01".to_string()).is_err());
        assert!(MacAddr::try_from("02:00:00:00:00:0g".to_string()).is_err());
        assert!(MacAddr::try_from("02:00:00:00:00:01\n".to_string()).is_err());
    }

    #[test]
    fn mountpoints() {
        assert!(check_mountpoint("/srv/data").is_ok());
        for bad in ["srv", "/", "/a/../b", "/a b", "/a\nb"] {
            assert!(check_mountpoint(bad).is_err(), "{bad}");
        }
    }
}
