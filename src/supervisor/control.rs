//! The supervisor's control socket: `mlckpt checkpoint PID` asks the supervisor of PID to
//! checkpoint, since only one tracer can hold a process.
//!
//! Whoever controls the socket controls checkpoints (and `--kill`), so both sides check the
//! other: the socket lives in a directory only its user can enter (0700, owned by that
//! uid; one made by anybody else is refused, not used), the supervisor answers only its
//! own user or root (`SO_PEERCRED`), and a client only trusts a socket held by its own
//! user or root that is the target's supervisor.

use crate::image::format::TierKind;
use crate::tracer::dump::CheckpointStats;
use nix::sys::socket::{UnixCredentials, getsockopt, sockopt::PeerCredentials};
use nix::unistd::{Uid, getuid};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "refusing the runtime directory {dir} (owner uid {owner}, mode {mode:03o}): {why}; \
         a control socket there could be another user's. Remove it (or make it yours with \
         mode 700), or set XDG_RUNTIME_DIR to a directory of your own"
    )]
    UnsafeDir {
        dir: PathBuf,
        owner: u32,
        mode: u32,
        why: &'static str,
    },
    #[error("cannot create or inspect the runtime directory {dir}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "refusing to talk to {socket}: it is held by process {pid} (uid {uid}), {why}; \
         remove the socket if no mlckpt supervises process {target}"
    )]
    Untrusted {
        socket: PathBuf,
        target: i32,
        pid: i32,
        uid: u32,
        why: &'static str,
    },
    #[error("control socket {socket}")]
    Socket {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub tier: Option<TierKind>,
    pub kill: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub stats: Option<CheckpointStats>,
    pub error: Option<String>,
}

pub fn socket_path(runtime_dir: &Path, pid: i32) -> PathBuf {
    runtime_dir.join(format!("sup-{pid}.sock"))
}

/// Binds the socket for `pid` (replacing a stale one), owner-only, in the runtime
/// directory (made private first, see [`private_runtime_dir`]).
pub fn listen(runtime_dir: &Path, pid: i32) -> Result<(UnixListener, PathBuf), ControlError> {
    private_runtime_dir(runtime_dir)?;
    let path = socket_path(runtime_dir, pid);
    let socket_err = |source| ControlError::Socket {
        socket: path.clone(),
        source,
    };
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(socket_err)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(socket_err)?;
    listener.set_nonblocking(true).map_err(socket_err)?;
    Ok((listener, path))
}

/// Creates the runtime directory (mode 0700) if it is missing, and makes sure it is ours
/// alone: a real directory (not a symlink) owned by this uid that group and others cannot
/// enter. Anything else was made by somebody else and is refused, not repaired.
pub fn private_runtime_dir(dir: &Path) -> Result<(), ControlError> {
    let dir_err = |source| ControlError::Dir {
        dir: dir.to_path_buf(),
        source,
    };
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(dir_err(e)),
    }
    check_existing_dir(dir)
}

/// The runtime directory's checks without creating it (a missing one is a `Dir` error
/// with NotFound).
fn check_existing_dir(dir: &Path) -> Result<(), ControlError> {
    let meta = std::fs::symlink_metadata(dir).map_err(|source| ControlError::Dir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mode = meta.mode() & 0o7777;
    let kind = if meta.file_type().is_symlink() {
        DirKind::Symlink
    } else if meta.is_dir() {
        DirKind::Directory
    } else {
        DirKind::Other
    };
    match why_unsafe(kind, meta.uid(), mode, getuid()) {
        None => Ok(()),
        Some(why) => Err(ControlError::UnsafeDir {
            dir: dir.to_path_buf(),
            owner: meta.uid(),
            mode,
            why,
        }),
    }
}

/// What the runtime directory's entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirKind {
    Directory,
    Symlink,
    Other,
}

/// Why a runtime directory with this `kind`, `owner` and `mode` must not be used by user
/// `me`; None if it is private to `me`.
fn why_unsafe(kind: DirKind, owner: u32, mode: u32, me: Uid) -> Option<&'static str> {
    match kind {
        DirKind::Symlink => Some("it is a symbolic link"),
        DirKind::Other => Some("it is not a directory"),
        DirKind::Directory if owner != me.as_raw() => Some("it belongs to another user"),
        DirKind::Directory if mode & 0o077 != 0 => Some("group or others have access to it"),
        DirKind::Directory => None,
    }
}

/// Whether the peer of a connection may be answered: its own user, or root.
fn trusted_uid(uid: u32) -> bool {
    uid == getuid().as_raw() || uid == 0
}

fn peer(stream: &UnixStream) -> std::io::Result<UnixCredentials> {
    getsockopt(stream, PeerCredentials).map_err(std::io::Error::from)
}

/// The peer of an accepted connection, if it may ask for checkpoints; else why not.
pub fn check_client(stream: &UnixStream) -> Result<(), String> {
    match peer(stream) {
        Ok(c) if trusted_uid(c.uid()) => Ok(()),
        Ok(c) => Err(format!(
            "refused: process {} of uid {} may not control this supervisor",
            c.pid(),
            c.uid()
        )),
        Err(e) => Err(format!("refused: cannot tell who is asking ({e})")),
    }
}

/// Reads one request from a connected client.
pub fn read_request(stream: &UnixStream) -> std::io::Result<Request> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

pub fn send_response(mut stream: &UnixStream, response: &Response) -> std::io::Result<()> {
    let mut text = serde_json::to_string(response).map_err(std::io::Error::other)?;
    text.push('\n');
    stream.write_all(text.as_bytes())
}

/// Whether process `peer` may be the supervisor of `target`: its parent (`run`,
/// `restore`), or a process running this very mlckpt executable (`attach` supervises a
/// process it did not start).
fn may_supervise(peer: i32, target: i32) -> bool {
    let parent = crate::tracer::freeze::parent_of(nix::unistd::Pid::from_raw(target));
    if parent.is_some_and(|p| p.as_raw() == peer) {
        return true;
    }
    let file_id = |path: String| std::fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
    let ours = file_id("/proc/self/exe".to_string());
    ours.is_some() && ours == file_id(format!("/proc/{peer}/exe"))
}

/// Asks the supervisor of `pid`, if there is one. `Ok(None)`: nobody supervises it.
pub fn ask(
    runtime_dir: &Path,
    pid: i32,
    request: &Request,
) -> Result<Option<Response>, ControlError> {
    let path = socket_path(runtime_dir, pid);
    match check_existing_dir(runtime_dir) {
        // No directory: no supervisor of this user has ever run here.
        Err(ControlError::Dir { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        other => other?,
    }
    let socket_err = |source| ControlError::Socket {
        socket: path.clone(),
        source,
    };
    let stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(socket_err(e)),
    };
    let holder = peer(&stream).map_err(socket_err)?;
    let why = if !trusted_uid(holder.uid()) {
        Some("another user")
    } else if !may_supervise(holder.pid(), pid) {
        Some("which is not an mlckpt supervising it")
    } else {
        None
    };
    if let Some(why) = why {
        return Err(ControlError::Untrusted {
            socket: path,
            target: pid,
            pid: holder.pid(),
            uid: holder.uid(),
            why,
        });
    }
    let mut line =
        serde_json::to_string(request).map_err(|e| socket_err(std::io::Error::other(e)))?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(socket_err)?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .map_err(socket_err)?;
    serde_json::from_str(&reply)
        .map(Some)
        .map_err(|e| socket_err(std::io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u32 = 1000;

    fn verdict(kind: DirKind, owner: u32, mode: u32) -> Option<&'static str> {
        why_unsafe(kind, owner, mode, Uid::from_raw(ME))
    }

    #[test]
    fn only_a_private_directory_of_ours_is_used() {
        assert_eq!(verdict(DirKind::Directory, ME, 0o700), None);
        assert_eq!(verdict(DirKind::Directory, ME, 0o500), None);
    }

    #[test]
    fn another_owner_open_modes_and_links_are_refused() {
        let refused = [
            (DirKind::Directory, 65534, 0o700, "another user"),
            (DirKind::Directory, 0, 0o700, "another user"),
            (DirKind::Directory, ME, 0o777, "group or others"),
            (DirKind::Directory, ME, 0o750, "group or others"),
            (DirKind::Directory, ME, 0o701, "group or others"),
            (DirKind::Symlink, ME, 0o777, "symbolic link"),
            (DirKind::Other, ME, 0o600, "not a directory"),
        ];
        for (kind, owner, mode, why) in refused {
            let got = verdict(kind, owner, mode);
            assert!(
                got.is_some_and(|w| w.contains(why)),
                "{kind:?} owner {owner} mode {mode:o}: {got:?}"
            );
        }
    }
}
