//! What mlckpt may do to a process, said before it tries: whether a target exists, has
//! exited, or belongs to someone else; and which privileges a command needs that the
//! caller lacks (a non-root user can checkpoint their own processes, but restoring with
//! the same PIDs needs CAP_CHECKPOINT_RESTORE, and suspending a target's seccomp filters
//! CAP_SYS_ADMIN). The decisions are pure functions of what `/proc` says, tested without
//! the situations themselves.

use nix::unistd::Pid;
use std::sync::OnceLock;

/// Capability bits (linux/capability.h).
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_CHECKPOINT_RESTORE: u32 = 40;

/// Why a process cannot be checkpointed by us.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("process {pid} does not exist (it exited, or the PID is wrong)")]
    Gone { pid: i32 },
    #[error(
        "process {pid} has exited (a zombie until its parent collects its status): there is \
         nothing left to checkpoint"
    )]
    Exited { pid: i32 },
    #[error(
        "process {pid} exists but belongs to uid {owner}; you (uid {me}) may not trace it: \
         run mlckpt as uid {owner}, or as root"
    )]
    NotYours { pid: i32, owner: u32, me: u32 },
    #[error(
        "process {pid} uses seccomp filters, which must be suspended while mlckpt works in \
         it; that needs CAP_SYS_ADMIN, which you lack: run mlckpt as root"
    )]
    Seccomp { pid: i32 },
}

/// A privilege a command needs and the caller lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error(
        "kernel.yama.ptrace_scope is {scope}: {what}; ask the administrator, or run mlckpt \
         as root"
    )]
    Yama { scope: u32, what: &'static str },
    #[error(
        "restoring a process needs CAP_CHECKPOINT_RESTORE (or CAP_SYS_ADMIN) to give it its \
         PID and executable back, which you (uid {me}) lack: run the restore as root, or \
         grant the capability (setcap cap_checkpoint_restore,cap_sys_ptrace+ep mlckpt)"
    )]
    Restore { me: u32 },
}

/// What the calling process may do, from `/proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Privileges {
    pub euid: u32,
    /// `CapEff` of `/proc/self/status`.
    pub capabilities: u64,
    /// `/proc/sys/kernel/yama/ptrace_scope`; `None` without Yama.
    pub yama_scope: Option<u32>,
}

impl Privileges {
    /// This process's, read once.
    pub fn current() -> Privileges {
        static CURRENT: OnceLock<Privileges> = OnceLock::new();
        *CURRENT.get_or_init(|| {
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            Privileges {
                euid: nix::unistd::geteuid().as_raw(),
                capabilities: status_field(&status, "CapEff:")
                    .and_then(|v| u64::from_str_radix(v, 16).ok())
                    .unwrap_or(0),
                yama_scope: std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
                    .ok()
                    .and_then(|s| s.trim().parse().ok()),
            }
        })
    }

    pub fn has(&self, cap: u32) -> bool {
        self.capabilities & (1 << cap) != 0
    }

    /// Whether a checkpoint's seize may suspend the target's seccomp filters
    /// (`PTRACE_O_SUSPEND_SECCOMP` needs CAP_SYS_ADMIN).
    pub fn may_suspend_seccomp(&self) -> bool {
        self.has(CAP_SYS_ADMIN)
    }

    /// Tracing a process we did not start (`attach`, a direct `checkpoint`) or our own
    /// child (`run`): what Yama (Documentation/admin-guide/LSM/Yama.rst) allows.
    pub fn check_tracing(&self, own_child: bool) -> Result<(), AccessError> {
        let ptrace_cap = self.has(CAP_SYS_PTRACE);
        match self.yama_scope {
            None | Some(0) => Ok(()),
            Some(1) if own_child || ptrace_cap => Ok(()),
            Some(1) => Err(AccessError::Yama {
                scope: 1,
                what: "only a process's ancestors may trace it, and mlckpt did not start this \
                       one (use `mlckpt run`, or CAP_SYS_PTRACE)",
            }),
            Some(2) if ptrace_cap => Ok(()),
            Some(2) => Err(AccessError::Yama {
                scope: 2,
                what: "only CAP_SYS_PTRACE may trace, which you lack",
            }),
            Some(scope) => Err(AccessError::Yama {
                scope,
                what: "nobody may trace any process",
            }),
        }
    }

    /// A restore creates processes with given PIDs (`clone3` `set_tid`) and sets their
    /// executable (`PR_SET_MM_MAP`): both need CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN.
    pub fn check_restore(&self) -> Result<(), AccessError> {
        if self.has(CAP_CHECKPOINT_RESTORE) || self.has(CAP_SYS_ADMIN) {
            Ok(())
        } else {
            Err(AccessError::Restore { me: self.euid })
        }
    }
}

fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
}

/// What `/proc/PID` says about a process, as far as deciding whether we may trace it goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetView {
    /// `None`: no such process.
    pub state: Option<char>,
    pub threads: u32,
    /// Real, effective, saved and filesystem uids.
    pub uids: [u32; 4],
    /// `Seccomp:` 0 none, 1 strict, 2 filters.
    pub seccomp: u32,
}

impl TargetView {
    pub fn read(pid: Pid) -> TargetView {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            return TargetView::default();
        };
        let number = |name| status_field(&status, name).and_then(|v| v.parse().ok());
        let mut uids = [0; 4];
        if let Some(line) = status_field(&status, "Uid:") {
            for (slot, v) in uids.iter_mut().zip(line.split_whitespace()) {
                *slot = v.parse().unwrap_or(u32::MAX);
            }
        }
        TargetView {
            state: status_field(&status, "State:").and_then(|s| s.chars().next()),
            threads: number("Threads:").unwrap_or(0),
            uids,
            seccomp: number("Seccomp:").unwrap_or(0),
        }
    }
}

/// Whether process `pid` can be checkpointed by a caller with `me`, judging by `view`.
/// A zombie leader with other threads still running is not "exited": the freeze names it.
pub fn classify(pid: i32, view: &TargetView, me: &Privileges) -> Result<(), TargetError> {
    let Some(state) = view.state else {
        return Err(TargetError::Gone { pid });
    };
    if matches!(state, 'Z' | 'X') && view.threads <= 1 {
        return Err(TargetError::Exited { pid });
    }
    // ptrace's access check (PTRACE_MODE_REALCREDS): every uid of the target must be ours,
    // unless we hold CAP_SYS_PTRACE.
    // The real uid comes first, so it is the one named when it differs.
    if !me.has(CAP_SYS_PTRACE)
        && let Some(&owner) = view.uids.iter().find(|&&u| u != me.euid)
    {
        return Err(TargetError::NotYours {
            pid,
            owner,
            me: me.euid,
        });
    }
    if view.seccomp == 2 && !me.may_suspend_seccomp() {
        return Err(TargetError::Seccomp { pid });
    }
    Ok(())
}

/// [`classify`] for a live process.
pub fn check_target(pid: Pid) -> Result<(), TargetError> {
    classify(pid.as_raw(), &TargetView::read(pid), &Privileges::current())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(uid: u32) -> Privileges {
        Privileges {
            euid: uid,
            capabilities: 0,
            yama_scope: None,
        }
    }

    fn root() -> Privileges {
        Privileges {
            euid: 0,
            capabilities: (1 << 41) - 1,
            yama_scope: Some(1),
        }
    }

    fn running(uid: u32) -> TargetView {
        TargetView {
            state: Some('S'),
            threads: 1,
            uids: [uid; 4],
            seccomp: 0,
        }
    }

    #[test]
    fn a_missing_process_is_gone_and_a_zombie_has_exited() {
        let me = user(1000);
        assert_eq!(
            classify(7, &TargetView::default(), &me),
            Err(TargetError::Gone { pid: 7 })
        );
        let zombie = TargetView {
            state: Some('Z'),
            ..running(1000)
        };
        assert_eq!(
            classify(7, &zombie, &me),
            Err(TargetError::Exited { pid: 7 })
        );
        // pthread_exit in main: the leader is a zombie, the process is not.
        let threads_left = TargetView {
            threads: 3,
            ..zombie
        };
        assert_eq!(classify(7, &threads_left, &me), Ok(()));
    }

    #[test]
    fn someone_elses_process_is_named_as_such() {
        let err = classify(7, &running(0), &user(65534)).unwrap_err();
        assert_eq!(
            err,
            TargetError::NotYours {
                pid: 7,
                owner: 0,
                me: 65534
            }
        );
        let text = err.to_string();
        assert!(text.contains("exists") && text.contains("uid 0"), "{text}");
        assert!(!text.contains("does not exist"), "{text}");
        // A setuid program run by us: its saved uid is root's.
        let setuid = TargetView {
            uids: [1000, 0, 0, 0],
            ..running(1000)
        };
        assert!(matches!(
            classify(7, &setuid, &user(1000)),
            Err(TargetError::NotYours { owner: 0, .. })
        ));
        assert_eq!(classify(7, &running(1000), &user(1000)), Ok(()));
        assert_eq!(classify(7, &running(1000), &root()), Ok(()));
    }

    #[test]
    fn seccomp_filters_need_cap_sys_admin() {
        let filtered = TargetView {
            seccomp: 2,
            ..running(1000)
        };
        assert_eq!(
            classify(7, &filtered, &user(1000)),
            Err(TargetError::Seccomp { pid: 7 })
        );
        assert_eq!(classify(7, &filtered, &root()), Ok(()));
    }

    #[test]
    fn yama_scopes() {
        let with_scope = |scope| Privileges {
            yama_scope: Some(scope),
            ..user(1000)
        };
        assert_eq!(with_scope(0).check_tracing(false), Ok(()));
        assert_eq!(with_scope(1).check_tracing(true), Ok(()));
        assert!(with_scope(1).check_tracing(false).is_err());
        assert!(with_scope(2).check_tracing(true).is_err());
        assert!(with_scope(3).check_tracing(true).is_err());
        assert_eq!(root().check_tracing(false), Ok(()));
        assert_eq!(user(1000).check_tracing(false), Ok(()));
    }

    #[test]
    fn restore_needs_checkpoint_restore() {
        assert_eq!(root().check_restore(), Ok(()));
        let cr = Privileges {
            capabilities: 1 << CAP_CHECKPOINT_RESTORE,
            ..user(1000)
        };
        assert_eq!(cr.check_restore(), Ok(()));
        let text = user(1000).check_restore().unwrap_err().to_string();
        assert!(text.contains("CAP_CHECKPOINT_RESTORE"), "{text}");
    }

    #[test]
    fn status_fields_are_read() {
        let status = "Name:\tsleep\nState:\tZ (zombie)\nUid:\t1\t2\t3\t4\nThreads:\t1\nSeccomp:\t2\nCapEff:\t0000000000200000\n";
        assert_eq!(status_field(status, "CapEff:"), Some("0000000000200000"));
        assert_eq!(status_field(status, "State:"), Some("Z (zombie)"));
    }
}
