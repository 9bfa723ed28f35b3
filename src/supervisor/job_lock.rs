//! Whether a supervisor of a job runs on this machine. Control sockets are named by the
//! target's PID, not by the job, so each supervisor also holds a shared `flock` on
//! `<runtime>/job-<name>.lock` for as long as it lives; the kernel drops it when the
//! process dies, so a crashed supervisor leaves nothing stale behind. `mlckpt forget`
//! takes the same lock exclusively without waiting: failing means a supervisor of the job
//! is running, and holding it keeps a new one from starting (it waits) while images are
//! deleted.

use super::control::{ControlError, private_runtime_dir};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum JobLockError {
    #[error(transparent)]
    RuntimeDir(#[from] ControlError),
    #[error("cannot open or lock the job lock file {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A held lock on a job's lock file; released when dropped.
#[derive(Debug)]
pub struct JobLock {
    _lock: Flock<File>,
}

pub fn lock_path(runtime_dir: &Path, job: &str) -> PathBuf {
    runtime_dir.join(format!("job-{job}.lock"))
}

/// Held by a supervisor of `job` for its whole life; waits while `forget` deletes the
/// job's images.
pub fn supervising(runtime_dir: &Path, job: &str) -> Result<JobLock, JobLockError> {
    lock(runtime_dir, job, FlockArg::LockShared).map(|held| held.expect("a blocking lock"))
}

/// The job's lock, exclusively, if no supervisor of `job` holds it; `Ok(None)` if one does.
pub fn exclusive(runtime_dir: &Path, job: &str) -> Result<Option<JobLock>, JobLockError> {
    lock(runtime_dir, job, FlockArg::LockExclusiveNonblock)
}

fn lock(runtime_dir: &Path, job: &str, how: FlockArg) -> Result<Option<JobLock>, JobLockError> {
    private_runtime_dir(runtime_dir)?;
    let path = lock_path(runtime_dir, job);
    let lock_err = |source| JobLockError::Lock {
        path: path.clone(),
        source,
    };
    // The directory is private to us, but a symlink there is still never followed.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(lock_err)?;
    loop {
        match Flock::lock(file, how) {
            Ok(lock) => return Ok(Some(JobLock { _lock: lock })),
            Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
            Err((back, Errno::EINTR)) => file = back,
            Err((_, e)) => return Err(lock_err(e.into())),
        }
    }
}
