//! Where images go and which one a restore uses: configuration, topology (which node and
//! partner a rank has), the paths of each tier, the checkpoint schedule, copies to the
//! partner and global tiers, retention, and the choice among recovery candidates.

pub mod config;
pub mod finished;
pub mod forget;
pub mod generation;
pub mod inventory;
pub mod layout;
pub mod path_vars;
pub mod placement;
pub mod recovery;
pub mod retention;
pub mod reuse;
pub mod schedule;
pub mod topology;
