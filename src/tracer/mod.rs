//! Everything that touches another process: ptrace, remote syscalls, dump and restore.
