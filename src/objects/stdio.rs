//! The job's standard streams: a terminal, or a pipe or socket to whatever started the job
//! (a shell, SLURM, a test harness). A restore gives the job the restoring command's own
//! streams instead: a requeued job writes to its new output, reads its new input.

use super::{IdAllocator, ObjectError, ObjectKind, OpenFd, Opened, SharedObject};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;

/// Stream `fd` (0, 1 or 2) of the job: every fd of any of its processes that refers to
/// what the root's fd `fd` referred to.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StdioStream {
    pub fd: i32,
    /// The stream was a terminal: its settings, sessions and foreground group
    /// (`objects::tty`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<super::tty::TerminalState>,
}

/// `[image] stdio_files`: what a restore does with the job's fds 0-2 that are regular files
/// (a batch job's `.out` and `.err`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StdioFiles {
    /// They are streams like a terminal or pipe: the restoring command's own fds 0-2 take
    /// their place (a requeued job writes to its new output), and the old files are left
    /// as they are (not put back to their checkpoint-time contents).
    #[default]
    Follow,
    /// They are reopened by path at their offsets, and put back to their checkpoint-time
    /// contents like any file the job writes.
    Reopen,
}

/// The root's fds 0-2 that lead outside the job, by `/proc` link target: target -> fd.
/// Regular files count with `StdioFiles::Follow` only; the slave of a pty the job holds
/// (`job_ptys`, by pts index) is the job's own, not a stream.
pub fn job_streams(
    root: &[OpenFd],
    files: StdioFiles,
    job_ptys: &std::collections::BTreeSet<u32>,
) -> BTreeMap<String, i32> {
    let mut streams = BTreeMap::new();
    for fd in root.iter().filter(|f| (0..=2).contains(&f.fd)) {
        if super::tty::is_job_slave(fd, job_ptys) {
            continue;
        }
        let file = files == StdioFiles::Follow && fd.meta.as_ref().is_some_and(|m| m.is_file());
        if file || is_stream(fd) {
            streams.entry(fd.target.clone()).or_insert(fd.fd);
        }
    }
    streams
}

fn is_stream(fd: &OpenFd) -> bool {
    use super::tty::Device;
    if fd.target.starts_with("pipe:") || fd.target.starts_with("socket:") {
        return true;
    }
    fd.meta.as_ref().is_some_and(|m| {
        // Terminals (not a pty master: that is a pair the job holds).
        m.file_type().is_fifo() || super::tty::device(m).is_some_and(|d| d != Device::Multiplexer)
    })
}

/// One object per stream; returns target -> object id. `terminal` reads the state of a
/// stream that is a terminal (None: not read, the job runs).
pub fn objects(
    streams: &BTreeMap<String, i32>,
    mut terminal: impl FnMut(i32) -> Result<Option<super::tty::TerminalState>, ObjectError>,
    ids: &mut IdAllocator,
    out: &mut Vec<SharedObject>,
) -> Result<BTreeMap<String, u64>, ObjectError> {
    let mut by_target = BTreeMap::new();
    for (target, &fd) in streams {
        let id = ids.allocate();
        out.push(SharedObject {
            id,
            object: ObjectKind::Stdio(StdioStream {
                fd,
                terminal: terminal(fd)?,
            }),
        });
        by_target.insert(target.clone(), id);
    }
    Ok(by_target)
}

impl StdioStream {
    /// The restorer's own stream `fd`; `/dev/null` when the restorer has none.
    pub fn open(&self) -> Result<Opened, ObjectError> {
        let fd: OwnedFd = match crate::tracer::sys::dup_at_least(self.fd, 0) {
            Ok(fd) => fd,
            Err(_) => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|source| ObjectError::Recreate {
                    what: format!("stream {} (/dev/null)", self.fd),
                    source,
                })?
                .into(),
        };
        Ok(Opened {
            slots: vec![Some(fd)],
            mapping: None,
        })
    }
}
