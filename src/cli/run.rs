//! `mlckpt run` and `mlckpt attach`.

use super::{JobArgs, job_name, load_config, rank};
use anyhow::Context;
use mlckpt::supervisor::{self, JobContext};
use nix::unistd::Pid;
use std::process::Command;

pub fn run(args: &JobArgs, argv: &[String]) -> anyhow::Result<i32> {
    let config = load_config(args)?;
    let ctx = JobContext {
        job: job_name(args, &config, &argv[0]),
        rank: rank(args),
        config,
    };
    // Blocked before the child exists, so no signal can slip through between the two;
    // the program itself must start with the mask mlckpt was given.
    let original_mask = nix::sys::signal::SigSet::thread_get_mask()?;
    let signals = supervisor::block_supervisor_signals()?;
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]);
    mlckpt::tracer::sys::restore_mask_on_exec(&mut command, original_mask);
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {}", argv[0]))?;
    let pid = Pid::from_raw(child.id() as i32);
    eprintln!(
        "mlckpt: started {} as PID {pid} (job {}, rank {})",
        argv[0], ctx.job, ctx.rank
    );
    Ok(supervisor::supervise(&ctx, pid, true, signals)?)
}

pub fn attach(args: &JobArgs, pid: i32) -> anyhow::Result<i32> {
    let ctx = super::context_for_pid(args, pid)?;
    let signals = supervisor::block_supervisor_signals()?;
    eprintln!(
        "mlckpt: supervising PID {pid} (job {}, rank {})",
        ctx.job, ctx.rank
    );
    Ok(supervisor::supervise(
        &ctx,
        Pid::from_raw(pid),
        false,
        signals,
    )?)
}
