//! Seccomp filters.
//!
//! At checkpoint `PTRACE_SECCOMP_GET_FILTER` reads each frozen thread's filters (their
//! classic BPF programs, newest first) and `PTRACE_SECCOMP_GET_METADATA` their flags
//! (SECCOMP_FILTER_FLAG_LOG). At restore the filters are installed again, oldest first,
//! with `seccomp(SECCOMP_SET_MODE_FILTER)` run inside the process: when every thread had
//! the same filters (the usual case: installed before the threads were created, or with
//! TSYNC), once from the main thread with SECCOMP_FILTER_FLAG_TSYNC, so the threads share
//! them again as before; otherwise in each thread on its own. They are installed while the
//! process still has the restorer's privileges (installing needs no_new_privs or
//! CAP_SYS_ADMIN, which the process may have dropped since), with the process's seccomp
//! suspended for the restorer's remaining remote calls (`PTRACE_O_SUSPEND_SECCOMP`, lifted
//! when the restorer detaches).

use super::attributes::Remote;
use super::memory::MemoryError;
use super::ptrace;
use super::remote::RemoteError;
use crate::image::attributes::{SeccompChain, SeccompFilter, SeccompFilters};
use nix::errno::Errno;
use nix::unistd::Pid;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot read seccomp filter {index} of thread {tid}")]
    Read {
        tid: i32,
        index: u64,
        #[source]
        source: Errno,
    },
    #[error("cannot suspend the seccomp filters of thread {tid} for the restore")]
    Suspend {
        tid: i32,
        #[source]
        source: Errno,
    },
    #[error(
        "seccomp(SECCOMP_FILTER_FLAG_TSYNC) failed for thread {tid}: it has filters of its own"
    )]
    Sync { tid: i32 },
    #[error("the image lists the seccomp filters of {listed} threads, but has {threads} threads")]
    Inconsistent { listed: usize, threads: usize },
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;
const PTRACE_O_SUSPEND_SECCOMP: libc::c_int = 1 << 21;
const SECCOMP_SET_MODE_FILTER: u64 = 1;
const SECCOMP_FILTER_FLAG_TSYNC: u64 = 1;
/// Bytes of a `struct sock_filter`.
const INSN_BYTES: usize = 8;

/// `PTRACE_SECCOMP_GET_FILTER`: the number of instructions of filter `index` (0 is the
/// newest), written into `buf` when it has room.
fn get_filter(tid: Pid, index: u64, buf: Option<&mut [u64]>) -> Result<usize, Errno> {
    let (ptr, room) = match buf {
        Some(b) => (b.as_mut_ptr(), b.len()),
        None => (std::ptr::null_mut(), 0),
    };
    // SAFETY: with a NULL buffer the kernel only counts; otherwise it writes the count it
    // returns times 8 bytes, and is only given the buffer once the count said it fits
    // (`room`), and a filter never changes (filters are immutable once installed).
    let ret = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_FILTER, tid.as_raw(), index, ptr) };
    let n = usize::try_from(Errno::result(ret)?).map_err(|_| Errno::EINVAL)?;
    if room != 0 && n > room {
        return Err(Errno::E2BIG);
    }
    Ok(n)
}

/// `PTRACE_SECCOMP_GET_METADATA`: the flags filter `index` was installed with.
fn get_flags(tid: Pid, index: u64) -> Result<u64, Errno> {
    let mut meta = [index, 0u64];
    // SAFETY: the kernel reads `filter_off` and writes `flags` of the 16-byte
    // `struct seccomp_metadata` at `meta`, whose size is passed.
    let ret = unsafe {
        libc::ptrace(
            PTRACE_SECCOMP_GET_METADATA,
            tid.as_raw(),
            std::mem::size_of_val(&meta),
            meta.as_mut_ptr(),
        )
    };
    Errno::result(ret)?;
    Ok(meta[1])
}

/// The filters of thread `tid`, oldest first (empty: none).
fn thread_filters(tid: Pid) -> Result<Vec<SeccompFilter>, SeccompError> {
    let err = |index| {
        move |source| SeccompError::Read {
            tid: tid.as_raw(),
            index,
            source,
        }
    };
    let mut newest_first = Vec::new();
    for index in 0.. {
        let n = match get_filter(tid, index, None) {
            Ok(n) => n,
            // Past the oldest filter (ENOENT), or no filter mode at all (EINVAL).
            Err(Errno::ENOENT | Errno::EINVAL) => break,
            // Without CAP_SYS_ADMIN even a thread without filters answers EACCES (a
            // checkpointer without it is refused threads with filters earlier).
            Err(Errno::EACCES) if index == 0 && !in_filter_mode(tid) => break,
            Err(e) => return Err(err(index)(e)),
        };
        let mut program = vec![0u64; n];
        get_filter(tid, index, Some(&mut program)).map_err(err(index))?;
        let flags = get_flags(tid, index).map_err(err(index))?;
        newest_first.push(SeccompFilter { flags, program });
    }
    newest_first.reverse();
    Ok(newest_first)
}

/// Whether thread `tid` is in seccomp filter mode (`Seccomp: 2` in its status).
fn in_filter_mode(tid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{tid}/status")).is_ok_and(|s| {
        s.lines()
            .filter_map(|l| l.strip_prefix("Seccomp:"))
            .any(|v| v.trim() == "2")
    })
}

/// The filters of the frozen threads `tids` (None: no thread has any).
pub fn capture(tids: &[Pid]) -> Result<Option<SeccompFilters>, SeccompError> {
    let mut filters: Vec<SeccompFilter> = Vec::new();
    let mut threads = Vec::new();
    for &tid in tids {
        let mut chain = Vec::new();
        for f in thread_filters(tid)? {
            let at = match filters.iter().position(|g| g == &f) {
                Some(at) => at,
                None => {
                    filters.push(f);
                    filters.len() - 1
                }
            };
            chain.push(at);
        }
        threads.push(SeccompChain {
            tid: tid.as_raw(),
            filters: chain,
        });
    }
    if filters.is_empty() {
        return Ok(None);
    }
    threads.sort_by_key(|t| t.tid);
    Ok(Some(SeccompFilters { filters, threads }))
}

/// Makes the restorer's remote calls in thread `tid` pass its filters from now on.
fn suspend(tid: Pid) -> Result<(), SeccompError> {
    let options = ptrace::restore_options()
        | nix::sys::ptrace::Options::from_bits_retain(PTRACE_O_SUSPEND_SECCOMP);
    nix::sys::ptrace::setoptions(tid, options).map_err(|source| SeccompError::Suspend {
        tid: tid.as_raw(),
        source,
    })
}

/// Installs `chain` (indices into `s.filters`, oldest first) in the thread `remote`
/// drives, which is thread `tid`; with `sync`, for all the process's threads at once.
fn install(
    remote: &mut Remote,
    tid: Pid,
    s: &SeccompFilters,
    chain: &[usize],
    sync: bool,
) -> Result<(), SeccompError> {
    if chain.is_empty() {
        return Ok(());
    }
    suspend(tid)?;
    let longest = chain
        .iter()
        .filter_map(|&i| s.filters.get(i))
        .map(|f| f.program.len())
        .max()
        .unwrap_or(0);
    // `struct sock_fprog` (len, padding, pointer), then the program.
    let len = (16 + longest * INSN_BYTES).next_multiple_of(4096) as u64;
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let at = remote.call(
        "mmap(seccomp filter)",
        libc::SYS_mmap,
        &[0, len, rw, anon, u64::MAX, 0],
    )?;
    let installed = install_at(remote, at, s, chain, sync);
    let unmapped = remote.call("munmap(seccomp filter)", libc::SYS_munmap, &[at, len]);
    installed?;
    unmapped?;
    Ok(())
}

fn install_at(
    remote: &mut Remote,
    at: u64,
    s: &SeccompFilters,
    chain: &[usize],
    sync: bool,
) -> Result<(), SeccompError> {
    for f in chain.iter().filter_map(|&i| s.filters.get(i)) {
        let mut bytes = Vec::with_capacity(16 + f.program.len() * INSN_BYTES);
        bytes.extend_from_slice(&(f.program.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&(at + 16).to_le_bytes());
        for insn in &f.program {
            bytes.extend_from_slice(&insn.to_le_bytes());
        }
        remote.write(at, &bytes)?;
        let flags = f.flags | if sync { SECCOMP_FILTER_FLAG_TSYNC } else { 0 };
        let ret = remote.call(
            "seccomp(SECCOMP_SET_MODE_FILTER)",
            libc::SYS_seccomp,
            &[SECCOMP_SET_MODE_FILTER, flags, at],
        )?;
        // With TSYNC a positive result names a thread that could not be synchronised.
        if ret != 0 {
            return Err(SeccompError::Sync { tid: ret as i32 });
        }
    }
    Ok(())
}

/// Whether every thread has the same filters: then they are installed once, with TSYNC.
fn shared(s: &SeccompFilters) -> bool {
    s.threads.windows(2).all(|w| w[0].filters == w[1].filters)
}

/// The main thread's part (it runs once every thread exists): all threads' filters when
/// they are shared, else its own.
pub fn restore_main(
    remote: &mut Remote,
    main_tid: Pid,
    image_main_tid: i32,
    image_threads: usize,
    s: &SeccompFilters,
) -> Result<(), SeccompError> {
    if s.threads.len() != image_threads {
        return Err(SeccompError::Inconsistent {
            listed: s.threads.len(),
            threads: image_threads,
        });
    }
    let sync = shared(s) && image_threads > 1;
    let own = s.threads.iter().find(|t| t.tid == image_main_tid);
    match own {
        Some(chain) => install(remote, main_tid, s, &chain.filters, sync),
        None => Ok(()),
    }
}

/// Another thread's own filters, when the threads' filters differ (run in that thread,
/// right after it is created).
pub fn restore_thread(
    remote: &mut Remote,
    tid: Pid,
    image_tid: i32,
    s: &SeccompFilters,
) -> Result<(), SeccompError> {
    if shared(s) {
        return Ok(());
    }
    match s.threads.iter().find(|t| t.tid == image_tid) {
        Some(chain) => install(remote, tid, s, &chain.filters, false),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(tid: i32, filters: Vec<usize>) -> SeccompChain {
        SeccompChain { tid, filters }
    }

    #[test]
    fn threads_with_the_same_filters_share_them() {
        let f = SeccompFilter {
            flags: 0,
            program: vec![0x7fff_0000_0000_0006],
        };
        let s = SeccompFilters {
            filters: vec![f],
            threads: vec![chain(1, vec![0]), chain(2, vec![0])],
        };
        assert!(shared(&s));
        let s = SeccompFilters {
            threads: vec![chain(1, vec![0]), chain(2, vec![])],
            ..s
        };
        assert!(!shared(&s));
    }

    #[test]
    fn own_thread_has_no_filters() {
        // The test process is no tracee of itself: reading needs a stopped tracee.
        assert!(get_filter(nix::unistd::getpid(), 0, None).is_err());
    }
}
