//! Validated names: the only way request text becomes part of a path, a
//! command line or a config line.
//!
//! VM, volume, template and storage/VM type names follow
//! `^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`: no leading `-` or `.`, no `/`, no
//! whitespace, at most 63 characters. Network interface names (bridges and
//! NICs) follow the same rule with the kernel's limit of 15 characters.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} name {shown} is invalid: {reason} (allowed: {rule})")]
pub struct NameError {
    /// What kind of name.
    pub kind: &'static str,
    /// The offending name, quoted and escaped.
    pub shown: String,
    /// What is wrong.
    pub reason: String,
    /// The rule.
    pub rule: &'static str,
}

/// The pattern shared by the long names.
pub const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$";
/// The pattern of interface names.
pub const IFNAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$";

fn check(kind: &'static str, s: &str, max: usize, rule: &'static str) -> Result<(), NameError> {
    let err = |reason: String| NameError {
        kind,
        shown: format!("{:?}", truncate(s, 80)),
        reason,
        rule,
    };
    let Some(first) = s.chars().next() else {
        return Err(err("it is empty".into()));
    };
    if !first.is_ascii_alphanumeric() {
        return Err(err(format!("it starts with {first:?}; it must start with a letter or digit")));
    }
    for (i, c) in s.chars().enumerate() {
        if !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-') {
            return Err(err(format!("character {c:?} at position {i} is not allowed")));
        }
    }
    if s.len() > max {
        return Err(err(format!("it is {} characters long; the limit is {max}", s.chars().count())));
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push('…');
        t
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal, $max:literal, $rule:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            /// Validate and wrap a name.
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                check($kind, &s, $max, $rule)?;
                Ok(Self(s))
            }
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl From<$ty> for String {
            fn from(n: $ty) -> String {
                n.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<std::path::Path> for $ty {
            fn as_ref(&self) -> &std::path::Path {
                std::path::Path::new(&self.0)
            }
        }
    };
}

name_type!(
    /// The name of a VM or container.
    VmName, "VM", 63, NAME_PATTERN
);
name_type!(
    /// The name of a storage volume within a VM.
    VolumeName, "volume", 63, NAME_PATTERN
);
name_type!(
    /// The name of an OS template archive.
    TemplateName, "template", 63, NAME_PATTERN
);
name_type!(
    /// The name of a configured VM type or storage type.
    TypeName, "type", 63, NAME_PATTERN
);
name_type!(
    /// The name of a snapshot of a VM's volumes (the VM-name pattern).
    SnapshotName, "snapshot", 63, NAME_PATTERN
);
name_type!(
    /// A host bridge or parent interface name.
    BridgeName, "bridge", 15, IFNAME_PATTERN
);
name_type!(
    /// A network interface name inside the VM.
    NicName, "NIC", 15, IFNAME_PATTERN
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for ok in ["web1", "a", "db-01.example", "X_y", &"a".repeat(63)] {
            VmName::new(ok).unwrap();
        }
    }

    #[test]
    fn refuses_dangerous_names() {
        for bad in ["", "-rf", ".hidden", "..", "a/b", "../etc", "a b", "a\nb", "é", &"a".repeat(64), &"a".repeat(300)] {
            let e = VmName::new(bad).unwrap_err();
            assert!(e.to_string().contains("VM name"), "{e}");
        }
    }

    #[test]
    fn error_names_the_character() {
        let e = VmName::new("a/b").unwrap_err();
        assert!(e.to_string().contains("'/' at position 1"), "{e}");
    }

    #[test]
    fn interface_names_are_short() {
        BridgeName::new("br0").unwrap();
        BridgeName::new("a".repeat(15)).unwrap();
        assert!(BridgeName::new("a".repeat(16)).is_err());
    }
}
