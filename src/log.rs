//! mlckpt's own messages: one line each, on stderr and, with `--log-file`, appended to a
//! file as well; every line starts with a UTC timestamp, so a job's `.err` file tells when
//! each checkpoint happened. `-q` keeps warnings and errors only on stderr, `-v` adds
//! details; the log file always gets at least the normal messages, whatever `-q` says,
//! because it is what is read after the fact.
//!
//! Messages are written whole with one `write` each: lines of the supervisor and of the
//! copy threads never interleave.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

/// How much is said, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = 0,
    Warning = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    fn from_raw(raw: u8) -> Level {
        match raw {
            0 => Level::Error,
            1 => Level::Warning,
            2 => Level::Info,
            _ => Level::Debug,
        }
    }

    /// The word after `mlckpt:` that marks the line's kind (none for normal messages).
    fn tag(self) -> &'static str {
        match self {
            Level::Error => "error: ",
            Level::Warning => "warning: ",
            Level::Info => "",
            Level::Debug => "debug: ",
        }
    }
}

static STDERR_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static LOG_FILE: OnceLock<Mutex<File>> = OnceLock::new();

/// The level of stderr messages from `-q` and the count of `-v`.
pub fn level_for(quiet: bool, verbose: u8) -> Level {
    match (quiet, verbose) {
        (true, _) => Level::Warning,
        (false, 0) => Level::Info,
        (false, _) => Level::Debug,
    }
}

/// Sets what stderr shows, and opens the log file (appended to, created if missing).
pub fn init(level: Level, log_file: Option<&Path>) -> std::io::Result<()> {
    STDERR_LEVEL.store(level as u8, Ordering::Relaxed);
    if let Some(path) = log_file {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let _ = LOG_FILE.set(Mutex::new(file));
    }
    Ok(())
}

/// Whether a message of `level` goes anywhere (to skip building costly details).
pub fn enabled(level: Level) -> bool {
    level <= stderr_level() || (LOG_FILE.get().is_some() && level <= file_level())
}

/// Whether stderr shows normal messages (progress bars are normal messages).
pub fn stderr_shows(level: Level) -> bool {
    level <= stderr_level()
}

fn stderr_level() -> Level {
    Level::from_raw(STDERR_LEVEL.load(Ordering::Relaxed))
}

fn file_level() -> Level {
    stderr_level().max(Level::Info)
}

/// Writes one message; use the [`error!`](crate::error), [`warn!`](crate::warn),
/// [`info!`](crate::info) and [`debug!`](crate::debug) macros.
pub fn emit(level: Level, message: std::fmt::Arguments) {
    if !enabled(level) {
        return;
    }
    let stamp = humantime::format_rfc3339_millis(SystemTime::now());
    let line = format!("{stamp} mlckpt: {}{message}\n", level.tag());
    if level <= stderr_level() {
        // Nothing better to do with a failed write to stderr than to go on.
        crate::progress::suspend(|| {
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        });
    }
    if level <= file_level()
        && let Some(file) = LOG_FILE.get()
        && let Ok(mut file) = file.lock()
    {
        let _ = file.write_all(line.as_bytes());
    }
}

/// An error the command ends with.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::emit($crate::log::Level::Error, format_args!($($arg)*)) };
}

/// Something the user should act on; the command goes on.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::emit($crate::log::Level::Warning, format_args!($($arg)*)) };
}

/// What mlckpt did (a checkpoint, a restore, a copy), one line each.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::emit($crate::log::Level::Info, format_args!($($arg)*)) };
}

/// Details for `-v`.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::emit($crate::log::Level::Debug, format_args!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_keeps_warnings_and_verbose_adds_details() {
        assert_eq!(level_for(true, 3), Level::Warning);
        assert_eq!(level_for(false, 0), Level::Info);
        assert_eq!(level_for(false, 2), Level::Debug);
        assert!(Level::Error < Level::Warning && Level::Info < Level::Debug);
    }

    #[test]
    fn every_kind_of_line_is_marked() {
        assert_eq!(Level::Warning.tag(), "warning: ");
        assert_eq!(Level::Info.tag(), "");
        assert_eq!(Level::from_raw(9), Level::Debug);
    }
}
