//! Whole jobs: process trees. Each test runs a job of several processes under `mlckpt run`,
//! checkpoints it with `--kill` (the whole tree dies), restores it, and requires the output
//! of the checkpointed run plus the restored run to be that of an uninterrupted run; the
//! image must really hold the tree (its manifest is read back).

mod common;

use common::*;
use mlckpt::image::Image;
use mlckpt::objects::ObjectKind;

fn manifest(ckpt: &Ckpt) -> mlckpt::image::format::Manifest {
    Image::open(&ckpt.path).expect("image opens").manifest
}

#[test]
fn bash_job_script_with_its_step_program_running() {
    let h = Harness::new("tree-job");
    let step = compiled("step").to_string_lossy().into_owned();
    let prog = Prog::script("tree_job.sh", &["{dir}/state", "40", &step]);
    let out = h.checkpoint_kill_restore(&prog, 14);
    let m = manifest(&out.ckpt);
    assert!(
        m.members.iter().any(|p| p.process.exe.contains("step")),
        "the step program was not in the image: {:?}",
        m.members.iter().map(|p| &p.process.exe).collect::<Vec<_>>()
    );
    let state = |dir: std::path::PathBuf| std::fs::read(dir.join("state")).unwrap();
    assert_eq!(
        state(h.ref_dir()),
        state(h.run_dir()),
        "the state file the steps rewrite differs from the uninterrupted run's"
    );
}

#[test]
fn loop_of_sleep_children() {
    let h = Harness::new("tree-sleep");
    h.checkpoint_kill_restore(&Prog::script("sleeploop.sh", &["80"]), 25);
}

#[test]
fn pipeline_with_data_in_the_pipe() {
    let h = Harness::new("tree-pipe");
    let out = h.checkpoint_kill_restore(&Prog::c("pipeline", &["80"]), 15);
    let m = manifest(&out.ckpt);
    assert_eq!(m.members.len(), 2, "producer and consumer");
    let buffered: usize = m
        .objects
        .iter()
        .filter_map(|o| match &o.object {
            ObjectKind::Pipe(p) if p.read_end.is_some() && p.write_end.is_some() => {
                Some(p.data.len())
            }
            _ => None,
        })
        .sum();
    assert!(
        buffered > 0,
        "no data was buffered in the pipe: {:?}",
        m.objects
    );
}

#[test]
fn parent_waiting_for_a_running_child_and_a_zombie() {
    let h = Harness::new("tree-zombie");
    let out = h.checkpoint_kill_restore(&Prog::c("waiter", &["60"]), 15);
    let m = manifest(&out.ckpt);
    assert_eq!(m.zombies.len(), 1, "the zombie child: {:?}", m.zombies);
    assert_eq!(m.zombies[0].wait_status, 7 << 8);
    assert_eq!(m.process_count(), 3);
    let cfg = h.config.to_str().unwrap();
    let listed = h
        .mlckpt(&["list", "--json", "--config", cfg])
        .expect_code(0);
    let rows: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(rows[0]["processes"], 3, "list shows the processes: {rows}");
}

#[test]
fn signal_to_the_process_group_reaches_every_member() {
    let h = Harness::new("tree-group");
    h.checkpoint_kill_restore(&Prog::c("killgroup", &["60"]), 12);
}

#[test]
fn shared_memory_stays_shared() {
    let h = Harness::new("tree-shm");
    h.checkpoint_kill_restore(&Prog::c("shmem", &["60"]), 15);
}

#[test]
fn python_multiprocessing_pool() {
    let h = Harness::new("tree-pool");
    let Some(prog) = Prog::python("pool.py", &["60"]) else {
        return;
    };
    let out = h.checkpoint_kill_restore(&prog, 15);
    assert!(manifest(&out.ckpt).members.len() >= 2, "the pool's workers");
}

/// A checkpoint names every object it cannot capture, in every process, and the job runs
/// on untouched. The child inherits the namespace fd and has a raw socket: three fds in all.
#[test]
fn unsupported_objects_are_all_listed_and_the_job_runs_on() {
    let h = Harness::new("tree-unsupported");
    let prog = Prog::c("unsupported_tree", &["80"]);
    let reference = h.plain(&prog);
    let mut run = h.run(&prog);
    run.wait_for_ticks(10);
    let pid = run.target_pid();
    let res = h.checkpoint_refused(pid);
    let text = res.output();
    assert!(
        text.contains("3 open files")
            && text.contains("namespace (net)")
            && text.contains("socket"),
        "every object should be listed\n{}",
        res.describe()
    );
    let run = run.finish(CMD_TIMEOUT).expect_code(0);
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0);
    assert_continuation(&reference.stdout, &run.stdout, "", pid);
}

/// `mlckpt checkpoint` of a member of a supervised job (not its root) is refused with the
/// command that checkpoints the whole job, and the job runs on untouched.
#[test]
fn a_member_of_a_supervised_job_names_the_root_to_checkpoint() {
    let h = Harness::new("tree-member");
    let prog = Prog::c("tree_memory", &["2", "4", "60"]);
    let reference = h.plain(&prog);
    let mut run = h.run(&prog);
    run.wait_for_ticks(5);
    let pid = run.target_pid();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let member: i32 = children
        .split_whitespace()
        .next()
        .expect("the job has a child")
        .parse()
        .unwrap();
    let res = h.checkpoint_refused(member);
    assert!(
        res.output().contains(&format!(
            "checkpoint the whole job with `mlckpt checkpoint {pid}`"
        )),
        "the root should be named\n{}",
        res.describe()
    );
    let run = run.finish(CMD_TIMEOUT).expect_code(0);
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0);
    assert_continuation(&reference.stdout, &run.stdout, "", pid);
}

/// The members of a job are write-tracked like its root: after a full image, checkpoints
/// of a running tree store only the pages each process wrote, the rest comes from the
/// images before; a tree restored from the last of such a chain goes on exactly.
#[test]
fn tracked_members_make_increments_that_restore_exactly() {
    let h = Harness::new("tree-incr");
    h.set_config("keep = 10\n[interval]\nlocal = 0\n[image]\nfull_every = 4\n");
    let prog = Prog::c("tree_memory", &["3", "24", "160"]);
    let reference = h.plain(&prog);
    let mut run = h.run(&prog);
    run.wait_for_ticks(5);
    let pid = run.target_pid();
    for ticks in [15, 25] {
        h.checkpoint(pid, false);
        run.wait_for_ticks(ticks);
    }
    let last = h.checkpoint(pid, true);
    let before = run.finish(CMD_TIMEOUT).expect_code(KILLED).stdout;
    wait_gone(pid);
    let m = manifest(&last);
    assert_eq!(m.members.len(), 2);
    assert_eq!(
        m.chain_depth, 2,
        "the last image should be the second increment"
    );
    for member in &m.members {
        let from_parents: u64 = member
            .regions
            .iter()
            .flat_map(|r| &r.runs)
            .filter(|run| run.image.is_some())
            .map(|run| run.len)
            .sum();
        assert!(
            from_parents > 8 << 20,
            "process {} stored its unchanged pages again ({from_parents} bytes from parents)",
            member.process.pid
        );
    }
    let after = h.restore_to_end(&last.path, &prog, pid, |_, _| {});
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &before, &after, pid);
}

/// A tree whose processes rewrite all their memory every tick (the simulation pattern):
/// pre-copy cannot converge, so every process's memory comes from a fork-snapshot of it
/// (when the machine lets it write at full speed).
/// The image taken while the job ran on restores exactly (each process as at the freeze)
/// and holds each page once.
#[test]
fn a_tree_rewriting_all_its_memory_is_snapshotted_and_restores_exactly() {
    const MIB: u64 = 1 << 20;
    let h = Harness::new("tree-all");
    h.set_config("keep = 10\n[interval]\nlocal = 0\n");
    let prog = Prog::c("tree_memory", &["3", "48", "120", "all"]);
    let reference = h.plain(&prog);
    let mut run = h.run(&prog);
    run.wait_for_ticks(5);
    let pid = run.target_pid();
    let asked = run.line_count();
    let live = h.checkpoint(pid, false);
    // The choice is made on the write rate measured against the read rate: on a machine
    // loaded by other tests the job may write slowly enough for pre-copy to converge. What
    // must hold either way: each page stored once, and the image restores exactly.
    assert!(
        live.mode == "snapshot" || live.mode == "precopy",
        "{live:?}"
    );
    run.wait_for_ticks(20);
    let last = h.checkpoint(pid, true);
    let before = run.finish(CMD_TIMEOUT).expect_code(KILLED).stdout;
    wait_gone(pid);
    let m = manifest(&live);
    assert_eq!(m.members.len(), 2);
    assert!(
        m.pages_bytes < 3 * 48 * MIB * 102 / 100 + 16 * MIB,
        "pages stored more than once: {} bytes for 3 x 48 MiB",
        m.pages_bytes
    );
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    let after = h.restore_to_end(&last.path, &prog, pid, |_, _| {});
    assert_continuation(&reference, &before, &after, pid);
    let whole = format!("{before}{after}");
    let restored = h.restore_to_end(&live.path, &prog, pid, |_, _| {});
    assert_resumed(&reference, &whole, &restored, asked..asked + 12, pid, pid);
}

/// What only a process can read of itself (child subreaper, parent-death signal) and a
/// stopped member come back: the root is a subreaper again, its child asked for SIGUSR1
/// at its parent's death again, the stopped child is stopped until the root continues it.
#[test]
fn subreaper_parent_death_signal_and_stopped_child() {
    let h = Harness::new("tree-flags");
    let out = h.checkpoint_kill_restore(&Prog::c("treeflags", &["60"]), 15);
    let m = manifest(&out.ckpt);
    assert!(m.process.child_subreaper);
    assert!(m.members.iter().any(|p| p.process.tree.stopped));
    assert!(
        m.members
            .iter()
            .any(|p| p.process.parent_death_signal == libc::SIGUSR1)
    );
}

/// Unix socket pairs of every type between two processes, with data queued in both
/// directions at checkpoint time: every byte and message boundary comes back.
#[test]
fn unix_socket_pairs_with_queued_data() {
    let h = Harness::new("tree-sockets");
    let out = h.checkpoint_kill_restore(&Prog::c("sockets", &["60"]), 15);
    let m = manifest(&out.ckpt);
    let queued: Vec<usize> = m
        .objects
        .iter()
        .filter_map(|o| match &o.object {
            ObjectKind::UnixPair(p) => Some(p.ends.iter().map(|e| e.queued.len()).sum()),
            _ => None,
        })
        .collect();
    assert_eq!(queued.len(), 3, "three pairs: {:?}", m.objects);
    assert!(
        queued.iter().all(|&n| n > 0),
        "every pair should hold queued data: {queued:?}"
    );
}

/// `attach` to a job mlckpt did not start: the tree under the PID given is the job. Its
/// processes, killed with it, are orphans of the harness's child and left to init, which
/// reaps them in its own time: the restore waits for their PIDs.
#[test]
fn attached_tree_restores() {
    let h = Harness::new("tree-attach");
    let prog = Prog::c("waiter", &["60"]);
    let reference = h.plain(&prog);
    let mut target = h.unsupervised(&prog);
    target.wait_for_ticks(5);
    let pid = target.target_pid();
    let attach = h.attach(pid);
    target.wait_for_ticks(12);
    let ckpt = h.checkpoint(pid, true);
    let before = target.finish(CMD_TIMEOUT).expect_code(KILLED).stdout;
    attach.finish(CMD_TIMEOUT).expect_code(0);
    wait_gone(pid);
    assert_eq!(manifest(&ckpt).process_count(), 3);
    let after = h.restore_to_end(&ckpt.path, &prog, pid, |_, _| {});
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &before, &after, pid);
}

/// Children born and reaped all the time: checkpoints catch them in every state (being
/// forked, running, zombie, reaped), and neither the checkpointed run nor the restored one
/// loses or gains a child or a status.
#[test]
fn children_born_and_reaped_all_the_time() {
    let h = Harness::new("tree-forker");
    let prog = Prog::c("forker", &["100"]);
    h.checkpoint_kill_restore_around(
        &prog,
        30,
        |pid| {
            for _ in 0..5 {
                h.checkpoint(pid, false);
            }
        },
        |_, _, ()| {},
    );
}

/// A tree image whose processes' parent links form a cycle (a crafted manifest, checksums
/// recomputed) is refused before any process is created, instead of waiting forever for a
/// process nobody would create.
#[test]
fn members_whose_parents_form_a_cycle_are_refused() {
    let h = Harness::new("tree-cycle");
    let prog = Prog::c("pipeline", &["80"]);
    let killed = h.run_until_checkpoint_kill(&prog, 10);
    let dir = &killed.ckpt.path;
    rewrite_manifest(dir, |v| {
        let pid_of = |v: &serde_json::Value, i: usize| v["members"][i]["process"]["pid"].clone();
        let (a, b) = (pid_of(v, 0), pid_of(v, 1));
        v["members"][0]["process"]["tree"]["ppid"] = b;
        v["members"][1]["process"]["tree"]["ppid"] = a;
    });
    let res = h.restore(dir, &prog).finish(CMD_TIMEOUT).expect_failure();
    assert!(
        res.output().contains("members[0].process.tree.ppid")
            && res.output().contains("parents come first"),
        "the restore should name the inconsistency\n{}",
        res.describe()
    );
    assert!(
        !pid_alive(killed.pid),
        "a refused restore left the process behind"
    );
}

/// A process that left the job's tree (its parent exited; it came to the supervisor, the
/// job's subreaper) is not left out silently: the checkpoint fails naming it.
#[test]
fn a_process_that_left_the_tree_fails_the_checkpoint() {
    let h = Harness::new("tree-escapee");
    let prog = Prog::c("escapee", &["80"]);
    let reference = h.plain(&prog);
    let mut run = h.run(&prog);
    run.wait_for_ticks(10);
    let pid = run.target_pid();
    let res = h.checkpoint_refused(pid);
    assert!(
        res.output().contains("left the job's process tree"),
        "the escaped process should be named\n{}",
        res.describe()
    );
    let run = run.finish(CMD_TIMEOUT).expect_code(0);
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0);
    assert_continuation(&reference.stdout, &run.stdout, "", pid);
}
