//! pidfd: an fd on a process of the job. It cannot be created before that process exists,
//! so the process holding it opens it itself at restore (`pidfd_open`), after it has
//! created its children: a pidfd of the process itself, of one of its ancestors or of one
//! of its children (zombies included) is restored; any other is refused at checkpoint
//! time, as is one of a process outside the job or of a process already reaped.

use super::{Job, OpenFd, Refusal, info_field, unreadable};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PidfdState {
    /// The process it refers to.
    pub pid: i32,
    /// `pidfd_open` flags: `PIDFD_NONBLOCK` (`O_NONBLOCK`), `PIDFD_THREAD` (`O_EXCL`).
    pub flags: i32,
}

const HINT: &str = "mlckpt restores pidfds of a process itself, its ancestors and its \
                    children; close the others before the checkpoint";

pub fn capture(group: &[&OpenFd], job: &Job) -> Result<PidfdState, Refusal> {
    let Some(pid) = info_field(&group[0].info, "Pid:").and_then(|p| p.parse::<i32>().ok()) else {
        return Err(unreadable("pidfd", group[0]));
    };
    if pid <= 0 {
        return Err((
            "a pidfd of a process that has exited and been reaped".into(),
            HINT,
        ));
    }
    if !job.has_process(pid) {
        return Err((
            format!("a pidfd of process {pid}, which is not part of the job"),
            HINT,
        ));
    }
    for holder in group {
        if !reachable(holder.pid, pid) {
            return Err((
                format!(
                    "a pidfd of process {pid}, which is neither process {} itself, one of \
                     its ancestors nor one of its children",
                    holder.pid
                ),
                HINT,
            ));
        }
    }
    Ok(PidfdState {
        pid,
        flags: group[0].flags & (libc::O_NONBLOCK | libc::O_EXCL),
    })
}

/// Whether `holder` can open a pidfd of `pid` at restore: `pid` exists by then.
fn reachable(holder: i32, pid: i32) -> bool {
    let parent = |p: i32| crate::tracer::tree::stat(p).map(|s| s.links.ppid);
    if pid == holder || parent(pid) == Some(holder) {
        return true;
    }
    let mut at = holder;
    for _ in 0..4096 {
        match parent(at) {
            Some(p) if p == pid => return true,
            Some(p) if p > 0 => at = p,
            _ => return false,
        }
    }
    false
}
