//! Everything that touches another process: ptrace, remote syscalls, dump and restore.
//!
//! This module speaks in x86-64 machine words: syscall arguments and results, registers
//! and addresses are `u64`, and their sign bits are meant (fd -1 is `u64::MAX`, a result
//! of -4095..-1 is an errno). The two cast lints are therefore off here only; they stay on
//! for the image format, the tiers and the CLI.
#![allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]

pub mod access;
pub mod attributes;
pub mod capture;
pub mod child;
pub mod dump;
pub mod fd_syscalls;
pub mod freeze;
pub mod guard;
pub mod hugepages;
pub mod inspect;
pub mod members;
pub mod memory;
pub mod page_index;
pub mod pages;
pub mod precopy;
pub mod priority;
pub mod ptrace;
pub mod remote;
pub mod restore;
mod restore_process;
pub mod rethread;
pub mod seccomp;
pub mod snapshot;
pub mod sock_syscalls;
pub mod stub;
pub mod sys;
pub mod threads;
pub mod timers;
pub mod tracker;
pub mod tree;
pub mod tty_sys;
