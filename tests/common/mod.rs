//! Harness for the end-to-end tests: builds the test programs in `tests/programs/`, drives
//! `mlckpt run` / `checkpoint` / `restore` / `verify` as child processes with timeouts, and
//! compares a checkpointed-and-restored run with an uninterrupted one.
//!
//! Every process is started in its own process group with stdin, stdout and stderr on pipes
//! (the design gives a restored process the restore command's stdio when fds 0-2 were pipes).
//! A [`Proc`] that is dropped before it was waited for (a failing test) kills its whole group
//! and the target process, so a failed test leaves nothing running.
//!
//! The usual flow is one call: [`Harness::checkpoint_kill_restore`].

#![allow(dead_code)] // every test file uses a different part of the harness

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// Longest wait for a program to print the lines a test waits for.
pub const TICK_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for any command (a whole run, a checkpoint, a restore, a verify) to exit.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(180);
/// Exit status of `mlckpt run` whose target was killed by `checkpoint --kill` (128 + SIGKILL).
pub const KILLED: i32 = 128 + 9;
/// `run`'s exit code after a checkpoint-and-stop on SIGTERM.
pub const STOPPED: i32 = 3;

const POLL: Duration = Duration::from_millis(10);
const CFLAGS: &[&str] = &["-O1", "-g", "-Wall"];

/// Tests need ptrace over processes they did not start and `clone3` with `set_tid`.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the mlckpt integration tests must run as root (ptrace, clone3 set_tid need \
         CAP_SYS_PTRACE and CAP_CHECKPOINT_RESTORE); run `sudo -E cargo test`"
    );
}

pub fn mlckpt_bin() -> &'static str {
    env!("CARGO_BIN_EXE_mlckpt")
}

pub fn programs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs")
}

// ---------------------------------------------------------------------------------------------
// Test programs

/// Extra gcc flags of the programs that need them.
fn extra_cflags(name: &str) -> &'static [&'static str] {
    match name {
        "avx" => &["-mavx2"],
        "threads" | "blocked" | "memory" | "ids" | "dirty" => &["-pthread"],
        // OpenMP (libgomp): where it is missing, gcc's error says so and the test fails.
        "stencil" => &["-fopenmp"],
        _ => &[],
    }
}

/// Compiles `tests/programs/<name>.c` (once per test process) and returns the binary. The
/// binary's name carries a hash of source and flags and is moved into place atomically, so
/// test processes running side by side never replace a binary a checkpointed process maps.
pub fn compiled(name: &str) -> PathBuf {
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let flags: Vec<&str> = CFLAGS.iter().chain(extra_cflags(name)).copied().collect();
    let out = compile_c(&programs_dir(), name, &flags).unwrap_or_else(|e| panic!("{e}"));
    built.insert(name.to_owned(), out.clone());
    out
}

/// Compiles `<dir>/<name>.c` with `flags` into the test target directory; the binary's
/// name carries a hash of source and flags and is moved into place atomically. The error
/// says what gcc said.
pub fn compile_c(dir: &Path, name: &str, flags: &[&str]) -> Result<PathBuf, String> {
    compile_with("gcc", dir, name, flags)
}

/// [`compile_c`] with another compiler driver (`mpicc`).
pub fn compile_with(
    compiler: &str,
    dir: &Path,
    name: &str,
    flags: &[&str],
) -> Result<PathBuf, String> {
    let src = dir.join(format!("{name}.c"));
    let text = std::fs::read(&src).map_err(|e| format!("read {}: {e}", src.display()))?;
    let mut hasher = DefaultHasher::new();
    (&text, flags, compiler).hash(&mut hasher);
    let bin_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mlckpt-programs");
    std::fs::create_dir_all(&bin_dir).map_err(|e| format!("mkdir {}: {e}", bin_dir.display()))?;
    let out = bin_dir.join(format!("{name}-{:016x}", hasher.finish()));
    if out.exists() {
        return Ok(out);
    }
    // Tests of one binary compile in parallel threads of one process: the temp name needs
    // more than the pid to stay private to this call.
    static NEXT_TMP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = bin_dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        NEXT_TMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let res = Command::new(compiler)
        .args(flags)
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .output()
        .map_err(|e| format!("run {compiler} (is it installed?): {e}"))?;
    if !res.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "{compiler} {name}.c failed:\n{}",
            String::from_utf8_lossy(&res.stderr)
        ));
    }
    std::fs::rename(&tmp, &out).map_err(|e| format!("rename {}: {e}", out.display()))?;
    Ok(out)
}

/// `name` found in `$PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A command line to run under test. `{dir}` in an argument is replaced by the run's own
/// working directory (the reference run and the checkpointed run get different ones).
#[derive(Clone, Debug)]
pub struct Prog {
    pub argv: Vec<String>,
    /// Write one byte to the program's stdin at this period (for programs that read stdin).
    pub feed: Option<Duration>,
}

impl Prog {
    /// The C program `tests/programs/<name>.c`, compiled.
    pub fn c(name: &str, args: &[&str]) -> Prog {
        let exe = compiled(name).to_string_lossy().into_owned();
        Prog::new(exe, args)
    }

    /// `python3 tests/programs/<script> ARGS`, or `None` (with a note) when there is no python3.
    pub fn python(script: &str, args: &[&str]) -> Option<Prog> {
        let Some(python) = find_in_path("python3") else {
            eprintln!("note: python3 is not in PATH; skipping this test");
            return None;
        };
        let mut prog = Prog::new(python.to_string_lossy().into_owned(), args);
        let script = programs_dir().join(script).to_string_lossy().into_owned();
        prog.argv.insert(1, script);
        Some(prog)
    }

    /// `bash tests/programs/<script> ARGS`.
    pub fn script(script: &str, args: &[&str]) -> Prog {
        let bash = find_in_path("bash").expect("bash in PATH");
        let mut prog = Prog::new(bash.to_string_lossy().into_owned(), args);
        let script = programs_dir().join(script).to_string_lossy().into_owned();
        prog.argv.insert(1, script);
        prog
    }

    pub fn new(exe: String, args: &[&str]) -> Prog {
        let mut argv = vec![exe];
        argv.extend(args.iter().map(|a| a.to_string()));
        Prog { argv, feed: None }
    }

    pub fn feeding_stdin(mut self, every: Duration) -> Prog {
        self.feed = Some(every);
        self
    }

    fn argv_in(&self, dir: &Path) -> Vec<String> {
        let dir = dir.to_string_lossy();
        self.argv.iter().map(|a| a.replace("{dir}", &dir)).collect()
    }
}

pub fn cpu_has(flag: &str) -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == flag))
}

// ---------------------------------------------------------------------------------------------
// Processes

/// Everything a pipe delivered so far, and whether it reached end of file.
#[derive(Clone, Default)]
struct Capture(Arc<(Mutex<Vec<u8>>, AtomicBool)>);

impl Capture {
    fn start(mut pipe: impl Read + Send + 'static) -> Capture {
        let cap = Capture::default();
        let inner = cap.0.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                inner.0.lock().unwrap().extend_from_slice(&buf[..n]);
            }
            inner.1.store(true, Ordering::SeqCst);
        });
        cap
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.0.lock().unwrap()).into_owned()
    }

    fn closed(&self) -> bool {
        self.0.1.load(Ordering::SeqCst)
    }
}

/// How a finished process ended and what it printed.
#[derive(Debug)]
pub struct Finished {
    pub label: String,
    /// Exit code, or 128 + N when killed by signal N.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn expect_code(self, code: i32) -> Finished {
        assert_eq!(
            self.code,
            code,
            "unexpected exit status\n{}",
            self.describe()
        );
        self
    }

    pub fn expect_failure(self) -> Finished {
        assert_ne!(self.code, 0, "expected a failure\n{}", self.describe());
        self
    }

    /// stdout and stderr together (error messages may go to either).
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    pub fn describe(&self) -> String {
        describe(&self.label, Some(self.code), &self.stdout, &self.stderr)
    }
}

fn describe(label: &str, code: Option<i32>, stdout: &str, stderr: &str) -> String {
    fn tail(s: &str) -> &str {
        let cut = s.len().saturating_sub(6000);
        let cut = (cut..s.len())
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(s.len());
        &s[cut..]
    }
    let code = code.map_or("still running".to_owned(), |c| format!("exit {c}"));
    format!(
        "--- {label} ({code}) stdout:\n{}\n--- {label} stderr:\n{}\n---",
        tail(stdout),
        tail(stderr)
    )
}

/// Marks every fd above 2 of this test process close-on-exec, once: fds inherited from
/// whatever started the tests (a CI runner's pipes, a jobserver) must not leak into the
/// programs under test, where the checkpointer would rightly refuse them.
fn no_inherited_fds() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let flags = libc::c_int::try_from(libc::CLOSE_RANGE_CLOEXEC).unwrap();
        // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on open fds; it
        // touches no memory and closes nothing.
        let rc = unsafe { libc::close_range(3, libc::c_uint::MAX, flags) };
        assert_eq!(rc, 0, "close_range: {}", std::io::Error::last_os_error());
    });
}

/// A child process with captured stdio and a deadline-bounded life.
pub struct Proc {
    label: String,
    child: Child,
    out: Capture,
    err: Capture,
    stdin: Option<ChildStdin>,
    feeder: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    /// The program under test when it is not `child` itself (`mlckpt run`/`restore`'s child).
    target: Option<i32>,
}

impl Proc {
    /// Starts `cmd` in a new process group with piped stdio; with `feed`, a thread writes a
    /// byte to its stdin at that period until it finishes.
    pub fn spawn(label: &str, mut cmd: Command, feed: Option<Duration>) -> Proc {
        no_inherited_fds();
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {label} ({cmd:?}): {e}"));
        let out = Capture::start(child.stdout.take().unwrap());
        let err = Capture::start(child.stderr.take().unwrap());
        let mut stdin = child.stdin.take();
        let feeder = feed.map(|every| {
            let mut pipe = stdin.take().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let stop2 = stop.clone();
            let handle = thread::spawn(move || {
                while !stop2.load(Ordering::SeqCst) && pipe.write_all(b"x").is_ok() {
                    thread::sleep(every);
                }
            });
            (stop, handle)
        });
        Proc {
            label: label.to_owned(),
            child,
            out,
            err,
            stdin,
            feeder,
            target: None,
        }
    }

    pub fn child_pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    pub fn stdout(&self) -> String {
        self.out.text()
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.err.text()
    }

    /// Complete lines read from its stdout so far.
    pub fn line_count(&self) -> usize {
        self.out.text().matches('\n').count()
    }

    /// Sends `sig` to the process itself (for `mlckpt run`: the supervisor, not the target).
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child_pid()), sig)
            .unwrap_or_else(|e| panic!("kill -{sig} {}: {e}", self.label));
    }

    /// Polls until its stderr holds `text`; fails the test if it exits first or on timeout.
    pub fn wait_for_stderr(&mut self, text: &str) -> String {
        let deadline = Instant::now() + TICK_TIMEOUT;
        loop {
            let err = self.err.text();
            if err.contains(text) {
                return err;
            }
            assert!(
                !self.exited(),
                "exited before printing {text:?} on stderr\n{}",
                self.describe()
            );
            assert!(
                Instant::now() < deadline,
                "timeout ({TICK_TIMEOUT:?}) waiting for {text:?} on stderr\n{}",
                self.describe()
            );
            thread::sleep(POLL);
        }
    }

    fn describe(&mut self) -> String {
        let code = match self.child.try_wait() {
            Ok(Some(status)) => Some(exit_code(status)),
            _ => None,
        };
        describe(&self.label, code, &self.out.text(), &self.err.text())
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Polls until `ready(stdout)` holds; fails the test if the process exits first or the
    /// timeout passes.
    fn wait_stdout(&mut self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TICK_TIMEOUT;
        loop {
            let text = self.out.text();
            if ready(&text) {
                return text;
            }
            if self.exited() {
                // Let the reader drain what was written just before the exit, then decide.
                let drained = Instant::now() + Duration::from_secs(1);
                while !self.out.closed() && Instant::now() < drained {
                    thread::sleep(POLL);
                }
                let text = self.out.text();
                if ready(&text) {
                    return text;
                }
                panic!("exited before {what}\n{}", self.describe());
            }
            assert!(
                Instant::now() < deadline,
                "timeout ({TICK_TIMEOUT:?}) waiting for {what}\n{}",
                self.describe()
            );
            thread::sleep(POLL);
        }
    }

    /// Waits until stdout holds at least `n` complete tick lines.
    pub fn wait_for_ticks(&mut self, n: usize) {
        self.wait_for_lines("tick", n);
    }

    /// Waits until stdout holds at least `n` complete lines whose first word is `word`.
    pub fn wait_for_lines(&mut self, word: &str, n: usize) {
        self.wait_stdout(&format!("{n} `{word}` lines"), |s| {
            count_lines(s, word) >= n
        });
    }

    /// The PID of the program under test, from its first line `pid <N>`.
    pub fn target_pid(&mut self) -> i32 {
        let text = self.wait_stdout("the `pid <N>` line", |s| s.contains('\n'));
        let pid = parse_pid_line(&text).unwrap_or_else(|| {
            panic!(
                "first line is not `pid <N>`\n{}",
                describe(&self.label, None, &text, &self.err.text())
            )
        });
        self.target = Some(pid);
        pid
    }

    /// Records the PID of the program under test, so a failing test kills it.
    pub fn set_target(&mut self, pid: i32) {
        self.target = Some(pid);
    }

    /// Waits for the process to exit and its pipes to close (no process left holding them).
    pub fn finish(mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "timeout ({timeout:?}) waiting for the process to exit\n{}",
                self.describe()
            );
            thread::sleep(POLL);
        };
        let code = exit_code(status);
        self.stop_feeding();
        let eof_deadline = Instant::now() + Duration::from_secs(10);
        while !(self.out.closed() && self.err.closed()) {
            assert!(
                Instant::now() < eof_deadline,
                "exited, but its stdout/stderr are still open: a process it started is still \
                 running\n{}",
                self.describe()
            );
            thread::sleep(POLL);
        }
        Finished {
            label: self.label.clone(),
            code,
            stdout: self.out.text(),
            stderr: self.err.text(),
        }
    }

    fn stop_feeding(&mut self) {
        self.stdin.take();
        if let Some((stop, handle)) = self.feeder.take() {
            stop.store(true, Ordering::SeqCst);
            let _ = handle.join();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What a supervisor said often explains a failure seen elsewhere.
            eprintln!("--- {} stderr so far:\n{}---", self.label, self.err.text());
        }
        // Kill the target if it is still ours (our child's child or in our group), then the group.
        let pgid = self.child_pid();
        if let Some(t) = self.target
            && let Some((ppid, pgrp)) = parent_and_group(t)
            && (ppid == pgid || pgrp == pgid)
        {
            let _ = kill(Pid::from_raw(t), Signal::SIGKILL);
        }
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        let _ = self.child.wait();
        self.stop_feeding();
    }
}

/// Exit code, or 128 + N for death by signal N (the shell's convention, and mlckpt's).
fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// (ppid, pgrp) of a live process, from `/proc/PID/stat`.
pub fn parent_and_group(pid: i32) -> Option<(i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields follow the last ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace().skip(1);
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((ppid, pgrp))
}

/// Whether PID exists (zombies included).
pub fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits until PID is gone (reaped); fails the test after `TICK_TIMEOUT`.
pub fn wait_gone(pid: i32) {
    let deadline = Instant::now() + TICK_TIMEOUT;
    while pid_alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} is still there");
        thread::sleep(POLL);
    }
}

/// The TIDs of every thread of a live process, from `/proc/PID/task` (empty if it is gone).
pub fn task_tids(pid: i32) -> std::collections::BTreeSet<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Polls `cond` until it holds; fails the test with `what` after `TICK_TIMEOUT`.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TICK_TIMEOUT;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timeout ({TICK_TIMEOUT:?}) waiting for {what}"
        );
        thread::sleep(POLL);
    }
}

/// A PID that no process has now (searched down from the kernel's `pid_max`).
pub fn unused_pid() -> i32 {
    let max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    (2..max)
        .rev()
        .find(|&p| !pid_alive(p))
        .expect("some PID is free")
}

// ---------------------------------------------------------------------------------------------
// Damaging images

pub enum Damage {
    /// Cut the file to half its length.
    Truncate,
    /// Flip the lowest bit of a byte in the middle. In JSON the byte is a digit inside a
    /// number, so the manifest still parses and only the checksum can catch it.
    FlipBit,
}

pub fn damage(file: &Path, how: Damage) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap_or_else(|e| panic!("open {}: {e}", file.display()));
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

/// Edits the manifest of the image at `image` with `edit`, then [`reseal`]s it as its owner
/// could (CHECKSUMS and AUTH recomputed): only the validator can catch the edit.
pub fn rewrite_manifest(image: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = image.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut manifest);
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    reseal(image);
}

/// Copies the flat image directory `image` to `<to>/<image's name>`.
pub fn copy_image(image: &Path, to: &Path) -> PathBuf {
    let copy = to.join(image.file_name().unwrap());
    copy_dir(image, &copy);
    copy
}

/// Copies the flat directory `from` to the new directory `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Output comparison

/// Complete lines of `text` whose first word is `word`.
/// A line of mlckpt's own (`<UTC timestamp> mlckpt: ...`) from `mlckpt: ` on, or `None`
/// for any other line (a program's).
pub fn mlckpt_line(line: &str) -> Option<&str> {
    let at = line.find("mlckpt: ")?;
    let stamp = &line[..at];
    let stamped = stamp.len() == 25 && stamp.ends_with("Z ") && stamp.as_bytes()[10] == b'T';
    (at == 0 || stamped).then(|| &line[at..])
}

pub fn count_lines(text: &str, word: &str) -> usize {
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n') && l.split(' ').next() == Some(word))
        .count()
}

fn parse_pid_line(text: &str) -> Option<i32> {
    text.lines()
        .next()?
        .strip_prefix("pid ")?
        .trim()
        .parse()
        .ok()
}

/// The lines of `text`; a last line without its newline is kept, marked, so it never matches.
fn lines(text: &str) -> Vec<String> {
    text.split_inclusive('\n')
        .map(|l| match l.strip_suffix('\n') {
            Some(l) => l.to_owned(),
            None => format!("{l}<no newline: partial line>"),
        })
        .collect()
}

/// Every `pid=<N>` value in a line.
fn pid_fields(line: &str) -> impl Iterator<Item = &str> {
    line.split("pid=").skip(1).map(|rest| {
        &rest[..rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len())]
    })
}

/// The line with the PID taken out: `pid <N>` -> `pid *`, `pid=<N>` -> `pid=*`.
fn normalise(line: &str) -> String {
    if parse_pid_line(line).is_some() {
        return "pid *".to_owned();
    }
    let mut parts = line.split("pid=");
    let mut out = parts.next().unwrap_or_default().to_owned();
    for rest in parts {
        out.push_str("pid=*");
        out.push_str(rest.trim_start_matches(|c: char| c.is_ascii_digit()));
    }
    out
}

/// Asserts that `before` (the checkpointed run's stdout) followed by `after` (the restored
/// process's stdout) is exactly `reference` (an uninterrupted run's stdout), PIDs aside — so
/// every line appears exactly once, none lost, none duplicated — and that every `pid=` in
/// `before` and `after` is `pid`, the PID the program reported first.
pub fn assert_continuation(reference: &str, before: &str, after: &str, pid: i32) {
    assert_continuation_pids(reference, before, after, pid, pid);
}

/// [`assert_continuation`] for a restore under another PID (`restore --new-pid`): every
/// `pid=` in `before` is `pid`, every one in `after` is `after_pid`.
pub fn assert_continuation_pids(
    reference: &str,
    before: &str,
    after: &str,
    pid: i32,
    after_pid: i32,
) {
    let expected: Vec<String> = lines(reference).iter().map(|l| normalise(l)).collect();
    let before_lines = lines(before);
    let after_lines = lines(after);
    let got: Vec<String> = before_lines
        .iter()
        .chain(&after_lines)
        .map(|l| normalise(l))
        .collect();
    if got != expected {
        let i = got
            .iter()
            .zip(&expected)
            .position(|(g, e)| g != e)
            .unwrap_or(got.len().min(expected.len()));
        let window = |v: &[String]| {
            let from = i.saturating_sub(3);
            let to = (i + 4).min(v.len());
            (from..to)
                .map(|j| format!("{} {}", if j == i { ">" } else { " " }, v[j]))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let dups: Vec<&String> = after_lines
            .iter()
            .filter(|a| before_lines.iter().any(|b| normalise(b) == normalise(a)))
            .collect();
        panic!(
            "checkpointed + restored output differs from the uninterrupted run at line {} \
             ({}; before checkpoint: {} lines, after restore: {} lines, reference: {} lines)\n\
             duplicated lines (both before and after): {dups:?}\n\
             --- expected (> marks the first difference):\n{}\n--- got:\n{}\n\
             --- before checkpoint (full):\n{before}\n--- after restore (full):\n{after}",
            i + 1,
            if i < before_lines.len() {
                "already before the checkpoint: the program ran differently under mlckpt"
            } else {
                "in the restored process's output"
            },
            before_lines.len(),
            after_lines.len(),
            expected.len(),
            window(&expected),
            window(&got),
        );
    }
    assert_eq!(
        parse_pid_line(before),
        Some(pid),
        "first line must be `pid {pid}`"
    );
    for (lines, want) in [(&before_lines, pid), (&after_lines, after_pid)] {
        for line in lines {
            for p in pid_fields(line) {
                assert_eq!(
                    p,
                    want.to_string(),
                    "unexpected PID (expected {want}; a restore without --new-pid must keep \
                     the PID): {line:?}"
                );
            }
        }
    }
}

/// For a restore from a checkpoint the original outlived (taken without `--kill`, or an older
/// image than the newest): `before`, the original's output, went on past the image, so it is
/// cut where `after`, the restored output, starts. The cut must fall in `window`, in lines of
/// `before` (e.g. from the line count when the checkpoint was asked for to the one when the
/// next was); then `before[..cut] + after` must be `reference` ([`assert_continuation_pids`]).
/// Returns the cut.
pub fn assert_resumed(
    reference: &str,
    before: &str,
    after: &str,
    window: std::ops::Range<usize>,
    pid: i32,
    after_pid: i32,
) -> usize {
    let before_lines = lines(before);
    let first = lines(after)
        .first()
        .map(|l| normalise(l))
        .unwrap_or_else(|| panic!("the restored process printed nothing"));
    let cut = before_lines
        .iter()
        .position(|l| normalise(l) == first)
        .unwrap_or_else(|| {
            panic!(
                "the restored process's first line {first:?} is not in the original's output\n\
                 --- original:\n{before}\n--- restored:\n{after}"
            )
        });
    assert!(
        window.contains(&cut),
        "the restored process resumed after line {cut} of the original, expected a line in \
         {window:?} (where the image was taken)\n--- original:\n{before}\n--- restored:\n{after}"
    );
    let kept: String = before.split_inclusive('\n').take(cut).collect();
    assert_continuation_pids(reference, &kept, after, pid, after_pid);
    cut
}

// ---------------------------------------------------------------------------------------------
// mlckpt

/// What `mlckpt checkpoint --json` reported.
#[derive(Debug, Clone)]
pub struct Ckpt {
    pub path: PathBuf,
    pub seq: u64,
    pub tier: String,
    pub bytes: u64,
    pub freeze_ms: f64,
    pub total_ms: f64,
    /// How memory was read: "precopy", "snapshot" or "frozen".
    pub mode: String,
}

/// A run that was checkpointed with `--kill`.
#[derive(Debug)]
pub struct Killed {
    pub pid: i32,
    pub ckpt: Ckpt,
    /// The run's whole stdout (up to the freeze).
    pub before: String,
}

/// A checkpoint-kill-restore cycle that matched the uninterrupted run.
#[derive(Debug)]
pub struct Outcome {
    pub pid: i32,
    pub ckpt: Ckpt,
    pub reference: String,
    pub before: String,
    pub after: String,
}

/// One test's world: a temp dir holding the config, the image store and the runs' work dirs.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    pub config: PathBuf,
    pub job: String,
}

impl Harness {
    pub fn new(job: &str) -> Harness {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix(&format!("mlckpt-test-{job}-"))
            .tempdir()
            .unwrap();
        let store = dir.path().join("store");
        let config = dir.path().join("mlckpt.toml");
        let h = Harness {
            dir,
            store,
            config,
            job: job.to_owned(),
        };
        h.set_config("[interval]\nlocal = 0\n");
        std::fs::create_dir_all(h.run_dir()).unwrap();
        std::fs::create_dir_all(h.ref_dir()).unwrap();
        h
    }

    /// Rewrites the config file: `[storage] local` is the harness's store, then `rest` (which
    /// continues the `[storage]` section). The default is no interval checkpoints.
    pub fn set_config(&self, rest: &str) {
        let text = format!("[storage]\nlocal = '{}'\n{rest}", self.store.display());
        std::fs::write(&self.config, text).unwrap();
    }

    /// Where the job's images go: `<store>/<job>/rank0`.
    pub fn rank_dir(&self) -> PathBuf {
        self.store.join(&self.job).join("rank0")
    }

    /// Work dir (cwd and `{dir}`) of the run that is checkpointed and restored.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// Work dir (cwd and `{dir}`) of the uninterrupted reference run.
    pub fn ref_dir(&self) -> PathBuf {
        self.dir.path().join("ref")
    }

    fn command(&self, args: &[&OsStr]) -> Command {
        let mut cmd = Command::new(mlckpt_bin());
        cmd.args(args).current_dir(self.run_dir());
        cmd
    }

    /// Runs `mlckpt ARGS` to the end.
    pub fn mlckpt<S: AsRef<OsStr>>(&self, args: &[S]) -> Finished {
        self.start(args, None).finish(CMD_TIMEOUT)
    }

    /// Starts `mlckpt ARGS` (in the run's work dir) without waiting for it.
    pub fn start<S: AsRef<OsStr>>(&self, args: &[S], feed: Option<Duration>) -> Proc {
        let args: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
        let label = format!("mlckpt {}", args[0].to_string_lossy());
        Proc::spawn(&label, self.command(&args), feed)
    }

    /// Where the supervisor of `pid` listens.
    pub fn control_socket(pid: i32) -> PathBuf {
        mlckpt::supervisor::control::socket_path(&mlckpt::tiers::config::runtime_dir(), pid)
    }

    /// `mlckpt attach --config CFG --job JOB PID`, returned once it supervises PID (its
    /// control socket is there).
    pub fn attach(&self, pid: i32) -> Proc {
        let socket = Harness::control_socket(pid);
        let _ = std::fs::remove_file(&socket); // stale, from an earlier process with this PID
        let config = self.config.to_str().unwrap();
        let pid_arg = pid.to_string();
        let args = ["attach", "--config", config, "--job", &self.job, &pid_arg];
        let attach = self.start(&args, None);
        wait_until("the attach supervisor's control socket", || socket.exists());
        attach
    }

    /// The program started directly, without mlckpt: the reference.
    pub fn plain(&self, prog: &Prog) -> Proc {
        self.direct("reference run", prog, &self.ref_dir())
    }

    /// The program started directly, without mlckpt, in the run's work dir: a process for
    /// `mlckpt attach` or a direct `mlckpt checkpoint`.
    pub fn unsupervised(&self, prog: &Prog) -> Proc {
        self.direct("unsupervised run", prog, &self.run_dir())
    }

    fn direct(&self, label: &str, prog: &Prog, dir: &Path) -> Proc {
        let argv = prog.argv_in(dir);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).current_dir(dir);
        Proc::spawn(label, cmd, prog.feed)
    }

    /// `mlckpt run --config CFG --job JOB -- PROG ARGS`.
    pub fn run(&self, prog: &Prog) -> Proc {
        let argv = prog.argv_in(&self.run_dir());
        let mut args: Vec<&OsStr> = ["run", "--config"].map(OsStr::new).to_vec();
        args.extend([self.config.as_os_str(), "--job".as_ref(), self.job.as_ref()]);
        args.push("--".as_ref());
        args.extend(argv.iter().map(OsStr::new));
        Proc::spawn("mlckpt run", self.command(&args), prog.feed)
    }

    /// `mlckpt restore IMAGE --config CFG`; `prog` only supplies the stdin feeding.
    pub fn restore(&self, image: &Path, prog: &Prog) -> Proc {
        self.restore_with(&[image.as_os_str()], prog)
    }

    /// `mlckpt restore ARGS --config CFG` (ARGS: an image or `--auto --job J`, options).
    pub fn restore_with<S: AsRef<OsStr>>(&self, args: &[S], prog: &Prog) -> Proc {
        let mut all: Vec<&OsStr> = vec!["restore".as_ref()];
        all.extend(args.iter().map(AsRef::as_ref));
        all.extend(["--config".as_ref(), self.config.as_os_str()]);
        self.start(&all, prog.feed)
    }

    /// `mlckpt checkpoint PID --json [--kill]`, which must succeed; checks and returns the
    /// JSON report.
    pub fn checkpoint(&self, pid: i32, kill: bool) -> Ckpt {
        let pid = pid.to_string();
        let mut args = vec!["checkpoint", pid.as_str(), "--json"];
        if kill {
            args.push("--kill");
        }
        let res = self.mlckpt(&args).expect_code(0);
        self.parse_ckpt(&res)
    }

    /// `mlckpt checkpoint PID --kill`, which must fail, leave the job running and write no
    /// image; returns what it said.
    pub fn checkpoint_refused(&self, pid: i32) -> Finished {
        let res = self
            .mlckpt(&["checkpoint", &pid.to_string(), "--kill"])
            .expect_failure();
        assert!(pid_alive(pid), "a failed checkpoint killed the job");
        assert!(
            self.images().is_empty(),
            "a failed checkpoint left an image"
        );
        res
    }

    fn parse_ckpt(&self, res: &Finished) -> Ckpt {
        let fail = |why: &str| -> ! { panic!("checkpoint --json: {why}\n{}", res.describe()) };
        let v: serde_json::Value = serde_json::from_str(res.stdout.trim())
            .unwrap_or_else(|e| fail(&format!("stdout is not one JSON object: {e}")));
        let num = |k: &str| {
            v[k].as_f64()
                .unwrap_or_else(|| fail(&format!("no number `{k}`")))
        };
        let int = |k: &str| {
            v[k].as_u64()
                .unwrap_or_else(|| fail(&format!("no integer `{k}`")))
        };
        let ckpt = Ckpt {
            path: PathBuf::from(
                v["path"]
                    .as_str()
                    .unwrap_or_else(|| fail("no string `path`")),
            ),
            seq: int("seq"),
            tier: v["tier"]
                .as_str()
                .unwrap_or_else(|| fail("no `tier`"))
                .to_owned(),
            bytes: int("bytes"),
            freeze_ms: num("freeze_ms"),
            total_ms: num("total_ms"),
            mode: v["mode"]
                .as_str()
                .unwrap_or_else(|| fail("no `mode`"))
                .to_owned(),
        };
        let rank_dir = self.rank_dir();
        let name = ckpt.path.file_name().unwrap_or_default().to_string_lossy();
        let seq_ok = name
            .strip_prefix("ckpt-")
            .and_then(|s| s.parse::<u64>().ok())
            == Some(ckpt.seq);
        if ckpt.path.parent() != Some(&rank_dir) || !seq_ok {
            fail(&format!(
                "path should be {}/ckpt-<seq {}>",
                rank_dir.display(),
                ckpt.seq
            ));
        }
        for file in ["manifest.json", "pages.bin", "CHECKSUMS"] {
            if !ckpt.path.join(file).is_file() {
                fail(&format!("the image has no {file}"));
            }
        }
        if ckpt.tier != "local" || ckpt.bytes == 0 || ckpt.freeze_ms < 0.0 {
            fail("expected tier \"local\", bytes > 0, freeze_ms >= 0");
        }
        if ckpt.total_ms < ckpt.freeze_ms {
            fail("total_ms < freeze_ms");
        }
        ckpt
    }

    /// Every image or partial image (`ckpt-*`, `.ckpt-*`) anywhere in the store.
    pub fn images(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("ckpt-") || name.starts_with(".ckpt-") {
                    found.push(entry.path());
                } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&entry.path(), found);
                }
            }
        }
        let mut found = Vec::new();
        walk(&self.store, &mut found);
        found
    }

    /// Runs `prog` under `mlckpt run` until it printed `at_tick` tick lines, then
    /// `checkpoint --kill`s it; checks the run ended with 128+SIGKILL and the PID is free.
    pub fn run_until_checkpoint_kill(&self, prog: &Prog, at_tick: usize) -> Killed {
        self.run_until_checkpoint_kill_with(prog, at_tick, |_| {})
    }

    /// [`Self::run_until_checkpoint_kill`], calling `before` with the PID just before the
    /// checkpoint.
    pub fn run_until_checkpoint_kill_with(
        &self,
        prog: &Prog,
        at_tick: usize,
        before: impl FnOnce(i32),
    ) -> Killed {
        let mut run = self.run(prog);
        run.wait_for_ticks(at_tick);
        let pid = run.target_pid();
        before(pid);
        let ckpt = self.checkpoint(pid, true);
        let before = run.finish(CMD_TIMEOUT).expect_code(KILLED).stdout;
        wait_gone(pid);
        Killed { pid, ckpt, before }
    }

    /// Restores `image` and runs the restored process to a successful end; returns its stdout.
    /// `during` is called while it runs, with the restore command and the PID.
    pub fn restore_to_end(
        &self,
        image: &Path,
        prog: &Prog,
        pid: i32,
        during: impl FnOnce(&mut Proc, i32),
    ) -> String {
        let mut restore = self.restore(image, prog);
        restore.set_target(pid);
        during(&mut restore, pid);
        restore.finish(CMD_TIMEOUT).expect_code(0).stdout
    }

    /// The whole cycle: reference run alongside `mlckpt run`; checkpoint --kill after
    /// `at_tick` ticks; restore; the restored process must continue exactly where the
    /// original stopped (see [`assert_continuation`]).
    pub fn checkpoint_kill_restore(&self, prog: &Prog, at_tick: usize) -> Outcome {
        self.checkpoint_kill_restore_with(prog, at_tick, |_, _| {})
    }

    /// [`Self::checkpoint_kill_restore`], calling `during` while the restored process runs.
    pub fn checkpoint_kill_restore_with(
        &self,
        prog: &Prog,
        at_tick: usize,
        during: impl FnOnce(&mut Proc, i32),
    ) -> Outcome {
        self.checkpoint_kill_restore_around(
            prog,
            at_tick,
            |_| (),
            |proc, pid, ()| during(proc, pid),
        )
    }

    /// The whole cycle with two hooks: `before` runs with the PID just before the checkpoint,
    /// and what it returns is handed to `during`, which runs while the restored process runs.
    pub fn checkpoint_kill_restore_around<T>(
        &self,
        prog: &Prog,
        at_tick: usize,
        before_checkpoint: impl FnOnce(i32) -> T,
        during: impl FnOnce(&mut Proc, i32, &T),
    ) -> Outcome {
        let reference = self.plain(prog);
        let mut seen = None;
        let Killed { pid, ckpt, before } =
            self.run_until_checkpoint_kill_with(prog, at_tick, |pid| {
                seen = Some(before_checkpoint(pid));
            });
        let seen = seen.expect("the hook ran before the checkpoint");
        let after =
            self.restore_to_end(&ckpt.path, prog, pid, |proc, pid| during(proc, pid, &seen));
        let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
        assert_continuation(&reference, &before, &after, pid);
        Outcome {
            pid,
            ckpt,
            reference,
            before,
            after,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Several ranks and tiers

impl Harness {
    /// [`Harness::start`] with environment variables set for the command.
    pub fn start_with_env<S: AsRef<OsStr>>(
        &self,
        args: &[S],
        env: &[(&str, &str)],
        feed: Option<Duration>,
    ) -> Proc {
        let args: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
        let label = format!("mlckpt {}", args[0].to_string_lossy());
        let mut cmd = self.command(&args);
        cmd.envs(env.iter().copied());
        Proc::spawn(&label, cmd, feed)
    }

    /// `mlckpt run --config CFG --job JOB EXTRA -- PROG ARGS` with `env` set (e.g. a rank
    /// as `--rank 1` in `extra` or `MLCKPT_RANK=1` in `env`).
    pub fn run_with(&self, extra: &[&str], env: &[(&str, &str)], prog: &Prog) -> Proc {
        let argv = prog.argv_in(&self.run_dir());
        let mut args: Vec<&OsStr> = ["run", "--config"].map(OsStr::new).to_vec();
        args.extend([self.config.as_os_str(), "--job".as_ref(), self.job.as_ref()]);
        args.extend(extra.iter().map(OsStr::new));
        args.push("--".as_ref());
        args.extend(argv.iter().map(OsStr::new));
        self.start_with_env(&args, env, prog.feed)
    }

    /// `mlckpt checkpoint PID --json ARGS`, which must succeed: its JSON report.
    pub fn checkpoint_json(&self, pid: i32, args: &[&str]) -> serde_json::Value {
        let pid = pid.to_string();
        let mut all = vec!["checkpoint", pid.as_str(), "--json"];
        all.extend(args);
        let res = self.mlckpt(&all).expect_code(0);
        serde_json::from_str(res.stdout.trim())
            .unwrap_or_else(|e| panic!("checkpoint --json: not JSON: {e}\n{}", res.describe()))
    }
}

/// The sequence numbers of the committed images (`ckpt-*`) in `rank_dir`, ascending.
pub fn image_seqs(rank_dir: &Path) -> Vec<u64> {
    let mut seqs: Vec<u64> = std::fs::read_dir(rank_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("ckpt-")?.parse().ok())
        .collect();
    seqs.sort();
    seqs
}

/// Re-authenticates the image at `dir` after a test edited it, as its owner (root) could:
/// CHECKSUMS recomputed for every file it lists, AUTH made with root's key. What an
/// attacker without the key cannot do.
pub fn reseal(dir: &Path) {
    let sums = std::fs::read_to_string(dir.join("CHECKSUMS")).unwrap();
    let sums: String = sums
        .lines()
        .map(|l| {
            let (_, file) = l.split_once("  ").unwrap();
            let hash = blake3::hash(&std::fs::read(dir.join(file)).unwrap());
            format!("{}  {file}\n", hash.to_hex())
        })
        .collect();
    std::fs::write(dir.join("CHECKSUMS"), &sums).unwrap();
    let key_text = std::fs::read_to_string("/root/.config/mlckpt/image.key").unwrap();
    let key: Vec<u8> = (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(&key_text.trim()[i..i + 2], 16).unwrap())
        .collect();
    let mac = blake3::keyed_hash(&key.try_into().unwrap(), sums.as_bytes());
    let auth = format!("mlckpt-blake3-keyed-v1 uid=0 {}\n", mac.to_hex());
    std::fs::write(dir.join("AUTH"), auth).unwrap();
}

/// What the killed run printed up to the checkpoint: everything before the restored
/// process's first line.
pub fn printed_before<'a>(went_on: &'a str, after: &str) -> &'a str {
    let first = after.lines().next().unwrap_or_default();
    let cut = went_on
        .find(&format!("{first}\n"))
        .unwrap_or_else(|| panic!("'{first}' not in the first run's output:\n{went_on}"));
    &went_on[..cut]
}

/// `checkpoint PID --json --tier TIER EXTRA`: (seq, path); the path must be on `tier`.
pub fn checkpoint_to(h: &Harness, pid: i32, tier: &str, extra: &[&str]) -> (u64, PathBuf) {
    let mut args = vec!["--tier", tier];
    args.extend(extra);
    let v = h.checkpoint_json(pid, &args);
    assert_eq!(v["tier"], tier, "{v}");
    let path = PathBuf::from(v["path"].as_str().expect("path"));
    assert!(path.join("CHECKSUMS").is_file(), "{v}");
    (v["seq"].as_u64().expect("seq"), path)
}

/// Asserts some stderr line of `res` contains every one of `parts`; returns it.
pub fn line_with<'a>(res: &'a Finished, parts: &[&str]) -> &'a str {
    res.stderr
        .lines()
        .find(|l| parts.iter().all(|p| l.contains(p)))
        .unwrap_or_else(|| {
            panic!(
                "no stderr line contains all of {parts:?}\n{}",
                res.describe()
            )
        })
}

impl Proc {
    /// Fails the test, with what the process said, if it has exited (a wait for something
    /// only a running process can bring about ends at once).
    pub fn assert_running(&mut self) {
        assert!(!self.exited(), "exited early\n{}", self.describe());
    }
}
