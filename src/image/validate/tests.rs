//! One test per kind of inconsistency: each starts from a valid manifest, breaks one thing,
//! and checks the error names that field.

use super::*;
use crate::image::format::{
    CpuFeatures, FileIdentity, MemberProcess, MmFields, PageRun, ParentRef, Prot, Registers,
    Rlimit, SharedMemoryRef, SignalAction, TierKind, ZombieProcess,
};
use crate::objects::{ObjectKind, SharedObject, stdio::StdioStream};

const XSTATE: u32 = 1024;

fn thread(tid: i32) -> ThreadState {
    ThreadState {
        tid,
        name: "sim".into(),
        affinity: vec![1],
        regs: Registers::default(),
        xstate: vec![0; XSTATE as usize],
        sigmask: 0,
        pending_signals: Vec::new(),
        rseq: None,
        robust_list: None,
        clear_child_tid: 0,
        sigaltstack: None,
        syscall: None,
    }
}

fn process(pid: i32, ppid: i32) -> ProcessState {
    ProcessState {
        pid,
        exe: "/usr/bin/sim".into(),
        cmdline: vec!["sim".into()],
        cwd: "/home/u".into(),
        umask: 0o022,
        rlimits: vec![Rlimit {
            resource: 7,
            soft: 1024,
            hard: 4096,
        }],
        mm: MmFields {
            start_code: 0x40_0000,
            end_code: 0x40_1000,
            ..MmFields::default()
        },
        auxv: vec![6, 4096, 0, 0],
        pending_signals: Vec::new(),
        tree: TreeLinks {
            ppid,
            pgid: 100,
            sid: 100,
            exit_signal: libc::SIGCHLD,
            stopped: false,
        },
        parent_death_signal: 0,
        child_subreaper: false,
        credentials: None,
        attributes: Default::default(),
    }
}

fn region(start: u64, end: u64, runs: Vec<PageRun>) -> MemoryRegion {
    MemoryRegion {
        start,
        end,
        prot: Prot {
            read: true,
            write: true,
            exec: false,
        },
        shared: false,
        backing: Backing::Anonymous,
        name: "[heap]".into(),
        grows_down: false,
        advice: Vec::new(),
        runs,
        hashed: true,
        shared_object: None,
    }
}

fn run(addr: u64, len: u64, offset: u64, image: Option<u64>) -> PageRun {
    PageRun {
        addr,
        len,
        offset,
        image,
    }
}

fn fd(n: i32, kind: FdKind, path: &str, object: Option<u64>) -> FdState {
    FdState {
        fd: n,
        kind,
        path: path.into(),
        flags: 0,
        cloexec: false,
        offset: 0,
        size: None,
        object,
        inode: None,
    }
}

/// A two-process, incremental image that passes.
pub(super) fn sample() -> Manifest {
    Manifest {
        format: crate::image::format::FORMAT_VERSION,
        mlckpt_version: "0.1.0".into(),
        job: "sim".into(),
        rank: 0,
        seq: 3,
        time_unix_ms: 0,
        tier: TierKind::Local,
        kernel: "6.18.0".into(),
        cpu: CpuFeatures {
            xfeatures: 7,
            xstate_size: XSTATE,
        },
        process: process(1000, 1),
        threads: vec![thread(1000), thread(1001)],
        regions: vec![
            region(
                0x1000_0000,
                0x1000_4000,
                vec![run(0x1000_0000, 0x2000, 0, None)],
            ),
            region(
                0x2000_0000,
                0x2000_2000,
                vec![run(0x2000_1000, 0x1000, 0x3000, Some(2))],
            ),
        ],
        fds: vec![
            fd(1, FdKind::Stdio, "/dev/pts/0", Some(5)),
            fd(3, FdKind::File, "/home/u/out", None),
        ],
        signals: vec![SignalAction {
            signo: libc::SIGTERM,
            handler: 0x40_0100,
            flags: 0,
            restorer: 0,
            mask: 0,
        }],
        pages_bytes: 0x2000,
        parents: vec![ParentRef {
            seq: 2,
            manifest_blake3: "ab".repeat(32),
        }],
        chain_depth: 1,
        members: vec![MemberProcess {
            process: process(1002, 1000),
            threads: vec![thread(1002)],
            regions: Vec::new(),
            fds: Vec::new(),
            signals: Vec::new(),
        }],
        zombies: vec![ZombieProcess {
            pid: 1003,
            tree: TreeLinks {
                ppid: 1002,
                pgid: 100,
                sid: 100,
                exit_signal: libc::SIGCHLD,
                stopped: false,
            },
            wait_status: 0,
        }],
        objects: vec![SharedObject {
            id: 5,
            object: ObjectKind::Stdio(StdioStream {
                fd: 1,
                terminal: None,
            }),
        }],
        files: Vec::new(),
        sysv_shm: Vec::new(),
        locks: Vec::new(),
    }
}

/// Breaks the sample with `edit`; the error must name `field`.
#[track_caller]
fn refused(field: &str, edit: impl FnOnce(&mut Manifest)) {
    let mut m = sample();
    edit(&mut m);
    let err = validate(&m).expect_err("an inconsistent manifest passed");
    assert!(
        err.names(field),
        "expected a problem at {field}, got: {err}"
    );
}

#[test]
fn the_sample_is_valid() {
    assert_eq!(validate(&sample()), Ok(()));
}

#[test]
fn a_run_from_an_image_that_is_not_a_parent() {
    refused("regions[1].runs[0].image", |m| {
        m.regions[1].runs[0].image = Some(1);
    });
    refused("regions[1].runs[0].image", |m| {
        m.regions[1].runs[0].image = Some(m.seq);
    });
}

#[test]
fn auxv_too_long_or_without_at_null() {
    refused("process.auxv", |m| m.process.auxv = vec![0; 100_000]);
    refused("process.auxv", |m| m.process.auxv = vec![6, 4096]);
    refused("process.auxv", |m| m.process.auxv = vec![6, 4096, 0]);
    refused("members[0].process.auxv", |m| {
        m.members[0].process.auxv.clear();
    });
}

#[test]
fn runs_shorter_than_a_page_or_unaligned() {
    refused("regions[0].runs[0]", |m| m.regions[0].runs[0].len = 100);
    refused("regions[0].runs[0]", |m| m.regions[0].runs[0].len = 0);
    refused("regions[0].runs[0]", |m| m.regions[0].runs[0].addr += 8);
    refused("regions[0].runs[0]", |m| m.regions[0].runs[0].offset = 1);
}

#[test]
fn runs_outside_their_region_or_overlapping() {
    refused("regions[0].runs[0]", |m| {
        m.regions[0].runs[0].addr = 0x1000_3000;
    });
    refused("regions[0].runs[0]", |m| {
        m.regions[0].runs[0].addr = u64::MAX - 0xfff;
    });
    refused("regions[0].runs[1].addr", |m| {
        m.regions[0]
            .runs
            .push(run(0x1000_1000, 0x1000, 0x1000, None));
    });
}

#[test]
fn page_offsets_beyond_pages_bin() {
    refused("regions[0].runs[0].offset", |m| m.pages_bytes = 0x1000);
    refused("regions[0].runs[0].offset", |m| {
        m.regions[0].runs[0].offset = u64::MAX - 0xfff;
    });
}

#[test]
fn bad_regions() {
    refused("regions[1].start", |m| m.regions[1].start = 0x1000_2000);
    refused("regions[1].start", |m| {
        let dup = m.regions[0].clone();
        m.regions[1] = dup;
    });
    refused("regions[0]", |m| m.regions[0].end = m.regions[0].start);
    refused("regions[0]", |m| m.regions[0].end = 0x1000_3001);
    refused("regions[1]", |m| m.regions[1].end = !0xfff);
    refused("regions[0].name", |m| m.regions[0].name = "a\0b".into());
    refused("regions[0].backing.path", |m| {
        m.regions[0].backing = Backing::File(FileIdentity {
            path: "lib.so".into(),
            offset: 0,
            size: 1,
            mtime_ns: 0,
            inode: 1,
            may_write: false,
        });
    });
    refused("regions[0].runs", |m| m.regions[0].backing = Backing::Vdso);
    refused("regions[0].shared_object.offset", |m| {
        m.regions[0].shared_object = Some(SharedMemoryRef { id: 1, offset: 7 });
    });
}

#[test]
fn bad_thread_and_process_ids() {
    refused("threads[1].tid", |m| m.threads[1].tid = 0);
    refused("threads[1].tid", |m| m.threads[1].tid = -1);
    refused("threads[1].tid", |m| m.threads[1].tid = 1000);
    refused("threads[0].tid", |m| m.threads.swap(0, 1));
    refused("process.pid", |m| m.process.pid = 0);
    refused("process.pid", |m| m.process.pid = -5);
    refused("members[0].process.pid", |m| {
        m.members[0].process.pid = 1001
    });
    refused("zombies[0].pid", |m| m.zombies[0].pid = 1002);
    refused("process.tree.pgid", |m| m.process.tree.pgid = -1);
}

#[test]
fn a_session_or_group_outside_the_pid_namespace_is_zero() {
    // A job started in a container whose session leader lives in the host's namespace.
    let mut m = sample();
    m.process.tree.sid = 0;
    m.process.tree.pgid = 0;
    m.members[0].process.tree.sid = 0;
    m.members[0].process.tree.pgid = 0;
    assert_eq!(validate(&m), Ok(()));
}

#[test]
fn an_empty_thread_list() {
    refused("threads", |m| m.threads.clear());
    refused("members[0].threads", |m| m.members[0].threads.clear());
}

#[test]
fn parents_listed_after_children_or_missing() {
    refused("members[0].process.tree.ppid", |m| {
        m.members[0].process.tree.ppid = 4242;
    });
    refused("zombies[0].tree.ppid", |m| m.zombies[0].tree.ppid = 4242);
}

#[test]
fn bad_fds() {
    refused("fds[1].fd", |m| m.fds[1].fd = -1);
    refused("fds[1].fd", |m| m.fds[1].fd = 1);
    refused("fds[0].object", |m| m.fds[0].object = Some(99));
    refused("fds[1].object", |m| m.fds[1].kind = FdKind::Pipe);
    refused("fds[1].path", |m| m.fds[1].path = "out\0".into());
    refused("fds[1].path", |m| m.fds[1].path = "relative".into());
    refused("fds[1]", |m| m.fds[1].offset = u64::MAX);
}

#[test]
fn duplicated_object_ids() {
    refused("objects[1].id", |m| {
        let dup = m.objects[0].clone();
        m.objects.push(dup);
    });
    refused("objects[0].object.fd", |m| {
        m.objects[0].object = ObjectKind::Stdio(StdioStream {
            fd: 7,
            terminal: None,
        });
    });
}

#[test]
fn bad_terminal_state() {
    use crate::objects::tty::{PtyPair, TerminalState};
    refused("objects[0].object.terminal.termios.cc", |m| {
        m.objects[0].object = ObjectKind::Stdio(StdioStream {
            fd: 1,
            terminal: Some(TerminalState::default()),
        });
    });
    let pair = || PtyPair {
        index: 3,
        terminal: TerminalState {
            termios: crate::objects::tty::Termios {
                cc: vec![0; 19],
                ..Default::default()
            },
            ..Default::default()
        },
        packet_mode: false,
        locked: false,
        exclusive: false,
        master_flags: 0,
        slaves: Vec::new(),
        input: Vec::new(),
        output: Vec::new(),
    };
    refused("objects[0].object.index", |m| {
        let mut p = pair();
        p.index = u32::MAX;
        m.objects[0].object = ObjectKind::PtyPair(p);
    });
    refused("objects[0].object.sessions", |m| {
        let mut p = pair();
        p.terminal.foreground = Some(0);
        m.objects[0].object = ObjectKind::PtyPair(p);
    });
}

#[test]
fn chain_depth_and_parents_disagree() {
    refused("chain_depth", |m| m.chain_depth = 0);
    refused("chain_depth", |m| {
        m.parents.clear();
        m.regions[1].runs.clear();
    });
    refused("parents[0].seq", |m| m.parents[0].seq = m.seq);
    refused("parents[1].seq", |m| {
        let dup = m.parents[0].clone();
        m.parents.push(dup);
        m.chain_depth = 2;
    });
    refused("parents[0].manifest_blake3", |m| {
        m.parents[0].manifest_blake3 = "zz".into();
    });
}

#[test]
fn signal_numbers_out_of_range() {
    refused("signals[0].signo", |m| m.signals[0].signo = 65);
    refused("signals[0].signo", |m| m.signals[0].signo = 0);
    refused("signals[1].signo", |m| {
        let dup = m.signals[0];
        m.signals.push(dup);
    });
    refused("process.tree.exit_signal", |m| {
        m.process.tree.exit_signal = -1
    });
    refused("process.parent_death_signal", |m| {
        m.process.parent_death_signal = 1000;
    });
    refused("threads[0].pending_signals[0].signo", |m| {
        m.threads[0].pending_signals.push(PendingSignal {
            signo: 99,
            siginfo: vec![0; 128],
        });
    });
    refused("process.pending_signals[0].siginfo", |m| {
        m.process.pending_signals.push(PendingSignal {
            signo: 10,
            siginfo: vec![0; 4],
        });
    });
}

#[test]
fn xstate_sizes() {
    refused("cpu.xstate_size", |m| m.cpu.xstate_size = 1 << 30);
    refused("threads[1].xstate", |m| m.threads[1].xstate.push(0));
}

#[test]
fn names_and_paths() {
    refused("job", |m| m.job = "../../x".into());
    refused("job", |m| m.job = "/abs".into());
    refused("job", |m| m.job = String::new());
    refused("rank", |m| m.rank = u32::MAX);
    refused("kernel", |m| m.kernel = "6.18\0".into());
    refused("threads[0].name", |m| m.threads[0].name = "x\0y".into());
    refused("process.exe", |m| m.process.exe = String::new());
    refused("process.cwd", |m| m.process.cwd = "/home/\0".into());
}

#[test]
fn absurd_process_values() {
    refused("process.umask", |m| m.process.umask = 0o7777);
    refused("process.rlimits[0].resource", |m| {
        m.process.rlimits[0].resource = 99
    });
    refused("process.rlimits[0]", |m| {
        m.process.rlimits[0].soft = u64::MAX
    });
    refused("process.mm.code", |m| m.process.mm.end_code = 0);
    refused("threads[0].affinity", |m| {
        m.threads[0].affinity = vec![0; 10_000]
    });
}

#[test]
fn every_problem_is_reported_up_to_a_limit() {
    let mut m = sample();
    m.threads[1].tid = -1;
    m.process.auxv.clear();
    let err = validate(&m).unwrap_err();
    assert_eq!(err.problems.len(), 2, "{err}");
    for t in &mut m.threads {
        t.xstate.clear();
    }
    m.signals = (0..100)
        .map(|_| SignalAction {
            signo: 0,
            handler: 0,
            flags: 0,
            restorer: 0,
            mask: 0,
        })
        .collect();
    let err = validate(&m).unwrap_err();
    assert_eq!(err.problems.len(), MAX_LISTED);
    assert!(err.more > 0);
    assert!(err.to_string().contains("more"), "{err}");
}

#[test]
fn runs_beyond_a_parents_pages() {
    let m = sample();
    assert_eq!(check_parent_pages(&m, 2, 0x4000), Ok(()));
    let err = check_parent_pages(&m, 2, 0x3800).unwrap_err();
    assert!(err.names("regions[1].runs[0].offset"), "{err}");
    // Runs of other images are not this parent's business.
    assert_eq!(check_parent_pages(&m, 1, 0), Ok(()));
}

#[test]
fn a_single_process_image_before_format_3_has_no_tree_links() {
    let mut m = sample();
    m.format = 2;
    m.members.clear();
    m.zombies.clear();
    m.objects.clear();
    m.fds[0].object = None;
    m.process.tree = TreeLinks::default();
    assert_eq!(validate(&m), Ok(()));
}

#[test]
fn written_files_whose_chunks_do_not_cover_them_or_lie_outside() {
    use crate::image::format::Inode;
    use crate::objects::contents::{Chunk, Contents, WrittenFile};
    let file = |chunks: Vec<Chunk>, size: u64| WrittenFile {
        path: "/data/db".into(),
        inode: Inode { ino: 5, uid: 0 },
        gid: 0,
        mode: 0o644,
        size,
        mtime_ns: 0,
        contents: Contents::Copied { chunks },
    };
    let chunk = |offset: u64, len: u64, pages_offset: u64, image: Option<u64>| Chunk {
        offset,
        len,
        pages_offset,
        image,
        blake3: "0".repeat(64),
    };
    let mut m = sample();
    m.files = vec![file(
        vec![chunk(0, 100, 0, None), chunk(100, 50, 0, Some(2))],
        150,
    )];
    assert!(validate(&m).is_ok(), "{:?}", validate(&m));
    refused("files[0].size", |m| {
        m.files = vec![file(vec![chunk(0, 100, 0, None)], 150)];
    });
    refused("files[0].contents.chunks[1]", |m| {
        m.files = vec![file(
            vec![chunk(0, 100, 0, None), chunk(0, 50, 0, None)],
            150,
        )];
    });
    refused("files[0].contents.chunks[0]", |m| {
        m.files = vec![file(vec![chunk(0, 100, 1 << 40, None)], 100)];
    });
    refused("files[0].contents.chunks[0]", |m| {
        m.files = vec![file(vec![chunk(0, 100, 0, Some(1))], 100)];
    });
    refused("files[0].path", |m| {
        let mut f = file(vec![], 0);
        f.path = "relative".into();
        m.files = vec![f];
    });
}

#[test]
fn hostile_process_attributes() {
    use crate::image::attributes::{IntervalTimer, LockedRange, Scheduling, ThreadAttributes};
    refused("process.attributes.oom_score_adj", |m| {
        m.process.attributes.oom_score_adj = Some(i32::MAX)
    });
    refused("process.attributes.interval_timers[0].value_ns", |m| {
        m.process.attributes.interval_timers = vec![IntervalTimer {
            which: 0,
            value_ns: u64::MAX,
            interval_ns: 0,
        }]
    });
    refused("process.attributes.locked", |m| {
        m.process.attributes.locked = vec![
            LockedRange {
                start: 0x1000,
                end: 0x2000,
                on_fault: false
            };
            crate::image::attributes::MAX_LOCKED_RANGES + 1
        ]
    });
    refused("process.attributes.threads[0].sched.nice", |m| {
        m.process.attributes.threads = vec![ThreadAttributes {
            tid: 100,
            sched: Some(Scheduling {
                policy: 0,
                flags: 0,
                nice: -400,
                priority: 0,
            }),
            timer_slack_ns: None,
        }]
    });
}

/// The sample with region 0 an attach of a 16 KiB System V segment and a lock on fd 3.
fn with_sysv_and_lock() -> Manifest {
    use crate::objects::locks::{HeldLock, LockKind, LockMode};
    use crate::objects::sysv_shm::{SysvAttach, SysvSegment};
    let mut m = sample();
    m.sysv_shm = vec![SysvSegment {
        shmid: 7,
        key: 0x1234,
        size: 0x4000,
        mode: 0o600,
        uid: 0,
        gid: 0,
    }];
    m.regions[0].shared = true;
    m.regions[0].backing = Backing::SysvShm(SysvAttach {
        shmid: 7,
        read_only: false,
        exec: false,
    });
    m.regions[0].shared_object = Some(SharedMemoryRef { id: 7, offset: 0 });
    // Every page of an attach is stored (two pages here, two more in the parent).
    m.regions[0].runs = vec![
        run(0x1000_0000, 0x2000, 0, None),
        run(0x1000_2000, 0x2000, 0, Some(2)),
    ];
    m.locks = vec![HeldLock {
        pid: 1000,
        fd: 3,
        kind: LockKind::Posix,
        mode: LockMode::Write,
        start: 0,
        end: Some(99),
    }];
    m
}

#[test]
fn sysv_segments_and_locks() {
    assert_eq!(validate(&with_sysv_and_lock()), Ok(()));
    let refused = |field: &str, edit: fn(&mut Manifest)| {
        let mut m = with_sysv_and_lock();
        edit(&mut m);
        let err = validate(&m).expect_err("an inconsistent manifest passed");
        assert!(
            err.names(field),
            "expected a problem at {field}, got: {err}"
        );
    };
    refused("sysv_shm[0].size", |m| m.sysv_shm[0].size = u64::MAX);
    refused("sysv_shm[0].size", |m| m.sysv_shm[0].size = 0);
    refused("sysv_shm[0].shmid", |m| m.sysv_shm[0].shmid = -1);
    refused("sysv_shm[0].mode", |m| m.sysv_shm[0].mode = u32::MAX);
    refused("sysv_shm[1].shmid", |m| {
        let twice = m.sysv_shm[0].clone();
        m.sysv_shm.push(twice);
    });
    refused("regions[0].backing.shmid", |m| m.sysv_shm.clear());
    refused("sysv_shm[0]", |m| {
        m.regions[0].backing = Backing::SharedAnonymous
    });
    refused("sysv_shm[0]", |m| m.regions[0].runs.clear());
    refused("regions[0].shared_object", |m| m.sysv_shm[0].size = 0x1000);
    refused("regions[0].shared_object", |m| {
        m.regions[0].shared_object = Some(SharedMemoryRef {
            id: 7,
            offset: !0xfff,
        });
    });
    refused("locks[0].pid", |m| m.locks[0].pid = 4242);
    refused("locks[0].fd", |m| m.locks[0].fd = 9);
    refused("locks[0].end", |m| {
        m.locks[0].start = 100;
        m.locks[0].end = Some(5);
    });
}

/// The sample with a TCP connection inside the job (object 6, held at fd 4 and 5).
fn with_tcp_pair() -> Manifest {
    use crate::objects::inet::SocketOptions;
    use crate::objects::tcp::{TcpEnd, TcpPair};
    let end = |local: &str, remote: &str, inode| TcpEnd {
        inode,
        ipv6: false,
        flags: 0,
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
        options: SocketOptions::default(),
        send_seq: 1,
        send_queue: b"abc".to_vec(),
        unsent: 1,
        receive_seq: u32::MAX,
        receive_queue: b"de".to_vec(),
        mss: 65483,
        window_scale: Some((7, 7)),
        sack: true,
        timestamps: true,
        timestamp: 5,
        window: [0; 5],
    };
    let mut m = sample();
    m.objects.push(SharedObject {
        id: 6,
        object: ObjectKind::TcpPair(Box::new(TcpPair {
            ends: [
                end("127.0.0.1:5000", "127.0.0.1:40000", 11),
                end("127.0.0.1:40000", "127.0.0.1:5000", 12),
            ],
        })),
    });
    m.fds
        .push(fd(4, FdKind::InetSocket, "socket:[11]", Some(6)));
    m.fds
        .push(fd(5, FdKind::InetSocket, "socket:[12]", Some(6)));
    m
}

#[test]
fn hostile_tcp_and_udp_objects() {
    use crate::objects::udp::{Datagram, UdpSocket};
    assert_eq!(validate(&with_tcp_pair()), Ok(()));
    #[track_caller]
    fn refused_tcp(field: &str, edit: impl FnOnce(&mut crate::objects::tcp::TcpPair)) {
        let mut m = with_tcp_pair();
        let ObjectKind::TcpPair(p) = &mut m.objects[1].object else {
            unreachable!()
        };
        edit(p);
        let err = validate(&m).expect_err("a hostile TCP object passed");
        assert!(err.names(field), "expected {field}, got: {err}");
    }
    refused_tcp("objects[1].object", |p| {
        p.ends[0].window_scale = Some((15, 0))
    });
    refused_tcp("objects[1].object", |p| p.ends[0].unsent = 4);
    refused_tcp("objects[1].object", |p| p.ends[1].mss = 0);
    refused_tcp("objects[1].object", |p| {
        p.ends[0].remote = "127.0.0.1:0".parse().unwrap();
        p.ends[1].local = "127.0.0.1:0".parse().unwrap();
    });
    refused_tcp("objects[1].object", |p| {
        p.ends[0].local = "[::1]:5000".parse().unwrap();
    });
    refused_tcp("objects[1].object", |p| {
        p.ends[1].remote = "127.0.0.1:5001".parse().unwrap();
    });
    refused_tcp("objects[1].object", |p| {
        p.ends[0].options.keepalive_timing = Some([0, 1, 1]);
    });
    refused_tcp("objects[1].object", |p| {
        p.ends[0].options.receive_buffer = Some(u32::MAX);
    });
    let mut m = with_tcp_pair();
    m.fds[2].object = Some(5);
    let err = validate(&m).expect_err("an inet fd on a stdio object passed");
    assert!(err.names("fds[2].object"), "{err}");
    let mut m = sample();
    m.objects.push(SharedObject {
        id: 7,
        object: ObjectKind::Udp(UdpSocket {
            ipv6: false,
            flags: 0,
            local: Some("127.0.0.1:6000".parse().unwrap()),
            remote: None,
            options: crate::objects::inet::SocketOptions::default(),
            multicast: Default::default(),
            queued: vec![Datagram {
                from: "127.0.0.1:0".parse().unwrap(),
                data: Vec::new(),
            }],
        }),
    });
    let err = validate(&m).expect_err("a datagram from port 0 passed");
    assert!(err.names("objects[1].object"), "{err}");
}
