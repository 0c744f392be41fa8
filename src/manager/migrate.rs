//! Moving a VM: the source side (`migrate`, `export`) writes the VM
//! stream of [`crate::stream`]; the receiving side (`receive`, `import`)
//! defines the VM and writes its volumes through the same steps as
//! `define`, under the VM's lease and journal, so a stream that breaks
//! anywhere is undone like any failed define.
//!
//! `migrate` runs, holding the VM's lease: shut the VM down if it runs
//! (cleanly, then power off), stream it to `geats receive` on the
//! destination, wait for the destination's answer that it has defined the
//! VM and written every volume, send the commit (the destination starts
//! the VM if it ran), and only then deprovision it here. Before the
//! commit every failure undoes this side (the VM is started again if it
//! ran) and the destination undoes its own side.

use std::io::{BufReader, Read, Write};
use std::time::Instant;

use serde_json::{json, Value};

use super::actions::{self, Loaded};
use super::op::{Meta, Op, Undo};
use super::reply::{MigrateReply, MovedVolume, Reply};
use super::volumes::Vol;
use super::Manager;
use crate::error::{self, Error, Result};
use crate::names::VmName;
use crate::request::RequestError;
use crate::storage::{Kind, StorageError};
use crate::stream::{self, Encoding, Header, StreamError, StreamReader, StreamWriter, VolumeHeader};
use crate::sys::exec::{Cmd, Streaming};
use crate::vm::VmType;

/// Check a destination as a host name (RFC 1123 labels) or an IPv4
/// address: it becomes one argument of the transport command.
pub(crate) fn check_destination(dest: &str) -> Result<()> {
    let bad = |why: &str| -> Error { RequestError::invalid("/vm_destination", format!("{dest:?} is not a host name: {why}")).into() };
    if dest.is_empty() || dest.len() > 253 {
        return Err(bad("it must have 1 to 253 characters"));
    }
    for label in dest.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("each dot-separated label must have 1 to 63 characters"));
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(bad("only letters, digits, '-' and '.' are allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a label cannot start or end with '-'"));
        }
    }
    Ok(())
}

/// What a volume provides for streaming, and how it travels.
fn encoding(v: &Vol) -> Encoding {
    match v.volume.provides().kind {
        Kind::Directory => Encoding::Tar,
        Kind::File | Kind::BlockDevice => Encoding::Image,
        Kind::Nothing => Encoding::None,
    }
}

fn path_of(v: &Vol, step: &'static str) -> Result<std::path::PathBuf> {
    let p = v.volume.provides();
    p.path.ok_or_else(|| {
        StorageError::State { volume: v.name().to_string(), step, problem: "it provides no path while active".into() }.into()
    })
}

/// The header of `vm`, whose volumes are `vols`.
fn header(l_rec: &crate::db::VmRecord, vols: &[Vol], dry_run: bool) -> Result<Header> {
    let mut volumes = Vec::new();
    for v in vols {
        let enc = encoding(v);
        let (bytes, top) = match (enc, v.volume.provides().path) {
            (Encoding::Tar, Some(p)) if p.exists() => (crate::sys::fsutil::du(&p), stream::top_dir(&p).ok()),
            (Encoding::Image, _) => (v.volume.usage().used_bytes.or(v.volume.usage().size_bytes).unwrap_or(0), None),
            _ => (0, None),
        };
        volumes.push(VolumeHeader { name: v.spec.name.clone(), storage_type: v.spec.storage_type.clone(), encoding: enc, bytes, top });
    }
    Ok(Header {
        format: stream::FORMAT,
        vm: l_rec.name.clone(),
        vm_type: l_rec.vm_type.clone(),
        definition: l_rec.definition.clone(),
        volumes,
        source: crate::sys::proc::hostname(),
        created: crate::db::now(),
        dry_run,
    })
}

/// Write every volume's section (the volumes are active).
fn write_volumes<W: Write>(w: &mut StreamWriter<W>, vols: &[Vol], moved: &mut Vec<MovedVolume>) -> Result<()> {
    for (i, v) in vols.iter().enumerate() {
        let enc = encoding(v);
        let mut s = w.section(u32::try_from(i).unwrap_or(u32::MAX))?;
        let read_err = |source: std::io::Error| -> Error {
            // A broken pipe is the peer going away, not the volume.
            if source.kind() == std::io::ErrorKind::BrokenPipe {
                StreamError::Io { step: "write", source }.into()
            } else {
                StreamError::Volume { volume: v.name().to_string(), step: "stream", source }.into()
            }
        };
        match enc {
            Encoding::Tar => stream::write_tree(&path_of(v, "stream")?, &mut s).map_err(read_err)?,
            Encoding::Image => {
                stream::write_image(&path_of(v, "stream")?, &mut s).map_err(read_err)?;
            }
            Encoding::None => {}
        }
        let bytes = s.finish()?;
        moved.push(MovedVolume { name: v.spec.name.clone(), storage_type: v.spec.storage_type.clone(), encoding: enc, bytes });
    }
    w.end()?;
    Ok(())
}

/// Shut `vm` down cleanly, then power it off if it still runs.
fn shut_down(vmt: &dyn VmType, vm: &VmName) -> Result<()> {
    if let Err(e) = vmt.shutdown(vm) {
        tracing::warn!(vm = %vm, "clean shutdown failed, powering off: {}", error::chain(&e));
    }
    if vmt.state(vm).is_running() {
        vmt.stop(vm)?;
    }
    Ok(())
}

/// The transport to one destination: `geats receive` there.
struct Peer {
    dest: String,
    child: Streaming,
    out: BufReader<std::process::ChildStdout>,
}

impl Peer {
    fn start(config: &crate::config::Config, dest: &str) -> Result<Peer> {
        let argv: Vec<String> = config.migration.command.iter().map(|a| a.replace("{destination}", dest)).collect();
        let mut child = Cmd::new(&argv).timeout(config.migration.timeout).spawn_streaming()?;
        if let Some(sin) = child.stdin() {
            stream::grow_pipe(std::os::fd::AsFd::as_fd(sin));
        }
        let out = child.take_stdout().ok_or_else(|| Error::Internal("the transport has no stdout".into()))?;
        Ok(Peer { dest: dest.to_string(), child, out: BufReader::new(out) })
    }

    fn writer(&mut self) -> Result<StreamWriter<&mut std::process::ChildStdin>> {
        let sin = self.child.stdin().ok_or_else(|| Error::Internal("the transport's stdin is closed".into()))?;
        Ok(StreamWriter::new(sin))
    }

    /// The receiver's next answer: `Ok(answer)` on success, its error
    /// otherwise; when it answers nothing, what its stderr says.
    fn answer(&mut self) -> Result<Value> {
        let a = stream::read_answer(&mut self.out);
        match a {
            Ok(Some(v)) if v["success"] == true => Ok(v),
            Ok(Some(v)) => Err(StreamError::Refused {
                destination: self.dest.clone(),
                errorcode: v["errorcode"].as_str().unwrap_or("migration_failed").to_string(),
                message: v["message"].as_str().unwrap_or("no message").to_string(),
            }
            .into()),
            Ok(None) | Err(_) => Err(self.gone()),
        }
    }

    /// The error for a receiver that went away: its exit and stderr.
    fn gone(&mut self) -> Error {
        self.child.close_stdin();
        let detail = match self.child.wait() {
            Ok(o) => format!("`{}` ended ({}) without an answer{}", self.child.shown(), o.code.map_or("killed".into(), |c| format!("exit status {c}")), stderr(&o.stderr)),
            Err(e) => e.to_string(),
        };
        StreamError::Transport { destination: self.dest.clone(), detail }.into()
    }

    /// Close the stream and wait for the receiver to exit.
    fn close(mut self) {
        self.child.close_stdin();
        if let Err(e) = self.child.wait() {
            tracing::warn!("migration transport: {e}");
        }
    }
}

fn stderr(s: &str) -> String {
    let t: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if t.is_empty() {
        String::new()
    } else {
        format!(": {}", t.join("; "))
    }
}

/// Turn a failed write into the receiver's own error if it answered one
/// (it refuses by answering and exiting, which breaks our pipe).
fn or_answer(peer: &mut Peer, e: Error) -> Error {
    match e {
        Error::Stream(StreamError::Io { .. }) => match peer.answer() {
            Err(answered) => answered,
            Ok(_) => e,
        },
        other => other,
    }
}

/// `migrate`.
pub(super) fn migrate(op: &mut Op<'_>, vm: &VmName, dest: &str) -> Result<Reply> {
    let t0 = Instant::now();
    check_destination(dest)?;
    let Loaded { rec, vmt, mut vols } = actions::load_defined(op, vm)?;
    if rec.locked {
        return Err(Error::Locked(vm.clone()));
    }
    let running = vmt.state(vm).is_running();
    let config = op.config;
    if op.is_dry() {
        // Ask the destination, change nothing on either side.
        let h = header(&rec, &vols, true)?;
        let mut peer = Peer::start(config, dest)?;
        let sent = peer.writer().and_then(|mut w| w.header(&h).map_err(Error::from));
        if let Err(e) = sent {
            return Err(or_answer(&mut peer, e));
        }
        peer.child.close_stdin();
        peer.answer()?;
        peer.close();
        let steps = dry_steps(vm, dest, running, &vols);
        for s in steps {
            op.step(s, None, |_| Ok(()))?;
        }
        return Ok(Reply::Migrate(MigrateReply { changed: true, vm: vm.clone(), destination: dest.into(), started: running, volumes: vec![], bytes: 0, duration_s: 0.0 }));
    }
    let vmt_ref: &dyn VmType = &*vmt;
    let mut moved = Vec::new();
    let mut bytes = 0u64;
    let mut peer: Option<Peer> = None;
    let result = actions::with_rollback(op, vm, vmt_ref, &mut vols, |op, vols| {
        if running {
            op.step(format!("shut down VM {vm}"), Some(Undo::StartVm), |_| shut_down(vmt_ref, vm))?;
        }
        for (i, v) in vols.iter_mut().enumerate() {
            if !v.volume.is_active() {
                op.step(format!("activate volume {}", v.name()), Some(Undo::DeactivateVolume(i)), |_| Ok(v.volume.activate()?))?;
            }
        }
        let h = header(&rec, vols, false)?;
        op.step(format!("stream VM {vm} to {dest}"), None, |_| {
            let p = peer.insert(Peer::start(config, dest)?);
            let mut w = p.writer()?;
            let sent = w.header(&h).map_err(Error::from).and_then(|()| write_volumes(&mut w, vols, &mut moved));
            bytes = w.bytes();
            if let Err(e) = sent {
                return Err(or_answer(p, e));
            }
            p.answer().map(|_| ())
        })?;
        op.step(format!("commit at {dest}{}", if running { " and start VM there" } else { "" }), None, |_| {
            let p = peer.as_mut().ok_or_else(|| Error::Internal("no transport".into()))?;
            let sent = p.writer()?.commit(running);
            if let Err(e) = sent {
                return Err(or_answer(p, e.into()));
            }
            p.answer().map(|_| ())
        })
    });
    if let Some(p) = peer.take() {
        // On failure the receiver reads the end of the stream and undoes
        // its side; wait for it, so nothing is left running there.
        p.close();
    }
    result?;
    // The destination has it: deprovision it here.
    let loaded = actions::load(op, vm)?.ok_or_else(|| Error::NotFound(vm.clone()))?;
    actions::remove(op, vm, loaded, true)?;
    Ok(Reply::Migrate(MigrateReply {
        changed: true,
        vm: vm.clone(),
        destination: dest.into(),
        started: running,
        volumes: moved,
        bytes,
        duration_s: t0.elapsed().as_secs_f64(),
    }))
}

fn dry_steps(vm: &VmName, dest: &str, running: bool, vols: &[Vol]) -> Vec<String> {
    let mut s = vec![format!("ask {dest} whether it can receive VM {vm}: it can")];
    if running {
        s.push(format!("shut down VM {vm}"));
    }
    for v in vols {
        s.push(format!("stream volume {} ({})", v.name(), v.volume.describe()));
    }
    s.push(format!("commit at {dest}{}", if running { " and start VM there" } else { "" }));
    s.push(format!("deprovision VM {vm} here"));
    s
}

impl Manager {
    /// Run `f` holding `vm`'s lease, journaled as `action`.
    fn leased(&self, vm: &VmName, action: &'static str, f: impl FnOnce(&mut Op<'_>) -> Result<Reply>) -> Result<Reply> {
        let mut db = self.db_write()?;
        let me = super::me();
        self.acquire_lease(&mut db, vm, action, me)?;
        let meta = Meta { vm: vm.clone(), action, caller: Some(format!("cli:{action}")), request_id: None };
        let result = (|| {
            let mut op = Op::real(&self.config, &mut db, meta);
            let out = f(&mut op);
            let jid = op.journal()?;
            let steps = op.steps().to_vec();
            if let Some(jid) = jid {
                super::end_entry(&mut db, jid, &steps, &out)?;
            }
            out
        })();
        if let Err(e) = db.release_lease(vm, me) {
            tracing::warn!(vm = %vm, "cannot release the operation lease: {}", error::chain(&e));
        }
        result
    }

    /// `geats export NAME FILE`: write the VM stream of a stopped VM to
    /// `out` (`stop`: shut a running one down first). The VM stays here.
    pub fn export(&self, vm: &VmName, stop: bool, shown: &str, out: &mut dyn Write) -> Result<Reply> {
        let t0 = Instant::now();
        self.leased(vm, "export", |op| {
            let Loaded { rec, vmt, mut vols } = actions::load_defined(op, vm)?;
            let vmt_ref: &dyn VmType = &*vmt;
            if vmt_ref.state(vm).is_running() {
                if !stop {
                    return Err(Error::InvalidState { vm: vm.clone(), action: "export", reason: "it is running; stop it first or pass --stop".into() });
                }
                op.step(format!("shut down VM {vm}"), None, |_| shut_down(vmt_ref, vm))?;
            }
            let mut moved = Vec::new();
            let mut bytes = 0;
            actions::with_rollback(op, vm, vmt_ref, &mut vols, |op, vols| {
                for (i, v) in vols.iter_mut().enumerate() {
                    op.step(format!("activate volume {}", v.name()), Some(Undo::DeactivateVolume(i)), |_| Ok(v.volume.activate()?))?;
                }
                let h = header(&rec, vols, false)?;
                op.step(format!("export VM {vm} to {shown}"), None, |_| {
                    let mut w = StreamWriter::new(&mut *out);
                    let r = w.header(&h).map_err(Error::from).and_then(|()| write_volumes(&mut w, vols, &mut moved));
                    bytes = w.bytes();
                    r
                })?;
                actions::deactivate_all(op, vols)
            })?;
            Ok(Reply::Migrate(MigrateReply {
                changed: true,
                vm: vm.clone(),
                destination: shown.to_string(),
                started: false,
                volumes: moved,
                bytes,
                duration_s: t0.elapsed().as_secs_f64(),
            }))
        })
    }

    /// `geats receive` (`commit`: wait for the sender's commit after
    /// answering that everything arrived) and `geats import FILE` (commit
    /// at the end of the stream). `answer` gets each JSON answer line.
    pub fn receive(&self, input: &mut dyn Read, wait_commit: bool, answer: &mut dyn FnMut(&Value)) -> Result<Reply> {
        let t0 = Instant::now();
        let mut r = StreamReader::new(input);
        let h = r.header()?;
        let vm = h.vm.clone();
        h.definition.check(&vm).map_err(|(p, e)| RequestError::invalid(format!("/definition{p}"), e))?;
        if h.dry_run {
            let mut db = self.db_read()?;
            let mut op = Op::dry(&self.config, db.as_mut());
            let plan = plan_new(&op, &vm, &h.definition)?;
            check_space(&self.config, &h, &plan.vols)?;
            op.step("check", None, |_| Ok(()))?;
            answer(&json!({"success": true, "phase": "checked", "vm": vm}));
            return Ok(Reply::DryRun(super::reply::DryRunReply { dry_run: true, changed: true, steps: vec![format!("receive VM {vm}")] }));
        }
        self.leased(&vm, "receive", |op| {
            let plan = plan_new(op, &vm, &h.definition)?;
            check_space(op.config, &h, &plan.vols)?;
            let actions::Plan { def, type_name, vmt, mut vols, .. } = plan;
            let vmt_ref: &dyn VmType = &*vmt;
            let mut moved = Vec::new();
            let mut started = false;
            actions::with_rollback(op, &vm, vmt_ref, &mut vols, |op, vols| {
                for (i, v) in vols.iter_mut().enumerate() {
                    let desc = format!("define volume {} ({})", v.name(), v.volume.describe());
                    op.step(desc, Some(Undo::UndefineVolume(i)), |_| Ok(v.volume.define()?))?;
                }
                let mut expect = 0u32;
                while let Some(mut s) = r.next_section()? {
                    let idx = s.index;
                    let vh = h.volumes.get(idx as usize).filter(|_| idx == expect).ok_or_else(|| StreamError::Format(format!("volume {idx} is out of order")))?;
                    expect += 1;
                    let (i, v) = vols
                        .iter_mut()
                        .enumerate()
                        .find(|(_, v)| v.spec.name == vh.name)
                        .ok_or_else(|| StreamError::Format(format!("volume {} is not in the definition", vh.name)))?;
                    op.step(format!("activate volume {}", v.name()), Some(Undo::DeactivateVolume(i)), |_| Ok(v.volume.activate()?))?;
                    let mut n = 0;
                    op.step(format!("receive volume {} ({:?})", v.name(), vh.encoding), None, |_| {
                        n = receive_volume(&mut s, v, vh)?;
                        Ok(())
                    })?;
                    moved.push(MovedVolume { name: vh.name.clone(), storage_type: vh.storage_type.clone(), encoding: vh.encoding, bytes: n });
                    op.step(format!("deactivate volume {}", v.name()), None, |_| Ok(v.volume.deactivate()?))?;
                }
                if (expect as usize) != h.volumes.len() {
                    return Err(StreamError::Format(format!("{} of {} volumes arrived", expect, h.volumes.len())).into());
                }
                let att = super::volumes::attached(vols);
                op.step(format!("define {type_name} VM {vm}"), Some(Undo::UndefineVm), |_| Ok(vmt_ref.define(&vm, &def, &att)?))?;
                let rec = crate::db::VmRecord {
                    name: vm.clone(),
                    vm_type: type_name.clone(),
                    definition: def.clone(),
                    locked: false,
                    defined: true,
                    created: crate::db::now(),
                    updated: crate::db::now(),
                    intent: Default::default(),
                };
                let vrecs = super::volumes::records(vols);
                op.step("record definition", Some(Undo::RestoreRecord(None)), |op| actions::save_record(op, &rec, &vrecs))?;
                if !wait_commit {
                    return Ok(());
                }
                answer(&json!({"success": true, "phase": "received", "vm": vm}));
                let start = r.commit()?.ok_or_else(|| StreamError::Format("the sender closed the stream instead of committing".into()))?;
                if start {
                    for (i, v) in vols.iter_mut().enumerate() {
                        op.step(format!("activate volume {}", v.name()), Some(Undo::DeactivateVolume(i)), |_| Ok(v.volume.activate()?))?;
                    }
                    op.step(format!("start VM {vm}"), Some(Undo::StopVm), |_| Ok(vmt_ref.start(&vm)?))?;
                    started = true;
                }
                Ok(())
            })?;
            Ok(Reply::Migrate(MigrateReply {
                changed: true,
                vm: vm.clone(),
                destination: crate::sys::proc::hostname(),
                started,
                volumes: moved,
                bytes: 0,
                duration_s: t0.elapsed().as_secs_f64(),
            }))
        })
    }
}

fn taken(vm: &VmName) -> Error {
    Error::InvalidState { vm: vm.clone(), action: "receive", reason: "a VM of that name exists on this host (defined or kept)".into() }
}

/// Plan the definition as `define` would, refusing a name this host
/// holds anything of (defined or kept, or known to the VM type) first.
fn plan_new(op: &Op<'_>, vm: &VmName, def: &crate::definition::Definition) -> Result<actions::Plan> {
    if let Some(db) = op.db() {
        if db.vm(vm)?.is_some() {
            return Err(taken(vm));
        }
    }
    let plan = actions::plan_definition(op, vm, def)?;
    if plan.existing.is_some() || plan.vmt.exists(vm) {
        return Err(taken(vm));
    }
    Ok(plan)
}

/// Refuse a VM whose volumes need more than the free space of the
/// storage roots they would be written under.
fn check_space(config: &crate::config::Config, h: &Header, vols: &[Vol]) -> Result<()> {
    let roots = crate::storage::roots(config);
    let mut need: std::collections::BTreeMap<std::path::PathBuf, u64> = Default::default();
    for vh in &h.volumes {
        if !vols.iter().any(|v| v.spec.name == vh.name) {
            return Err(RequestError::invalid("/definition/storage", format!("volume {} of the stream is not in its definition", vh.name)).into());
        }
        if let Some(r) = roots.iter().find(|r| r.name == vh.storage_type) {
            *need.entry(r.path.clone()).or_default() += vh.bytes;
        }
    }
    for (root, bytes) in need {
        let Some((_, free)) = crate::sys::fsutil::space(&root) else { continue };
        if bytes > free {
            return Err(StorageError::State {
                volume: h.vm.to_string(),
                step: "receive",
                problem: format!("not enough space under {}: the volumes need {bytes} bytes, {free} are free", root.display()),
            }
            .into());
        }
    }
    Ok(())
}

/// Write one section into an active volume.
fn receive_volume<R: Read>(s: &mut stream::SectionReader<'_, R>, v: &Vol, vh: &VolumeHeader) -> Result<u64> {
    let kind = v.volume.provides().kind;
    let path = v.volume.provides().path;
    match (vh.encoding, kind, path) {
        (Encoding::None, _, _) => Ok(s.finish()?),
        (Encoding::Tar, Kind::Directory, Some(dir)) => {
            stream::read_tree(&mut *s, &dir, vh.top).map_err(|source| -> Error {
                // A cut or corrupted stream, or the volume's own failure.
                if matches!(source.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof) {
                    StreamError::Format(format!("volume {}: {}", vh.name, error::chain(&source))).into()
                } else {
                    StreamError::Volume { volume: vh.name.to_string(), step: "unpack", source }.into()
                }
            })?;
            Ok(s.finish()?)
        }
        (Encoding::Image, Kind::File | Kind::BlockDevice, Some(p)) => Ok(stream::read_image(s, &p)?),
        (enc, kind, _) => Err(StorageError::State {
            volume: vh.name.to_string(),
            step: "receive",
            problem: format!("its content comes as {enc:?} but storage type {} here provides {}", vh.storage_type, kind.as_str()),
        }
        .into()),
    }
}
