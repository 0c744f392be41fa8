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
mod choria;
mod cli_screens;
mod concurrency;
mod ddl;
mod docs_examples;
mod example_plugins;
mod exec_plugins;
mod lxc_confinement;
mod lxc_lifecycle;
mod mcollective;
mod migration;
mod plugins;
mod schemas;
mod skips;
mod storage;
mod vagoth;
