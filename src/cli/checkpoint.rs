//! `mlckpt checkpoint PID`.

use super::JobArgs;
use anyhow::{Context, bail};
use mlckpt::image::format::TierKind;
use mlckpt::supervisor::control::{self, Request};
use mlckpt::tiers::config::runtime_dir;
use mlckpt::tracer::dump::CheckpointStats;
use nix::unistd::Pid;

pub fn checkpoint(
    args: &JobArgs,
    pid: i32,
    tier: Option<TierKind>,
    kill: bool,
    json: bool,
) -> anyhow::Result<i32> {
    let request = Request { tier, kill };
    let stats = match ask_supervisor(pid, &request).context("cannot reach the supervisor")? {
        Some(response) => match (response.stats, response.error) {
            (Some(stats), _) => stats,
            (None, error) => bail!(
                "checkpoint of process {pid} failed: {}",
                error.unwrap_or_default()
            ),
        },
        None => direct(args, pid, tier, kill)?,
    };
    print(&stats, json);
    Ok(0)
}

/// Asks the supervisor of `pid`. A process whose parent is an `mlckpt` (`run`, `restore`)
/// has a supervisor even if its control socket is not there yet (it is set up right after
/// the job starts): waited for a few seconds, rather than seizing the process while the
/// supervisor does too.
fn ask_supervisor(
    pid: i32,
    request: &Request,
) -> Result<Option<control::Response>, control::ControlError> {
    const STARTING: std::time::Duration = std::time::Duration::from_secs(5);
    let began = std::time::Instant::now();
    loop {
        let answer = control::ask(&runtime_dir(), pid, request)?;
        if answer.is_some() || !child_of_mlckpt(pid) || began.elapsed() > STARTING {
            return Ok(answer);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Whether `pid`'s parent is an `mlckpt` process.
fn child_of_mlckpt(pid: i32) -> bool {
    mlckpt::tracer::freeze::parent_of(Pid::from_raw(pid))
        .and_then(|ppid| std::fs::read_to_string(format!("/proc/{ppid}/comm")).ok())
        .is_some_and(|comm| comm.trim() == "mlckpt")
}

/// Nobody supervises `pid`: seize it ourselves, and make the copy to a higher tier here.
fn direct(
    args: &JobArgs,
    pid: i32,
    tier: Option<TierKind>,
    kill: bool,
) -> anyhow::Result<CheckpointStats> {
    let ctx = super::context_for_pid(args, pid)?;
    ctx.checkpoint(Pid::from_raw(pid), tier.unwrap_or(TierKind::Local), kill)
        .with_context(|| format!("checkpoint of process {pid} failed"))
}

fn print(stats: &CheckpointStats, json: bool) {
    if json {
        println!("{}", serde_json::to_string(stats).expect("stats serialise"));
    } else {
        println!("{}", stats.path.display());
        mlckpt::info!(
            "{} bytes, {} tier, frozen {:.1} ms, total {:.1} ms",
            stats.bytes,
            stats.tier,
            stats.freeze_ms,
            stats.total_ms
        );
    }
}
