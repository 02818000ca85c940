//! Relays as one long-lived stream per sender, receiver and lane
//! (`RelayStream` in `proto/cluster.proto`).
//!
//! Every payload carries a sequence number (counted from 1 in each
//! incarnation of the sender, its *epoch*) and gets its own answer once
//! the receiving application owns it, so one slow payload no longer holds
//! back the answers of the payloads sent with it (answers that become
//! ready close together go in one message: [`ANSWER_GATHER`]). When a stream
//! breaks mid-traffic the sender opens a new one and sends again, in
//! order, every payload that had no answer; the receiver remembers which
//! it already owns (or is still waiting for) and answers those without
//! handing them on a second time. Together: nothing a broken stream
//! carried is lost, and nothing is delivered twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tonic::Status as RpcStatus;

use crate::proto::{RelayAnswers, RelayFrames, RelayMark};
use crate::{Incoming, Marker, Status};

/// The application's ask to record a mark before it writes a payload
/// ([`Marker::mark`]); `gate` fires once the sender has recorded it.
pub(crate) struct MarkRequest {
    pub seq: u64,
    pub session: String,
    pub number: u64,
    pub gate: oneshot::Sender<()>,
}

/// Payloads sent and not yet answered, per stream, at most.
pub(crate) const WINDOW: usize = 4096;
/// Payloads per frame message, at most.
pub(crate) const FRAME: usize = 256;
/// Answer messages on one stream go at most one per this long: an answer
/// that becomes ready goes at once after a quiet spell, else this long
/// after the last answer message, with every answer ready by then (at
/// once when [`FRAME`] are ready). Each answer message is a write and a
/// wake-up on both nodes: at 12,000 msg/s over three nodes, gathering for
/// 4 ms took a tenth off the servers' CPU (1 ms made no difference: the
/// timer counts whole milliseconds). What waiting costs: the sender keeps
/// its copy of the payload, and answers its receipt (the sending client's
/// XEP-0198 `<a/>`), or routes a refused payload again, up to this much
/// later; and should this node die meanwhile, a payload it owned and
/// wrote unmarked is sent again (as one whose answer was in transit).
pub const ANSWER_GATHER: Duration = Duration::from_millis(4);
/// A stream forgotten this long after its last frame is dropped from the
/// receiver's memory (its sender restarted or left). Long: a sender cut
/// off by a partition sends again what had no answer when it heals, and
/// what is kept per stream is bounded by the sender's window.
const FORGET_AFTER: Duration = Duration::from_secs(6 * 3600);

/// What one sender's stream has been seen to carry: the payloads owned and
/// those handed on and not yet answered by the application.
#[derive(Default)]
struct Stream {
    owned: BTreeSet<u64>,
    waiting: HashMap<u64, watch::Receiver<Option<bool>>>,
    last: Option<Instant>,
    /// The highest `below` seen: the sender has settled every payload
    /// under it, so one of those arriving late (from a stream it already
    /// left) is never handed on.
    floor: u64,
}

/// The receiver's memory of every sender's streams: (sender, epoch, lane).
#[derive(Default)]
pub struct Seen {
    streams: Mutex<HashMap<(u64, u64, u32), Stream>>,
    /// Test and operations switch: cut every stream right after this many
    /// payloads were handed on (0: never), answers not sent.
    pub cut_every: AtomicU64,
    handed_on: AtomicU64,
    /// Streams the switch has cut so far.
    pub cuts: AtomicU64,
    /// Answer messages sent on every stream with owned or refused
    /// payloads in them (one or more each; see [`ANSWER_GATHER`]); marks
    /// are not counted.
    pub answer_messages: AtomicU64,
    /// Test switch: answer streams Unimplemented, as a node from before
    /// them does (senders fall back to `Relay` batches).
    pub refuse_streams: AtomicBool,
}

/// What to do with one payload.
enum Fate {
    /// Already owned here: answer (with the others ready), do not hand it
    /// on again.
    Owned,
    /// Handed on by an earlier stream, not answered yet: answer with that.
    Waiting(watch::Receiver<Option<bool>>),
    /// New: hand it on; the sender answers the watchers.
    New(watch::Sender<Option<bool>>),
}

impl Seen {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u64, u32), Stream>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fate(&self, key: (u64, u64, u32), below: u64, seq: u64) -> Fate {
        let mut all = self.lock();
        let s = all.entry(key).or_default();
        s.last = Some(Instant::now());
        if below > s.floor {
            // The sender has had every answer below `below`.
            s.floor = below;
            s.owned = s.owned.split_off(&below);
        }
        if seq < s.floor || s.owned.contains(&seq) {
            return Fate::Owned;
        }
        if let Some(w) = s.waiting.get(&seq) {
            return Fate::Waiting(w.clone());
        }
        let (tx, rx) = watch::channel(None);
        s.waiting.insert(seq, rx);
        Fate::New(tx)
    }

    fn answered(&self, key: (u64, u64, u32), seq: u64, owned: bool) {
        let mut all = self.lock();
        if let Some(s) = all.get_mut(&key) {
            s.waiting.remove(&seq);
            if owned {
                s.owned.insert(seq);
            }
        }
    }

    fn forget_idle(&self) {
        let now = Instant::now();
        self.lock().retain(|_, s| {
            !s.waiting.is_empty() || s.last.is_none_or(|t| now.duration_since(t) < FORGET_AFTER)
        });
    }

    /// Whether the fault switch cuts the stream after this payload.
    fn cut_now(&self) -> bool {
        let every = self.cut_every.load(Ordering::Relaxed);
        let n = self.handed_on.fetch_add(1, Ordering::Relaxed) + 1;
        let cut = every > 0 && n.is_multiple_of(every);
        if cut {
            self.cuts.fetch_add(1, Ordering::Relaxed);
        }
        cut
    }
}

/// The receiving end's view of the node, for one stream.
pub struct Receiving {
    /// Who opened the stream: frames may speak only for its node.
    pub caller: crate::mesh_tls::Caller,
    pub seen: Arc<Seen>,
    pub isolated: Arc<AtomicBool>,
    pub status: watch::Receiver<Status>,
    pub relay: mpsc::Sender<Incoming>,
    pub stale_after: Duration,
    pub answer_within: Duration,
    pub catch_up_within: Duration,
}

type Answers = mpsc::Sender<Result<RelayAnswers, RpcStatus>>;

/// Serve one incoming stream: hand on each payload in order, answer each
/// once the application owns it (or could not take it).
pub async fn serve(r: Receiving, mut frames: tonic::Streaming<RelayFrames>, answers: Answers) {
    r.seen.forget_idle();
    let mut pending: JoinSet<(u64, bool)> = JoinSet::new();
    // Marks asked for by the application, and the writes waiting for the
    // sender to record them, by payload. Dropped with the stream: the
    // writes then go ahead unmarked.
    let (mark_tx, mut mark_rx) = mpsc::unbounded_channel::<MarkRequest>();
    let mut gates: HashMap<u64, Vec<oneshot::Sender<()>>> = HashMap::new();
    let mut reading = true;
    // Set once the stream is cut (the fault switch, or the sender left):
    // answers still come in and are remembered, but none is sent on it.
    let mut cut = false;
    // Why the stream ends (stale frames, cut off), sent after the answers
    // of everything already handed on: a payload owned here is answered
    // owned, or its sender would route it again (a duplicate).
    let mut ending: Option<RpcStatus> = None;
    let mut waited_for = 0u64;
    let mut gathered = Gathered::default();
    loop {
        tokio::select! {
            frame = frames.message(), if reading => match frame {
                Ok(Some(mut f)) => {
                    // Answers due, or a frame that may wait (to apply what
                    // its sender had applied): the answers go first.
                    let may_wait = must_catch_up(&r, f.applied, waited_for);
                    if !cut && (may_wait || gathered.due()) && !gathered.send(&r, &answers).await {
                        cut = true;
                    }
                    match match marked(&r, &mut f, &mut gates) {
                        Ok(()) => take(&r, f, &mut pending, &answers, &mut waited_for, &mark_tx).await,
                        Err(e) => Err(e),
                    } {
                        Ok(()) => {}
                        Err(Stop::Cut(e)) => {
                            tracing::debug!(reason = %e.message(), "relay stream cut");
                            let _ = answers.send(Err(e)).await;
                            reading = false;
                            cut = true;
                        }
                        Err(Stop::End(e)) => {
                            tracing::debug!(reason = %e.message(), "relay stream ends");
                            reading = false;
                            ending = Some(e);
                        }
                    }
                }
                _ => reading = false,
            },
            Some(done) = pending.join_next(), if !pending.is_empty() => {
                gathered.record(done);
                while let Some(d) = pending.try_join_next() {
                    gathered.record(d);
                }
                gathered.schedule();
            },
            _ = async {
                match gathered.at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            }, if gathered.at.is_some() => {
                // A write still waiting for its mark keeps waiting (for the
                // confirmation, or its deadline): this answer is not with
                // the sender yet.
                if cut {
                    gathered.at = None;
                } else if !gathered.send(&r, &answers).await {
                    cut = true; // the sender is gone; it sends them again
                }
            },
            // Only while something can still be handed on or answered:
            // this end holds a sender itself, so the channel never ends.
            Some(m) = mark_rx.recv(), if !cut && (reading || !pending.is_empty()) => {
                let mut out = RelayAnswers::default();
                let mut ask = |m: MarkRequest| {
                    out.marks.push(RelayMark { seq: m.seq, session: m.session, number: m.number });
                    gates.entry(m.seq).or_default().push(m.gate);
                };
                ask(m);
                while let Ok(m) = mark_rx.try_recv() {
                    ask(m);
                }
                if answers.send(Ok(out)).await.is_err() {
                    cut = true;
                    gates.clear();
                }
            },
            else => break,
        }
    }
    // Never left gathered: `at` is set while any answer waits, and keeps
    // the loop going until they are sent (or the stream was cut).
    debug_assert!(cut || gathered.is_empty());
    if let Some(e) = ending.filter(|_| !cut) {
        let _ = answers.send(Err(e)).await;
    }
}

/// Answers ready and not yet sent on one stream (see [`ANSWER_GATHER`]).
#[derive(Default)]
struct Gathered {
    out: RelayAnswers,
    /// When they go: set while any waits.
    at: Option<tokio::time::Instant>,
    /// When the last answer message went.
    last_sent: Option<tokio::time::Instant>,
}

impl Gathered {
    fn is_empty(&self) -> bool {
        self.out.owned.is_empty() && self.out.refused.is_empty()
    }

    /// One handed-on payload's answer.
    fn record(&mut self, done: Result<(u64, bool), tokio::task::JoinError>) {
        match done {
            Ok((seq, true)) => self.out.owned.push(seq),
            Ok((seq, false)) => self.out.refused.push(seq),
            // The task waiting for the application's answer failed: no
            // answer; the sender sends the payload again after a break.
            Err(e) => tracing::warn!(error = %e, "relay answer task failed"),
        }
    }

    /// When what is ready goes: at once after a quiet spell, else
    /// ANSWER_GATHER after the last answer message (at once when FRAME
    /// are ready).
    fn schedule(&mut self) {
        let now = tokio::time::Instant::now();
        if self.out.owned.len() + self.out.refused.len() >= FRAME {
            self.at = Some(now);
        } else if !self.is_empty() && self.at.is_none() {
            self.at = Some(self.last_sent.map_or(now, |l| (l + ANSWER_GATHER).max(now)));
        }
    }

    fn due(&self) -> bool {
        self.at.is_some_and(|t| t <= tokio::time::Instant::now())
    }

    /// Send what is ready as one message (nothing when none is); false
    /// when the sender is gone.
    async fn send(&mut self, r: &Receiving, answers: &Answers) -> bool {
        self.at = None;
        if self.is_empty() {
            return true;
        }
        let answer = std::mem::take(&mut self.out);
        if answers.send(Ok(answer)).await.is_err() {
            return false;
        }
        r.seen.answer_messages.fetch_add(1, Ordering::Relaxed);
        self.last_sent = Some(tokio::time::Instant::now());
        true
    }
}

/// Whether a frame must wait for this node to apply what its sender had
/// applied (once per level on a stream).
fn must_catch_up(r: &Receiving, applied: u64, waited_for: u64) -> bool {
    applied > waited_for && applied > r.status.borrow().applied
}

/// Open the writes whose marks the sender says it recorded.
fn marked(
    r: &Receiving,
    f: &mut RelayFrames,
    gates: &mut HashMap<u64, Vec<oneshot::Sender<()>>>,
) -> Result<(), Stop> {
    if f.marked.is_empty() {
        return Ok(());
    }
    if let Err(e) = r.caller.speaks_for(f.from) {
        return Err(Stop::Cut(e));
    }
    for seq in std::mem::take(&mut f.marked) {
        for gate in gates.remove(&seq).unwrap_or_default() {
            let _ = gate.send(());
        }
    }
    Ok(())
}

/// Why a stream stops being read.
enum Stop {
    /// At once, answers not sent (the fault switch: a broken connection).
    Cut(RpcStatus),
    /// After answering what was already handed on.
    End(RpcStatus),
}

/// Take one frame message: refuse the whole stream when this node is cut
/// off or the frames are stale; otherwise hand each new payload on.
async fn take(
    r: &Receiving,
    f: RelayFrames,
    pending: &mut JoinSet<(u64, bool)>,
    answers: &Answers,
    waited_for: &mut u64,
    marks: &mpsc::UnboundedSender<MarkRequest>,
) -> Result<(), Stop> {
    if f.payloads.is_empty() {
        return Ok(()); // marks only (see `marked`)
    }
    // Read long after it was sent (this process was paused): the sender
    // may have given up on it and routed it elsewhere. Checked again
    // before each payload is handed on.
    let (from, sent_at) = (f.from, f.sent_at_ms);
    let stale = || {
        let age = crate::transport::unix_ms().saturating_sub(sent_at);
        (sent_at != 0 && age > r.stale_after.as_millis() as u64).then(|| {
            tracing::warn!(from, age_ms = age, "refusing stale relay frames");
            Stop::End(RpcStatus::deadline_exceeded("stale relay frames"))
        })
    };
    if let Err(e) = r.caller.speaks_for(from) {
        return Err(Stop::Cut(e));
    }
    if r.isolated.load(Ordering::SeqCst) {
        return Err(Stop::End(RpcStatus::unavailable("isolated")));
    }
    if let Some(e) = stale() {
        return Err(e);
    }
    // Causality: what the sender had applied when it sent is applied here
    // first (bounded: a lagging node delivers late, not never), once per
    // level on a stream, so frames do not queue behind repeated waits.
    if must_catch_up(r, f.applied, *waited_for) {
        *waited_for = f.applied;
        let mut st = r.status.clone();
        let caught_up = tokio::time::timeout(r.catch_up_within, async {
            while st.borrow_and_update().applied < f.applied {
                if st.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        if caught_up.is_err() {
            tracing::info!(
                from = f.from,
                applied = f.applied,
                "relay handed on before this node applied as far as its sender"
            );
        }
    }
    let key = (f.from, f.epoch, f.lane);
    let marking = f.marking;
    for p in f.payloads {
        let seq = p.seq;
        match r.seen.fate(key, f.below, seq) {
            Fate::Owned => {
                pending.spawn(async move { (seq, true) });
            }
            Fate::Waiting(mut w) => {
                let within = r.answer_within;
                pending.spawn(async move {
                    let owned = tokio::time::timeout(within, w.wait_for(|v| v.is_some()))
                        .await
                        .is_ok_and(|r| r.is_ok_and(|v| *v == Some(true)));
                    (seq, owned)
                });
            }
            Fate::New(done) => {
                let not_handed = |why: Stop| {
                    r.seen.answered(key, seq, false);
                    let _ = done.send(Some(false));
                    Err(why)
                };
                if let Some(e) = stale() {
                    return not_handed(e);
                }
                let (receipt, rx) = oneshot::channel();
                // The sender leaving this stream (it gave up on it) stops
                // the handing on: what had no answer it sends again, or
                // gives back to be routed elsewhere.
                let handed = tokio::select! {
                    h = r.relay.send(Incoming {
                        from: f.from,
                        payload: p.payload,
                        receipt,
                        mark: marking.then(|| Marker { seq, tx: marks.clone() }),
                        marks: p
                            .marks
                            .into_iter()
                            .take(crate::MAX_MARKS)
                            .map(|m| crate::Mark { session: m.session, number: m.number })
                            .collect(),
                    }) => h.is_ok(),
                    _ = answers.closed() => {
                        return not_handed(Stop::Cut(RpcStatus::cancelled("the sender left the stream")));
                    }
                };
                if !handed {
                    return not_handed(Stop::End(RpcStatus::unavailable("stopping")));
                }
                let seen = r.seen.clone();
                let within = r.answer_within;
                pending.spawn(async move {
                    let owned = tokio::time::timeout(within, rx)
                        .await
                        .ok()
                        .and_then(|r| r.ok())
                        .unwrap_or(false);
                    seen.answered(key, seq, owned);
                    let _ = done.send(Some(owned));
                    (seq, owned)
                });
                if r.seen.cut_now() {
                    return Err(Stop::Cut(RpcStatus::unavailable(
                        "relay stream cut (fault switch)",
                    )));
                }
            }
        }
    }
    Ok(())
}

/// One payload sent and not answered yet.
pub(crate) struct InFlight<T> {
    pub item: T,
    pub sent: Instant,
}

/// The sending side's numbering for one receiver and lane: what is in
/// flight, by sequence number, survives a broken stream.
pub(crate) struct Outbox<T> {
    pub epoch: u64,
    pub lane: u32,
    pub next: u64,
    pub in_flight: BTreeMap<u64, InFlight<T>>,
}

impl<T> Outbox<T> {
    pub fn new(epoch: u64, lane: u32) -> Self {
        Outbox {
            epoch,
            lane,
            next: 1,
            in_flight: BTreeMap::new(),
        }
    }

    /// Every sequence number below this has been answered.
    pub fn below(&self) -> u64 {
        self.in_flight.keys().next().copied().unwrap_or(self.next)
    }

    /// When the oldest payload in flight stops being worth waiting for.
    pub fn oldest_sent(&self) -> Option<Instant> {
        self.in_flight.values().map(|f| f.sent).min()
    }
}
