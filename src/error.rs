//! The crate-level [`Error`], and the one place where a failure becomes a
//! wire [`ErrorCode`] and an MCollective [`ExitClass`].
//!
//! Every layer below the manager has its own error type that describes
//! what happened, with its context in fields (`ConfigError`, `DbError`,
//! `VmError`, `StorageError`, `TemplateError`, `RequestError`,
//! `ExecError`); none of them knows the wire codes. They fold into
//! [`Error`] here, and [`Error::code`] is the single exhaustive match
//! (no wildcard arms) from what happened to what the wire says, so a new
//! variant anywhere forces a decision here.

use std::fmt;
use std::path::PathBuf;

use crate::config::ConfigError;
use crate::db::DbError;
use crate::names::VmName;
use crate::request::RequestError;
use crate::storage::StorageError;
use crate::stream::StreamError;
use crate::sys::exec::ExecError;
use crate::template::TemplateError;
use crate::vm::VmError;

/// The class of a failure, as MCollective's statuscodes and geats' exit
/// codes in MCollective mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitClass {
    /// The action succeeded.
    Ok = 0,
    /// The action failed (VM locked, busy, storage or LXC failure ...).
    Aborted = 1,
    /// The action is not one geats knows.
    UnknownAction = 2,
    /// A required key is absent from the request.
    MissingData = 3,
    /// The request is malformed or violates a schema or a naming rule.
    InvalidData = 4,
    /// A bug, a bad configuration, or a request file that cannot be opened.
    Other = 5,
}

impl ExitClass {
    /// The process exit code for this class.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// Stable machine-readable error codes (the `errorcode` of a reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// A required key is absent.
    MissingData,
    /// The request or definition is invalid.
    InvalidData,
    /// The action is not known.
    UnknownAction,
    /// No such VM.
    NotFound,
    /// The VM carries the admin lock.
    VmLocked,
    /// Another action holds the VM's operation lease.
    Busy,
    /// The VM's state forbids the action.
    InvalidState,
    /// The action or feature is not supported.
    NotSupported,
    /// An external tool failed.
    ToolFailed,
    /// The VM type's hypervisor refused or failed an operation. The wire
    /// string is `lxc_error`, as LXC was the first hypervisor to report
    /// this way; it stays stable whatever the VM type.
    Hypervisor,
    /// A storage volume could not be set up or torn down.
    StorageFailed,
    /// The database is missing or unreadable while VMs exist.
    DatabaseMissing,
    /// The configuration file is invalid.
    ConfigInvalid,
    /// A file of geats' own (record file, reply, generated file) could not
    /// be read or written: a full disk, a read-only directory.
    IoFailed,
    /// A migration, export or import failed in transit: the destination
    /// could not be reached or broke off, or the stream was cut or
    /// corrupted. Nothing was kept at the destination.
    MigrationFailed,
    /// A bug in geats.
    Internal,
}

impl ErrorCode {
    /// The stable string sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MissingData => "missing_data",
            ErrorCode::InvalidData => "invalid_data",
            ErrorCode::UnknownAction => "unknown_action",
            ErrorCode::NotFound => "not_found",
            ErrorCode::VmLocked => "vm_locked",
            ErrorCode::Busy => "busy",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::NotSupported => "not_supported",
            ErrorCode::ToolFailed => "tool_failed",
            ErrorCode::Hypervisor => "lxc_error",
            ErrorCode::StorageFailed => "storage_failed",
            ErrorCode::DatabaseMissing => "database_missing",
            ErrorCode::ConfigInvalid => "config_invalid",
            ErrorCode::IoFailed => "io_failed",
            ErrorCode::MigrationFailed => "migration_failed",
            ErrorCode::Internal => "internal",
        }
    }

    /// The exit class this code belongs to.
    pub fn exit_class(self) -> ExitClass {
        match self {
            ErrorCode::MissingData => ExitClass::MissingData,
            ErrorCode::InvalidData => ExitClass::InvalidData,
            ErrorCode::UnknownAction => ExitClass::UnknownAction,
            ErrorCode::NotFound
            | ErrorCode::VmLocked
            | ErrorCode::Busy
            | ErrorCode::InvalidState
            | ErrorCode::NotSupported
            | ErrorCode::ToolFailed
            | ErrorCode::Hypervisor
            | ErrorCode::StorageFailed
            | ErrorCode::DatabaseMissing
            | ErrorCode::IoFailed
            | ErrorCode::MigrationFailed => ExitClass::Aborted,
            ErrorCode::ConfigInvalid | ErrorCode::Internal => ExitClass::Other,
        }
    }

    /// Whether the same request may succeed if simply tried again later.
    pub fn retryable(self) -> bool {
        match self {
            ErrorCode::Busy | ErrorCode::ToolFailed | ErrorCode::Hypervisor | ErrorCode::StorageFailed | ErrorCode::MigrationFailed => true,
            ErrorCode::MissingData
            | ErrorCode::InvalidData
            | ErrorCode::UnknownAction
            | ErrorCode::NotFound
            | ErrorCode::VmLocked
            | ErrorCode::InvalidState
            | ErrorCode::NotSupported
            | ErrorCode::DatabaseMissing
            | ErrorCode::ConfigInvalid
            | ErrorCode::IoFailed
            | ErrorCode::Internal => false,
        }
    }

    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::MissingData,
        ErrorCode::InvalidData,
        ErrorCode::UnknownAction,
        ErrorCode::NotFound,
        ErrorCode::VmLocked,
        ErrorCode::Busy,
        ErrorCode::InvalidState,
        ErrorCode::NotSupported,
        ErrorCode::ToolFailed,
        ErrorCode::Hypervisor,
        ErrorCode::StorageFailed,
        ErrorCode::DatabaseMissing,
        ErrorCode::ConfigInvalid,
        ErrorCode::IoFailed,
        ErrorCode::MigrationFailed,
        ErrorCode::Internal,
    ];
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every failure geats reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request could not be read or is invalid.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The VM type failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A storage volume failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// An OS template failed.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// A VM stream or its transport failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// A program geats ran for the user (console, exec, ssh) could not run.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A file of geats' own could not be read or written.
    #[error("cannot {step} {path}: {source}")]
    Io {
        /// What was being done (`write`, `read`, `remove`, `rename`).
        step: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A VM's record file is not what geats wrote.
    #[error("record file {path} is corrupt: {problem}")]
    CorruptRecord {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The named VM does not exist.
    #[error("no VM named {0} (see `geats list`)")]
    NotFound(VmName),
    /// The VM has no snapshot of that name.
    #[error("VM {vm} has no snapshot named {snapshot} (see `geats snapshots {vm}`)")]
    NoSnapshot {
        /// The VM.
        vm: VmName,
        /// The snapshot asked for.
        snapshot: String,
    },
    /// The VM carries the admin lock.
    #[error("VM {0} is locked by an administrator; run `geats unlock {0}` first")]
    Locked(VmName),
    /// Another process holds the VM's operation lease.
    #[error("VM {vm} is busy: {action} by pid {pid} has held its lock for more than {waited_s} s; try again later")]
    Busy {
        /// The VM.
        vm: VmName,
        /// The action holding the lock.
        action: String,
        /// The lock holder's pid.
        pid: i64,
        /// How long this request waited.
        waited_s: u64,
    },
    /// The VM's state forbids the action.
    #[error("VM {vm} cannot {action}: {reason}")]
    InvalidState {
        /// The VM.
        vm: VmName,
        /// The refused action.
        action: &'static str,
        /// Why.
        reason: String,
    },
    /// Not supported.
    #[error("{0}")]
    NotSupported(String),
    /// The database is missing while VMs exist.
    #[error("database {path} is missing or unreadable, but {count} VM(s) exist (records under {records}, or containers); run `geats recover` to rebuild it")]
    DatabaseMissing {
        /// The database file.
        path: String,
        /// The records directory.
        records: String,
        /// How many records were found.
        count: usize,
    },
    /// A failure followed by a failed rollback.
    #[error("{error}; rolling back also failed: {cleanup}")]
    Rollback {
        /// The original failure.
        error: Box<Error>,
        /// The cleanup failure, as text.
        cleanup: String,
    },
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

/// An [`Error::Io`] for `step` on `path`, for `map_err`.
pub fn io<'a>(step: &'static str, path: &'a std::path::Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io { step, path: path.to_path_buf(), source }
}

impl Error {
    /// The stable error code: the one mapping from what happened to what
    /// the wire says.
    pub fn code(&self) -> ErrorCode {
        use ErrorCode as C;
        match self {
            Error::Request(e) => match e {
                RequestError::Missing(_) => C::MissingData,
                RequestError::Invalid(_) => C::InvalidData,
                RequestError::UnknownAction(_) => C::UnknownAction,
                RequestError::Unreadable { .. } => C::Internal,
            },
            Error::Config(_) => C::ConfigInvalid,
            Error::Db(e) if e.is_contention() => C::Busy,
            Error::Db(e) if e.is_io() => C::IoFailed,
            Error::Db(e) => match e {
                DbError::Open { .. } | DbError::TooNew { .. } | DbError::Corrupt { .. } => C::DatabaseMissing,
                DbError::CreateDir { .. } | DbError::CreateFile { .. } | DbError::Query { .. } => C::Internal,
            },
            Error::Vm(e) => match e {
                VmError::Invalid { .. } => C::InvalidData,
                VmError::Io { .. } => C::IoFailed,
                VmError::Hypervisor { .. } => C::Hypervisor,
                VmError::Tool { .. } | VmError::Failed { .. } | VmError::Plugin { .. } => C::ToolFailed,
                VmError::NotSupported(_) => C::NotSupported,
                VmError::Refused { .. } => C::InvalidState,
                VmError::HostSetup { .. } => C::ConfigInvalid,
            },
            Error::Storage(e) => match e {
                StorageError::TypeNotAllowed { .. } | StorageError::BadOption { .. } => C::InvalidData,
                StorageError::Config(_) => C::ConfigInvalid,
                StorageError::Io { .. } | StorageError::Tool { .. } | StorageError::State { .. } => C::StorageFailed,
                StorageError::Plugin { .. } => C::ToolFailed,
                StorageError::NotSupported { .. } => C::NotSupported,
                StorageError::NoSnapshot { .. } => C::NotFound,
            },
            Error::Template(e) => match e {
                TemplateError::NotFound { .. } => C::InvalidData,
                TemplateError::Unpack { .. } => C::StorageFailed,
            },
            Error::Stream(e) => match e {
                // The destination's own code, when it is one geats knows.
                StreamError::Refused { errorcode, .. } => C::ALL.into_iter().find(|c| c.as_str() == errorcode).unwrap_or(C::MigrationFailed),
                StreamError::Io { .. } | StreamError::Format(_) | StreamError::Transport { .. } => C::MigrationFailed,
                StreamError::Volume { .. } => C::StorageFailed,
            },
            Error::Exec(_) => C::ToolFailed,
            Error::Io { .. } => C::IoFailed,
            Error::CorruptRecord { .. } => C::Internal,
            Error::NotFound(_) => C::NotFound,
            Error::NoSnapshot { .. } => C::NotFound,
            Error::Locked(_) => C::VmLocked,
            Error::Busy { .. } => C::Busy,
            Error::InvalidState { .. } => C::InvalidState,
            Error::NotSupported(_) => C::NotSupported,
            Error::DatabaseMissing { .. } => C::DatabaseMissing,
            Error::Rollback { error, .. } => error.code(),
            Error::Internal(_) => C::Internal,
        }
    }

    /// Was the request refused for its content, before any work?
    pub fn is_bad_input(&self) -> bool {
        matches!(self.code(), ErrorCode::InvalidData | ErrorCode::MissingData)
    }

    /// The message: this error and its sources joined with ": ".
    pub fn message(&self) -> String {
        chain(self)
    }
}

/// Join an error and its `source()` chain with ": ", skipping a source
/// whose text is already contained in the previous one.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// Result with the crate error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_classed() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "duplicate {c}");
            assert_ne!(c.exit_class(), ExitClass::Ok);
        }
        assert_eq!(ErrorCode::MissingData.exit_class().code(), 3);
        assert_eq!(ErrorCode::InvalidData.exit_class().code(), 4);
        assert_eq!(ErrorCode::UnknownAction.exit_class().code(), 2);
        assert_eq!(ErrorCode::Busy.exit_class().code(), 1);
        assert!(ErrorCode::Busy.retryable());
        assert!(!ErrorCode::InvalidData.retryable());
    }
}
