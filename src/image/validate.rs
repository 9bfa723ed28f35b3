//! Whether a manifest describes something mlckpt could have written. Checksums only prove
//! that nobody changed an image since CHECKSUMS was written; a manifest edited and then
//! re-summed (or written by a buggy version) must still be refused before a restore
//! creates anything, with a message naming each bad field, rather than crash the restorer
//! or rebuild a process from nonsense. [`validate`] is that one pass: the reader runs it on
//! every manifest it opens.
//!
//! It checks what the restore relies on without looking further (runs inside their region
//! and inside pages.bin, parents named by runs, ids, fd numbers, sizes, ranges of kernel
//! values). What needs the machine (the kernel, the CPU, files, PIDs in use) is checked by
//! the restore's own preflight; what needs a parent's manifest by the image opener.

use super::format::{
    Backing, FdKind, FdState, Manifest, MemoryRegion, PAGE_SIZE, PendingSignal, ProcessState,
    ThreadState, TreeLinks,
};
use super::name::check_job_name;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;

/// End of the x86-64 user address space (47-bit): no region of a process lies above it.
pub const TASK_TOP: u64 = 0x7fff_ffff_f000;
/// The kernel's PID_MAX_LIMIT on 64-bit: no PID or TID is larger.
pub const PID_MAX: i32 = 4 * 1024 * 1024;
/// Largest `NT_X86_XSTATE` buffer the tracer reads (AVX-512 with AMX tiles fits).
pub const MAX_XSTATE_BYTES: u32 = 16 * 1024;
/// The legacy FXSAVE area plus the XSAVE header: the smallest xstate a kernel reports.
const MIN_XSTATE_BYTES: u32 = 512;
/// Words of auxv the restorer passes to `PR_SET_MM_MAP`; the kernel's own `saved_auxv` is
/// smaller (AT_VECTOR_SIZE, about 50 words), so nothing a kernel wrote is longer.
pub const MAX_AUXV_WORDS: usize = 128;
/// Highest signal number (SIGRTMAX on Linux).
const MAX_SIGNAL: i32 = 64;
/// The kernel's default `fs.nr_open`: no fd number reaches it.
const MAX_FD: i32 = 1 << 20;
/// `siginfo_t` is 128 bytes on x86-64.
const SIGINFO_BYTES: usize = 128;
/// RLIM_NLIMITS on Linux.
const RLIMIT_COUNT: u32 = 16;
/// CPUs an affinity mask may name (the kernel's NR_CPUS maximum is 8192).
const MAX_AFFINITY_WORDS: usize = 8192 / 64;
/// Longer incremental chains than this are not something `full_every` can make.
const MAX_CHAIN_DEPTH: u32 = 1 << 16;
/// Ranks of one job (far more than any machine runs).
pub const MAX_RANK: u32 = 1 << 24;
/// Bytes of a kernel release (`struct utsname` field) or a version string.
const MAX_LABEL_BYTES: usize = 64;
/// Problems listed in one error; the count says how many more there were.
const MAX_LISTED: usize = 20;

/// One thing wrong with a manifest: where (a path such as `regions[3].runs[0].len` or
/// `members[1].threads[0].tid`) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub problem: String,
}

impl Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// A manifest that is well-formed JSON but not a consistent image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(.problems, *.more))]
pub struct InvalidManifest {
    /// The first problems found (at most [`MAX_LISTED`]).
    pub problems: Vec<Problem>,
    /// Problems found beyond those listed.
    pub more: usize,
}

impl InvalidManifest {
    /// Whether some problem is about `field` (a prefix of its path).
    pub fn names(&self, field: &str) -> bool {
        self.problems.iter().any(|p| p.field.starts_with(field))
    }
}

fn describe(problems: &[Problem], more: usize) -> String {
    let mut text = format!(
        "the manifest is inconsistent ({} problem{}):",
        problems.len() + more,
        if problems.len() + more == 1 { "" } else { "s" }
    );
    for p in problems {
        text.push_str(&format!("\n  - {p}"));
    }
    if more > 0 {
        text.push_str(&format!("\n  - and {more} more"));
    }
    text
}

/// Collects problems under a field path.
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
    more: usize,
}

impl Checker {
    fn fail(&mut self, field: impl Display, problem: impl Into<String>) {
        if self.problems.len() < MAX_LISTED {
            self.problems.push(Problem {
                field: field.to_string(),
                problem: problem.into(),
            });
        } else {
            self.more += 1;
        }
    }

    fn check(&mut self, ok: bool, field: impl Display, problem: impl Into<String>) {
        if !ok {
            self.fail(field, problem);
        }
    }

    fn text(&mut self, field: impl Display, value: &str, max: usize) {
        if value.contains('\0') {
            self.fail(&field, "contains a NUL byte");
        }
        if value.len() > max {
            self.fail(&field, format!("is {} bytes, more than {max}", value.len()));
        }
    }

    /// A path the restore opens: absolute, no NUL.
    fn path(&mut self, field: impl Display, value: &str) {
        self.text(&field, value, libc::PATH_MAX as usize);
        self.check(value.starts_with('/'), &field, "is not an absolute path");
    }

    fn id(&mut self, field: impl Display, id: i32) {
        self.check(
            (1..=PID_MAX).contains(&id),
            field,
            format!("{id} is not a process or thread id (1..={PID_MAX})"),
        );
    }

    fn signal(&mut self, field: impl Display, signo: i32, allow_none: bool) {
        let low = if allow_none { 0 } else { 1 };
        self.check(
            (low..=MAX_SIGNAL).contains(&signo),
            field,
            format!("{signo} is not a signal number ({low}..={MAX_SIGNAL})"),
        );
    }

    fn finish(self) -> Result<(), InvalidManifest> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(InvalidManifest {
                problems: self.problems,
                more: self.more,
            })
        }
    }
}

/// Checks every field a restore relies on; all problems are reported (up to a limit).
pub fn validate(m: &Manifest) -> Result<(), InvalidManifest> {
    let mut c = Checker::default();
    if let Err(e) = check_job_name(&m.job) {
        c.fail("job", format!("{:?} {e}", m.job));
    }
    c.check(
        m.rank < MAX_RANK,
        "rank",
        format!("{} is not below {MAX_RANK}", m.rank),
    );
    c.text("mlckpt_version", &m.mlckpt_version, MAX_LABEL_BYTES);
    c.text("kernel", &m.kernel, MAX_LABEL_BYTES);
    c.check(
        (MIN_XSTATE_BYTES..=MAX_XSTATE_BYTES).contains(&m.cpu.xstate_size),
        "cpu.xstate_size",
        format!(
            "{} bytes is not an xstate size ({MIN_XSTATE_BYTES}..={MAX_XSTATE_BYTES})",
            m.cpu.xstate_size
        ),
    );
    let parents = check_parents(&mut c, m);
    let mut ids = IdsSeen::default();
    let objects = check_objects(&mut c, m, &parents);
    let procs = m.processes();
    let mut earlier_pids = BTreeSet::new();
    for (i, p) in procs.iter().enumerate() {
        let at = process_field_prefix(i);
        let pid = p.process.pid;
        check_process(&mut c, &at, p.process, &mut ids);
        if i > 0 {
            c.check(
                earlier_pids.contains(&p.process.tree.ppid),
                format!("{at}process.tree.ppid"),
                format!(
                    "{} is not a process listed before it (parents come first)",
                    p.process.tree.ppid
                ),
            );
        }
        earlier_pids.insert(pid);
        check_threads(&mut c, &at, pid, p.threads, m.cpu.xstate_size, &mut ids);
        let pages = PagesBound {
            own_seq: m.seq,
            own_bytes: m.pages_bytes,
            parents: &parents,
        };
        check_regions(&mut c, &at, p.regions, &pages);
        check_fds(&mut c, &at, p.fds, &objects);
        let mut signos = BTreeSet::new();
        for (k, s) in p.signals.iter().enumerate() {
            let field = format!("{at}signals[{k}].signo");
            c.signal(&field, s.signo, false);
            c.check(signos.insert(s.signo), &field, "is listed twice");
        }
    }
    check_written_files(&mut c, m, &parents);
    let kernel_objects = crate::objects::sysv_shm::problems(m)
        .into_iter()
        .chain(crate::objects::locks::problems(m));
    for (field, problem) in kernel_objects {
        c.fail(field, problem);
    }
    for (k, z) in m.zombies.iter().enumerate() {
        let at = format!("zombies[{k}]");
        ids.process(&mut c, &format!("{at}.pid"), z.pid);
        check_tree(&mut c, &format!("{at}.tree"), &z.tree);
        c.check(
            earlier_pids.contains(&z.tree.ppid),
            format!("{at}.tree.ppid"),
            format!("{} is not a process of the image", z.tree.ppid),
        );
    }
    c.finish()
}

/// The files a restore writes back: chunks that cover the file once, in order, stored
/// inside a pages.bin this image may read; hashes that are hashes.
fn check_written_files(c: &mut Checker, m: &Manifest, parents: &BTreeSet<u64>) {
    use crate::objects::contents::Contents;
    for (i, f) in m.files.iter().enumerate() {
        let at = format!("files[{i}]");
        c.text(format!("{at}.path"), &f.path, libc::PATH_MAX as usize);
        c.check(
            f.path.starts_with('/'),
            format!("{at}.path"),
            "is not absolute",
        );
        c.check(
            f.mode <= 0o7777,
            format!("{at}.mode"),
            format!("{:o} is not a mode", f.mode),
        );
        match &f.contents {
            Contents::Copied { chunks } => {
                check_chunks(c, &at, chunks, f.size, m, parents);
            }
            Contents::Appended {
                head_blake3,
                tail_offset,
                tail_blake3,
            } => {
                c.check(
                    *tail_offset <= f.size,
                    format!("{at}.contents.tail_offset"),
                    "is beyond the size",
                );
                c.check(
                    is_hash(head_blake3) && is_hash(tail_blake3),
                    format!("{at}.contents"),
                    "hashes are not hashes",
                );
            }
            Contents::NotCopied { .. } => {}
        }
    }
}

/// A file's contents in chunks: they cover its `size` bytes once, in order, inside a
/// pages.bin this image may read, with hashes that are hashes.
fn check_chunks(
    c: &mut Checker,
    at: &str,
    chunks: &[crate::objects::contents::Chunk],
    size: u64,
    m: &Manifest,
    parents: &BTreeSet<u64>,
) {
    use crate::objects::contents::CHUNK_BYTES;
    let mut next = 0u64;
    for (k, ch) in chunks.iter().enumerate() {
        let field = format!("{at}.contents.chunks[{k}]");
        c.check(
            ch.offset == next,
            &field,
            format!("starts at {}, not {next}", ch.offset),
        );
        c.check(
            (1..=CHUNK_BYTES).contains(&ch.len),
            &field,
            format!("{} bytes is not a chunk length", ch.len),
        );
        c.check(is_hash(&ch.blake3), &field, "blake3 is not a hash");
        c.check(
            page_aligned(ch.pages_offset),
            &field,
            "pages_offset is not page-aligned",
        );
        match ch.image {
            None => {
                let end = ch
                    .pages_offset
                    .checked_add(ch.len.div_ceil(PAGE_SIZE) * PAGE_SIZE);
                c.check(
                    end.is_some_and(|e| e <= m.pages_bytes),
                    &field,
                    "lies beyond pages.bin",
                );
            }
            Some(seq) => c.check(
                parents.contains(&seq),
                &field,
                format!("image {seq} is not a parent of this image"),
            ),
        }
        next = next.saturating_add(ch.len);
    }
    c.check(
        next == size,
        format!("{at}.size"),
        format!("is {size}, the chunks hold {next}"),
    );
}

fn is_hash(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The runs of `m` stored in parent `parent_seq` must lie inside that parent's pages.bin
/// (`parent_pages_bytes`, from its own manifest): only the opener, holding both, can tell.
pub fn check_parent_pages(
    m: &Manifest,
    parent_seq: u64,
    parent_pages_bytes: u64,
) -> Result<(), InvalidManifest> {
    let mut c = Checker::default();
    for (i, p) in m.processes().iter().enumerate() {
        let at = process_field_prefix(i);
        for (k, r) in p.regions.iter().enumerate() {
            for (j, run) in r.runs.iter().enumerate() {
                let inside = run
                    .offset
                    .checked_add(run.len)
                    .is_some_and(|e| e <= parent_pages_bytes);
                c.check(
                    run.image != Some(parent_seq) || inside,
                    format!("{at}regions[{k}].runs[{j}].offset"),
                    format!(
                        "{:#x}+{:#x} is beyond pages.bin of image {parent_seq} ({parent_pages_bytes} bytes)",
                        run.offset, run.len
                    ),
                );
            }
        }
    }
    let written = m
        .files
        .iter()
        .enumerate()
        .filter_map(|(i, f)| match &f.contents {
            crate::objects::contents::Contents::Copied { chunks } => {
                Some((format!("files[{i}].contents"), chunks))
            }
            _ => None,
        });
    let unlinked = m
        .objects
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match &o.object {
            crate::objects::ObjectKind::Unlinked(u) => {
                Some((format!("objects[{i}].object"), &u.chunks))
            }
            _ => None,
        });
    for (at, chunks) in written.chain(unlinked) {
        for (k, ch) in chunks.iter().enumerate() {
            let inside = ch
                .pages_offset
                .checked_add(ch.len)
                .is_some_and(|e| e <= parent_pages_bytes);
            c.check(
                ch.image != Some(parent_seq) || inside,
                format!("{at}.chunks[{k}]"),
                format!("lies beyond pages.bin of image {parent_seq}"),
            );
        }
    }
    c.finish()
}

/// Where the fields of process `i` of [`Manifest::processes`] are: the root's at the top,
/// a member's under `members[i-1].`.
fn process_field_prefix(i: usize) -> String {
    match i.checked_sub(1) {
        None => String::new(),
        Some(member) => format!("members[{member}]."),
    }
}

/// PIDs and TIDs share one number space: none may appear twice in an image.
#[derive(Default)]
struct IdsSeen(BTreeSet<i32>);

impl IdsSeen {
    fn process(&mut self, c: &mut Checker, field: &str, id: i32) {
        c.id(field, id);
        c.check(
            self.0.insert(id),
            field,
            format!("{id} is used twice in the image"),
        );
    }
}

/// Parents: earlier images, each once, consistent with `chain_depth`. Returns the seqs.
fn check_parents(c: &mut Checker, m: &Manifest) -> BTreeSet<u64> {
    let mut seqs = BTreeSet::new();
    for (i, p) in m.parents.iter().enumerate() {
        let at = format!("parents[{i}]");
        c.check(
            p.seq < m.seq,
            format!("{at}.seq"),
            format!("{} is not older than this image ({})", p.seq, m.seq),
        );
        c.check(
            seqs.insert(p.seq),
            format!("{at}.seq"),
            format!("{} is listed twice", p.seq),
        );
        let hex = p.manifest_blake3.len() == 64
            && p.manifest_blake3.bytes().all(|b| b.is_ascii_hexdigit());
        c.check(
            hex,
            format!("{at}.manifest_blake3"),
            "is not a blake3 hash (64 hex digits)",
        );
    }
    let depth = m.chain_depth;
    if m.parents.is_empty() {
        c.check(
            depth == 0,
            "chain_depth",
            format!("is {depth} but the image has no parents (a full image has depth 0)"),
        );
    } else {
        let fits = (1..=MAX_CHAIN_DEPTH).contains(&depth) && m.parents.len() as u64 <= depth.into();
        c.check(
            fits,
            "chain_depth",
            format!(
                "is {depth} but the image has {} parent(s): an incremental image's depth is \
                 at least its number of parents, and at most {MAX_CHAIN_DEPTH}",
                m.parents.len()
            ),
        );
    }
    seqs
}

/// Object ids, each once. Returns each id's kind.
fn check_objects(
    c: &mut Checker,
    m: &Manifest,
    parents: &BTreeSet<u64>,
) -> BTreeMap<u64, &'static str> {
    use crate::objects::ObjectKind;
    let mut kinds = BTreeMap::new();
    for (i, o) in m.objects.iter().enumerate() {
        let kind = match &o.object {
            ObjectKind::Stdio(s) => {
                c.check(
                    (0..=2).contains(&s.fd),
                    format!("objects[{i}].object.fd"),
                    format!("{} is not a standard stream (0, 1 or 2)", s.fd),
                );
                for (field, problem) in s.terminal.iter().flat_map(|t| t.problems()) {
                    c.fail(format!("objects[{i}].object.terminal.{field}"), problem);
                }
                "stdio"
            }
            ObjectKind::PtyPair(p) => {
                for (field, problem) in p.problems() {
                    c.fail(format!("objects[{i}].object.{field}"), problem);
                }
                "pty_pair"
            }
            ObjectKind::Pipe(_) => "pipe",
            ObjectKind::File(f) => {
                c.path(format!("objects[{i}].object.path"), &f.path);
                "file"
            }
            ObjectKind::UnixPair(_) => "unix_pair",
            ObjectKind::UnixSockets(u) => {
                for (field, problem) in u.problems() {
                    c.fail(format!("objects[{i}].object.{field}"), problem);
                }
                "unix_sockets"
            }
            ObjectKind::Netlink(n) => {
                if let Some(problem) = n.problem() {
                    c.fail(format!("objects[{i}].object"), problem);
                }
                "netlink"
            }
            ObjectKind::TcpSocket(t) => {
                inet_problem(c, i, t.problem());
                "tcp_socket"
            }
            ObjectKind::TcpPair(p) => {
                inet_problem(c, i, p.problem());
                "tcp_pair"
            }
            ObjectKind::TcpReset(r) => {
                inet_problem(c, i, r.problem());
                "tcp_reset"
            }
            ObjectKind::TcpPending(p) => {
                inet_problem(c, i, p.problem());
                "tcp_pending"
            }
            ObjectKind::Udp(u) => {
                inet_problem(c, i, u.problem());
                "udp"
            }
            ObjectKind::EventFd(_) => "eventfd",
            ObjectKind::SignalFd(_) => "signalfd",
            ObjectKind::TimerFd(t) => {
                let time = |(s, ns): (i64, i64)| s >= 0 && (0..1_000_000_000).contains(&ns);
                c.check(
                    crate::objects::timerfd::CLOCKS.contains(&t.clock)
                        && time(t.left)
                        && time(t.interval)
                        && t.expires_at.is_none_or(time),
                    format!("objects[{i}].object"),
                    "is not a timer a timerfd can have",
                );
                "timerfd"
            }
            ObjectKind::Epoll(e) => {
                for (k, item) in e.items.iter().enumerate() {
                    c.check(
                        (0..MAX_FD).contains(&item.fd) && (0..MAX_FD).contains(&item.epfd),
                        format!("objects[{i}].object.items[{k}]"),
                        "names an fd number out of range",
                    );
                }
                "epoll"
            }
            ObjectKind::Inotify(n) => {
                for (k, w) in n.watches.iter().enumerate() {
                    c.path(format!("objects[{i}].object.watches[{k}].path"), &w.path);
                    c.check(
                        w.wd > 0,
                        format!("objects[{i}].object.watches[{k}].wd"),
                        "is not a watch descriptor",
                    );
                }
                "inotify"
            }
            ObjectKind::Pidfd(p) => {
                c.id(format!("objects[{i}].object.pid"), p.pid);
                "pidfd"
            }
            ObjectKind::Unlinked(u) => {
                check_unlinked(c, &format!("objects[{i}].object"), u, m, parents);
                "unlinked"
            }
        };
        c.check(
            kinds.insert(o.id, kind).is_none(),
            format!("objects[{i}].id"),
            format!("{} is used by another object", o.id),
        );
    }
    kinds
}

/// A TCP or UDP object that cannot be a socket's (an address of the wrong family, a
/// queue beyond bounds ...).
fn inet_problem(c: &mut Checker, i: usize, problem: Option<String>) {
    if let Some(p) = problem {
        c.fail(format!("objects[{i}].object"), p);
    }
}

/// The object kinds an fd of kind `InetSocket` may refer to.
const INET_OBJECTS: [&str; 5] = ["tcp_socket", "tcp_pair", "tcp_reset", "tcp_pending", "udp"];

fn check_unlinked(
    c: &mut Checker,
    at: &str,
    u: &crate::objects::unlinked::UnlinkedFile,
    m: &Manifest,
    parents: &BTreeSet<u64>,
) {
    use crate::objects::unlinked::Origin;
    match &u.origin {
        Origin::Memfd { name, .. } => c.text(format!("{at}.origin.name"), name, 249),
        Origin::Deleted { path } => c.path(format!("{at}.origin.path"), path),
    }
    c.check(
        u.mode <= 0o7777,
        format!("{at}.mode"),
        format!("{:o} is not a mode", u.mode),
    );
    check_chunks(c, at, &u.chunks, u.size, m, parents);
    c.check(
        u.members
            .iter()
            .all(|x| x.description < u.descriptions.len()),
        format!("{at}.members"),
        "name a description the file does not have",
    );
    c.check(
        u.descriptions.iter().all(|d| d.offset <= i64::MAX as u64),
        format!("{at}.descriptions"),
        "hold an offset beyond what a file can have",
    );
}

fn check_tree(c: &mut Checker, at: &str, t: &TreeLinks) {
    // The root's parent, group and session may be outside the job, even outside its pid
    // namespace, where the kernel shows them as 0 (a job started in a container whose session
    // leader lives in the host's namespace).
    for (field, id) in [("ppid", t.ppid), ("pgid", t.pgid), ("sid", t.sid)] {
        c.check(
            (0..=PID_MAX).contains(&id),
            format!("{at}.{field}"),
            format!("{id} is not a process id (0..={PID_MAX})"),
        );
    }
    c.signal(format!("{at}.exit_signal"), t.exit_signal, true);
}

fn check_process(c: &mut Checker, at: &str, p: &ProcessState, ids: &mut IdsSeen) {
    ids.process(c, &format!("{at}process.pid"), p.pid);
    c.path(format!("{at}process.exe"), &p.exe);
    c.path(format!("{at}process.cwd"), &p.cwd);
    c.check(
        p.umask <= 0o777,
        format!("{at}process.umask"),
        format!("{:#o} is not a umask", p.umask),
    );
    let mut resources = BTreeSet::new();
    for (i, r) in p.rlimits.iter().enumerate() {
        let field = format!("{at}process.rlimits[{i}]");
        c.check(
            r.resource < RLIMIT_COUNT && resources.insert(r.resource),
            format!("{field}.resource"),
            format!("{} is not a resource, or is listed twice", r.resource),
        );
        c.check(r.soft <= r.hard, &field, "soft limit above the hard limit");
    }
    let mm = &p.mm;
    for (name, start, end) in [
        ("code", mm.start_code, mm.end_code),
        ("data", mm.start_data, mm.end_data),
        ("brk", mm.start_brk, mm.brk),
        ("arg", mm.arg_start, mm.arg_end),
        ("env", mm.env_start, mm.env_end),
    ] {
        c.check(
            start <= end && end <= TASK_TOP,
            format!("{at}process.mm.{name}"),
            format!("range {start:#x}..{end:#x} is reversed or above user space"),
        );
    }
    check_auxv(c, &format!("{at}process.auxv"), &p.auxv);
    check_pending(
        c,
        &format!("{at}process.pending_signals"),
        &p.pending_signals,
    );
    // Images before format 3 hold one process and no links: all zero.
    if p.tree != TreeLinks::default() {
        check_tree(c, &format!("{at}process.tree"), &p.tree);
    }
    c.signal(
        format!("{at}process.parent_death_signal"),
        p.parent_death_signal,
        true,
    );
    for (field, problem) in p.attributes.problems() {
        c.fail(format!("{at}process.attributes.{field}"), problem);
    }
}

/// Pairs of (type, value) words ending with AT_NULL, as the kernel keeps them.
fn check_auxv(c: &mut Checker, field: &str, auxv: &[u64]) {
    if auxv.len() > MAX_AUXV_WORDS {
        c.fail(
            field,
            format!(
                "has {} words, more than the {MAX_AUXV_WORDS} a kernel keeps",
                auxv.len()
            ),
        );
        return;
    }
    let ends_with_null = auxv.len().is_multiple_of(2) && auxv.ends_with(&[0, 0]);
    c.check(
        ends_with_null,
        field,
        "is not (type, value) pairs ending with AT_NULL",
    );
}

fn check_pending(c: &mut Checker, field: &str, pending: &[PendingSignal]) {
    for (i, s) in pending.iter().enumerate() {
        c.signal(format!("{field}[{i}].signo"), s.signo, false);
        c.check(
            s.siginfo.len() == SIGINFO_BYTES,
            format!("{field}[{i}].siginfo"),
            format!("is {} bytes, not {SIGINFO_BYTES}", s.siginfo.len()),
        );
    }
}

fn check_threads(
    c: &mut Checker,
    at: &str,
    pid: i32,
    threads: &[ThreadState],
    xstate_size: u32,
    ids: &mut IdsSeen,
) {
    let Some(leader) = threads.first() else {
        c.fail(format!("{at}threads"), "is empty: a process has a thread");
        return;
    };
    c.check(
        leader.tid == pid,
        format!("{at}threads[0].tid"),
        format!(
            "{} is not the process's id {pid} (the main thread comes first)",
            leader.tid
        ),
    );
    for (i, t) in threads.iter().enumerate() {
        let field = format!("{at}threads[{i}]");
        // The leader's id is the PID, already counted.
        if i == 0 {
            c.id(format!("{field}.tid"), t.tid);
        } else {
            ids.process(c, &format!("{field}.tid"), t.tid);
        }
        c.text(format!("{field}.name"), &t.name, MAX_LABEL_BYTES);
        c.check(
            t.affinity.len() <= MAX_AFFINITY_WORDS,
            format!("{field}.affinity"),
            format!("names more than {} CPUs", MAX_AFFINITY_WORDS * 64),
        );
        c.check(
            t.xstate.len() == xstate_size as usize,
            format!("{field}.xstate"),
            format!(
                "is {} bytes, but cpu.xstate_size is {xstate_size}",
                t.xstate.len()
            ),
        );
        check_pending(c, &format!("{field}.pending_signals"), &t.pending_signals);
    }
}

/// Where runs may point: this image's pages.bin, or a parent's.
struct PagesBound<'a> {
    own_seq: u64,
    own_bytes: u64,
    parents: &'a BTreeSet<u64>,
}

fn page_aligned(n: u64) -> bool {
    n.is_multiple_of(PAGE_SIZE)
}

fn check_regions(c: &mut Checker, at: &str, regions: &[MemoryRegion], pages: &PagesBound) {
    let mut prev_end = 0;
    for (i, r) in regions.iter().enumerate() {
        let field = format!("{at}regions[{i}]");
        let well_formed =
            r.start < r.end && page_aligned(r.start) && page_aligned(r.end) && r.end <= TASK_TOP;
        if !well_formed {
            c.fail(
                &field,
                format!(
                    "{:#x}..{:#x} is not a page-aligned, non-empty range of user space",
                    r.start, r.end
                ),
            );
            continue;
        }
        c.check(
            r.start >= prev_end,
            format!("{field}.start"),
            format!(
                "{:#x} overlaps the region before it, or regions are not sorted",
                r.start
            ),
        );
        prev_end = prev_end.max(r.end);
        c.text(format!("{field}.name"), &r.name, libc::PATH_MAX as usize);
        match &r.backing {
            Backing::File(id) => {
                c.path(format!("{field}.backing.path"), &id.path);
                c.check(
                    page_aligned(id.offset) && id.offset <= i64::MAX as u64,
                    format!("{field}.backing.offset"),
                    format!("{:#x} is not a page-aligned file offset", id.offset),
                );
            }
            Backing::Vdso => c.check(
                r.runs.is_empty(),
                format!("{field}.runs"),
                "the vDSO has no stored pages",
            ),
            Backing::Anonymous | Backing::SharedAnonymous | Backing::SysvShm(_) => {}
        }
        if let Some(o) = r.shared_object {
            c.check(
                page_aligned(o.offset) && o.offset.checked_add(r.end - r.start).is_some(),
                format!("{field}.shared_object.offset"),
                format!("{:#x} is not a page-aligned offset", o.offset),
            );
        }
        check_runs(c, &field, r, pages);
    }
}

fn check_runs(c: &mut Checker, field: &str, r: &MemoryRegion, pages: &PagesBound) {
    let mut next_free = r.start;
    for (j, run) in r.runs.iter().enumerate() {
        let at = format!("{field}.runs[{j}]");
        let aligned = page_aligned(run.addr) && page_aligned(run.len) && page_aligned(run.offset);
        if run.len == 0 || !aligned {
            c.fail(
                &at,
                format!(
                    "addr {:#x}, len {:#x}, offset {:#x}: runs are whole pages",
                    run.addr, run.len, run.offset
                ),
            );
            continue;
        }
        let end = run.addr.checked_add(run.len);
        c.check(
            run.addr >= r.start && end.is_some_and(|e| e <= r.end),
            &at,
            format!(
                "{:#x}+{:#x} lies outside its region {:#x}..{:#x}",
                run.addr, run.len, r.start, r.end
            ),
        );
        c.check(
            run.addr >= next_free,
            format!("{at}.addr"),
            "overlaps the run before it, or runs are not sorted",
        );
        next_free = end.unwrap_or(u64::MAX);
        let stored_end = run.offset.checked_add(run.len);
        match run.image {
            None => c.check(
                stored_end.is_some_and(|e| e <= pages.own_bytes),
                format!("{at}.offset"),
                format!(
                    "{:#x}+{:#x} is beyond pages.bin ({} bytes)",
                    run.offset, run.len, pages.own_bytes
                ),
            ),
            Some(seq) => c.check(
                seq != pages.own_seq && pages.parents.contains(&seq),
                format!("{at}.image"),
                format!("{seq} is not a parent of this image"),
            ),
        }
    }
}

fn check_fds(c: &mut Checker, at: &str, fds: &[FdState], objects: &BTreeMap<u64, &'static str>) {
    let mut numbers = BTreeSet::new();
    for (i, fd) in fds.iter().enumerate() {
        let field = format!("{at}fds[{i}]");
        c.check(
            (0..MAX_FD).contains(&fd.fd) && numbers.insert(fd.fd),
            format!("{field}.fd"),
            format!(
                "{} is not an fd number (0..{MAX_FD}), or is listed twice",
                fd.fd
            ),
        );
        c.text(format!("{field}.path"), &fd.path, libc::PATH_MAX as usize);
        let limit = i64::MAX as u64;
        c.check(
            fd.offset <= limit && fd.size.is_none_or(|s| s <= limit),
            &field,
            "offset or size beyond what a file can have",
        );
        match fd.object {
            Some(id) => {
                c.check(
                    objects.contains_key(&id),
                    format!("{field}.object"),
                    format!("{id} is not an object of the image"),
                );
                let inet_object = objects.get(&id).is_some_and(|k| INET_OBJECTS.contains(k));
                c.check(
                    (fd.kind == FdKind::InetSocket) == inet_object,
                    format!("{field}.object"),
                    format!(
                        "{id} is not an object an fd of kind {:?} refers to",
                        fd.kind
                    ),
                );
            }
            // Opened again by path: pipes and sockets cannot be.
            None => match fd.kind {
                FdKind::Pipe
                | FdKind::UnixSocket
                | FdKind::InetSocket
                | FdKind::EventFd
                | FdKind::TimerFd
                | FdKind::SignalFd
                | FdKind::Epoll
                | FdKind::Inotify
                | FdKind::Pidfd
                | FdKind::Unlinked
                | FdKind::PtyMaster
                | FdKind::PtySlave
                | FdKind::Netlink => c.fail(
                    format!("{field}.object"),
                    "is missing: an fd of this kind is restored from its object",
                ),
                FdKind::File | FdKind::Directory | FdKind::CharDevice => {
                    c.path(format!("{field}.path"), &fd.path);
                }
                FdKind::Stdio => {}
            },
        }
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
