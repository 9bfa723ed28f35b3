//! The contents of the files a job writes. A process that had a database open at the
//! checkpoint must find, after a restore, the database it saw then: not the one it wrote on
//! before it died, nor a mix of both (sqlite updates pages in place; cutting a grown file
//! back to its old size leaves those pages new and the database corrupt).
//!
//! Every regular file the job holds open for writing or maps shared-writable is recorded
//! as one of:
//! - `Copied`: its contents go into the image (in chunks, stored in `pages.bin`; an
//!   increment stores only the chunks that changed since its parent). A restore writes
//!   back the chunks that differ and cuts the file to its size: exact, whatever happened
//!   to it since. A copied file that is gone is created again.
//! - `Appended`: large files only ever written at their end (every writer has `O_APPEND`,
//!   or writes write-only at the end of the file): their size, and hashes of their first
//!   and last bytes. A restore cuts them back to their size after checking those bytes.
//! - `NotCopied`: files larger than the copy limit: a restore refuses them if they changed
//!   since (size or modification time), naming the file and the limit.
//!
//! A restore opens every file without following symlinks and checks it is the file the
//! job had (inode and owner): see `open_recorded`.

use super::ObjectError;
use crate::image::format::{FileIdentity, Inode, PAGE_SIZE};
use crate::image::writer::{ImageWriter, WriteError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};

/// A file the job writes, and how a restore gives it back as it was.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WrittenFile {
    pub path: String,
    pub inode: Inode,
    pub gid: u32,
    /// Permission bits, for a copied file created again.
    pub mode: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub contents: Contents,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Contents {
    /// The whole file, in chunks.
    Copied { chunks: Vec<Chunk> },
    /// Only appended to: its first `HEAD_BYTES` and the bytes from `tail_offset` to its size
    /// are hashed, as a proof that nothing before its end changed.
    Appended {
        head_blake3: String,
        tail_offset: u64,
        tail_blake3: String,
    },
    /// Larger than the copy limit (bytes) in force: not in the image.
    NotCopied { limit: u64 },
}

/// File bytes `[offset, offset+len)` are stored at `pages_offset` of `pages.bin` of this
/// image, or of image `image` (a parent) when set.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    pub offset: u64,
    pub len: u64,
    pub pages_offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<u64>,
    pub blake3: String,
}

/// Files are copied in pieces of this size: an increment stores the pieces that changed.
pub const CHUNK_BYTES: u64 = 1 << 20;
/// Files up to this size are always copied, append-only or not: cheaper than proving.
const ALWAYS_COPY_BYTES: u64 = CHUNK_BYTES;
/// What an append-only file's proof hashes: its first bytes (headers a writer may come
/// back to) and its last ones.
const HEAD_BYTES: u64 = 64 << 10;
const TAIL_BYTES: u64 = 1 << 20;

/// One way the job may write a file.
#[derive(Debug, Clone)]
pub struct WriteAccess {
    pub pid: i32,
    pub how: Access,
}

#[derive(Debug, Clone)]
pub enum Access {
    /// Fd `fd`, open with `flags` at `offset`.
    Fd { fd: i32, flags: i32, offset: u64 },
    /// A shared writable mapping of this file.
    Mapping(FileIdentity),
}

impl WriteAccess {
    /// Whether this access only ever writes at the end of the file (of `size` bytes now).
    fn appends(&self, size: u64) -> bool {
        match &self.how {
            Access::Fd { flags, offset, .. } => {
                flags & libc::O_APPEND != 0
                    || (flags & libc::O_ACCMODE == libc::O_WRONLY && *offset == size)
            }
            Access::Mapping(_) => false,
        }
    }

    /// Opens the file for reading, as the process has it.
    fn open(&self) -> std::io::Result<File> {
        match &self.how {
            Access::Fd { fd, .. } => File::open(format!("/proc/{}/fd/{fd}", self.pid)),
            Access::Mapping(id) => {
                let file = open_recorded(&id.path, libc::O_RDONLY, 0)?;
                if file.metadata()?.ino() != id.inode {
                    return Err(std::io::Error::other(
                        "the file at that path is not the one mapped",
                    ));
                }
                Ok(file)
            }
        }
    }

    fn describe(&self) -> String {
        match &self.how {
            Access::Fd { fd, .. } => format!("fd {fd} of process {}", self.pid),
            Access::Mapping(id) => format!("a mapping of {} in process {}", id.path, self.pid),
        }
    }
}

/// Chunks of the previous image's files, to refer to instead of storing them again.
#[derive(Debug, Default, Clone)]
pub struct ParentFiles {
    /// (inode, chunk offset) -> the chunk, its `image` set to the image holding it.
    chunks: BTreeMap<(u64, u64), Chunk>,
}

impl ParentFiles {
    /// The files of image `seq`.
    pub fn of(files: &[WrittenFile], seq: u64) -> ParentFiles {
        let mut parent = ParentFiles::default();
        for f in files {
            if let Contents::Copied { chunks } = &f.contents {
                parent.add(f.inode.ino, chunks, seq);
            }
        }
        parent
    }

    /// Adds the chunks of file `inode` of image `seq` (a chunk names the image holding it).
    pub fn add(&mut self, inode: u64, chunks: &[Chunk], seq: u64) {
        for c in chunks {
            let mut c = c.clone();
            c.image = Some(c.image.unwrap_or(seq));
            self.chunks.insert((inode, c.offset), c);
        }
    }
}

/// What the capture of the job's written files gives.
#[derive(Debug, Default)]
pub struct CapturedFiles {
    pub files: Vec<WrittenFile>,
    /// Files not copied (larger than the limit): the user is told.
    pub warnings: Vec<String>,
    /// Parent images whose chunks the files refer to.
    pub referenced: BTreeSet<u64>,
    /// Bytes of file data stored in this image.
    pub stored: u64,
}

/// Records every file of `accesses` (the job is frozen), copying into `writer` those that
/// need it (up to `limit` bytes each).
pub fn capture(
    accesses: &[WriteAccess],
    limit: u64,
    parent: &ParentFiles,
    writer: &mut ImageWriter,
) -> Result<CapturedFiles, ObjectError> {
    // Several fds and mappings may lead to one file: one record each, by (device, inode).
    let mut by_inode: BTreeMap<(u64, u64), (File, String, Vec<&WriteAccess>)> = BTreeMap::new();
    for access in accesses {
        let failed = |e: std::io::Error| ObjectError::Recreate {
            what: format!("the contents of {}", access.describe()),
            source: e,
        };
        let file = access.open().map_err(failed)?;
        let meta = file.metadata().map_err(failed)?;
        if kernel_interface(&file) {
            continue;
        }
        let path = match &access.how {
            Access::Fd { fd, .. } => std::fs::read_link(format!("/proc/{}/fd/{fd}", access.pid))
                .map_err(failed)?
                .to_string_lossy()
                .into_owned(),
            Access::Mapping(id) => id.path.clone(),
        };
        by_inode
            .entry((meta.dev(), meta.ino()))
            .or_insert_with(|| (file, path, Vec::new()))
            .2
            .push(access);
    }
    let mut out = CapturedFiles::default();
    for (file, path, accesses) in by_inode.into_values() {
        let fail = |e: std::io::Error| ObjectError::Recreate {
            what: format!("the contents of {path}"),
            source: e,
        };
        let meta = file.metadata().map_err(fail)?;
        let size = meta.size();
        let append_only = accesses.iter().all(|a| a.appends(size));
        let contents = if append_only && size > ALWAYS_COPY_BYTES {
            let (head, tail_offset, tail) = proof(&file, size).map_err(fail)?;
            Contents::Appended {
                head_blake3: head,
                tail_offset,
                tail_blake3: tail,
            }
        } else if size <= limit {
            let chunks =
                copy(&file, size, &meta, parent, writer, &mut out).map_err(|e| match e {
                    CopyError::Read(e) => fail(e),
                    CopyError::Write(e) => ObjectError::Write(Box::new(e)),
                })?;
            Contents::Copied { chunks }
        } else {
            out.warnings.push(format!(
                "{path} ({} MiB) is written in place and larger than [image] \
                 file_copy_limit_mib ({} MiB): its contents are not in the image, and a \
                 restore will refuse it if it changed after the checkpoint",
                size >> 20,
                limit >> 20
            ));
            Contents::NotCopied { limit }
        };
        out.files.push(WrittenFile {
            path,
            inode: Inode::of(&meta),
            gid: meta.gid(),
            mode: meta.mode() & 0o7777,
            size,
            mtime_ns: FileIdentity::mtime_ns_of(&meta),
            contents,
        });
    }
    Ok(out)
}

/// Files of /proc, /sys and the like: not data, nothing to keep.
fn kernel_interface(file: &File) -> bool {
    const KERNEL_FS: [i64; 7] = [
        0x9fa0,      // proc
        0x6265_6572, // sysfs
        0x6367_7270, // cgroup2
        0x0027_e0eb, // cgroup
        0x6462_6720, // debugfs
        0x7472_6163, // tracefs
        0x7363_6673, // securityfs
    ];
    nix::sys::statfs::fstatfs(file)
        .map(|s| KERNEL_FS.contains(&s.filesystem_type().0))
        .unwrap_or(false)
}

enum CopyError {
    Read(std::io::Error),
    Write(WriteError),
}

fn copy(
    file: &File,
    size: u64,
    meta: &std::fs::Metadata,
    parent: &ParentFiles,
    writer: &mut ImageWriter,
    out: &mut CapturedFiles,
) -> Result<Vec<Chunk>, CopyError> {
    let mut chunks = Vec::new();
    let mut offset = 0;
    while offset < size {
        let len = CHUNK_BYTES.min(size - offset);
        let padded = len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let mut buf = writer.take_buffer(usize_of(padded));
        let bytes = buf.as_bytes_mut();
        let (data, pad) = bytes.split_at_mut(usize_of(len));
        file.read_exact_at(data, offset).map_err(CopyError::Read)?;
        pad.fill(0);
        let blake3 = hash_hex(data);
        let known = parent
            .chunks
            .get(&(meta.ino(), offset))
            .filter(|c| c.len == len && c.blake3 == blake3);
        let chunk = match known {
            Some(c) => {
                out.referenced.extend(c.image);
                c.clone()
            }
            None => {
                out.stored += len;
                Chunk {
                    offset,
                    len,
                    pages_offset: writer.submit(buf).map_err(CopyError::Write)?,
                    image: None,
                    blake3,
                }
            }
        };
        chunks.push(chunk);
        offset += len;
    }
    Ok(chunks)
}

/// Copies the whole of `file` (`size` bytes) into the image, referring to the chunks of
/// the parent image that did not change. For files that exist only while open (memfds,
/// deleted files).
pub fn copy_whole(
    file: &File,
    size: u64,
    parent: &ParentFiles,
    writer: &mut ImageWriter,
) -> Result<(Vec<Chunk>, CapturedFiles), ObjectError> {
    let mut out = CapturedFiles::default();
    let meta = file.metadata().map_err(|e| ObjectError::Recreate {
        what: "an unlinked file's contents".into(),
        source: e,
    })?;
    let chunks = copy(file, size, &meta, parent, writer, &mut out).map_err(|e| match e {
        CopyError::Read(source) => ObjectError::Recreate {
            what: "an unlinked file's contents".into(),
            source,
        },
        CopyError::Write(e) => ObjectError::Write(Box::new(e)),
    })?;
    Ok((chunks, out))
}

fn usize_of(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn hash_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// Hash of `[offset, end)` of `file`.
fn hash_range(file: &File, offset: u64, end: u64) -> std::io::Result<String> {
    let mut data = vec![0u8; usize_of(end.saturating_sub(offset))];
    file.read_exact_at(&mut data, offset)?;
    Ok(hash_hex(&data))
}

/// An append-only file's proof: hashes of its head and of its tail (from the returned
/// offset).
fn proof(file: &File, size: u64) -> std::io::Result<(String, u64, String)> {
    let head = hash_range(file, 0, HEAD_BYTES.min(size))?;
    let tail_offset = size.saturating_sub(TAIL_BYTES);
    Ok((head, tail_offset, hash_range(file, tail_offset, size)?))
}

// ---- restore ----

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(
        "{path} is not the file the job had at the checkpoint ({what}): it was replaced, or a \
         symlink was put on its path, since. Nothing was changed. Put the original file back \
         (or move the new one away: a file whose contents the image holds is created again)"
    )]
    Replaced { path: String, what: String },
    #[error(
        "{path} changed after the checkpoint ({what}) and the image does not hold its \
         contents, so the job cannot get it back as it was; {hint}. Nothing was changed"
    )]
    Changed {
        path: String,
        what: String,
        hint: String,
    },
    #[error("{path}: cannot {what}")]
    Io {
        path: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the image's copy of {path} is damaged at byte {offset} (chunk checksum)")]
    Damaged { path: String, offset: u64 },
}

fn io<'p>(path: &'p str, what: &'static str) -> impl FnOnce(std::io::Error) -> FileError + 'p {
    move |source| FileError::Io {
        path: path.to_string(),
        what,
        source,
    }
}

/// Opens a path an image recorded without following any symlink on the way (the image's
/// paths are resolved ones: a symlink there is one that was put there since).
pub fn open_recorded(path: &str, flags: i32, mode: u32) -> std::io::Result<File> {
    let c = std::ffi::CString::new(path)
        .map_err(|_| std::io::Error::other("path contains a NUL byte"))?;
    // openat2 refuses with O_PATH any flag but these.
    let extra = if flags & libc::O_PATH != 0 {
        libc::O_CLOEXEC | libc::O_NOFOLLOW
    } else {
        libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NOCTTY
    };
    let fd = crate::tracer::sys::open_no_symlinks(&c, flags | extra, mode)?;
    // SAFETY: `fd` was just opened here and is owned by nothing else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Opens `path` as recorded and checks it is a regular file (or a directory with `dir`)
/// with the recorded inode and owner.
pub fn open_checked(path: &str, flags: i32, inode: Inode, dir: bool) -> Result<File, FileError> {
    let file = open_recorded(path, flags, 0).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => FileError::Replaced {
            path: path.into(),
            what: "a symlink is on its path".into(),
        },
        _ => FileError::Io {
            path: path.into(),
            what: "open it",
            source: e,
        },
    })?;
    let meta = file.metadata().map_err(io(path, "stat it"))?;
    let kind_ok = if dir { meta.is_dir() } else { meta.is_file() };
    let found = Inode::of(&meta);
    if !kind_ok || found != inode {
        return Err(FileError::Replaced {
            path: path.into(),
            what: format!(
                "inode {} owned by uid {} then, {} {} owned by uid {} now",
                inode.ino,
                inode.uid,
                if kind_ok {
                    "inode"
                } else {
                    "a different kind of file,"
                },
                found.ino,
                found.uid
            ),
        });
    }
    Ok(file)
}

/// What a restore will do to a written file: decided before any process is created, done
/// once the image is known intact.
#[derive(Debug)]
pub struct PutBack<'a> {
    file: &'a WrittenFile,
    /// It was gone and its contents are in the image: created again (empty until `apply`),
    /// so that the job's fds can open it; this is its new inode.
    pub created: Option<Inode>,
}

impl WrittenFile {
    /// Checks that the file can be given back as it was (or left as it is, with
    /// `keep_files`): refuses a replaced file, and a changed one whose contents the image
    /// lacks.
    pub fn check(&self, keep_files: bool) -> Result<PutBack<'_>, FileError> {
        let copied = matches!(self.contents, Contents::Copied { .. });
        let gone = matches!(
            std::fs::symlink_metadata(&self.path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound
        );
        if gone && copied && !keep_files {
            let path = self.path.as_str();
            let file = open_recorded(path, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, self.mode)
                .map_err(io(path, "create it again"))?;
            let created = Inode::of(&file.metadata().map_err(io(path, "stat it"))?);
            std::os::unix::fs::fchown(&file, Some(self.inode.uid), Some(self.gid))
                .map_err(io(path, "give it its owner"))?;
            return Ok(PutBack {
                file: self,
                created: Some(Inode {
                    uid: self.inode.uid,
                    ..created
                }),
            });
        }
        let file = open_checked(&self.path, libc::O_RDONLY, self.inode, false)?;
        if !keep_files {
            self.provable(&file)?;
        }
        Ok(PutBack {
            file: self,
            created: None,
        })
    }

    /// Whether the file as it is now can be brought back to its checkpoint state.
    fn provable(&self, file: &File) -> Result<(), FileError> {
        let path = &self.path;
        let meta = file.metadata().map_err(io(path, "stat it"))?;
        let changed = |what: String, hint: &str| FileError::Changed {
            path: path.clone(),
            what,
            hint: hint.into(),
        };
        match &self.contents {
            Contents::Copied { .. } => Ok(()),
            Contents::Appended {
                head_blake3,
                tail_offset,
                tail_blake3,
            } => {
                const HINT: &str = "it was only appended to at checkpoint time, so only its \
                                    size was kept; restore with --keep-files to accept it as it is";
                if meta.size() < self.size {
                    return Err(changed(
                        format!("it shrank from {} to {} bytes", self.size, meta.size()),
                        HINT,
                    ));
                }
                let head =
                    hash_range(file, 0, HEAD_BYTES.min(self.size)).map_err(io(path, "read it"))?;
                let tail =
                    hash_range(file, *tail_offset, self.size).map_err(io(path, "read it"))?;
                if &head != head_blake3 || &tail != tail_blake3 {
                    return Err(changed(
                        "bytes before its checkpoint-time end were rewritten".into(),
                        HINT,
                    ));
                }
                Ok(())
            }
            Contents::NotCopied { limit } => {
                let mtime = FileIdentity::mtime_ns_of(&meta);
                if meta.size() != self.size || mtime != self.mtime_ns {
                    return Err(changed(
                        format!(
                            "size {} -> {} bytes, modified: {}",
                            self.size,
                            meta.size(),
                            mtime != self.mtime_ns
                        ),
                        &format!(
                            "it was larger than [image] file_copy_limit_mib ({} MiB) at \
                             checkpoint time; raise the limit for the next checkpoints, or \
                             restore with --keep-files to accept it as it is",
                            limit >> 20
                        ),
                    ));
                }
                Ok(())
            }
        }
    }
}

impl PutBack<'_> {
    /// Gives the file back its checkpoint-time contents. `pages` opens the pages of image
    /// `seq` (`None`: this image; decompressed, when they are stored compressed). Checks
    /// everything again on the opened file: nothing is written through a path that changed
    /// since `check`.
    pub fn apply(
        &self,
        pages: &dyn Fn(Option<u64>) -> std::io::Result<File>,
    ) -> Result<(), FileError> {
        let f = self.file;
        let path = f.path.as_str();
        let file = match self.created {
            Some(inode) => open_checked(path, libc::O_RDWR, inode, false)?,
            None => {
                let file = open_checked(path, libc::O_RDWR, f.inode, false)?;
                f.provable(&file)?;
                file
            }
        };
        if let Contents::Copied { chunks } = &f.contents {
            write_back(path, &file, chunks, pages)?;
        }
        file.set_len(f.size).map_err(io(path, "set its size"))?;
        let mtime = nix::sys::time::TimeSpec::new(
            f.mtime_ns.div_euclid(1_000_000_000),
            f.mtime_ns.rem_euclid(1_000_000_000),
        );
        let now = nix::sys::time::TimeSpec::UTIME_NOW;
        nix::sys::stat::futimens(&file, &now, &mtime)
            .map_err(|e| io(path, "set its modification time")(e.into()))?;
        file.sync_all().map_err(io(path, "sync it"))
    }
}

impl PutBack<'_> {
    pub fn path(&self) -> &str {
        &self.file.path
    }

    /// Removes a file `check` created, if nothing was written to it: the restore failed.
    pub fn undo(&self) {
        if let Some(inode) = self.created
            && let Ok(file) = open_checked(&self.file.path, libc::O_RDONLY, inode, false)
            && file.metadata().is_ok_and(|m| m.len() == 0)
        {
            let _ = std::fs::remove_file(&self.file.path);
        }
    }
}

/// Writes the chunks into `file` (named `path` in messages), where its bytes differ.
pub fn write_back(
    path: &str,
    file: &File,
    chunks: &[Chunk],
    pages: &dyn Fn(Option<u64>) -> std::io::Result<File>,
) -> Result<(), FileError> {
    let mut sources: BTreeMap<Option<u64>, File> = BTreeMap::new();
    for chunk in chunks {
        let source = match sources.entry(chunk.image) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(pages(chunk.image).map_err(io(path, "read its copy in the image"))?)
            }
        };
        write_chunk(path, file, source, chunk)?;
    }
    Ok(())
}

/// Writes one chunk back where the file's bytes differ from it.
fn write_chunk(path: &str, file: &File, source: &File, chunk: &Chunk) -> Result<(), FileError> {
    let mut wanted = vec![0u8; usize_of(chunk.len)];
    source
        .read_exact_at(&mut wanted, chunk.pages_offset)
        .map_err(io(path, "read its copy in the image"))?;
    if hash_hex(&wanted) != chunk.blake3 {
        return Err(FileError::Damaged {
            path: path.into(),
            offset: chunk.offset,
        });
    }
    let mut current = vec![0u8; wanted.len()];
    let same = file
        .read_exact_at(&mut current, chunk.offset)
        .is_ok_and(|()| current == wanted);
    if !same {
        file.write_all_at(&wanted, chunk.offset)
            .map_err(io(path, "write it back"))?;
    }
    Ok(())
}
