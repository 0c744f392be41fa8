//! The `lxc` VM type (being written).

use super::{Accepts, AttachedVolume, VmError, VmType};
use crate::config::{Config, ConfigError};
use crate::definition::Definition;
use crate::names::VmName;
use crate::state::{Power, VmState};

/// The LXC VM type.
#[derive(Debug)]
pub struct Lxc {}

impl Lxc {
    /// Build from the config's settings table.
    pub fn new(_config: &Config, _prefix: &str, _settings: &toml::Table) -> Result<Lxc, ConfigError> {
        Ok(Lxc {})
    }
}

impl VmType for Lxc {
    fn accepts(&self) -> Accepts {
        Accepts::Directory
    }
    fn installs_templates(&self) -> bool {
        true
    }
    fn check(&self, _vm: &VmName, _def: &Definition) -> Result<(), VmError> {
        Err(VmError::NotSupported("lxc is not implemented yet".into()))
    }
    fn define(&self, _vm: &VmName, _def: &Definition, _volumes: &[AttachedVolume]) -> Result<(), VmError> {
        Err(VmError::NotSupported("lxc is not implemented yet".into()))
    }
    fn undefine(&self, _vm: &VmName) -> Result<(), VmError> {
        Ok(())
    }
    fn exists(&self, _vm: &VmName) -> bool {
        false
    }
    fn start(&self, _vm: &VmName) -> Result<(), VmError> {
        Err(VmError::NotSupported("lxc is not implemented yet".into()))
    }
    fn stop(&self, _vm: &VmName) -> Result<(), VmError> {
        Ok(())
    }
    fn shutdown(&self, _vm: &VmName) -> Result<(), VmError> {
        Ok(())
    }
    fn reboot(&self, _vm: &VmName) -> Result<(), VmError> {
        Ok(())
    }
    fn state(&self, _vm: &VmName) -> VmState {
        VmState::plain(Power::Unknown)
    }
}
