//! The supervisor's side of the signal guard (`tracer::guard`, `docs/signals.md`): which
//! signals are intercepted, the batch shell that started mlckpt, what follows the
//! checkpoint of an intercepted signal, and the self-requeue after a checkpoint-and-stop.

use crate::tiers::config::{InterceptAction, ParentShell, SignalsConfig};
use crate::tracer::guard::{Caught, Guard};
use crate::tracer::ptrace::SignalNumber;
use nix::unistd::Pid;

/// The guard for a job, or None when nothing is to be guarded: `[signals] intercept =
/// false` and no batch shell. `own_child`: started by us (run, restore), so our parent
/// may be the batch shell.
pub fn start_guard(config: &SignalsConfig, pid: Pid, own_child: bool) -> Option<Guard> {
    let shell = own_child
        .then(|| batch_shell(config.parent_shell))
        .flatten();
    if !config.intercept && shell.is_none() {
        return None;
    }
    let signals: Vec<i32> = config.actions.iter().map(|(s, _)| *s).collect();
    let mut guard = Guard::start(pid, &signals, config.intercept);
    if let Some(shell) = shell {
        match guard.attach_shell(shell) {
            Ok(()) => crate::info!(
                "guarding the batch shell (process {shell}): its SIGTERM becomes a \
                 checkpoint-and-stop of the job"
            ),
            Err(e) => crate::warn!(
                "{}; without `exec mlckpt ...` in the batch script, a \
                 SIGTERM to the batch shell (scancel --batch, sbatch --signal=B:TERM) will \
                 not reach mlckpt",
                crate::error_chain(&e)
            ),
        }
    }
    Some(guard)
}

/// Our parent, if it is to be guarded as the batch shell.
fn batch_shell(mode: ParentShell) -> Option<Pid> {
    let parent = nix::unistd::getppid();
    match mode {
        ParentShell::Off => None,
        ParentShell::On => Some(parent),
        ParentShell::Auto => (std::env::var_os("SLURM_JOB_ID").is_some()
            && runs_batch_script(parent))
        .then_some(parent),
    }
}

/// Whether process `pid` is a shell running a SLURM batch script: slurmd stores the
/// script as `.../slurm_script` and starts it by its `#!` line, so it is an argument of
/// the interpreter.
fn runs_batch_script(pid: Pid) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        cmdline
            .split(|&b| b == 0)
            .skip(1)
            .any(|arg| arg.ends_with(b"/slurm_script") || arg == b"slurm_script")
    })
}

/// What the supervisor knows of one batch of intercepted signals.
pub struct Intercepted {
    pub caught: Vec<Caught>,
    /// A signal sent to mlckpt itself (SIGTERM of a step, or of `kill`).
    pub own: Option<SignalNumber>,
    /// The guarded batch shell was sent SIGTERM.
    pub shell: bool,
}

impl Intercepted {
    /// The action of the strongest signal: stop before deliver before suppress. The shell's
    /// SIGTERM always stops the job: the script's end is near.
    pub fn action(&self, config: &SignalsConfig) -> InterceptAction {
        let configured = |sig: SignalNumber| {
            config.action(sig.0).unwrap_or(if sig.0 == libc::SIGTERM {
                InterceptAction::Stop
            } else {
                InterceptAction::Suppress
            })
        };
        let shell = self.shell.then_some(InterceptAction::Stop);
        self.caught
            .iter()
            .map(|c| configured(c.sig))
            .chain(self.own.map(configured))
            .chain(shell)
            .max()
            .unwrap_or(InterceptAction::Suppress)
    }

    /// `SIGTERM to process 12 (and 3 more), mlckpt`, for messages.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(first) = self.caught.first() {
            let mut text = format!("{} to thread {}", first.sig, first.tid);
            if self.caught.len() > 1 {
                text.push_str(&format!(" (and {} more)", self.caught.len() - 1));
            }
            parts.push(text);
        }
        if let Some(own) = self.own {
            parts.push(format!("{own} to mlckpt"));
        }
        if self.shell {
            parts.push("SIGTERM to the batch shell".to_string());
        }
        parts.join(", ")
    }
}

/// After a checkpoint-and-stop: `scontrol requeue $SLURM_JOB_ID` if `[slurm] requeue` asks
/// for it. Its outcome is reported; a failure is a warning only (the image is safe).
pub fn requeue() {
    let Some(job) = std::env::var_os("SLURM_JOB_ID").filter(|j| !j.is_empty()) else {
        crate::warn!(
            "[slurm] requeue is set, but SLURM_JOB_ID is not: not running \
             under SLURM, nothing to requeue"
        );
        return;
    };
    let job = job.to_string_lossy().into_owned();
    match std::process::Command::new("scontrol")
        .args(["requeue", &job])
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {
            crate::info!("requeued SLURM job {job} (scontrol requeue {job})");
        }
        Ok(out) => crate::warn!(
            "scontrol requeue {job} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => crate::warn!("cannot run scontrol requeue {job}: {e}"),
    }
}
