//! Pipes and named pipes (FIFOs): between the job's processes (`producer | consumer`, a
//! pool's task queues), or with one end outside the job. The data buffered in a pipe at checkpoint time is read
//! without taking it out (`tee` into a scratch pipe) and written into the new pipe at
//! restore. An end no process of the job holds is closed after the restore: the reader
//! sees end-of-file once the data is read, a writer gets `EPIPE`, as if the process at the
//! other end had died.

use super::{
    ByInode, IdAllocator, JobFiles, ObjectError, ObjectKind, OpenFd, Opened, SharedObject,
};
use crate::tracer::sys;
use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PipeState {
    /// The pipe's inode at checkpoint time (for people: `pipe:[inode]`).
    pub inode: u64,
    /// `F_GETPIPE_SZ`: bytes the pipe holds before a writer blocks.
    pub capacity: u32,
    /// Status flags of the read end (`O_NONBLOCK`), if a process of the job holds it.
    pub read_end: Option<i32>,
    /// Status flags of the write end, if a process of the job holds it.
    pub write_end: Option<i32>,
    /// The bytes buffered in the pipe, oldest first (only when the job holds the read end:
    /// nobody else could read them after the restore).
    #[serde(with = "crate::image::format::base64_bytes")]
    pub data: Vec<u8>,
    /// A named pipe (FIFO): its path, where it is opened again at restore (it must still be
    /// a FIFO there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Status flags of a FIFO opened for reading and writing at once (`O_RDWR`), if the job
    /// held one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_write_end: Option<i32>,
}

const READ: usize = 0;
const WRITE: usize = 1;
/// A FIFO opened `O_RDWR`: both ends in one description.
const READ_WRITE: usize = 2;

/// Which end an fd with open flags `flags` holds.
pub fn slot(flags: i32) -> usize {
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY => WRITE,
        libc::O_RDWR => READ_WRITE,
        _ => READ,
    }
}

/// One object per pipe of `pipes`; returns inode -> object id. Warns of pipes with an
/// end outside the job.
pub fn objects(
    pipes: &ByInode,
    depth: super::Depth,
    ids: &mut IdAllocator,
    files: &mut JobFiles,
) -> Result<BTreeMap<u64, u64>, ObjectError> {
    let mut by_inode = BTreeMap::new();
    for (inode, fds) in pipes.iter() {
        let end = |want: usize| {
            fds.iter()
                .find(|f| slot(f.flags) == want)
                .map(|f| f.flags & !(libc::O_ACCMODE | libc::O_CLOEXEC))
        };
        let (read_end, write_end, read_write_end) = (end(READ), end(WRITE), end(READ_WRITE));
        let can_read = read_end.or(read_write_end).is_some();
        let can_write = write_end.or(read_write_end).is_some();
        if !can_read || !can_write {
            files.warnings.push(outside_warning(fds[0], !can_read));
        }
        let reader = fds.iter().find(|f| slot(f.flags) != WRITE);
        let (capacity, data) = match (depth, reader) {
            (super::Depth::Capture, Some(r)) => peek(r)?,
            _ => (0, Vec::new()),
        };
        let id = ids.allocate();
        files.objects.push(SharedObject {
            id,
            object: ObjectKind::Pipe(PipeState {
                inode,
                capacity,
                read_end,
                write_end,
                data,
                path: fds[0]
                    .target
                    .starts_with('/')
                    .then(|| fds[0].target.clone()),
                read_write_end,
            }),
        });
        by_inode.insert(inode, id);
    }
    Ok(by_inode)
}

fn outside_warning(fd: &OpenFd, reader_outside: bool) -> String {
    let (other, after) = if reader_outside {
        ("read end", "its writes fail with EPIPE")
    } else {
        (
            "write end",
            "its reads see end-of-file once the buffered data is read",
        )
    };
    format!(
        "fd {} of process {} ({}) is a pipe ({}) whose {other} is outside the job: after a \
         restore {after}, as if the other side had exited",
        fd.fd,
        fd.pid,
        super::command_of(fd.pid),
        fd.target
    )
}

/// The capacity of the pipe `reader` reads from and the data in it, left in place.
fn peek(reader: &OpenFd) -> Result<(u32, Vec<u8>), ObjectError> {
    let fail = |what| reader.capture_failed(what);
    let pipe = reader.copy_here("the pipe")?;
    let capacity = nix::fcntl::fcntl(pipe.as_fd(), nix::fcntl::FcntlArg::F_GETPIPE_SZ)
        .map_err(fail("the pipe's capacity"))?;
    let queued = sys::bytes_queued(pipe.as_fd()).map_err(fail("the pipe's data"))?;
    let mut data = Vec::with_capacity(queued);
    if queued > 0 {
        let (scratch_r, scratch_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(fail("the pipe's data"))?;
        nix::fcntl::fcntl(
            scratch_w.as_fd(),
            nix::fcntl::FcntlArg::F_SETPIPE_SZ(libc::c_int::max(capacity, 4096)),
        )
        .map_err(fail("the pipe's data"))?;
        // One tee: it copies every buffer the pipe holds (the scratch pipe has as many
        // slots); a second would copy the same data again.
        let copied = nix::fcntl::tee(
            pipe.as_fd(),
            scratch_w.as_fd(),
            queued,
            nix::fcntl::SpliceFFlags::SPLICE_F_NONBLOCK,
        )
        .map_err(fail("the pipe's data"))?;
        if copied != queued {
            return Err(fail("the pipe's data")(Errno::EAGAIN));
        }
        drop(scratch_w);
        let mut file = std::fs::File::from(scratch_r);
        std::io::Read::read_to_end(&mut file, &mut data)
            .map_err(|e| fail("the pipe's data")(Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
    }
    Ok((u32::try_from(capacity).unwrap_or(0), data))
}

impl PipeState {
    /// A new pipe holding the data, with the ends the job held; the others are closed.
    pub fn open(&self, id: u64) -> Result<Opened, ObjectError> {
        let fail = |what: &str| {
            let what = format!("pipe {id} (was pipe:[{}]): {what}", self.inode);
            move |e: Errno| ObjectError::Recreate {
                what,
                source: e.into(),
            }
        };
        // A FIFO is held open read-write while it is set up: opening one end alone would
        // wait for the other, and the data needs a reader to stay.
        let (r, w, both) = match &self.path {
            None => {
                let (r, w) =
                    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(fail("pipe2"))?;
                (r, w, None)
            }
            Some(path) => {
                let open = |access| open_fifo(path, access).map_err(fail("reopen the FIFO"));
                let both = open(libc::O_RDWR)?;
                (open(libc::O_RDONLY)?, open(libc::O_WRONLY)?, Some(both))
            }
        };
        if self.capacity > 0 {
            let size = libc::c_int::try_from(self.capacity).unwrap_or(libc::c_int::MAX);
            nix::fcntl::fcntl(w.as_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(size))
                .map_err(fail("set its capacity"))?;
        }
        if !self.data.is_empty() {
            // Non-blocking: data that does not fit is an error, not a hang.
            set_status(&w, libc::O_NONBLOCK).map_err(fail("write its data"))?;
            let n = nix::unistd::write(&w, &self.data).map_err(fail("write its data"))?;
            if n != self.data.len() {
                return Err(fail("write its data")(Errno::EAGAIN));
            }
        }
        let mut slots = vec![None, None];
        if let Some(flags) = self.read_end {
            set_status(&r, flags).map_err(fail("set the read end's flags"))?;
            slots[READ] = Some(r);
        }
        if let Some(flags) = self.write_end {
            set_status(&w, flags).map_err(fail("set the write end's flags"))?;
            slots[WRITE] = Some(w);
        }
        if let (Some(flags), Some(both)) = (self.read_write_end, both) {
            set_status(&both, flags).map_err(fail("set the FIFO's flags"))?;
            slots.push(Some(both));
        }
        Ok(Opened {
            slots,
            mapping: None,
        })
    }
}

/// Opens the FIFO at `path` (never following a symlink there, and only a FIFO) without
/// waiting for the other end.
fn open_fifo(path: &str, access: i32) -> Result<OwnedFd, Errno> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(access != libc::O_WRONLY)
        .write(access != libc::O_RDONLY)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    let is_fifo = file.metadata().is_ok_and(|m| m.file_type().is_fifo());
    if !is_fifo {
        return Err(Errno::ENXIO);
    }
    Ok(file.into())
}

fn set_status(fd: &OwnedFd, flags: i32) -> Result<(), Errno> {
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags & libc::O_NONBLOCK);
    nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags)).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_survives_and_a_missing_writer_means_eof() {
        let state = PipeState {
            inode: 1,
            capacity: 65536,
            read_end: Some(0),
            write_end: None,
            data: b"hello".to_vec(),
            path: None,
            read_write_end: None,
        };
        let mut opened = state.open(1).unwrap();
        assert!(opened.slots[WRITE].is_none());
        let mut file = std::fs::File::from(opened.slots[READ].take().unwrap());
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut got).unwrap();
        assert_eq!(got, b"hello");
    }
}
