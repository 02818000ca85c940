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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tonic::Status as RpcStatus;

use crate::mesh_tls::Caller;
use crate::proto::raft_client::RaftClient;
use crate::proto::{RaftAcked, RaftBatch};
use crate::transport::{dial, PeerLink, RaftInbox};

/// Answers the receiver may have queued for a stream's sender.
pub(crate) const ACKS: usize = 1024;
/// Unanswered batches kept for sending again, at most (the oldest go
/// first: Raft sends again what it still needs).
const UNANSWERED: usize = 1024;
/// A stream not opened within this is a failed attempt.
const OPEN_WITHIN: Duration = Duration::from_secs(2);
/// A batch unanswered this long: the peer has stopped reading (paused,
/// cut off); the stream is given up and the peer reported unreachable
/// (the unary `Send` gave up after its 5 s call timeout).
const STUCK_AFTER: Duration = Duration::from_secs(5);
/// Pause before opening again a stream the peer ended, so a peer that
/// refuses every stream is not dialled in a tight loop.
const REOPEN_PAUSE: Duration = Duration::from_millis(50);

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
    seq: u64,
    at: Instant,
    batch: RaftBatch,
    /// Carries a forwarded proposal: the one kind of Raft message nobody
    /// sends again by itself, so kept across a failed stream.
    proposes: bool,
}

struct Open {
    tx: mpsc::Sender<RaftBatch>,
    answers: tonic::Streaming<RaftAcked>,
}

/// The sending side of one peer's stream, owned by its peer task.
#[derive(Default)]
pub(crate) struct Outbox {
    client: Option<RaftClient<tonic::transport::Channel>>,
    open: Option<Open>,
    unanswered: VecDeque<Sent>,
    next: u64,
    /// The peer answered Unimplemented: it gets `Send` calls.
    unsupported: bool,
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
        match answer {
            Ok(Some(a)) => {
                while self.unanswered.front().is_some_and(|s| s.seq <= a.seq) {
                    self.unanswered.pop_front();
                }
            }
            Ok(None) | Err(_) => {
                if let Err(e) = &answer {
                    tracing::debug!(peer = link.peer, error = %e, "raft stream ended");
                    // The receiver refused the first unanswered batch (it
                    // stops there): sending it again would be refused again.
                    if matches!(
                        e.code(),
                        tonic::Code::FailedPrecondition
                            | tonic::Code::PermissionDenied
                            | tonic::Code::InvalidArgument
                    ) {
                        if let Some(s) = self.unanswered.pop_front() {
                            tracing::warn!(
                                peer = link.peer,
                                seq = s.seq,
                                error = %e,
                                "raft batch refused by its peer; dropped"
                            );
                        }
                    }
                }
                self.broken(link);
                if self.unanswered.is_empty() {
                    return; // opened again with the next message
                }
                tokio::time::sleep(REOPEN_PAUSE).await;
                if !self.reopen(link).await && !self.unsupported {
                    self.prune();
                    let _ = link.report.try_send(crate::Cmd::Unreachable(link.peer));
                }
            }
        }
    }

    /// Send one batch. False when it could not go: the peer does not take
    /// streams (it is handed back, see [`Outbox::handed_back`]) or is
    /// unreachable now (a proposal is kept for the next stream).
    pub(crate) async fn send(
        &mut self,
        link: &PeerLink,
        mut batch: RaftBatch,
        proposes: bool,
    ) -> bool {
        if self
            .unanswered
            .front()
            .is_some_and(|s| s.at.elapsed() > STUCK_AFTER)
        {
            tracing::debug!(
                peer = link.peer,
                "raft stream unanswered too long; given up"
            );
            self.broken(link);
            self.prune();
        }
        self.next += 1;
        batch.seq = self.next;
        let sent = Sent {
            seq: self.next,
            at: Instant::now(),
            batch,
            proposes,
        };
        if self.open.is_none() && !self.reopen(link).await {
            // Without streams it is handed back (`handed_back`), after
            // what was held before it.
            if proposes || self.unsupported {
                self.keep(sent);
            }
            return false;
        }
        let Some(open) = self.open.as_ref() else {
            return false;
        };
        if open.tx.try_send(sent.batch.clone()).is_err() {
            // The channel holds more than the window: the peer stopped
            // reading long ago.
            self.broken(link);
            self.prune();
            if proposes {
                self.keep(sent);
            }
            return false;
        }
        self.keep(sent);
        true
    }

    /// Once the peer turned out to have no streams: what this held, to go
    /// by `Send` instead, in order.
    pub(crate) fn handed_back(&mut self) -> Vec<RaftBatch> {
        if !self.unsupported {
            return Vec::new();
        }
        self.unanswered.drain(..).map(|s| s.batch).collect()
    }

    fn keep(&mut self, sent: Sent) {
        self.unanswered.push_back(sent);
        while self.unanswered.len() > UNANSWERED {
            self.unanswered.pop_front();
        }
    }

    /// After a failed attempt only proposals are worth sending again: the
    /// rest Raft sends again itself, newer.
    fn prune(&mut self) {
        self.unanswered.retain(|s| s.proposes);
    }

    fn broken(&mut self, link: &PeerLink) {
        self.open = None;
        self.client = None;
        // It may come back as another version (see `batch::LogFormats`).
        link.formats.forget(link.peer);
    }

    /// Open a stream and send on it, in order, what had no answer.
    async fn reopen(&mut self, link: &PeerLink) -> bool {
        if link.isolated.load(Ordering::SeqCst) {
            return false;
        }
        if self.client.is_none() {
            self.client = dial(&link.auth, &link.addr, Some(link.peer), None)
                .await
                .ok();
        }
        let Some(client) = self.client.as_mut() else {
            return false;
        };
        let (tx, rx) = mpsc::channel(UNANSWERED + ACKS);
        let opened = tokio::time::timeout(
            OPEN_WITHIN,
            client.raft_stream(
                link.auth
                    .request(tokio_stream::wrappers::ReceiverStream::new(rx)),
            ),
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
        let now = Instant::now();
        for s in self.unanswered.iter_mut() {
            s.at = now;
            // Room for all: the channel is larger than what is kept.
            let _ = tx.try_send(s.batch.clone());
        }
        self.open = Some(Open { tx, answers });
        true
    }
}

/// The receiving side: batches in order to the driver, each answered with
/// its number once there; the first refused one ends the stream with the
/// reason (the sender drops it and goes on).
pub(crate) async fn serve(
    caller: Caller,
    inbox: RaftInbox,
    switches: std::sync::Arc<Switches>,
    mut inbound: tonic::Streaming<RaftBatch>,
    tx: mpsc::Sender<Result<RaftAcked, RpcStatus>>,
) {
    loop {
        let batch = match inbound.message().await {
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
