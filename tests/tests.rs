//! One integration-test binary (faster to link than one per file).
//! Privileged tests check what they need at run time and print why they
//! skip; nothing is compiled out or `#[ignore]`d.

// The architecture bans (one process runner, no unwrap, no println) are
// for the product; tests spawn the binary and tools and may panic.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_macros,
    clippy::tests_outside_test_module
)]

mod common;

mod agent_contract;
mod architecture;
mod check;
mod choria;
mod cli_screens;
mod concurrency;
mod crash;
mod ddl;
mod docs_examples;
mod events;
mod example_plugins;
mod exec_plugins;
mod fuzz;
mod hostile;
mod lxc_confinement;
mod live_limits;
mod lxc_events;
mod lxc_lifecycle;
mod lxc_stop;
mod mcollective;
mod migration;
mod plugins;
mod safety;
mod schemas;
mod skips;
mod storage;
mod stress;
mod vagoth;
mod vm_snapshots;
