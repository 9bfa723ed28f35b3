//! Supervision of a running target: interval checkpoints on every tier's schedule,
//! checkpoints on request (control socket, SIGUSR1), checkpoint-and-stop on SIGTERM, and the
//! target's exit status.
//!
//! Every checkpoint is written locally while the target is frozen (as briefly as the dump
//! allows); copies to the partner and global tiers are made afterwards from the committed
//! local image by [`copier`] threads, while the target runs on.

pub mod control;
mod copier;

use crate::image::format::TierKind;
use crate::image::store;
use crate::tiers::config::{Config, runtime_dir};
use crate::tiers::layout::RankPaths;
use crate::tiers::placement::{Copied, PlaceError, Placer};
use crate::tiers::retention;
use crate::tiers::schedule::Schedule;
use crate::tiers::topology::Topology;
use crate::tracer::dump::{self, CheckpointRequest, CheckpointStats, DumpError};
use crate::tracer::ptrace::{self, Stop};
use crate::tracer::sys;
use control::{Request, Response};
use copier::{Copier, Reply};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("the {tier} tier is not available: {why}")]
    TierUnavailable { tier: TierKind, why: String },
    #[error(transparent)]
    Dump(#[from] DumpError),
    #[error(
        "the checkpoint was committed locally ({}), but the copy to the {tier} tier failed",
        local.display()
    )]
    Copy {
        tier: TierKind,
        local: PathBuf,
        #[source]
        source: PlaceError,
    },
    #[error("supervisor setup failed ({what})")]
    Setup {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
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
        let timed = [
            (TierKind::Partner, i.partner),
            (TierKind::Global, i.global),
        ];
        timed
            .into_iter()
            .filter(|(_, every)| !every.is_zero())
            .try_for_each(|(tier, _)| self.check_tier(tier))
    }

    /// Writes a local image of `pid`, then deletes local images beyond `keep`, sparing
    /// those in `in_use` (being copied).
    pub fn checkpoint_local(
        &self,
        pid: Pid,
        kill: bool,
        in_use: &BTreeSet<PathBuf>,
    ) -> Result<CheckpointStats, SuperviseError> {
        let stats = dump::checkpoint(&CheckpointRequest {
            pid,
            job: &self.job,
            rank: self.rank(),
            tier: TierKind::Local,
            rank_dir: &self.paths.local,
            seq: self.next_seq(),
            kill,
            full_every: self.config.image.full_every,
        })?;
        let mut protect = in_use.clone();
        protect.insert(stats.path.clone());
        let keep = self.config.storage.keep;
        match retention::prune(&self.paths.local, keep, stats.seq, &protect) {
            Ok(deleted) => deleted
                .iter()
                .for_each(|p| eprintln!("mlckpt: retention deleted {}", p.display())),
            Err(e) => eprintln!("mlckpt: retention failed: {}", error_chain(&e)),
        }
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
        let stats = self.checkpoint_local(pid, kill, &BTreeSet::new())?;
        let Some(dest) = self.paths.destination(tier) else {
            return Ok(stats);
        };
        let copied = Placer::new(dest, self.config.storage.keep).place(&stats.path);
        placed(stats, tier, copied, started)
    }
}

/// The stats of a checkpoint placed on `tier`: the copy's path, the time until it was
/// committed; or why the copy failed.
fn placed(
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

/// How the supervised process ended, as the supervisor's own exit code (128+N for signal N).
pub fn exit_code(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
        _ => 1,
    }
}

/// Blocks the signals the supervisor handles itself, before any child is started: SIGINT
/// from a terminal reaches the target directly (same process group) and ends it; the
/// supervisor just reports the exit.
pub fn block_supervisor_signals() -> Result<SigSet, SuperviseError> {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGUSR1,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        set.add(s);
    }
    set.thread_block().map_err(|e| SuperviseError::Setup {
        what: "block signals",
        source: e.into(),
    })?;
    Ok(set)
}

/// One supervised target and the machinery around it.
struct Supervisor<'a> {
    ctx: &'a JobContext,
    pid: Pid,
    copier: Copier,
    schedule: Schedule,
}

/// Supervises `pid` until it exits; returns the exit code to pass on. Copies still under
/// way when it exits are finished first.
pub fn supervise(
    ctx: &JobContext,
    pid: Pid,
    is_child: bool,
    signals: SigSet,
) -> Result<i32, SuperviseError> {
    ctx.check_intervals()?;
    let setup = |what| move |source: std::io::Error| SuperviseError::Setup { what, source };
    let (listener, socket) =
        control::listen(&runtime_dir(), pid.as_raw()).map_err(setup("control socket"))?;
    let cleanup = RemoveOnDrop(socket);
    let sigfd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC)
        .map_err(|e| setup("signalfd")(e.into()))?;
    let pidfd = sys::pidfd_open(pid).map_err(|e| setup("pidfd")(e.into()))?;
    let mut sup = Supervisor {
        ctx,
        pid,
        copier: Copier::start(&ctx.paths, ctx.config.storage.keep),
        schedule: Schedule::new(&ctx.config.interval, |t| ctx.paths.has(t), Instant::now()),
    };
    loop {
        let mut fds = [
            PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, sup.poll_timeout()) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(setup("poll")(e.into())),
        }
        let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
        let (exited, asked, signalled) = (ready(0), ready(1), ready(2));
        if exited {
            let code = reap(pid, is_child);
            // Nobody is answered any more: close the socket before waiting for copies.
            drop((listener, cleanup));
            sup.copier.finish();
            return Ok(code);
        }
        if asked {
            sup.serve_requests(&listener);
        }
        if signalled && let Ok(Some(info)) = sigfd.read_signal() {
            sup.on_signal(info.ssi_signo as i32);
        }
        if let Some(tier) = sup.schedule.take_due(Instant::now()) {
            sup.interval_checkpoint(tier);
        }
    }
}

impl Supervisor<'_> {
    /// Until the next checkpoint is due, rounded up so the wake-up is not early.
    fn poll_timeout(&self) -> PollTimeout {
        self.schedule
            .next_deadline()
            .map_or(PollTimeout::NONE, |due| {
                let left = due.saturating_duration_since(Instant::now());
                let ms = left.as_micros().div_ceil(1000).min(60_000);
                PollTimeout::try_from(ms as i32).unwrap_or(PollTimeout::MAX)
            })
    }

    /// A local checkpoint; for a higher tier, a copy queued after it, whose outcome goes
    /// to `reply(local stats)`.
    fn checkpoint(
        &self,
        tier: TierKind,
        kill: bool,
        reply: impl FnOnce(&CheckpointStats) -> Option<Reply>,
    ) -> Result<CheckpointStats, SuperviseError> {
        let stats = self
            .ctx
            .checkpoint_local(self.pid, kill, &self.copier.in_use())?;
        if tier != TierKind::Local {
            self.copier.submit(tier, &stats.path, reply(&stats));
        }
        Ok(stats)
    }

    fn interval_checkpoint(&self, tier: TierKind) {
        let what = format!("interval checkpoint ({tier})");
        report(self.checkpoint(tier, false, |_| None), &what);
    }

    fn serve_requests(&self, listener: &UnixListener) {
        while let Ok((stream, _)) = listener.accept() {
            match control::read_request(&stream) {
                Ok(request) => self.serve(request, stream),
                Err(e) => respond(&stream, Err(format!("bad request: {e}"))),
            }
        }
    }

    /// Answers at once for the local tier; for a higher one, from the copy thread when the
    /// copy is committed (the poll loop goes on meanwhile).
    fn serve(&self, Request { tier, kill }: Request, stream: UnixStream) {
        let tier = tier.unwrap_or(TierKind::Local);
        let started = Instant::now();
        let later = stream.try_clone();
        let result = self.ctx.check_tier(tier).and_then(|()| {
            self.checkpoint(tier, kill, |stats| {
                let stats = stats.clone();
                let reply: Reply = Box::new(move |copied| {
                    if let Ok(stream) = later {
                        let result = placed(stats, tier, copied, started);
                        respond(&stream, result.map_err(|e| error_chain(&e)));
                    }
                });
                Some(reply)
            })
        });
        match result {
            Ok(stats) if tier == TierKind::Local => respond(&stream, Ok(stats)),
            Ok(_) => {}
            Err(e) => {
                eprintln!(
                    "mlckpt: checkpoint of {} failed: {}",
                    self.pid,
                    error_chain(&e)
                );
                respond(&stream, Err(error_chain(&e)));
            }
        }
    }

    fn on_signal(&self, signo: i32) {
        if signo == libc::SIGUSR1 {
            report(
                self.checkpoint(TierKind::Local, false, |_| None),
                "checkpoint on SIGUSR1",
            );
        } else if signo == libc::SIGTERM {
            // Preemption: the newest state to the safest tier, then end the job. The copy
            // finishes before the supervisor exits.
            let tier = self.ctx.paths.highest();
            let result = self.checkpoint(tier, true, |_| None);
            let failed = result.is_err();
            report(result, &format!("checkpoint on SIGTERM ({tier})"));
            if failed {
                let _ = nix::sys::signal::kill(self.pid, Signal::SIGTERM);
            }
        }
    }
}

fn respond(stream: &UnixStream, result: Result<CheckpointStats, String>) {
    let response = match result {
        Ok(stats) => Response {
            stats: Some(stats),
            error: None,
        },
        Err(error) => Response {
            stats: None,
            error: Some(error),
        },
    };
    let _ = control::send_response(stream, &response);
}

fn reap(pid: Pid, is_child: bool) -> i32 {
    if !is_child {
        eprintln!("mlckpt: process {pid} exited (not our child: its exit status is unknown)");
        return 0;
    }
    loop {
        match waitpid(pid, None) {
            Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                return exit_code(status);
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            // A checkpoint's tracer wait collected the exit first.
            Err(_) => {
                return match ptrace::take_collected_exit(pid) {
                    Some(Stop::Exited(code)) => code,
                    Some(Stop::Killed(sig)) => 128 + sig as i32,
                    _ => 1,
                };
            }
        }
    }
}

fn report(result: Result<CheckpointStats, SuperviseError>, what: &str) {
    match result {
        Ok(s) => eprintln!(
            "mlckpt: {what}: {} ({} bytes, frozen {:.1} ms, total {:.1} ms)",
            s.path.display(),
            s.bytes,
            s.freeze_ms,
            s.total_ms
        ),
        // The job keeps running: a failed checkpoint must not take it down.
        Err(e) => eprintln!("mlckpt: {what} failed: {}", error_chain(&e)),
    }
}

/// An error with its causes, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
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
