//! The job as a process tree: which processes belong to it, freezing all of them at one
//! moment, and letting them all go again. Per-process work (threads, memory) stays in
//! `freeze`, `capture` and `dump`; this module only knows who is whose child.

use super::access::TargetError;
use super::freeze::{FreezeError, Frozen};
use crate::image::format::{TreeLinks, ZombieProcess};
use nix::unistd::Pid;
use std::collections::{BTreeMap, HashSet};

/// What `/proc/PID/stat` says of a process's place in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    /// R, S, D, T (stopped), t (traced), Z (zombie) ...
    pub state: char,
    pub links: TreeLinks,
    pub threads: i64,
    /// The status a `wait()` would report (field 52; meaningful for zombies).
    pub exit_code: i32,
    /// Device number of the controlling terminal of its session (0: none).
    pub tty_nr: i32,
    /// Foreground process group of that terminal (-1: none).
    pub tpgid: i32,
}

/// Parses `/proc/PID/stat`; None when the process is gone.
pub fn stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &text)
}

fn parse_stat(pid: i32, text: &str) -> Option<ProcStat> {
    // The command may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    // fields[k] is field k+3 of proc(5).
    let num = |field: usize| -> Option<i64> { fields.get(field - 3)?.parse().ok() };
    let int = |field: usize| num(field).and_then(|v| i32::try_from(v).ok());
    let state = fields.first()?.chars().next()?;
    Some(ProcStat {
        pid,
        state,
        links: TreeLinks {
            ppid: int(4)?,
            pgid: int(5)?,
            sid: int(6)?,
            exit_signal: int(38).unwrap_or(libc::SIGCHLD),
            stopped: state == 'T',
        },
        threads: num(20).unwrap_or(1),
        exit_code: int(52).unwrap_or(0),
        tty_nr: int(7).unwrap_or(0),
        tpgid: int(8).unwrap_or(-1),
    })
}

/// Every descendant of `root` (not `root` itself), parents before their children. Found
/// by reading every `/proc/PID/stat`: `/proc/PID/task/TID/children` needs a kernel option
/// that is often off.
pub fn descendants(root: i32) -> Vec<ProcStat> {
    let mut by_parent: BTreeMap<i32, Vec<ProcStat>> = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some(s) = stat(pid) {
                by_parent.entry(s.links.ppid).or_default().push(s);
            }
        }
    }
    let mut out = Vec::new();
    let mut queue = std::collections::VecDeque::from([root]);
    let mut seen = HashSet::from([root]);
    while let Some(parent) = queue.pop_front() {
        for child in by_parent.remove(&parent).unwrap_or_default() {
            if seen.insert(child.pid) {
                queue.push_back(child.pid);
                out.push(child);
            }
        }
    }
    out
}

/// The job's processes other than its root, frozen (live ones) or recorded (zombies).
#[derive(Debug, Default)]
pub struct FrozenMembers {
    /// Parents before their children.
    pub live: Vec<(Frozen, TreeLinks)>,
    pub zombies: Vec<ZombieProcess>,
}

impl FrozenMembers {
    /// Freezes every descendant of `root`, which the caller has frozen already (so it
    /// forks no more). Lists again until a listing finds nobody new: a child may fork
    /// while its siblings are being stopped.
    pub fn freeze(root: Pid) -> Result<FrozenMembers, FreezeError> {
        let mut members = FrozenMembers::default();
        let mut known: HashSet<i32> = HashSet::new();
        loop {
            let fresh: Vec<ProcStat> = descendants(root.as_raw())
                .into_iter()
                .filter(|s| !known.contains(&s.pid))
                .collect();
            if fresh.is_empty() {
                members.drop_reaped_zombies();
                return Ok(members);
            }
            for s in fresh {
                if members.take(s)? {
                    known.insert(s.pid);
                }
            }
        }
    }

    /// Freezes or records one process; false when it vanished (it is listed again, as a
    /// zombie, if it is one now).
    fn take(&mut self, s: ProcStat) -> Result<bool, FreezeError> {
        if is_zombie(&s) {
            self.zombies.push(ZombieProcess {
                pid: s.pid,
                tree: s.links,
                wait_status: s.exit_code,
            });
            return Ok(true);
        }
        match Frozen::freeze(Pid::from_raw(s.pid)) {
            Ok(frozen) => {
                self.live.push((frozen, s.links));
                Ok(true)
            }
            Err(
                FreezeError::NoProcess { .. }
                | FreezeError::Target(TargetError::Gone { .. } | TargetError::Exited { .. }),
            ) => Ok(false),
            Err(FreezeError::ZombieLeader { .. }) if stat(s.pid).is_some_and(|s| is_zombie(&s)) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// A zombie seen in a listing may have been reaped by its parent before the parent
    /// was frozen: only those still there (parents are all frozen now) are the job's.
    fn drop_reaped_zombies(&mut self) {
        self.zombies
            .retain(|z| stat(z.pid).is_some_and(|s| is_zombie(&s) && s.links.ppid == z.tree.ppid));
    }

    pub fn pids(&self) -> Vec<Pid> {
        self.live.iter().map(|(f, _)| f.pid).collect()
    }

    /// Lets every member run on.
    pub fn release(&mut self) -> Result<(), FreezeError> {
        let mut first = Ok(());
        for (frozen, _) in &mut self.live {
            if let Err(e) = frozen.release() {
                first = first.and(Err(FreezeError::from(e)));
            }
        }
        first
    }

    /// Ends every member while frozen (after the image is committed).
    pub fn kill(&mut self) {
        for (frozen, _) in &mut self.live {
            frozen.kill();
        }
    }
}

/// What members share with their parent that a restore could not share again (they were
/// created with `vfork`, or `clone` without `CLONE_THREAD` but with `CLONE_VM`,
/// `CLONE_FILES`, `CLONE_FS` or `CLONE_SIGHAND`): one line per member and object, for
/// the checkpoint's error. A `vfork` child shares its parent's memory only until it calls
/// `exec`, a moment later: another checkpoint then goes through.
pub fn unsupported_sharing(root: Pid, members: &FrozenMembers) -> Vec<String> {
    use super::sys::{Kcmp, kcmp};
    let mut problems = Vec::new();
    for (frozen, links) in &members.live {
        let (pid, ppid) = (frozen.pid.as_raw(), links.ppid);
        if ppid != root.as_raw() && !members.live.iter().any(|(f, _)| f.pid.as_raw() == ppid) {
            continue;
        }
        for (what, name) in [
            (Kcmp::Vm, "its memory (vfork, or clone with CLONE_VM)"),
            (Kcmp::Files, "its fd table (clone with CLONE_FILES)"),
            (Kcmp::Fs, "its cwd and umask (clone with CLONE_FS)"),
            (
                Kcmp::Sighand,
                "its signal actions (clone with CLONE_SIGHAND)",
            ),
        ] {
            if kcmp(pid, ppid, what, 0, 0).unwrap_or(false) {
                problems.push(format!(
                    "process {pid} ({}) shares {name} with its parent {ppid}: mlckpt cannot                      share it again at restore; checkpoint again once it has called exec, or                      start it with fork",
                    crate::objects::command_of(pid)
                ));
            }
        }
    }
    problems
}

/// Set in the environment of the commands mlckpt itself starts (partner copies), so that
/// they are not taken for processes of the job.
pub const HELPER_ENV: &str = "MLCKPT_HELPER";

/// Processes of the job that left its tree: children of this process (the supervisor, the
/// job's child subreaper) other than the root, which came to it when their parent exited.
/// They cannot be restored where they were (under the supervisor): one line each, for the
/// checkpoint's error.
pub fn escaped(root: Pid) -> Vec<String> {
    let me = std::process::id() as i32;
    descendants(me)
        .into_iter()
        .filter(|s| s.links.ppid == me && s.pid != root.as_raw() && s.state != 'Z')
        .filter(|s| !is_helper(s.pid))
        .map(|s| {
            format!(
                "process {} ({}) left the job's process tree (its parent exited, so it was \
                 handed to the supervisor): mlckpt cannot restore it there; keep such \
                 processes under a parent that stays, or let them finish before a checkpoint",
                s.pid,
                crate::objects::command_of(s.pid)
            )
        })
        .collect()
}

/// Whether `pid` was started by mlckpt itself (see `HELPER_ENV`).
fn is_helper(pid: i32) -> bool {
    let marker = format!("{HELPER_ENV}=1");
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == marker.as_bytes()))
}

/// An exited process nobody has waited for yet (a single-threaded zombie; a leader that
/// exited before its threads shows `Z` too, with threads left).
fn is_zombie(s: &ProcStat) -> bool {
    s.state == 'Z' && s.threads <= 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command() {
        let line = "4242 (a) b) (c) S 4000 4242 3900 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 \
                    1 1 1 1 1 1 1 1 1 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 1792";
        let s = parse_stat(4242, line).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(
            s.links,
            TreeLinks {
                ppid: 4000,
                pgid: 4242,
                sid: 3900,
                exit_signal: 17,
                stopped: false
            }
        );
        assert_eq!(s.threads, 1);
        assert_eq!(s.exit_code, 1792);
    }

    #[test]
    fn own_children_are_descendants() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let found = descendants(me);
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            found
                .iter()
                .any(|s| s.pid == child.id() as i32 && s.links.ppid == me)
        );
    }
}
