//! Supervision of a running target: interval checkpoints on every tier's schedule,
//! checkpoints on request (control socket, SIGUSR1), checkpoint-and-stop on SIGTERM, and the
//! target's exit status.
//!
//! Every checkpoint is written locally while the target is frozen (as briefly as the dump
//! allows); copies to the partner and global tiers are made afterwards from the committed
//! local image by [`copier`] threads, while the target runs on.

mod context;
pub mod control;
mod copier;
mod generations;
pub mod job_lock;
mod signals;

pub use context::{JobContext, Lineage};

use crate::image::format::TierKind;
use crate::tiers::config::InterceptAction;
use crate::tiers::config::runtime_dir;
use crate::tiers::placement::{Gate, PlaceError};
use crate::tiers::schedule::Schedule;
use crate::tracer::access::TargetError;
use crate::tracer::dump::{CheckpointStats, DumpError};
use crate::tracer::freeze::FreezeError;
use crate::tracer::ptrace::{self, SignalNumber, Stop};
use crate::tracer::sys;
use context::placed;
use control::{Request, Response};
use copier::{Copier, Reply};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use std::cell::RefCell;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
    #[error(transparent)]
    Key(#[from] crate::image::auth::AuthError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error(transparent)]
    JobLock(#[from] job_lock::JobLockError),
    /// A coordinated job's generation did not happen (the message names the rank).
    #[error("{0}")]
    Generation(String),
    #[error("supervisor setup failed ({what})")]
    Setup {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Checks, before a job is started or restored, that the control socket can be placed
/// safely (see [`control::private_runtime_dir`]).
pub fn check_runtime_dir() -> Result<(), SuperviseError> {
    Ok(control::private_runtime_dir(&runtime_dir())?)
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
        Signal::SIGCHLD,
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
    /// Held while a checkpoint runs: copies then wait rather than compete with the freeze.
    gate: Gate,
    schedule: Schedule,
    lineage: RefCell<Lineage>,
    /// The job was checkpointed and ended on SIGTERM: it did not fail.
    stopped: std::cell::Cell<bool>,
    /// The signal guard (`docs/signals.md`); None with `[signals] intercept = false` and
    /// no batch shell to guard.
    guard: RefCell<Option<crate::tracer::guard::Guard>>,
    /// In a coordinated job: the coordinator, and this rank's generations in flight.
    generations: RefCell<generations::Generations>,
}

/// The longest the supervisor of a guarded job sleeps without looking for stops.
const GUARD_POLL: Duration = Duration::from_secs(1);

/// The exit code of `run`/`restore` when the job was checkpointed and ended on SIGTERM
/// (preemption, a time limit): not a crash, resume it with `run --resume`.
pub const CHECKPOINTED_AND_STOPPED: i32 = 3;

/// Supervises `pid` until it exits; returns the exit code to pass on. Copies still under
/// way when it exits are finished first.
pub fn supervise(
    ctx: &JobContext,
    pid: Pid,
    is_child: bool,
    signals: SigSet,
    lineage: Lineage,
    member: Option<crate::coordination::member::Member>,
) -> Result<i32, SuperviseError> {
    ctx.check_intervals()?;
    let setup = |what| move |source: std::io::Error| SuperviseError::Setup { what, source };
    // The job's processes whose parent dies (a checkpoint --kill ends the whole tree) come
    // to us, to be reaped: left to init, they might stay zombies, holding PIDs a restore
    // needs.
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| setup("child subreaper")(e.into()))?;
    // Tells `mlckpt forget` the job is alive (taken before the socket is there, so anyone
    // who sees the socket sees the lock); waits while `forget` deletes the job's images.
    let _job_lock = job_lock::supervising(&runtime_dir(), &ctx.job)?;
    let (listener, socket) = control::listen(&runtime_dir(), pid.as_raw())?;
    let cleanup = RemoveOnDrop(socket);
    let sigfd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC)
        .map_err(|e| setup("signalfd")(e.into()))?;
    let pidfd = sys::pidfd_open(pid).map_err(|e| setup("pidfd")(e.into()))?;
    let gate = Gate::default();
    let mut sup = Supervisor {
        ctx,
        pid,
        copier: Copier::start(
            &ctx.paths,
            ctx.config.storage.keep,
            ctx.config.image.compress,
            &gate,
            member.is_some(),
        ),
        gate,
        // In a coordinated job the coordinator keeps the schedule, for every rank.
        schedule: Schedule::new(
            &ctx.config.interval,
            |t| member.is_none() && ctx.paths.has(t),
            Instant::now(),
        ),
        lineage: RefCell::new(lineage),
        stopped: std::cell::Cell::new(false),
        guard: RefCell::new(signals::start_guard(&ctx.config.signals, pid, is_child)),
        generations: RefCell::new(generations::Generations::new(member)),
    };
    // Said now, not at the first checkpoint an hour later: what will not come back as it is.
    let refuse = ctx.config.image.outside_peers == crate::tiers::config::OutsidePeers::Refuse;
    match crate::tracer::dump::check_files(pid, refuse, ctx.config.image.stdio_files) {
        Ok(files) => crate::tracer::dump::warn_once(&files.warnings),
        Err(e) => crate::warn!(
            "checkpoints of process {pid} will fail while this lasts: {}",
            error_chain(&e)
        ),
    }
    if ctx.config.image.write_tracking {
        // Now rather than at the first checkpoint: setting it up stops the target briefly,
        // and that checkpoint's freeze should be its only stop.
        let mut stopped = Duration::ZERO;
        let _ = sup.lineage.get_mut().tracking.ready(pid, &mut stopped);
    }
    loop {
        let (exited, asked, signalled, coordinator) = {
            let generations = sup.generations.borrow();
            let member_fd = generations.member.as_ref().map(|m| m.fd());
            let mut fds = vec![
                PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
            ];
            fds.extend(member_fd.map(|fd| PollFd::new(fd, PollFlags::POLLIN)));
            let timeout = if sup.coordinator_has_pending() {
                PollTimeout::ZERO
            } else {
                sup.poll_timeout()
            };
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(setup("poll")(e.into())),
            }
            let ready = |i: usize| {
                fds.get(i)
                    .and_then(PollFd::revents)
                    .is_some_and(|r| !r.is_empty())
            };
            (ready(0), ready(1), ready(2), ready(3))
        };
        if coordinator || sup.coordinator_has_pending() {
            sup.serve_coordinator();
        }
        if exited {
            if let Some(guard) = sup.guard.get_mut() {
                guard.collect();
            }
            let (mut code, exited_itself) = reap(pid, is_child);
            if sup.stopped.get() && code == 128 + libc::SIGKILL {
                code = CHECKPOINTED_AND_STOPPED;
            }
            if exited_itself && !sup.stopped.get() {
                let finished = crate::tiers::finished::Finished {
                    after_seq: ctx.next_seq() - 1,
                    exit_code: code,
                };
                for problem in crate::tiers::finished::mark(&ctx.paths, finished) {
                    crate::warn!("{problem}");
                }
            }
            // The job's other processes, if any are left, run on unguarded.
            drop(sup.guard.get_mut().take());
            reap_orphans(pid);
            // Nobody new is answered any more: close the socket before waiting for copies.
            drop((listener, cleanup));
            // Copies report to the coordinator through a handle of their own.
            // Copy threads run on meanwhile: a generation's copies complete it.
            sup.finish_generations();
            sup.copier.finish();
            let member = sup.generations.get_mut().member.take();
            if let Some(member) = member {
                member.leave();
            }
            if code == CHECKPOINTED_AND_STOPPED && sup.stopped.get() && ctx.config.slurm.requeue {
                signals::requeue();
            }
            return Ok(code);
        }
        if asked {
            sup.serve_requests(&listener);
        }
        if signalled && let Ok(Some(info)) = sigfd.read_signal() {
            if info.ssi_signo != Signal::SIGCHLD as u32 {
                sup.on_signal(info.ssi_signo as i32);
            } else if sup.guard.get_mut().is_none() {
                reap_orphans(pid);
            }
        }
        if let Some(guard) = sup.guard.get_mut() {
            // Stops of the guarded job, and exits: one SIGCHLD may stand for many.
            guard.collect();
        }
        sup.on_intercepted(None);
        if let Some(tier) = sup.schedule.take_due(Instant::now()) {
            sup.interval_checkpoint(tier);
        }
    }
}

impl Supervisor<'_> {
    /// Until the next checkpoint is due, rounded up so the wake-up is not early; with a
    /// guard, at most [`GUARD_POLL`]: stops of the job are announced by SIGCHLD only, and a
    /// thread of ours that does not block it (one of a library's pool) would swallow it.
    fn poll_timeout(&self) -> PollTimeout {
        let cap = if self.guard.borrow().is_some() {
            GUARD_POLL
        } else {
            Duration::from_secs(60)
        };
        let left = self.schedule.next_deadline().map_or(cap, |due| {
            due.saturating_duration_since(Instant::now()).min(cap)
        });
        let ms = left.as_micros().div_ceil(1000);
        i32::try_from(ms)
            .ok()
            .and_then(|ms| PollTimeout::try_from(ms).ok())
            .unwrap_or(PollTimeout::MAX)
    }

    /// A local checkpoint; for a higher tier, a copy queued after it, whose outcome goes
    /// to `reply(local stats)`.
    fn checkpoint(
        &self,
        tier: TierKind,
        kill: bool,
        reply: impl FnOnce(&CheckpointStats) -> Option<Reply>,
    ) -> Result<CheckpointStats, SuperviseError> {
        let stats = self.checkpoint_local(kill, None)?;
        if tier != TierKind::Local {
            self.copier.submit(tier, &stats.path, reply(&stats));
        }
        Ok(stats)
    }

    /// A local image (as `part` of a generation, numbered by it), copies held back
    /// meanwhile.
    fn checkpoint_local(
        &self,
        kill: bool,
        part: Option<&context::GenerationPart>,
    ) -> Result<CheckpointStats, SuperviseError> {
        if let Some(guard) = self.guard.borrow_mut().as_mut() {
            // Threads stopped at their exit are let go first, rather than met by the freeze.
            guard.collect();
        }
        let held = self.gate.hold();
        let mut lineage = self.lineage.borrow_mut();
        let stats = self.ctx.checkpoint_local(
            self.pid,
            kill,
            &self.copier.in_use(),
            Some(&mut *lineage),
            part,
        );
        drop(held);
        drop(lineage);
        if let Some(guard) = self.guard.borrow_mut().as_mut() {
            // A thread the checkpoint seized itself (not the guard's) was let go again.
            guard.cover();
        }
        stats
    }

    /// A checkpoint to `tier` for a signal: in a coordinated job, a generation of every
    /// rank, waited for.
    fn checkpoint_for_signal(
        &self,
        tier: TierKind,
        stop: bool,
    ) -> Result<CheckpointStats, SuperviseError> {
        if self.coordinated() {
            self.generation_now(tier, stop)
        } else {
            self.checkpoint(tier, stop, |_| None)
        }
    }

    fn interval_checkpoint(&self, tier: TierKind) {
        let what = format!("interval checkpoint ({tier})");
        report(self.checkpoint(tier, false, |_| None), &what);
    }

    fn serve_requests(&self, listener: &UnixListener) {
        while let Ok((stream, _)) = listener.accept() {
            if let Err(refused) = control::check_client(&stream) {
                crate::info!("control socket: {refused}");
                respond(&stream, Err(refused));
                continue;
            }
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
        if self.coordinated() {
            return match self.ctx.check_tier(tier) {
                Ok(()) => self.ask_generation(tier, kill, Some(stream)),
                Err(e) => respond(&stream, Err(error_chain(&e))),
            };
        }
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
                crate::info!("checkpoint of {} failed: {}", self.pid, error_chain(&e));
                respond(&stream, Err(error_chain(&e)));
            }
        }
    }

    fn on_signal(&self, signo: i32) {
        if signo == libc::SIGUSR1 && self.coordinated() {
            self.ask_generation(TierKind::Local, false, None);
        } else if signo == libc::SIGUSR1 {
            report(
                self.checkpoint(TierKind::Local, false, |_| None),
                "checkpoint on SIGUSR1",
            );
        } else if signo == libc::SIGTERM && self.guard.borrow().is_some() {
            self.on_intercepted(Some(SignalNumber(signo)));
        } else if signo == libc::SIGTERM {
            // Preemption: the newest state to the safest tier, then end the job. The copy
            // finishes before the supervisor exits.
            let tier = self.ctx.paths.highest();
            let result = self.checkpoint_for_signal(tier, true);
            let failed = result.is_err();
            self.stopped.set(!failed);
            report(result, &format!("checkpoint on SIGTERM ({tier})"));
            if failed {
                let _ = nix::sys::signal::kill(self.pid, Signal::SIGTERM);
            }
        }
    }
}

impl Supervisor<'_> {
    /// Checkpoints the job for the signals the guard intercepted (if any; `own`: a signal
    /// to mlckpt itself), then does what `[signals]` says: ends the job, hands the signals
    /// on, or drops them. Intercepted signals that come while the checkpoint runs (a step
    /// signal reaches every process within microseconds) belong to this checkpoint: they
    /// are gathered, not turned into another one.
    fn on_intercepted(&self, own: Option<SignalNumber>) {
        let mut batch = {
            let mut guard = self.guard.borrow_mut();
            let Some(guard) = guard.as_mut() else { return };
            guard.collect();
            signals::Intercepted {
                caught: crate::tracer::guard::take_caught(),
                own,
                shell: guard.shell_terminated(),
            }
        };
        if batch.caught.is_empty() && batch.own.is_none() && !batch.shell {
            return;
        }
        let config = &self.ctx.config.signals;
        let action = batch.action(config);
        let tier = self.ctx.paths.highest();
        let result = self.checkpoint_for_signal(tier, action == InterceptAction::Stop);
        let Some(guard) = &mut *self.guard.borrow_mut() else {
            return;
        };
        guard.collect();
        batch.caught.extend(crate::tracer::guard::take_caught());
        let ok = result.is_ok();
        let then = match action {
            InterceptAction::Stop => "then stop the job",
            InterceptAction::Deliver => "then deliver",
            InterceptAction::Suppress => "signal dropped",
        };
        report(
            result,
            &format!("checkpoint on {} ({tier}, {then})", batch.describe()),
        );
        match action {
            InterceptAction::Stop if ok => self.stopped.set(true),
            InterceptAction::Suppress => {}
            // Deliver, or a stop whose checkpoint failed: the job gets its signals, as it
            // would without mlckpt.
            _ => {
                guard.deliver(&batch.caught);
                let to_root = batch
                    .own
                    .or(batch.shell.then_some(SignalNumber(libc::SIGTERM)));
                if let Some(sig) = to_root.filter(|_| batch.caught.is_empty()) {
                    guard.deliver_to_process(self.pid, sig);
                }
            }
        }
        if batch.shell && ok {
            // The script goes on after mlckpt (exit code 3); the shell is not ours.
            guard.release_shell();
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

/// The exit code to pass on, and whether the program exited by itself (not by a signal;
/// unknown for a process that is not our child).
fn reap(pid: Pid, is_child: bool) -> (i32, bool) {
    if !is_child {
        crate::info!("process {pid} exited (not our child: its exit status is unknown)");
        return (0, false);
    }
    loop {
        // The raw status: nix cannot name a real-time signal, and a job may die of one.
        match sys::wait_status(pid, 0) {
            Ok(Some(status)) if libc::WIFEXITED(status) => {
                return (libc::WEXITSTATUS(status), true);
            }
            Ok(Some(status)) if libc::WIFSIGNALED(status) => {
                return (128 + libc::WTERMSIG(status), false);
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            // A checkpoint's tracer wait collected the exit first.
            Err(_) => {
                return match ptrace::take_collected_exit(pid) {
                    Some(Stop::Exited(code)) => (code, true),
                    Some(Stop::Killed(sig)) => (128 + sig.0, false),
                    _ => (1, false),
                };
            }
        }
    }
}

/// Reaps the exited children that are not the job's root: processes of the job orphaned
/// and handed to us as their subreaper. The root's exit is `reap`'s to collect.
fn reap_orphans(root: Pid) {
    while let Some(pid) = sys::exited_child() {
        if pid == root.as_raw() {
            return;
        }
        // Not collectable after all: leave it for the next SIGCHLD rather than spin.
        if !matches!(
            sys::wait_status(Pid::from_raw(pid), libc::WNOHANG),
            Ok(Some(_))
        ) {
            return;
        }
    }
}

fn report(result: Result<CheckpointStats, SuperviseError>, what: &str) {
    match result {
        Ok(s) => crate::info!(
            "{what}: {} ({} bytes, frozen {:.1} ms, total {:.1} ms)",
            s.path.display(),
            s.bytes,
            s.freeze_ms,
            s.total_ms
        ),
        // A job that ends while its checkpoint is due is no failure: the supervisor is
        // about to collect its exit.
        Err(SuperviseError::Dump(DumpError::Target(
            e @ (TargetError::Exited { .. } | TargetError::Gone { .. }),
        ))) => crate::info!("{what} skipped: {e}"),
        // Or met at its exit by the freeze.
        Err(SuperviseError::Dump(DumpError::Freeze(e @ FreezeError::NoProcess { .. }))) => {
            crate::info!("{what} skipped: {e}")
        }
        // The job keeps running: a failed checkpoint must not take it down.
        Err(e) => crate::info!("{what} failed: {}", error_chain(&e)),
    }
}

pub use crate::error_chain;

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
