//! The TOML configuration (design §3): where each tier keeps its images, how often each tier
//! checkpoints, and the topology that picks a partner node.
//!
//! Every mistake in a file is reported as `file:line:column: key: what is wrong`, including
//! mistakes only found after deserialising (a negative interval), because all values are read
//! as [`toml::Spanned`]. The commented reference is `templates/mlckpt.toml`, the user page
//! `docs/configuration.md`.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, DirBuilder};
use std::io;
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::unistd::{AccessFlags, access, getuid};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::path_vars;
use crate::image::compress::{self, Compression};

/// The file name searched for in the working directory and in `~/.config/mlckpt/`.
pub const FILE_NAME: &str = "mlckpt.toml";

const DEFAULT_KEEP: u32 = 2;
const DEFAULT_LOCAL_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_FULL_EVERY: u32 = 10;
/// The shortest interval a tier may have (`docs/configuration.md`). A checkpoint takes
/// milliseconds at best, so anything shorter only keeps the job frozen; sub-second
/// intervals remain for tests that need checkpoints back to back.
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);
const SECTIONS: &str = "[job], [storage], [interval], [image], [topology], [coordination], [security], [signals] \
     and [slurm]";
const PLACEHOLDERS: [&str; 3] = ["{src}", "{host}", "{dst}"];

/// `[image] file_copy_limit_mib` when not set.
pub const DEFAULT_FILE_COPY_LIMIT_MIB: u32 = 1024;

/// `[image] compress` when not set (`scripts/compress_bench.sh` measures both ways;
/// docs/compression.md says why this one).
pub const DEFAULT_COMPRESSION: Compression = Compression::None;

/// A complete, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was loaded from (absolute); `None` for the built-in defaults.
    pub source: Option<PathBuf>,
    pub job: JobConfig,
    pub storage: StorageConfig,
    pub interval: IntervalConfig,
    pub image: ImageConfig,
    pub topology: TopologyConfig,
    pub security: SecurityConfig,
    pub signals: SignalsConfig,
    pub slurm: SlurmConfig,
    pub coordination: CoordinationConfig,
}

/// `[coordination]`: checkpoint generations shared by every rank of a job (docs/tiers.md).
#[derive(Debug, Clone, PartialEq)]
pub struct CoordinationConfig {
    pub mode: CoordinationMode,
    /// Ranks of the job; `None`: from the launcher (`MLCKPT_RANKS`, `SLURM_NTASKS`,
    /// `OMPI_COMM_WORLD_SIZE`, `PMI_SIZE`), in test mode `nodes * ranks_per_node`.
    pub ranks: Option<u32>,
    /// TCP port of the coordinator on rank 0's node; 0: any free port, published in the
    /// rendezvous file.
    pub port: u16,
    /// How long ranks wait for each other: to join, to commit a generation, to agree on a
    /// recovery line.
    pub timeout: Duration,
}

impl Default for CoordinationConfig {
    fn default() -> Self {
        CoordinationConfig {
            mode: CoordinationMode::Auto,
            ranks: None,
            port: 0,
            timeout: DEFAULT_COORDINATION_TIMEOUT,
        }
    }
}

/// `[coordination] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CoordinationMode {
    /// Coordinated when the job has more than one rank.
    #[default]
    Auto,
    On,
    /// Independent ranks: each supervisor numbers and restores its own images.
    Off,
}

/// `[coordination] timeout` when not set.
pub const DEFAULT_COORDINATION_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest `[coordination] timeout`: a day. Longer is a typo, and deadlines computed
/// from it must stay far from the limits of a clock.
pub const MAX_COORDINATION_TIMEOUT: Duration = Duration::from_secs(86_400);

/// `[signals]`: the signal guard of a supervised job (`docs/signals.md`).
#[derive(Debug, Clone, PartialEq)]
pub struct SignalsConfig {
    /// Keep the job traced between checkpoints and turn the signals of `actions` into
    /// checkpoints; false: only signals to mlckpt itself count (SIGTERM: checkpoint and stop).
    pub intercept: bool,
    /// The intercepted signals (numbers, sorted) and what follows each one's checkpoint.
    pub actions: Vec<(i32, InterceptAction)>,
    /// Whether the batch shell that runs mlckpt is guarded too (its SIGTERM becomes the
    /// job's checkpoint-and-stop).
    pub parent_shell: ParentShell,
}

impl SignalsConfig {
    /// What follows the checkpoint of intercepted signal `signo`; None: not intercepted.
    pub fn action(&self, signo: i32) -> Option<InterceptAction> {
        self.actions
            .iter()
            .find(|(s, _)| *s == signo)
            .map(|(_, a)| *a)
    }
}

impl Default for SignalsConfig {
    fn default() -> Self {
        SignalsConfig {
            intercept: true,
            actions: vec![(libc::SIGTERM, InterceptAction::Stop)],
            parent_shell: ParentShell::Auto,
        }
    }
}

/// What happens after the checkpoint an intercepted signal caused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InterceptAction {
    /// The signal is dropped: the program never sees it.
    Suppress,
    /// The signal is handed to the program (its handler runs, or its default action).
    Deliver,
    /// The job is ended (SIGKILL) with the checkpoint as its last state; exit code 3.
    Stop,
}

/// `[signals] parent_shell`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParentShell {
    /// When mlckpt is a plain command of a SLURM batch script (`docs/signals.md`).
    #[default]
    Auto,
    On,
    Off,
}

/// `[slurm]`
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SlurmConfig {
    /// After a checkpoint-and-stop under SLURM, `scontrol requeue $SLURM_JOB_ID`.
    pub requeue: bool,
}

/// `[security]`
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SecurityConfig {
    /// The key that authenticates this user's images (absolute); `None`:
    /// `~/.config/mlckpt/image.key`.
    pub key_file: Option<PathBuf>,
}

/// `[job]`
#[derive(Debug, Clone, PartialEq)]
pub struct JobConfig {
    /// `None`: the caller uses the program's file name. Never empty, never contains `/`.
    pub name: Option<String>,
}

/// `[storage]`. Paths are absolute: relative ones were resolved against the file's directory.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    pub local: PathBuf,
    /// `None`: no global tier. Never equal to `local`.
    pub global: Option<PathBuf>,
    /// Images kept per tier and rank, >= 1.
    pub keep: u32,
}

/// `[interval]`: time between checkpoints of each tier, [`Duration::ZERO`] = tier off.
#[derive(Debug, Clone, PartialEq)]
pub struct IntervalConfig {
    pub local: Duration,
    pub partner: Duration,
    /// Non-zero only if `storage.global` is set.
    pub global: Duration,
}

/// `[image]`
#[derive(Debug, Clone, PartialEq)]
pub struct ImageConfig {
    /// A full image every N checkpoints, >= 1.
    pub full_every: u32,
    /// Track the target's writes (userfaultfd) to pre-copy memory while it runs and to
    /// find changed pages without reading all memory; off: fork-snapshots and content
    /// hashes only.
    pub write_tracking: bool,
    /// What a checkpoint does with a pipe whose other end is outside the job.
    pub outside_peers: OutsidePeers,
    /// Whether the job's fds 0-2 that are regular files follow the restoring command's.
    pub stdio_files: crate::objects::stdio::StdioFiles,
    /// Files the job writes in place up to this size (bytes) are copied into every image;
    /// larger ones are not, and a restore refuses them if they changed.
    pub file_copy_limit: u64,
    /// How copies on the partner and global tiers store page data (`compress`,
    /// `compress_level`); local images are always raw.
    pub compress: Compression,
}

/// `[image] compress` as written; the level comes from `compress_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum CompressName {
    None,
    Zstd,
}

/// `[image] outside_peers`: a pipe whose other end is held by a process outside the job
/// (a launcher's pipe) cannot come back as it was: its other side will be gone. A TCP
/// connection to a peer outside the job comes back reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutsidePeers {
    /// Checkpoint it with a warning; after a restore the other side is gone (EOF, EPIPE).
    #[default]
    Warn,
    /// Fail the checkpoint, naming the fds.
    Refuse,
}

/// `[topology]`: only parsed here; the paths it implies belong to the topology module.
#[derive(Debug, Clone, PartialEq)]
pub struct TopologyConfig {
    pub test_mode: bool,
    pub nodes: u32,
    pub ranks_per_node: u32,
    /// Shell command template; contains `{src}` and `{dst}`, no unknown `{…}` placeholder.
    pub partner_copy: Option<String>,
}

/// Why a configuration could not be loaded. `Display` is the complete message for the user
/// (it already contains the OS error, so none is exposed as `source()`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config file: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },

    /// A syntax error or a bad value; `key` is dotted (`interval.local`), empty if unknown.
    #[error("{}:{line}:{column}: {}{message}", file.display(), key_prefix(key))]
    Invalid {
        file: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },

    /// An explicit `--config` path that does not exist.
    #[error(
        "config file {} does not exist; check the --config path, or leave --config out to use \
         ./{FILE_NAME}, ~/.config/mlckpt/{FILE_NAME} or the built-in defaults",
        path.display()
    )]
    NotFound { path: PathBuf },

    /// A storage directory that cannot be created or written to. `line` is known when the
    /// key was written in `file`.
    #[error(
        "{}: cannot use directory {}: {error}; fix the path or its permissions, or choose \
         another directory",
        dir_location(file.as_deref(), *line, key),
        path.display()
    )]
    CreateDir {
        file: Option<PathBuf>,
        line: Option<usize>,
        key: String,
        path: PathBuf,
        error: io::Error,
    },
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

fn dir_location(file: Option<&Path>, line: Option<usize>, key: &str) -> String {
    match (file, line) {
        (Some(file), Some(line)) => format!("{}:{line}: {key}", file.display()),
        (Some(file), None) => format!("{}: {key} (default)", file.display()),
        (None, _) => format!("{key} (built-in default, no config file)"),
    }
}

impl Config {
    /// Local checkpoints every 60 s into [`default_local_root`], no partner or global tier.
    pub fn defaults() -> Config {
        Config {
            source: None,
            job: JobConfig { name: None },
            storage: StorageConfig {
                local: default_local_root(),
                global: None,
                keep: DEFAULT_KEEP,
            },
            interval: IntervalConfig {
                local: DEFAULT_LOCAL_INTERVAL,
                partner: Duration::ZERO,
                global: Duration::ZERO,
            },
            image: ImageConfig {
                full_every: DEFAULT_FULL_EVERY,
                write_tracking: true,
                outside_peers: OutsidePeers::Warn,
                stdio_files: crate::objects::stdio::StdioFiles::Follow,
                file_copy_limit: u64::from(DEFAULT_FILE_COPY_LIMIT_MIB) << 20,
                compress: DEFAULT_COMPRESSION,
            },
            topology: TopologyConfig {
                test_mode: false,
                nodes: 1,
                ranks_per_node: 1,
                partner_copy: None,
            },
            security: SecurityConfig::default(),
            signals: SignalsConfig::default(),
            slurm: SlurmConfig::default(),
            coordination: CoordinationConfig::default(),
        }
    }

    /// Parses and validates `text`, read from `origin`. Touches no file: relative storage
    /// paths are resolved against `origin`'s directory but not created. `$VAR` in paths
    /// comes from the process environment.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, origin, &path_vars::from_environment)
    }

    /// [`Config::parse`] with `env` giving the variables' values (tests need no real
    /// environment, which is process-wide).
    fn parse_with_env(text: &str, origin: &Path, env: &Lookup) -> Result<Config, ConfigError> {
        let file = std::path::absolute(origin).unwrap_or_else(|_| origin.to_path_buf());
        let src = Source {
            file: &file,
            text,
            env,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| src.toml_error(&e))?;
        let base = file.parent().unwrap_or(Path::new("/"));
        let global_interval_span = raw.interval.global.as_ref().map(Spanned::span);
        let partner_interval_span = raw.interval.partner.as_ref().map(Spanned::span);
        let config = Config {
            source: Some(file.clone()),
            job: JobConfig {
                name: job_name(&src, raw.job.name)?,
            },
            storage: storage(&src, raw.storage, base)?,
            interval: intervals(&src, raw.interval)?,
            image: ImageConfig {
                full_every: count(
                    &src,
                    raw.image.full_every,
                    "image.full_every",
                    DEFAULT_FULL_EVERY,
                )?,
                write_tracking: raw.image.write_tracking.unwrap_or(true),
                outside_peers: raw.image.outside_peers.unwrap_or_default(),
                stdio_files: raw.image.stdio_files.unwrap_or_default(),
                file_copy_limit: u64::from(count(
                    &src,
                    raw.image.file_copy_limit_mib,
                    "image.file_copy_limit_mib",
                    DEFAULT_FILE_COPY_LIMIT_MIB,
                )?) << 20,
                compress: compression(&src, raw.image.compress, raw.image.compress_level)?,
            },
            topology: topology(&src, raw.topology)?,
            security: SecurityConfig {
                key_file: config_path(&src, raw.security.key_file, "security.key_file", base)?,
            },
            signals: signals(&src, raw.signals)?,
            slurm: SlurmConfig {
                requeue: raw.slurm.requeue.unwrap_or(false),
            },
            coordination: coordination(&src, raw.coordination)?,
        };
        check_global_tier(&src, &config, global_interval_span)?;
        check_partner_tier(&src, &config, partner_interval_span)?;
        Ok(config)
    }

    /// Reads `path` and parses it. Creates nothing: readers (`list`, `verify`) work on
    /// read-only storage.
    pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
        Config::read_file(path).map(|(config, _)| config)
    }

    fn read_file(path: &Path) -> Result<(Config, String), ConfigError> {
        let text = fs::read_to_string(path).map_err(|error| ConfigError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        let config = Config::parse(&text, path)?;
        Ok((config, text))
    }

    /// The explicit `--config` path if given (it must exist); else the first existing file of
    /// [`candidate_paths`]; else [`Config::defaults`]. Creates nothing; a command that writes
    /// images uses [`Config::load_for_writing`].
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        Config::find_and_read(explicit).map(|(config, _)| config)
    }

    /// [`Config::load`], then the storage directories are created if missing and checked
    /// writable (see [`Config::ensure_dirs`]): for commands that write images.
    pub fn load_for_writing(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let (config, text) = Config::find_and_read(explicit)?;
        config.ensure_dirs().map_err(|e| match &text {
            Some(text) => with_line(e, text),
            None => e,
        })?;
        Ok(config)
    }

    /// The config and, when it came from a file, the file's text (for error lines).
    fn find_and_read(explicit: Option<&Path>) -> Result<(Config, Option<String>), ConfigError> {
        let from_file = |path: &Path| Config::read_file(path).map(|(c, text)| (c, Some(text)));
        if let Some(path) = explicit {
            if !path.exists() {
                return Err(ConfigError::NotFound {
                    path: path.to_path_buf(),
                });
            }
            return from_file(path);
        }
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from);
        match first_existing(candidate_paths(&cwd, home.as_deref())) {
            Some(path) => from_file(&path),
            None => Ok((Config::defaults(), None)),
        }
    }

    /// Creates `storage.local` (and `storage.global` if set) with mode 0700 if missing, and
    /// checks that we can write into them.
    pub fn ensure_dirs(&self) -> Result<(), ConfigError> {
        self.ensure_dir("storage.local", &self.storage.local)?;
        if let Some(global) = &self.storage.global {
            self.ensure_dir("storage.global", global)?;
        }
        self.check_default_root_owner()
    }

    fn ensure_dir(&self, key: &str, path: &Path) -> Result<(), ConfigError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|error| self.dir_error(key, path, error))?;
        access(path, AccessFlags::W_OK | AccessFlags::X_OK)
            .map_err(|errno| self.dir_error(key, path, errno.into()))
    }

    /// The default root has a predictable name in a shared /tmp: if another user created it
    /// first, they could swap our images (which restore runs as code), so refuse it.
    fn check_default_root_owner(&self) -> Result<(), ConfigError> {
        let root = &self.storage.local;
        if *root != default_local_root() {
            return Ok(());
        }
        let meta = fs::metadata(root).map_err(|e| self.dir_error("storage.local", root, e))?;
        let me = getuid().as_raw();
        if meta.uid() == me {
            return Ok(());
        }
        let error = io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "it belongs to uid {}, not to you (uid {me}); remove it or set storage.local",
                meta.uid()
            ),
        );
        Err(self.dir_error("storage.local", root, error))
    }

    fn dir_error(&self, key: &str, path: &Path, error: io::Error) -> ConfigError {
        ConfigError::CreateDir {
            file: self.source.clone(),
            line: None,
            key: key.to_string(),
            path: path.to_path_buf(),
            error,
        }
    }
}

/// `$TMPDIR` (or `/tmp` if unset or relative) joined with `mlckpt-<uid>`.
pub fn default_local_root() -> PathBuf {
    let tmp = std::env::temp_dir();
    let tmp = if tmp.is_absolute() {
        tmp
    } else {
        PathBuf::from("/tmp")
    };
    tmp.join(format!("mlckpt-{}", getuid()))
}

/// Where supervisors put their control sockets: `$XDG_RUNTIME_DIR/mlckpt` if that directory
/// exists, else `/tmp/mlckpt-<uid>-run` (not `$TMPDIR`: socket paths must stay short; and
/// not inside the image root, where a job could be called `run`).
pub fn runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() && dir.is_dir() => dir.join("mlckpt"),
        _ => PathBuf::from(format!("/tmp/mlckpt-{}-run", getuid())),
    }
}

/// The files [`Config::load`] tries without `--config`, in order.
pub fn candidate_paths(cwd: &Path, home: Option<&Path>) -> Vec<PathBuf> {
    let mut paths = vec![cwd.join(FILE_NAME)];
    if let Some(home) = home {
        paths.push(home.join(".config/mlckpt").join(FILE_NAME));
    }
    paths
}

fn first_existing(candidates: Vec<PathBuf>) -> Option<PathBuf> {
    candidates.into_iter().find(|p| p.is_file())
}

/// A `CreateDir` error from `ensure_dirs` does not know the line; the file text does.
fn with_line(error: ConfigError, text: &str) -> ConfigError {
    match error {
        ConfigError::CreateDir {
            file,
            line: None,
            key,
            path,
            error,
        } => ConfigError::CreateDir {
            line: key_span(text, &key).map(|span| line_col(text, span.start).0),
            file,
            key,
            path,
            error,
        },
        other => other,
    }
}

// ---- the file as written -------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    job: RawJob,
    storage: RawStorage,
    interval: RawInterval,
    image: RawImage,
    topology: RawTopology,
    security: RawSecurity,
    signals: RawSignals,
    slurm: RawSlurm,
    coordination: RawCoordination,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default, expecting = "a table: [coordination]")]
struct RawCoordination {
    mode: Option<CoordinationMode>,
    ranks: Option<Spanned<Count>>,
    port: Option<Spanned<i64>>,
    timeout: Option<Spanned<Seconds>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default, expecting = "a table: [signals]")]
struct RawSignals {
    intercept: Option<bool>,
    parent_shell: Option<ParentShell>,
    actions: Option<std::collections::BTreeMap<String, Spanned<InterceptAction>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default, expecting = "a table: [slurm]")]
struct RawSlurm {
    requeue: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default, expecting = "a table: [security]")]
struct RawSecurity {
    key_file: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default, expecting = "a table: [job]")]
struct RawJob {
    name: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default, expecting = "a table: [storage]")]
struct RawStorage {
    local: Option<Spanned<String>>,
    global: Option<Spanned<String>>,
    keep: Option<Spanned<Count>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default, expecting = "a table: [interval]")]
struct RawInterval {
    local: Option<Spanned<Seconds>>,
    partner: Option<Spanned<Seconds>>,
    global: Option<Spanned<Seconds>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default, expecting = "a table: [image]")]
struct RawImage {
    full_every: Option<Spanned<Count>>,
    write_tracking: Option<bool>,
    outside_peers: Option<OutsidePeers>,
    stdio_files: Option<crate::objects::stdio::StdioFiles>,
    file_copy_limit_mib: Option<Spanned<Count>>,
    compress: Option<CompressName>,
    compress_level: Option<Spanned<Count>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default, expecting = "a table: [topology]")]
struct RawTopology {
    test_mode: Option<bool>,
    nodes: Option<Spanned<Count>>,
    ranks_per_node: Option<Spanned<Count>>,
    partner_copy: Option<Spanned<String>>,
}

/// Seconds as written: TOML integers and floats both count; range is checked later, where
/// the span is at hand.
#[derive(Clone, Copy)]
struct Seconds(f64);

/// A whole number as written; range is checked later, where the span is at hand.
#[derive(Clone, Copy)]
struct Count(i64);

struct SecondsVisitor;
struct CountVisitor;

impl Visitor<'_> for SecondsVisitor {
    type Value = Seconds;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number of seconds, e.g. 60 or 0.5")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seconds, E> {
        Ok(Seconds(v as f64))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seconds, E> {
        Ok(Seconds(v as f64))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Seconds, E> {
        Ok(Seconds(v))
    }
}

impl Visitor<'_> for CountVisitor {
    type Value = Count;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number, e.g. 2")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
        Ok(Count(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
        Ok(Count(i64::try_from(v).unwrap_or(i64::MAX)))
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SecondsVisitor)
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CountVisitor)
    }
}

// ---- validation ------------------------------------------------------------------------

/// Where `$VAR` in paths gets its values.
type Lookup = dyn Fn(&str) -> Option<OsString>;

/// The file being parsed, to turn spans into `file:line:column` errors.
struct Source<'a> {
    file: &'a Path,
    text: &'a str,
    env: &'a Lookup,
}

impl Source<'_> {
    fn invalid(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_col(self.text, span.start);
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn toml_error(&self, error: &toml::de::Error) -> ConfigError {
        let span = error.span().unwrap_or(0..0);
        let written = self.text.get(span.clone()).unwrap_or_default();
        let hit = key_at(self.text, span.start)
            .or_else(|| earlier_key_named(self.text, written, span.start));
        let (key, is_table) = hit.unwrap_or_default();
        let message = explain_toml_error(error.message(), &key, is_table);
        self.invalid(span, &key, message)
    }
}

/// toml says "unknown field"; a user thinks in sections and keys.
fn explain_toml_error(message: &str, key: &str, is_table: bool) -> String {
    if message == "duplicate key" {
        return "is set twice; remove one of the two".to_string();
    }
    if !message.starts_with("unknown field") {
        return message.replace("expected a boolean", "expected true or false");
    }
    match (key.contains('.'), is_table) {
        (true, _) => format!(
            "{}; check the spelling",
            message.replacen("field", "key", 1)
        ),
        (false, true) => format!("unknown section [{key}]; the sections are {SECTIONS}"),
        (false, false) => {
            format!("key `{key}` outside any section; put it under one of {SECTIONS}")
        }
    }
}

fn seconds(
    src: &Source<'_>,
    raw: Option<Spanned<Seconds>>,
    key: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(raw) = raw else { return Ok(default) };
    let (span, Seconds(secs)) = (raw.span(), raw.into_inner());
    let off_hint = if key.starts_with("interval.") {
        "; use 0 to turn this tier off"
    } else {
        ""
    };
    if !secs.is_finite() {
        return Err(src.invalid(
            span,
            key,
            format!("must be a finite number of seconds, got {secs}{off_hint}"),
        ));
    }
    if secs < 0.0 {
        return Err(src.invalid(
            span,
            key,
            format!("must be >= 0 seconds, got {secs}{off_hint}"),
        ));
    }
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if secs > 0.0 && d < MIN_INTERVAL => Err(src.invalid(
            span,
            key,
            format!(
                "{secs} seconds is shorter than the minimum, {} s{off_hint}",
                MIN_INTERVAL.as_secs_f64()
            ),
        )),
        Ok(d) => Ok(d),
        Err(_) => Err(src.invalid(span, key, format!("{secs} seconds is too long{off_hint}"))),
    }
}

fn intervals(src: &Source<'_>, raw: RawInterval) -> Result<IntervalConfig, ConfigError> {
    Ok(IntervalConfig {
        local: seconds(src, raw.local, "interval.local", DEFAULT_LOCAL_INTERVAL)?,
        partner: seconds(src, raw.partner, "interval.partner", Duration::ZERO)?,
        global: seconds(src, raw.global, "interval.global", Duration::ZERO)?,
    })
}

/// A count that must be >= 1 and fit in a `u32`.
fn count(
    src: &Source<'_>,
    raw: Option<Spanned<Count>>,
    key: &str,
    default: u32,
) -> Result<u32, ConfigError> {
    let Some(raw) = raw else { return Ok(default) };
    let (span, Count(n)) = (raw.span(), raw.into_inner());
    if n < 1 {
        return Err(src.invalid(
            span,
            key,
            format!("must be >= 1, got {n}; remove the key to use the default, {default}"),
        ));
    }
    u32::try_from(n)
        .map_err(|_| src.invalid(span, key, format!("must be at most {}, got {n}", u32::MAX)))
}

/// `[image] compress` with `compress_level` (which only counts for zstd, so a file that
/// turns compression off keeps its level for later).
fn compression(
    src: &Source<'_>,
    name: Option<CompressName>,
    level: Option<Spanned<Count>>,
) -> Result<Compression, ConfigError> {
    let level = match level {
        None => compress::DEFAULT_LEVEL,
        Some(raw) => {
            let (span, Count(n)) = (raw.span(), raw.into_inner());
            let allowed = i64::from(compress::MIN_LEVEL)..=i64::from(compress::MAX_LEVEL);
            if !allowed.contains(&n) {
                let msg = format!(
                    "must be a zstd level from {} (fastest) to {} (smallest), got {n}; \
                     remove the key to use the default, {}",
                    compress::MIN_LEVEL,
                    compress::MAX_LEVEL,
                    compress::DEFAULT_LEVEL
                );
                return Err(src.invalid(span, "image.compress_level", msg));
            }
            i32::try_from(n).unwrap_or(compress::DEFAULT_LEVEL)
        }
    };
    Ok(match name {
        None => DEFAULT_COMPRESSION,
        Some(CompressName::None) => Compression::None,
        Some(CompressName::Zstd) => Compression::Zstd { level },
    })
}

/// The job name becomes a directory name (`<root>/<job>/rank<R>`).
fn job_name(src: &Source<'_>, raw: Option<Spanned<String>>) -> Result<Option<String>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let (span, name) = (raw.span(), raw.into_inner());
    match crate::image::name::check_job_name(&name) {
        Ok(()) => Ok(Some(name)),
        Err(e) => Err(src.invalid(
            span,
            "job.name",
            format!("{name:?} cannot be a job name: it {e}"),
        )),
    }
}

fn storage(src: &Source<'_>, raw: RawStorage, base: &Path) -> Result<StorageConfig, ConfigError> {
    let local = config_path(src, raw.local, "storage.local", base)?;
    let global_span = raw.global.as_ref().map(Spanned::span);
    let global = config_path(src, raw.global, "storage.global", base)?;
    let local = local.unwrap_or_else(default_local_root);
    if let (Some(global), Some(span)) = (&global, global_span)
        && same_path(global, &local)
    {
        let msg = format!(
            "is the same directory as storage.local ({}); the global tier must be shared \
             storage apart from the node-local one: change it, or remove it",
            local.display()
        );
        return Err(src.invalid(span, "storage.global", msg));
    }
    Ok(StorageConfig {
        local,
        global,
        keep: count(src, raw.keep, "storage.keep", DEFAULT_KEEP)?,
    })
}

/// A path as written, its `$VAR`s expanded, made absolute against the config file's
/// directory.
fn config_path(
    src: &Source<'_>,
    raw: Option<Spanned<String>>,
    key: &str,
    base: &Path,
) -> Result<Option<PathBuf>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let (span, text) = (raw.span(), raw.into_inner());
    let expanded = path_vars::expand(&text, src.env)
        .map_err(|e| src.invalid(span.clone(), key, e.to_string()))?;
    // `~` is checked after expansion: a variable holding `~/x` is not expanded either.
    let problem = if text.is_empty() {
        "must not be empty; remove the key to use the default"
    } else if expanded.as_encoded_bytes().starts_with(b"~") {
        "`~` is not expanded; write $HOME or the full path, e.g. \"$HOME/ckpt\""
    } else if text.contains('\0') {
        "must not contain a NUL character"
    } else {
        return Ok(Some(base.join(expanded)));
    };
    Err(src.invalid(span, key, problem))
}

/// Compares paths lexically (`/a/b/` = `/a//b` = `/a/./b`); symlinks are not followed.
fn same_path(a: &Path, b: &Path) -> bool {
    a.components().eq(b.components())
}

/// `[signals]`; `actions`, when given, replaces the default (TERM = "stop").
fn signals(src: &Source<'_>, raw: RawSignals) -> Result<SignalsConfig, ConfigError> {
    let defaults = SignalsConfig::default();
    let mut actions = Vec::new();
    for (name, action) in raw.actions.into_iter().flatten() {
        let (span, action) = (action.span(), action.into_inner());
        let key = format!("signals.actions.{name}");
        let signo =
            interceptable_signal(&name).map_err(|why| src.invalid(span.clone(), &key, why))?;
        if actions.iter().any(|(s, _)| *s == signo) {
            return Err(src.invalid(
                span,
                &key,
                "names a signal already listed under another name",
            ));
        }
        actions.push((signo, action));
    }
    actions.sort_unstable();
    Ok(SignalsConfig {
        intercept: raw.intercept.unwrap_or(defaults.intercept),
        actions: if actions.is_empty() {
            defaults.actions
        } else {
            actions
        },
        parent_shell: raw.parent_shell.unwrap_or_default(),
    })
}

/// The number of a signal named `TERM`, `SIGTERM`, `RTMIN+2` or `SIGRTMAX-1`, if the
/// guard can intercept it; else why not.
pub fn interceptable_signal(name: &str) -> Result<i32, String> {
    let bare = name.strip_prefix("SIG").unwrap_or(name);
    let realtime = |base: i32, rest: &str, sign: i32| -> Option<i32> {
        let offset: i32 = if rest.is_empty() {
            0
        } else {
            rest.parse().ok()?
        };
        let signo = base + sign * offset;
        (libc::SIGRTMIN()..=libc::SIGRTMAX())
            .contains(&signo)
            .then_some(signo)
    };
    let signo = if let Some(rest) = bare.strip_prefix("RTMIN") {
        realtime(libc::SIGRTMIN(), rest.strip_prefix('+').unwrap_or(rest), 1)
    } else if let Some(rest) = bare.strip_prefix("RTMAX") {
        realtime(libc::SIGRTMAX(), rest.strip_prefix('-').unwrap_or(rest), -1)
    } else {
        format!("SIG{bare}")
            .parse::<nix::sys::signal::Signal>()
            .ok()
            .map(|s| s as i32)
    };
    let Some(signo) = signo else {
        return Err(format!(
            "unknown signal {name:?}; write a name such as TERM, USR2 or RTMIN+1"
        ));
    };
    match signo {
        libc::SIGKILL | libc::SIGSTOP => Err(format!(
            "{name} cannot be intercepted: the kernel neither lets it be caught nor held"
        )),
        libc::SIGSEGV
        | libc::SIGBUS
        | libc::SIGILL
        | libc::SIGFPE
        | libc::SIGTRAP
        | libc::SIGSYS => Err(format!(
            "{name} is raised by the program's own faults, not sent to it; it cannot be \
                 turned into a checkpoint"
        )),
        _ => Ok(signo),
    }
}

fn coordination(src: &Source<'_>, raw: RawCoordination) -> Result<CoordinationConfig, ConfigError> {
    let port = match raw.port {
        None => 0,
        Some(raw) => {
            let (span, port) = (raw.span(), raw.into_inner());
            u16::try_from(port).map_err(|_| {
                let why = format!("must be a TCP port, 0 to 65535 (0: any free port), got {port}");
                src.invalid(span, "coordination.port", why)
            })?
        }
    };
    if let Some(timeout) = &raw.timeout
        && timeout.get_ref().0 > MAX_COORDINATION_TIMEOUT.as_secs_f64()
    {
        let why = format!(
            "must be at most {} seconds (a day), got {}",
            MAX_COORDINATION_TIMEOUT.as_secs(),
            timeout.get_ref().0
        );
        return Err(src.invalid(timeout.span(), "coordination.timeout", why));
    }
    let timeout = seconds(
        src,
        raw.timeout,
        "coordination.timeout",
        DEFAULT_COORDINATION_TIMEOUT,
    )?;
    let ranks = match raw.ranks {
        None => None,
        some => Some(count(src, some, "coordination.ranks", 1)?),
    };
    Ok(CoordinationConfig {
        mode: raw.mode.unwrap_or_default(),
        ranks,
        port,
        timeout: if timeout.is_zero() {
            DEFAULT_COORDINATION_TIMEOUT
        } else {
            timeout
        },
    })
}

fn topology(src: &Source<'_>, raw: RawTopology) -> Result<TopologyConfig, ConfigError> {
    Ok(TopologyConfig {
        test_mode: raw.test_mode.unwrap_or(false),
        nodes: count(src, raw.nodes, "topology.nodes", 1)?,
        ranks_per_node: count(src, raw.ranks_per_node, "topology.ranks_per_node", 1)?,
        partner_copy: partner_copy(src, raw.partner_copy)?,
    })
}

fn partner_copy(
    src: &Source<'_>,
    raw: Option<Spanned<String>>,
) -> Result<Option<String>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let (span, cmd) = (raw.span(), raw.into_inner());
    let key = "topology.partner_copy";
    if let Some(unknown) = placeholders(&cmd).find(|p| !PLACEHOLDERS.contains(p)) {
        let msg = format!(
            "unknown placeholder {unknown}; the placeholders are {{src}}, {{host}} and {{dst}}"
        );
        return Err(src.invalid(span, key, msg));
    }
    if !cmd.contains("{src}") || !cmd.contains("{dst}") {
        let msg = "must contain {src} and {dst} (and usually {host}), e.g. \"rsync -a {src}/ {host}:{dst}/\"";
        return Err(src.invalid(span, key, msg));
    }
    Ok(Some(cmd))
}

/// `{word}` placeholders in a command; `${word}` is the shell's and is left alone.
fn placeholders(cmd: &str) -> impl Iterator<Item = &str> {
    cmd.match_indices('{').filter_map(move |(i, _)| {
        if cmd[..i].ends_with('$') {
            return None;
        }
        let len = cmd[i + 1..].find('}')?;
        let word = &cmd[i + 1..i + 1 + len];
        let is_word =
            !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        is_word.then(|| &cmd[i..i + len + 2])
    })
}

/// A global interval without a global directory would fail at the first global checkpoint,
/// possibly hours into the job; say so now.
fn check_global_tier(
    src: &Source<'_>,
    config: &Config,
    span: Option<Range<usize>>,
) -> Result<(), ConfigError> {
    match span {
        Some(span) if !config.interval.global.is_zero() && config.storage.global.is_none() => {
            let msg = "is set but storage.global is not: set storage.global to a shared \
                       directory, or set interval.global = 0";
            Err(src.invalid(span, "interval.global", msg))
        }
        _ => Ok(()),
    }
}

/// Partner copies need a second node: simulated ones, or a command that reaches a real one.
fn check_partner_tier(
    src: &Source<'_>,
    config: &Config,
    span: Option<Range<usize>>,
) -> Result<(), ConfigError> {
    let t = &config.topology;
    let possible = (t.test_mode && t.nodes >= 2) || (!t.test_mode && t.partner_copy.is_some());
    match span {
        Some(span) if !config.interval.partner.is_zero() && !possible => {
            let msg = "is set but there is no partner node to copy to: on a cluster set \
                       topology.partner_copy; on one machine set topology.test_mode = true \
                       with nodes >= 2; or set interval.partner = 0";
            Err(src.invalid(span, "interval.partner", msg))
        }
        _ => Ok(()),
    }
}

// ---- spans -------------------------------------------------------------------------------

/// 1-based line and column (in characters) of byte offset `pos`.
fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let before = text.get(..pos).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The dotted key whose name or value covers byte `pos`, and whether its value is a table.
fn key_at(text: &str, pos: usize) -> Option<(String, bool)> {
    let (doc, _) = DeTable::parse_recoverable(text);
    find_key(doc.get_ref(), pos, &mut Vec::new())
}

fn find_key(table: &DeTable<'_>, pos: usize, path: &mut Vec<String>) -> Option<(String, bool)> {
    for (key, value) in table {
        path.push(key.get_ref().to_string());
        // Children first: a [section]'s own span is its header, an inline table's span
        // covers its keys, and the innermost key is the one to name.
        if let DeValue::Table(inner) = value.get_ref()
            && let Some(hit) = find_key(inner, pos, path)
        {
            return Some(hit);
        }
        if covers(&key.span(), pos) || covers(&value.span(), pos) {
            return Some((path.join("."), value.get_ref().is_table()));
        }
        path.pop();
    }
    None
}

/// A duplicate key is not in the parsed tree; the first key of that name before it is.
fn earlier_key_named(text: &str, name: &str, pos: usize) -> Option<(String, bool)> {
    let (doc, _) = DeTable::parse_recoverable(text);
    let mut best = None;
    find_named(doc.get_ref(), name, pos, &mut Vec::new(), &mut best);
    best.map(|(_, key, is_table)| (key, is_table))
}

fn find_named(
    table: &DeTable<'_>,
    name: &str,
    pos: usize,
    path: &mut Vec<String>,
    best: &mut Option<(usize, String, bool)>,
) {
    for (key, value) in table {
        path.push(key.get_ref().to_string());
        let start = key.span().start;
        let closer = best.as_ref().is_none_or(|(b, _, _)| start > *b);
        if key.get_ref() == name && start < pos && closer {
            *best = Some((start, path.join("."), value.get_ref().is_table()));
        }
        if let DeValue::Table(inner) = value.get_ref() {
            find_named(inner, name, pos, path, best);
        }
        path.pop();
    }
}

fn covers(span: &Range<usize>, pos: usize) -> bool {
    span.contains(&pos) || span.start == pos
}

/// The span of the value of dotted `key`, if the file sets it.
fn key_span(text: &str, key: &str) -> Option<Range<usize>> {
    let (doc, _) = DeTable::parse_recoverable(text);
    let mut table = doc.get_ref();
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let value = table.get(part)?;
        if parts.peek().is_none() {
            return Some(value.span());
        }
        table = value.get_ref().as_table()?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const ORIGIN: &str = "/x/mlckpt.toml";

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new(ORIGIN)).unwrap()
    }

    fn err(text: &str) -> String {
        Config::parse(text, Path::new(ORIGIN))
            .unwrap_err()
            .to_string()
    }

    /// Asserts the message starts with `file:line:` and names `key`.
    fn assert_at(message: &str, line: usize, key: &str) {
        let prefix = format!("{ORIGIN}:{line}:");
        assert!(
            message.starts_with(&prefix),
            "{message:?} should start with {prefix:?}"
        );
        assert!(
            message.contains(&format!(": {key}: ")),
            "{message:?} should name {key}"
        );
    }

    fn with_source(mut config: Config) -> Config {
        config.source = Some(PathBuf::from(ORIGIN));
        config
    }

    #[test]
    fn coordination_timeout_is_at_most_a_day() {
        let day = parse("[coordination]\ntimeout = 86400\n");
        assert_eq!(day.coordination.timeout, MAX_COORDINATION_TIMEOUT);
        for text in [
            "[coordination]\ntimeout = 86401\n",
            "[coordination]\ntimeout = 1e30\n",
        ] {
            let message = err(text);
            assert_at(&message, 2, "coordination.timeout");
            assert!(message.contains("at most 86400 seconds"), "{message}");
        }
    }

    #[test]
    fn signals_and_slurm_sections() {
        let c = parse(
            "[signals]\nintercept = false\nparent_shell = \"on\"\n[signals.actions]\n\
             SIGTERM = \"deliver\"\nUSR2 = \"suppress\"\n\"RTMIN+1\" = \"stop\"\n\
             [slurm]\nrequeue = true\n",
        );
        assert!(!c.signals.intercept);
        assert_eq!(c.signals.parent_shell, ParentShell::On);
        assert_eq!(
            c.signals.action(libc::SIGTERM),
            Some(InterceptAction::Deliver)
        );
        assert_eq!(
            c.signals.action(libc::SIGUSR2),
            Some(InterceptAction::Suppress)
        );
        assert_eq!(
            c.signals.action(libc::SIGRTMIN() + 1),
            Some(InterceptAction::Stop)
        );
        assert_eq!(c.signals.action(libc::SIGINT), None);
        assert!(c.slurm.requeue);
        let d = parse("");
        assert_eq!(d.signals, SignalsConfig::default());
        assert_eq!(d.signals.action(libc::SIGTERM), Some(InterceptAction::Stop));
        assert!(!d.slurm.requeue);
    }

    #[test]
    fn bad_signal_lines_are_named() {
        let e = err("[signals.actions]\nKILL = \"stop\"\n");
        assert_at(&e, 2, "signals.actions.KILL");
        assert!(e.contains("cannot be intercepted"), "{e}");
        let e = err("[signals.actions]\nSEGV = \"stop\"\n");
        assert!(e.contains("own faults"), "{e}");
        let e = err("[signals.actions]\nTERMINATE = \"stop\"\n");
        assert_at(&e, 2, "signals.actions.TERMINATE");
        assert!(e.contains("unknown signal"), "{e}");
        let e = err("[signals.actions]\nTERM = \"stop\"\nSIGTERM = \"deliver\"\n");
        assert!(e.contains("already listed"), "{e}");
        let e = err("[signals.actions]\nTERM = \"halt\"\n");
        assert!(e.contains("stop") && e.contains("deliver"), "{e}");
        let e = err("[signals]\nparent_shell = \"maybe\"\n");
        assert!(e.contains("auto"), "{e}");
        let e = err("[signals]\nintercepts = true\n");
        assert!(e.contains("intercepts"), "{e}");
        let e = err("[slurm]\nrequeue = 1\n");
        assert!(e.contains("true or false"), "{e}");
    }

    #[test]
    fn full_valid_file() {
        let text = r#"
[job]
name = "sim"
[storage]
local = "/tmp/ckpt"
global = "/scratch/ckpt"
keep = 3
[interval]
local = 30
partner = 300
global = 1800
[image]
full_every = 5
write_tracking = false
outside_peers = "refuse"
[topology]
test_mode = true
nodes = 4
ranks_per_node = 2
partner_copy = "rsync -a {src}/ {host}:{dst}/"
"#;
        let c = parse(text);
        assert_eq!(c.source.as_deref(), Some(Path::new(ORIGIN)));
        assert_eq!(c.job.name.as_deref(), Some("sim"));
        assert_eq!(c.storage.local, Path::new("/tmp/ckpt"));
        assert_eq!(
            c.storage.global.as_deref(),
            Some(Path::new("/scratch/ckpt"))
        );
        assert_eq!(c.storage.keep, 3);
        assert_eq!(c.interval.local, Duration::from_secs(30));
        assert_eq!(c.interval.partner, Duration::from_secs(300));
        assert_eq!(c.interval.global, Duration::from_secs(1800));
        assert_eq!(c.image.full_every, 5);
        assert!(!c.image.write_tracking);
        assert_eq!(c.image.outside_peers, OutsidePeers::Refuse);
        assert!(c.topology.test_mode);
        assert_eq!((c.topology.nodes, c.topology.ranks_per_node), (4, 2));
        assert_eq!(
            c.topology.partner_copy.as_deref(),
            Some("rsync -a {src}/ {host}:{dst}/")
        );
    }

    #[test]
    fn compression_of_copies() {
        assert_eq!(parse("").image.compress, DEFAULT_COMPRESSION);
        let zstd = |text: &str| parse(&format!("[image]\n{text}")).image.compress;
        assert_eq!(
            zstd("compress = \"zstd\"\n"),
            Compression::Zstd {
                level: compress::DEFAULT_LEVEL
            }
        );
        assert_eq!(
            zstd("compress = \"zstd\"\ncompress_level = 19\n"),
            Compression::Zstd { level: 19 }
        );
        // A level kept for later while compression is off is no mistake.
        assert_eq!(
            zstd("compress = \"none\"\ncompress_level = 3\n"),
            Compression::None
        );
    }

    #[test]
    fn bad_compression_names_line_and_key() {
        let message = err("[image]\ncompress = \"lz4\"\n");
        assert_at(&message, 2, "image.compress");
        assert!(message.contains("`none` or `zstd`"), "{message}");
        assert_at(&err("[image]\ncompress = true\n"), 2, "image.compress");
        for level in ["0", "20", "-1", "99999999999"] {
            let message = err(&format!(
                "[image]\ncompress = \"zstd\"\ncompress_level = {level}\n"
            ));
            assert_eq!(
                message,
                format!(
                    "/x/mlckpt.toml:3:18: image.compress_level: must be a zstd level from 1 \
                     (fastest) to 19 (smallest), got {level}; remove the key to use the \
                     default, 1"
                )
            );
        }
        assert_at(
            &err("[image]\ncompress_level = 1.5\n"),
            2,
            "image.compress_level",
        );
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(parse(""), with_source(Config::defaults()));
        assert_eq!(
            parse("# nothing\n\n[job]\n"),
            with_source(Config::defaults())
        );
    }

    #[test]
    fn defaults_are_local_only() {
        let c = Config::defaults();
        assert_eq!(c.source, None);
        assert_eq!(c.storage.local, default_local_root());
        assert_eq!(c.storage.keep, 2);
        assert_eq!(c.interval.local, Duration::from_secs(60));
        assert!(c.interval.partner.is_zero() && c.interval.global.is_zero());
        assert_eq!(c.image.full_every, 10);
    }

    #[test]
    fn template_parses_and_states_the_defaults() {
        let text = include_str!("../../templates/mlckpt.toml");
        assert_eq!(parse(text), with_source(Config::defaults()));
    }

    #[test]
    fn template_examples_parse_when_uncommented() {
        // Lines like `# key = value` are the template's examples: they must be valid too.
        let text: String = include_str!("../../templates/mlckpt.toml")
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if is_example(rest) => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        // Whatever the environment of the test: the examples' variables are set.
        let c = Config::parse_with_env(&text, Path::new(ORIGIN), &|_| Some("v".into())).unwrap();
        assert!(c.job.name.is_some());
        assert_eq!(
            c.storage.global.as_deref(),
            Some(Path::new("/scratch/v/mlckpt"))
        );
        assert!(c.topology.partner_copy.is_some());
    }

    /// `key = value`, as opposed to prose.
    fn is_example(line: &str) -> bool {
        line.split_once(" = ").is_some_and(|(key, _)| {
            !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
    }

    #[test]
    fn float_and_integer_seconds() {
        let c = parse(
            "[interval]\nlocal = 0.5\npartner = 1\nglobal = 0\n\
             [topology]\ntest_mode = true\nnodes = 2\n",
        );
        assert_eq!(c.interval.local, Duration::from_millis(500));
        assert_eq!(c.interval.partner, Duration::from_secs(1));
        assert_eq!(c.interval.global, Duration::ZERO);
    }

    #[test]
    fn negative_interval_names_line_and_key() {
        let text = "# c\n\n[storage]\nkeep = 2\n\n[interval]\nlocal = -5\n";
        let message = err(text);
        assert_eq!(
            message,
            "/x/mlckpt.toml:7:9: interval.local: must be >= 0 seconds, got -5; \
             use 0 to turn this tier off"
        );
    }

    #[test]
    fn non_finite_interval() {
        assert_at(&err("[interval]\npartner = inf\n"), 2, "interval.partner");
        assert_at(&err("[interval]\n\nglobal = nan\n"), 3, "interval.global");
        assert_at(&err("[interval]\nlocal = 1e300\n"), 2, "interval.local");
    }

    #[test]
    fn unknown_key() {
        let message = err("[storage]\nkeep = 2\nkepe = 3\n");
        assert_at(&message, 3, "storage.kepe");
        assert!(message.contains("unknown key `kepe`"), "{message}");
        assert!(message.contains("keep"), "{message}");
    }

    #[test]
    fn unknown_section() {
        let message = err("[job]\nname = \"a\"\n[storag]\nlocal = \"/a\"\n");
        assert_at(&message, 3, "storag");
        assert!(message.contains("unknown section [storag]"), "{message}");
        assert!(message.contains("[storage]"), "{message}");
    }

    #[test]
    fn key_outside_section() {
        let message = err("keep = 2\n");
        assert_at(&message, 1, "keep");
        assert!(message.contains("outside any section"), "{message}");
    }

    #[test]
    fn wrong_types() {
        let message = err("[interval]\nlocal = \"60\"\n");
        assert_at(&message, 2, "interval.local");
        assert!(message.contains("a number of seconds"), "{message}");
        assert_at(&err("[storage]\nkeep = 1.5\n"), 2, "storage.keep");
        assert_at(&err("[storage]\n\nlocal = 5\n"), 3, "storage.local");
        assert_at(
            &err("[topology]\ntest_mode = \"yes\"\n"),
            2,
            "topology.test_mode",
        );
        assert_at(&err("storage = 5\n"), 1, "storage");
        assert_at(&err("storage = { keep = \"x\" }\n"), 1, "storage.keep");
    }

    #[test]
    fn counts_must_be_positive() {
        assert_at(&err("[storage]\nkeep = 0\n"), 2, "storage.keep");
        assert_at(&err("[topology]\nnodes = 0\n"), 2, "topology.nodes");
        assert_at(
            &err("[topology]\nnodes = 2\nranks_per_node = 0\n"),
            3,
            "topology.ranks_per_node",
        );
        assert_at(&err("[image]\nfull_every = -1\n"), 2, "image.full_every");
        assert_at(&err("[storage]\nkeep = 4294967296\n"), 2, "storage.keep");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let message = err("[job]\nname = \"a\"\n[storage\n");
        assert!(message.starts_with("/x/mlckpt.toml:3:"), "{message}");
        assert_at(&err("[storage]\nkeep = 1\nkeep = 2\n"), 3, "storage.keep");
        let twice = err("[job]\nname = \"a\"\n[storage]\nkeep = 1\n[job]\n");
        assert!(twice.starts_with("/x/mlckpt.toml:5:"), "{twice}");
    }

    #[test]
    fn relative_paths_are_resolved_against_the_file() {
        let c = Config::parse(
            "[storage]\nlocal = \"ckpt\"\nglobal = \"../shared/ckpt\"\n",
            Path::new("/etc/mlckpt/mlckpt.toml"),
        )
        .unwrap();
        assert_eq!(c.storage.local, Path::new("/etc/mlckpt/ckpt"));
        assert_eq!(
            c.storage.global.as_deref(),
            Some(Path::new("/etc/mlckpt/../shared/ckpt"))
        );
        assert_eq!(
            parse("[storage]\nlocal = \"/abs\"\n").storage.local,
            Path::new("/abs")
        );
    }

    #[test]
    fn bad_storage_paths() {
        assert_at(&err("[storage]\nlocal = \"\"\n"), 2, "storage.local");
        assert_at(
            &err("[storage]\nglobal = \"~/ckpt\"\n"),
            2,
            "storage.global",
        );
        let message = err("[storage]\nlocal = \"/a/b\"\nglobal = \"/a/./b/\"\n");
        assert_at(&message, 3, "storage.global");
        assert!(
            message.contains("same directory as storage.local"),
            "{message}"
        );
    }

    fn test_env(name: &str) -> Option<OsString> {
        match name {
            "TMPDIR" => Some("/local/tmp".into()),
            "USER" => Some("alice".into()),
            "SLURM_JOB_ID" => Some("1234".into()),
            "SUB" => Some("rel/dir".into()),
            "TILDE" => Some("~/x".into()),
            "EMPTY" => Some(OsString::new()),
            _ => None,
        }
    }

    fn parse_env(text: &str) -> Result<Config, String> {
        Config::parse_with_env(text, Path::new(ORIGIN), &test_env).map_err(|e| e.to_string())
    }

    #[test]
    fn variables_in_paths_are_expanded() {
        let c = parse_env(
            "[storage]\nlocal = \"$TMPDIR/mlckpt\"\n\
             global = \"/scratch/${USER}/ckpt/${SLURM_JOB_ID}\"\n\
             [security]\nkey_file = \"/keys/$USER.key\"\n",
        )
        .unwrap();
        assert_eq!(c.storage.local, Path::new("/local/tmp/mlckpt"));
        assert_eq!(
            c.storage.global.as_deref(),
            Some(Path::new("/scratch/alice/ckpt/1234"))
        );
        assert_eq!(
            c.security.key_file.as_deref(),
            Some(Path::new("/keys/alice.key"))
        );
        // A relative value is resolved against the file's directory, like a written one.
        let c = parse_env("[storage]\nlocal = \"$SUB/ckpt\"\n").unwrap();
        assert_eq!(c.storage.local, Path::new("/x/rel/dir/ckpt"));
        let c = parse_env("[storage]\nlocal = \"/a/$$/b\"\n").unwrap();
        assert_eq!(c.storage.local, Path::new("/a/$/b"));
    }

    #[test]
    fn unset_variable_names_file_line_key_and_variable() {
        let message = parse_env("[job]\n\n[storage]\nglobal = \"/s/${NOPE}/c\"\n").unwrap_err();
        assert_eq!(
            message,
            "/x/mlckpt.toml:4:10: storage.global: $NOPE is not set in the environment; set \
             it, or write the path without it (`$$` gives a literal `$`)"
        );
        let message = parse_env("[security]\nkey_file = \"$NOPE/k\"\n").unwrap_err();
        assert_at(&message, 2, "security.key_file");
        assert!(message.contains("$NOPE"), "{message}");
        let message = parse_env("[storage]\nlocal = \"$EMPTY/ckpt\"\n").unwrap_err();
        assert_at(&message, 2, "storage.local");
        assert!(message.contains("$EMPTY is set but empty"), "{message}");
    }

    #[test]
    fn bad_variable_syntax_names_line_and_key() {
        for bad in ["${TMPDIR", "$", "${}", "${USER:-bob}", "/a/$/b"] {
            let message = parse_env(&format!("[storage]\nlocal = \"{bad}\"\n")).unwrap_err();
            assert_at(&message, 2, "storage.local");
            assert!(message.contains("`$$`"), "{message}");
        }
    }

    #[test]
    fn tilde_is_refused_also_from_a_variable() {
        for tilde in ["~/ckpt", "$TILDE"] {
            let message = parse_env(&format!("[storage]\nlocal = \"{tilde}\"\n")).unwrap_err();
            assert_at(&message, 2, "storage.local");
            assert!(message.contains("$HOME"), "{message}");
        }
        assert_at(
            &parse_env("[security]\nkey_file = \"~/k\"\n").unwrap_err(),
            2,
            "security.key_file",
        );
    }

    #[test]
    fn global_interval_needs_global_storage() {
        let message = err("[interval]\nglobal = 600\n");
        assert_at(&message, 2, "interval.global");
        assert!(message.contains("storage.global"), "{message}");
        let c = parse("[interval]\nglobal = 600\n[storage]\nglobal = \"/g\"\n");
        assert_eq!(c.interval.global, Duration::from_secs(600));
    }

    #[test]
    fn partner_interval_needs_a_partner_node() {
        let message = err("[interval]\npartner = 60\n");
        assert_at(&message, 2, "interval.partner");
        assert!(message.contains("partner_copy"), "{message}");
        let one_node = "[interval]\npartner = 60\n[topology]\ntest_mode = true\nnodes = 1\n";
        assert_at(&err(one_node), 2, "interval.partner");
        let two = parse("[interval]\npartner = 60\n[topology]\ntest_mode = true\nnodes = 2\n");
        assert_eq!(two.interval.partner, Duration::from_secs(60));
        let cluster =
            "[interval]\npartner = 60\n[topology]\npartner_copy = \"cp -r {src} {dst}\"\n";
        assert_eq!(parse(cluster).interval.partner, Duration::from_secs(60));
        assert!(
            parse("[interval]\npartner = 0\n")
                .interval
                .partner
                .is_zero()
        );
    }

    #[test]
    fn job_name_must_be_a_directory_name() {
        assert_at(&err("[job]\nname = \"a/b\"\n"), 2, "job.name");
        assert_at(&err("[job]\nname = \"..\"\n"), 2, "job.name");
        assert_at(&err("[job]\nname = \"\"\n"), 2, "job.name");
        assert_at(&err("[job]\nname = \"../../x\"\n"), 2, "job.name");
        assert_at(&err("[job]\nname = \"/abs\"\n"), 2, "job.name");
        assert_at(&err("[job]\nname = \"a b\"\n"), 2, "job.name");
        assert_at(
            &err(&format!("[job]\nname = \"{}\"\n", "x".repeat(200))),
            2,
            "job.name",
        );
    }

    #[test]
    fn intervals_below_the_minimum_are_refused() {
        let message = err("[interval]\nlocal = 1e-9\n");
        assert_at(&message, 2, "interval.local");
        assert!(message.contains("minimum"), "{message}");
        assert_at(
            &err("[interval]\npartner = 0.0009\n"),
            2,
            "interval.partner",
        );
        let ok = Config::parse("[interval]\nlocal = 0.001\n", Path::new(ORIGIN)).unwrap();
        assert_eq!(ok.interval.local, MIN_INTERVAL);
    }

    #[test]
    fn partner_copy_placeholders() {
        let message = err("[topology]\npartner_copy = \"scp {src} {hots}:{dst}\"\n");
        assert_at(&message, 2, "topology.partner_copy");
        assert!(message.contains("{hots}"), "{message}");
        assert_at(
            &err("[topology]\npartner_copy = \"cp {src} /x\"\n"),
            2,
            "topology.partner_copy",
        );
        let ok = parse("[topology]\npartner_copy = \"cp -r {src} ${HOME}/{dst}\"\n");
        assert!(ok.topology.partner_copy.is_some());
    }

    #[test]
    fn uncreatable_dir_names_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("file"), "").unwrap();
        let file = dir.path().join(FILE_NAME);
        fs::write(&file, "[job]\n\n[storage]\nlocal = \"file/sub\"\n").unwrap();
        let message = Config::load_for_writing(Some(&file))
            .unwrap_err()
            .to_string();
        let prefix = format!("{}:4: storage.local: ", file.display());
        assert!(
            message.starts_with(&prefix),
            "{message:?} should start with {prefix:?}"
        );
        assert!(message.contains("file/sub"), "{message}");
    }

    #[test]
    fn loading_creates_nothing_loading_for_writing_creates_private_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        fs::write(&file, "[storage]\nlocal = \"l/x\"\nglobal = \"g\"\n").unwrap();
        let c = Config::load(Some(&file)).unwrap();
        assert!(!c.storage.local.exists() && !dir.path().join("g").exists());
        assert!(!dir.path().join("l").exists());
        let c = Config::load_for_writing(Some(&file)).unwrap();
        for path in [c.storage.local, c.storage.global.unwrap()] {
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", path.display());
        }
    }

    #[test]
    fn unreadable_file_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = Config::load_file(dir.path()).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }), "{e}");
    }

    #[test]
    fn create_dir_error_without_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("file"), "").unwrap();
        let mut c = Config::defaults();
        c.storage.local = dir.path().join("file/sub");
        let message = c.ensure_dirs().unwrap_err().to_string();
        assert!(
            message.starts_with("storage.local (built-in default"),
            "{message}"
        );
    }

    #[test]
    fn explicit_missing_config_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let e = Config::load(Some(&missing)).unwrap_err();
        assert!(matches!(e, ConfigError::NotFound { .. }), "{e}");
        assert!(e.to_string().contains("nope.toml"));
    }

    #[test]
    fn explicit_config_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("other.toml");
        fs::write(&file, "[storage]\nlocal = \"ckpt\"\nkeep = 5\n").unwrap();
        let c = Config::load(Some(&file)).unwrap();
        assert_eq!(c.storage.keep, 5);
        assert_eq!(c.storage.local, dir.path().join("ckpt"));
    }

    #[test]
    fn candidate_order() {
        let cwd = Path::new("/work/job");
        let home = Path::new("/home/u");
        assert_eq!(
            candidate_paths(cwd, Some(home)),
            [
                PathBuf::from("/work/job/mlckpt.toml"),
                PathBuf::from("/home/u/.config/mlckpt/mlckpt.toml")
            ]
        );
        assert_eq!(
            candidate_paths(cwd, None),
            [PathBuf::from("/work/job/mlckpt.toml")]
        );
    }

    #[test]
    fn first_existing_candidate_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (cwd, home) = (dir.path().join("cwd"), dir.path().join("home"));
        fs::create_dir_all(&cwd).unwrap();
        fs::create_dir_all(home.join(".config/mlckpt")).unwrap();
        let candidates = || candidate_paths(&cwd, Some(&home));
        assert_eq!(first_existing(candidates()), None);
        let in_home = home.join(".config/mlckpt").join(FILE_NAME);
        fs::write(&in_home, "").unwrap();
        assert_eq!(first_existing(candidates()), Some(in_home));
        fs::write(cwd.join(FILE_NAME), "").unwrap();
        assert_eq!(first_existing(candidates()), Some(cwd.join(FILE_NAME)));
    }

    #[test]
    fn a_directory_named_like_the_file_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(first_existing(candidate_paths(dir.path(), None)), None);
    }

    #[test]
    fn default_roots_are_per_user() {
        let uid = getuid().to_string();
        let local = default_local_root();
        assert!(local.is_absolute());
        assert_eq!(
            local.file_name().unwrap().to_str().unwrap(),
            format!("mlckpt-{uid}")
        );
        assert!(runtime_dir().is_absolute());
    }
}
