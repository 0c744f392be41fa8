//! One integration-test binary (faster to link than one per file).
//! Privileged tests check what they need at run time and print why they
//! skip; nothing is compiled out or `#[ignore]`d.

mod common;

mod agent_contract;
mod concurrency;
mod ecosystem;
mod lxc_lifecycle;
mod schemas;
mod storage;
