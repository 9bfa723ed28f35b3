//! Unix sockets bound to names, listening sockets and their connections, and netlink
//! sockets, in whole jobs: restored jobs go on exactly as an uninterrupted run.

mod common;

use common::*;
use mlckpt::image::Image;
use mlckpt::objects::ObjectKind;
use mlckpt::objects::unix_named::{Role, UnixSockets};

fn named_sockets(ckpt: &Ckpt) -> UnixSockets {
    let m = Image::open(&ckpt.path).expect("image opens").manifest;
    m.objects
        .into_iter()
        .find_map(|o| match o.object {
            ObjectKind::UnixSockets(s) => Some(s),
            _ => None,
        })
        .expect("the image holds the job's named unix sockets")
}

/// A server and three clients over a listener bound to a path (requests and answers in
/// flight at any moment), reporting over a datagram socket bound to an abstract name.
#[test]
fn server_and_clients_over_a_named_socket() {
    let h = Harness::new("unix-job");
    let out = h.checkpoint_kill_restore(&Prog::c("unix_job", &["60"]), 15);
    let set = named_sockets(&out.ckpt);
    let count = |f: fn(&Role) -> bool| set.sockets.iter().filter(|s| f(&s.state)).count();
    assert_eq!(count(|r| matches!(r, Role::Listening { .. })), 1, "{set:?}");
    assert_eq!(count(|r| matches!(r, Role::Accepted { .. })), 3, "{set:?}");
    assert_eq!(count(|r| matches!(r, Role::Connected { .. })), 3, "{set:?}");
    assert_eq!(
        count(|r| matches!(r, Role::ConnectedTo { .. })),
        3,
        "{set:?}"
    );
}

/// A python job whose multiprocessing manager (a child process with an accepting thread
/// and a thread per connection) serves it over a unix socket: restored, it goes on
/// serving the old connections and accepts new ones.
#[test]
fn python_multiprocessing_manager_keeps_serving() {
    let Some(prog) = Prog::python("unix_manager.py", &["60"]) else {
        return;
    };
    let h = Harness::new("unix-pymanager");
    h.checkpoint_kill_restore(&prog, 15);
}

/// The path of a listener is replaced at restore only when it is the socket file the
/// job left: a file put there since is named and left alone; once it is gone the restore
/// binds the path again.
#[test]
fn a_listener_path_taken_by_another_file_is_not_replaced() {
    let h = Harness::new("unix-taken");
    let prog = Prog::c("unix_job", &["40"]);
    let reference = h.plain(&prog);
    let killed = h.run_until_checkpoint_kill(&prog, 10);
    let path = format!("/tmp/mlckpt-unixjob-{}.sock", killed.pid);
    std::fs::remove_file(&path).expect("the dead listener's socket file is left");
    std::fs::write(&path, "someone else's file").unwrap();
    let refused = h
        .restore(&killed.ckpt.path, &prog)
        .finish(CMD_TIMEOUT)
        .expect_failure();
    let said = refused.output();
    assert!(
        said.contains(&path) && said.contains("not the socket file"),
        "the refusal should name the path\n{}",
        refused.describe()
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "someone else's file",
        "the file was touched"
    );
    std::fs::remove_file(&path).unwrap();
    let after = h.restore_to_end(&killed.ckpt.path, &prog, killed.pid, |_, _| {});
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &killed.before, &after, killed.pid);
}

/// 200 idle connections to one listener (4 clients with 50 each, besides their working
/// connection): the checkpoint's freeze time is printed, and the restored job still has
/// them all.
#[test]
fn two_hundred_connections_to_one_listener() {
    let h = Harness::new("unix-many");
    let prog = Prog::c("unix_job", &["40", "4", "50"]);
    let out = h.checkpoint_kill_restore(&prog, 10);
    eprintln!(
        "measure: 200 connections to one listener: freeze {:.1} ms, checkpoint {:.1} ms",
        out.ckpt.freeze_ms, out.ckpt.total_ms
    );
    let set = named_sockets(&out.ckpt);
    let accepted = set
        .sockets
        .iter()
        .filter(|s| matches!(s.state, Role::Accepted { .. }))
        .count();
    assert_eq!(accepted, 204);
}
