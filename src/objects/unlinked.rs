//! Files that exist only while open: memfds (`memfd_create`) and regular files deleted
//! while the job held them (a temp file unlinked at once, a log rotated away). No path
//! leads to them after a restore, so their contents go into the image (stored in
//! `pages.bin` like a written file's, read while the job is frozen) and a restore creates
//! them again: a memfd with its name, contents and seals; a deleted file in its directory
//! (under its name when that is free), unlinked again at once, so that the job's fds show
//! `... (deleted)` as before. When that directory is gone too, the file is created in the
//! temporary directory instead (`O_TMPFILE`): the job only ever reaches it through its fds.
//!
//! Every open file description of the file comes back with its flags and offset; shared
//! mappings of the file map the restored file (see `restore::SharedMemories`), so writes
//! through an fd and through a mapping still meet.

use super::contents::{self, Chunk};
use super::{OpenFd, Opened, PagesOpener, Refusal, descriptions};
use crate::image::writer::ImageWriter;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UnlinkedFile {
    pub origin: Origin,
    /// Its inode at checkpoint time: shared mappings of it name the same.
    pub inode: u64,
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Its contents, in `pages.bin`.
    pub chunks: Vec<Chunk>,
    /// Each open file description: flags (without `O_CLOEXEC`) and offset.
    pub descriptions: Vec<Description>,
    /// Which description each fd of the job is (none: the job only maps it).
    pub members: Vec<Member>,
    /// Where its contents are read from at checkpoint time (a `/proc` path).
    #[serde(skip)]
    pub source: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Origin {
    /// `memfd_create(name)`, with its seals (`F_GET_SEALS`).
    Memfd { name: String, seals: i32 },
    /// A regular file deleted while open, last at `path`.
    Deleted { path: String },
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Description {
    pub flags: i32,
    pub offset: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub pid: i32,
    pub fd: i32,
    pub description: usize,
}

const MEMFD_PREFIX: &str = "/memfd:";
const DELETED: &str = " (deleted)";
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// Whether `fd` is a memfd or a deleted regular file.
pub fn is_unlinked(fd: &OpenFd) -> bool {
    fd.target.ends_with(DELETED) && fd.meta.as_ref().is_some_and(std::fs::Metadata::is_file)
}

/// The job's unlinked fds, grouped by file.
pub fn by_file<'a>(fds: &[&'a OpenFd]) -> Vec<Vec<&'a OpenFd>> {
    let mut files: BTreeMap<(u64, u64), Vec<&OpenFd>> = BTreeMap::new();
    for &fd in fds {
        if let Some(m) = &fd.meta {
            files.entry((m.dev(), m.ino())).or_default().push(fd);
        }
    }
    files.into_values().collect()
}

pub fn capture(group: &[&OpenFd]) -> Result<UnlinkedFile, Refusal> {
    let first = group[0];
    let Some(meta) = &first.meta else {
        return Err(super::unreadable("deleted file", first));
    };
    let name = first.target.strip_suffix(DELETED).unwrap_or(&first.target);
    let origin = match name.strip_prefix(MEMFD_PREFIX) {
        Some(memfd) => {
            let copy = first
                .copy_here("the memfd")
                .map_err(|e| (e.to_string(), super::CLOSE_IT))?;
            let huge = nix::sys::statfs::fstatfs(&copy)
                .is_ok_and(|s| s.filesystem_type().0 == HUGETLBFS_MAGIC);
            if huge {
                return Err((
                    "a memfd of huge pages (MFD_HUGETLB)".into(),
                    "mlckpt cannot checkpoint it yet; close it before the checkpoint",
                ));
            }
            let seals = crate::tracer::fd_syscalls::seals(copy.as_fd()).unwrap_or(0);
            Origin::Memfd {
                name: memfd.to_string(),
                seals,
            }
        }
        None => Origin::Deleted {
            path: name.to_string(),
        },
    };
    let mut descs = Vec::new();
    let mut members = Vec::new();
    for (k, group) in descriptions(group).into_iter().enumerate() {
        descs.push(Description {
            flags: group[0].flags & !libc::O_CLOEXEC,
            offset: group[0].pos,
        });
        members.extend(group.iter().map(|fd| Member {
            pid: fd.pid,
            fd: fd.fd,
            description: k,
        }));
    }
    let mut file = UnlinkedFile::of(origin, meta, format!("/proc/{}/fd/{}", first.pid, first.fd));
    file.descriptions = descs;
    file.members = members;
    Ok(file)
}

/// Memfds and deleted files that process `pid` maps shared but holds no fd on: one object
/// each (read through `/proc/PID/map_files`), so that its mappings map a file of the same
/// name and contents again, not anonymous memory. One that cannot be opened there stays
/// anonymous shared memory (its mapped pages are in the image all the same).
pub fn add_mapped<'r>(
    objects: &mut Vec<super::SharedObject>,
    pid: i32,
    regions: impl Iterator<Item = &'r crate::image::format::MemoryRegion>,
) {
    use crate::image::format::Backing;
    for r in regions {
        let (Backing::SharedAnonymous, Some(shared)) = (&r.backing, r.shared_object) else {
            continue;
        };
        let Some(name) = r.name.strip_suffix(DELETED) else {
            continue;
        };
        let known = objects.iter().any(|o| {
            matches!(&o.object, super::ObjectKind::Unlinked(u)
                if u.inode == shared.id && u.map_name() == r.name)
        });
        if name == "/dev/zero" || !name.starts_with('/') || known {
            continue;
        }
        let source = format!("/proc/{pid}/map_files/{:x}-{:x}", r.start, r.end);
        let Ok(file) = std::fs::File::open(&source) else {
            continue;
        };
        let Ok(meta) = file.metadata() else { continue };
        if !meta.is_file() || meta.ino() != shared.id {
            continue;
        }
        let origin = match name.strip_prefix(MEMFD_PREFIX) {
            Some(memfd) => Origin::Memfd {
                name: memfd.to_string(),
                seals: crate::tracer::fd_syscalls::seals(file.as_fd()).unwrap_or(0),
            },
            None => Origin::Deleted {
                path: name.to_string(),
            },
        };
        let id = objects.iter().map(|o| o.id).max().unwrap_or(0) + 1;
        objects.push(super::SharedObject {
            id,
            object: super::ObjectKind::Unlinked(UnlinkedFile::of(origin, &meta, source)),
        });
    }
}

/// The unlinked files among `objects`, as (inode, name in the memory map): shared
/// mappings of them need not store their pages, the file's contents in the image hold them.
pub fn mapped_names(objects: &[super::SharedObject]) -> std::collections::BTreeSet<(u64, String)> {
    objects
        .iter()
        .filter_map(|o| match &o.object {
            super::ObjectKind::Unlinked(u) => Some((u.inode, u.map_name())),
            _ => None,
        })
        .collect()
}

/// Copies the contents of every unlinked file of `objects` into the image (the job is
/// frozen), referring to the parent's unchanged chunks; the parent images referred to.
pub fn store_all(
    objects: &mut [super::SharedObject],
    parent: &contents::ParentFiles,
    writer: &mut ImageWriter,
) -> Result<std::collections::BTreeSet<u64>, super::ObjectError> {
    let mut referenced = std::collections::BTreeSet::new();
    for object in objects {
        let super::ObjectKind::Unlinked(file) = &mut object.object else {
            continue;
        };
        let source =
            std::fs::File::open(&file.source).map_err(|e| super::ObjectError::Recreate {
                what: format!("the contents of {} ({})", file.describe(), file.source),
                source: e,
            })?;
        // The size now: the job is frozen, but it may have changed since the fds were read.
        file.size = source.metadata().map(|m| m.size()).unwrap_or(file.size);
        let (chunks, captured) = contents::copy_whole(&source, file.size, parent, writer)?;
        file.chunks = chunks;
        referenced.extend(captured.referenced);
    }
    Ok(referenced)
}

/// Adds the chunks of the unlinked files of `objects` (of image `seq`) to `parent`.
pub fn add_to_parent(
    parent: &mut contents::ParentFiles,
    objects: &[super::SharedObject],
    seq: u64,
) {
    for o in objects {
        if let super::ObjectKind::Unlinked(u) = &o.object {
            parent.add(u.inode, &u.chunks, seq);
        }
    }
}

impl UnlinkedFile {
    /// The file as `meta` shows it, without fds or contents yet.
    fn of(origin: Origin, meta: &std::fs::Metadata, source: String) -> UnlinkedFile {
        UnlinkedFile {
            origin,
            inode: meta.ino(),
            size: meta.size(),
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            chunks: Vec::new(),
            descriptions: Vec::new(),
            members: Vec::new(),
            source,
        }
    }

    /// How `/proc/PID/maps` names a mapping of it (the inode alone could be another file
    /// system's).
    pub fn map_name(&self) -> String {
        match &self.origin {
            Origin::Memfd { name, .. } => format!("{MEMFD_PREFIX}{name}{DELETED}"),
            Origin::Deleted { path } => format!("{path}{DELETED}"),
        }
    }

    /// What the file is, for messages.
    pub fn describe(&self) -> String {
        match &self.origin {
            Origin::Memfd { name, .. } => format!("memfd {name}"),
            Origin::Deleted { path } => format!("deleted file {path}"),
        }
    }

    /// The file again, one fd per description (slots) and a read-write one for mappings.
    pub fn open(&self, pages: &PagesOpener<'_>) -> Result<Opened, super::ObjectError> {
        let what = self.describe();
        let fail = |e: std::io::Error| super::ObjectError::Recreate {
            what: what.clone(),
            source: e,
        };
        let errno = |e: nix::errno::Errno| fail(e.into());
        let file: std::fs::File = match &self.origin {
            Origin::Memfd { name, .. } => {
                let name =
                    CString::new(name.as_str()).map_err(|_| errno(nix::errno::Errno::EINVAL))?;
                crate::tracer::fd_syscalls::memfd_create(&name, libc::MFD_ALLOW_SEALING)
                    .map_err(errno)?
                    .into()
            }
            Origin::Deleted { path } => create_unlinked(path).map_err(fail)?,
        };
        contents::write_back(&what, &file, &self.chunks, pages)?;
        file.set_len(self.size).map_err(fail)?;
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(self.mode))
            .map_err(fail)?;
        std::os::unix::fs::fchown(&file, Some(self.uid), Some(self.gid)).map_err(fail)?;
        let mut slots = Vec::with_capacity(self.descriptions.len());
        for d in &self.descriptions {
            slots.push(Some(reopen(&file, d).map_err(fail)?));
        }
        if let Origin::Memfd { seals, .. } = &self.origin
            && *seals != 0
        {
            crate::tracer::fd_syscalls::add_seals(file.as_fd(), *seals).map_err(errno)?;
        }
        Ok(Opened {
            slots,
            mapping: Some(file.into()),
        })
    }

    /// The slot (description) of fd `fd` of process `pid`.
    pub fn slot(&self, pid: i32, fd: i32) -> usize {
        self.members
            .iter()
            .find(|m| m.pid == pid && m.fd == fd)
            .map_or(0, |m| m.description)
    }
}

/// A new description of `file` with flags and offset `d`.
fn reopen(file: &std::fs::File, d: &Description) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    // O_NOFOLLOW was for the original open: kept, it refuses the /proc/self/fd link itself.
    let flags = d.flags
        & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY | libc::O_NOFOLLOW);
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let opened = nix::fcntl::open(
        path.as_str(),
        nix::fcntl::OFlag::from_bits_retain(flags | libc::O_CLOEXEC),
        nix::sys::stat::Mode::empty(),
    )?;
    nix::unistd::lseek(&opened, d.offset as i64, nix::unistd::Whence::SeekSet)?;
    Ok(opened)
}

/// A new empty file, already unlinked, in the directory `path` was in (under its name
/// when free), else in the temporary directory.
fn create_unlinked(path: &str) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = std::path::Path::new(path);
    let dir = path.parent().filter(|d| d.is_dir());
    let Some(dir) = dir else {
        return std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(std::env::temp_dir());
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for attempt in 0..100u32 {
        let candidate = if attempt == 0 {
            dir.join(&name)
        } else {
            dir.join(format!(".{name}.mlckpt-{}-{attempt}", std::process::id()))
        };
        let created = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&candidate);
        match created {
            Ok(file) => {
                std::fs::remove_file(&candidate)?;
                return Ok(file);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free name in its directory"))
}
