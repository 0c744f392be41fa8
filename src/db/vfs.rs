//! The `geats` SQLite VFS: SQLite's own `unix` VFS, except that the WAL
//! and the `-shm` index are emptied by overwriting them instead of
//! truncating them.
//!
//! **The WAL.** The last connection of a process checkpoints the WAL into
//! the database file, `fsync`s both and empties the WAL
//! (`SQLITE_FCNTL_PERSIST_WAL` with `journal_size_limit = 0`, see
//! `keep_wal`). Truncating gives the WAL's blocks back to the file system,
//! and the next writing process allocates them again: on ext4 the
//! truncate, the next header `fsync` and the checkpoint's `fsync` each
//! wait for a journal commit that frees or allocates blocks (2.1 against
//! 1.1 ms for the WAL's part of a writing request in a C model of its
//! calls, docs/performance.md, ninth pass).
//!
//! A WAL whose header does not carry SQLite's magic number is empty to
//! SQLite (`walIndexRecover` stops at the header), exactly as a file of
//! zero bytes is, so zeroing the 32 header bytes empties it just as
//! truncation does, under the same lock and at the same point. The next
//! writer writes a new header with new random salts and overwrites the
//! old frames in place; frames past its last one carry the old salts, and
//! recovery stops at the first of them: how SQLite itself reuses a WAL
//! when `journal_size_limit` is negative (its default). A WAL grown past
//! [`KEEP_AT_MOST`] (a large import) is still truncated, so the file does
//! not keep more than that at rest. A truncation to a length other than
//! zero (the limit SQLite applies at the first commit after the WAL
//! restarts) is skipped below that size: it would cut off only frames
//! that the header's salts already exclude.
//!
//! **The `-shm` index.** The first connection to open the database in any
//! process (every geats request is one) holds the index's "dead man
//! switch" lock alone and truncates the `-shm` file to 3 bytes, so that
//! nothing a dead process left in it is trusted; SQLite then extends it
//! again with zeros as it maps it, and rebuilds the index from the WAL.
//! On ext4 that truncate frees the blocks writeback had allocated and
//! took 0.3–0.7 ms of every request, reads included. Writing zeros over
//! the whole file instead leaves SQLite exactly the bytes its truncate
//! and re-extension would have (zeros), without freeing anything. SQLite
//! calls `ftruncate` through its system-call table, which the `unix` VFS
//! lets a program replace (`xSetSystemCall`): geats' replacement zeroes a
//! file truncated to 3 bytes whose name ends in `-shm` (SQLite truncates
//! nothing else to that length) and of at most [`KEEP_AT_MOST`] bytes,
//! and passes every other call to the real `ftruncate`.
//!
//! Everything else is the `unix` VFS's own code on its own file
//! structure: only the WAL file's method table is a copy with another
//! `xTruncate`. The database file and every lock are untouched, so the
//! `sqlite3` shell and any other SQLite program still read and write the
//! same database safely beside geats.

use std::ffi::c_int;
use std::sync::OnceLock;

use rusqlite::ffi;

/// The VFS's name, for `Connection::open_with_flags_and_vfs`.
pub const NAME: &str = "geats";

/// The largest WAL or `-shm` file emptied in place (bytes); a larger one
/// is truncated.
pub const KEEP_AT_MOST: i64 = 1 << 20;

/// `ftruncate(2)`, as SQLite's system-call table holds it.
type Ftruncate = unsafe extern "C" fn(c_int, libc::off_t) -> c_int;

/// The `ftruncate` the `unix` VFS called before ours replaced it.
static UNIX_FTRUNCATE: OnceLock<Ftruncate> = OnceLock::new();

/// The size of a WAL header (`WAL_HDRSIZE`).
const HEADER: usize = 32;

/// The `unix` VFS this one forwards to.
struct Unix(*mut ffi::sqlite3_vfs);

// SAFETY: the pointer is SQLite's static `unix` VFS object, which SQLite
// never frees and only reads after registration.
unsafe impl Send for Unix {}
// SAFETY: as above; it is only read.
unsafe impl Sync for Unix {}

/// The WAL's method tables: `unix`'s and our copy of it.
struct WalMethods {
    unix: *const ffi::sqlite3_io_methods,
    ours: *const ffi::sqlite3_io_methods,
}

// SAFETY: both tables are never freed or written after they are made
// (`unix`'s is a static of SQLite's, ours is leaked).
unsafe impl Send for WalMethods {}
// SAFETY: as above; they are only read.
unsafe impl Sync for WalMethods {}

static REGISTERED: OnceLock<Result<Unix, c_int>> = OnceLock::new();
static WAL_METHODS: OnceLock<WalMethods> = OnceLock::new();

/// Register the VFS (once per process); its name.
pub fn register() -> rusqlite::Result<&'static str> {
    let registered = REGISTERED.get_or_init(|| {
        // SAFETY: `sqlite3_vfs_find` initialises SQLite and returns its
        // static `unix` VFS or null; the copy is leaked, so it outlives
        // its registration (SQLite keeps the pointer for the process).
        unsafe {
            let unix = ffi::sqlite3_vfs_find(c"unix".as_ptr());
            if unix.is_null() || (*unix).xOpen.is_none() {
                return Err(ffi::SQLITE_ERROR);
            }
            // The `-shm` truncate goes through the system-call table.
            if let (Some(get), Some(set)) = ((*unix).xGetSystemCall, (*unix).xSetSystemCall) {
                if let Some(unix_ftruncate) = get(unix, c"ftruncate".as_ptr()) {
                    // SAFETY: the table's "ftruncate" entry is ftruncate(2)
                    // stored as a generic function pointer; SQLite calls it
                    // as `int (*)(int, off_t)`, the type given back here.
                    let unix_ftruncate: Ftruncate = std::mem::transmute::<unsafe extern "C" fn(), Ftruncate>(unix_ftruncate);
                    if UNIX_FTRUNCATE.set(unix_ftruncate).is_ok() {
                        let ours: Ftruncate = ftruncate;
                        set(unix, c"ftruncate".as_ptr(), Some(std::mem::transmute::<Ftruncate, unsafe extern "C" fn()>(ours)));
                    }
                }
            }
            let mut vfs = *unix;
            vfs.zName = c"geats".as_ptr();
            vfs.pNext = std::ptr::null_mut();
            vfs.xOpen = Some(open);
            let rc = ffi::sqlite3_vfs_register(Box::leak(Box::new(vfs)), 0);
            if rc != ffi::SQLITE_OK {
                return Err(rc);
            }
            Ok(Unix(unix))
        }
    });
    match registered {
        Ok(_) => Ok(NAME),
        Err(rc) => Err(rusqlite::Error::SqliteFailure(ffi::Error::new(*rc), Some("cannot register the geats SQLite VFS".into()))),
    }
}

/// `xOpen`: `unix`'s, then the WAL gets our method table.
unsafe extern "C" fn open(_vfs: *mut ffi::sqlite3_vfs, name: ffi::sqlite3_filename, file: *mut ffi::sqlite3_file, flags: c_int, out_flags: *mut c_int) -> c_int {
    let Some(Ok(Unix(unix))) = REGISTERED.get() else { return ffi::SQLITE_ERROR };
    // SAFETY: `unix` is SQLite's static `unix` VFS. SQLite passes a
    // buffer of `szOsFile` bytes (`unix`'s size, copied at registration),
    // which `unix`'s `xOpen` fills with its own file structure.
    let rc = unsafe {
        let Some(unix_open) = (**unix).xOpen else { return ffi::SQLITE_ERROR };
        unix_open(*unix, name, file, flags, out_flags)
    };
    // SAFETY: on success `file` is an open `unix` file whose method
    // table pointer SQLite reads through on every call; swapping it for
    // a copy of that very table keeps every method but `xTruncate`.
    unsafe {
        if rc == ffi::SQLITE_OK && flags & ffi::SQLITE_OPEN_WAL != 0 && !(*file).pMethods.is_null() {
            let m = WAL_METHODS.get_or_init(|| {
                let mut ours = *(*file).pMethods;
                ours.xTruncate = Some(truncate);
                WalMethods { unix: (*file).pMethods, ours: Box::leak(Box::new(ours)) }
            });
            // Every `unix` file has the same table; anything else keeps its own.
            if std::ptr::eq(m.unix, (*file).pMethods) {
                (*file).pMethods = m.ours;
            }
        }
    }
    rc
}

/// `xTruncate` of a WAL file: empty it by zeroing its header (module
/// documentation), unless it is larger than [`KEEP_AT_MOST`] or shorter
/// than a header.
unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    let Some(m) = WAL_METHODS.get() else { return ffi::SQLITE_IOERR_TRUNCATE };
    // SAFETY: `m.unix` is `unix`'s static method table, and `file` the
    // open `unix` file SQLite called us with; each method gets it and
    // buffers that outlive the call.
    unsafe {
        let unix = &*m.unix;
        let (Some(unix_truncate), Some(size_of), Some(read), Some(write)) = (unix.xTruncate, unix.xFileSize, unix.xRead, unix.xWrite) else {
            return ffi::SQLITE_IOERR_TRUNCATE;
        };
        let mut now: ffi::sqlite3_int64 = 0;
        let rc = size_of(file, &mut now);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        if now > KEEP_AT_MOST || now <= HEADER as i64 {
            return unix_truncate(file, size);
        }
        if size > 0 {
            return ffi::SQLITE_OK;
        }
        let mut header = [0u8; HEADER];
        if read(file, header.as_mut_ptr().cast(), HEADER as c_int, 0) == ffi::SQLITE_OK && header == [0; HEADER] {
            return ffi::SQLITE_OK;
        }
        let zero = [0u8; HEADER];
        write(file, zero.as_ptr().cast(), HEADER as c_int, 0)
    }
}

/// `ftruncate` of the `unix` VFS: the `-shm` index's truncate to 3 bytes
/// becomes zeros over the whole file (module documentation); anything
/// else is the real call.
unsafe extern "C" fn ftruncate(fd: c_int, length: libc::off_t) -> c_int {
    if length == 3 && zero_shm(fd) {
        return 0;
    }
    match UNIX_FTRUNCATE.get() {
        // SAFETY: the real ftruncate(2), with the caller's arguments.
        Some(f) => unsafe { f(fd, length) },
        None => {
            // SAFETY: as above, straight from libc.
            unsafe { libc::ftruncate(fd, length) }
        }
    }
}

/// Zero the whole of `fd` if it is a `-shm` file of 4 bytes to
/// [`KEEP_AT_MOST`]; false (nothing done) otherwise or on any failure.
fn zero_shm(fd: c_int) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{fd}")) else { return false };
    if !target.as_os_str().as_encoded_bytes().ends_with(b"-shm") {
        return false;
    }
    // SAFETY: SQLite's open descriptor, borrowed for the call: the
    // `File` is never dropped (ManuallyDrop), so the descriptor stays open.
    let file = std::mem::ManuallyDrop::new(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    let Ok(size) = file.metadata().map(|m| m.len()) else { return false };
    if size <= 3 || size > KEEP_AT_MOST as u64 {
        return false;
    }
    static ZEROS: [u8; 32 * 1024] = [0; 32 * 1024];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(ZEROS.len() as u64) as usize;
        if file.write_all_at(&ZEROS[..n], at).is_err() {
            return false;
        }
        at += n as u64;
    }
    true
}
