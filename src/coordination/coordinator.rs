//! The coordinator: a thread in rank 0's supervisor that every rank's supervisor joins.
//!
//! It decides when the job is checkpointed (the tier schedule, or a rank asking), numbers
//! the generation above every image any rank holds, and runs it in two steps: every rank
//! pre-copies and reports ready; then all are told to freeze at once, so their freezes
//! start within the time it takes to send N short messages. A rank that fails, leaves or
//! does not answer within the timeout fails the generation for every rank, named. At a
//! restore it runs the agreement on the recovery line instead, then goes on as above.
//!
//! One thread per connection reads and hands messages over a channel to the deciding
//! thread, which alone holds the state: the protocol's steps read as a plain event loop.

use super::Settings;
use super::wire::{self, Conn, Held, Side, Summary, ToCoordinator, ToMember, Transcript, Writer};
use crate::image::auth::ImageKey;
use crate::image::format::TierKind;
use crate::tiers::schedule::Schedule;
use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a connecting peer has to complete the handshake, all of it.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Connections still in their handshake; more are closed at once, so that a flood of
/// connections that never prove anything cannot use up rank 0's threads.
const MAX_UNPROVEN: usize = 64;

/// Rank 0's handle on its coordinator thread.
pub struct CoordinatorHandle {
    members: Arc<(Mutex<usize>, Condvar)>,
}

impl CoordinatorHandle {
    /// Waits until no rank is connected any more: rank 0's job may end before the others,
    /// whose generations still need the coordinator.
    pub fn wait_for_members_to_leave(&self) {
        let n = *self.members.0.lock().unwrap_or_else(|e| e.into_inner());
        if n > 0 {
            crate::info!(
                "rank 0's job has ended; its coordinator serves the {n} other rank(s) until \
                 they end"
            );
        }
        self.wait_until_connected_at_most(0, None);
    }

    /// Waits until at most `left` ranks are connected, or `deadline` passes: whether they
    /// are. Rank 0 uses it before it exits on a failed agreement, so that the other ranks
    /// read the coordinator's verdict before its process, and their connections, are gone.
    pub fn wait_until_connected_at_most(&self, left: usize, deadline: Option<Instant>) -> bool {
        let (count, changed) = &*self.members;
        let mut n = count.lock().unwrap_or_else(|e| e.into_inner());
        while *n > left {
            n = match deadline {
                None => changed.wait(n).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let Some(rest) = d.checked_duration_since(Instant::now()) else {
                        return false;
                    };
                    changed
                        .wait_timeout(n, rest)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
        true
    }
}

/// Starts the coordinator on `listener`. `tiers`: the tiers the schedule may use.
/// `restoring`: the ranks first agree on a recovery line.
pub fn start(
    settings: &Settings,
    listener: TcpListener,
    key: ImageKey,
    tiers: BTreeSet<TierKind>,
    restoring: bool,
) -> Result<CoordinatorHandle, super::CoordinationError> {
    let (events, inbox) = mpsc::channel();
    let members = Arc::new((Mutex::new(0usize), Condvar::new()));
    let accept = Acceptor {
        job: settings.job.clone(),
        ranks: settings.ranks,
        key,
        events,
        members: members.clone(),
        unproven: AtomicUsize::new(0),
        connected: Mutex::new(BTreeSet::new()),
    };
    std::thread::Builder::new()
        .name("mlckpt-coord-accept".into())
        .spawn(move || accept.run(listener))
        .map_err(super::CoordinationError::Thread)?;
    let state = Coordinator::new(settings, tiers, restoring);
    std::thread::Builder::new()
        .name("mlckpt-coordinator".into())
        .spawn(move || state.run(&inbox))
        .map_err(super::CoordinationError::Thread)?;
    Ok(CoordinatorHandle { members })
}

enum Event {
    Joined {
        rank: u32,
        conn: u64,
        writer: Writer,
        next_seq: u64,
    },
    Message {
        rank: u32,
        conn: u64,
        message: ToCoordinator,
    },
    Left {
        rank: u32,
        conn: u64,
        why: String,
    },
}

struct Acceptor {
    job: String,
    ranks: u32,
    key: ImageKey,
    events: Sender<Event>,
    members: Arc<(Mutex<usize>, Condvar)>,
    /// Connections in their handshake.
    unproven: AtomicUsize,
    /// The ranks with a connection that passed the handshake.
    connected: Mutex<BTreeSet<u32>>,
}

/// A rank's claim on its place among the connected ranks, given up when dropped.
struct Claim<'a> {
    connected: &'a Mutex<BTreeSet<u32>>,
    rank: u32,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut connected = self.connected.lock().unwrap_or_else(|e| e.into_inner());
        connected.remove(&self.rank);
    }
}

/// A connection counted among those in their handshake until dropped.
struct Unproven<'a>(&'a AtomicUsize);

impl Drop for Unproven<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Acceptor {
    fn run(self, listener: TcpListener) {
        let shared = Arc::new(self);
        for (id, stream) in (1u64..).zip(listener.incoming()) {
            let Ok(stream) = stream else { continue };
            let peer = stream
                .peer_addr()
                .map_or_else(|_| "a peer".into(), |a| a.to_string());
            if shared.unproven.fetch_add(1, Ordering::SeqCst) >= MAX_UNPROVEN {
                shared.unproven.fetch_sub(1, Ordering::SeqCst);
                crate::debug!(
                    "coordinator: {peer} closed: {MAX_UNPROVEN} connections already in \
                     their handshake"
                );
                continue;
            }
            let me = shared.clone();
            let spawned = std::thread::Builder::new()
                .name("mlckpt-coord-conn".into())
                .spawn(move || me.serve(stream, peer, id));
            if spawned.is_err() {
                shared.unproven.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    fn serve(&self, stream: std::net::TcpStream, peer: String, conn_id: u64) {
        let unproven = Unproven(&self.unproven);
        let Ok(mut conn) = Conn::new(stream, peer) else {
            return;
        };
        let (claim, next_seq) = match self.handshake(&mut conn) {
            Ok(joined) => joined,
            Err(why) => {
                crate::debug!("coordinator: {} turned away: {why}", conn.peer);
                let _ = conn.send(&ToMember::Refused { why });
                return;
            }
        };
        drop(unproven);
        let (rank, writer) = (claim.rank, conn.writer());
        self.count(1);
        let joined = Event::Joined {
            rank,
            conn: conn_id,
            writer,
            next_seq,
        };
        if self.events.send(joined).is_err() {
            self.count(-1);
            return;
        }
        let why = loop {
            match conn.receive::<ToCoordinator>(None) {
                Ok(message) => {
                    let event = Event::Message {
                        rank,
                        conn: conn_id,
                        message,
                    };
                    if self.events.send(event).is_err() {
                        break "the coordinator stopped".to_string();
                    }
                }
                Err(e) => break crate::error_chain(&e),
            }
        };
        let _ = self.events.send(Event::Left {
            rank,
            conn: conn_id,
            why,
        });
        // Only now may another connection take the rank: its Joined comes after this Left.
        drop(claim);
        self.count(-1);
    }

    /// Challenge, proof, proof back, all within [`HANDSHAKE`]; then the connection is
    /// authenticated. Returns the rank's claim and its next free image number.
    fn handshake(&self, conn: &mut Conn) -> Result<(Claim<'_>, u64), String> {
        let deadline = Instant::now() + HANDSHAKE;
        let challenge = wire::nonce().map_err(|e| crate::error_chain(&e))?;
        conn.send(&ToMember::Challenge {
            nonce: challenge.clone(),
        })
        .map_err(|e| e.to_string())?;
        let hello = conn
            .receive_by::<ToCoordinator>(Some(deadline))
            .map_err(|e| e.to_string())?;
        let ToCoordinator::Hello {
            job,
            rank,
            ranks,
            pid,
            next_seq,
            nonce,
            proof,
        } = hello
        else {
            return Err("the first message was not a hello".into());
        };
        if !wire::is_nonce(&nonce) {
            return Err("its nonce is not 32 hex digits".into());
        }
        let transcript = Transcript {
            job,
            rank,
            ranks,
            pid,
            next_seq,
            challenge,
            nonce,
        };
        if !wire::same_proof(&proof, &transcript.member_proof(&self.key)) {
            return Err("its proof of the image key is wrong".into());
        }
        if transcript.job != self.job {
            let job = &transcript.job;
            return Err(format!("it belongs to job {job}, this is job {}", self.job));
        }
        if ranks != self.ranks || rank >= self.ranks {
            return Err(format!(
                "it is rank {rank} of {ranks}, but the job has {} ranks (check \
                 [coordination] ranks and the launcher's task count)",
                self.ranks
            ));
        }
        let claim = self.claim(rank).ok_or_else(|| {
            format!("rank {rank} is already connected (a stale supervisor of the same job?)")
        })?;
        let proof = transcript.coordinator_proof(&self.key);
        conn.send(&ToMember::Welcome { proof })
            .map_err(|e| e.to_string())?;
        conn.authenticate(&self.key, &transcript, Side::Coordinator);
        Ok((claim, next_seq))
    }

    /// `rank`'s place among the connected ranks, unless another connection holds it.
    fn claim(&self, rank: u32) -> Option<Claim<'_>> {
        let mut connected = self.connected.lock().unwrap_or_else(|e| e.into_inner());
        // Built only when inserted: a claim dropped would give up the other connection's.
        connected.insert(rank).then(|| Claim {
            connected: &self.connected,
            rank,
        })
    }

    fn count(&self, delta: isize) {
        let (count, changed) = &*self.members;
        let mut n = count.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_add_signed(delta);
        changed.notify_all();
    }
}

struct Member {
    conn: u64,
    writer: Writer,
    finished: bool,
}

/// One rank's commit of a generation.
#[derive(Debug, Clone, Copy)]
struct Commit {
    freeze_began_unix_us: u64,
    freeze_ms: f64,
}

/// A generation from the decision until every rank committed it locally.
struct Round {
    generation: u64,
    tier: TierKind,
    stop: bool,
    started: Instant,
    ready: BTreeSet<u32>,
    committed: BTreeMap<u32, Commit>,
    /// A fast rank may finish its copy to the higher tier before the slowest rank has
    /// committed locally; its word is kept until the generation is committed everywhere.
    copied_early: BTreeSet<u32>,
    copy_failed_early: Option<String>,
}

/// A committed generation whose copies to a higher tier are under way.
struct Copies {
    done: BTreeSet<u32>,
    summary: Summary,
}

/// A checkpoint asked for: by the schedule, or by ranks (`askers`: rank and request id,
/// each told which generation serves it).
#[derive(Debug, Clone, PartialEq)]
struct Ask {
    tier: TierKind,
    stop: bool,
    askers: Vec<(u32, u64)>,
}

struct Agreement {
    started: Instant,
    holdings: BTreeMap<u32, Vec<Held>>,
    /// Generations still to try, newest first, once every rank has said what it holds.
    candidates: Vec<u64>,
    lines: Vec<String>,
    verifying: Option<Verifying>,
}

/// The generation being verified, and each rank's answer: the tier its valid copy is on
/// (none if no copy is valid) and what was wrong with the others.
struct Verifying {
    generation: u64,
    started: Instant,
    answers: BTreeMap<u32, (Option<TierKind>, Vec<String>)>,
}

struct Coordinator {
    job: String,
    ranks: u32,
    timeout: Duration,
    members: BTreeMap<u32, Member>,
    next_generation: u64,
    schedule: Option<Schedule>,
    intervals: crate::tiers::config::IntervalConfig,
    tiers: BTreeSet<TierKind>,
    round: Option<Round>,
    pending: Option<Ask>,
    copies: BTreeMap<(u64, TierKind), Copies>,
    agreement: Option<Agreement>,
    /// A rank's job has ended (or its supervisor left): the schedule stops, the job is
    /// coming to its end.
    ending: bool,
}

impl Coordinator {
    fn new(settings: &Settings, tiers: BTreeSet<TierKind>, restoring: bool) -> Coordinator {
        Coordinator {
            job: settings.job.clone(),
            ranks: settings.ranks,
            timeout: settings.timeout,
            members: BTreeMap::new(),
            next_generation: 1,
            schedule: None,
            intervals: settings.config.interval.clone(),
            tiers,
            round: None,
            pending: None,
            copies: BTreeMap::new(),
            agreement: restoring.then(|| Agreement {
                started: Instant::now(),
                holdings: BTreeMap::new(),
                candidates: Vec::new(),
                lines: Vec::new(),
                verifying: None,
            }),
            ending: false,
        }
    }

    fn run(mut self, inbox: &Receiver<Event>) {
        loop {
            let wait = self.next_deadline().map_or(Duration::from_secs(60), |due| {
                due.saturating_duration_since(Instant::now())
            });
            match inbox.recv_timeout(wait) {
                Ok(event) => self.on_event(event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.on_time(Instant::now());
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let schedule = self.schedule.as_ref().and_then(Schedule::next_deadline);
        let round = self.round.as_ref().map(|r| r.started + self.timeout);
        let agreement = self.agreement.as_ref().map(|a| match &a.verifying {
            Some(v) => v.started + self.verify_timeout(),
            None => a.started + self.timeout,
        });
        [schedule, round, agreement].into_iter().flatten().min()
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Joined {
                rank,
                conn,
                writer,
                next_seq,
            } => {
                crate::debug!("coordinator: rank {rank} joined");
                self.next_generation = self.next_generation.max(next_seq);
                let member = Member {
                    conn,
                    writer,
                    finished: false,
                };
                self.members.insert(rank, member);
                if self.members.len() == self.ranks as usize
                    && self.schedule.is_none()
                    && self.agreement.is_none()
                {
                    self.start_schedule();
                }
            }
            Event::Left { rank, conn, why } => {
                if self.members.get(&rank).is_some_and(|m| m.conn == conn) {
                    self.members.remove(&rank);
                    self.ending = true;
                    let why = format!("rank {rank}'s supervisor left ({why})");
                    if self.round.is_some() {
                        self.abandon(&why);
                    }
                    self.fail_copies_of(rank, &why);
                    // Its answers would never come: the others would wait for the
                    // timeout (VERIFY_AT_LEAST while verifying), told it was late.
                    self.disagree(why);
                }
            }
            Event::Message {
                rank,
                conn,
                message,
            } => {
                if self.members.get(&rank).is_some_and(|m| m.conn == conn) {
                    self.on_message(rank, message);
                }
            }
        }
    }

    fn start_schedule(&mut self) {
        let tiers = self.tiers.clone();
        self.schedule = Some(Schedule::new(
            &self.intervals,
            |t| tiers.contains(&t),
            Instant::now(),
        ));
    }

    fn on_message(&mut self, rank: u32, message: ToCoordinator) {
        match message {
            ToCoordinator::Hello { .. } => {}
            ToCoordinator::Ask { tier, stop, id } => self.ask(Ask {
                tier,
                stop,
                askers: vec![(rank, id)],
            }),
            ToCoordinator::Ready { generation } => {
                if let Some(round) = self.round_of(generation) {
                    round.ready.insert(rank);
                    if round.ready.len() == self.ranks as usize {
                        self.broadcast(&ToMember::Freeze { generation });
                    }
                }
            }
            ToCoordinator::Committed {
                generation,
                freeze_began_unix_us,
                freeze_ms,
                ..
            } => {
                if let Some(round) = self.round_of(generation) {
                    let commit = Commit {
                        freeze_began_unix_us,
                        freeze_ms,
                    };
                    round.committed.insert(rank, commit);
                    if round.committed.len() == self.ranks as usize {
                        self.committed();
                    }
                }
            }
            ToCoordinator::Failed { generation, why } => {
                if self.round_of(generation).is_some() {
                    self.abandon(&format!("rank {rank} could not take its part: {why}"));
                }
            }
            ToCoordinator::Copied { generation, tier } => {
                if let Some(round) = self.round_of(generation) {
                    round.copied_early.insert(rank);
                } else {
                    self.copied(generation, tier, rank);
                }
            }
            ToCoordinator::CopyFailed {
                generation,
                tier,
                why,
            } => {
                let why = format!("rank {rank}'s copy failed: {why}");
                if let Some(round) = self.round_of(generation) {
                    round.copy_failed_early.get_or_insert(why);
                } else if self.copies.remove(&(generation, tier)).is_some() {
                    self.broadcast(&ToMember::NotComplete {
                        generation,
                        tier,
                        why,
                    });
                }
            }
            ToCoordinator::Finished => {
                if let Some(m) = self.members.get_mut(&rank) {
                    m.finished = true;
                }
                self.ending = true;
            }
            ToCoordinator::Holdings { held } => self.holdings(rank, held),
            ToCoordinator::Verified {
                generation,
                tier,
                problems,
            } => self.verified(rank, generation, tier, problems),
        }
    }

    fn round_of(&mut self, generation: u64) -> Option<&mut Round> {
        self.round.as_mut().filter(|r| r.generation == generation)
    }

    fn on_time(&mut self, now: Instant) {
        if let Some(round) = &self.round
            && now >= round.started + self.timeout
        {
            let not_ready: Vec<u32> = (0..self.ranks)
                .filter(|r| !round.ready.contains(r))
                .collect();
            let (late, step) = if not_ready.is_empty() {
                let uncommitted = (0..self.ranks)
                    .filter(|r| !round.committed.contains_key(r))
                    .collect();
                (uncommitted, "commit")
            } else {
                (not_ready, "reach the freeze")
            };
            let why = format!(
                "{} did not {step} within {} s (hung, or slower than [coordination] timeout)",
                name_ranks(&late),
                self.timeout.as_secs_f64()
            );
            self.abandon(&why);
        }
        if self.agreement.is_some() {
            self.agreement_on_time(now);
        }
        let due = self.schedule.as_mut().and_then(|s| s.take_due(now));
        match due {
            Some(tier) if self.ending => {
                crate::debug!("coordinator: {tier} checkpoint not taken, the job is ending");
            }
            Some(tier) => self.ask(Ask {
                tier,
                stop: false,
                askers: Vec::new(),
            }),
            None => {}
        }
    }

    /// Starts a generation, or keeps the request for when the running one ends; a request
    /// the running one already satisfies is served by it. Askers hear which one it is.
    fn ask(&mut self, ask: Ask) {
        if let Some(round) = &self.round {
            let (generation, covered) = (
                round.generation,
                round.tier >= ask.tier && (round.stop || !ask.stop),
            );
            if covered {
                self.tell_askers(&ask.askers, generation);
            } else {
                self.pending = Some(match self.pending.take() {
                    Some(mut p) => {
                        p.tier = p.tier.max(ask.tier);
                        p.stop |= ask.stop;
                        p.askers.extend(ask.askers);
                        p
                    }
                    None => ask,
                });
            }
            return;
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        self.tell_askers(&ask.askers, generation);
        let absent: Vec<u32> = (0..self.ranks)
            .filter(|r| !self.members.contains_key(r))
            .collect();
        let ended: Vec<u32> = self
            .members
            .iter()
            .filter(|(_, m)| m.finished)
            .map(|(&r, _)| r)
            .collect();
        let why = if !absent.is_empty() {
            Some(format!(
                "{} not joined the job's coordinator (not started yet, ended, or cannot \
                 reach it)",
                have(&absent)
            ))
        } else if !ended.is_empty() {
            Some(format!("the job of {} has ended", name_ranks(&ended)))
        } else {
            None
        };
        if let Some(why) = why {
            crate::debug!(
                "generation {generation} of job {} not taken: {why}",
                self.job
            );
            self.broadcast(&ToMember::Abandoned { generation, why });
            return;
        }
        self.round = Some(Round {
            generation,
            tier: ask.tier,
            stop: ask.stop,
            started: Instant::now(),
            ready: BTreeSet::new(),
            committed: BTreeMap::new(),
            copied_early: BTreeSet::new(),
            copy_failed_early: None,
        });
        self.broadcast(&ToMember::Checkpoint {
            generation,
            tier: ask.tier,
            stop: ask.stop,
        });
    }

    fn committed(&mut self) {
        let Some(round) = self.round.take() else {
            return;
        };
        let starts = round.committed.values().map(|c| c.freeze_began_unix_us);
        let skew_us = starts.clone().max().unwrap_or(0) - starts.min().unwrap_or(0);
        let summary = Summary {
            ranks: self.ranks,
            skew_ms: skew_us as f64 / 1000.0,
            commit_ms: round.started.elapsed().as_secs_f64() * 1000.0,
            freeze_ms_max: round
                .committed
                .values()
                .map(|c| c.freeze_ms)
                .fold(0.0, f64::max),
        };
        self.broadcast(&ToMember::Complete {
            generation: round.generation,
            tier: TierKind::Local,
            summary: summary.clone(),
        });
        if round.tier != TierKind::Local {
            let key = (round.generation, round.tier);
            if let Some(why) = round.copy_failed_early {
                self.broadcast(&ToMember::NotComplete {
                    generation: round.generation,
                    tier: round.tier,
                    why,
                });
            } else {
                let copies = Copies {
                    done: round.copied_early,
                    summary,
                };
                self.copies.insert(key, copies);
                self.complete_copies_if_done(key);
            }
        }
        self.next_pending();
    }

    fn next_pending(&mut self) {
        if let Some(ask) = self.pending.take() {
            self.ask(ask);
        }
    }

    fn abandon(&mut self, why: &str) {
        let Some(round) = self.round.take() else {
            return;
        };
        crate::debug!(
            "generation {} of job {} failed: {why}",
            round.generation,
            self.job
        );
        self.broadcast(&ToMember::Abandoned {
            generation: round.generation,
            why: why.to_string(),
        });
        self.next_pending();
    }

    fn copied(&mut self, generation: u64, tier: TierKind, rank: u32) {
        let key = (generation, tier);
        if let Some(copies) = self.copies.get_mut(&key) {
            copies.done.insert(rank);
            self.complete_copies_if_done(key);
        }
    }

    fn complete_copies_if_done(&mut self, key: (u64, TierKind)) {
        let done = self
            .copies
            .get(&key)
            .is_some_and(|c| c.done.len() == self.ranks as usize);
        if done && let Some(copies) = self.copies.remove(&key) {
            self.broadcast(&ToMember::Complete {
                generation: key.0,
                tier: key.1,
                summary: copies.summary,
            });
        }
    }

    fn fail_copies_of(&mut self, rank: u32, why: &str) {
        let open: Vec<(u64, TierKind)> = self
            .copies
            .iter()
            .filter(|(_, c)| !c.done.contains(&rank))
            .map(|(&k, _)| k)
            .collect();
        for (generation, tier) in open {
            self.copies.remove(&(generation, tier));
            self.broadcast(&ToMember::NotComplete {
                generation,
                tier,
                why: why.to_string(),
            });
        }
    }

    fn tell_askers(&mut self, askers: &[(u32, u64)], generation: u64) {
        for &(rank, id) in askers {
            if let Some(member) = self.members.get_mut(&rank) {
                let _ = member.writer.send(&ToMember::Asked { id, generation });
            }
        }
    }

    fn broadcast(&mut self, message: &ToMember) {
        // Rank 0 last: it is this process, and a verdict it acts on (a restore, an exit)
        // must not overtake the other ranks' copies.
        let (own, others): (Vec<_>, Vec<_>) =
            self.members.iter_mut().partition(|(rank, _)| **rank == 0);
        for (_, member) in others.into_iter().chain(own) {
            // A rank whose connection broke is noticed by its reader thread.
            let _ = member.writer.send(message);
        }
    }
}

/// The recovery line, at a restore.
impl Coordinator {
    fn holdings(&mut self, rank: u32, held: Vec<Held>) {
        let Some(agreement) = &mut self.agreement else {
            return;
        };
        agreement.holdings.insert(rank, held);
        if agreement.holdings.len() < self.ranks as usize {
            return;
        }
        let (candidates, lines) = candidates(&agreement.holdings, self.ranks);
        agreement.candidates = candidates;
        agreement.lines = lines;
        self.verify_next();
    }

    /// Asks every rank to verify the newest candidate left, or ends the agreement.
    fn verify_next(&mut self) {
        let Some(agreement) = &mut self.agreement else {
            return;
        };
        if agreement.candidates.is_empty() {
            let mut lines = std::mem::take(&mut agreement.lines);
            lines.push(format!(
                "recovery line: no generation is complete with an intact copy for every \
                 one of the {} ranks",
                self.ranks
            ));
            self.choose(None, Vec::new(), lines, None);
            return;
        }
        let generation = agreement.candidates.remove(0);
        agreement.verifying = Some(Verifying {
            generation,
            started: Instant::now(),
            answers: BTreeMap::new(),
        });
        self.broadcast(&ToMember::Verify { generation });
    }

    fn verified(
        &mut self,
        rank: u32,
        generation: u64,
        tier: Option<TierKind>,
        problems: Vec<String>,
    ) {
        let ranks = self.ranks as usize;
        let Some(agreement) = &mut self.agreement else {
            return;
        };
        let Some(Verifying {
            generation: g,
            answers,
            ..
        }) = &mut agreement.verifying
        else {
            return;
        };
        if *g != generation {
            return;
        }
        answers.insert(rank, (tier, problems));
        if answers.len() < ranks {
            return;
        }
        let answers = std::mem::take(answers);
        agreement.verifying = None;
        let bad: Vec<String> = answers
            .iter()
            .filter(|(_, (tier, _))| tier.is_none())
            .map(|(rank, (_, problems))| {
                format!("rank {rank} has no valid copy ({})", problems.join("; "))
            })
            .collect();
        if bad.is_empty() {
            let tiers: Vec<Option<TierKind>> = answers.values().map(|(t, _)| *t).collect();
            let mut lines = std::mem::take(&mut agreement.lines);
            let each: Vec<String> = answers
                .iter()
                .map(|(rank, (tier, _))| {
                    format!(
                        "rank {rank}: {}",
                        tier.map_or("-".into(), |t| t.to_string())
                    )
                })
                .collect();
            lines.push(format!(
                "recovery line: generation {generation} for all {ranks} ranks ({})",
                each.join(", ")
            ));
            self.choose(Some(generation), tiers, lines, None);
        } else {
            agreement.lines.push(format!(
                "recovery line: generation {generation} skipped: {}",
                bad.join("; ")
            ));
            self.verify_next();
        }
    }

    /// Checking a generation's copies reads whole images: it gets at least
    /// [`super::VERIFY_AT_LEAST`], whatever the (shorter) timeout for everything else.
    fn verify_timeout(&self) -> Duration {
        self.timeout.max(super::VERIFY_AT_LEAST)
    }

    fn agreement_on_time(&mut self, now: Instant) {
        let Some(agreement) = &self.agreement else {
            return;
        };
        let secs = self.timeout.as_secs_f64();
        let why = match &agreement.verifying {
            None if now >= agreement.started + self.timeout
                && agreement.holdings.len() < self.ranks as usize =>
            {
                let missing: Vec<u32> = (0..self.ranks)
                    .filter(|r| !agreement.holdings.contains_key(r))
                    .collect();
                format!(
                    "{} not joined the restore within {secs} s (every rank must run \
                     `restore --auto` or `run --resume`)",
                    have(&missing)
                )
            }
            Some(Verifying {
                generation,
                started,
                answers,
            }) if now >= *started + self.verify_timeout() => {
                let missing: Vec<u32> = (0..self.ranks)
                    .filter(|r| !answers.contains_key(r))
                    .collect();
                format!(
                    "{} did not finish checking generation {generation} within {} s",
                    name_ranks(&missing),
                    self.verify_timeout().as_secs_f64()
                )
            }
            _ => return,
        };
        self.disagree(why);
    }

    /// The agreement fails for every rank: nobody restores, nobody starts afresh.
    fn disagree(&mut self, why: String) {
        let Some(agreement) = &mut self.agreement else {
            return;
        };
        let mut lines = std::mem::take(&mut agreement.lines);
        lines.push(format!("recovery line: none agreed: {why}"));
        self.choose(None, Vec::new(), lines, Some(why));
    }

    fn choose(
        &mut self,
        generation: Option<u64>,
        tiers: Vec<Option<TierKind>>,
        lines: Vec<String>,
        failed: Option<String>,
    ) {
        self.agreement = None;
        self.broadcast(&ToMember::Chosen {
            generation,
            tiers,
            lines,
            failed,
        });
        if let Some(g) = generation {
            self.next_generation = self.next_generation.max(g + 1);
        }
        if self.members.len() == self.ranks as usize {
            self.start_schedule();
        }
    }
}

/// The generations worth verifying, newest first: complete ones every rank holds a copy
/// of; and a line for each newer one passed over, saying why.
fn candidates(holdings: &BTreeMap<u32, Vec<Held>>, ranks: u32) -> (Vec<u64>, Vec<String>) {
    let all: BTreeSet<u64> = holdings.values().flatten().map(|h| h.generation).collect();
    let complete: BTreeSet<u64> = holdings
        .values()
        .flatten()
        .filter(|h| h.complete)
        .map(|h| h.generation)
        .collect();
    let mut chosen = Vec::new();
    let mut lines = Vec::new();
    for &generation in all.iter().rev() {
        let lacking: Vec<u32> = (0..ranks)
            .filter(|r| {
                !holdings
                    .get(r)
                    .is_some_and(|h| h.iter().any(|h| h.generation == generation))
            })
            .collect();
        if !complete.contains(&generation) {
            // Newer than every complete one: a generation that failed, or was cut short.
            if complete.iter().any(|&c| c < generation) {
                lines.push(format!(
                    "recovery line: generation {generation} skipped: not complete (no rank \
                     has its record: it failed or was cut short)"
                ));
            }
        } else if !lacking.is_empty() {
            lines.push(format!(
                "recovery line: generation {generation} skipped: {} no copy on any tier",
                have_plural(&lacking, "has", "have")
            ));
        } else {
            chosen.push(generation);
        }
    }
    (chosen, lines)
}

/// "rank 3" or "ranks 1, 2".
pub fn name_ranks(ranks: &[u32]) -> String {
    let list: Vec<String> = ranks.iter().map(u32::to_string).collect();
    match ranks.len() {
        1 => format!("rank {}", list[0]),
        _ => format!("ranks {}", list.join(", ")),
    }
}

fn have(ranks: &[u32]) -> String {
    have_plural(ranks, "has", "have")
}

fn have_plural(ranks: &[u32], one: &str, many: &str) -> String {
    let verb = if ranks.len() == 1 { one } else { many };
    format!("{} {verb}", name_ranks(ranks))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(generation: u64, complete: bool) -> Held {
        Held {
            generation,
            tiers: vec![TierKind::Local],
            complete,
        }
    }

    #[test]
    fn candidates_are_complete_generations_every_rank_holds() {
        let holdings = BTreeMap::from([
            (0, vec![held(3, true), held(4, true), held(5, false)]),
            (1, vec![held(3, true), held(5, false)]),
        ]);
        let (chosen, lines) = candidates(&holdings, 2);
        assert_eq!(chosen, [3]);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("generation 5 skipped: not complete"));
        assert!(lines[1].contains("generation 4 skipped: rank 1 has no copy"));
        let missing_rank = BTreeMap::from([(0, vec![held(3, true)])]);
        let (chosen, lines) = candidates(&missing_rank, 2);
        assert!(chosen.is_empty());
        assert!(lines[0].contains("rank 1 has no copy"), "{lines:?}");
    }

    #[test]
    fn ranks_are_named_in_one_phrase() {
        assert_eq!(name_ranks(&[3]), "rank 3");
        assert_eq!(have(&[1, 2]), "ranks 1, 2 have");
    }
}

#[cfg(test)]
#[path = "coordinator_tests.rs"]
mod state_tests;
