//! Everything that touches another process: ptrace, remote syscalls, dump and restore.

pub mod child;
pub mod dump;
pub mod freeze;
pub mod inspect;
pub mod memory;
pub mod ptrace;
pub mod remote;
pub mod restore;
pub mod stub;
pub mod sys;
pub mod threads;
