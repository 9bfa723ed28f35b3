//! Conformance suite in the spirit of CRIU's zdtm: one small C program per kind of kernel
//! state (`tests/zdtm/<name>.c`), each run through `mlckpt run` → `checkpoint --kill` →
//! `restore`.
//!
//! Every program follows one protocol: it prints `pid <N>`, sets up its state, prints
//! `ready`, waits for SIGUSR2 (sent to the restored process), checks that the state is
//! exactly as it was set up and still works, prints `PASS` (exit 0) or `FAIL <reason>`
//! (exit 1), and cleans up its children.
//!
//! All programs run in one test, one after the other; a program that fails (or a panic in
//! its cycle) is counted and the others still run. The test prints one line per program,
//! `conformance <name>: PASS` or `conformance <name>: FAIL <details>`, then
//! `conformance: N passed, M failed`, and fails if any failed.

mod common;

use common::*;
use std::cell::Cell;
use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Warnings are errors: a program that warns may not test what it says.
const CFLAGS: &[&str] = &["-O1", "-g", "-Wall", "-Werror", "-pthread"];
/// Time the restored process runs before it is told to check its state.
const SETTLE: Duration = Duration::from_millis(300);

fn zdtm_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/zdtm")
}

/// The program names: every `tests/zdtm/*.c`, sorted; with `ZDTM_ONLY=a,b` only those
/// (to work on a few programs without running them all).
fn programs() -> Vec<String> {
    let only: Option<Vec<String>> = std::env::var("ZDTM_ONLY")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());
    let mut names: Vec<String> = std::fs::read_dir(zdtm_dir())
        .expect("tests/zdtm")
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".c")
                .map(str::to_owned)
        })
        .filter(|n| only.as_ref().is_none_or(|o| o.contains(n)))
        .collect();
    names.sort();
    names
}

/// The state letter of a process (`/proc/PID/stat`), if it exists.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Every live descendant of `root` (zombies included), from a scan of `/proc`.
fn descendants(root: i32) -> BTreeSet<i32> {
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            Some((pid, parent_and_group(pid)?.0))
        })
        .collect();
    let mut found = BTreeSet::from([root]);
    loop {
        let before = found.len();
        for &(pid, ppid) in &parents {
            if found.contains(&ppid) {
                found.insert(pid);
            }
        }
        if found.len() == before {
            break;
        }
    }
    found.remove(&root);
    found
}

/// The lines of `text` that explain a failure (errors, refusals), joined, shortened.
fn summary(text: &str) -> String {
    let keep: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            let low = l.to_lowercase();
            !l.is_empty()
                && (low.contains("error")
                    || low.contains("refus")
                    || low.contains("unsupported")
                    || low.contains("not supported")
                    || low.contains("cannot")
                    || low.contains("failed")
                    || low.starts_with("fail"))
        })
        .collect();
    let mut out = if keep.is_empty() {
        text.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_owned()
    } else {
        let mut seen = Vec::new();
        for l in keep {
            if !seen.contains(&l) {
                seen.push(l);
            }
        }
        seen.join(" | ")
    };
    if out.len() > 600 {
        let mut cut = 600;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str(" …");
    }
    out
}

/// Removes what a program that did not get to clean up left behind (its files are named
/// after its PID).
fn remove_leftovers(pid: i32) {
    let suffix = format!("-{pid}");
    for dir in ["/tmp", "/dev/shm"] {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("mlckpt-zdtm-") && name.ends_with(&suffix) {
                let path = entry.path();
                if path.is_dir() {
                    let _ = std::fs::remove_dir_all(&path);
                } else {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }
}

/// Polls the program's stdout (under `mlckpt run`) until it has the `ready` line.
fn wait_ready(run: &Proc) -> Result<(), String> {
    let deadline = Instant::now() + TICK_TIMEOUT;
    loop {
        let out = run.stdout();
        if out.lines().any(|l| l == "ready") {
            return Ok(());
        }
        if let Some(l) = out.lines().find(|l| l.starts_with("FAIL")) {
            return Err(format!("set-up: {l}"));
        }
        if matches!(proc_state(run.child_pid()), Some('Z') | None) {
            return Err(format!(
                "exited before `ready`: stdout {:?}, stderr: {}",
                out,
                summary(&run.stderr())
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no `ready` within {TICK_TIMEOUT:?}: stdout {out:?}"
            ));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Polls until the restore command says the process is restored; `Err` with its output if
/// it exits first.
fn wait_restored(restore: &Proc) -> Result<(), Option<String>> {
    let deadline = Instant::now() + TICK_TIMEOUT;
    loop {
        if restore.stderr().contains(" as PID ") {
            return Ok(());
        }
        if matches!(proc_state(restore.child_pid()), Some('Z') | None) {
            return Err(None);
        }
        if Instant::now() > deadline {
            return Err(Some(format!(
                "restore did not report the process restored within {TICK_TIMEOUT:?}: {}",
                summary(&restore.stderr())
            )));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// One program through run → ready → checkpoint --kill → restore → SIGUSR2 → verdict.
/// `target` gets the program's PID as soon as it is known.
fn cycle(name: &str, exe: &Path, target: &Cell<i32>) -> Result<(), String> {
    let h = Harness::new(&format!("zdtm-{name}"));
    let prog = Prog {
        argv: vec![exe.to_string_lossy().into_owned()],
        feed: None,
    };
    let mut run = h.run(&prog);
    let pid = run.target_pid();
    target.set(pid);
    // (the closure owns `run`: it is finished, or dropped and killed, inside)
    (|| {
        wait_ready(&run)?;
        let children = descendants(pid);
        let ckpt = h.checkpoint(pid, true);
        let before = run.finish(CMD_TIMEOUT).expect_code(KILLED);
        if before
            .stdout
            .lines()
            .any(|l| l.starts_with("PASS") || l.starts_with("FAIL"))
        {
            return Err(format!(
                "the program went on before the checkpoint: {:?}",
                before.stdout
            ));
        }
        wait_gone(pid);
        for child in children {
            wait_gone(child);
        }

        let mut restore = h.restore(&ckpt.path, &prog);
        restore.set_target(pid);
        match wait_restored(&restore) {
            Ok(()) => {}
            Err(Some(why)) => return Err(why),
            Err(None) => {
                let res = restore.finish(CMD_TIMEOUT);
                return Err(format!(
                    "restore failed (exit {}): {}",
                    res.code,
                    summary(&res.output())
                ));
            }
        }
        thread::sleep(SETTLE);
        let state = proc_state(pid);
        if let Err(e) = kill(Pid::from_raw(pid), Signal::SIGUSR2) {
            let res = restore.finish(CMD_TIMEOUT);
            return Err(format!(
                "SIGUSR2 to the restored process {pid} (state {state:?}): {e}; restore exit {}, \
                 stdout {:?}, stderr: {}",
                res.code,
                res.stdout,
                summary(&res.stderr)
            ));
        }
        let res = restore.finish(CMD_TIMEOUT);
        let verdict = res
            .stdout
            .lines()
            .find(|l| l.starts_with("PASS") || l.starts_with("FAIL"));
        match (verdict, res.code) {
            (Some("PASS"), 0) => Ok(()),
            (Some(fail), code) if fail.starts_with("FAIL") => Err(format!(
                "program: {} (exit {code})",
                fail.trim_start_matches("FAIL").trim()
            )),
            (_, code) => Err(format!(
                "restored process ended with exit {code} and stdout {:?}; restore stderr: {}",
                res.stdout,
                summary(&res.stderr)
            )),
        }
    })()
}

#[test]
fn zdtm_conformance() {
    require_root();
    let names = programs();
    assert!(!names.is_empty(), "no programs in tests/zdtm");
    let mut results: Vec<(String, Result<(), String>)> = Vec::new();
    for name in &names {
        eprintln!("conformance: running {name}");
        let target = Cell::new(0);
        let result = match compile_c(&zdtm_dir(), name, CFLAGS) {
            Err(e) => Err(e),
            Ok(exe) => match catch_unwind(AssertUnwindSafe(|| cycle(name, &exe, &target))) {
                Ok(r) => r,
                Err(payload) => {
                    let msg = payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panic".to_owned());
                    let first = msg.lines().next().unwrap_or("").trim().to_owned();
                    Err(format!("panic: {first}; {}", summary(&msg)))
                }
            },
        };
        if target.get() > 0 {
            remove_leftovers(target.get());
        }
        let line = match &result {
            Ok(()) => format!("conformance {name}: PASS"),
            Err(why) => format!("conformance {name}: FAIL {why}"),
        };
        eprintln!("{line}");
        results.push((name.clone(), result));
    }

    let failed: Vec<&(String, Result<(), String>)> =
        results.iter().filter(|(_, r)| r.is_err()).collect();
    let passed = results.len() - failed.len();
    let mut report = String::new();
    for (name, result) in &results {
        match result {
            Ok(()) => report.push_str(&format!("conformance {name}: PASS\n")),
            Err(why) => report.push_str(&format!("conformance {name}: FAIL {why}\n")),
        }
    }
    report.push_str(&format!(
        "conformance: {passed} passed, {} failed\n",
        failed.len()
    ));
    eprint!("{report}");
    print!("{report}");
    assert!(
        failed.is_empty(),
        "{} of {} conformance programs failed: {}",
        failed.len(),
        results.len(),
        failed
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
}
