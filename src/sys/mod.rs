//! Everything that touches the operating system below the plugins: the one
//! process runner ([`exec`]) and readers of `/proc` ([`proc`]). Storage
//! helpers for mount, loop devices and mkfs live here too as they are added.

pub mod btrfs;
pub mod exec;
pub mod fsutil;
pub mod loopdev;
pub mod mkfs;
pub mod mount;
pub mod netlink;
pub mod plugin;
pub mod proc;
