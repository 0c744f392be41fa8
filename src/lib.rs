//! geats: a local resource manager that takes LXC containers (and other VM
//! types) on one server through their whole life: define, provision storage
//! and OS template, start, shut down, power off, undefine, deprovision.
//!
//! The principal types: a [`request::Request`] carries an
//! [`request::Action`]; a [`manager::Manager`] built from a
//! [`config::Config`] executes it against the [`db::Db`] state, a
//! [`vm::VmType`] and [`storage::Volume`]s, and returns the reply data or an
//! [`error::Error`] with a stable [`error::ErrorCode`].
//!
//! The binary drives this library three ways: [`agent`] (MCollective,
//! Choria, stdio) and [`cli`]. See `docs/architecture.md` for the code map
//! and its invariants.

#![warn(missing_docs)]

pub mod agent;
pub mod cli;
pub mod config;
pub mod db;
pub mod ddl;
pub mod definition;
pub mod error;
pub mod manager;
pub mod names;
pub mod request;
pub mod schema;
pub mod state;
pub mod storage;
pub mod stream;
pub mod sys;
pub mod template;
pub mod vm;
