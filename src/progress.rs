//! A progress bar (bytes, rate, time left) for checkpoints and restores that take long
//! enough to leave a user wondering: it appears on a terminal only, after
//! [`SHOW_AFTER`], and never in a log file or a batch job's `.err`. One operation is
//! measured at a time (a process checkpoints or restores one job); the code that moves
//! the bytes calls [`advance`], which costs an uncontended read lock when nothing is
//! measured.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Shorter operations stay silent: a bar that flashes for a moment is noise.
pub const SHOW_AFTER: Duration = Duration::from_secs(1);

struct Active {
    bar: ProgressBar,
    started: Instant,
    shown: AtomicBool,
    /// Bytes moved by other threads (a supervisor's background copies) are not this
    /// operation's.
    owner: std::thread::ThreadId,
}

static ACTIVE: RwLock<Option<Active>> = RwLock::new(None);

/// Ends the measured operation (and clears its bar) when dropped.
#[must_use]
pub struct Measured(bool);

/// Starts measuring `what`, about `total` bytes (more can be announced with
/// [`add_total`] as the operation finds them). Does nothing when stderr is not a terminal, when `-q` asked for silence, or
/// while another operation is measured.
pub fn start(what: &str, total: u64) -> Measured {
    if !std::io::stderr().is_terminal() || !crate::log::stderr_shows(crate::log::Level::Info) {
        return Measured(false);
    }
    let Ok(mut active) = ACTIVE.write() else {
        return Measured(false);
    };
    if active.is_some() {
        return Measured(false);
    }
    let template = "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}";
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden())
        .with_style(style)
        .with_message(format!("mlckpt: {what}"));
    *active = Some(Active {
        bar,
        started: Instant::now(),
        shown: AtomicBool::new(false),
        owner: std::thread::current().id(),
    });
    Measured(true)
}

/// The measured operation has `bytes` more to do than it said.
pub fn add_total(bytes: u64) {
    if let Some(a) = ACTIVE.read().ok().as_ref().and_then(|a| a.as_ref())
        && a.owner == std::thread::current().id()
    {
        a.bar.inc_length(bytes);
    }
}

/// `bytes` more of the measured operation are done.
pub fn advance(bytes: u64) {
    let Ok(active) = ACTIVE.read() else { return };
    let Some(a) = active.as_ref() else { return };
    if a.owner != std::thread::current().id() {
        return;
    }
    a.bar.inc(bytes);
    if !a.shown.load(Ordering::Relaxed) && a.started.elapsed() >= SHOW_AFTER {
        a.shown.store(true, Ordering::Relaxed);
        a.bar.set_draw_target(ProgressDrawTarget::stderr());
    }
}

/// Runs `print` with the bar (if one is shown) taken off the screen, so a message does
/// not land in the middle of it.
pub fn suspend(print: impl FnOnce()) {
    match ACTIVE.try_read() {
        Ok(active) => match active.as_ref() {
            Some(a) if a.shown.load(Ordering::Relaxed) => a.bar.suspend(print),
            _ => print(),
        },
        // A message from inside `advance`'s caller while the bar is being replaced.
        Err(_) => print(),
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        if !self.0 {
            return;
        }
        if let Ok(mut active) = ACTIVE.write()
            && let Some(a) = active.take()
        {
            a.bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_measured_without_a_terminal_and_advancing_is_harmless() {
        // The test harness's stderr is a pipe or a file, not a terminal.
        if std::io::stderr().is_terminal() {
            return;
        }
        let measured = start("checkpoint", 100);
        assert!(!measured.0);
        advance(10);
        let mut said = false;
        suspend(|| said = true);
        assert!(said);
    }
}
