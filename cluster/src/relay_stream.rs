//! Relays as one long-lived stream per sender, receiver and lane
//! (`RelayStream` in `proto/cluster.proto`).
//!
//! Every payload carries a sequence number (counted from 1 in each
//! incarnation of the sender, its *epoch*) and gets its own answer as soon
//! as the receiving application owns it, so one slow payload no longer
//! holds back the answers of the payloads sent with it. When a stream
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

use crate::proto::{RelayAnswers, RelayFrames};
use crate::{Incoming, Status};

/// Payloads sent and not yet answered, per stream, at most.
pub(crate) const WINDOW: usize = 4096;
/// Payloads per frame message, at most.
pub(crate) const FRAME: usize = 256;
/// A stream forgotten this long after its last frame is dropped from the
/// receiver's memory (its sender restarted or left).
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// What one sender's stream has been seen to carry: the payloads owned and
/// those handed on and not yet answered by the application.
#[derive(Default)]
struct Stream {
    owned: BTreeSet<u64>,
    waiting: HashMap<u64, watch::Receiver<Option<bool>>>,
    last: Option<Instant>,
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
    /// Test switch: answer streams Unimplemented, as a node from before
    /// them does (senders fall back to `Relay` batches).
    pub refuse_streams: AtomicBool,
}

/// What to do with one payload.
enum Fate {
    /// Already owned here: answer at once, do not hand it on again.
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
        if below > 0 {
            // The sender has had every answer below `below`.
            s.owned = s.owned.split_off(&below);
        }
        if s.owned.contains(&seq) {
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
    let mut reading = true;
    // Set once the stream is cut (isolated, stale, fault switch): answers
    // still come in and are remembered, but none is sent on it any more.
    let mut cut = false;
    loop {
        tokio::select! {
            frame = frames.message(), if reading => match frame {
                Ok(Some(f)) => {
                    if let Err(e) = take(&r, f, &mut pending).await {
                        tracing::debug!(reason = %e.message(), "relay stream cut");
                        let _ = answers.send(Err(e)).await;
                        reading = false;
                        cut = true;
                    }
                }
                _ => reading = false,
            },
            Some(done) = pending.join_next(), if !pending.is_empty() => {
                let mut out = RelayAnswers::default();
                let mut record = |d: Result<(u64, bool), tokio::task::JoinError>| {
                    if let Ok((seq, owned)) = d {
                        if owned { out.owned.push(seq) } else { out.refused.push(seq) }
                    }
                };
                record(done);
                while let Some(d) = pending.try_join_next() {
                    record(d);
                }
                if !cut && answers.send(Ok(out)).await.is_err() {
                    cut = true; // the sender is gone; it sends them again
                }
            },
            else => break,
        }
    }
}

/// Take one frame message: refuse the whole stream when this node is cut
/// off or the frames are stale; otherwise hand each new payload on.
async fn take(
    r: &Receiving,
    f: RelayFrames,
    pending: &mut JoinSet<(u64, bool)>,
) -> Result<(), RpcStatus> {
    if r.isolated.load(Ordering::SeqCst) {
        return Err(RpcStatus::unavailable("isolated"));
    }
    let age = crate::transport::unix_ms().saturating_sub(f.sent_at_ms);
    if f.sent_at_ms != 0 && age > r.stale_after.as_millis() as u64 {
        // Read long after it was sent (this process was paused): the
        // sender may have given up on it and routed it elsewhere.
        tracing::warn!(from = f.from, age_ms = age, "refusing stale relay frames");
        return Err(RpcStatus::deadline_exceeded("stale relay frames"));
    }
    // Causality: what the sender had applied when it sent is applied here
    // first (bounded: a lagging node delivers late, not never).
    if f.applied > r.status.borrow().applied {
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
    for p in f.payloads {
        let seq = p.seq;
        match r.seen.fate(key, f.below, seq) {
            Fate::Owned => {
                pending.spawn(async move { (seq, true) });
            }
            Fate::Waiting(mut w) => {
                pending.spawn(async move {
                    let owned = w
                        .wait_for(|v| v.is_some())
                        .await
                        .is_ok_and(|v| *v == Some(true));
                    (seq, owned)
                });
            }
            Fate::New(done) => {
                let (receipt, rx) = oneshot::channel();
                let handed = r
                    .relay
                    .send(Incoming {
                        from: f.from,
                        payload: p.payload,
                        receipt,
                    })
                    .await;
                if handed.is_err() {
                    r.seen.answered(key, seq, false);
                    let _ = done.send(Some(false));
                    return Err(RpcStatus::unavailable("stopping"));
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
                    return Err(RpcStatus::unavailable("relay stream cut (fault switch)"));
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
