//! How the ranks find their coordinator: with `[coordination] port` set and the node list
//! known (SLURM's), at rank 0's node on that port; otherwise through a small file rank 0
//! writes where every rank can read it: the global storage directory, or on one machine
//! (test mode, a single node) the local one.

use super::{CoordinationError, Settings};
use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};

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

/// The coordinator's address now, if it can be known yet.
pub fn find(meeting: &Meeting) -> Option<Vec<SocketAddr>> {
    let (host, port) = match meeting {
        Meeting::Fixed { host, port } => (host.clone(), *port),
        Meeting::File(path) => {
            let published = read(path)?;
            if published.allocation != allocation() {
                return None;
            }
            (published.host, published.port)
        }
    };
    (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .map(|addrs| addrs.collect())
}

/// Removes the rendezvous file, if it still names this process.
pub fn withdraw(meeting: &Meeting) {
    if let Meeting::File(path) = meeting
        && read(path).is_some_and(|p| p.pid == std::process::id())
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
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let text = serde_json::to_vec(published).map_err(|e| failed(std::io::Error::other(e)))?;
    std::fs::write(&tmp, text).map_err(failed)?;
    std::fs::rename(&tmp, path).map_err(failed)
}

fn read(path: &Path) -> Option<Published> {
    use std::io::Read;
    let mut text = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_FILE)
        .read_to_end(&mut text)
        .ok()?;
    serde_json::from_slice(&text).ok()
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

    #[test]
    fn a_published_address_is_found_and_withdrawn() {
        let dir = tempfile::tempdir().unwrap();
        let path = rendezvous_file(dir.path(), "sim");
        let meeting = Meeting::File(path.clone());
        assert_eq!(find(&meeting), None);
        let published = Published {
            host: "127.0.0.1".into(),
            port: 4242,
            pid: std::process::id(),
            allocation: allocation(),
        };
        publish(&path, &published).unwrap();
        let addrs = find(&meeting).unwrap();
        assert_eq!(addrs[0].port(), 4242);
        withdraw(&meeting);
        assert!(!path.exists());
    }

    #[test]
    fn garbage_in_the_file_is_no_address() {
        let dir = tempfile::tempdir().unwrap();
        let path = rendezvous_file(dir.path(), "sim");
        std::fs::write(&path, "{\"host\": 5}").unwrap();
        assert_eq!(find(&Meeting::File(path.clone())), None);
        std::fs::write(&path, vec![b' '; 10_000]).unwrap();
        assert_eq!(find(&Meeting::File(path)), None);
    }
}
