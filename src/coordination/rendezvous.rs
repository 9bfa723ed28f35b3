//! How the ranks find their coordinator: with `[coordination] port` set and the node list
//! known (SLURM's), at rank 0's node on that port; otherwise through a small file rank 0
//! writes where every rank can read it: the global storage directory, or on one machine
//! (test mode, a single node) the local one.
//!
//! That directory is shared, so the file is written and read with suspicion: created
//! aside under a random name that must not exist yet (never through a symlink), mode
//! 0600, then renamed into place; read without following a symlink or waiting on a FIFO,
//! and only if it is a small regular file of the user's own. Whoever can still write it
//! (root, or the user) gains nothing but a failed join: the handshake needs the image key.

use super::{CoordinationError, Settings, wire};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why no coordinator address could be had from where the ranks meet.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error("no coordinator address in {} yet", path.display())]
    NotYet { path: PathBuf },
    #[error(
        "{} is not a coordinator's address: {why} (rank 0's coordinator replaces it when it \
         starts; remove it if it stays)",
        path.display()
    )]
    Refused { path: PathBuf, why: String },
    #[error("cannot read the coordinator's address from {}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} was written by the coordinator of another allocation ({theirs}), not this one's \
         ({ours}): a stale file",
        path.display()
    )]
    OtherAllocation {
        path: PathBuf,
        theirs: String,
        ours: String,
    },
    #[error("cannot resolve the coordinator's address {host}:{port}")]
    Resolve {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

/// The rendezvous file's contents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Published {
    pub host: String,
    pub port: u16,
    /// The coordinator's process, for the user reading the file.
    pub pid: u32,
    /// SLURM_JOB_ID when there is one: a file left by another allocation is not ours.
    #[serde(default)]
    pub allocation: Option<String>,
}

/// A file bigger than this was not written by a coordinator.
const MAX_FILE: u64 = 4096;

/// Where rank 0 listens and ranks connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Meeting {
    /// A fixed port on a known host.
    Fixed { host: String, port: u16 },
    /// The address is in this file.
    File(PathBuf),
}

impl Meeting {
    pub fn describe(&self) -> String {
        match self {
            Meeting::Fixed { host, port } => format!("{host}:{port}"),
            Meeting::File(path) => format!("the address in {}", path.display()),
        }
    }
}

pub fn rendezvous_file(dir: &Path, job: &str) -> PathBuf {
    dir.join(format!(".{job}.coordinator.json"))
}

/// Binds rank 0's listener, and publishes its address when ranks read it from a file.
pub fn listen(settings: &Settings) -> Result<TcpListener, CoordinationError> {
    let bind_host = if settings.same_machine {
        "127.0.0.1"
    } else {
        "0.0.0.0"
    };
    let port = match &settings.meeting {
        Meeting::Fixed { port, .. } => *port,
        Meeting::File(_) => 0,
    };
    let listener =
        TcpListener::bind((bind_host, port)).map_err(|source| CoordinationError::Listen {
            addr: format!("{bind_host}:{port}"),
            source,
        })?;
    if let Meeting::File(path) = &settings.meeting {
        let port = listener
            .local_addr()
            .map_err(|source| CoordinationError::Listen {
                addr: format!("{bind_host}:0"),
                source,
            })?
            .port();
        let published = Published {
            host: if settings.same_machine {
                "127.0.0.1".into()
            } else {
                own_host_name()
            },
            port,
            pid: std::process::id(),
            allocation: allocation(),
        };
        publish(path, &published)?;
    }
    Ok(listener)
}

/// The coordinator's address now, or why it cannot be known (yet).
pub fn find(meeting: &Meeting) -> Result<Vec<SocketAddr>, FindError> {
    let (host, port) = match meeting {
        Meeting::Fixed { host, port } => (host.clone(), *port),
        Meeting::File(path) => {
            let published = read(path)?.ok_or_else(|| FindError::NotYet { path: path.clone() })?;
            let ours = allocation();
            if published.allocation != ours {
                let name =
                    |a: Option<String>| a.map_or("none".into(), |a| format!("SLURM job {a}"));
                return Err(FindError::OtherAllocation {
                    path: path.clone(),
                    theirs: name(published.allocation),
                    ours: name(ours),
                });
            }
            (published.host, published.port)
        }
    };
    let addrs = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|source| FindError::Resolve {
            host: host.clone(),
            port,
            source,
        })?;
    Ok(addrs.collect())
}

/// Removes the rendezvous file, if it still names this process.
pub fn withdraw(meeting: &Meeting) {
    if let Meeting::File(path) = meeting
        && read(path).is_ok_and(|p| p.is_some_and(|p| p.pid == std::process::id()))
    {
        let _ = std::fs::remove_file(path);
    }
}

fn publish(path: &Path, published: &Published) -> Result<(), CoordinationError> {
    let failed = |source| CoordinationError::Publish {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    let text = serde_json::to_vec(published).map_err(|e| failed(std::io::Error::other(e)))?;
    // A name nobody can have prepared (a symlink to a file of ours, say), created only if
    // it does not exist yet.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", wire::nonce()?));
    let tmp = PathBuf::from(tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut file| file.write_all(&text))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(source) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(failed(source));
    }
    Ok(())
}

/// The published address: None if there is no file yet, an error if the file there is
/// not one a coordinator of ours wrote.
fn read(path: &Path) -> Result<Option<Published>, FindError> {
    let refused = |why: String| FindError::Refused {
        path: path.to_path_buf(),
        why,
    };
    let unreadable = |source| FindError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let file = match crate::tiers::generation::open_record(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(refused(format!("it is {e}")));
        }
        Err(e) => return Err(unreadable(e)),
    };
    let meta = file.metadata().map_err(unreadable)?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.is_file() {
        return Err(refused("it is not a regular file".into()));
    }
    if meta.uid() != me {
        return Err(refused(format!(
            "it belongs to uid {}, not to you (uid {me})",
            meta.uid()
        )));
    }
    let mut text = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut text)
        .map_err(unreadable)?;
    if text.len() as u64 > MAX_FILE {
        return Err(refused(format!("it is larger than {MAX_FILE} bytes")));
    }
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| refused(format!("it does not hold one ({e})")))
}

fn allocation() -> Option<String> {
    std::env::var("SLURM_JOB_ID").ok().filter(|s| !s.is_empty())
}

fn own_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(port: u16) -> Published {
        Published {
            host: "127.0.0.1".into(),
            port,
            pid: std::process::id(),
            allocation: allocation(),
        }
    }

    fn refusal(path: &Path) -> String {
        match find(&Meeting::File(path.to_path_buf())) {
            Err(e @ FindError::Refused { .. }) => e.to_string(),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_published_address_is_found_and_withdrawn() {
        let dir = tempfile::tempdir().unwrap();
        let path = rendezvous_file(dir.path(), "sim");
        let meeting = Meeting::File(path.clone());
        assert!(matches!(find(&meeting), Err(FindError::NotYet { .. })));
        publish(&path, &published(4242)).unwrap();
        let addrs = find(&meeting).unwrap();
        assert_eq!(addrs[0].port(), 4242);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        // Nothing left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        withdraw(&meeting);
        assert!(!path.exists());
    }

    #[test]
    fn publishing_replaces_a_planted_symlink_not_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let path = rendezvous_file(dir.path(), "sim");
        let target = dir.path().join("precious");
        std::fs::write(&target, "keep me").unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        publish(&path, &published(4242)).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
    }

    #[test]
    fn garbage_in_the_file_is_no_address() {
        let dir = tempfile::tempdir().unwrap();
        let path = rendezvous_file(dir.path(), "sim");
        std::fs::write(&path, "{\"host\": 5}").unwrap();
        assert!(refusal(&path).contains("does not hold one"));
        std::fs::write(&path, vec![b' '; 10_000]).unwrap();
        assert!(refusal(&path).contains("larger than 4096 bytes"));
    }

    #[test]
    fn a_symlink_or_a_fifo_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = rendezvous_file(dir.path(), "sim");
        let elsewhere = dir.path().join("elsewhere.json");
        std::fs::write(&elsewhere, serde_json::to_vec(&published(4242)).unwrap()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        let why = refusal(&path);
        assert!(
            why.contains("symbolic link") && why.contains(".sim.coordinator.json"),
            "{why}"
        );
        std::fs::remove_file(&path).unwrap();
        // Opened without waiting for a writer, then refused.
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(refusal(&path).contains("not a regular file"));
    }

    #[test]
    fn another_users_file_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            // Only root can give a file away.
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = rendezvous_file(dir.path(), "sim");
        publish(&path, &published(4242)).unwrap();
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        assert!(refusal(&path).contains("belongs to uid 65534"));
    }
}
