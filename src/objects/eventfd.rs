//! eventfd: a 64-bit counter, read as a whole or one at a time (`EFD_SEMAPHORE`). The
//! counter is read from fdinfo while the job is frozen and written into the new eventfd.

use super::{OpenFd, Refusal, info_field, unreadable};
use crate::tracer::fd_syscalls;
use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use std::os::fd::OwnedFd;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EventFdState {
    pub count: u64,
    pub semaphore: bool,
    pub nonblocking: bool,
}

pub fn capture(fd: &OpenFd) -> Result<EventFdState, Refusal> {
    let field = |name| info_field(&fd.info, name);
    let count = field("eventfd-count:").and_then(|c| u64::from_str_radix(c, 16).ok());
    let semaphore = field("eventfd-semaphore:").map(|s| s == "1");
    match (count, semaphore) {
        (Some(count), Some(semaphore)) => Ok(EventFdState {
            count,
            semaphore,
            nonblocking: fd.nonblocking(),
        }),
        _ => Err(unreadable("eventfd", fd)),
    }
}

impl EventFdState {
    pub fn open(&self) -> Result<OwnedFd, super::ObjectError> {
        let mut flags = 0;
        if self.semaphore {
            flags |= libc::EFD_SEMAPHORE;
        }
        if self.nonblocking {
            flags |= libc::EFD_NONBLOCK;
        }
        fd_syscalls::eventfd(self.count, flags).map_err(recreate("an eventfd"))
    }
}

/// The error for a failure to create `what` again.
pub fn recreate(what: &'static str) -> impl Fn(Errno) -> super::ObjectError {
    move |e| super::ObjectError::Recreate {
        what: what.into(),
        source: e.into(),
    }
}
