//! Capturing the frozen target's threads and the process state only the process itself can
//! report (brk, signal actions, each thread's clear_child_tid and alternate stack).
//!
//! Those answers need system calls made inside the target. Made one by one through a
//! `syscall` gadget, each costs two ptrace stops: ~140 for one thread, and a thread at a
//! time. Instead the op-table stub (the restorer's, see `stub`) is loaded into a page mapped
//! for it, and every thread runs its own table of calls through it at once, to one `int3`:
//! one ptrace round trip per thread, all threads in parallel. The pages are unmapped again
//! before the memory map is read.

use super::dump::{DumpError, DumpMode};
use super::freeze::Frozen;
use super::inspect;
use super::memory::ProcessMemory;
use super::ptrace::SignalNumber;
use super::remote::{RemoteError, RemoteThread, find_gadget};
use super::snapshot::{Snapshot, SnapshotParent};
use super::stub::{self, Expect, OP_BYTES, Op};
use super::threads::{self, KernelThreadState};
use crate::image::format::{
    AltStack, PAGE_SIZE, PendingSignal, RobustList, SignalAction, ThreadState,
};
use nix::unistd::Pid;

/// What the frozen target told about its threads and itself.
pub struct Captured {
    pub snapshot: Option<Snapshot>,
    pub mode: DumpMode,
    pub threads: Vec<ThreadState>,
    pub process_pending: Vec<PendingSignal>,
    pub signals: Vec<SignalAction>,
    pub brk: u64,
    pub flags: ProcessFlags,
    /// Timers and other attributes (see `attributes`).
    pub attributes: crate::image::attributes::ProcessAttributes,
    /// Each thread's timer slack (by TID), for `attributes`.
    pub timer_slack: Vec<(Pid, u64)>,
}

/// Captures every thread of `frozen`; with `snapshot`, forks a snapshot of the target
/// last (whose child it is said there), once the injected pages are gone from its address
/// space.
pub fn capture_threads(
    frozen: &mut Frozen,
    mem: &ProcessMemory,
    snapshot: Option<SnapshotParent>,
) -> Result<Captured, DumpError> {
    let leader = frozen.leader();
    let gadget = find_syscall_gadget(mem, leader)?;
    let mut lead = RemoteThread::new(leader, gadget)?;
    let layout = Layout::new(frozen.tids().len());
    let (result, unmapped) = match map_pages(&mut lead, &layout) {
        Ok(at) => {
            let placed = layout.at(at);
            let result = capture_all(frozen, &mut lead, mem, &placed).and_then(|mut c| {
                let pending = std::iter::once(&mut c.process_pending)
                    .chain(c.threads.iter_mut().map(|t| &mut t.pending_signals))
                    .collect();
                c.attributes = super::attributes::capture(super::attributes::Capturing {
                    frozen,
                    lead: &mut lead,
                    mem,
                    scratch: placed.data,
                    injected: (at, at + layout.len()),
                    pending,
                    timer_slack: &c.timer_slack,
                })?;
                Ok(c)
            });
            let unmapped = lead.checked("munmap(capture)", libc::SYS_munmap, &[at, layout.len()]);
            (result, unmapped.map(drop))
        }
        Err(e) => (Err(e), Ok(())),
    };
    let snapshot = match (&result, &unmapped, snapshot) {
        (Ok(_), Ok(()), Some(parent)) => fork_snapshot(&mut lead, parent),
        _ => None,
    };
    hold(frozen, leader, lead.finish()?);
    unmapped?;
    let mut captured = result?;
    captured.mode = if snapshot.is_some() {
        DumpMode::Snapshot
    } else {
        DumpMode::Frozen
    };
    captured.snapshot = snapshot;
    Ok(captured)
}

/// Maps the code page (read + execute) and the tables after it (read + write).
fn map_pages(lead: &mut RemoteThread, layout: &Layout) -> Result<u64, DumpError> {
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let at = lead.checked(
        "mmap(capture)",
        libc::SYS_mmap,
        &[
            0,
            layout.len(),
            rw,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
            u64::MAX,
            0,
        ],
    )?;
    let rx = (libc::PROT_READ | libc::PROT_EXEC) as u64;
    if let Err(e) = lead.checked(
        "mprotect(capture)",
        libc::SYS_mprotect,
        &[at, PAGE_SIZE, rx],
    ) {
        let _ = lead.checked("munmap(capture)", libc::SYS_munmap, &[at, layout.len()]);
        return Err(e.into());
    }
    Ok(at)
}

fn capture_all(
    frozen: &mut Frozen,
    lead: &mut RemoteThread,
    mem: &ProcessMemory,
    at: &Placed,
) -> Result<Captured, DumpError> {
    let leader = frozen.leader();
    // The leader first: its slot is the large one, and a restore recreates the other
    // threads from it.
    let order: Vec<Pid> = std::iter::once(leader)
        .chain(frozen.tids().into_iter().filter(|&t| t != leader))
        .collect();
    let code = injected_code()?;
    let (entry, done_rip) = (at.code + code.table_entry, at.code + code.done_rip);
    let tables: Vec<Table> = order
        .iter()
        .enumerate()
        .map(|(k, &tid)| Table::new(tid, at.slot(k), k == 0))
        .collect();
    load(mem, at, code, &tables)?;
    let mut others = Vec::with_capacity(order.len() - 1);
    let mut borrowed = Ok(());
    for &tid in &order[1..] {
        match RemoteThread::new(tid, lead.gadget()) {
            Ok(r) => others.push(r),
            Err(e) => {
                borrowed = Err(e);
                break;
            }
        }
    }
    let ran = borrowed
        .map_err(DumpError::from)
        .and_then(|()| run_tables(lead, &mut others, &tables, entry, done_rip));
    let mut saved = vec![*lead.saved_regs()];
    saved.extend(others.iter().map(|r| *r.saved_regs()));
    let given_back = give_back(frozen, others);
    ran?;
    given_back?;

    let data = mem.read(at.data, at.data_len as usize)?;
    let mut answers = Vec::with_capacity(tables.len());
    for t in &tables {
        answers.push(t.answers(&data[(t.base - at.data) as usize..])?);
    }
    let (signals, brk, flags) = (
        std::mem::take(&mut answers[0].signals),
        answers[0].brk,
        answers[0].flags,
    );
    let timer_slack = order
        .iter()
        .zip(&answers)
        .map(|(&tid, a)| (tid, a.timer_slack_ns))
        .collect();
    let mut states = Vec::with_capacity(order.len());
    for ((&tid, regs), a) in order.iter().zip(&saved).zip(answers) {
        // The mask from before the freeze: the frozen thread blocks nearly everything.
        let sigmask = frozen.sigmask(tid);
        states.push(threads::capture(tid, regs, mem, a.kernel, sigmask)?);
    }
    Ok(Captured {
        snapshot: None,
        mode: DumpMode::Frozen,
        process_pending: threads::pending_signals(leader, true)?,
        threads: states,
        signals,
        brk,
        flags,
        attributes: Default::default(),
        timer_slack,
    })
}

/// The op-table stub as assembled at address 0. Entered at `table_entry` it runs anywhere
/// (its branches are relative), so it is assembled once per process, ahead of any freeze
/// by `prepare` (the assembler's first use takes milliseconds).
fn injected_code() -> Result<&'static stub::Stub, DumpError> {
    static CODE: std::sync::OnceLock<Result<stub::Stub, String>> = std::sync::OnceLock::new();
    CODE.get_or_init(|| stub::assemble(0, 0, 0).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| DumpError::Assemble(e.clone()))
}

/// Does ahead of time what the first capture would otherwise do while the target is
/// frozen.
pub fn prepare() {
    let _ = injected_code();
}

/// Writes the stub and every thread's table into the injected pages.
fn load(
    mem: &ProcessMemory,
    at: &Placed,
    code: &stub::Stub,
    tables: &[Table],
) -> Result<(), DumpError> {
    mem.write(at.code, &code.code)?;
    let mut data = vec![0u8; at.data_len as usize];
    for t in tables {
        let bytes = stub::encode_table(&t.ops);
        let from = (t.base - at.data) as usize;
        data[from..from + bytes.len()].copy_from_slice(&bytes);
    }
    Ok(mem.write(at.data, &data)?)
}

/// Runs every thread's table at once (the leader's by `lead`, the others' by `others` in
/// order). Every thread that started is waited for, even after an error: none may be let
/// go inside the injected code.
fn run_tables(
    lead: &mut RemoteThread,
    others: &mut [RemoteThread],
    tables: &[Table],
    entry: u64,
    done_rip: u64,
) -> Result<(), DumpError> {
    let mut threads: Vec<&mut RemoteThread> = std::iter::once(lead).chain(others).collect();
    let mut first_error: Option<DumpError> = None;
    let mut started = 0;
    for (thread, table) in threads.iter_mut().zip(tables) {
        match thread.start_stub(entry, table.base, table.ops.len() as u64) {
            Ok(()) => started += 1,
            Err(e) => {
                first_error = Some(e.into());
                break;
            }
        }
    }
    for thread in threads.iter_mut().take(started) {
        if let Err(e) = thread.wait_stub(done_rip) {
            first_error.get_or_insert(e.into());
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Gives borrowed threads their registers back, keeping signals that arrived meanwhile.
fn give_back(frozen: &mut Frozen, threads: Vec<RemoteThread>) -> Result<(), DumpError> {
    let mut first_error = None;
    for thread in threads {
        let tid = thread.tid();
        match thread.finish() {
            Ok(sig) => hold(frozen, tid, sig),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), |e| Err(e.into()))
}

/// A snapshot, or None (with a note) when the target cannot fork: memory or process
/// limits. The checkpoint then dumps while frozen, as it would without snapshots.
fn fork_snapshot(lead: &mut RemoteThread, parent: SnapshotParent) -> Option<Snapshot> {
    match Snapshot::fork(lead, parent) {
        Ok(s) => Some(s),
        Err(e) => {
            crate::info!(
                "note: fork-snapshot impossible ({}); dumping while the target is frozen",
                crate::error_chain(&e)
            );
            None
        }
    }
}

pub fn hold(frozen: &mut Frozen, tid: Pid, sig: Option<SignalNumber>) {
    if let Some(sig) = sig {
        frozen.hold_signal(tid, sig);
    }
}

/// The address of a `syscall` instruction in the frozen process `pid`.
pub fn find_syscall_gadget(mem: &ProcessMemory, pid: Pid) -> Result<u64, DumpError> {
    Ok(find_gadget(mem, &gadget_candidates(pid)?)?)
}

/// Where to look for a `syscall` instruction: the vDSO (its fallback paths have one),
/// found through the auxv's AT_SYSINFO_EHDR without walking the memory map; failing that,
/// every executable mapping, smallest first.
fn gadget_candidates(pid: Pid) -> Result<Vec<(u64, u64)>, DumpError> {
    const AT_SYSINFO_EHDR: u64 = 33;
    const VDSO_PAGES: u64 = 2;
    let auxv = inspect::read_auxv(pid)?;
    let vdso = auxv
        .chunks_exact(2)
        .find(|kv| kv[0] == AT_SYSINFO_EHDR)
        .map(|kv| (kv[1], kv[1] + VDSO_PAGES * PAGE_SIZE));
    if let Some(range) = vdso {
        return Ok(vec![range]);
    }
    let mut plans: Vec<inspect::RegionPlan> = inspect::read_regions(pid)?
        .into_iter()
        .filter(|p| p.region.prot.exec)
        .collect();
    plans.sort_by_key(|p| p.region.len());
    Ok(plans
        .iter()
        .map(|p| (p.region.start, p.region.end))
        .collect())
}

/// Signals whose action is asked: every one (`rt_sigaction` answers for SIGKILL and SIGSTOP
/// too, with the default).
const SIGNALS: u64 = 64;
/// Bytes of a kernel `struct sigaction`: handler, flags, restorer, mask.
const SIGACTION_BYTES: u64 = 32;
/// Outputs of every thread's calls, at these offsets of its output area:
/// clear_child_tid (8 bytes), `stack_t` (ss_sp, ss_flags padded, ss_size: 24), name (16,
/// NUL-padded), CPU mask (128 bytes: 1024 CPUs), robust list head and length (8 + 8).
const OUT_TID_ADDRESS: u64 = 0;
const OUT_STACK: u64 = 8;
const OUT_NAME: u64 = 32;
const OUT_AFFINITY: u64 = 48;
const AFFINITY_BYTES: u64 = 128;
const OUT_ROBUST_HEAD: u64 = OUT_AFFINITY + AFFINITY_BYTES;
const OUT_ROBUST_LEN: u64 = OUT_ROBUST_HEAD + 8;
const THREAD_OUT_BYTES: u64 = OUT_ROBUST_LEN + 8;
/// Calls every thread makes: prctl(PR_GET_TID_ADDRESS), sigaltstack, prctl(PR_GET_NAME),
/// sched_getaffinity, get_robust_list, prctl(PR_GET_TIMERSLACK).
const THREAD_OPS: u64 = 6;
/// The op whose result is the CPU mask's size.
const AFFINITY_OP: usize = 3;
/// The op whose result is the thread's timer slack.
const TIMER_SLACK_OP: usize = 5;
/// The leader's `brk(0)`, right after the calls every thread makes.
const BRK_OP: usize = THREAD_OPS as usize;
/// A non-leader thread's slot: its table and outputs.
const THREAD_SLOT: u64 = (THREAD_OPS * OP_BYTES as u64 + THREAD_OUT_BYTES).next_multiple_of(64);
/// The leader's calls after every signal's action: prctl(PR_GET_PDEATHSIG) and
/// prctl(PR_GET_CHILD_SUBREAPER), each answering an int, in 8 bytes of output each.
const PROCESS_OPS: u64 = 2;
/// The leader's slot: its table (its calls, brk, every signal's action, the process's
/// prctl flags) and outputs.
const LEADER_SLOT: u64 = ((THREAD_OPS + 1 + SIGNALS + PROCESS_OPS) * OP_BYTES as u64
    + THREAD_OUT_BYTES
    + SIGNALS * SIGACTION_BYTES
    + PROCESS_OPS * 8)
    .next_multiple_of(PAGE_SIZE);

/// Sizes of the injected pages: one page of code, then the leader's slot, then one slot
/// per other thread.
struct Layout {
    threads: usize,
}

impl Layout {
    fn new(threads: usize) -> Layout {
        Layout { threads }
    }

    fn data_len(&self) -> u64 {
        (LEADER_SLOT + self.threads.saturating_sub(1) as u64 * THREAD_SLOT)
            .next_multiple_of(PAGE_SIZE)
    }

    fn len(&self) -> u64 {
        PAGE_SIZE + self.data_len()
    }

    fn at(&self, base: u64) -> Placed {
        Placed {
            code: base,
            data: base + PAGE_SIZE,
            data_len: self.data_len(),
        }
    }
}

/// The injected pages where the target mapped them.
struct Placed {
    code: u64,
    data: u64,
    data_len: u64,
}

impl Placed {
    /// Slot `k`: the leader's for 0, then one per other thread.
    fn slot(&self, k: usize) -> u64 {
        match k {
            0 => self.data,
            k => self.data + LEADER_SLOT + (k as u64 - 1) * THREAD_SLOT,
        }
    }
}

/// One thread's calls in its slot.
struct Table {
    tid: Pid,
    base: u64,
    ops: Vec<Op>,
    /// What each op is, for an error.
    names: Vec<&'static str>,
    out: u64,
    leader: bool,
}

/// What one thread's calls answered.
struct Answers {
    kernel: KernelThreadState,
    timer_slack_ns: u64,
    brk: u64,
    signals: Vec<SignalAction>,
    flags: ProcessFlags,
}

/// Per-process prctl settings only the process itself can read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessFlags {
    /// `PR_GET_PDEATHSIG`: the signal it gets when its parent dies (0: none).
    pub parent_death_signal: i32,
    /// `PR_GET_CHILD_SUBREAPER`.
    pub child_subreaper: bool,
}

impl Table {
    fn new(tid: Pid, slot: u64, leader: bool) -> Table {
        let n = THREAD_OPS + if leader { 1 + SIGNALS + PROCESS_OPS } else { 0 };
        let out = slot + n * OP_BYTES as u64;
        let mut calls: Vec<(i64, Vec<u64>, &'static str)> = vec![
            (
                libc::SYS_prctl,
                vec![libc::PR_GET_TID_ADDRESS as u64, out + OUT_TID_ADDRESS],
                "prctl(PR_GET_TID_ADDRESS)",
            ),
            (
                libc::SYS_sigaltstack,
                vec![0, out + OUT_STACK],
                "sigaltstack",
            ),
            (
                libc::SYS_prctl,
                vec![libc::PR_GET_NAME as u64, out + OUT_NAME],
                "prctl(PR_GET_NAME)",
            ),
            (
                libc::SYS_sched_getaffinity,
                vec![0, AFFINITY_BYTES, out + OUT_AFFINITY],
                "sched_getaffinity",
            ),
            (
                libc::SYS_get_robust_list,
                vec![0, out + OUT_ROBUST_HEAD, out + OUT_ROBUST_LEN],
                "get_robust_list",
            ),
            (
                libc::SYS_prctl,
                vec![libc::PR_GET_TIMERSLACK as u64, 0, 0, 0, 0],
                "prctl(PR_GET_TIMERSLACK)",
            ),
        ];
        if leader {
            calls.push((libc::SYS_brk, vec![0], "brk(0)"));
            for signo in 1..=SIGNALS {
                let old = out + THREAD_OUT_BYTES + (signo - 1) * SIGACTION_BYTES;
                calls.push((
                    libc::SYS_rt_sigaction,
                    vec![signo, 0, old, 8],
                    "rt_sigaction",
                ));
            }
            let flags = out + THREAD_OUT_BYTES + SIGNALS * SIGACTION_BYTES;
            calls.push((
                libc::SYS_prctl,
                vec![libc::PR_GET_PDEATHSIG as u64, flags],
                "prctl(PR_GET_PDEATHSIG)",
            ));
            calls.push((
                libc::SYS_prctl,
                vec![libc::PR_GET_CHILD_SUBREAPER as u64, flags + 8],
                "prctl(PR_GET_CHILD_SUBREAPER)",
            ));
        }
        Table {
            tid,
            base: slot,
            ops: calls
                .iter()
                .map(|(nr, args, what)| Op::new(*nr, args, Expect::Anything, *what))
                .collect(),
            names: calls.iter().map(|c| c.2).collect(),
            out,
            leader,
        }
    }

    /// Reads the answers from the slot's bytes (`slot` starts at the table).
    fn answers(&self, slot: &[u8]) -> Result<Answers, RemoteError> {
        let word = |at: u64| {
            let i = at as usize;
            u64::from_le_bytes(slot[i..i + 8].try_into().expect("8 bytes"))
        };
        // Each op's result is stored in its table entry, in the expected-value word.
        let result = |op: usize| word(op as u64 * OP_BYTES as u64 + 64);
        for (i, name) in self.names.iter().enumerate() {
            let ret = result(i) as i64;
            if (-4095..0).contains(&ret) {
                return Err(RemoteError::Syscall {
                    tid: self.tid.as_raw(),
                    name,
                    source: std::io::Error::from_raw_os_error(-ret as i32),
                });
            }
        }
        let out = self.out - self.base;
        let bytes = |at: u64, len: u64| &slot[at as usize..(at + len) as usize];
        let stack_flags =
            i32::from_le_bytes(bytes(out + OUT_STACK + 8, 4).try_into().expect("4 bytes"));
        let name = bytes(out + OUT_NAME, 16);
        let name_len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        let mask_len = result(AFFINITY_OP).min(AFFINITY_BYTES);
        let robust_head = word(out + OUT_ROBUST_HEAD);
        let kernel = KernelThreadState {
            clear_child_tid: word(out + OUT_TID_ADDRESS),
            sigaltstack: (stack_flags & libc::SS_DISABLE == 0).then(|| AltStack {
                sp: word(out + OUT_STACK),
                flags: stack_flags,
                size: word(out + OUT_STACK + 16),
            }),
            name: String::from_utf8_lossy(&name[..name_len]).into_owned(),
            affinity: bytes(out + OUT_AFFINITY, mask_len)
                .chunks(8)
                .map(|c| {
                    let mut w = [0u8; 8];
                    w[..c.len()].copy_from_slice(c);
                    u64::from_le_bytes(w)
                })
                .collect(),
            robust_list: (robust_head != 0).then(|| RobustList {
                head: robust_head,
                len: word(out + OUT_ROBUST_LEN),
            }),
        };
        let mut signals = Vec::new();
        if self.leader {
            for signo in 1..=SIGNALS {
                let at = out + THREAD_OUT_BYTES + (signo - 1) * SIGACTION_BYTES;
                let action = SignalAction {
                    signo: signo as i32,
                    handler: word(at),
                    flags: word(at + 8),
                    restorer: word(at + 16),
                    mask: word(at + 24),
                };
                let default = action.handler == 0 && action.flags == 0 && action.mask == 0;
                let settable = signo != libc::SIGKILL as u64 && signo != libc::SIGSTOP as u64;
                if settable && !default {
                    signals.push(action);
                }
            }
        }
        let flags_at = out + THREAD_OUT_BYTES + SIGNALS * SIGACTION_BYTES;
        let int_at = |at: u64| i32::from_le_bytes(bytes(at, 4).try_into().expect("4 bytes"));
        let flags = if self.leader {
            ProcessFlags {
                parent_death_signal: int_at(flags_at),
                child_subreaper: int_at(flags_at + 8) != 0,
            }
        } else {
            ProcessFlags::default()
        };
        Ok(Answers {
            kernel,
            timer_slack_ns: result(TIMER_SLACK_OP),
            brk: if self.leader { result(BRK_OP) } else { 0 },
            signals,
            flags,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of a slot after a run: the table with results stored, then outputs.
    fn slot_after_run(table: &Table, fill: impl Fn(&mut [u8], u64)) -> Vec<u8> {
        let mut slot = stub::encode_table(&table.ops);
        slot.resize(LEADER_SLOT as usize, 0);
        fill(&mut slot, table.out - table.base);
        slot
    }

    fn put(slot: &mut [u8], at: u64, bytes: &[u8]) {
        slot[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
    }

    fn result_at(op: usize) -> u64 {
        op as u64 * OP_BYTES as u64 + 64
    }

    #[test]
    fn answers_are_read_where_each_call_put_them() {
        let table = Table::new(Pid::from_raw(7), 0x10_0000, true);
        // Where the kernel's answers land follows from the ops themselves.
        let op_of = |nr: i64| table.ops.iter().position(|op| op.nr == nr).unwrap();
        let (brk, affinity) = (op_of(libc::SYS_brk), op_of(libc::SYS_sched_getaffinity));
        let slot = slot_after_run(&table, |slot, out| {
            put(slot, result_at(brk), &0x5555_6000u64.to_le_bytes());
            put(slot, result_at(affinity), &8u64.to_le_bytes());
            put(slot, out + OUT_TID_ADDRESS, &0x7f00_1234u64.to_le_bytes());
            put(slot, out + OUT_STACK + 8, &(libc::SS_DISABLE).to_le_bytes());
            put(slot, out + OUT_NAME, b"worker-3\0");
            put(slot, out + OUT_AFFINITY, &3u64.to_le_bytes());
            put(slot, out + OUT_ROBUST_HEAD, &0x7f00_0100u64.to_le_bytes());
            put(slot, out + OUT_ROBUST_LEN, &24u64.to_le_bytes());
            let usr1 = out + THREAD_OUT_BYTES + (libc::SIGUSR1 as u64 - 1) * SIGACTION_BYTES;
            put(slot, usr1, &0x40_1000u64.to_le_bytes());
        });
        let a = table.answers(&slot).unwrap();
        assert_eq!(a.brk, 0x5555_6000);
        assert_eq!(a.kernel.clear_child_tid, 0x7f00_1234);
        assert_eq!(a.kernel.sigaltstack, None);
        assert_eq!(a.kernel.name, "worker-3");
        assert_eq!(a.kernel.affinity, vec![3]);
        assert_eq!(
            a.kernel.robust_list,
            Some(RobustList {
                head: 0x7f00_0100,
                len: 24
            })
        );
        let signals: Vec<(i32, u64)> = a.signals.iter().map(|s| (s.signo, s.handler)).collect();
        assert_eq!(signals, vec![(libc::SIGUSR1, 0x40_1000)]);
    }

    #[test]
    fn a_failed_call_is_an_error_naming_it() {
        let table = Table::new(Pid::from_raw(9), 0x10_0000, false);
        let slot = slot_after_run(&table, |slot, _| {
            put(slot, result_at(1), &(-14i64).to_le_bytes());
        });
        let e = table.answers(&slot).err().unwrap().to_string();
        assert!(e.contains("sigaltstack") && e.contains("thread 9"), "{e}");
    }

    #[test]
    fn slots_do_not_overlap() {
        let at = Layout::new(3).at(0x1000);
        let leader = Table::new(Pid::from_raw(1), at.slot(0), true);
        let next = Table::new(Pid::from_raw(2), at.slot(1), false);
        assert!(leader.out + THREAD_OUT_BYTES + SIGNALS * SIGACTION_BYTES <= next.base);
        assert!(next.out + THREAD_OUT_BYTES <= at.slot(2));
        assert!(at.slot(2) + THREAD_SLOT <= at.data + at.data_len);
    }
}
