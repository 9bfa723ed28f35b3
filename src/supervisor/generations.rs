//! A supervisor's part in its job's checkpoint generations (`crate::coordination`): it
//! takes no checkpoint of its own accord, it asks the coordinator, and takes its part of
//! each generation the coordinator starts: pre-copy, barrier, freeze, commit, copy, and
//! the generation's record once every rank committed it on a tier.

use super::context::GenerationPart;
use super::{SuperviseError, Supervisor, error_chain, respond};
use crate::coordination::member::Member;
use crate::coordination::wire::{Summary, ToCoordinator, ToMember};
use crate::image::format::TierKind;
use crate::tiers::generation::{self, GenerationRecord};
use crate::tiers::layout::Destination;
use crate::tracer::dump::{CheckpointStats, DumpError, GenerationStats};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Instant;

/// The coordinated side of a supervisor.
pub(super) struct Generations {
    pub member: Option<Member>,
    /// Why the coordinator is gone, once it is: checkpoints fail with this.
    pub lost: Option<String>,
    /// `mlckpt checkpoint` clients waiting for a generation (told which one by the
    /// coordinator's answer to their request).
    pub waiting: Vec<Waiting>,
    /// The id of this rank's next request to the coordinator.
    pub next_ask: u64,
    /// This rank's images of generations not complete on every tier asked for yet.
    pub parts: BTreeMap<u64, Part>,
    /// The generation that stopped the job, once one did: a signal asking for a stop
    /// that comes after it (a step signal reaches every rank, one rank's asks first) is
    /// already served.
    pub stopped_by: Option<CheckpointStats>,
    /// Generations this rank heard failed: they will never be complete, and retention
    /// keeps their images only as parents.
    pub failed: BTreeSet<u64>,
}

pub(super) struct Waiting {
    pub tier: TierKind,
    pub stream: UnixStream,
    pub started: Instant,
    /// The request's id, until the coordinator says which generation serves it.
    pub ask: u64,
    pub generation: Option<u64>,
}

pub(super) struct Part {
    /// The highest tier the generation goes to.
    pub tier: TierKind,
    pub stats: CheckpointStats,
}

/// What handling one message of the coordinator came to, for a caller waiting on it.
pub(super) enum Outcome {
    Nothing,
    /// The coordinator's answer to request `id`.
    Asked {
        id: u64,
        generation: u64,
    },
    Complete {
        generation: u64,
        tier: TierKind,
        stats: Option<CheckpointStats>,
    },
    Failed {
        generation: u64,
        why: String,
    },
}

impl Generations {
    pub fn new(member: Option<Member>) -> Generations {
        Generations {
            member,
            lost: None,
            waiting: Vec::new(),
            next_ask: 1,
            parts: BTreeMap::new(),
            stopped_by: None,
            failed: BTreeSet::new(),
        }
    }
}

impl Supervisor<'_> {
    pub(super) fn coordinated(&self) -> bool {
        let g = self.generations.borrow();
        g.member.is_some() || g.lost.is_some()
    }

    /// Asks the coordinator for a generation; `reply`: a client to answer once it is
    /// complete on `tier` (or failed).
    pub(super) fn ask_generation(&self, tier: TierKind, stop: bool, reply: Option<UnixStream>) {
        match (self.ask(tier, stop), reply) {
            (Ok(ask), Some(stream)) => self.generations.borrow_mut().waiting.push(Waiting {
                tier,
                stream,
                started: Instant::now(),
                ask,
                generation: None,
            }),
            (Ok(_), None) => {}
            (Err(why), Some(stream)) => respond(&stream, Err(why)),
            (Err(why), None) => crate::info!("checkpoint not taken: {why}"),
        }
    }

    /// A generation, waited for until this rank's part is committed locally and every
    /// rank's too; for signals whose action depends on the outcome.
    pub(super) fn generation_now(
        &self,
        tier: TierKind,
        stop: bool,
    ) -> Result<CheckpointStats, SuperviseError> {
        if let Some(stats) = self.generations.borrow().stopped_by.clone() {
            return Ok(stats);
        }
        let ask = self.ask(tier, stop).map_err(SuperviseError::Generation)?;
        let mut mine = None;
        loop {
            let message = {
                let mut g = self.generations.borrow_mut();
                let Some(member) = g.member.as_mut() else {
                    return Err(SuperviseError::Generation(self.lost_reason()));
                };
                member.next_message_within(member.patience())
            };
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    self.lose_coordinator(&error_chain(&e));
                    return Err(SuperviseError::Generation(self.lost_reason()));
                }
            };
            match self.on_message(message) {
                Outcome::Asked { id, generation } if id == ask => mine = Some(generation),
                Outcome::Complete {
                    generation,
                    tier: TierKind::Local,
                    stats,
                } if mine == Some(generation) => {
                    return stats.ok_or_else(|| {
                        SuperviseError::Generation(format!(
                            "generation {generation}: this rank's image is not known"
                        ))
                    });
                }
                Outcome::Failed { generation, why } if mine == Some(generation) => {
                    return Err(SuperviseError::Generation(format!(
                        "generation {generation} failed: {why}"
                    )));
                }
                _ => {}
            }
        }
    }

    /// Sends a request for a generation; returns its id.
    fn ask(&self, tier: TierKind, stop: bool) -> Result<u64, String> {
        let id = {
            let mut g = self.generations.borrow_mut();
            g.next_ask += 1;
            g.next_ask - 1
        };
        self.send(&ToCoordinator::Ask { tier, stop, id })?;
        Ok(id)
    }

    /// Takes every message the coordinator has sent (the poll loop saw its socket).
    pub(super) fn serve_coordinator(&self) {
        loop {
            let message = {
                let mut g = self.generations.borrow_mut();
                let Some(member) = g.member.as_mut() else {
                    return;
                };
                member.next_message()
            };
            match message {
                Ok(m) => {
                    self.on_message(m);
                }
                Err(e) => return self.lose_coordinator(&error_chain(&e)),
            }
            let more = self
                .generations
                .borrow()
                .member
                .as_ref()
                .is_some_and(Member::has_pending);
            if !more {
                return;
            }
        }
    }

    /// The job has ended, possibly by this rank's part in a generation (`--kill`, a stop
    /// signal): the generations it took part in still complete once the other ranks
    /// commit, and their records and waiting clients are seen to before the supervisor
    /// goes. Gives up when the coordinator does (its own timeouts come first).
    pub(super) fn finish_generations(&self) {
        // First of all: no generation is to be asked of this rank any more.
        if self.generations.borrow().member.is_some() {
            let _ = self.send(&ToCoordinator::Finished);
        }
        loop {
            let message = {
                let mut g = self.generations.borrow_mut();
                if g.waiting.is_empty() && g.parts.is_empty() {
                    return;
                }
                let Some(member) = g.member.as_mut() else {
                    break;
                };
                let patience = member.patience();
                member.next_message_within(patience)
            };
            match message {
                Ok(m) => {
                    self.on_message(m);
                }
                Err(e) => {
                    self.lose_coordinator(&error_chain(&e));
                    break;
                }
            }
        }
        let waiting = std::mem::take(&mut self.generations.borrow_mut().waiting);
        for w in waiting {
            respond(
                &w.stream,
                Err("the job ended before its generation completed".to_string()),
            );
        }
    }

    pub(super) fn coordinator_has_pending(&self) -> bool {
        let g = self.generations.borrow();
        g.member.as_ref().is_some_and(Member::has_pending)
    }

    fn on_message(&self, message: ToMember) -> Outcome {
        match message {
            ToMember::Checkpoint {
                generation,
                tier,
                stop,
            } => match self.take_part(generation, tier, stop) {
                Some(why) => self.abandoned(generation, why),
                None => Outcome::Nothing,
            },
            ToMember::Asked { id, generation } => {
                let mut g = self.generations.borrow_mut();
                for w in g.waiting.iter_mut().filter(|w| w.ask == id) {
                    w.generation = Some(generation);
                }
                Outcome::Asked { id, generation }
            }
            ToMember::Complete {
                generation,
                tier,
                summary,
            } => Outcome::Complete {
                generation,
                tier,
                stats: self.complete(generation, tier, &summary),
            },
            ToMember::NotComplete {
                generation,
                tier,
                why,
            } => {
                let why =
                    format!("generation {generation} is not complete on the {tier} tier: {why}");
                crate::info!("{why}");
                let mut g = self.generations.borrow_mut();
                if g.parts.get(&generation).is_some_and(|p| p.tier == tier) {
                    g.parts.remove(&generation);
                }
                drop(g);
                self.answer_waiting(generation, Some(tier), &Err(why.clone()));
                Outcome::Failed { generation, why }
            }
            ToMember::Abandoned { generation, why } => self.abandoned(generation, why),
            other => {
                crate::debug!("coordinator: {other:?} ignored here");
                Outcome::Nothing
            }
        }
    }

    fn abandoned(&self, generation: u64, why: String) -> Outcome {
        crate::info!("generation {generation} failed: {why}");
        {
            let mut g = self.generations.borrow_mut();
            g.parts.remove(&generation);
            g.failed.insert(generation);
        }
        // While generations keep failing (a rank hung), this rank still writes an image
        // every interval: the failed ones go as soon as nothing needs them.
        self.prune_local();
        let failed = Err(format!("generation {generation} failed: {why}"));
        self.answer_waiting(generation, None, &failed);
        Outcome::Failed { generation, why }
    }

    /// Retention by generation in this rank's local directory.
    fn prune_local(&self) {
        let protect = self.copier.in_use();
        let failed = self.generations.borrow().failed.clone();
        super::context::report_retention(&crate::tiers::retention::prune_generations(
            &self.ctx.paths.local,
            self.ctx.config.storage.keep,
            &failed,
            &protect,
        ));
    }

    /// This rank's part of `generation`: an image numbered by it, frozen at the barrier,
    /// then the copy to `tier`. Returns why the generation was called off at the barrier.
    fn take_part(&self, generation: u64, tier: TierKind, stop: bool) -> Option<String> {
        let barrier = || {
            let mut g = self.generations.borrow_mut();
            match g.member.as_mut() {
                Some(member) => member.barrier(generation),
                None => Err("the coordinator is gone".to_string()),
            }
        };
        let part = GenerationPart {
            generation,
            barrier: &barrier,
        };
        let result = self.checkpoint_local(stop, Some(&part));
        let message = match &result {
            Ok(stats) => ToCoordinator::Committed {
                generation,
                freeze_began_unix_us: stats.freeze_began_unix_us,
                freeze_ms: stats.freeze_ms,
                bytes: stats.bytes,
            },
            Err(SuperviseError::Dump(DumpError::CalledOff(why))) => return Some(why.clone()),
            Err(e) => ToCoordinator::Failed {
                generation,
                why: error_chain(e),
            },
        };
        let _ = self.send(&message);
        let stats = match result {
            Ok(stats) => stats,
            Err(e) => {
                crate::info!(
                    "generation {generation}: this rank's part failed: {}",
                    error_chain(&e)
                );
                return None;
            }
        };
        if stop {
            self.stopped.set(true);
            self.generations.borrow_mut().stopped_by = Some(stats.clone());
        }
        if tier != TierKind::Local && !self.copier.has(tier) {
            let why = format!(
                "rank {} has no {tier} tier (its configuration differs from rank 0's)",
                self.ctx.rank()
            );
            let _ = self.send(&ToCoordinator::CopyFailed {
                generation,
                tier,
                why,
            });
        } else if tier != TierKind::Local {
            let reporter = self
                .generations
                .borrow()
                .member
                .as_ref()
                .map(Member::reporter);
            let reply: super::copier::Reply = Box::new(move |copied| {
                let message = match copied {
                    Ok(_) => ToCoordinator::Copied { generation, tier },
                    Err(e) => ToCoordinator::CopyFailed {
                        generation,
                        tier,
                        why: error_chain(&e),
                    },
                };
                if let Some(r) = reporter {
                    r.send(&message);
                }
            });
            // Never dropped for a newer image: the generation waits for this copy.
            self.copier.submit(tier, &stats.path, Some(reply));
        }
        self.generations
            .borrow_mut()
            .parts
            .insert(generation, Part { tier, stats });
        if !self.generations.borrow().failed.is_empty() {
            // A full image just committed frees the failed ones before it.
            self.prune_local();
        }
        None
    }

    /// Every rank committed `generation` on `tier`: its record goes next to this rank's
    /// copy there, retention may now count it, and waiting clients hear of it.
    fn complete(
        &self,
        generation: u64,
        tier: TierKind,
        summary: &Summary,
    ) -> Option<CheckpointStats> {
        let record = GenerationRecord {
            generation,
            ranks: summary.ranks,
            tier,
            committed_unix_ms: now_unix_ms(),
            skew_ms: summary.skew_ms,
        };
        if let Some(dir) = self.record_dir(tier)
            && let Err(e) = generation::write(&dir, &record)
        {
            crate::warn!(
                "generation {generation} is complete on the {tier} tier, but its record could \
                 not be written: {}",
                error_chain(&e)
            );
        }
        if tier == TierKind::Local {
            // Only now may an older generation go: until this one was complete everywhere
            // the older one was the recovery line.
            self.prune_local();
        }
        crate::info!(
            "generation {generation} complete on the {tier} tier: {} ranks, freeze skew \
             {:.1} ms, committed by all in {:.1} ms",
            summary.ranks,
            summary.skew_ms,
            summary.commit_ms
        );
        let stats = {
            let mut g = self.generations.borrow_mut();
            let part = g.parts.get_mut(&generation)?;
            part.stats.generation = Some(GenerationStats {
                generation,
                ranks: summary.ranks,
                skew_ms: summary.skew_ms,
                commit_ms: summary.commit_ms,
                freeze_ms_max: summary.freeze_ms_max,
            });
            let mut stats = part.stats.clone();
            if tier != TierKind::Local {
                stats.tier = tier;
                if let Some(dir) = self.record_dir(tier) {
                    stats.path = dir.join(crate::image::store::image_dir_name(generation));
                }
            }
            if part.tier == tier {
                g.parts.remove(&generation);
            }
            stats
        };
        self.answer_waiting(generation, Some(tier), &Ok(stats.clone()));
        Some(stats)
    }

    /// The directory holding this rank's copies on `tier`, where records go; none for a
    /// partner reached through a command (docs/tiers.md).
    fn record_dir(&self, tier: TierKind) -> Option<PathBuf> {
        let paths = &self.ctx.paths;
        match tier {
            TierKind::Local => Some(paths.local.clone()),
            TierKind::Partner => match &paths.partner {
                Ok(Destination::Dir(dir)) => Some(dir.clone()),
                _ => None,
            },
            TierKind::Global => paths.global.clone(),
        }
    }

    /// Answers the clients waiting for `generation` on `tier` (any tier: `None`).
    fn answer_waiting(
        &self,
        generation: u64,
        tier: Option<TierKind>,
        result: &Result<CheckpointStats, String>,
    ) {
        let mut g = self.generations.borrow_mut();
        let (done, keep): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(&mut g.waiting)
            .into_iter()
            .partition(|w| w.generation == Some(generation) && tier.is_none_or(|t| t == w.tier));
        g.waiting = keep;
        drop(g);
        for w in done {
            let answer = result.clone().map(|mut stats| {
                stats.total_ms = w.started.elapsed().as_secs_f64() * 1000.0;
                stats
            });
            respond(&w.stream, answer);
        }
    }

    fn send(&self, message: &ToCoordinator) -> Result<(), String> {
        let sent = {
            let mut g = self.generations.borrow_mut();
            match g.member.as_mut() {
                Some(member) => member.send(message).map_err(|e| error_chain(&e)),
                None => return Err(self_lost(&g)),
            }
        };
        sent.map_err(|why| {
            self.lose_coordinator(&why);
            self.lost_reason()
        })
    }

    fn lost_reason(&self) -> String {
        self_lost(&self.generations.borrow())
    }

    /// The coordinator cannot be reached any more: this rank's checkpoints fail from now on
    /// (an image outside every generation would restore an inconsistent job).
    fn lose_coordinator(&self, why: &str) {
        let mut g = self.generations.borrow_mut();
        if g.member.take().is_some() {
            crate::warn!(
                "rank {} lost the job's coordinator ({why}): its checkpoints fail until the \
                 job is restarted; the job runs on",
                self.ctx.rank()
            );
            g.lost = Some(why.to_string());
        }
        let waiting = std::mem::take(&mut g.waiting);
        drop(g);
        for w in waiting {
            respond(
                &w.stream,
                Err(format!("the job's coordinator is gone: {why}")),
            );
        }
    }
}

fn self_lost(g: &Generations) -> String {
    match &g.lost {
        Some(why) => format!(
            "this rank lost the job's coordinator ({why}); a checkpoint of one rank alone \
             would not belong to any generation"
        ),
        None => "this job is not coordinated".to_string(),
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
