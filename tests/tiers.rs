//! Multi-level storage in test mode (2 simulated nodes x 1 rank on this machine): partner
//! and global copies made in the background, recovery after losing a node, a damaged
//! partner copy, only a global image left, partial copies never chosen, the first
//! checkpoint after a restore from another tier, the per-tier interval counts of the
//! collision rule, and what copies cost (freeze time, throughput). The ranks are
//! independent here (`[coordination] mode = "off"`), run one at a time: generations of
//! ranks run together are tests/generations.rs's.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::*;
use nix::sys::signal::Signal;

/// 8 MiB, `ticks` ticks of 30 ms.
fn prog(ticks: u32) -> Prog {
    Prog::c("memory", &["8", &ticks.to_string()])
}

fn global_root(h: &Harness) -> PathBuf {
    h.dir.path().join("global")
}

/// The config: test mode with 2 nodes, a global tier, then `rest` (from `[interval]` on).
fn configure(h: &Harness, keep: u32, rest: &str) {
    h.set_config(&format!(
        "global = '{}'\nkeep = {keep}\n[coordination]\nmode = 'off'\n[topology]\ntest_mode = true\n\
         nodes = 2\n{rest}",
        global_root(h).display()
    ));
}

/// `<store>/node<K>/<job>/rank<R>`: rank R's local images on node K.
fn local_dir(h: &Harness, node: u32, rank: u32) -> PathBuf {
    h.store
        .join(format!("node{node}"))
        .join(&h.job)
        .join(format!("rank{rank}"))
}

/// `<store>/node<K>/<job>/partner/rank<R>`: rank R's partner copies, held by node K.
fn partner_dir(h: &Harness, node: u32, rank: u32) -> PathBuf {
    h.store
        .join(format!("node{node}"))
        .join(&h.job)
        .join("partner")
        .join(format!("rank{rank}"))
}

fn global_dir(h: &Harness, rank: u32) -> PathBuf {
    global_root(h).join(&h.job).join(format!("rank{rank}"))
}

/// `restore --auto --job JOB --rank R` run to a successful end.
fn restore_auto(h: &Harness, rank: u32, pid: i32) -> Finished {
    let rank = rank.to_string();
    let mut restore = h.restore_with(&["--auto", "--job", &h.job, "--rank", &rank], &prog(0));
    restore.set_target(pid);
    restore.finish(CMD_TIMEOUT).expect_code(0)
}

/// Node 0 is lost, then the partner copy is damaged, then only a global image is left:
/// each time `restore --auto` takes the next best image, says why, and the program goes
/// on exactly. Rank 1 runs alongside, named by MLCKPT_RANK instead of --rank.
#[test]
fn recovery_after_node_loss_falls_back_tier_by_tier() {
    let h = Harness::new("tiers-loss");
    configure(
        &h,
        2,
        "[interval]\nlocal = 0.25\npartner = 0.5\nglobal = 0.75\n",
    );
    let prog = prog(100);
    let reference = h.plain(&prog);
    let mut r0 = h.run_with(&["--rank", "0"], &[], &prog);
    let mut r1 = h.run_with(&[], &[("MLCKPT_RANK", "1")], &prog);
    r0.wait_for_ticks(35);
    r1.wait_for_ticks(35);
    let (pid0, pid1) = (r0.target_pid(), r1.target_pid());
    // The newest image of rank 0 is on local + partner only; the one before on global.
    let (global_seq, _) = checkpoint_to(&h, pid0, "global", &[]);
    let (partner_seq, partner_copy) = checkpoint_to(&h, pid0, "partner", &["--kill"]);
    assert!(partner_seq > global_seq);
    assert_eq!(partner_copy.parent(), Some(&*partner_dir(&h, 1, 0)));
    h.checkpoint_json(pid1, &["--kill"]);
    let run0 = r0.finish(CMD_TIMEOUT).expect_code(KILLED);
    let before0 = run0.stdout.clone();
    let before1 = r1.finish(CMD_TIMEOUT).expect_code(KILLED).stdout;
    wait_gone(pid0);
    wait_gone(pid1);
    assert!(
        run0.stderr.contains("to the partner tier") && run0.stderr.contains("to the global tier"),
        "the supervisor should report its background copies\n{}",
        run0.describe()
    );
    // Restores must not take new checkpoints into the stores this test takes apart.
    configure(&h, 2, "");
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;

    // Rank 1 (by MLCKPT_RANK, as it ran) restores from its own node's local storage.
    let mut restore1 = h.start_with_env(
        &[
            "restore",
            "--auto",
            "--job",
            &h.job,
            "--config",
            h.config.to_str().unwrap(),
        ],
        &[("MLCKPT_RANK", "1")],
        None,
    );
    restore1.set_target(pid1);
    let res1 = restore1.finish(CMD_TIMEOUT).expect_code(0);
    line_with(&res1, &["candidate", "local", "node1", "ok -> chosen"]);
    assert_continuation(&reference, &before1, &res1.stdout, pid1);

    // (1) Node 0 is lost: its local storage is gone; the partner copy on node 1 is used.
    std::fs::remove_dir_all(h.store.join("node0")).unwrap();
    let res = restore_auto(&h, 0, pid0);
    line_with(&res, &["candidate", "local", "missing"]);
    let seq = format!("seq {partner_seq} partner");
    line_with(&res, &["candidate", &seq, "ok -> chosen"]);
    assert_continuation(&reference, &before0, &res.stdout, pid0);

    // (2) The partner copies as new as the newest global image are damaged too (an
    // incremental partner copy brings its parents, which may include that one): the
    // global image is used, and the damaged ones are named with the reason.
    let newest_global = *image_seqs(&global_dir(&h, 0))
        .last()
        .expect("a global image");
    for seq in image_seqs(&partner_dir(&h, 1, 0)) {
        if seq >= newest_global {
            let image = partner_dir(&h, 1, 0).join(format!("ckpt-{seq:06}"));
            damage(&image.join("pages.bin"), Damage::FlipBit);
        }
    }
    let res = restore_auto(&h, 0, pid0);
    line_with(&res, &["candidate", &seq, "checksum mismatch", "pages.bin"]);
    let chosen = format!("seq {newest_global} global");
    line_with(&res, &["candidate", &chosen, "ok -> chosen"]);
    let lines = before0.matches('\n').count();
    assert_resumed(&reference, &before0, &res.stdout, 1..lines, pid0, pid0);

    // (3) Only one global image is left (with the images it takes pages from), and
    // (4) partial copies that look newer are lying around: the global image is used.
    let keep = global_dir(&h, 0).join(format!("ckpt-{newest_global:06}"));
    let mut needed = mlckpt::image::store::dependencies(&keep);
    needed.push(keep.clone());
    std::fs::remove_dir_all(&h.store).unwrap();
    for seq in image_seqs(&global_dir(&h, 0)) {
        let image = global_dir(&h, 0).join(format!("ckpt-{seq:06}"));
        if !needed.contains(&image) {
            std::fs::remove_dir_all(image).unwrap();
        }
    }
    copy_dir(&keep, &global_dir(&h, 0).join(".ckpt-000099.partial"));
    copy_dir(&keep, &partner_dir(&h, 1, 0).join(".ckpt-000098.partial"));
    let res = restore_auto(&h, 0, pid0);
    line_with(&res, &["candidate", "local", "missing"]);
    line_with(&res, &["candidate", "partner", "missing"]);
    line_with(&res, &["candidate", &chosen, "ok -> chosen"]);
    for partial in ["000099", "seq 99", "000098", "seq 98"] {
        assert!(
            !res.stderr.contains(partial),
            "a partial copy was considered\n{}",
            res.describe()
        );
    }
    assert_resumed(&reference, &before0, &res.stdout, 1..lines, pid0, pid0);
}

/// Restored from the global copy because the local image is damaged, the process's first
/// checkpoint is a full image: increments refer to parents in the local directory, where
/// the image restored is not (and where the damaged one is the newest).
#[test]
fn first_checkpoint_after_a_restore_from_another_tier_is_full() {
    let h = Harness::new("tiers-after");
    configure(&h, 5, "");
    let prog = prog(120);
    let reference = h.plain(&prog);
    let mut run = h.run_with(&["--rank", "0"], &[], &prog);
    run.wait_for_ticks(10);
    let pid = run.target_pid();
    checkpoint_to(&h, pid, "local", &[]);
    run.wait_for_ticks(20);
    let (seq, _) = checkpoint_to(&h, pid, "global", &["--kill"]);
    let before = run.finish(CMD_TIMEOUT).expect_code(KILLED).stdout;
    wait_gone(pid);
    let local = local_dir(&h, 0, 0).join(format!("ckpt-{seq:06}"));
    damage(&local.join("pages.bin"), Damage::FlipBit);

    let mut restore = h.restore_with(&["--auto", "--job", &h.job, "--rank", "0"], &prog);
    restore.set_target(pid);
    restore.wait_for_ticks(5);
    let next = h.checkpoint_json(pid, &["--kill"]);
    let middle = restore.finish(CMD_TIMEOUT).expect_code(KILLED);
    wait_gone(pid);
    line_with(
        &middle,
        &["candidate", &format!("seq {seq} global"), "ok -> chosen"],
    );
    let path = PathBuf::from(next["path"].as_str().expect("path"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        (
            manifest["chain_depth"].as_u64(),
            manifest["parents"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0)),
        "a full image, building on nothing in the local directory: parents {}",
        manifest["parents"]
    );
    let after = h.restore_to_end(&path, &prog, pid, |_, _| {});
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(
        &reference,
        &format!("{before}{}", middle.stdout),
        &after,
        pid,
    );
}

/// local = 1 s, partner = 2 s, global = 4 s for about 9 s: checkpoint k (at second k) goes
/// to global when k is a multiple of 4, else to partner when k is even, else local only;
/// every one is written locally first.
#[test]
fn interval_counts_follow_the_collision_rule() {
    let h = Harness::new("tiers-sched");
    configure(&h, 100, "[interval]\nlocal = 1\npartner = 2\nglobal = 4\n");
    let started = Instant::now();
    let run = h.run_with(&["--rank", "0"], &[], &prog(290));
    let run = run.finish(CMD_TIMEOUT).expect_code(0);
    let secs = started.elapsed().as_secs_f64();
    let local = image_seqs(&local_dir(&h, 0, 0));
    let n = u64::try_from(local.len()).unwrap();
    assert_eq!(
        local,
        (1..=n).collect::<Vec<_>>(),
        "local images\n{}",
        run.describe()
    );
    assert!(
        (8..=10).contains(&n),
        "{n} checkpoints in {secs:.1} s\n{}",
        run.describe()
    );
    let partner: Vec<u64> = (1..=n).filter(|k| k % 2 == 0 && k % 4 != 0).collect();
    let global: Vec<u64> = (1..=n).filter(|k| k % 4 == 0).collect();
    eprintln!(
        "{n} checkpoints in {secs:.1} s: local {local:?}, partner {partner:?}, global {global:?}"
    );
    // What the copy threads committed, by tier (an incremental copy also brings the
    // images it takes pages from, so the directories may hold more).
    let copied_to = |tier: &str| -> Vec<u64> {
        let to = format!(" to the {tier} tier: ");
        run.stderr
            .lines()
            .filter(|l| l.contains(&to))
            .filter_map(|l| {
                mlckpt_line(l)?
                    .strip_prefix("mlckpt: copied ckpt-")?
                    .get(..6)?
                    .parse()
                    .ok()
            })
            .collect()
    };
    assert_eq!(copied_to("partner"), partner, "{}", run.describe());
    assert_eq!(copied_to("global"), global, "{}", run.describe());
    for (dir, seqs) in [
        (partner_dir(&h, 1, 0), &partner),
        (global_dir(&h, 0), &global),
    ] {
        let there = image_seqs(&dir);
        assert!(
            seqs.iter().all(|s| there.contains(s)),
            "{there:?} in {}",
            dir.display()
        );
    }
    for k in 1..=n {
        let tier = if global.contains(&k) {
            "global"
        } else if partner.contains(&k) {
            "partner"
        } else {
            "local"
        };
        line_with(
            &run,
            &[&format!("interval checkpoint ({tier})"), &format!("{k:06}")],
        );
    }

    // list and verify cover every tier and node directory.
    let cfg = h.config.to_str().unwrap();
    let res = h
        .mlckpt(&["list", "--json", "--config", cfg])
        .expect_code(0);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&res.stdout).unwrap();
    let count = |tier: &str, node: serde_json::Value| {
        rows.iter()
            .filter(|r| r["tier"] == tier && r["node"] == node && r["valid"] == true)
            .count()
    };
    assert_eq!(count("local", 0.into()), local.len(), "{rows:#?}");
    assert!(count("partner", 1.into()) >= partner.len(), "{rows:#?}");
    assert!(
        count("global", serde_json::Value::Null) >= global.len(),
        "{rows:#?}"
    );
    let res = h
        .mlckpt(&["verify", "--all", "--config", cfg])
        .expect_code(0);
    assert_eq!(res.stdout.lines().count(), rows.len(), "{}", res.describe());
    assert!(res.stdout.contains("/partner/rank0/"), "{}", res.describe());
}

/// Retention keeps `keep` images per tier, parents of kept incremental images included,
/// and deletes a tier's old images only once a newer one is committed there.
#[test]
fn retention_keeps_the_newest_per_tier() {
    let h = Harness::new("tiers-keep");
    configure(&h, 1, "[image]\nfull_every = 1\n");
    let mut run = h.run_with(&[], &[], &prog(150));
    run.wait_for_ticks(5);
    let pid = run.target_pid();
    let mut globals = Vec::new();
    for _ in 0..3 {
        globals.push(checkpoint_to(&h, pid, "global", &[]).0);
    }
    let (last, _) = checkpoint_to(&h, pid, "partner", &["--kill"]);
    run.finish(CMD_TIMEOUT).expect_code(KILLED);
    assert_eq!(image_seqs(&local_dir(&h, 0, 0)), [last]);
    assert_eq!(image_seqs(&partner_dir(&h, 1, 0)), [last]);
    assert_eq!(image_seqs(&global_dir(&h, 0)), [globals[2]]);
}

/// SIGTERM checkpoints to the highest tier there is (global here), ends the program, and
/// the supervisor exits once the copy is committed. A process nobody supervises gets its
/// copy from `checkpoint --tier` itself.
#[test]
fn sigterm_and_direct_checkpoints_reach_higher_tiers() {
    let h = Harness::new("tiers-term");
    configure(&h, 2, "");
    let mut run = h.run_with(&["--rank", "1"], &[], &prog(150));
    run.wait_for_ticks(5);
    let pid = run.target_pid();
    run.signal(Signal::SIGTERM);
    let run = run.finish(CMD_TIMEOUT).expect_code(STOPPED);
    wait_gone(pid);
    line_with(&run, &["checkpoint on SIGTERM", "(global", "ckpt-000001"]);
    line_with(&run, &["copied ckpt-000001 to the global tier"]);
    assert_eq!(image_seqs(&local_dir(&h, 1, 1)), [1]);
    assert_eq!(image_seqs(&global_dir(&h, 1)), [1]);

    let mut target = h.unsupervised(&prog(150));
    target.wait_for_ticks(5);
    let pid = target.target_pid();
    let cfg = h.config.to_str().unwrap();
    let direct = ["--kill", "--config", cfg, "--job", &h.job, "--rank", "0"];
    let (seq, path) = checkpoint_to(&h, pid, "partner", &direct);
    target.finish(CMD_TIMEOUT).expect_code(KILLED);
    assert_eq!(path, partner_dir(&h, 1, 0).join(format!("ckpt-{seq:06}")));
    let res = h
        .mlckpt(&["verify".as_ref(), path.as_os_str()])
        .expect_code(0);
    assert!(res.stdout.starts_with("ok"), "{}", res.describe());
}

/// Outside test mode the partner copy is made by `partner_copy`, with the partner's host
/// from the node list (SLURM's variables here), and restore finds a copy that lands in this
/// node's `partner/` directory.
#[test]
fn partner_copy_command_with_slurm_topology() {
    let h = Harness::new("tiers-cmd");
    h.set_config(
        "[interval]\npartner = 60\n[topology]\n\
         partner_copy = \"test {host} = n02 && mkdir -p {dst} && cp -a {src}/. {dst}/\"\n",
    );
    let slurm = [
        ("SLURM_PROCID", "0"),
        ("SLURM_NODEID", "0"),
        ("SLURM_NNODES", "2"),
        ("SLURM_JOB_NODELIST", "n[01-02]"),
    ];
    let prog = prog(150);
    let mut run = h.run_with(&[], &slurm, &prog);
    run.wait_for_ticks(5);
    let pid = run.target_pid();
    let (seq, path) = checkpoint_to(&h, pid, "partner", &["--kill"]);
    let run = run.finish(CMD_TIMEOUT).expect_code(KILLED);
    wait_gone(pid);
    let here = h.store.join(&h.job).join("partner/rank0");
    assert_eq!(
        path,
        here.join(format!("ckpt-{seq:06}")),
        "{}",
        run.describe()
    );
    std::fs::remove_dir_all(h.rank_dir()).unwrap();
    let cfg = h.config.to_str().unwrap();
    let args = ["restore", "--auto", "--job", &h.job, "--config", cfg];
    let mut restore = h.start_with_env(&args, &slurm, None);
    restore.set_target(pid);
    let res = restore.finish(CMD_TIMEOUT).expect_code(0);
    line_with(&res, &[&format!("seq {seq} partner"), "ok -> chosen"]);
}

/// A copy to the partner or global tier does not freeze the program any longer: the
/// freeze times of interval checkpoints with only the local tier configured, and with
/// partner and global copies being made in the background meanwhile; then copy throughput
/// next to `cp`. MLCKPT_TIERS_MIB sets the program's size (default 128).
#[test]
fn copies_do_not_add_to_the_freeze_time() {
    let mib: u32 = std::env::var("MLCKPT_TIERS_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let h = Harness::new("tiers-freeze");
    let prog = Prog::c("memory", &[&mib.to_string(), "110"]);
    // Full images only, so every checkpoint dumps and copies the whole program.
    h.set_config("keep = 2\n[interval]\nlocal = 0.5\n[image]\nfull_every = 1\n");
    let local_only = h.run(&prog).finish(CMD_TIMEOUT).expect_code(0);
    configure(
        &h,
        2,
        "[interval]\nlocal = 0.5\npartner = 1\nglobal = 1.5\n[image]\nfull_every = 1\n",
    );
    let tiers = h
        .run_with(&[], &[], &prog)
        .finish(CMD_TIMEOUT)
        .expect_code(0);

    let frozen = " ms, total";
    let without = logged(&local_only.stderr, "interval checkpoint", frozen);
    let with = logged(&tiers.stderr, "interval checkpoint", frozen);
    let partner = logged(&tiers.stderr, " to the partner tier: ", " MiB/s)");
    let global = logged(&tiers.stderr, " to the global tier: ", " MiB/s)");
    eprintln!("--- {mib} MiB program, interval checkpoints ---");
    eprintln!("frozen, local tier only        : {without:.1?} ms");
    eprintln!("frozen, partner + global copies: {with:.1?} ms");
    eprintln!("copy to partner, MiB/s         : {partner:.0?}");
    eprintln!("copy to global, MiB/s          : {global:.0?}");
    assert!(
        without.len() >= 3 && with.len() >= 3,
        "{}",
        tiers.describe()
    );
    assert!(
        !partner.is_empty() && !global.is_empty(),
        "{}",
        tiers.describe()
    );
    let (a, b) = (median(&without), median(&with));
    // Lenient (the machine is shared with other tests): a copy of the whole program takes
    // hundreds of ms; it must not show up in the freeze.
    assert!(
        b < a * 3.0 + 50.0,
        "median freeze {b:.1} ms with copies, {a:.1} ms without"
    );
    let image = image_seqs(&local_dir(&h, 0, 0))
        .last()
        .map(|s| local_dir(&h, 0, 0).join(format!("ckpt-{s:06}")))
        .expect("a local image");
    throughput(&h, &image);
}

/// In the lines of `log` that contain `filter`, the number just before `suffix`.
fn logged(log: &str, filter: &str, suffix: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains(filter))
        .filter_map(|l| l[..l.find(suffix)?].rsplit(' ').next()?.parse().ok())
        .collect()
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Copies `image` with mlckpt's copy (hash, verify, fsync, rename) and with `cp -r`
/// (with and without a `sync` of the copy), three times each, and prints the medians.
fn throughput(h: &Harness, image: &Path) {
    let bytes: u64 = std::fs::read_dir(image)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let mib = bytes as f64 / f64::from(1 << 20);
    let dest = h.dir.path().join("bench");
    let cp = |target: &Path, sync: bool| {
        let mut cmd = format!("cp -r '{}' '{}'", image.display(), target.display());
        if sync {
            cmd.push_str(&format!(" && sync '{}'/*", target.display()));
        }
        let ok = std::process::Command::new("sh")
            .args(["-c", &cmd])
            .status()
            .unwrap();
        assert!(ok.success(), "{cmd}");
    };
    type Copy<'a> = &'a dyn Fn(&Path);
    let ways: [(&str, Copy); 3] = [
        ("mlckpt copy (blake3 + fsync + rename)", &|to: &Path| {
            let gate = mlckpt::tiers::placement::Gate::default();
            let raw = mlckpt::image::compress::Compression::None;
            mlckpt::tiers::placement::copy_image(image, to, &gate, raw).unwrap();
        }),
        ("cp -r", &|to: &Path| cp(to, false)),
        ("cp -r + sync", &|to: &Path| cp(to, true)),
    ];
    let mut secs = vec![Vec::new(); ways.len()];
    for round in 0..3 {
        for (i, (_, copy)) in ways.iter().enumerate() {
            let to = dest.join(format!("{i}-{round}"));
            let started = Instant::now();
            copy(&to);
            secs[i].push(started.elapsed().as_secs_f64());
            std::fs::remove_dir_all(&to).unwrap();
        }
    }
    eprintln!("--- copy of a {mib:.0} MiB image, source in the page cache (median of 3) ---");
    for ((name, _), s) in ways.iter().zip(secs) {
        let t = median(&s);
        eprintln!("{name:<38}: {:7.1} ms, {:6.0} MiB/s", t * 1000.0, mib / t);
    }
}
