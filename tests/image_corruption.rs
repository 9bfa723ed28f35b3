//! (11) A damaged image is refused by `mlckpt verify PATH` and `mlckpt restore PATH`, with a
//! non-zero exit and a message naming the damaged file; no process is created.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;

enum Damage {
    /// Cut the file to half its length.
    Truncate,
    /// Flip the lowest bit of a byte in the middle. In JSON the byte is a digit inside a
    /// number, so the manifest still parses and only the checksum can catch it.
    FlipBit,
}

fn damage(file: &Path, how: Damage) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let len = f.metadata().unwrap().len();
    assert!(len > 2, "{} is too small to damage", file.display());
    match how {
        Damage::Truncate => f.set_len(len / 2).unwrap(),
        Damage::FlipBit => {
            let bytes = std::fs::read(file).unwrap();
            let json = file.extension().is_some_and(|e| e == "json");
            let at = (bytes.len() / 2..bytes.len())
                .chain(1..bytes.len() / 2)
                .find(|&i| !json || (bytes[i - 1].is_ascii_digit() && bytes[i].is_ascii_digit()))
                .expect("no digit pair to flip in the manifest");
            f.write_all_at(&[bytes[at] ^ 1], at as u64).unwrap();
        }
    }
}

/// Copies the flat image directory `image` to `<to>/<image's name>`.
fn copy_image(image: &Path, to: &Path) -> PathBuf {
    let copy = to.join(image.file_name().unwrap());
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(image).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    copy
}

fn damaged_image_is_refused(file: &str, how: Damage) {
    let h = Harness::new("corrupt");
    let killed = h.run_until_checkpoint_kill(&Prog::c("memory", &["8", "200"]), 5);
    let image = killed.ckpt.path;
    h.mlckpt(&["verify".as_ref(), image.as_os_str()])
        .expect_code(0);

    let copy = copy_image(&image, &h.dir.path().join("damaged"));
    damage(&copy.join(file), how);
    let config = h.config.as_os_str();
    for args in [
        vec!["verify".as_ref(), copy.as_os_str()],
        vec![
            "restore".as_ref(),
            copy.as_os_str(),
            "--config".as_ref(),
            config,
        ],
    ] {
        let res = h.mlckpt(&args).expect_failure();
        assert!(
            res.output().contains(file),
            "the error should name {file}\n{}",
            res.describe()
        );
        assert!(
            !pid_alive(killed.pid),
            "a process was created from a damaged image"
        );
    }
}

#[test]
fn truncated_pages_refused() {
    damaged_image_is_refused("pages.bin", Damage::Truncate);
}

#[test]
fn bit_flipped_pages_refused() {
    damaged_image_is_refused("pages.bin", Damage::FlipBit);
}

#[test]
fn bit_flipped_manifest_refused() {
    damaged_image_is_refused("manifest.json", Damage::FlipBit);
}
