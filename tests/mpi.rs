//! A whole Open MPI job on one node, checkpointed from the outside: `mlckpt run -- mpirun
//! -np 4 ring` (mpirun, its ranks and everything between them: TCP connections and
//! listeners, ptys or pipes carrying the ranks' output, eventfds, epoll, the shared-memory
//! segment in /dev/shm) is checkpointed with `--kill`, the whole tree dies, and the restored
//! tree finishes with the output of an uninterrupted run. CI installs Open MPI
//! (`openmpi-bin`, `libopenmpi-dev`); without `mpicc` and `mpirun` these tests fail and say so.

mod common;

use common::*;
use std::path::Path;

const RANKS: &str = "4";

fn ring(steps: u32) -> Prog {
    let (Some(mpicc), Some(mpirun)) = (find_in_path("mpicc"), find_in_path("mpirun")) else {
        panic!(
            "Open MPI is not installed: apt-get install -y openmpi-bin libopenmpi-dev (.ci/run does)"
        );
    };
    let exe = compile_with(
        &mpicc.to_string_lossy(),
        &programs_dir(),
        "ring",
        &["-O1", "-Wall", "-Werror"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let steps = steps.to_string();
    Prog::new(
        mpirun.to_string_lossy().into_owned(),
        &[
            "--allow-run-as-root",
            // Four ranks on a machine with fewer cores.
            "--oversubscribe",
            "-np",
            RANKS,
            &exe.to_string_lossy(),
            &steps,
        ],
    )
}

fn ranks_in(image: &Path) -> usize {
    let m = mlckpt::image::Image::open(image)
        .expect("image opens")
        .manifest;
    m.members
        .iter()
        .filter(|p| p.process.exe.contains("ring"))
        .count()
}

#[test]
fn mpirun_with_four_ranks_restores_to_the_same_output() {
    require_root();
    let h = Harness::new("mpi-ring");
    let out = h.checkpoint_kill_restore(&ring(120), 25);
    assert_eq!(
        ranks_in(&out.ckpt.path),
        4,
        "the image does not hold the four ranks"
    );
}

/// Interval checkpoints (incremental after the first) while the ranks exchange messages;
/// the last one before the kill is restored.
#[test]
fn mpirun_with_interval_checkpoints_restores_the_newest() {
    require_root();
    let h = Harness::new("mpi-interval");
    h.set_config("keep = 100\n[interval]\nlocal = 1\n");
    let prog = ring(150);
    let reference = h.plain(&prog);
    let mut run = h.run(&prog);
    run.wait_for_ticks(5);
    let pid = run.target_pid();
    wait_until("two interval checkpoints", || {
        image_seqs(&h.rank_dir()).len() >= 2
    });
    let ckpt = h.checkpoint(pid, true);
    let before = run.finish(CMD_TIMEOUT).expect_code(KILLED).stdout;
    wait_gone(pid);
    assert_eq!(
        ranks_in(&ckpt.path),
        4,
        "the image does not hold the four ranks"
    );
    let after = h.restore_to_end(&ckpt.path, &prog, pid, |_, _| {});
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &before, &after, pid);
}
