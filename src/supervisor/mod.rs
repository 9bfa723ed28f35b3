//! Supervision of a running target: interval checkpoints, checkpoints on request (control
//! socket, SIGUSR1), checkpoint-and-stop on SIGTERM, and the target's exit status.

pub mod control;

use crate::image::format::TierKind;
use crate::image::store;
use crate::tiers::config::{Config, runtime_dir};
use crate::tracer::dump::{self, CheckpointRequest, CheckpointStats, DumpError};
use crate::tracer::ptrace::{self, Stop};
use crate::tracer::sys;
use control::{Request, Response};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("the {tier} tier is not configured (set [storage] {tier} in the config)")]
    TierNotConfigured { tier: TierKind },
    #[error(
        "checkpoints to the {tier} tier are not supported yet: images are written to the \
         local tier only"
    )]
    TierUnsupported { tier: TierKind },
    #[error(transparent)]
    Dump(#[from] DumpError),
    #[error("supervisor setup failed ({what})")]
    Setup {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Which job and rank images belong to, and where they go.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub config: Config,
    pub job: String,
    pub rank: u32,
}

impl JobContext {
    pub fn tier_root(&self, tier: TierKind) -> Option<PathBuf> {
        match tier {
            TierKind::Local => Some(self.config.storage.local.clone()),
            TierKind::Global => self.config.storage.global.clone(),
            TierKind::Partner => None,
        }
    }

    pub fn rank_dir(&self, tier: TierKind) -> Option<PathBuf> {
        self.tier_root(tier)
            .map(|root| store::rank_dir(&root, &self.job, self.rank))
    }

    /// One counter per job and rank across tiers.
    pub fn next_seq(&self) -> u64 {
        let dirs: Vec<PathBuf> = TierKind::ALL
            .iter()
            .filter_map(|&t| self.rank_dir(t))
            .collect();
        store::highest_seq(&dirs) + 1
    }

    /// Checkpoints `pid` now.
    pub fn checkpoint(
        &self,
        pid: Pid,
        tier: TierKind,
        kill: bool,
    ) -> Result<CheckpointStats, SuperviseError> {
        if tier != TierKind::Local {
            return Err(match self.tier_root(tier) {
                None => SuperviseError::TierNotConfigured { tier },
                Some(_) => SuperviseError::TierUnsupported { tier },
            });
        }
        let rank_dir = self.rank_dir(tier).expect("local tier always configured");
        Ok(dump::checkpoint(&CheckpointRequest {
            pid,
            job: &self.job,
            rank: self.rank,
            tier,
            rank_dir: &rank_dir,
            seq: self.next_seq(),
            kill,
        })?)
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

/// Supervises `pid` until it exits; returns the exit code to pass on.
pub fn supervise(
    ctx: &JobContext,
    pid: Pid,
    is_child: bool,
    signals: SigSet,
) -> Result<i32, SuperviseError> {
    let setup = |what| move |source: std::io::Error| SuperviseError::Setup { what, source };
    let (listener, socket) =
        control::listen(&runtime_dir(), pid.as_raw()).map_err(setup("control socket"))?;
    let _cleanup = RemoveOnDrop(socket);
    let sigfd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC)
        .map_err(|e| setup("signalfd")(e.into()))?;
    let pidfd = sys::pidfd_open(pid).map_err(|e| setup("pidfd")(e.into()))?;
    let interval = ctx.config.interval.local;
    let mut next_due = (interval > Duration::ZERO).then(|| Instant::now() + interval);
    loop {
        let timeout = next_due.map_or(PollTimeout::NONE, |due| {
            let ms = due.saturating_duration_since(Instant::now()).as_millis();
            PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::MAX)
        });
        let mut fds = [
            PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(setup("poll")(e.into())),
        }
        let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
        let (exited, asked, signalled) = (ready(0), ready(1), ready(2));
        if exited {
            return Ok(reap(pid, is_child));
        }
        if asked {
            serve_requests(ctx, pid, &listener);
        }
        if signalled && let Ok(Some(info)) = sigfd.read_signal() {
            on_signal(ctx, pid, info.ssi_signo as i32);
        }
        if next_due.is_some_and(|due| Instant::now() >= due) {
            report(
                ctx.checkpoint(pid, TierKind::Local, false),
                "interval checkpoint",
            );
            next_due = Some(Instant::now() + interval);
        }
    }
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

fn serve_requests(ctx: &JobContext, pid: Pid, listener: &std::os::unix::net::UnixListener) {
    while let Ok((stream, _)) = listener.accept() {
        let response = match control::read_request(&stream) {
            Ok(Request { tier, kill }) => {
                let result = ctx.checkpoint(pid, tier.unwrap_or(TierKind::Local), kill);
                if let Err(e) = &result {
                    eprintln!("mlckpt: checkpoint of {pid} failed: {}", error_chain(e));
                }
                match result {
                    Ok(stats) => Response {
                        stats: Some(stats),
                        error: None,
                    },
                    Err(e) => Response {
                        stats: None,
                        error: Some(error_chain(&e)),
                    },
                }
            }
            Err(e) => Response {
                stats: None,
                error: Some(format!("bad request: {e}")),
            },
        };
        let _ = control::send_response(&stream, &response);
    }
}

fn on_signal(ctx: &JobContext, pid: Pid, signo: i32) {
    if signo == libc::SIGUSR1 {
        report(
            ctx.checkpoint(pid, TierKind::Local, false),
            "checkpoint on SIGUSR1",
        );
    } else if signo == libc::SIGTERM {
        // Preemption: keep the newest state, then end the job.
        let result = ctx.checkpoint(pid, TierKind::Local, true);
        let failed = result.is_err();
        report(result, "checkpoint on SIGTERM");
        if failed {
            let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
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
