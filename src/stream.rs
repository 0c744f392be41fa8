//! The VM stream: one versioned format for moving a VM between hosts
//! (`migrate` → `receive`) and for backups (`export` → `import`).
//! `docs/migration.md` is its specification; in short:
//!
//! ```text
//! "GEATS-VM" | u32 format | u64 n | header JSON (n bytes) | sum(header)
//! per volume:  'V' u32 index | frame* | 'E' u64 logical length | sum(index, frames)
//!     frame:   'D' u32 len | u32 !len | len bytes   (data, len ≤ 1 MiB)
//!              'Z' u64 len | u64 !len              (a hole: len zero bytes)
//! 'F'                                           (end of the volumes)
//! 'C' u8 start                                  (receive only: commit)
//! ```
//!
//! All integers are big-endian. A directory volume's section is a tar
//! stream (numeric owners, modes, times, xattrs as PAX `SCHILY.xattr.*`,
//! hard links, GNU sparse files); a file or block volume's section is its
//! bytes, all-zero blocks sent as holes. Each section carries its length
//! and a checksum of its index and frames (`sum`: BLAKE3 in format 2,
//! sha256 in format 1, which is still read), so a stream cut or corrupted
//! anywhere is refused before the receiver commits anything.

use std::collections::HashMap;
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::definition::Definition;
use crate::names::{TypeName, VmName, VolumeName};

/// The first bytes of every stream.
pub const MAGIC: &[u8; 8] = b"GEATS-VM";
/// The format version this build writes.
pub const FORMAT: u32 = 2;
/// The oldest version it reads. Version 1 differs from 2 only in its
/// checksums: sha256 instead of BLAKE3.
const OLDEST: u32 = 1;

/// The checksum of a header or a volume's section: BLAKE3 from format 2
/// (2.6 times the rate of sha256 with the CPU's SHA instructions on the
/// development VM: 4.0 GB/s against 1.5 GB/s), sha256 in format 1.
#[derive(Debug, Clone)]
enum Sum {
    Sha256(Sha256),
    Blake3(Box<blake3::Hasher>),
}

impl Sum {
    fn new(format: u32) -> Sum {
        if format == 1 {
            Sum::Sha256(Sha256::new())
        } else {
            Sum::Blake3(Box::default())
        }
    }

    fn update(&mut self, b: impl AsRef<[u8]>) {
        match self {
            Sum::Sha256(h) => h.update(b),
            Sum::Blake3(h) => {
                h.update(b.as_ref());
            }
        }
    }

    fn finish(&self) -> [u8; 32] {
        match self {
            Sum::Sha256(h) => h.clone().finalize().into(),
            Sum::Blake3(h) => *h.finalize().as_bytes(),
        }
    }

    fn of(format: u32, b: &[u8]) -> [u8; 32] {
        let mut s = Sum::new(format);
        s.update(b);
        s.finish()
    }
}
/// The largest data frame accepted (and the block of an image volume).
const CHUNK: usize = 1 << 20;
/// The data frame written. A frame goes out once it is full, and the
/// reader cannot start on it before: with frames of a quarter of the
/// pipe's buffer ([`grow_pipe`]) the writer fills the next frames while
/// the reader unpacks this one. (1 MiB frames through the default 64 KiB
/// pipe made the two sides take turns.)
const FRAME: usize = 256 << 10;
/// The largest header accepted.
const HEADER_LIMIT: u64 = 16 << 20;

/// A failure of the stream or of its transport.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading or writing the stream failed (the peer went away, the
    /// file could not be written).
    #[error("cannot {step} the VM stream")]
    Io {
        /// What was being done.
        step: &'static str,
        /// Why.
        source: io::Error,
    },
    /// The bytes are not a VM stream this build understands.
    #[error("not a valid geats VM stream: {0}")]
    Format(String),
    /// A volume's content could not be read or written.
    #[error("volume {volume}: cannot {step} its content")]
    Volume {
        /// The volume.
        volume: String,
        /// What was being done.
        step: &'static str,
        /// Why.
        source: io::Error,
    },
    /// The destination answered with an error.
    #[error("destination {destination} refused: {message}")]
    Refused {
        /// The destination host.
        destination: String,
        /// Its error code.
        errorcode: String,
        /// Its message.
        message: String,
    },
    /// The destination could not be reached or broke off.
    #[error("destination {destination}: {detail}")]
    Transport {
        /// The destination host.
        destination: String,
        /// What happened, with the transport's stderr.
        detail: String,
    },
}

fn io_err(step: &'static str) -> impl FnOnce(io::Error) -> StreamError {
    move |source| StreamError::Io { step, source }
}

/// How a volume's content travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// A tar stream of the directory it provides.
    Tar,
    /// The bytes of the file or block device it provides.
    Image,
    /// No content (a volume that is only recorded).
    None,
}

/// Owner and mode of a directory volume's top directory (a tar stream
/// carries its entries, not the directory it is unpacked into).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopDir {
    /// Mode bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// One volume in the header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeHeader {
    /// Its name.
    pub name: VolumeName,
    /// Its storage type (the receiver uses its own of the same name).
    pub storage_type: TypeName,
    /// How its content travels.
    pub encoding: Encoding,
    /// Bytes it occupies at the source (what the receiver must have free).
    pub bytes: u64,
    /// The top directory of a `tar` volume.
    pub top: Option<TopDir>,
}

/// The stream's header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// [`FORMAT`].
    pub format: u32,
    /// The VM.
    pub vm: VmName,
    /// Its VM type.
    pub vm_type: TypeName,
    /// Its definition, as stored at the source.
    pub definition: Definition,
    /// Its volumes, in the order of their sections.
    pub volumes: Vec<VolumeHeader>,
    /// The host that wrote the stream.
    pub source: String,
    /// When (RFC 3339).
    pub created: String,
    /// Only check that the VM could be received; no volume follows.
    pub dry_run: bool,
}

/// Writes a stream, counting the bytes.
#[derive(Debug)]
pub struct StreamWriter<W: Write> {
    out: W,
    bytes: u64,
}

impl<W: Write> StreamWriter<W> {
    /// A writer over `out`.
    pub fn new(out: W) -> StreamWriter<W> {
        StreamWriter { out, bytes: 0 }
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.bytes += b.len() as u64;
        Ok(())
    }

    /// The magic, version and header.
    pub fn header(&mut self, h: &Header) -> Result<(), StreamError> {
        let json = serde_json::to_vec(h).map_err(|e| StreamError::Format(format!("cannot encode the header: {e}")))?;
        let mut b = Vec::with_capacity(json.len() + 52);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&FORMAT.to_be_bytes());
        b.extend_from_slice(&(json.len() as u64).to_be_bytes());
        b.extend_from_slice(&json);
        b.extend_from_slice(&Sum::of(FORMAT, &json));
        self.put(&b).and_then(|_| self.out.flush()).map_err(io_err("write the header of"))
    }

    /// Start the section of volume `index`.
    pub fn section(&mut self, index: u32) -> Result<Section<'_, W>, StreamError> {
        let mut b = [0u8; 5];
        b[0] = b'V';
        b[1..].copy_from_slice(&index.to_be_bytes());
        self.put(&b).map_err(io_err("write"))?;
        let mut hash = Sum::new(FORMAT);
        hash.update(index.to_be_bytes());
        Ok(Section { w: self, buf: vec![0u8; HEAD + FRAME], used: 0, hash, logical: 0 })
    }

    /// The end of the volumes.
    pub fn end(&mut self) -> Result<(), StreamError> {
        self.put(b"F").and_then(|_| self.out.flush()).map_err(io_err("write"))
    }

    /// Tell a receiver to commit (and start the VM if `start`).
    pub fn commit(&mut self, start: bool) -> Result<(), StreamError> {
        self.put(&[b'C', u8::from(start)]).and_then(|_| self.out.flush()).map_err(io_err("write"))
    }
}

/// One volume's section being written: a `Write` that frames what it is
/// given, plus [`Section::hole`] for runs of zeros and
/// [`Section::copy_from`] to read a file straight into the frame.
#[derive(Debug)]
pub struct Section<'a, W: Write> {
    w: &'a mut StreamWriter<W>,
    /// The frame being filled: its head (`HEAD` bytes, written by
    /// `frame`), then `used` bytes of data; one `write` sends both.
    buf: Vec<u8>,
    used: usize,
    hash: Sum,
    logical: u64,
}

/// The head of a data frame: 'D', the length and its inverse.
const HEAD: usize = 9;

impl<W: Write> Section<'_, W> {
    fn frame(&mut self) -> io::Result<()> {
        if self.used == 0 {
            return Ok(());
        }
        let len = self.used as u32;
        self.buf[0] = b'D';
        self.buf[1..5].copy_from_slice(&len.to_be_bytes());
        self.buf[5..HEAD].copy_from_slice(&(!len).to_be_bytes());
        let frame = &self.buf[..HEAD + self.used];
        self.used = 0;
        self.hash.update(frame);
        self.w.put(frame)
    }

    /// Up to `len` bytes of `r`, read straight into the frame (no copy
    /// through a small buffer). Returns how many it read: fewer than
    /// `len` only at the end of `r`.
    pub fn copy_from<R: Read>(&mut self, r: &mut R, len: u64) -> io::Result<u64> {
        let mut left = len;
        while left > 0 {
            if self.used == FRAME {
                self.frame()?;
            }
            let room = (FRAME - self.used).min(usize::try_from(left).unwrap_or(usize::MAX));
            let at = HEAD + self.used;
            let n = match r.read(&mut self.buf[at..at + room]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.used += n;
            self.logical += n as u64;
            left -= n as u64;
        }
        Ok(len - left)
    }

    /// `len` zero bytes, sent as a hole.
    pub fn hole(&mut self, len: u64) -> io::Result<()> {
        self.frame()?;
        let mut b = [0u8; 17];
        b[0] = b'Z';
        b[1..9].copy_from_slice(&len.to_be_bytes());
        b[9..].copy_from_slice(&(!len).to_be_bytes());
        self.hash.update(b);
        self.logical += len;
        self.w.put(&b)
    }

    /// Close the section: its length and checksum. Returns the length.
    pub fn finish(mut self) -> Result<u64, StreamError> {
        self.frame().map_err(io_err("write"))?;
        let mut b = Vec::with_capacity(41);
        b.push(b'E');
        b.extend_from_slice(&self.logical.to_be_bytes());
        b.extend_from_slice(&self.hash.finish());
        self.w.put(&b).map_err(io_err("write"))?;
        Ok(self.logical)
    }
}

impl<W: Write> Write for Section<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.used == FRAME {
            self.frame()?;
        }
        let n = data.len().min(FRAME - self.used);
        let at = HEAD + self.used;
        self.buf[at..at + n].copy_from_slice(&data[..n]);
        self.used += n;
        self.logical += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.frame()?;
        self.w.out.flush()
    }
}

/// Reads a stream.
#[derive(Debug)]
pub struct StreamReader<R: Read> {
    inp: R,
    /// The stream's format version, once its header is read.
    format: u32,
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8], what: &str) -> Result<(), StreamError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => StreamError::Format(format!("the stream ends in the middle of {what}")),
        _ => StreamError::Io { step: "read", source: e },
    })
}

impl<R: Read> StreamReader<R> {
    /// A reader over `inp`.
    pub fn new(inp: R) -> StreamReader<R> {
        StreamReader { inp, format: FORMAT }
    }

    /// Read and check the magic, version and header.
    pub fn header(&mut self) -> Result<Header, StreamError> {
        let mut head = [0u8; 20];
        read_exact(&mut self.inp, &mut head, "the header")?;
        if &head[..8] != MAGIC {
            return Err(StreamError::Format("it does not start with GEATS-VM".into()));
        }
        let version = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
        if !(OLDEST..=FORMAT).contains(&version) {
            return Err(StreamError::Format(format!("format version {version}; this geats reads versions {OLDEST} to {FORMAT}")));
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&head[12..20]);
        let n = u64::from_be_bytes(n);
        if n > HEADER_LIMIT {
            return Err(StreamError::Format(format!("a header of {n} bytes is larger than the limit of {HEADER_LIMIT}")));
        }
        let mut json = vec![0u8; n as usize];
        read_exact(&mut self.inp, &mut json, "the header")?;
        let mut sum = [0u8; 32];
        read_exact(&mut self.inp, &mut sum, "the header")?;
        if Sum::of(version, &json) != sum {
            return Err(StreamError::Format("the header's checksum does not match".into()));
        }
        let h: Header = serde_json::from_slice(&json).map_err(|e| StreamError::Format(format!("bad header: {e}")))?;
        if h.format != version {
            return Err(StreamError::Format(format!("the header says format {} in a version {version} stream", h.format)));
        }
        self.format = version;
        Ok(h)
    }

    /// The next section (`Some(index)`), or `None` at the end of the
    /// volumes.
    pub fn next_section(&mut self) -> Result<Option<SectionReader<'_, R>>, StreamError> {
        let mut tag = [0u8; 1];
        read_exact(&mut self.inp, &mut tag, "a volume")?;
        match tag[0] {
            b'F' => Ok(None),
            b'V' => {
                let mut i = [0u8; 4];
                read_exact(&mut self.inp, &mut i, "a volume")?;
                let mut hash = Sum::new(self.format);
                hash.update(i);
                Ok(Some(SectionReader { r: self, index: u32::from_be_bytes(i), hash, logical: 0, left: 0, done: false }))
            }
            t => Err(StreamError::Format(format!("unexpected byte {t:#04x} where a volume or the end was expected"))),
        }
    }

    /// After the volumes, a receiver waits for the commit: `Some(start)`,
    /// or `None` when the sender closed the stream instead.
    pub fn commit(&mut self) -> Result<Option<bool>, StreamError> {
        let mut b = [0u8; 2];
        match self.inp.read_exact(&mut b) {
            Ok(()) if b[0] == b'C' => Ok(Some(b[1] != 0)),
            Ok(()) => Err(StreamError::Format(format!("unexpected byte {:#04x} where the commit was expected", b[0]))),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(StreamError::Io { step: "read the commit from", source: e }),
        }
    }
}

/// One frame of a section.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// This many bytes of data follow ([`Read`] them).
    Data(u64),
    /// This many zero bytes.
    Hole(u64),
    /// The section ended and its length and checksum matched.
    End,
}

/// One volume's section being read. As a [`Read`] it yields the data of
/// a section without holes (a tar stream); [`SectionReader::frame`] walks
/// frames for images.
#[derive(Debug)]
pub struct SectionReader<'a, R: Read> {
    r: &'a mut StreamReader<R>,
    /// The volume's index in the header.
    pub index: u32,
    hash: Sum,
    logical: u64,
    left: u64,
    done: bool,
}

fn to_io(e: StreamError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl<R: Read> SectionReader<'_, R> {
    /// The next frame; data of the previous one must have been read.
    pub fn frame(&mut self) -> Result<Frame, StreamError> {
        if self.done {
            return Ok(Frame::End);
        }
        if self.left > 0 {
            return Err(StreamError::Format("a data frame was not read to its end".into()));
        }
        let mut tag = [0u8; 1];
        read_exact(&mut self.r.inp, &mut tag, "a volume")?;
        match tag[0] {
            b'D' => {
                let mut n = [0u8; 8];
                read_exact(&mut self.r.inp, &mut n, "a volume")?;
                self.hash.update(tag);
                self.hash.update(n);
                let len = u32::from_be_bytes([n[0], n[1], n[2], n[3]]);
                // The length twice, the second inverted: a corrupted length
                // must not make the reader wait for bytes never sent.
                if !len != u32::from_be_bytes([n[4], n[5], n[6], n[7]]) || len as usize > CHUNK {
                    return Err(StreamError::Format(format!("a corrupted frame length in volume {}", self.index)));
                }
                self.left = u64::from(len);
                self.logical += self.left;
                Ok(Frame::Data(self.left))
            }
            b'Z' => {
                let mut n = [0u8; 16];
                read_exact(&mut self.r.inp, &mut n, "a volume")?;
                self.hash.update(tag);
                self.hash.update(n);
                let mut a = [0u8; 8];
                a.copy_from_slice(&n[..8]);
                let len = u64::from_be_bytes(a);
                a.copy_from_slice(&n[8..]);
                if !len != u64::from_be_bytes(a) {
                    return Err(StreamError::Format(format!("a corrupted hole length in volume {}", self.index)));
                }
                self.logical += len;
                Ok(Frame::Hole(len))
            }
            b'E' => {
                let mut tail = [0u8; 40];
                read_exact(&mut self.r.inp, &mut tail, "a volume")?;
                let mut n = [0u8; 8];
                n.copy_from_slice(&tail[..8]);
                let len = u64::from_be_bytes(n);
                if len != self.logical {
                    return Err(StreamError::Format(format!("volume {} should hold {len} bytes but {} arrived", self.index, self.logical)));
                }
                if self.hash.finish() != tail[8..] {
                    return Err(StreamError::Format(format!("the checksum of volume {} does not match", self.index)));
                }
                self.done = true;
                Ok(Frame::End)
            }
            t => Err(StreamError::Format(format!("unexpected byte {t:#04x} inside volume {}", self.index))),
        }
    }

    /// Read (and check) what is left of the section.
    pub fn finish(&mut self) -> Result<u64, StreamError> {
        let mut sink = vec![0u8; 64 << 10];
        loop {
            while self.left > 0 {
                let n = self.read_data(&mut sink).map_err(io_err("read"))?;
                if n == 0 {
                    return Err(StreamError::Format("the stream ends in the middle of a volume".into()));
                }
            }
            if self.frame()? == Frame::End {
                return Ok(self.logical);
            }
        }
    }

    fn read_data(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.r.inp.read(&mut buf[..want])?;
        if n == 0 && want > 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the stream ends in the middle of a volume"));
        }
        self.hash.update(&buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

impl<R: Read> Read for SectionReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.left > 0 {
                return self.read_data(buf);
            }
            match self.frame().map_err(to_io)? {
                Frame::Data(_) => continue,
                Frame::Hole(_) => return Err(io::Error::new(io::ErrorKind::InvalidData, "a hole inside a tar volume")),
                Frame::End => return Ok(0),
            }
        }
    }
}

// ---- directory volumes: tar ----

/// The owner and mode of `dir`, for [`VolumeHeader::top`].
pub fn top_dir(dir: &Path) -> io::Result<TopDir> {
    let m = std::fs::symlink_metadata(dir)?;
    Ok(TopDir { mode: m.mode() & 0o7777, uid: m.uid(), gid: m.gid() })
}

/// Write the tree under `dir` as a tar stream into `section`: numeric
/// owners, modes, times, xattrs, hard links, sparse files, devices and
/// fifos; sockets are skipped (they mean nothing once copied).
///
/// The tar crate writes the headers (GNU long names, PAX xattrs, sparse
/// maps); a regular file's data is read here, in frame-sized reads
/// straight into the section, since the crate copies through an 8 KiB
/// buffer. An entry's metadata is read once, relative to its directory;
/// a file is probed for holes (`SEEK_HOLE`) only when it occupies fewer
/// blocks than its size, as GNU tar does.
pub fn write_tree<W: Write>(dir: &Path, section: &mut Section<'_, W>) -> io::Result<()> {
    let mut b = tar::Builder::new(section);
    b.mode(tar::HeaderMode::Complete);
    b.follow_symlinks(false);
    // Only files that may be sparse go through `append_file`.
    b.sparse(true);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = dir.join(&rel);
        let mut entries: Vec<_> = std::fs::read_dir(&full)?.collect::<io::Result<Vec<_>>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let rel = rel.join(e.file_name());
            let path = e.path();
            let m = e.metadata()?;
            let ft = m.file_type();
            if ft.is_socket() {
                continue;
            }
            if !ft.is_dir() && m.nlink() > 1 {
                if let Some(first) = links.get(&(m.dev(), m.ino())) {
                    // The first name carried the inode's data and xattrs.
                    let mut h = tar::Header::new_gnu();
                    h.set_metadata_in_mode(&m, tar::HeaderMode::Complete);
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    b.append_link(&mut h, &rel, first)?;
                    continue;
                }
                links.insert((m.dev(), m.ino()), rel.clone());
            }
            if ft.is_file() {
                let mut f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path)?;
                xattrs(&mut b, xattr::FileExt::list_xattr(&f), |n| xattr::FileExt::get_xattr(&f, n))?;
                if m.blocks() * 512 < m.size() {
                    // Maybe sparse: the crate maps the holes and sends the data.
                    b.append_file(&rel, &mut f)?;
                    continue;
                }
                let mut h = tar::Header::new_gnu();
                h.set_metadata_in_mode(&m, tar::HeaderMode::Complete);
                // The header alone (with its long-name entry if needed):
                // `append_data` writes the data it is given, here none,
                // whatever size the header says; the data follows.
                b.append_data(&mut h, &rel, io::empty())?;
                let s = b.get_mut();
                let sent = s.copy_from(&mut f, m.size())?;
                if sent != m.size() {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{} shrank while it was read", path.display())));
                }
                let pad = (512 - m.size() % 512) % 512;
                s.write_all(&[0u8; 512][..pad as usize])?;
            } else if ft.is_dir() {
                xattrs(&mut b, xattr::list(&path), |n| xattr::get(&path, n))?;
                let mut h = tar::Header::new_gnu();
                h.set_metadata_in_mode(&m, tar::HeaderMode::Complete);
                h.set_size(0);
                b.append_data(&mut h, &rel, io::empty())?;
                stack.push(rel);
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path)?;
                let mut h = tar::Header::new_gnu();
                h.set_metadata_in_mode(&m, tar::HeaderMode::Complete);
                h.set_size(0);
                b.append_link(&mut h, &rel, target)?;
            } else {
                // Devices and fifos: the header carries everything.
                xattrs(&mut b, xattr::list(&path), |n| xattr::get(&path, n))?;
                let mut h = tar::Header::new_gnu();
                h.set_metadata_in_mode(&m, tar::HeaderMode::Complete);
                h.set_size(0);
                let rdev = m.rdev();
                h.set_device_major(u32::try_from(nix::sys::stat::major(rdev)).unwrap_or(0))?;
                h.set_device_minor(u32::try_from(nix::sys::stat::minor(rdev)).unwrap_or(0))?;
                b.append_data(&mut h, &rel, io::empty())?;
            }
        }
    }
    b.finish()?;
    Ok(())
}

/// A PAX header with the xattrs `names` lists (read with `get`), if any.
fn xattrs<W: Write>(b: &mut tar::Builder<W>, names: io::Result<xattr::XAttrs>, get: impl Fn(&std::ffi::OsStr) -> io::Result<Option<Vec<u8>>>) -> io::Result<()> {
    let names = match names {
        Ok(n) => n,
        // A file system without xattrs has none to copy.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut data = Vec::new();
    for name in names {
        let Some(value) = get(&name)? else { continue };
        let key = [b"SCHILY.xattr.".as_slice(), name.as_os_str().as_bytes()].concat();
        // "LEN key=value\n", LEN counting itself.
        let body = key.len() + value.len() + 3;
        let mut len = body + body.to_string().len();
        if len.to_string().len() != body.to_string().len() {
            len += 1;
        }
        data.extend_from_slice(len.to_string().as_bytes());
        data.push(b' ');
        data.extend_from_slice(&key);
        data.push(b'=');
        data.extend_from_slice(&value);
        data.push(b'\n');
    }
    if data.is_empty() {
        return Ok(());
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, "PaxHeader", data.as_slice())
}

/// Unpack a tar stream into `dir` (which exists and is empty), keeping
/// owners, modes, times and xattrs; no entry can escape `dir`. Sets the
/// top directory's owner and mode to `top`.
///
/// No entry is written through a symbolic link: an entry's parent must
/// be a directory made here or found by `lstat` to be one (each once,
/// remembered in [`Dirs`]), and a path or hard-link target with `..` or
/// a leading `/` is refused. A symbolic link can only come from an
/// entry, and an entry can only replace a file, never a directory, so a
/// directory once checked stays one. This replaces the tar crate's
/// `unpack_in`, which canonicalizes the destination and the entry's
/// parent for every entry (a `readlink` per path component: 25 per file
/// here, 63% of the receiver's system time).
pub fn read_tree<R: Read>(input: R, dir: &Path, top: Option<TopDir>) -> io::Result<()> {
    let mut a = tar::Archive::new(input);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_preserve_mtime(true);
    a.set_unpack_xattrs(true);
    a.set_overwrite(true);
    let mut known = Dirs::new(dir);
    // Regular files are written here (the crate copies through an 8 KiB
    // buffer and sets xattrs by path), devices and fifos (the crate writes
    // them as empty files), hard links (the crate would resolve the target
    // against the working directory); directories are finished last, so
    // a read-only one does not stop its own entries. The crate unpacks
    // symbolic links and sparse files.
    let mut dirs = Vec::new();
    let mut buf = vec![0u8; 256 << 10];
    for entry in a.entries()? {
        let mut e = entry?;
        let kind = e.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        let rel = inside(&e.path()?)?;
        let Some(parent) = rel.parent() else {
            // The top directory itself ("./"): `top` sets its owner and mode.
            if kind.is_dir() {
                continue;
            }
            return Err(io::Error::new(io::ErrorKind::InvalidData, "an entry without a name"));
        };
        known.ensure(parent)?;
        let path = dir.join(&rel);
        if kind.is_dir() {
            known.ensure(&rel)?;
            dirs.push((path, e));
        } else if kind.is_hard_link() {
            let target = e.link_name()?.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("hard link {} without a target", rel.display())))?;
            let target = inside(&target)?;
            // The target was unpacked before, so its directory is known;
            // one that is not would be reached through anything.
            if !target.parent().is_some_and(|p| known.has(p)) {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("hard link {} to {}, which is not in the volume", rel.display(), target.display())));
            }
            std::fs::hard_link(dir.join(&target), &path)?;
        } else if kind.is_fifo() || kind.is_character_special() || kind.is_block_special() {
            special(&e, &path)?;
        } else if kind.is_file() {
            file(&mut e, &path, &mut buf)?;
        } else {
            e.unpack(&path)?;
        }
    }
    dirs.sort_by(|a, b| b.0.cmp(&a.0));
    for (path, mut d) in dirs {
        // Each is a directory `known` made or checked, so a path is safe.
        let h = d.header();
        let (uid, gid, mode, mtime) = (id(h.uid()?)?, id(h.gid()?)?, h.mode()? & 0o7777, h.mtime()?);
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        for (name, value) in xattrs_of(&mut d)? {
            xattr::set(&path, std::ffi::OsStr::from_bytes(&name), &value)?;
        }
        set_mtime(&path, mtime)?;
    }
    if let Some(t) = top {
        std::os::unix::fs::chown(dir, Some(t.uid), Some(t.gid))?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(t.mode))?;
    }
    Ok(())
}

/// A regular file entry at `path` (whose directory exists): its data,
/// owner, mode, xattrs and time, all through the one open file.
fn file<R: Read>(e: &mut tar::Entry<'_, R>, path: &Path, buf: &mut [u8]) -> io::Result<()> {
    let h = e.header();
    let (uid, gid, mode, mtime, size) = (id(h.uid()?)?, id(h.gid()?)?, h.mode()? & 0o7777, h.mtime()?, h.size()?);
    let open = || std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path);
    // A new file, never an existing one written in place (it could be a
    // link to anything).
    let mut f = match open() {
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(path)?;
            open()?
        }
        r => r?,
    };
    let mut done = 0u64;
    loop {
        let n = match e.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        f.write_all(&buf[..n])?;
        done += n as u64;
    }
    if done != size {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{}: {done} of {size} bytes", path.display())));
    }
    // The owner first: a chown clears set-id bits and file capabilities.
    std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    for (name, value) in xattrs_of(e)? {
        xattr::FileExt::set_xattr(&f, std::ffi::OsStr::from_bytes(&name), &value)?;
    }
    f.set_times(std::fs::FileTimes::new().set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime)))
}

/// The xattrs (PAX `SCHILY.xattr.*` records) of an entry.
fn xattrs_of<R: Read>(e: &mut tar::Entry<'_, R>) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(exts) = e.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                out.push((name.to_vec(), ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(out)
}

/// A numeric owner or group from a header.
fn id(n: u64) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("owner {n} is out of range")))
}

/// An entry's path relative to the volume: `.` components dropped, `..`
/// and a leading `/` refused.
fn inside(p: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::CurDir => {}
            _ => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("entry {} leaves the volume", p.display()))),
        }
    }
    Ok(out)
}

/// The directories under an unpack root known to be directories (made
/// here, or checked with `lstat`), by relative path; `""` is the root.
#[derive(Debug)]
struct Dirs<'a> {
    root: &'a Path,
    known: std::collections::HashSet<PathBuf>,
}

impl<'a> Dirs<'a> {
    fn new(root: &'a Path) -> Dirs<'a> {
        Dirs { root, known: std::collections::HashSet::from([PathBuf::new()]) }
    }

    fn has(&self, rel: &Path) -> bool {
        self.known.contains(rel)
    }

    /// Make `rel` a directory, reached from the root through directories
    /// only: missing ones are made, anything else there (a symbolic link,
    /// a file) is refused.
    fn ensure(&mut self, rel: &Path) -> io::Result<()> {
        if self.known.contains(rel) {
            return Ok(());
        }
        if let Some(parent) = rel.parent() {
            self.ensure(parent)?;
        }
        let full = self.root.join(rel);
        match std::fs::create_dir(&full) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !std::fs::symlink_metadata(&full)?.is_dir() {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} is not a directory: no entry is written through it", rel.display())));
                }
            }
            Err(e) => return Err(e),
        }
        self.known.insert(rel.to_path_buf());
        Ok(())
    }
}

/// Make a device or fifo entry at `path` (whose directory exists) with
/// its owner, mode and device numbers.
fn special<R: Read>(e: &tar::Entry<'_, R>, path: &Path) -> io::Result<()> {
    use nix::sys::stat::{mknod, makedev, Mode, SFlag};
    let h = e.header();
    let kind = h.entry_type();
    let flag = if kind.is_fifo() {
        SFlag::S_IFIFO
    } else if kind.is_character_special() {
        SFlag::S_IFCHR
    } else {
        SFlag::S_IFBLK
    };
    let mode = h.mode()? & 0o7777;
    let dev = makedev(u64::from(h.device_major()?.unwrap_or(0)), u64::from(h.device_minor()?.unwrap_or(0)));
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    mknod(path, flag, Mode::from_bits_truncate(mode), dev).map_err(io::Error::from)?;
    std::os::unix::fs::lchown(path, Some(u32::try_from(h.uid()?).unwrap_or(0)), Some(u32::try_from(h.gid()?).unwrap_or(0)))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    set_mtime(path, h.mtime()?)
}

/// Set the modification time of `path` (not following a symlink).
fn set_mtime(path: &Path, mtime: u64) -> io::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(i64::try_from(mtime).unwrap_or(0), 0);
    utimensat(None, path, &TimeSpec::UTIME_OMIT, &t, UtimensatFlags::NoFollowSymlink).map_err(io::Error::from)
}

// ---- file and block volumes: image bytes ----

/// Write the bytes of the file or block device at `path`, all-zero
/// blocks as holes. Returns the length.
pub fn write_image<W: Write>(path: &Path, section: &mut Section<'_, W>) -> io::Result<u64> {
    let mut f = std::fs::File::open(path)?;
    let len = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    let mut zeros = 0u64;
    while done < len {
        let want = usize::try_from(len - done).unwrap_or(CHUNK).min(CHUNK);
        f.read_exact(&mut buf[..want])?;
        done += want as u64;
        if buf[..want].iter().all(|b| *b == 0) {
            zeros += want as u64;
            continue;
        }
        if zeros > 0 {
            section.hole(zeros)?;
            zeros = 0;
        }
        section.write_all(&buf[..want])?;
    }
    if zeros > 0 {
        section.hole(zeros)?;
    }
    Ok(len)
}

/// Write an image section into the file or block device at `path`:
/// holes are skipped in a file (left sparse) and written as zeros on a
/// device. A file is cut to the section's length.
pub fn read_image<R: Read>(section: &mut SectionReader<'_, R>, path: &Path) -> Result<u64, StreamError> {
    let vol = |step: &'static str| move |source: io::Error| StreamError::Volume { volume: path.display().to_string(), step, source };
    let mut f = std::fs::OpenOptions::new().write(true).open(path).map_err(vol("open"))?;
    let device = f.metadata().map(|m| m.file_type().is_block_device()).map_err(vol("stat"))?;
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    loop {
        match section.frame()? {
            Frame::Data(mut n) => {
                while n > 0 {
                    let want = usize::try_from(n).unwrap_or(CHUNK).min(CHUNK);
                    let got = section.read_data(&mut buf[..want]).map_err(io_err("read"))?;
                    f.write_all(&buf[..got]).map_err(vol("write"))?;
                    n -= got as u64;
                    pos += got as u64;
                }
            }
            Frame::Hole(n) => {
                if device {
                    let zero = vec![0u8; CHUNK];
                    let mut left = n;
                    while left > 0 {
                        let k = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
                        f.write_all(&zero[..k]).map_err(vol("write"))?;
                        left -= k as u64;
                    }
                } else {
                    f.seek(SeekFrom::Current(i64::try_from(n).unwrap_or(i64::MAX))).map_err(vol("seek"))?;
                }
                pos += n;
            }
            Frame::End => break,
        }
    }
    if !device {
        f.set_len(pos).map_err(vol("resize"))?;
    }
    f.sync_all().map_err(vol("sync"))?;
    Ok(pos)
}

/// Give the pipe `fd` (if it is one) a 1 MiB buffer instead of 64 KiB,
/// so a writer runs ahead of its reader by a few frames and each side
/// is woken less often. Best effort: a pipe that cannot grow still works.
pub fn grow_pipe(fd: std::os::fd::BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    let is_pipe = nix::sys::stat::fstat(fd.as_raw_fd()).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFIFO);
    if is_pipe {
        let _ = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE));
    }
}
const PIPE: i32 = 1 << 20;

/// Read one JSON answer line from a receiver.
pub fn read_answer<R: BufRead>(r: &mut R) -> io::Result<Option<serde_json::Value>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    serde_json::from_str(line.trim()).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("not a JSON answer ({e}): {}", line.trim())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            format: FORMAT,
            vm: VmName::new("a").unwrap(),
            vm_type: TypeName::new("dummy").unwrap(),
            definition: serde_json::from_value(serde_json::json!({"vm_type": "dummy"})).unwrap(),
            volumes: vec![],
            source: "h".into(),
            created: "now".into(),
            dry_run: false,
        }
    }

    fn stream(data: &[u8], hole: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = StreamWriter::new(&mut out);
        w.header(&header()).unwrap();
        let mut s = w.section(0).unwrap();
        s.write_all(data).unwrap();
        s.hole(hole).unwrap();
        s.write_all(data).unwrap();
        assert_eq!(s.finish().unwrap(), 2 * data.len() as u64 + hole);
        w.end().unwrap();
        out
    }

    #[test]
    fn round_trip() {
        let bytes = stream(b"hello", 4096);
        let mut r = StreamReader::new(bytes.as_slice());
        assert_eq!(r.header().unwrap(), header());
        let mut s = r.next_section().unwrap().unwrap();
        assert_eq!(s.frame().unwrap(), Frame::Data(5));
        assert_eq!(s.finish().unwrap(), 4106);
        assert!(r.next_section().unwrap().is_none());
    }

    /// A tar stream of `entries` (name, type, link target), names written
    /// raw (the tar crate refuses to build `..`).
    fn evil(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            let data: &[u8] = if *kind == tar::EntryType::Regular { b"x" } else { b"" };
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn no_entry_escapes_the_volume() {
        use tar::EntryType::{Directory, Link, Regular, Symlink};
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("outside");
        std::fs::create_dir(&out).unwrap();
        let o = out.display().to_string();
        let cases: Vec<Vec<(&str, tar::EntryType, &str)>> = vec![
            vec![("../outside/f", Regular, "")],
            vec![("a/../../outside/f", Regular, "")],
            vec![("/abs", Regular, "")],
            vec![("l", Symlink, &o), ("l/f", Regular, "")],
            vec![("l", Symlink, "../outside"), ("l/d", Directory, "")],
            vec![("l", Symlink, &o), ("l/sub/f", Regular, "")],
            vec![("s", Symlink, &o), ("h", Link, "s"), ("h/f", Regular, "")],
            vec![("f", Regular, ""), ("h", Link, "../outside/x")],
            vec![("l", Symlink, &o), ("h", Link, "l/x")],
            vec![("f", Regular, ""), ("f/g", Regular, "")],
        ];
        for (i, entries) in cases.iter().enumerate() {
            std::fs::write(out.join("x"), b"keep").unwrap();
            let vol = t.path().join(format!("vol{i}"));
            std::fs::create_dir(&vol).unwrap();
            let r = read_tree(evil(entries).as_slice(), &vol, None);
            assert_eq!(r.map_err(|e| e.kind()), Err(io::ErrorKind::InvalidData), "case {i}: {entries:?}");
            let left: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(left, vec![std::ffi::OsString::from("x")], "case {i} wrote outside");
        }
        // What is fine: a symlink pointing out (not followed), a hard link
        // inside, "./" prefixes, a directory made by its entries first.
        let vol = t.path().join("ok");
        std::fs::create_dir(&vol).unwrap();
        let ok = [("./d/f", Regular, ""), ("d", Directory, ""), ("l", Symlink, o.as_str()), ("h", Link, "d/f")];
        read_tree(evil(&ok).as_slice(), &vol, None).unwrap();
        assert_eq!(std::fs::read(vol.join("h")).unwrap(), b"x");
        assert_eq!(std::fs::read_link(vol.join("l")).unwrap(), out);
    }

    #[test]
    fn reads_format_1() {
        // Format 1: the same layout with sha256 checksums.
        let mut h = header();
        h.format = 1;
        let json = serde_json::to_vec(&h).unwrap();
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&(json.len() as u64).to_be_bytes());
        b.extend_from_slice(&json);
        b.extend_from_slice(&Sha256::digest(&json));
        let mut sec = vec![b'V', 0, 0, 0, 0];
        sec.extend_from_slice(&[b'D', 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xfa]);
        sec.extend_from_slice(b"hello");
        let sum = Sha256::digest(&sec[1..]);
        b.extend_from_slice(&sec);
        b.push(b'E');
        b.extend_from_slice(&5u64.to_be_bytes());
        b.extend_from_slice(&sum);
        b.push(b'F');
        let mut r = StreamReader::new(b.as_slice());
        assert_eq!(r.header().unwrap(), h);
        let mut s = r.next_section().unwrap().unwrap();
        let mut data = Vec::new();
        s.read_to_end(&mut data).unwrap();
        assert_eq!(data, b"hello");
        assert!(r.next_section().unwrap().is_none());
        // The same bytes labelled version 2 are refused (other checksums).
        let mut two = b.clone();
        two[11] = 2;
        assert!(StreamReader::new(two.as_slice()).header().is_err());
    }

    #[test]
    fn every_cut_and_every_flipped_byte_is_refused() {
        let bytes = stream(b"hello", 4096);
        let read_all = |b: &[u8]| -> Result<(), StreamError> {
            let mut r = StreamReader::new(b);
            r.header()?;
            while let Some(mut s) = r.next_section()? {
                s.finish()?;
            }
            Ok(())
        };
        read_all(&bytes).unwrap();
        for cut in 0..bytes.len() {
            assert!(read_all(&bytes[..cut]).is_err(), "a stream cut at {cut} was accepted");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(read_all(&b).is_err(), "a flipped byte at {i} was accepted");
        }
    }
}
