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
use super::remote::{RemoteError, RemoteThread, find_gadget};
use super::snapshot::Snapshot;
use super::stub::{self, Expect, OP_BYTES, Op};
use super::threads::{self, KernelThreadState};
use crate::image::format::{AltStack, PAGE_SIZE, PendingSignal, SignalAction, ThreadState};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// What the frozen target told about its threads and itself.
pub struct Captured {
    pub snapshot: Option<Snapshot>,
    pub mode: DumpMode,
    pub threads: Vec<ThreadState>,
    pub process_pending: Vec<PendingSignal>,
    pub signals: Vec<SignalAction>,
    pub brk: u64,
}

/// Captures every thread of `frozen`; with `try_snapshot`, forks a snapshot of the target
/// last, once the injected pages are gone from its address space.
pub fn capture_threads(
    frozen: &mut Frozen,
    mem: &ProcessMemory,
    try_snapshot: bool,
) -> Result<Captured, DumpError> {
    let leader = frozen.leader();
    let gadget = find_syscall_gadget(mem, leader)?;
    let mut lead = RemoteThread::new(leader, gadget)?;
    let layout = Layout::new(frozen.tids().len());
    let (result, unmapped) = match map_pages(&mut lead, &layout) {
        Ok(at) => {
            let result = capture_all(frozen, &mut lead, mem, &layout.at(at));
            let unmapped = lead.checked("munmap(capture)", libc::SYS_munmap, &[at, layout.len()]);
            (result, unmapped.map(drop))
        }
        Err(e) => (Err(e), Ok(())),
    };
    let snapshot = match (&result, &unmapped, try_snapshot) {
        (Ok(_), Ok(()), true) => fork_snapshot(&mut lead),
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
    let code = stub::assemble(at.code, 0, 0).map_err(|e| DumpError::Assemble(e.to_string()))?;
    let tables: Vec<Table> = order
        .iter()
        .enumerate()
        .map(|(k, &tid)| Table::new(tid, at.slot(k), k == 0))
        .collect();
    load(mem, at, &code, &tables)?;
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
        .and_then(|()| run_tables(lead, &mut others, &tables, code.table_entry, code.done_rip));
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
    let mut states = Vec::with_capacity(order.len());
    for ((&tid, regs), a) in order.iter().zip(&saved).zip(&answers) {
        states.push(threads::capture(tid, regs, mem, a.kernel)?);
    }
    Ok(Captured {
        snapshot: None,
        mode: DumpMode::Frozen,
        process_pending: threads::pending_signals(leader, true)?,
        threads: states,
        signals: answers[0].signals.clone(),
        brk: answers[0].brk,
    })
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
fn fork_snapshot(lead: &mut RemoteThread) -> Option<Snapshot> {
    match Snapshot::fork(lead) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!(
                "mlckpt: note: fork-snapshot impossible ({}); dumping while the target is frozen",
                crate::error_chain(&e)
            );
            None
        }
    }
}

pub fn hold(frozen: &mut Frozen, tid: Pid, sig: Option<Signal>) {
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
/// Bytes of `stack_t`: ss_sp, ss_flags (padded), ss_size.
const STACK_T_BYTES: u64 = 24;
/// Outputs of a thread's own calls: its clear_child_tid, then its `stack_t`.
const THREAD_OUT_BYTES: u64 = 8 + STACK_T_BYTES;
/// Calls every thread makes: prctl(PR_GET_TID_ADDRESS), sigaltstack.
const THREAD_OPS: u64 = 2;
/// A non-leader thread's slot: its table and outputs.
const THREAD_SLOT: u64 = (THREAD_OPS * OP_BYTES as u64 + THREAD_OUT_BYTES).next_multiple_of(64);
/// The leader's slot: its table (its calls, brk, every signal's action) and outputs.
const LEADER_SLOT: u64 =
    ((THREAD_OPS + 1 + SIGNALS) * OP_BYTES as u64 + THREAD_OUT_BYTES + SIGNALS * SIGACTION_BYTES)
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
    brk: u64,
    signals: Vec<SignalAction>,
}

impl Table {
    fn new(tid: Pid, slot: u64, leader: bool) -> Table {
        let n = THREAD_OPS + if leader { 1 + SIGNALS } else { 0 };
        let out = slot + n * OP_BYTES as u64;
        let mut calls: Vec<(i64, Vec<u64>, &'static str)> = vec![
            (
                libc::SYS_prctl,
                vec![libc::PR_GET_TID_ADDRESS as u64, out],
                "prctl(PR_GET_TID_ADDRESS)",
            ),
            (libc::SYS_sigaltstack, vec![0, out + 8], "sigaltstack"),
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
        let stack_flags = i32::from_le_bytes(
            slot[(out + 16) as usize..(out + 20) as usize]
                .try_into()
                .expect("4 bytes"),
        );
        let kernel = KernelThreadState {
            clear_child_tid: word(out),
            sigaltstack: (stack_flags & libc::SS_DISABLE == 0).then(|| AltStack {
                sp: word(out + 8),
                flags: stack_flags,
                size: word(out + 24),
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
        Ok(Answers {
            kernel,
            brk: if self.leader { result(2) } else { 0 },
            signals,
        })
    }
}
