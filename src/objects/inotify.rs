//! inotify: watches on inodes, each with its watch descriptor (wd) and event mask. The
//! kernel keeps a file handle of each watched inode (fdinfo), which gives its path at
//! checkpoint time (`open_by_handle_at`); a restore adds the watches again by path in wd
//! order, so that each gets its old wd (the kernel hands wds out in increasing order; a
//! gap left by a removed watch is skipped with a watch added and removed again on a
//! scratch directory).
//!
//! Events queued at checkpoint time and not read yet are not restored: the checkpoint
//! warns with their size, as the kernel does itself when its queue overflows
//! (`IN_Q_OVERFLOW`), a program must expect to have missed events.

use super::eventfd::recreate;
use super::{ObjectError, OpenFd, Refusal, line_word, unreadable};
use crate::tracer::fd_syscalls;
use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InotifyState {
    pub watches: Vec<Watch>,
    pub nonblocking: bool,
    /// Bytes of events queued at checkpoint time (not restored).
    #[serde(default)]
    pub queued: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Watch {
    pub wd: i32,
    pub mask: u32,
    pub path: String,
}

struct WatchInfo {
    wd: i32,
    mask: u32,
    dev: u64,
    handle_type: i32,
    handle: Vec<u8>,
}

fn parse_watches(info: &str) -> Option<Vec<WatchInfo>> {
    info.lines()
        .filter(|l| l.starts_with("inotify "))
        .map(|l| {
            let hex = |key| line_word(l, key).and_then(|v| u64::from_str_radix(v, 16).ok());
            let handle_hex = line_word(l, "f_handle:")?;
            let handle = (0..handle_hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(handle_hex.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()?;
            Some(WatchInfo {
                wd: line_word(l, "wd:")?.parse().ok()?,
                mask: u32::try_from(hex("mask:")?).ok()?,
                dev: hex("sdev:")?,
                handle_type: line_word(l, "fhandle-type:")?.parse().ok()?,
                handle,
            })
        })
        .collect()
}

/// A mount point of the file system with kernel device number `dev` (major << 20 | minor):
/// one that mounts the file system's root if there is one (every inode is reachable from
/// it), else any (a bind mount or subvolume: inodes inside it are).
fn mount_of(dev: u64) -> Option<String> {
    let wanted = format!("{}:{}", dev >> 20, dev & 0xfffff);
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mounts: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let dev = f.nth(2)?;
            let root = f.next()?;
            let mount = f.next()?;
            (dev == wanted).then_some((root, mount))
        })
        .collect();
    let (_, mount) = mounts
        .iter()
        .find(|(root, _)| *root == "/")
        .or_else(|| mounts.first())?;
    Some(mount.replace("\\040", " "))
}

/// The path of a watched inode, from its file handle.
fn watched_path(w: &WatchInfo) -> Option<String> {
    let mount = std::fs::File::open(mount_of(w.dev)?).ok()?;
    let file = fd_syscalls::open_by_handle(mount.as_fd(), w.handle_type, &w.handle).ok()?;
    let path = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    let path = path.to_string_lossy().into_owned();
    (path.starts_with('/') && !path.ends_with(" (deleted)")).then_some(path)
}

pub fn capture(fd: &OpenFd, depth: super::Depth) -> Result<InotifyState, Refusal> {
    let Some(infos) = parse_watches(&fd.info) else {
        return Err(unreadable("inotify instance", fd));
    };
    let mut watches = Vec::with_capacity(infos.len());
    for w in &infos {
        let Some(path) = watched_path(w) else {
            return Err((
                format!(
                    "an inotify watch (wd {}) on a file whose path cannot be found (deleted, or \
                     on a file system not mounted here)",
                    w.wd
                ),
                "remove the watch (inotify_rm_watch) before the checkpoint",
            ));
        };
        watches.push(Watch {
            wd: w.wd,
            mask: w.mask,
            path,
        });
    }
    watches.sort_by_key(|w| w.wd);
    let queued = match depth {
        super::Depth::Capture => fd
            .copy_here("the inotify instance")
            .ok()
            .and_then(|copy| crate::tracer::sys::bytes_queued(copy.as_fd()).ok())
            .unwrap_or(0) as u64,
        super::Depth::Check => 0,
    };
    Ok(InotifyState {
        watches,
        nonblocking: fd.nonblocking(),
        queued,
    })
}

impl InotifyState {
    pub fn open(&self) -> Result<OwnedFd, ObjectError> {
        let fd = fd_syscalls::inotify_init(libc::IN_NONBLOCK)
            .map_err(recreate("an inotify instance"))?;
        let mut scratch: Option<Scratch> = None;
        let mut next = 1;
        for w in &self.watches {
            let fail = |e: Errno| ObjectError::Recreate {
                what: format!("the inotify watch {} on {}", w.wd, w.path),
                source: e.into(),
            };
            while next < w.wd {
                let dir = match &scratch {
                    Some(s) => s,
                    None => scratch.insert(Scratch::new().map_err(|e| ObjectError::Recreate {
                        what: "a scratch directory for inotify".into(),
                        source: e,
                    })?),
                };
                let skipped =
                    fd_syscalls::inotify_add_watch(fd.as_fd(), &dir.path, libc::IN_DELETE_SELF)
                        .map_err(fail)?;
                fd_syscalls::inotify_rm_watch(fd.as_fd(), skipped).map_err(fail)?;
                next = skipped + 1;
            }
            let path = CString::new(w.path.as_str()).map_err(|_| fail(Errno::EINVAL))?;
            let mask = w.mask & !libc::IN_MASK_CREATE;
            let wd = fd_syscalls::inotify_add_watch(fd.as_fd(), &path, mask).map_err(fail)?;
            if wd != w.wd {
                return Err(fail(Errno::EEXIST));
            }
            next = wd + 1;
        }
        if scratch.is_some() {
            drain(&fd);
        }
        if !self.nonblocking {
            let flags = nix::fcntl::OFlag::O_RDONLY;
            nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))
                .map_err(recreate("an inotify instance's flags"))?;
        }
        Ok(fd)
    }
}

/// Reads away the `IN_IGNORED` events the skipped watches left.
fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 4096];
    while nix::unistd::read(fd, &mut buf).is_ok_and(|n| n > 0) {}
}

/// An empty directory, removed when dropped.
struct Scratch {
    path: CString,
}

impl Scratch {
    fn new() -> std::io::Result<Scratch> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!(".mlckpt-inotify-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir)?;
        let path =
            CString::new(dir.to_string_lossy().into_owned()).map_err(std::io::Error::other)?;
        Ok(Scratch { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(self.path.to_string_lossy().as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_are_read_from_fdinfo() {
        let info = "pos:\t0\nflags:\t00\nmnt_id:\t17\nino:\t1038\n\
                    inotify wd:3 ino:3c4a7 sdev:fe00000 mask:100 ignored_mask:0 fhandle-bytes:8 \
                    fhandle-type:1 f_handle:a7c4030000000000\n";
        let w = &parse_watches(info).unwrap()[0];
        assert_eq!(
            (w.wd, w.mask, w.dev, w.handle_type),
            (3, 0x100, 0xfe0_0000, 1)
        );
        assert_eq!(w.handle, vec![0xa7, 0xc4, 0x03, 0, 0, 0, 0, 0]);
    }
}
