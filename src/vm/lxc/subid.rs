//! Whether the host lets LXC write an unprivileged container's id map.
//!
//! LXC (`lxc_map_ids`) writes `/proc/PID/uid_map` itself only when
//! `newuidmap` and `newgidmap` are not both on its `PATH` and privileged
//! (setuid, or `CAP_SETUID`/`CAP_SETGID` in the file's capabilities). When
//! they are (Debian's `lxc` recommends `uidmap`, which installs them), LXC
//! runs them even as root, "to insist that root also reserve ranges in
//! subuid", and they refuse any range `/etc/subuid` or `/etc/subgid` does
//! not grant to root: `newuidmap: uid range [0-65536) -> [100000-165536)
//! not allowed`, after `lxc-start` has begun. geats asks the same
//! question before it starts a container, so the operator gets the fix
//! (docs/lxc.md, "The id map and /etc/subuid") instead of LXC's log line,
//! with nothing started.
//!
//! Coverage is `newuidmap`'s own (shadow's `have_range`): the ranges of
//! lines whose owner is `root` or `0` may be joined end to end to cover
//! the map.

use std::path::Path;

use super::confine::IdShift;

/// The files `newuidmap` and `newgidmap` read.
pub const SUBUID: &str = "/etc/subuid";
/// See [`SUBUID`].
pub const SUBGID: &str = "/etc/subgid";

/// `CAP_SETGID` and `CAP_SETUID`, bit numbers in a capability set.
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;

/// Why starting a container with `map` would fail, if it would: the file
/// that lacks the delegation, and what to do. `path` is the `PATH` LXC
/// runs with.
pub fn undelegated(map: &IdShift, path: &str, subuid: &Path, subgid: &Path) -> Option<(std::path::PathBuf, String)> {
    if !shadow_tools(path) {
        return None;
    }
    let last = |start: u32| u64::from(start) + u64::from(map.range) - 1;
    for (file, kind, start) in [(subuid, "uid", map.uid), (subgid, "gid", map.gid)] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if !covered(&text, start, map.range) {
            return Some((
                file.to_path_buf(),
                format!(
                    "newuidmap and newgidmap are installed, so LXC maps an unprivileged container's ids through them, and they refuse host {kind}s {start}-{} because {} grants root no range covering them; \
                     add `root:{start}:{}` to {} (e.g. `usermod --add-subuids {}-{} --add-subgids {}-{} root`), or set the VM type's idmap to a range root holds there",
                    last(start),
                    file.display(),
                    map.range,
                    file.display(),
                    map.uid,
                    last(map.uid),
                    map.gid,
                    last(map.gid),
                ),
            ));
        }
    }
    None
}

/// Would LXC use the shadow tools: are `newuidmap` and `newgidmap` both
/// on `path`, executable and privileged?
fn shadow_tools(path: &str) -> bool {
    privileged_tool(path, "newuidmap", CAP_SETUID) && privileged_tool(path, "newgidmap", CAP_SETGID)
}

/// LXC's `idmaptool_on_path_and_privileged`: the first executable `tool`
/// on `path`, setuid or with `cap` effective and permitted.
fn privileged_tool(path: &str, tool: &str, cap: u32) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(file) = path.split(':').map(|d| Path::new(d).join(tool)).find(|p| nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata(&file) else { return false };
    if meta.permissions().mode() & 0o4000 != 0 {
        return true;
    }
    match xattr::get(&file, "security.capability") {
        Ok(Some(caps)) => file_cap_has(&caps, cap),
        _ => false,
    }
}

/// Does a `security.capability` value (`struct vfs_cap_data`: the magic
/// and flags word, then permitted and inheritable words, little-endian)
/// hold `cap` in the permitted set with the effective flag?
fn file_cap_has(caps: &[u8], cap: u32) -> bool {
    let word = |i: usize| caps.get(i * 4..i * 4 + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    let (Some(magic), Some(permitted)) = (word(0), word(1)) else { return false };
    let effective = magic & 1 != 0;
    effective && cap < 32 && permitted & (1 << cap) != 0
}

/// Do root's lines in a subordinate-id file (`owner:start:count`) cover
/// `start..start+count`, ranges joined end to end as `newuidmap` joins
/// them?
fn covered(text: &str, start: u32, count: u32) -> bool {
    let ranges: Vec<(u64, u64)> = text
        .lines()
        .filter_map(|line| {
            let mut f = line.trim().splitn(3, ':');
            let (owner, s, c) = (f.next()?, f.next()?, f.next()?);
            if owner != "root" && owner != "0" {
                return None;
            }
            let (s, c) = (s.parse::<u64>().ok()?, c.parse::<u64>().ok()?);
            (c > 0).then_some((s, s + c))
        })
        .collect();
    let (mut at, end) = (u64::from(start), u64::from(start) + u64::from(count));
    if count == 0 {
        return false;
    }
    while at < end {
        match ranges.iter().filter(|(s, e)| *s <= at && at < *e).map(|(_, e)| *e).max() {
            Some(e) => at = e,
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: IdShift = IdShift { uid: 100_000, gid: 200_000, range: 65_536 };

    #[test]
    fn root_lines_cover_the_map_alone_or_joined() {
        assert!(covered("root:100000:65536\n", 100_000, 65_536));
        assert!(covered("0:100000:65536\n", 100_000, 65_536), "the owner may be the uid");
        assert!(covered("root:0:4294967295\n", 100_000, 65_536));
        assert!(covered("root:100000:1000\nroot:101000:64536\n", 100_000, 65_536), "joined end to end");
        assert!(covered("# a comment\n\nalice:100000:65536\nroot:90000:200000\n", 100_000, 65_536));
        assert!(!covered("", 100_000, 65_536));
        assert!(!covered("alice:100000:65536\n", 100_000, 65_536), "someone else's range");
        assert!(!covered("root:100000:65535\n", 100_000, 65_536), "one id short");
        assert!(!covered("root:100001:65536\n", 100_000, 65_536));
        assert!(!covered("root:100000:1000\nroot:101001:64536\n", 100_000, 65_536), "a gap");
        assert!(!covered("root:100000:x\nroot:100000\nroot::65536\n", 100_000, 65_536), "malformed lines count for nothing");
    }

    #[test]
    fn file_capabilities_need_the_bit_and_the_effective_flag() {
        let caps = |magic: u32, permitted: u32| [magic.to_le_bytes(), permitted.to_le_bytes(), 0u32.to_le_bytes()].concat();
        assert!(file_cap_has(&caps(0x0200_0001, 1 << CAP_SETUID), CAP_SETUID));
        assert!(!file_cap_has(&caps(0x0200_0000, 1 << CAP_SETUID), CAP_SETUID), "not effective");
        assert!(!file_cap_has(&caps(0x0200_0001, 1 << CAP_SETGID), CAP_SETUID));
        assert!(!file_cap_has(&[1, 0], CAP_SETUID), "truncated");
    }

    /// A `PATH` of one directory holding `newuidmap` and `newgidmap` with
    /// `mode`, and subordinate-id files holding `subuid` and `subgid`.
    fn host(mode: u32, subuid: &str, subgid: &str) -> (tempfile::TempDir, String) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        for tool in ["newuidmap", "newgidmap"] {
            let p = dir.path().join("bin").join(tool);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::fs::write(dir.path().join("subuid"), subuid).unwrap();
        std::fs::write(dir.path().join("subgid"), subgid).unwrap();
        let path = format!("/nonexistent:{}", dir.path().join("bin").display());
        (dir, path)
    }

    #[test]
    fn the_map_is_checked_only_where_lxc_would_use_the_shadow_tools() {
        let ok_uid = "root:100000:65536\n";
        let ok_gid = "root:200000:65536\n";
        let check = |mode, subuid, subgid| {
            let (dir, path) = host(mode, subuid, subgid);
            undelegated(&MAP, &path, &dir.path().join("subuid"), &dir.path().join("subgid")).map(|(file, why)| (file.strip_prefix(dir.path()).unwrap().to_path_buf(), why))
        };
        assert_eq!(check(0o4755, ok_uid, ok_gid), None);
        let (file, why) = check(0o4755, "", ok_gid).unwrap();
        assert_eq!(file, Path::new("subuid"));
        assert!(why.contains("refuse host uids 100000-165535") && why.contains("`root:100000:65536`") && why.contains("--add-subuids 100000-165535 --add-subgids 200000-265535"), "{why}");
        let (file, why) = check(0o4755, ok_uid, "root:100000:65536\n").unwrap();
        assert_eq!(file, Path::new("subgid"));
        assert!(why.contains("gids 200000-265535"), "{why}");
        // Not setuid and no file capabilities: LXC writes the map itself.
        assert_eq!(check(0o755, "", ""), None);
        // Not executable: not on the PATH for LXC.
        assert_eq!(check(0o4644, "", ""), None);
        // Missing files grant nothing.
        let (dir, path) = host(0o4755, "", "");
        assert!(undelegated(&MAP, &path, &dir.path().join("absent"), &dir.path().join("absent")).is_some());
        // No tools at all.
        assert_eq!(undelegated(&MAP, "/nonexistent", Path::new("/nonexistent"), Path::new("/nonexistent")), None);
    }
}
