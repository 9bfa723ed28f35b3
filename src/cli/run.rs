//! `mlckpt run` and `mlckpt attach`.

use super::restore::Resumed;
use super::{JobArgs, job_name, load_config_for_writing, topology};
use anyhow::Context;
use mlckpt::supervisor::{self, JobContext, Lineage};
use mlckpt::tiers::reuse;
use mlckpt::tracer::access::Privileges;
use nix::unistd::Pid;
use std::process::Command;

/// `mlckpt run`; with `resume`, the newest valid image of the job and rank is restored
/// instead of starting the program, when there is one (one job script for the first start
/// and every requeue).
pub fn run(args: &JobArgs, argv: &[String], resume: bool) -> anyhow::Result<i32> {
    check_privileges(true)?;
    let config = load_config_for_writing(args)?;
    let job = job_name(args, &config, &argv[0]);
    let topology = topology(args, &config)?;
    let ctx = JobContext::new(config.clone(), job, topology);
    // A tier that cannot work is a mistake to report before the program starts.
    ctx.check_intervals()?;
    // The program must start with the mask mlckpt was given, read before anything here
    // blocks the supervisor's signals (a coordinated --resume does, to agree).
    let original_mask = nix::sys::signal::SigSet::thread_get_mask()?;
    let mut member = None;
    if resume {
        match super::restore::resume(args, &ctx, &config)? {
            Resumed::Restored(code) => return Ok(code),
            Resumed::Afresh(joined) => member = joined.map(|m| *m),
        }
    }
    supervisor::check_runtime_dir()?;

    // With --resume, earlier images are this run's own past (none was valid, or we would
    // have resumed from it).
    if !resume {
        warn_about_earlier_images(&ctx);
    }
    // Blocked before the child exists, so no signal can slip through between the two.
    let signals = supervisor::block_supervisor_signals()?;
    // Joined before the program starts (a rank that cannot reach its coordinator would run
    // with no checkpoint ever possible), after the mask: its threads must not take the
    // supervisor's SIGCHLD.
    if member.is_none()
        && let Some(settings) = super::restore::coordination_of(&ctx)?
    {
        member = Some(super::restore::join(&ctx, &settings, false)?);
    }
    // Before the child exists: a process its job orphans at once must come to us too.
    nix::sys::prctl::set_child_subreaper(true).context("cannot become a child subreaper")?;
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]);
    mlckpt::tracer::sys::restore_mask_on_exec(&mut command, original_mask);
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {}", argv[0]))?;
    let pid = Pid::from_raw(child.id() as i32);
    mlckpt::info!("started {} as PID {pid} ({})", argv[0], describe(&ctx));
    Ok(supervisor::supervise(
        &ctx,
        pid,
        true,
        signals,
        Lineage::default(),
        member,
    )?)
}

pub fn attach(args: &JobArgs, pid: i32) -> anyhow::Result<i32> {
    check_privileges(false)?;
    let ctx = super::context_for_pid(args, pid)?;
    ctx.check_intervals()?;
    supervisor::check_runtime_dir()?;
    let signals = supervisor::block_supervisor_signals()?;
    let member = match super::restore::coordination_of(&ctx)? {
        Some(settings) => Some(super::restore::join(&ctx, &settings, false)?),
        None => None,
    };
    mlckpt::info!("supervising PID {pid} ({})", describe(&ctx));
    Ok(supervisor::supervise(
        &ctx,
        Pid::from_raw(pid),
        false,
        signals,
        Lineage::default(),
        member,
    )?)
}

/// A run under a name that already has images takes over their numbering, so retention
/// deletes them: say so before it happens (src/tiers/reuse.rs).
fn warn_about_earlier_images(ctx: &JobContext) {
    let keep = ctx.config.storage.keep;
    if let Some(earlier) = reuse::earlier_images(&ctx.paths.local, &ctx.job, ctx.rank(), keep) {
        mlckpt::warn!("{earlier}");
    }
}

/// Refuses to supervise a job whose checkpoints would all fail for want of a privilege, and
/// says now what a restore of its images will need that the caller lacks.
fn check_privileges(own_child: bool) -> anyhow::Result<()> {
    let me = Privileges::current();
    me.check_tracing(own_child)?;
    if let Err(e) = me.check_restore() {
        mlckpt::info!("note: checkpoints will work, but {e}");
    }
    Ok(())
}

/// `job sim, rank 1` and, with several nodes, `node 1 of 2, partner node 0`.
pub fn describe(ctx: &JobContext) -> String {
    let t = &ctx.topology;
    let mut text = format!("job {}, rank {}", ctx.job, t.rank);
    if t.nodes > 1 {
        text.push_str(&format!(", node {} of {}", t.node, t.nodes));
        if let Some(partner) = t.partner_node() {
            text.push_str(&format!(", partner node {partner}"));
        }
    }
    text
}
