//! Checkpoint generations shared by every rank of a job (`docs/tiers.md`, "Generations
//! and the recovery line").
//!
//! Rank 0's supervisor runs a [`coordinator`] thread; every rank's supervisor (rank 0's
//! too) joins it as a [`member`]. The coordinator decides when the job is checkpointed and
//! numbers the generation; every rank pre-copies, waits at a barrier, freezes and writes
//! its image under that number; once every rank has committed it on a tier, each writes
//! the generation's record there. At a restore the same meeting picks the recovery line:
//! the newest generation every rank holds an intact copy of.
//!
//! Sits above the per-rank supervisor: it tells a supervisor when to checkpoint, never how.

pub mod coordinator;
pub mod member;
pub mod rendezvous;
pub mod wire;

use crate::tiers::config::{Config, CoordinationMode};
use crate::tiers::topology::Topology;
use rendezvous::Meeting;
use std::time::Duration;

/// The least time a rank gets to verify its copies of a generation at a restore (it reads
/// and hashes whole images, gigabytes maybe); others wait for it that long.
pub const VERIFY_AT_LEAST: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum CoordinationError {
    #[error(
        "[coordination] mode = \"on\", but the job's number of ranks is unknown: set \
         [coordination] ranks, or MLCKPT_RANKS (SLURM and Open MPI set it themselves)"
    )]
    NoRankCount,
    #[error("rank {rank} is not below [coordination] ranks = {ranks}")]
    RankBeyondRanks { rank: u32, ranks: u32 },
    #[error(
        "the ranks of job {job} run on {nodes} nodes and cannot find their coordinator: set \
         storage.global (the coordinator's address is published there) or [coordination] \
         port (rank 0's node, from the node list, on that port); or [coordination] mode = \
         \"off\" for independent ranks"
    )]
    NoMeetingPlace { job: String, nodes: u32 },
    #[error("cannot listen for the job's ranks on {addr}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot publish the coordinator's address in {}", path.display())]
    Publish {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "rank {rank} could not join the job's coordinator (rank 0's supervisor, at {meeting}) \
         within {secs} s: {last} (is rank 0 running? [coordination] timeout sets the wait)"
    )]
    Join {
        rank: u32,
        meeting: String,
        secs: f64,
        last: String,
    },
    #[error(
        "the ranks could not agree on a generation to restore: {why}; nothing was restored \
         and the program was not started afresh (start every rank again)"
    )]
    NoAgreement { why: String },
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error("the ranks authenticate each other with the image key, which cannot be read")]
    Key(#[source] Box<crate::image::auth::AuthError>),
    #[error("the coordinator thread could not be started")]
    Thread(#[source] std::io::Error),
}

/// How one rank takes part in its job's generations.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub job: String,
    pub rank: u32,
    pub ranks: u32,
    pub timeout: Duration,
    pub meeting: Meeting,
    /// Every rank runs on this machine (test mode, one node): the coordinator listens on
    /// the loopback only.
    pub same_machine: bool,
    pub config: Config,
}

/// `None` for a job whose ranks checkpoint independently.
pub fn settings(
    config: &Config,
    job: &str,
    topology: &Topology,
) -> Result<Option<Settings>, CoordinationError> {
    let c = &config.coordination;
    let ranks = c.ranks.or(topology.ranks);
    let ranks = match (c.mode, ranks) {
        (CoordinationMode::Off, _) => return Ok(None),
        (CoordinationMode::Auto, None | Some(0 | 1)) => return Ok(None),
        (CoordinationMode::On, None) => return Err(CoordinationError::NoRankCount),
        (_, Some(n)) => n,
    };
    if topology.rank >= ranks {
        return Err(CoordinationError::RankBeyondRanks {
            rank: topology.rank,
            ranks,
        });
    }
    let same_machine = topology.test_mode() || topology.nodes == 1;
    let meeting = match (c.port, topology.hosts.first()) {
        (0, _) => None,
        (port, _) if same_machine => Some(Meeting::Fixed {
            host: "127.0.0.1".into(),
            port,
        }),
        (port, Some(host)) => Some(Meeting::Fixed {
            host: host.clone(),
            port,
        }),
        (_, None) => None,
    };
    let file_dir = match &config.storage.global {
        Some(global) => Some(global.clone()),
        None if same_machine => Some(config.storage.local.clone()),
        None => None,
    };
    let meeting = match (meeting, file_dir) {
        (Some(m), _) => m,
        (None, Some(dir)) => Meeting::File(rendezvous::rendezvous_file(&dir, job)),
        (None, None) => {
            return Err(CoordinationError::NoMeetingPlace {
                job: job.to_string(),
                nodes: topology.nodes,
            });
        }
    };
    Ok(Some(Settings {
        job: job.to_string(),
        rank: topology.rank,
        ranks,
        timeout: c.timeout,
        meeting,
        same_machine,
        config: config.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiers::topology::Env;
    use std::path::Path;

    fn settings_for(
        text: &str,
        rank: u32,
        env: &[(&str, &str)],
    ) -> Result<Option<Settings>, CoordinationError> {
        let config = Config::parse(text, Path::new("/c/mlckpt.toml")).unwrap();
        let env: Env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let topology = Topology::detect(Some(rank), &env, &config.topology).unwrap();
        settings(&config, "sim", &topology)
    }

    #[test]
    fn one_rank_or_opted_out_is_independent() {
        assert_eq!(settings_for("", 0, &[]).unwrap(), None);
        let off = "[coordination]\nmode = 'off'\n[topology]\ntest_mode = true\nnodes = 2\n";
        assert_eq!(settings_for(off, 1, &[]).unwrap(), None);
        let e = settings_for("[coordination]\nmode = 'on'\n", 0, &[]).unwrap_err();
        assert!(matches!(e, CoordinationError::NoRankCount), "{e}");
    }

    #[test]
    fn test_mode_meets_through_a_local_file() {
        let text = "[storage]\nlocal = '/l'\n[topology]\ntest_mode = true\nnodes = 2\nranks_per_node = 2\n";
        let s = settings_for(text, 3, &[]).unwrap().unwrap();
        assert_eq!((s.rank, s.ranks, s.same_machine), (3, 4, true));
        assert_eq!(s.meeting, Meeting::File("/l/.sim.coordinator.json".into()));
    }

    #[test]
    fn a_cluster_meets_at_rank_0s_node_or_through_global_storage() {
        let env = [
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_NODEID", "0"),
            ("SLURM_NNODES", "2"),
            ("SLURM_JOB_NODELIST", "n[07-08]"),
        ];
        let fixed = settings_for("[coordination]\nport = 7000\n", 1, &env)
            .unwrap()
            .unwrap();
        assert_eq!(
            fixed.meeting,
            Meeting::Fixed {
                host: "n07".into(),
                port: 7000
            }
        );
        let global = settings_for("[storage]\nglobal = '/g'\n", 1, &env)
            .unwrap()
            .unwrap();
        assert_eq!(
            global.meeting,
            Meeting::File("/g/.sim.coordinator.json".into())
        );
        let e = settings_for("", 1, &env).unwrap_err();
        assert!(matches!(e, CoordinationError::NoMeetingPlace { .. }), "{e}");
    }
}
