//! The coordinator's state machine, driven by hand: events go in through `on_event` and
//! `on_time` (with chosen instants), and each rank's end of a loopback connection reads
//! what the coordinator sent it. Every test ends by closing the coordinator and checking
//! that no rank was sent anything more than the test expected, so a message sent too
//! early, twice, or to the wrong rank fails it.

use super::wire::WireError;
use super::*;
use crate::coordination::rendezvous::Meeting;
use crate::tiers::config::Config;
use std::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(30);
/// A safeguard against a hang only: the coordinator has written every expected message
/// before the test reads it.
const PATIENCE: Duration = Duration::from_secs(10);

use TierKind::{Global, Local, Partner};

/// A job of `ranks` ranks seen from the coordinator's side, and each rank's end of its
/// connection.
struct Job {
    coordinator: Coordinator,
    ranks: BTreeMap<u32, Rank>,
    /// Connections of ranks that left or joined again: read at the end like the others.
    gone: Vec<(u32, Conn)>,
    next_conn: u64,
}

struct Rank {
    conn_id: u64,
    conn: Conn,
}

impl Job {
    /// A job whose schedule has no tiers: only asks start generations.
    fn new(ranks: u32, restoring: bool) -> Job {
        Job::with(ranks, TIMEOUT, BTreeSet::new(), restoring)
    }

    fn with(ranks: u32, timeout: Duration, tiers: BTreeSet<TierKind>, restoring: bool) -> Job {
        let settings = Settings {
            job: "sim".into(),
            rank: 0,
            ranks,
            timeout,
            meeting: Meeting::Fixed {
                host: "127.0.0.1".into(),
                port: 0,
            },
            same_machine: true,
            config: Config::defaults(),
        };
        Job {
            coordinator: Coordinator::new(&settings, tiers, restoring),
            ranks: BTreeMap::new(),
            gone: Vec::new(),
            next_conn: 1,
        }
    }

    /// Every rank of `ranks` joins, each with `next_seq`.
    fn joined(ranks: u32, next_seq: u64) -> Job {
        let mut job = Job::new(ranks, false);
        for rank in 0..ranks {
            job.join(rank, next_seq);
        }
        job
    }

    /// `rank` joins on a new connection (a rank already joined: its supervisor again).
    fn join(&mut self, rank: u32, next_seq: u64) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (far, _) = listener.accept().unwrap();
        // Only the coordinator's writer keeps its end open: once the coordinator is gone,
        // the rank reads the end of the stream after the last message.
        let writer = Conn::new(far, format!("rank {rank}")).unwrap().writer();
        let conn_id = self.next_conn;
        self.next_conn += 1;
        self.coordinator.on_event(Event::Joined {
            rank,
            conn: conn_id,
            writer,
            next_seq,
        });
        let conn = Conn::new(near, "coordinator".into()).unwrap();
        if let Some(old) = self.ranks.insert(rank, Rank { conn_id, conn }) {
            self.gone.push((rank, old.conn));
        }
    }

    fn conn_of(&self, rank: u32) -> u64 {
        self.ranks[&rank].conn_id
    }

    /// `rank`'s connection closes.
    fn leave(&mut self, rank: u32, why: &str) {
        let Rank { conn_id, conn } = self.ranks.remove(&rank).unwrap();
        self.gone.push((rank, conn));
        self.coordinator.on_event(Event::Left {
            rank,
            conn: conn_id,
            why: why.into(),
        });
    }

    fn says(&mut self, rank: u32, message: ToCoordinator) {
        let conn = self.conn_of(rank);
        self.coordinator.on_event(Event::Message {
            rank,
            conn,
            message,
        });
    }

    fn all_say(&mut self, message: impl Fn() -> ToCoordinator) {
        let ranks: Vec<u32> = self.ranks.keys().copied().collect();
        for rank in ranks {
            self.says(rank, message());
        }
    }

    fn asks(&mut self, rank: u32, tier: TierKind, stop: bool, id: u64) {
        self.says(rank, ToCoordinator::Ask { tier, stop, id });
    }

    /// `(rank, tier, stop, id)`: the rank asks, hears that `generation` serves it, then
    /// every rank is told to take it.
    fn starts(&mut self, (rank, tier, stop, id): (u32, TierKind, bool, u64), generation: u64) {
        self.asks(rank, tier, stop, id);
        self.expect(rank, &[asked(id, generation)]);
        self.expect_all(&[checkpoint(generation, tier, stop)]);
    }

    /// Every rank is ready and commits `generation`, rank `r` with its freeze at
    /// `1_000_000 + r` ms after the epoch, lasting `r + 1` ms.
    fn take(&mut self, generation: u64) {
        self.all_say(|| ToCoordinator::Ready { generation });
        let ranks: Vec<u32> = self.ranks.keys().copied().collect();
        for rank in ranks {
            self.says(
                rank,
                committed(generation, 1_000_000_000 + u64::from(rank) * 1000),
            );
        }
    }

    /// `rank` was sent exactly `expected`, next.
    fn expect(&mut self, rank: u32, expected: &[ToMember]) {
        let conn = &mut self.ranks.get_mut(&rank).unwrap().conn;
        for (i, want) in expected.iter().enumerate() {
            let got = receive(conn)
                .unwrap_or_else(|e| panic!("rank {rank}, message {i}: {e} instead of {want:?}"));
            assert_eq!(&got, want, "rank {rank}, message {i}");
        }
    }

    /// Every joined rank was sent exactly `expected`, next.
    fn expect_all(&mut self, expected: &[ToMember]) {
        let ranks: Vec<u32> = self.ranks.keys().copied().collect();
        for rank in ranks {
            self.expect(rank, expected);
        }
    }

    /// The coordinator goes: nobody was sent anything the test did not read.
    fn end(self) {
        drop(self.coordinator);
        let conns = self.ranks.into_iter().map(|(r, rank)| (r, rank.conn));
        for (rank, mut conn) in conns.chain(self.gone) {
            match receive(&mut conn) {
                Err(WireError::Closed { .. }) => {}
                Ok(extra) => panic!("rank {rank} was also sent {extra:?}"),
                Err(e) => panic!("rank {rank}: {e}"),
            }
        }
    }
}

/// The next message, its summary's commit time (a real duration) checked and zeroed.
fn receive(conn: &mut Conn) -> Result<ToMember, WireError> {
    let mut message = conn.receive::<ToMember>(Some(PATIENCE))?;
    if let ToMember::Complete { summary, .. } = &mut message {
        assert!(
            summary.commit_ms.is_finite() && summary.commit_ms >= 0.0,
            "{summary:?}"
        );
        summary.commit_ms = 0.0;
    }
    Ok(message)
}

fn committed(generation: u64, freeze_began_unix_us: u64) -> ToCoordinator {
    ToCoordinator::Committed {
        generation,
        freeze_began_unix_us,
        freeze_ms: (freeze_began_unix_us % 10_000) as f64 / 1000.0 + 1.0,
        bytes: 4096,
    }
}

fn checkpoint(generation: u64, tier: TierKind, stop: bool) -> ToMember {
    ToMember::Checkpoint {
        generation,
        tier,
        stop,
    }
}

fn freeze(generation: u64) -> ToMember {
    ToMember::Freeze { generation }
}

fn asked(id: u64, generation: u64) -> ToMember {
    ToMember::Asked { id, generation }
}

fn abandoned(generation: u64, why: &str) -> ToMember {
    ToMember::Abandoned {
        generation,
        why: why.into(),
    }
}

/// What [`Job::take`] gives for a job of `ranks` ranks: freezes 1 ms apart, the last
/// rank's lasting longest.
fn complete(generation: u64, tier: TierKind, ranks: u32) -> ToMember {
    ToMember::Complete {
        generation,
        tier,
        summary: Summary {
            ranks,
            skew_ms: f64::from(ranks - 1),
            commit_ms: 0.0,
            freeze_ms_max: f64::from(ranks),
        },
    }
}

fn not_complete(generation: u64, tier: TierKind, why: &str) -> ToMember {
    ToMember::NotComplete {
        generation,
        tier,
        why: why.into(),
    }
}

fn copied(generation: u64, tier: TierKind) -> ToCoordinator {
    ToCoordinator::Copied { generation, tier }
}

const NOT_JOINED: &str =
    "not joined the job's coordinator (not started yet, ended, or cannot reach it)";

#[test]
fn an_ask_becomes_a_generation_every_rank_takes_and_completes() {
    let mut job = Job::new(2, false);
    job.join(0, 4);
    // Generations continue above every rank's images.
    job.join(1, 6);
    job.asks(1, Local, false, 7);
    // The asker learns its generation before that generation's first step.
    job.expect(1, &[asked(7, 6), checkpoint(6, Local, false)]);
    job.expect(0, &[checkpoint(6, Local, false)]);
    job.says(0, ToCoordinator::Ready { generation: 6 });
    // Nobody freezes before the last rank is ready (an early Freeze would be read below
    // in place of the Complete, or left over at the end).
    job.says(1, ToCoordinator::Ready { generation: 6 });
    job.expect_all(&[freeze(6)]);
    job.says(
        0,
        ToCoordinator::Committed {
            generation: 6,
            freeze_began_unix_us: 1_700_000_000_002_500,
            freeze_ms: 3.0,
            bytes: 1,
        },
    );
    job.says(
        1,
        ToCoordinator::Committed {
            generation: 6,
            freeze_began_unix_us: 1_700_000_000_000_000,
            freeze_ms: 4.5,
            bytes: 1,
        },
    );
    let summary = Summary {
        ranks: 2,
        skew_ms: 2.5,
        commit_ms: 0.0,
        freeze_ms_max: 4.5,
    };
    job.expect_all(&[ToMember::Complete {
        generation: 6,
        tier: Local,
        summary,
    }]);
    // The next one is numbered after it.
    job.starts((0, Partner, false, 8), 7);
    job.end();
}

#[test]
fn an_ask_the_running_generation_covers_is_served_by_it() {
    let mut job = Job::joined(2, 1);
    job.starts((0, Partner, true, 1), 1);
    // A lower tier, the same tier, no stop or a stop: the running one does all of that.
    job.asks(1, Local, false, 2);
    job.asks(1, Partner, true, 3);
    job.asks(0, Local, true, 4);
    job.expect(1, &[asked(2, 1), asked(3, 1)]);
    job.expect(0, &[asked(4, 1)]);
    job.take(1);
    job.expect_all(&[freeze(1), complete(1, Local, 2)]);
    job.all_say(|| copied(1, Partner));
    // No second generation follows.
    job.expect_all(&[complete(1, Partner, 2)]);
    job.end();
}

#[test]
fn an_ask_the_running_generation_does_not_cover_waits_for_its_end() {
    let mut job = Job::joined(2, 1);
    job.starts((0, Local, false, 1), 1);
    // A higher tier, a stop: kept and merged, nobody hears of them yet.
    job.asks(1, Global, false, 2);
    job.asks(0, Local, true, 3);
    job.take(1);
    // Generation 2 serves both, at the higher tier, stopping.
    job.expect(0, &[freeze(1), complete(1, Local, 2), asked(3, 2)]);
    job.expect(1, &[freeze(1), complete(1, Local, 2), asked(2, 2)]);
    job.expect_all(&[checkpoint(2, Global, true)]);
    job.end();
}

#[test]
fn an_ask_kept_while_a_generation_fails_is_started_after_it() {
    let mut job = Job::joined(2, 1);
    job.asks(0, Local, false, 1);
    job.asks(1, Partner, false, 2);
    job.expect(0, &[asked(1, 1), checkpoint(1, Local, false)]);
    job.expect(1, &[checkpoint(1, Local, false)]);
    job.says(
        0,
        ToCoordinator::Failed {
            generation: 1,
            why: "disk full".into(),
        },
    );
    job.expect(
        0,
        &[
            abandoned(1, "rank 0 could not take its part: disk full"),
            checkpoint(2, Partner, false),
        ],
    );
    job.expect(
        1,
        &[
            abandoned(1, "rank 0 could not take its part: disk full"),
            asked(2, 2),
            checkpoint(2, Partner, false),
        ],
    );
    // A late word on the failed one changes nothing.
    job.says(1, ToCoordinator::Ready { generation: 1 });
    job.says(1, committed(1, 5));
    job.end();
}

#[test]
fn words_on_another_generation_are_ignored() {
    let mut job = Job::joined(2, 5);
    job.starts((0, Partner, false, 1), 5);
    for other in [4, 6, 99] {
        job.all_say(|| ToCoordinator::Ready { generation: other });
        job.all_say(|| committed(other, 1));
        job.says(
            1,
            ToCoordinator::Failed {
                generation: other,
                why: "stale".into(),
            },
        );
        job.says(
            1,
            ToCoordinator::CopyFailed {
                generation: other,
                tier: Partner,
                why: "stale".into(),
            },
        );
        job.all_say(|| copied(other, Partner));
    }
    job.says(0, ToCoordinator::Ready { generation: 5 });
    job.says(1, ToCoordinator::Ready { generation: 4 });
    job.says(1, ToCoordinator::Ready { generation: 5 });
    job.expect_all(&[freeze(5)]);
    job.says(0, committed(5, 1_000_000_000));
    job.says(1, committed(4, 1_000_001_000));
    job.says(1, committed(5, 1_000_001_000));
    job.expect_all(&[complete(5, Local, 2)]);
    // Once committed, the generation's round is over: repeats are ignored too.
    job.all_say(|| ToCoordinator::Ready { generation: 5 });
    job.all_say(|| committed(5, 1));
    job.all_say(|| copied(4, Partner));
    job.all_say(|| copied(5, Partner));
    job.expect_all(&[complete(5, Partner, 2)]);
    job.all_say(|| copied(5, Partner));
    job.end();
}

#[test]
fn a_generation_past_its_timeout_is_abandoned_naming_the_late_ranks() {
    let mut job = Job::joined(3, 1);
    job.starts((2, Local, false, 1), 1);
    job.says(0, ToCoordinator::Ready { generation: 1 });
    job.coordinator.on_time(Instant::now() + TIMEOUT / 2);
    job.coordinator
        .on_time(Instant::now() + TIMEOUT + Duration::from_millis(1));
    job.expect_all(&[abandoned(
        1,
        "ranks 1, 2 did not reach the freeze within 30 s (hung, or slower than \
         [coordination] timeout)",
    )]);
    job.all_say(|| ToCoordinator::Ready { generation: 1 });

    // All reached the freeze; rank 1 never commits. A request kept meanwhile goes next.
    job.starts((0, Local, false, 2), 2);
    job.asks(1, Global, false, 3);
    job.all_say(|| ToCoordinator::Ready { generation: 2 });
    job.expect_all(&[freeze(2)]);
    job.says(0, committed(2, 1));
    job.says(2, committed(2, 1));
    job.coordinator
        .on_time(Instant::now() + TIMEOUT + Duration::from_millis(1));
    job.expect_all(&[abandoned(
        2,
        "rank 1 did not commit within 30 s (hung, or slower than [coordination] timeout)",
    )]);
    job.expect(1, &[asked(3, 3)]);
    job.expect_all(&[checkpoint(3, Global, false)]);
    job.says(1, committed(2, 1));
    job.end();
}

#[test]
fn a_rank_leaving_mid_generation_fails_it_for_everyone() {
    let mut job = Job::joined(3, 1);
    job.starts((0, Local, false, 1), 1);
    job.take(1);
    job.expect_all(&[freeze(1), complete(1, Local, 3)]);

    job.starts((0, Local, false, 2), 2);
    job.all_say(|| ToCoordinator::Ready { generation: 2 });
    job.expect_all(&[freeze(2)]);
    job.says(0, committed(2, 1));
    job.says(2, committed(2, 1));
    // Kept for after generation 2.
    job.asks(1, Global, false, 3);
    let stale = job.conn_of(2);
    job.leave(2, "connection reset by peer");
    let left = "rank 2's supervisor left (connection reset by peer)";
    // The kept request starts at once, and fails at once: rank 2 is not there.
    job.expect(0, &[abandoned(2, left)]);
    job.expect(1, &[abandoned(2, left), asked(3, 3)]);
    let absent = abandoned(3, &format!("rank 2 has {NOT_JOINED}"));
    job.expect_all(&[absent]);

    // Rank 2 comes back; its old connection's word is not its new one's, and generation
    // 2 stays failed.
    job.join(2, 1);
    job.coordinator.on_event(Event::Message {
        rank: 2,
        conn: stale,
        message: committed(2, 1),
    });
    job.coordinator.on_event(Event::Left {
        rank: 2,
        conn: stale,
        why: "late".into(),
    });
    job.starts((2, Local, false, 4), 4);
    job.take(4);
    job.expect_all(&[freeze(4), complete(4, Local, 3)]);
    job.end();
}

#[test]
fn a_copy_reported_before_the_slowest_rank_commits_counts() {
    let mut job = Job::joined(2, 1);
    job.starts((0, Partner, false, 1), 1);
    job.all_say(|| ToCoordinator::Ready { generation: 1 });
    job.expect_all(&[freeze(1)]);
    job.says(0, committed(1, 1_000_000_000));
    job.says(0, copied(1, Partner));
    job.says(1, committed(1, 1_000_001_000));
    job.expect_all(&[complete(1, Local, 2)]);
    job.says(1, copied(1, Partner));
    job.expect_all(&[complete(1, Partner, 2)]);
    job.end();
}

#[test]
fn a_failed_copy_leaves_the_generation_incomplete_on_that_tier() {
    let mut job = Job::joined(2, 1);
    // After the commit.
    job.starts((0, Partner, false, 1), 1);
    job.take(1);
    job.expect_all(&[freeze(1), complete(1, Local, 2)]);
    job.says(0, copied(1, Partner));
    job.says(
        1,
        ToCoordinator::CopyFailed {
            generation: 1,
            tier: Partner,
            why: "no space left".into(),
        },
    );
    job.expect_all(&[not_complete(
        1,
        Partner,
        "rank 1's copy failed: no space left",
    )]);
    job.says(1, copied(1, Partner));

    // Before the slowest rank's commit: the first failure is the one named.
    job.starts((1, Global, false, 2), 2);
    job.all_say(|| ToCoordinator::Ready { generation: 2 });
    job.expect_all(&[freeze(2)]);
    job.says(0, committed(2, 1_000_000_000));
    for why in ["unreachable", "again"] {
        job.says(
            0,
            ToCoordinator::CopyFailed {
                generation: 2,
                tier: Global,
                why: why.into(),
            },
        );
    }
    job.says(1, committed(2, 1_000_001_000));
    job.expect_all(&[
        complete(2, Local, 2),
        not_complete(2, Global, "rank 0's copy failed: unreachable"),
    ]);
    job.says(1, copied(2, Global));
    job.end();
}

#[test]
fn a_rank_leaving_fails_the_copies_it_has_not_finished() {
    let mut job = Job::joined(3, 1);
    for (id, generation) in [(1, 1), (2, 2)] {
        job.starts((1, Partner, false, id), generation);
        job.take(generation);
        job.expect_all(&[freeze(generation), complete(generation, Local, 3)]);
    }
    job.says(0, copied(1, Partner));
    job.says(1, copied(2, Partner));
    job.leave(0, "closed");
    // Rank 0 finished its copy of generation 1, not of 2.
    job.expect_all(&[not_complete(
        2,
        Partner,
        "rank 0's supervisor left (closed)",
    )]);
    job.says(1, copied(1, Partner));
    job.says(2, copied(1, Partner));
    job.expect_all(&[complete(1, Partner, 3)]);
    job.says(2, copied(2, Partner));
    job.end();
}

#[test]
fn a_rank_whose_job_ends_after_its_part_still_completes_the_generation() {
    let mut job = Job::joined(2, 1);
    job.starts((0, Partner, true, 1), 1);
    job.all_say(|| ToCoordinator::Ready { generation: 1 });
    job.expect_all(&[freeze(1)]);
    // Rank 0 stopped its program with its part: it says so, and waits for the others.
    job.says(0, committed(1, 1_000_000_000));
    job.says(0, ToCoordinator::Finished);
    job.says(0, copied(1, Partner));
    job.says(1, committed(1, 1_000_001_000));
    job.expect_all(&[complete(1, Local, 2)]);
    job.says(1, copied(1, Partner));
    job.expect_all(&[complete(1, Partner, 2)]);
    // Then it goes: nothing was open, nothing fails.
    job.leave(0, "closed");
    job.end();
}

#[test]
fn asks_while_a_rank_is_absent_or_finished_fail_saying_why() {
    let mut job = Job::new(3, false);
    job.join(0, 1);
    job.asks(0, Local, false, 1);
    job.expect(
        0,
        &[
            asked(1, 1),
            abandoned(1, &format!("ranks 1, 2 have {NOT_JOINED}")),
        ],
    );
    job.join(1, 1);
    job.join(2, 1);
    job.says(1, ToCoordinator::Finished);
    job.asks(2, Partner, true, 2);
    job.expect(2, &[asked(2, 2)]);
    job.expect_all(&[abandoned(2, "the job of rank 1 has ended")]);
    job.says(0, ToCoordinator::Finished);
    job.asks(2, Local, false, 3);
    job.expect(2, &[asked(3, 3)]);
    job.expect_all(&[abandoned(3, "the job of ranks 0, 1 has ended")]);
    job.end();
}

#[test]
fn the_schedule_starts_generations_until_the_job_ends() {
    let mut job = Job::with(2, TIMEOUT, BTreeSet::from([Local]), false);
    job.join(0, 1);
    // The schedule starts once every rank is there.
    job.coordinator
        .on_time(Instant::now() + Duration::from_secs(120));
    job.join(1, 1);
    let local = Config::defaults().interval.local;
    job.coordinator.on_time(Instant::now() + local / 2);
    job.coordinator
        .on_time(Instant::now() + local + Duration::from_millis(10));
    // Nobody asked: nobody is told which generation served them.
    job.expect_all(&[checkpoint(1, Local, false)]);
    job.take(1);
    job.expect_all(&[freeze(1), complete(1, Local, 2)]);
    job.says(1, ToCoordinator::Finished);
    job.coordinator
        .on_time(Instant::now() + local * 10 + Duration::from_millis(10));
    job.end();
}

fn held(generation: u64, tiers: &[TierKind], complete: bool) -> Held {
    Held {
        generation,
        tiers: tiers.to_vec(),
        complete,
    }
}

/// The agreement failed for `why`, after the lines of the generations `skipped`.
fn none_agreed(skipped: &[&str], why: &str) -> ToMember {
    let mut lines: Vec<String> = skipped.iter().map(|l| l.to_string()).collect();
    lines.push(format!("recovery line: none agreed: {why}"));
    ToMember::Chosen {
        generation: None,
        tiers: Vec::new(),
        lines,
        failed: Some(why.into()),
    }
}

fn verified(generation: u64, tier: Option<TierKind>, problems: &[&str]) -> ToCoordinator {
    ToCoordinator::Verified {
        generation,
        tier,
        problems: problems.iter().map(|p| p.to_string()).collect(),
    }
}

/// A restoring job of `ranks` ranks, all joined with nothing above generation `next_seq`.
fn restoring(ranks: u32, timeout: Duration) -> Job {
    let mut job = Job::with(ranks, timeout, BTreeSet::new(), true);
    for rank in 0..ranks {
        job.join(rank, 1);
    }
    job
}

#[test]
fn the_recovery_line_is_the_newest_generation_every_rank_holds_intact() {
    let mut job = restoring(2, TIMEOUT);
    job.says(
        0,
        ToCoordinator::Holdings {
            held: vec![
                held(3, &[Local], true),
                held(4, &[Local, Partner], true),
                held(5, &[Local], false),
            ],
        },
    );
    job.says(
        1,
        ToCoordinator::Holdings {
            held: vec![held(3, &[Partner], true), held(4, &[Local], false)],
        },
    );
    job.expect_all(&[ToMember::Verify { generation: 4 }]);
    job.says(0, verified(4, Some(Local), &[]));
    job.says(
        1,
        verified(4, None, &["local: checksum mismatch", "partner: missing"]),
    );
    job.expect_all(&[ToMember::Verify { generation: 3 }]);
    // A late answer on the generation passed over counts for nothing.
    job.says(0, verified(4, Some(Local), &[]));
    job.says(1, verified(3, Some(Partner), &["local: missing"]));
    job.says(0, verified(3, Some(Local), &[]));
    job.expect_all(&[ToMember::Chosen {
        generation: Some(3),
        tiers: vec![Some(Local), Some(Partner)],
        lines: vec![
            "recovery line: generation 5 skipped: not complete (no rank has its record: it \
             failed or was cut short)"
                .into(),
            "recovery line: generation 4 skipped: rank 1 has no valid copy (local: checksum \
             mismatch; partner: missing)"
                .into(),
            "recovery line: generation 3 for all 2 ranks (rank 0: local, rank 1: partner)".into(),
        ],
        failed: None,
    }]);
    // Agreed: no timeout of the agreement any more, and the next generation comes after
    // the one restored.
    job.coordinator
        .on_time(Instant::now() + super::super::VERIFY_AT_LEAST * 2);
    job.starts((1, Local, false, 9), 4);
    job.end();
}

#[test]
fn no_generation_intact_everywhere_is_said_so() {
    let mut job = restoring(2, TIMEOUT);
    job.says(
        0,
        ToCoordinator::Holdings {
            held: vec![held(2, &[Local], true)],
        },
    );
    job.says(
        1,
        ToCoordinator::Holdings {
            held: vec![held(2, &[Local], true)],
        },
    );
    job.expect_all(&[ToMember::Verify { generation: 2 }]);
    job.says(0, verified(2, None, &["local: truncated"]));
    job.says(1, verified(2, Some(Local), &[]));
    job.expect_all(&[ToMember::Chosen {
        generation: None,
        tiers: Vec::new(),
        lines: vec![
            "recovery line: generation 2 skipped: rank 0 has no valid copy (local: truncated)"
                .into(),
            "recovery line: no generation is complete with an intact copy for every one of \
             the 2 ranks"
                .into(),
        ],
        failed: None,
    }]);
    job.end();
}

#[test]
fn a_rank_missing_at_the_restore_fails_the_agreement() {
    let mut job = Job::new(3, true);
    job.join(0, 1);
    job.join(1, 1);
    job.says(
        0,
        ToCoordinator::Holdings {
            held: vec![held(1, &[Local], true)],
        },
    );
    job.coordinator.on_time(Instant::now() + TIMEOUT / 2);
    job.coordinator
        .on_time(Instant::now() + TIMEOUT + Duration::from_millis(1));
    let why = "ranks 1, 2 have not joined the restore within 30 s (every rank must run \
               `restore --auto` or `run --resume`)";
    job.expect_all(&[none_agreed(&[], why)]);
    // Said once: the agreement is over.
    job.coordinator
        .on_time(Instant::now() + TIMEOUT * 3 + Duration::from_millis(1));
    job.end();
}

#[test]
fn verifying_gets_at_least_its_own_time() {
    let at_least = super::super::VERIFY_AT_LEAST;
    for timeout in [TIMEOUT, at_least + Duration::from_secs(300)] {
        let mut job = restoring(2, timeout);
        job.all_say(|| ToCoordinator::Holdings {
            held: vec![held(6, &[Local], true), held(7, &[Local], false)],
        });
        job.expect_all(&[ToMember::Verify { generation: 6 }]);
        job.says(1, verified(6, Some(Local), &[]));
        let limit = timeout.max(at_least);
        job.coordinator.on_time(Instant::now() + TIMEOUT * 2);
        job.coordinator
            .on_time(Instant::now() + limit - Duration::from_secs(60));
        job.coordinator
            .on_time(Instant::now() + limit + Duration::from_millis(1));
        let why = format!(
            "rank 0 did not finish checking generation 6 within {} s",
            limit.as_secs()
        );
        job.expect_all(&[none_agreed(
            &[
                "recovery line: generation 7 skipped: not complete (no rank has its record: \
               it failed or was cut short)",
            ],
            &why,
        )]);
        job.end();
    }
}

#[test]
fn a_rank_leaving_during_the_agreement_fails_it_at_once() {
    // Before every rank said what it holds.
    let mut job = restoring(2, TIMEOUT);
    job.says(
        0,
        ToCoordinator::Holdings {
            held: vec![held(1, &[Local], true)],
        },
    );
    job.leave(1, "closed");
    let why = "rank 1's supervisor left (closed)";
    job.expect_all(&[none_agreed(&[], why)]);
    job.coordinator
        .on_time(Instant::now() + TIMEOUT + Duration::from_millis(1));
    job.end();

    // While verifying, after a generation was passed over.
    let mut job = restoring(3, TIMEOUT);
    job.all_say(|| ToCoordinator::Holdings {
        held: vec![held(2, &[Local], true), held(3, &[Local], true)],
    });
    job.expect_all(&[ToMember::Verify { generation: 3 }]);
    job.all_say(|| verified(3, None, &["local: missing"]));
    job.expect_all(&[ToMember::Verify { generation: 2 }]);
    job.says(0, verified(2, Some(Local), &[]));
    job.leave(2, "connection reset by peer");
    let why = "rank 2's supervisor left (connection reset by peer)";
    job.expect_all(&[none_agreed(
        &[
            "recovery line: generation 3 skipped: rank 0 has no valid copy (local: missing); \
             rank 1 has no valid copy (local: missing); rank 2 has no valid copy (local: \
             missing)",
        ],
        why,
    )]);
    job.says(1, verified(2, Some(Local), &[]));
    job.coordinator
        .on_time(Instant::now() + super::super::VERIFY_AT_LEAST + Duration::from_millis(1));
    job.end();
}
