//! Where images go: configuration, and later topology, schedule, placement and recovery.

pub mod config;
