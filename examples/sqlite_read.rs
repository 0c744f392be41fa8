//! The benchmark's yardstick: a process that opens a geats database the way
//! geats does and reads one VM's definition, nothing else. `bench/run.sh`
//! times it beside `/bin/true` and `geats agent ... info`, so the target
//! "about 2x /bin/true plus one SQLite read" is measured, not assumed.
//!
//! Usage: `sqlite_read DB_FILE VM_NAME`

#![allow(clippy::disallowed_macros)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(db), Some(vm)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: sqlite_read DB_FILE VM_NAME");
        return ExitCode::from(2);
    };
    let read = || -> rusqlite::Result<String> {
        let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        c.query_row("SELECT definition FROM vms WHERE name = ?1", [vm], |r| r.get(0))
    };
    match read() {
        Ok(d) => {
            println!("{}", d.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sqlite_read: {e}");
            ExitCode::FAILURE
        }
    }
}
