//! Raft messages to one peer as one long-lived stream (`RaftStream` in
//! `proto/cluster.proto`) instead of a `Send` call per batch, each waiting
//! for its answer before the next could go.
//!
//! Batches go out in order as they come, each with a number; the receiver
//! answers a number once that batch is with its Raft driver. When the
//! stream breaks, the sender opens a new one and sends again, in order,
//! every batch that had no answer: Raft ignores a message it already had,
//! and a forwarded proposal is applied once by its id (the dedup window),
//! so a broken connection loses no proposal and duplicates none. A peer
//! that stops answering (paused, cut off) is reported unreachable to
//! raft-rs, as a failed `Send` was. A node of an earlier version answers
//! Unimplemented and gets `Send` calls.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tonic::Status as RpcStatus;

use crate::mesh_tls::Caller;
use crate::proto::raft_client::RaftClient;
use crate::proto::{RaftAcked, RaftBatch};
use crate::transport::{dial, PeerLink, RaftInbox};

/// Answers the receiver may have queued for a stream's sender.
pub(crate) const ACKS: usize = 1024;
/// Unanswered batches kept for sending again, at most (the oldest that
/// carry no proposal go first: Raft sends again what it still needs).
const UNANSWERED: usize = 1024;
/// Bytes of unanswered batches kept, about at most (the channel to the
/// stream holds as much again).
const UNANSWERED_BYTES: usize = 64 << 20;
/// A stream not opened within this is a failed attempt.
const OPEN_WITHIN: Duration = Duration::from_secs(2);
/// No answer for this long while batches wait: the peer has stopped
/// reading (paused, cut off); the stream is given up and the peer reported
/// unreachable (the unary `Send` gave up after its 5 s call timeout).
const STUCK_AFTER: Duration = Duration::from_secs(5);
/// A forwarded proposal is sent again after a break only this long after
/// it was first sent: well within its proposer's wait (5 s in the server),
/// so it never lands after its proposer gave up on it, nor so late that
/// the dedup window no longer knows it. Past that, a leader change
/// proposes it again (the driver), or its proposer hears it failed.
const HOLD: Duration = Duration::from_secs(2);
/// Pause before opening again a stream the peer ended, so a peer that
/// refuses every stream is not dialled in a tight loop.
const REOPEN_PAUSE: Duration = Duration::from_millis(50);
/// Streams ended one after another with no answer on them: the peer is
/// reported unreachable and only young proposals are kept, so one batch it
/// cannot take is not sent again forever.
const FRUITLESS: u32 = 2;

/// Test and operations switches for the receiving side.
#[derive(Default)]
pub struct Switches {
    /// Cut every stream right after this many batches were handed to the
    /// driver (0: never), their answers not sent, as a broken connection.
    pub cut_every: AtomicU64,
    handed_on: AtomicU64,
    /// Streams the switch has cut so far.
    pub cuts: AtomicU64,
    /// Answer streams Unimplemented, as a node from before them does.
    pub refuse: AtomicBool,
}

struct Sent {
    /// Numbered (`batch.seq`) when first sent.
    batch: RaftBatch,
    /// When it was first sent (a resend keeps it).
    first: Instant,
    /// Carries a forwarded proposal: the one kind of Raft message nobody
    /// sends again by itself, so kept across a failed stream.
    proposes: bool,
}

struct Open {
    tx: mpsc::Sender<RaftBatch>,
    answers: tonic::Streaming<RaftAcked>,
    /// Set when the stream is given up: its request body ends at once,
    /// and what was queued on it is not sent.
    cancelled: Arc<AtomicBool>,
}

/// A stream's request body: the batches queued for it, until cancelled.
struct Outgoing {
    rx: mpsc::Receiver<RaftBatch>,
    cancelled: Arc<AtomicBool>,
}

impl tokio_stream::Stream for Outgoing {
    type Item = RaftBatch;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RaftBatch>> {
        if self.cancelled.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        self.rx.poll_recv(cx)
    }
}

/// The sending side of one peer's stream, owned by its peer task.
pub(crate) struct Outbox {
    client: Option<RaftClient<tonic::transport::Channel>>,
    open: Option<Open>,
    unanswered: VecDeque<Sent>,
    next: u64,
    /// The last answer, the stream's opening, or the first batch sent
    /// since all were answered: what "no answer for `STUCK_AFTER`" counts from.
    progress: Instant,
    /// Streams ended in a row without an answer.
    fruitless: u32,
    /// The peer answered Unimplemented: it gets `Send` calls.
    unsupported: bool,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            client: None,
            open: None,
            unanswered: VecDeque::new(),
            next: 0,
            progress: Instant::now(),
            fruitless: 0,
            unsupported: false,
        }
    }
}

impl Outbox {
    /// Whether batches to this peer go by stream.
    pub(crate) fn usable(&self) -> bool {
        !self.unsupported
    }

    /// The stream's next answer; pending while no stream is open.
    pub(crate) async fn answer(&mut self) -> Result<Option<RaftAcked>, RpcStatus> {
        match self.open.as_mut() {
            Some(o) => o.answers.message().await,
            None => std::future::pending().await,
        }
    }

    /// Take an answer (or the stream's end).
    pub(crate) async fn answered(
        &mut self,
        answer: Result<Option<RaftAcked>, RpcStatus>,
        link: &PeerLink,
    ) {
        let e = match answer {
            Ok(Some(a)) => {
                while self
                    .unanswered
                    .front()
                    .is_some_and(|s| s.batch.seq <= a.seq)
                {
                    self.unanswered.pop_front();
                }
                self.progress = Instant::now();
                self.fruitless = 0;
                return;
            }
            Ok(None) => None,
            Err(e) => Some(e),
        };
        if let Some(e) = &e {
            tracing::debug!(peer = link.peer, error = %e, "raft stream ended");
            // The receiver refused the first unanswered batch (it stops
            // there): sending it again would be refused again.
            if matches!(
                e.code(),
                tonic::Code::FailedPrecondition
                    | tonic::Code::PermissionDenied
                    | tonic::Code::InvalidArgument
            ) {
                if let Some(s) = self.unanswered.pop_front() {
                    tracing::warn!(
                        peer = link.peer,
                        seq = s.batch.seq,
                        error = %e,
                        "raft batch refused by its peer; dropped"
                    );
                }
            }
        }
        self.broken(link);
        if self.unanswered.is_empty() {
            self.fruitless = 0;
            return; // opened again with the next message
        }
        self.fruitless += 1;
        if self.fruitless >= FRUITLESS {
            self.give_up(link);
            return;
        }
        tokio::time::sleep(REOPEN_PAUSE).await;
        if !self.reopen(link).await && !self.unsupported {
            self.give_up(link);
        }
    }

    /// Send one batch. `Err(None)`: the peer is unreachable now (a
    /// proposal is kept for the next stream, a while). `Err(Some(batch))`:
    /// the peer takes no streams; the batch goes by `Send`, after
    /// [`Outbox::handed_back`].
    pub(crate) async fn send(
        &mut self,
        link: &PeerLink,
        mut batch: RaftBatch,
        proposes: bool,
    ) -> Result<(), Option<RaftBatch>> {
        if self.open.is_some()
            && !self.unanswered.is_empty()
            && self.progress.elapsed() > STUCK_AFTER
        {
            tracing::debug!(
                peer = link.peer,
                "raft stream unanswered too long; given up"
            );
            self.broken(link);
            self.give_up(link);
        }
        self.next += 1;
        batch.seq = self.next;
        let sent = Sent {
            batch,
            first: Instant::now(),
            proposes,
        };
        if self.open.is_none() && !self.reopen(link).await {
            if self.unsupported {
                return Err(Some(sent.batch));
            }
            if proposes {
                self.keep(sent, link);
            }
            return Err(None);
        }
        let Some(open) = self.open.as_ref() else {
            return Err(None);
        };
        if open.tx.try_send(sent.batch.clone()).is_err() {
            // The channel holds more than is kept: the peer stopped
            // reading long ago.
            self.broken(link);
            self.prune();
            if proposes {
                self.keep(sent, link);
            }
            return Err(None);
        }
        self.keep(sent, link);
        Ok(())
    }

    /// Once the peer turned out to have no streams: the proposals this
    /// held, to go by `Send` instead, in order (the rest Raft sends again).
    pub(crate) fn handed_back(&mut self) -> Vec<RaftBatch> {
        if !self.unsupported {
            return Vec::new();
        }
        self.prune();
        self.unanswered.drain(..).map(|s| s.batch).collect()
    }

    fn keep(&mut self, sent: Sent, link: &PeerLink) {
        if self.unanswered.is_empty() {
            // Waiting starts now: an idle stream is not a stuck one.
            self.progress = Instant::now();
        }
        self.unanswered.push_back(sent);
        let over_bytes = || {
            self.unanswered.len() > 64
                && self
                    .unanswered
                    .iter()
                    .map(|s| s.batch.messages.iter().map(Vec::len).sum::<usize>())
                    .sum::<usize>()
                    > UNANSWERED_BYTES
        };
        if self.unanswered.len() > UNANSWERED || over_bytes() {
            let i = self
                .unanswered
                .iter()
                .position(|s| !s.proposes)
                .unwrap_or(0);
            if let Some(s) = self.unanswered.remove(i) {
                if s.proposes {
                    tracing::warn!(
                        peer = link.peer,
                        "more than {UNANSWERED} forwarded proposals unanswered; the oldest is not sent again"
                    );
                }
            }
        }
    }

    /// After a failed attempt only young proposals are worth sending again
    /// (see [`HOLD`]): the rest Raft sends again itself, newer.
    fn prune(&mut self) {
        self.unanswered
            .retain(|s| s.proposes && s.first.elapsed() < HOLD);
    }

    /// The peer is unreachable for now: raft-rs hears it (and probes it
    /// later); a new stream is tried with the next message.
    fn give_up(&mut self, link: &PeerLink) {
        self.prune();
        self.fruitless = 0;
        let _ = link.report.try_send(crate::Cmd::Unreachable(link.peer));
    }

    fn broken(&mut self, link: &PeerLink) {
        if let Some(open) = self.open.take() {
            open.cancelled.store(true, Ordering::Release);
        }
        self.client = None;
        // It may come back as another version (see `batch::LogFormats`).
        link.formats.forget(link.peer);
    }

    /// Open a stream and send on it, in order, what had no answer.
    async fn reopen(&mut self, link: &PeerLink) -> bool {
        if link.isolated.load(Ordering::SeqCst) {
            return false;
        }
        // What is older than `HOLD` is not sent again (the peer may have
        // been away for long): Raft sends what it still needs, newer.
        self.unanswered.retain(|s| s.first.elapsed() < HOLD);
        if self.client.is_none() {
            self.client = dial(&link.auth, &link.addr, Some(link.peer), None)
                .await
                .ok();
        }
        let Some(client) = self.client.as_mut() else {
            return false;
        };
        let (tx, rx) = mpsc::channel(UNANSWERED + ACKS);
        let cancelled = Arc::new(AtomicBool::new(false));
        let opened = tokio::time::timeout(
            OPEN_WITHIN,
            client.raft_stream(link.auth.request(Outgoing {
                rx,
                cancelled: cancelled.clone(),
            })),
        )
        .await;
        let answers = match opened {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(e)) if e.code() == tonic::Code::Unimplemented => {
                tracing::info!(peer = link.peer, "peer has no raft streams; using Send");
                self.unsupported = true;
                return false;
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = link.peer, error = %e, "raft stream not opened");
                self.client = None;
                return false;
            }
            Err(_) => {
                tracing::debug!(peer = link.peer, "raft stream not opened in time");
                self.client = None;
                return false;
            }
        };
        for s in self.unanswered.iter() {
            // Room for all: the channel is larger than what is kept.
            let _ = tx.try_send(s.batch.clone());
        }
        self.progress = Instant::now();
        self.open = Some(Open {
            tx,
            answers,
            cancelled,
        });
        true
    }
}

/// The receiving side: batches in order to the driver, each answered with
/// its number once there; the first refused one ends the stream with the
/// reason (the sender drops it and goes on).
pub(crate) async fn serve(
    caller: Caller,
    inbox: RaftInbox,
    switches: Arc<Switches>,
    mut inbound: tonic::Streaming<RaftBatch>,
    tx: mpsc::Sender<Result<RaftAcked, RpcStatus>>,
) {
    loop {
        // Also ends when the sender stopped listening for answers.
        let next = tokio::select! {
            m = inbound.message() => m,
            _ = tx.closed() => return,
        };
        let batch = match next {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "raft stream from a peer broke");
                return;
            }
        };
        if switches.refuse.load(Ordering::SeqCst) {
            let _ = tx
                .send(Err(RpcStatus::unimplemented(
                    "raft streams refused (test switch)",
                )))
                .await;
            return;
        }
        let seq = batch.seq;
        let taken = match caller.speaks_for_node(batch.from) {
            Ok(()) => inbox.take(batch).await,
            Err(e) => Err(e),
        };
        let every = switches.cut_every.load(Ordering::SeqCst);
        if taken.is_ok()
            && every > 0
            && (switches.handed_on.fetch_add(1, Ordering::SeqCst) + 1).is_multiple_of(every)
        {
            switches.cuts.fetch_add(1, Ordering::SeqCst);
            let _ = tx
                .send(Err(RpcStatus::unavailable("stream cut (test switch)")))
                .await;
            return;
        }
        let answer = match taken {
            Ok(()) => Ok(RaftAcked { seq }),
            Err(e) => {
                tracing::debug!(error = %e, seq, "raft batch refused; stream ended");
                Err(e)
            }
        };
        let last = answer.is_err();
        if tx.send(answer).await.is_err() || last {
            return;
        }
    }
}
