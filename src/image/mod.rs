//! The on-disk image: manifest, page data and checksums. Knows nothing about ptrace.

pub mod format;
