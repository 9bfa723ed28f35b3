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
    let stats =
        match control::ask(&runtime_dir(), pid, &request).context("cannot reach the supervisor")? {
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
        eprintln!(
            "mlckpt: {} bytes, {} tier, frozen {:.1} ms, total {:.1} ms",
            stats.bytes, stats.tier, stats.freeze_ms, stats.total_ms
        );
    }
}
