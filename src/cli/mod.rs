//! Command-line parsing and wiring; each verb lives in its own file.

mod checkpoint;
mod forget;
mod list;
mod restore;
mod run;
mod verify;

use clap::{Args, Parser, Subcommand};
use mlckpt::image::format::TierKind;
use mlckpt::supervisor::{JobContext, SuperviseError};
use mlckpt::tiers::config::{Config, ConfigError};
use mlckpt::tiers::topology::{Env, Topology, TopologyError};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "mlckpt",
    version,
    about = "Checkpoint and restore running Linux processes, on several storage tiers",
    after_help = "Exit codes: 0 ok (run/restore: the program's own exit status), 1 error, \
                  2 usage or config error, 3 the job was checkpointed and ended on SIGTERM \
                  (preemption: resume it with `run --resume`), 128+N the program was killed \
                  by signal N."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More details in mlckpt's messages (-v); the log file gets them too
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only warnings and errors on stderr (the log file still gets every normal message)
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Also append mlckpt's messages, timestamped, to FILE
    #[arg(long, global = true, value_name = "FILE")]
    log_file: Option<PathBuf>,
}

#[derive(Args, Clone, Default)]
pub struct JobArgs {
    /// Config file (default: ./mlckpt.toml, then ~/.config/mlckpt/mlckpt.toml, then built-in defaults)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Job name (default: [job] name in the config, else the program's file name)
    #[arg(long, value_name = "NAME", value_parser = parse_job_name)]
    pub job: Option<String>,
    /// Rank of this process (default: MLCKPT_RANK, SLURM_PROCID, OMPI_COMM_WORLD_RANK, PMI_RANK, else 0)
    #[arg(long, value_name = "R")]
    pub rank: Option<u32>,
}

#[derive(Subcommand)]
enum Command {
    /// Start PROG under supervision and checkpoint it on the configured intervals
    Run {
        #[command(flatten)]
        job: JobArgs,
        /// Restore the newest valid image of this job and rank instead, if there is one
        /// (as `restore --auto`); start PROG only when there is none
        #[arg(long)]
        resume: bool,
        /// Program and its arguments
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "PROG"
        )]
        argv: Vec<String>,
    },
    /// Supervise a running process that mlckpt did not start
    Attach {
        #[command(flatten)]
        job: JobArgs,
        /// The running process to supervise (with every process it starts)
        pid: i32,
    },
    /// Checkpoint PID now and print the image path
    Checkpoint {
        /// The job's root process (the PID `run` printed); its whole tree is checkpointed
        pid: i32,
        /// Also copy the image to this tier (local, partner or global) before returning
        #[arg(long, value_name = "T")]
        tier: Option<TierKind>,
        /// Keep the target frozen until the image is committed, then kill it
        #[arg(long)]
        kill: bool,
        /// Print the outcome as one JSON object: path, seq, tier, bytes, freeze_ms,
        /// total_ms, mode (how memory was read) with why, and the time of each phase
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        job: JobArgs,
    },
    /// Rebuild a process from an image and supervise it
    Restore {
        /// Image directory (ckpt-NNNNNN)
        #[arg(required_unless_present = "auto", conflicts_with = "auto")]
        path: Option<PathBuf>,
        /// Restore the newest valid image of the job
        #[arg(long)]
        auto: bool,
        /// Leave the restored process running unsupervised
        #[arg(long)]
        detach: bool,
        /// Let the kernel choose a new PID if the original one is taken
        #[arg(long)]
        new_pid: bool,
        /// Do not truncate files that grew after the checkpoint back to their checkpoint size
        #[arg(long)]
        keep_files: bool,
        #[command(flatten)]
        job: JobArgs,
    },
    /// List images of the job(s); with --job, also its generations x ranks x tiers and the
    /// recovery line
    List {
        /// One JSON array of images: path, tier, node, job, rank, seq, time_unix_ms, bytes,
        /// processes, valid (with --generations one object: job, ranks, recovery_line,
        /// generations, images)
        #[arg(long)]
        json: bool,
        /// With --job --json: the job's generations and recovery line too (the text output
        /// of --job always shows them)
        #[arg(long, requires = "job")]
        generations: bool,
        #[command(flatten)]
        job: JobArgs,
    },
    /// Recompute checksums; non-zero exit on any mismatch
    Verify {
        /// Image directory (ckpt-NNNNNN) to verify, with the images it takes pages from
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        path: Option<PathBuf>,
        /// Every image of every job under the configured tiers
        #[arg(long)]
        all: bool,
        /// Config file naming the tiers for --all (default: as for `run`)
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Delete every image of a finished job (all ranks, or one) on every tier, partial ones too
    Forget {
        /// The job whose images go; refused while a supervisor of it runs on this machine
        #[arg(long, value_name = "NAME")]
        job: String,
        /// Only this rank's images
        #[arg(long, value_name = "R")]
        rank: Option<u32>,
        /// Print what would be deleted, delete nothing
        #[arg(long)]
        dry_run: bool,
        /// Config file naming the tiers (default: as for `run`)
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// `--job`: a name that becomes a directory name, checked as the config's `[job] name` is.
fn parse_job_name(name: &str) -> Result<String, String> {
    mlckpt::image::name::check_job_name(name)
        .map(|()| name.to_string())
        .map_err(|e| format!("{name:?} cannot be a job name: it {e}"))
}

/// Exit codes of design.md §2.
const EXIT_ERROR: u8 = 1;
const EXIT_USAGE: u8 = 2;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = mlckpt::log::level_for(cli.quiet, cli.verbose);
    if let Err(e) = mlckpt::log::init(level, cli.log_file.as_deref()) {
        let file = cli.log_file.unwrap_or_default();
        mlckpt::error!("cannot open the log file {}: {e}", file.display());
        return ExitCode::from(EXIT_USAGE);
    }
    let result = match cli.command {
        Command::Run { job, argv, resume } => run::run(&job, &argv, resume),
        Command::Attach { job, pid } => run::attach(&job, pid),
        Command::Checkpoint {
            pid,
            tier,
            kill,
            json,
            job,
        } => checkpoint::checkpoint(&job, pid, tier, kill, json),
        Command::Restore {
            path,
            auto,
            detach,
            new_pid,
            keep_files,
            job,
        } => restore::restore(
            &job,
            path,
            auto,
            detach,
            restore::Flags {
                new_pid,
                keep_files,
            },
        ),
        Command::List {
            json,
            generations,
            job,
        } => list::list(&job, json, generations),
        Command::Verify { path, all, config } => verify::verify(path, all, config),
        Command::Forget {
            job,
            rank,
            dry_run,
            config,
        } => forget::forget(config, &job, rank, dry_run),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(EXIT_ERROR)),
        Err(e) => {
            mlckpt::error!("{e:#}");
            let usage = e.chain().any(is_usage_error);
            ExitCode::from(if usage { EXIT_USAGE } else { EXIT_ERROR })
        }
    }
}

/// A mistake in the config, the environment or the command line, rather than a failure.
fn is_usage_error(e: &(dyn std::error::Error + 'static)) -> bool {
    e.is::<ConfigError>()
        || e.is::<TopologyError>()
        || matches!(
            e.downcast_ref::<SuperviseError>(),
            Some(SuperviseError::TierUnavailable { .. })
        )
}

/// The config, for commands that only read images: nothing is created.
pub fn load_config(args: &JobArgs) -> anyhow::Result<Config> {
    let config = Config::load(args.config.as_deref())?;
    mlckpt::image::auth::use_key_file(config.security.key_file.clone());
    Ok(config)
}

/// The config, for commands that write images: storage directories are created and
/// checked writable before the job starts.
pub fn load_config_for_writing(args: &JobArgs) -> anyhow::Result<Config> {
    Ok(Config::load_for_writing(args.config.as_deref())?)
}

/// Rank, node and partner from `--rank`, the launcher's environment and `[topology]`.
pub fn topology(args: &JobArgs, config: &Config) -> anyhow::Result<Topology> {
    // vars() would panic on a variable that is not UTF-8; none of ours can be one.
    let env: Env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    Ok(Topology::detect(args.rank, &env, &config.topology)?)
}

/// The job context for an existing process: its program names the job unless told.
pub fn context_for_pid(args: &JobArgs, pid: i32) -> anyhow::Result<JobContext> {
    use anyhow::Context;
    // First: whether there is a process we may trace at all (it may have exited, or be
    // someone else's) says more than any later step failing on it.
    mlckpt::tracer::access::check_target(nix::unistd::Pid::from_raw(pid))?;
    let config = load_config_for_writing(args)?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .with_context(|| format!("cannot read the executable of process {pid}"))?;
    let job = job_name(args, &config, &exe.to_string_lossy());
    let topology = topology(args, &config)?;
    Ok(JobContext::new(config, job, topology))
}

/// Job name: --job, then the config, then the program's file name.
pub fn job_name(args: &JobArgs, config: &Config, program: &str) -> String {
    args.job
        .clone()
        .or_else(|| config.job.name.clone())
        .unwrap_or_else(|| {
            let file_name = std::path::Path::new(program)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            mlckpt::image::name::job_name_from_program(&file_name)
        })
}
