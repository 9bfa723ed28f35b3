//! `[image] compress = "zstd"`: copies on the partner and global tiers (test mode, 2
//! simulated nodes) store `pages.bin.zst` with the local image's CHECKSUMS and AUTH;
//! `verify` and `restore --auto` use them once the local image is gone, and a damaged
//! compressed copy is refused by name while the restore falls back to another one.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// 16 MiB of a smooth field of doubles (it compresses), 150 ticks of 30 ms.
fn prog() -> Prog {
    Prog::c("field", &["16", "150"])
}

fn global_dir(h: &Harness) -> PathBuf {
    h.dir.path().join("global").join(&h.job).join("rank0")
}

/// Rank 0's partner copies, held by node 1.
fn partner_dir(h: &Harness) -> PathBuf {
    h.store.join("node1").join(&h.job).join("partner/rank0")
}

fn image_in(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("ckpt-{seq:06}"))
}

/// Test mode with 2 nodes, a global tier, copies compressed at zstd level 3.
fn configure(h: &Harness) {
    h.set_config(&format!(
        "global = '{}'\nkeep = 2\n[image]\ncompress = \"zstd\"\ncompress_level = 3\n\
         [coordination]\nmode = 'off'\n[topology]\ntest_mode = true\nnodes = 2\n",
        h.dir.path().join("global").display()
    ));
}

fn restore_auto(h: &Harness, pid: i32) -> Finished {
    let mut restore = h.restore_with(&["--auto", "--job", &h.job, "--rank", "0"], &prog());
    restore.set_target(pid);
    restore.finish(CMD_TIMEOUT).expect_code(0)
}

fn manifest(image: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(image.join("manifest.json")).unwrap()).unwrap()
}

/// A compressed copy: `pages.bin.zst` (smaller than the pages) and no `pages.bin`, with
/// the local image's own CHECKSUMS and AUTH.
fn assert_compressed_copy(copy: &Path, local: &Path) {
    assert!(
        !copy.join("pages.bin").exists(),
        "{} holds pages.bin",
        copy.display()
    );
    let packed = std::fs::metadata(copy.join("pages.bin.zst"))
        .unwrap_or_else(|e| panic!("{}: no pages.bin.zst: {e}", copy.display()))
        .len();
    let pages = manifest(copy)["pages_bytes"].as_u64().expect("pages_bytes");
    eprintln!(
        "{}: {pages} bytes of pages stored in {packed} ({:.2}x)",
        copy.display(),
        pages as f64 / packed.max(1) as f64
    );
    assert!(
        packed < pages,
        "{packed} bytes compressed for {pages} of pages"
    );
    for file in ["CHECKSUMS", "AUTH", "manifest.json"] {
        assert_eq!(
            std::fs::read(copy.join(file)).unwrap(),
            std::fs::read(local.join(file)).unwrap(),
            "{file} of {} differs from the local image's",
            copy.display()
        );
    }
}

/// A job checkpointed to the partner tier, then to the global tier with --kill, its
/// copies compressed. Node 0's storage is lost: `restore --auto` restores the global copy
/// exactly. Then the global copy is damaged: it is refused, naming pages.bin.zst, and the
/// restore falls back to the partner copy of the image before.
#[test]
fn restore_auto_uses_compressed_copies_and_passes_over_a_damaged_one() {
    let h = Harness::new("compress");
    configure(&h);
    let prog = prog();
    let reference = h.plain(&prog);
    let mut run = h.run_with(&["--rank", "0"], &[], &prog);
    run.wait_for_ticks(15);
    let pid = run.target_pid();
    let asked_first = run.line_count();
    let (first, partner_copy) = checkpoint_to(&h, pid, "partner", &[]);
    run.wait_for_ticks(asked_first + 15);
    let asked_second = run.line_count();
    let (second, global_copy) = checkpoint_to(&h, pid, "global", &["--kill"]);
    let killed = run.finish(CMD_TIMEOUT).expect_code(KILLED);
    let before = killed.stdout.clone();
    wait_gone(pid);
    assert_eq!(partner_copy, image_in(&partner_dir(&h), first));
    assert_eq!(global_copy, image_in(&global_dir(&h), second));
    line_with(
        &killed,
        &["to the global tier", "stored as", "zstd level 3"],
    );

    let local = h.store.join("node0").join(&h.job).join("rank0");
    assert_compressed_copy(&partner_copy, &image_in(&local, first));
    assert_compressed_copy(&global_copy, &image_in(&local, second));
    // An incremental image brings the images it takes pages from, compressed too: the
    // restore reads pages of several decompressed images.
    for parent in manifest(&global_copy)["parents"].as_array().unwrap() {
        let seq = parent["seq"].as_u64().unwrap();
        assert_compressed_copy(&image_in(&global_dir(&h), seq), &image_in(&local, seq));
    }
    for copy in [&partner_copy, &global_copy] {
        let res = h.mlckpt(&["verify", copy.to_str().unwrap()]).expect_code(0);
        assert!(res.stdout.starts_with("ok "), "{}", res.describe());
    }
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;

    // (1) Node 0 is lost: the newest image is the compressed global copy.
    std::fs::remove_dir_all(h.store.join("node0")).unwrap();
    let res = restore_auto(&h, pid);
    line_with(&res, &["candidate", "local", "missing"]);
    line_with(
        &res,
        &["candidate", &format!("seq {second} global"), "ok -> chosen"],
    );
    line_with(&res, &["decompressed and verified", "MiB of pages"]);
    assert_continuation(&reference, &before, &res.stdout, pid);

    // (2) The global copy is damaged: refused by name, the partner copy of the image
    // before is restored.
    damage(&global_copy.join("pages.bin.zst"), Damage::FlipBit);
    let res = h
        .mlckpt(&["verify", global_copy.to_str().unwrap()])
        .expect_failure();
    assert!(
        res.stdout.starts_with("BAD ") && res.stdout.contains("pages.bin.zst"),
        "{}",
        res.describe()
    );
    let res = restore_auto(&h, pid);
    let refused = line_with(&res, &["candidate", &format!("seq {second} global")]);
    assert!(
        refused.contains("pages.bin.zst")
            && (refused.contains("damaged") || refused.contains("checksum mismatch")),
        "{refused}"
    );
    line_with(
        &res,
        &["candidate", &format!("seq {first} partner"), "ok -> chosen"],
    );
    assert_resumed(
        &reference,
        &before,
        &res.stdout,
        asked_first..asked_second,
        pid,
        pid,
    );

    // (3) A truncated copy is refused as incomplete.
    damage(&partner_copy.join("pages.bin.zst"), Damage::Truncate);
    let res = h
        .mlckpt(&["verify", partner_copy.to_str().unwrap()])
        .expect_failure();
    assert!(
        res.stdout.contains("pages.bin.zst") && res.stdout.contains("truncated"),
        "{}",
        res.describe()
    );
}

/// An image holding both page files (someone ran `zstd -d` and kept the `.zst`) is refused
/// with the fix; once one of them is removed it verifies again.
#[test]
fn an_image_with_both_page_files_is_refused_until_one_is_removed() {
    let h = Harness::new("compress-both");
    configure(&h);
    let mut run = h.run_with(&["--rank", "0"], &[], &Prog::c("field", &["4", "1000"]));
    run.wait_for_ticks(5);
    let pid = run.target_pid();
    let (_, copy) = checkpoint_to(&h, pid, "global", &["--kill"]);
    run.finish(CMD_TIMEOUT).expect_code(KILLED);
    wait_gone(pid);
    let status = std::process::Command::new("zstd")
        .args(["-q", "-d", "-k"])
        .arg(copy.join("pages.bin.zst"))
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("note: no zstd command; decompressing with the crate instead");
        let packed = std::fs::read(copy.join("pages.bin.zst")).unwrap();
        std::fs::write(
            copy.join("pages.bin"),
            zstd::stream::decode_all(&packed[..]).unwrap(),
        )
        .unwrap();
    }
    let res = h
        .mlckpt(&["verify", copy.to_str().unwrap()])
        .expect_failure();
    assert!(
        res.stdout.contains("both pages.bin and pages.bin.zst"),
        "{}",
        res.describe()
    );
    std::fs::remove_file(copy.join("pages.bin.zst")).unwrap();
    h.mlckpt(&["verify", copy.to_str().unwrap()]).expect_code(0);
}

/// A file the job writes in place is copied into the image (in pages.bin): restored from a
/// compressed copy, it is put back from the decompressed pages, exactly as it was at the
/// checkpoint, though it was changed since and the local image is gone.
#[test]
fn files_written_in_place_come_back_from_a_compressed_copy() {
    let h = Harness::new("compress-files");
    configure(&h);
    let prog = Prog::c("filewriter", &["inplace", "{dir}/data.bin", "60"]);
    let reference = h.plain(&prog);
    let mut run = h.run_with(&["--rank", "0"], &[], &prog);
    run.wait_for_ticks(10);
    let pid = run.target_pid();
    let (_, copy) = checkpoint_to(&h, pid, "global", &["--kill"]);
    let before = run.finish(CMD_TIMEOUT).expect_code(KILLED).stdout;
    wait_gone(pid);
    assert!(copy.join("pages.bin.zst").is_file());
    assert_eq!(
        manifest(&copy)["files"][0]["contents"]["kind"],
        "copied",
        "{}",
        manifest(&copy)["files"]
    );
    let data = h.run_dir().join("data.bin");
    let file = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0x5a; 8192], 1 << 20).unwrap();
    drop(file);
    std::fs::remove_dir_all(h.store.join("node0")).unwrap();
    let res = restore_auto(&h, pid);
    line_with(&res, &["candidate", "global", "ok -> chosen"]);
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &before, &res.stdout, pid);
    assert!(
        std::fs::read(&data).unwrap() == std::fs::read(h.ref_dir().join("data.bin")).unwrap(),
        "data.bin differs from the uninterrupted run's"
    );
}
