//! The SQLite state: VMs, their volumes, operation leases and the journal.
//! The only module with SQL in it.
//!
//! One connection per process, WAL mode, a busy timeout, through the
//! `geats` VFS ([`vfs`]: SQLite's `unix` VFS, whose WAL is emptied
//! without giving its blocks back). Every write runs in
//! a `BEGIN IMMEDIATE` transaction so that concurrent geats processes queue
//! on SQLite's busy handler instead of failing with "database is locked".
//! The schema version is `PRAGMA user_version`; [`MIGRATIONS`] brings an
//! older file up to date.

mod events;
mod journal;
mod leases;
mod snapshots;
mod vms;
mod vfs;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

pub use events::{Drift, Event, EventPage, LeaseInfo, NewEvent, Retention};
pub use journal::{JournalEntry, JournalId, Unfinished};
pub use leases::LeaseHolder;
pub use snapshots::SnapshotRecord;
pub use vms::{Desired, Intent, VmRecord, VmSummary, VolumeRecord};

/// Schema migrations: entry N brings version N to N+1.
const MIGRATIONS: &[&str] = &[
    include_str!("schema.sql"),
    include_str!("snapshots.sql"),
    include_str!("journal_intent.sql"),
    include_str!("schema_events.sql"),
    include_str!("canonical_definitions.sql"),
];

/// A migration step done in Rust.
type RustStep = fn(&rusqlite::Transaction<'_>) -> Result<(), DbError>;

/// Migration steps done in Rust, after the SQL of the migration that
/// reaches the version they name.
const RUST_STEPS: &[(i64, RustStep)] = &[(5, vms::canonical_definitions)];

/// The current schema version.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// A database failure.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The file could not be opened or created.
    #[error("cannot open database {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// Its directory could not be created.
    #[error("cannot create database directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database file could not be created (a read-only or full file
    /// system).
    #[error("cannot create database file {path}")]
    CreateFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A newer geats wrote this file.
    #[error("database {path} has schema version {found}, newer than this geats knows ({known}); upgrade geats")]
    TooNew {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// Ours.
        known: i64,
    },
    /// A query failed.
    #[error("database: cannot {what}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// Why.
        source: rusqlite::Error,
    },
    /// A stored value is not what geats wrote.
    #[error("database: stored {what} is corrupt: {problem}")]
    Corrupt {
        /// Which value.
        what: String,
        /// What is wrong.
        problem: String,
    },
}

impl DbError {
    /// Did it fail because another process holds the database (busy or
    /// locked past the busy timeout)?
    pub fn is_contention(&self) -> bool {
        match self {
            DbError::Open { source, .. } | DbError::Query { source, .. } => {
                matches!(source.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
            }
            DbError::CreateDir { .. } | DbError::CreateFile { .. } | DbError::TooNew { .. } | DbError::Corrupt { .. } => false,
        }
    }

    /// Did the file system fail it (full, read-only, an I/O error), rather
    /// than the database's content?
    pub fn is_io(&self) -> bool {
        use rusqlite::ErrorCode as C;
        match self {
            DbError::CreateDir { .. } | DbError::CreateFile { .. } => true,
            DbError::Open { source, .. } | DbError::Query { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(C::DiskFull | C::ReadOnly | C::SystemIoFailure | C::CannotOpen | C::PermissionDenied)
            ),
            DbError::TooNew { .. } | DbError::Corrupt { .. } => false,
        }
    }

    /// Is the file itself unusable (missing, unreadable, too new, corrupt)?
    /// A full or read-only file system is not the file's fault.
    pub fn is_unusable_file(&self) -> bool {
        !self.is_contention() && !self.is_io() && matches!(self, DbError::Open { .. } | DbError::TooNew { .. } | DbError::Corrupt { .. })
    }
}

pub(crate) fn q(what: &'static str) -> impl FnOnce(rusqlite::Error) -> DbError {
    move |source| DbError::Query { what, source }
}

/// An open database.
#[derive(Debug)]
pub struct Db {
    conn: Connection,
    path: PathBuf,
    busy: std::time::Duration,
}

impl Db {
    /// Open an existing database file.
    pub fn open(path: &Path, busy: std::time::Duration) -> Result<Db, DbError> {
        Db::open_as(path, busy, true)
    }

    /// Open an existing database file for a read-only action: the same,
    /// minus the settings that only matter to writers.
    pub fn open_read(path: &Path, busy: std::time::Duration) -> Result<Db, DbError> {
        Db::open_as(path, busy, false)
    }

    fn open_as(path: &Path, busy: std::time::Duration, writer: bool) -> Result<Db, DbError> {
        // SQLite can report a lock while a WAL is being set up or removed
        // by another connection's open or close without calling the busy
        // handler; retry those within the busy timeout too.
        let start = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(2);
        loop {
            match Db::try_open(path, busy, writer) {
                Err(e) if e.is_contention() && start.elapsed() < busy => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    fn try_open(path: &Path, busy: std::time::Duration, writer: bool) -> Result<Db, DbError> {
        let open_err = |source| DbError::Open { path: path.to_path_buf(), source };
        let vfs_name = vfs::register().map_err(open_err)?;
        let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX, vfs_name)
            .map_err(open_err)?;
        // Before anything that reads the file: `PRAGMA synchronous` reads
        // the schema, and without the timeout a concurrent writer makes it
        // fail at once with "database is locked" (seen in the issue 11
        // stress test).
        conn.busy_timeout(busy).map_err(open_err)?;
        keep_wal(&conn).map_err(open_err)?;
        if writer {
            tune(&conn).map_err(open_err)?;
        }
        let mut db = Db { conn, path: path.to_path_buf(), busy };
        db.migrate()?;
        Ok(db)
    }

    /// Create a new database file (and its directory). The file is made
    /// mode 0600 before SQLite opens it, whatever the umask: SQLite gives
    /// its `-wal` and `-shm` files the mode of the database file.
    pub fn create(path: &Path, busy: std::time::Duration) -> Result<Db, DbError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| DbError::CreateDir { path: dir.to_path_buf(), source })?;
        }
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let create_err = |source| DbError::CreateFile { path: path.to_path_buf(), source };
            let f = std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(path).map_err(create_err)?;
            f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(create_err)?;
        }
        // Several first requests may create it at once: switching to WAL
        // needs the file to itself, and SQLite reports that lock without
        // the busy handler, so retry within the busy timeout.
        let start = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(2);
        loop {
            match Db::try_create(path, busy) {
                Err(e) if e.is_contention() && start.elapsed() < busy => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    fn try_create(path: &Path, busy: std::time::Duration) -> Result<Db, DbError> {
        let open_err = |source| DbError::Open { path: path.to_path_buf(), source };
        let vfs_name = vfs::register().map_err(open_err)?;
        let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs_name).map_err(open_err)?;
        conn.busy_timeout(busy).map_err(open_err)?;
        // WAL is persistent in the file: set once at creation.
        keep_wal(&conn).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        tune(&conn).map_err(open_err)?;
        let mut db = Db { conn, path: path.to_path_buf(), busy };
        db.migrate()?;
        Ok(db)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn migrate(&mut self) -> Result<(), DbError> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|source| DbError::Open { path: self.path.clone(), source })?;
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        if version > SCHEMA_VERSION {
            return Err(DbError::TooNew { path: self.path.clone(), found: version, known: SCHEMA_VERSION });
        }
        if version == 0 {
            // A new file another process is still creating: whoever gets
            // here first makes it WAL (persistent in the file).
            self.conn.pragma_update(None, "journal_mode", "WAL").map_err(|source| DbError::Open { path: self.path.clone(), source })?;
        }
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(q("begin migration"))?;
        // Re-read inside the write lock: another process may have migrated.
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(q("read schema version"))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
            tx.execute_batch(sql).map_err(q("migrate schema"))?;
            for (_, step) in RUST_STEPS.iter().filter(|(v, _)| *v == i as i64 + 1) {
                step(&tx)?;
            }
            tx.pragma_update(None, "user_version", i as i64 + 1).map_err(q("set schema version"))?;
        }
        tx.commit().map_err(q("commit migration"))?;
        Ok(())
    }

    /// Run `f` in a write transaction (`BEGIN IMMEDIATE`).
    pub fn write<T>(&mut self, f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, DbError>) -> Result<T, DbError> {
        // The busy handler waits for other writers; a lock reported
        // without it (WAL set-up or removal by another process) is
        // retried here, for up to the same busy timeout.
        let start = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(2);
        let tx = loop {
            match rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate) {
                Ok(tx) => break tx,
                Err(e) => {
                    let err = q("begin transaction")(e);
                    if !err.is_contention() || start.elapsed() >= self.busy {
                        return Err(err);
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(50));
                }
            }
        };
        let v = f(&tx)?;
        tx.commit().map_err(q("commit"))?;
        Ok(v)
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }
}

/// Per-connection settings. `synchronous = NORMAL` is WAL's recommended
/// setting: the database stays consistent after a crash and a commit costs
/// no fsync (the last commits before a power loss may be lost, never
/// half-applied). The WAL is checkpointed and emptied when the last
/// connection closes (see [`keep_wal`]): a WAL left full would make the
/// first connection of every process rebuild the WAL index from it.
fn tune(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "synchronous", "NORMAL")
}

/// Keep the `-wal` and `-shm` files when the last connection closes
/// (`SQLITE_FCNTL_PERSIST_WAL`), emptied (`journal_size_limit = 0`, so the
/// next process has no WAL to rebuild its index from; the `geats` VFS
/// empties it by zeroing its header rather than truncating it,
/// [`vfs`]). By default SQLite creates both files, sizes the index,
/// and unlinks both again in every process, reads included: a dozen
/// syscalls and two file creations per request (issue 15). Both files
/// have the database file's mode (0600).
fn keep_wal(conn: &Connection) -> rusqlite::Result<()> {
    let mut on: std::ffi::c_int = 1;
    // SAFETY: the handle is this open connection's; the file control
    // reads and writes one int through the pointer, which outlives the
    // call.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
            (&mut on as *mut std::ffi::c_int).cast(),
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        return Err(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rc), Some("cannot keep the WAL file".into())));
    }
    conn.pragma_update(None, "journal_size_limit", 0)
}

/// Now as RFC 3339 UTC with milliseconds, e.g. `2026-11-23T09:40:01.123Z`.
pub fn now() -> String {
    rfc3339(std::time::SystemTime::now())
}

/// A time as RFC 3339 UTC with milliseconds, the form [`now`] writes.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Milliseconds since the epoch of a time [`now`] wrote
/// (`2026-11-23T09:40:01.123Z`); `None` for any other text.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 24 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[19] != b'.' || b[23] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss, ms) = (n(11..13)?, n(14..16)?, n(17..19)?, n(20..23)?);
    // Days from civil (Howard Hinnant's algorithm), the inverse of `rfc3339`.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86400 + hh * 3600 + mm * 60 + ss) * 1000) + ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_795_000_123_456);
        let s = rfc3339(t);
        assert_eq!(parse_rfc3339_ms(&s), Some(1_795_000_123_456), "{s}");
        assert_eq!(parse_rfc3339_ms("2000-02-29T23:59:59.999Z"), Some(951_868_799_999));
        assert_eq!(parse_rfc3339_ms("nope"), None);
    }

    #[test]
    fn create_then_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/geats.db");
        Db::create(&p, std::time::Duration::from_secs(1)).unwrap();
        let db = Db::open(&p, std::time::Duration::from_secs(1)).unwrap();
        let mode: String = db.conn().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }

    /// Version 5 rewrites the stored definitions in canonical form; one
    /// that does not parse is left for its reader to report.
    #[test]
    fn definitions_become_canonical() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.db");
        let db = Db::create(&p, std::time::Duration::from_secs(1)).unwrap();
        let old = r#"{"name":"a","vm_type":"dummy","network":[],"storage":[{"type":"dir","name":"root"}],"ram":256}"#;
        for (name, def) in [("a", old), ("b", "{not json")] {
            db.conn()
                .execute("INSERT INTO vms (name, vm_type, definition, created, updated) VALUES (?1, 'dummy', ?2, 'x', 'x')", [name, def])
                .unwrap();
        }
        db.conn().pragma_update(None, "user_version", 4).unwrap();
        drop(db);
        let db = Db::open(&p, std::time::Duration::from_secs(1)).unwrap();
        let def = |n: &str| -> String { db.conn().query_row("SELECT definition FROM vms WHERE name = ?1", [n], |r| r.get(0)).unwrap() };
        assert_eq!(def("a"), r#"{"name":"a","network":[],"ram":256,"storage":[{"name":"root","type":"dir"}],"vm_type":"dummy"}"#);
        assert_eq!(def("b"), "{not json");
        let e = db.vm_summaries().unwrap_err();
        assert!(e.to_string().contains("definition of b"), "{e}");
        let version: i64 = db.conn().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    /// `geats list` reads the rows it shows, parsing of each definition
    /// only `ram` and `network`: kept VMs are left out, and a stored text
    /// that is not JSON is reported, not skipped.
    #[test]
    fn listed_rows_read_ram_network_and_lock() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::create(&dir.path().join("g.db"), std::time::Duration::from_secs(1)).unwrap();
        let rows = [
            ("a", r#"{"network":[{"name":"eth0","type":"veth","ipaddr":"10.0.0.5/24"}],"ram":256,"storage":[{"name":"root","type":"dir"}]}"#, 1, 1),
            ("b", r#"{"storage":[{"name":"root","type":"dir","extra":{"deep":[1,2]}}]}"#, 0, 1),
            ("c", r#"{"ram":64}"#, 0, 0),
        ];
        for (name, def, locked, defined) in rows {
            db.conn()
                .execute(
                    "INSERT INTO vms (name, vm_type, definition, locked, defined, created, updated) VALUES (?1, 'dummy', ?2, ?3, ?4, 'x', 'x')",
                    rusqlite::params![name, def, locked, defined],
                )
                .unwrap();
        }
        let listed = db.vms_listed().unwrap();
        let names: Vec<&str> = listed.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "b"], "the kept VM c is not listed");
        assert_eq!((listed[0].ram, listed[0].locked, listed[0].vm_type.as_str()), (Some(256), true, "dummy"));
        assert_eq!(listed[0].network.len(), 1);
        assert_eq!(listed[0].network[0].cidr().unwrap().map(|c| c.addr.to_string()), Some("10.0.0.5".into()));
        assert_eq!((listed[1].ram, listed[1].locked, listed[1].network.len()), (None, false, 0));
        db.conn().execute("UPDATE vms SET definition = '{\"ram\":1' WHERE name = 'b'", []).unwrap();
        let e = db.vms_listed().unwrap_err();
        assert!(e.to_string().contains("definition of b"), "{e}");
    }

    #[test]
    fn wal_files_stay_and_the_wal_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.db");
        let mut db = Db::create(&p, std::time::Duration::from_secs(1)).unwrap();
        db.write(|tx| tx.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1)").map_err(q("test"))).unwrap();
        let wal = dir.path().join("g.db-wal");
        assert!(std::fs::metadata(&wal).unwrap().len() > 0, "the write went to the WAL");
        drop(db);
        // Kept with its blocks (no create, unlink or truncate per
        // process) but empty: its header zeroed, so the next process has
        // nothing to rebuild its index from (`vfs`).
        let bytes = std::fs::read(&wal).unwrap();
        assert!(bytes.len() > 32, "the WAL keeps its blocks: {} bytes", bytes.len());
        assert_eq!(bytes[..32], [0; 32], "the WAL header is zeroed");
        assert!(dir.path().join("g.db-shm").exists());
        // At rest the database file alone holds everything.
        let alone = tempfile::tempdir().unwrap();
        std::fs::copy(&p, alone.path().join("g.db")).unwrap();
        for copy in [&p, &alone.path().join("g.db")] {
            let db = Db::open_read(copy, std::time::Duration::from_secs(1)).unwrap();
            let x: i64 = db.conn().query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
            assert_eq!(x, 1, "{}", copy.display());
        }
        // SQLite's own VFS reads the same database beside it.
        let plain = rusqlite::Connection::open(&p).unwrap();
        let x: i64 = plain.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(x, 1);
    }

    /// A new database at `p` with a table `t (k, v)` of `rows` rows, each
    /// `v` of `size` bytes, one commit each.
    fn with_rows(p: &Path, rows: i64, size: usize) -> Db {
        let mut db = Db::create(p, std::time::Duration::from_secs(1)).unwrap();
        let blob = "y".repeat(size);
        db.write(|tx| tx.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)").map_err(q("test"))).unwrap();
        for k in 0..rows {
            db.write(|tx| tx.execute("INSERT INTO t VALUES (?1, ?2)", rusqlite::params![k, blob]).map_err(q("test"))).unwrap();
        }
        db
    }

    /// A WAL reused after its header was zeroed holds the new frames over
    /// the old ones; recovery after a crash (the process killed before it
    /// checkpointed) finds every new commit and stops at the first old
    /// frame, whose salts are the old header's.
    #[test]
    fn a_reused_wal_recovers_its_new_frames_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.db");
        drop(with_rows(&p, 40, 3000));
        let wal = dir.path().join("g.db-wal");
        let stale = std::fs::metadata(&wal).unwrap().len();
        assert!(stale > 40 * 4096, "{stale}");
        let mut db = Db::open(&p, std::time::Duration::from_secs(1)).unwrap();
        db.write(|tx| tx.execute("UPDATE t SET v = 'new' WHERE k = 3", []).map_err(q("test"))).unwrap();
        db.write(|tx| tx.execute("DELETE FROM t WHERE k >= 30", []).map_err(q("test"))).unwrap();
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), stale, "the new frames overwrote the old in place");
        // The crash: copy the database and its WAL while the connection
        // that wrote them is still open, with an -shm index of garbage.
        let crashed = tempfile::tempdir().unwrap();
        std::fs::copy(&p, crashed.path().join("g.db")).unwrap();
        std::fs::copy(&wal, crashed.path().join("g.db-wal")).unwrap();
        std::fs::write(crashed.path().join("g.db-shm"), vec![0xa5u8; 65536]).unwrap();
        drop(db);
        for conn in [rusqlite::Connection::open(crashed.path().join("g.db")).unwrap(), rusqlite::Connection::open(&p).unwrap()] {
            let (n, v3): (i64, String) = conn.query_row("SELECT count(*), (SELECT v FROM t WHERE k = 3) FROM t", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
            assert_eq!((n, v3.as_str()), (30, "new"));
        }
    }

    /// The first connection of a process empties the `-shm` index by
    /// writing zeros over it, not by truncating it: the file keeps its
    /// size, and whatever a dead process left in it is gone.
    #[test]
    fn the_first_connection_zeroes_the_shm_index() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.db");
        let mut db = Db::create(&p, std::time::Duration::from_secs(1)).unwrap();
        db.write(|tx| tx.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (7)").map_err(q("test"))).unwrap();
        drop(db);
        let shm = dir.path().join("g.db-shm");
        std::fs::write(&shm, vec![0xffu8; 65536]).unwrap();
        let db = Db::open_read(&p, std::time::Duration::from_secs(1)).unwrap();
        let x: i64 = db.conn().query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(x, 7);
        let bytes = std::fs::read(&shm).unwrap();
        assert_eq!(bytes.len(), 65536, "zeroed in place, not truncated to 3 bytes and extended to 32 KiB");
        assert!(bytes[32768..].iter().all(|b| *b == 0), "the garbage past SQLite's index is zeroed too");
    }

    /// A WAL grown past `vfs::KEEP_AT_MOST` is truncated at the end
    /// of the process, as before.
    #[test]
    fn a_large_wal_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.db");
        let db = with_rows(&p, 10, 200_000);
        let wal = dir.path().join("g.db-wal");
        assert!(std::fs::metadata(&wal).unwrap().len() as i64 > vfs::KEEP_AT_MOST);
        drop(db);
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
        let db = Db::open_read(&p, std::time::Duration::from_secs(1)).unwrap();
        let n: i64 = db.conn().query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 10);
    }

    #[test]
    fn newer_schema_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.db");
        let db = Db::create(&p, std::time::Duration::from_secs(1)).unwrap();
        db.conn().pragma_update(None, "user_version", 99).unwrap();
        drop(db);
        let e = Db::open(&p, std::time::Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("newer"), "{e}");
    }

    #[test]
    fn now_is_rfc3339() {
        let n = now();
        assert_eq!(n.len(), 24, "{n}");
        assert!(n.starts_with("20") && n.ends_with('Z'));
    }
}
