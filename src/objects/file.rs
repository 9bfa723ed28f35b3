//! Open file descriptions shared by several fds: after `fork` a parent and its child share
//! the offset of every file they both hold, `dup` and `2>&1` do the same within a process.
//! Reopening each fd on its own would give each its own offset, so a shared description is
//! opened once at restore and every fd gets a duplicate. Regular files only: directories
//! and devices keep no offset that matters.

use super::{IdAllocator, ObjectError, ObjectKind, OpenFd, Opened, SharedObject};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SharedFile {
    pub path: String,
    /// Open flags, without `O_CLOEXEC` (per fd).
    pub flags: i32,
    pub offset: u64,
}

/// Groups the job's regular-file fds into open file descriptions (`kcmp`); every
/// description held by more than one fd becomes an object. Returns (pid, fd) -> id.
pub fn shared_descriptions(
    fds: &[&OpenFd],
    ids: &mut IdAllocator,
    out: &mut Vec<SharedObject>,
) -> BTreeMap<(i32, i32), u64> {
    // Only fds of one file can share a description.
    let mut by_file: BTreeMap<(u64, u64), Vec<&OpenFd>> = BTreeMap::new();
    for fd in fds {
        if let Some(m) = &fd.meta {
            by_file.entry((m.dev(), m.ino())).or_default().push(fd);
        }
    }
    let mut result = BTreeMap::new();
    for same_file in by_file.values().filter(|v| v.len() > 1) {
        let groups = super::descriptions(same_file);
        for group in groups.into_iter().filter(|g| g.len() > 1) {
            let first = group[0];
            let id = ids.allocate();
            out.push(SharedObject {
                id,
                object: ObjectKind::File(SharedFile {
                    path: first.target.clone(),
                    flags: first.flags & !libc::O_CLOEXEC,
                    offset: first.pos,
                }),
            });
            for fd in group {
                result.insert((fd.pid, fd.fd), id);
            }
        }
    }
    result
}

impl SharedFile {
    pub fn open(&self) -> Result<Opened, ObjectError> {
        let fail = |source| ObjectError::Recreate {
            what: self.path.clone(),
            source,
        };
        let access = self.flags & libc::O_ACCMODE;
        let custom = self.flags
            & !(libc::O_ACCMODE | libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY);
        let file = super::contents::open_recorded(&self.path, access | custom, 0).map_err(fail)?;
        std::io::Seek::seek(&mut &file, std::io::SeekFrom::Start(self.offset)).map_err(fail)?;
        Ok(Opened {
            slots: vec![Some(file.into())],
            mapping: None,
        })
    }
}
