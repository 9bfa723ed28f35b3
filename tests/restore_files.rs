//! (3) Open files: an O_APPEND fd and a second O_RDWR fd with its own offset continue
//! writing where they were; the file ends up byte-identical to an uninterrupted run's.

mod common;

use common::*;

#[test]
fn append_file_continues_at_right_offset() {
    let h = Harness::new("append");
    h.checkpoint_kill_restore(&Prog::c("append", &["{dir}/data.txt", "80"]), 20);
    let got = std::fs::read(h.run_dir().join("data.txt")).unwrap();
    let want = std::fs::read(h.ref_dir().join("data.txt")).unwrap();
    assert!(
        got == want,
        "file differs from the uninterrupted run's\n--- got:\n{}\n--- expected:\n{}",
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
}
