//! signalfd: reads the signals of its mask that are pending for the process (the pending
//! signals themselves come back with the process). Only the mask and flags are its own.

use super::eventfd::recreate;
use super::{OpenFd, Refusal, info_field, unreadable};
use crate::tracer::fd_syscalls;
use serde::{Deserialize, Serialize};
use std::os::fd::OwnedFd;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SignalFdState {
    /// Bit N-1 for signal N.
    pub mask: u64,
    pub nonblocking: bool,
}

pub fn capture(fd: &OpenFd) -> Result<SignalFdState, Refusal> {
    let mask = info_field(&fd.info, "sigmask:").and_then(|m| u64::from_str_radix(m, 16).ok());
    match mask {
        Some(mask) => Ok(SignalFdState {
            mask,
            nonblocking: fd.nonblocking(),
        }),
        None => Err(unreadable("signalfd", fd)),
    }
}

impl SignalFdState {
    pub fn open(&self) -> Result<OwnedFd, super::ObjectError> {
        let flags = if self.nonblocking {
            libc::SFD_NONBLOCK
        } else {
            0
        };
        fd_syscalls::signalfd(self.mask, flags).map_err(recreate("a signalfd"))
    }
}
