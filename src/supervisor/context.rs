//! Which job and rank images belong to, where each tier keeps them, and a checkpoint of
//! one process: written locally, old local images pruned, and (for a process nobody
//! supervises) copied to a higher tier in place.

use super::{SuperviseError, error_chain};
use crate::image::format::TierKind;
use crate::image::store;
use crate::tiers::config::{Config, OutsidePeers};
use crate::tiers::layout::RankPaths;
use crate::tiers::placement::{Copied, PlaceError, Placer};
use crate::tiers::retention;
use crate::tiers::topology::Topology;
use crate::tracer::dump::{self, CheckpointRequest, CheckpointStats};
use crate::tracer::pages::ParentChoice;
use crate::tracer::precopy::Tracking;
use nix::unistd::Pid;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a supervisor's next checkpoint of its process builds on.
#[derive(Default)]
pub struct Lineage {
    /// Write tracking of the process, kept from one checkpoint to the next.
    pub tracking: Tracking,
    /// The image the next one may refer to; after a restore, the image restored (or none),
    /// then the newest, which is the supervisor's own last one.
    pub parent: ParentChoice,
}

/// A rank's part in a generation of a coordinated job: the image gets the generation's
/// number, and the freeze waits at the barrier of every rank.
pub struct GenerationPart<'a> {
    pub generation: u64,
    pub barrier: &'a dyn Fn() -> Result<(), String>,
}

/// Which job and rank images belong to, and where each tier keeps them.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub config: Config,
    pub job: String,
    pub topology: Topology,
    pub paths: RankPaths,
}

impl JobContext {
    pub fn new(config: Config, job: String, topology: Topology) -> JobContext {
        let paths = RankPaths::new(&config, &job, &topology);
        JobContext {
            config,
            job,
            topology,
            paths,
        }
    }

    pub fn rank(&self) -> u32 {
        self.topology.rank
    }

    /// One counter per job and rank across tiers, partner copies included.
    pub fn next_seq(&self) -> u64 {
        let dirs: Vec<PathBuf> = TierKind::ALL
            .iter()
            .filter_map(|&t| self.paths.readable(t))
            .map(Path::to_path_buf)
            .collect();
        store::highest_seq(&dirs) + 1
    }

    /// Fails unless checkpoints can be placed on `tier`.
    pub fn check_tier(&self, tier: TierKind) -> Result<(), SuperviseError> {
        let why = match tier {
            TierKind::Local => return Ok(()),
            TierKind::Partner => match &self.paths.partner {
                Ok(_) => return Ok(()),
                Err(no) => no.to_string(),
            },
            TierKind::Global if self.paths.global.is_some() => return Ok(()),
            TierKind::Global => "storage.global is not set in the config".to_string(),
        };
        Err(SuperviseError::TierUnavailable { tier, why })
    }

    /// Fails if a tier with an interval cannot be used: better at the start than at the
    /// first partner checkpoint, hours into the job.
    pub fn check_intervals(&self) -> Result<(), SuperviseError> {
        let i = &self.config.interval;
        let timed = [(TierKind::Partner, i.partner), (TierKind::Global, i.global)];
        timed
            .into_iter()
            .filter(|(_, every)| !every.is_zero())
            .try_for_each(|(tier, _)| self.check_tier(tier))
    }

    /// Writes a local image of `pid`, then deletes local images beyond `keep`, sparing
    /// those in `in_use` (being copied). `lineage` is the supervisor's, if `pid` has one
    /// (without, the image builds on the newest one and memory is not write-tracked).
    /// As `part` of a generation, retention waits until the generation is complete.
    pub fn checkpoint_local(
        &self,
        pid: Pid,
        kill: bool,
        in_use: &BTreeSet<PathBuf>,
        mut lineage: Option<&mut Lineage>,
        part: Option<&GenerationPart>,
    ) -> Result<CheckpointStats, SuperviseError> {
        let key = crate::image::auth::ImageKey::own()?;
        let request = CheckpointRequest {
            pid,
            job: &self.job,
            rank: self.rank(),
            tier: TierKind::Local,
            rank_dir: &self.paths.local,
            seq: part.map_or_else(|| self.next_seq(), |p| p.generation),
            kill,
            full_every: self.config.image.full_every,
            parent: lineage.as_ref().map(|l| l.parent).unwrap_or_default(),
            refuse_outside_peers: self.config.image.outside_peers == OutsidePeers::Refuse,
            stdio_files: self.config.image.stdio_files,
            file_copy_limit: self.config.image.file_copy_limit,
            key: &key,
            before_freeze: part.map(|p| p.barrier),
        };
        let tracking = lineage
            .as_deref_mut()
            .filter(|_| self.config.image.write_tracking)
            .map(|l| &mut l.tracking);
        let stats = dump::checkpoint(&request, tracking)?;
        if let Some(l) = lineage {
            l.parent = ParentChoice::Newest;
        }
        if part.is_some() {
            return Ok(stats);
        }
        let mut protect = in_use.clone();
        protect.insert(stats.path.clone());
        let keep = self.config.storage.keep;
        report_retention(&retention::prune(
            &self.paths.local,
            keep,
            stats.seq,
            &protect,
        ));
        Ok(stats)
    }

    /// Checkpoints `pid` and, for a higher tier, copies the image there before returning
    /// (the target is not frozen for the copy). For a process nobody supervises.
    pub fn checkpoint(
        &self,
        pid: Pid,
        tier: TierKind,
        kill: bool,
    ) -> Result<CheckpointStats, SuperviseError> {
        self.check_tier(tier)?;
        let started = Instant::now();
        let stats = self.checkpoint_local(pid, kill, &BTreeSet::new(), None, None)?;
        let Some(dest) = self.paths.destination(tier) else {
            return Ok(stats);
        };
        let copied = Placer::new(dest, self.config.storage.keep)
            .with_compression(self.config.image.compress)
            .place(&stats.path);
        if let Ok(c) = &copied {
            report_retention(&c.pruned);
        }
        placed(stats, tier, copied, started)
    }
}

/// The stats of a checkpoint placed on `tier`: the copy's path, the time until it was
/// committed; or why the copy failed.
pub(super) fn placed(
    stats: CheckpointStats,
    tier: TierKind,
    copied: Result<Copied, PlaceError>,
    started: Instant,
) -> Result<CheckpointStats, SuperviseError> {
    match copied {
        Ok(copied) => Ok(CheckpointStats {
            path: copied.path,
            tier,
            total_ms: started.elapsed().as_secs_f64() * 1000.0,
            ..stats
        }),
        Err(e) => Err(SuperviseError::Copy {
            tier,
            local: stats.path,
            source: e,
        }),
    }
}

pub(super) fn report_retention(result: &Result<Vec<PathBuf>, PlaceError>) {
    match result {
        Ok(deleted) => deleted
            .iter()
            .for_each(|p| crate::info!("retention deleted {}", p.display())),
        Err(e) => crate::info!("retention failed: {}", error_chain(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiers::topology::Env;

    fn context(text: &str, rank: u32) -> JobContext {
        let config = Config::parse(text, Path::new("/c/mlckpt.toml")).unwrap();
        let topology = Topology::detect(Some(rank), &Env::new(), &config.topology).unwrap();
        JobContext::new(config, "sim".into(), topology)
    }

    #[test]
    fn unusable_tiers_are_refused_with_the_reason() {
        let ctx = context("[storage]\nlocal='/l'\n", 0);
        let e = ctx.check_tier(TierKind::Global).unwrap_err().to_string();
        assert!(e.contains("global") && e.contains("storage.global"), "{e}");
        let e = ctx.check_tier(TierKind::Partner).unwrap_err().to_string();
        assert!(e.contains("only one node"), "{e}");
        assert!(ctx.check_tier(TierKind::Local).is_ok());
        assert!(ctx.check_intervals().is_ok());
    }

    #[test]
    fn sequence_numbers_span_every_tier() {
        let tmp = tempfile::tempdir().unwrap();
        let text = format!(
            "[storage]\nlocal='{0}/l'\nglobal='{0}/g'\n[topology]\ntest_mode=true\nnodes=2\n",
            tmp.path().display()
        );
        let ctx = context(&text, 1);
        assert_eq!(ctx.next_seq(), 1);
        let partner = tmp.path().join("l/node0/sim/partner/rank1/ckpt-000007");
        std::fs::create_dir_all(partner).unwrap();
        assert_eq!(ctx.next_seq(), 8);
        let global = tmp.path().join("g/sim/rank1/.ckpt-000011.partial");
        std::fs::create_dir_all(global).unwrap();
        assert_eq!(ctx.next_seq(), 12);
        // Another rank's images do not count.
        std::fs::create_dir_all(tmp.path().join("g/sim/rank0/ckpt-000050")).unwrap();
        assert_eq!(ctx.next_seq(), 12);
    }
}
