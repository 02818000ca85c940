//! The mesh: a tonic server that takes raft messages and join requests from
//! other nodes, and one sender task per peer that batches messages to it.
//! Every call carries the cluster secret; calls without it are refused, so
//! a process without the secret can neither join nor inject messages. With
//! mutual TLS (`mesh_tls.rs`) a call must also come with a certificate the
//! cluster CA signed, naming the node the call speaks for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message as _;
use raft::prelude::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::{Request, Response, Status as RpcStatus};

use crate::mesh_tls::MeshAuth;
use crate::proto::raft_client::RaftClient;
use crate::proto::raft_server::{Raft, RaftServer};
use crate::proto::{
    Ack, BlobChunk, BlobRequest, JoinRequest, JoinResponse, Peer, RaftAcked, RaftBatch,
    RelayAnswers, RelayBatch, RelayFrames, RelayMark, RelayPayload, RemoveRequest, SnapshotChunk,
    StatusRequest, StatusResponse,
};
use crate::{raft_stream, relay_stream};
use crate::{ClusterError, Cmd, Incoming, Receipt, Returned, Status};

/// Messages queued per peer; beyond this they are dropped (raft resends).
const PEER_QUEUE: usize = 4096;
const BATCH: usize = 256;
/// Entry bytes per batch to a peer, about at most: far under the mesh's
/// 64 MiB message limit (raft-rs fills a message up to 1 MiB of entries).
const BATCH_BYTES: usize = 16 << 20;
/// HTTP/2 flow-control window for mesh streams (see `serve`).
const WINDOW: u32 = 8 << 20;

/// What the mesh server needs from the node.
pub struct Service {
    pub auth: MeshAuth,
    pub isolated: Arc<AtomicBool>,
    pub tx: mpsc::Sender<Cmd>,
    pub status: watch::Receiver<Status>,
    pub relay: mpsc::Sender<Incoming>,
    pub app_status: crate::AppStatus,
    pub snapshot_dir: std::path::PathBuf,
    /// Application files (see `blobs`).
    pub blob_dir: std::path::PathBuf,
    /// What relay streams have carried here (see `relay_stream`).
    pub seen: Arc<relay_stream::Seen>,
    /// Which log formats the peers read (see `batch`).
    pub formats: Arc<crate::batch::LogFormats>,
    /// Test switches for Raft streams arriving here.
    pub raft_streams: Arc<raft_stream::Switches>,
}

fn peers_out(peers: Vec<(u64, String)>) -> Vec<Peer> {
    peers
        .into_iter()
        .map(|(id, address)| Peer { id, address })
        .collect()
}

impl Service {
    /// Who opens a stream of `kind`, unless it is refused: by its test
    /// switch (`refused`: as a node from before such streams, Unimplemented)
    /// or because this node is cut off.
    fn open_stream<T>(
        &self,
        req: &Request<T>,
        refused: &AtomicBool,
        kind: &str,
    ) -> Result<crate::mesh_tls::Caller, RpcStatus> {
        let caller = self.auth.check(req)?;
        if refused.load(Ordering::SeqCst) {
            return Err(RpcStatus::unimplemented(format!(
                "{kind} streams refused (test switch)"
            )));
        }
        if self.isolated.load(Ordering::SeqCst) {
            return Err(RpcStatus::unavailable("isolated"));
        }
        Ok(caller)
    }

    fn raft_inbox(&self) -> RaftInbox {
        RaftInbox {
            isolated: self.isolated.clone(),
            tx: self.tx.clone(),
            status: self.status.clone(),
            snapshot_dir: self.snapshot_dir.clone(),
            formats: self.formats.clone(),
        }
    }
}

/// Where Raft messages from peers go in (by `Send` or a `RaftStream`).
pub(crate) struct RaftInbox {
    isolated: Arc<AtomicBool>,
    tx: mpsc::Sender<Cmd>,
    status: watch::Receiver<Status>,
    snapshot_dir: std::path::PathBuf,
    formats: Arc<crate::batch::LogFormats>,
}

impl RaftInbox {
    /// Hand one batch from a peer (whose identity the caller checked) to
    /// the driver, after the checks every batch gets.
    pub(crate) async fn take(&self, batch: RaftBatch) -> Result<(), RpcStatus> {
        if self.isolated.load(Ordering::SeqCst) {
            return Err(RpcStatus::unavailable("isolated"));
        }
        let me = self.status.borrow().id;
        let RaftBatch {
            from,
            messages,
            log_format,
            cluster_log_format,
            seq: _,
        } = batch;
        let leader = self.status.borrow().leader;
        self.formats
            .heard(from, log_format, cluster_log_format, leader);
        if self.formats.fenced(from, log_format) {
            return Err(RpcStatus::failed_precondition(
                "this cluster's log has batch entries (group commit) that this node's version \
                 cannot read: upgrade it",
            ));
        }
        for bytes in messages {
            let m = Message::parse_from_bytes(&bytes)
                .map_err(|_| RpcStatus::invalid_argument("bad raft message"))?;
            // A batch speaks for its sender only, to this node only.
            if m.from != from || m.to != me {
                tracing::warn!(
                    from,
                    message_from = m.from,
                    message_to = m.to,
                    "a raft message not from its batch's sender to this node; refused"
                );
                return Err(RpcStatus::permission_denied(
                    "raft messages must be from the batch's sender to this node",
                ));
            }
            // A snapshot by reference is taken only with its whole file here
            // (raft-rs would otherwise install a snapshot that is not there).
            if m.get_msg_type() == raft::prelude::MessageType::MsgSnapshot {
                let snap = m.get_snapshot();
                if let Some(r) = crate::snapshots::Reference::decode(snap.get_data()) {
                    let index = snap.get_metadata().index;
                    let path = crate::snapshots::incoming(&self.snapshot_dir, index);
                    let complete = std::fs::metadata(&path).is_ok_and(|m| m.len() == r.size);
                    if !complete {
                        tracing::warn!(index, "a snapshot whose file did not arrive; refused");
                        return Err(RpcStatus::failed_precondition("snapshot file missing"));
                    }
                }
            }
            self.tx
                .send(Cmd::Step(Box::new(m)))
                .await
                .map_err(|_| RpcStatus::unavailable("stopping"))?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Raft for Service {
    async fn send(&self, req: Request<RaftBatch>) -> Result<Response<Ack>, RpcStatus> {
        let from = req.get_ref().from;
        self.auth.check_node(&req, from)?;
        self.raft_inbox().take(req.into_inner()).await?;
        Ok(Response::new(Ack::default()))
    }

    type RaftStreamStream = tokio_stream::wrappers::ReceiverStream<Result<RaftAcked, RpcStatus>>;

    async fn raft_stream(
        &self,
        req: Request<tonic::Streaming<RaftBatch>>,
    ) -> Result<Response<Self::RaftStreamStream>, RpcStatus> {
        let caller = self.open_stream(&req, &self.raft_streams.refuse, "raft")?;
        let (tx, rx) = mpsc::channel(raft_stream::ACKS);
        tokio::spawn(raft_stream::serve(
            caller,
            self.raft_inbox(),
            self.raft_streams.clone(),
            req.into_inner(),
            tx,
        ));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, RpcStatus> {
        self.auth.check_from(&req, req.get_ref().node_id)?;
        let JoinRequest { node_id, address } = req.into_inner();
        if node_id == 0 || address.is_empty() {
            return Err(RpcStatus::invalid_argument(
                "node id and address are required",
            ));
        }
        // Already a member (a restart that lost its data dir is not): answer with the peers.
        let current = self.status.borrow().peers.clone();
        if current
            .iter()
            .any(|(id, a)| *id == node_id && *a == address)
        {
            return Ok(Response::new(JoinResponse {
                peers: peers_out(current),
            }));
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::AddNode(node_id, address, tx))
            .await
            .map_err(|_| RpcStatus::unavailable("stopping"))?;
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(Ok(peers))) => Ok(Response::new(JoinResponse {
                peers: peers_out(peers),
            })),
            Ok(Ok(Err(e))) => Err(RpcStatus::failed_precondition(e.to_string())),
            _ => Err(RpcStatus::unavailable(
                "membership change not committed (no quorum?)",
            )),
        }
    }

    /// A snapshot file from the leader, written under a name of this
    /// stream's own and renamed once complete and on disk (`snapshots.rs`).
    async fn install_snapshot(
        &self,
        req: Request<tonic::Streaming<SnapshotChunk>>,
    ) -> Result<Response<Ack>, RpcStatus> {
        let caller = self.auth.check(&req)?;
        let mut chunks = req.into_inner();
        let mut file: Option<(std::fs::File, u64, u64, PartFile)> = None;
        let mut written = 0u64;
        let internal = |e: String| RpcStatus::internal(e);
        while let Some(c) = chunks.message().await? {
            caller.speaks_for_node(c.from)?;
            if self.isolated.load(Ordering::SeqCst) {
                return Err(RpcStatus::unavailable("isolated"));
            }
            let (f, index, size, part) = match file.take() {
                Some(open) => open,
                None => {
                    let dir = self.snapshot_dir.clone();
                    let part = PartFile(dir.join(format!(
                        "in-{:020}-{}-{:016x}.part",
                        c.index,
                        c.from,
                        rand::random::<u64>()
                    )));
                    let p = part.0.clone();
                    let f = tokio::task::spawn_blocking(move || {
                        std::fs::create_dir_all(&dir)?;
                        std::fs::File::create(&p)
                    })
                    .await
                    .map_err(|e| internal(e.to_string()))?
                    .map_err(|e| internal(format!("{}: {e}", part.0.display())))?;
                    tracing::info!(
                        index = c.index,
                        bytes = c.size,
                        from = c.from,
                        "receiving a snapshot"
                    );
                    (f, c.index, c.size, part)
                }
            };
            if c.index != index || c.size != size || written + c.data.len() as u64 > size {
                return Err(RpcStatus::invalid_argument("snapshot chunks do not add up"));
            }
            written += c.data.len() as u64;
            let data = c.data;
            let f = tokio::task::spawn_blocking(move || {
                use std::io::Write;
                let mut f = f;
                f.write_all(&data).map(|_| f)
            })
            .await
            .map_err(|e| internal(e.to_string()))?
            .map_err(|e| internal(e.to_string()))?;
            file = Some((f, index, size, part));
        }
        let Some((f, index, size, part)) = file else {
            return Err(RpcStatus::invalid_argument("an empty snapshot"));
        };
        if written != size {
            return Err(RpcStatus::invalid_argument("snapshot cut short"));
        }
        let dir = self.snapshot_dir.clone();
        tokio::task::spawn_blocking(move || {
            f.sync_all()?;
            let done = crate::snapshots::incoming(&dir, index);
            std::fs::rename(&part.0, &done)?;
            // Older snapshots received and never installed are of no use.
            crate::snapshots::remove_older(&dir, index);
            Ok::<(), std::io::Error>(())
        })
        .await
        .map_err(|e| internal(e.to_string()))?
        .map_err(|e| internal(e.to_string()))?;
        tracing::info!(index, bytes = size, "snapshot received");
        Ok(Response::new(Ack::default()))
    }

    async fn put_blob(
        &self,
        req: Request<tonic::Streaming<BlobChunk>>,
    ) -> Result<Response<Ack>, RpcStatus> {
        let caller = self.auth.check(&req)?;
        if self.isolated.load(Ordering::SeqCst) {
            return Err(RpcStatus::unavailable("isolated"));
        }
        crate::blobs::receive(&self.blob_dir, req.into_inner(), |from| {
            caller.speaks_for_node(from)
        })
        .await?;
        Ok(Response::new(Ack::default()))
    }

    type GetBlobStream = tokio_stream::wrappers::ReceiverStream<Result<BlobChunk, RpcStatus>>;

    async fn get_blob(
        &self,
        req: Request<BlobRequest>,
    ) -> Result<Response<Self::GetBlobStream>, RpcStatus> {
        let caller = self.auth.check(&req)?;
        if self.isolated.load(Ordering::SeqCst) {
            return Err(RpcStatus::unavailable("isolated"));
        }
        let r = req.into_inner();
        caller.speaks_for_node(r.from)?;
        let me = self.status.borrow().id;
        let rx = crate::blobs::send(&self.blob_dir, &r.name, me).await?;
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn remove(
        &self,
        req: Request<RemoveRequest>,
    ) -> Result<Response<JoinResponse>, RpcStatus> {
        self.auth.check_admin(&req)?;
        let id = req.into_inner().node_id;
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::RemoveNode(id, tx))
            .await
            .map_err(|_| RpcStatus::unavailable("stopping"))?;
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(Ok(peers))) => Ok(Response::new(JoinResponse {
                peers: peers_out(peers),
            })),
            Ok(Ok(Err(e))) => Err(RpcStatus::failed_precondition(e.to_string())),
            _ => Err(RpcStatus::unavailable(
                "membership change not committed (no quorum?)",
            )),
        }
    }

    async fn relay(&self, req: Request<RelayBatch>) -> Result<Response<Ack>, RpcStatus> {
        self.auth.check_from(&req, req.get_ref().from)?;
        if self.isolated.load(Ordering::SeqCst) {
            return Err(RpcStatus::unavailable("isolated"));
        }
        let RelayBatch {
            from,
            payloads,
            sent_at_ms,
            applied,
        } = req.into_inner();
        // Read long after it was sent (this process was paused): the sender
        // has given up on this attempt and may have routed it elsewhere.
        if sent_at_ms != 0 && unix_ms().saturating_sub(sent_at_ms) > RELAY_STALE.as_millis() as u64
        {
            tracing::warn!(from, "refusing a stale relay batch (sent {sent_at_ms})");
            return Err(RpcStatus::deadline_exceeded("stale relay batch"));
        }
        // Causality: what the sender had applied when it sent is applied
        // here first (bounded: a lagging node delivers late, not never).
        if applied > self.status.borrow().applied {
            let mut st = self.status.clone();
            let caught_up = tokio::time::timeout(RELAY_CATCH_UP, async {
                while st.borrow_and_update().applied < applied {
                    if st.changed().await.is_err() {
                        return;
                    }
                }
            })
            .await;
            if caught_up.is_err() {
                tracing::info!(
                    from,
                    applied,
                    here = self.status.borrow().applied,
                    "relay batch handed on before this node applied as far as its sender"
                );
            }
        }
        let mut receipts = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let (receipt, rx) = oneshot::channel();
            // Waiting here pushes back on the sender (bounded queue).
            self.relay
                .send(Incoming {
                    from,
                    payload,
                    receipt,
                    mark: None,
                    marks: Vec::new(),
                })
                .await
                .map_err(|_| RpcStatus::unavailable("stopping"))?;
            receipts.push(rx);
        }
        // Answered only once the application owns each payload (or says it
        // cannot): the sender keeps them until then.
        let mut refused = Vec::new();
        for (i, rx) in receipts.into_iter().enumerate() {
            let owned = tokio::time::timeout(RELAY_ANSWER, rx)
                .await
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or(false);
            if !owned {
                refused.push(i as u32);
            }
        }
        Ok(Response::new(Ack { refused }))
    }

    type RelayStreamStream =
        tokio_stream::wrappers::ReceiverStream<Result<RelayAnswers, RpcStatus>>;

    async fn relay_stream(
        &self,
        req: Request<tonic::Streaming<RelayFrames>>,
    ) -> Result<Response<Self::RelayStreamStream>, RpcStatus> {
        let caller = self.open_stream(&req, &self.seen.refuse_streams, "relay")?;
        let (tx, rx) = mpsc::channel(relay_stream::WINDOW / relay_stream::FRAME + 2);
        tokio::spawn(relay_stream::serve(
            relay_stream::Receiving {
                caller,
                seen: self.seen.clone(),
                isolated: self.isolated.clone(),
                status: self.status.clone(),
                relay: self.relay.clone(),
                stale_after: RELAY_STALE,
                answer_within: RELAY_ANSWER,
                catch_up_within: RELAY_CATCH_UP,
            },
            req.into_inner(),
            tx,
        ));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, RpcStatus> {
        self.auth.check(&req)?;
        let s = self.status.borrow().clone();
        Ok(Response::new(StatusResponse {
            id: s.id,
            leader: s.leader,
            term: s.term,
            commit: s.commit,
            applied: s.applied,
            role: s.role,
            peers: peers_out(s.peers),
            app: self.app_status.get().map(|f| f()).unwrap_or_default(),
        }))
    }
}

/// Serve the mesh on `listener` until `stop`.
pub fn serve(
    listener: tokio::net::TcpListener,
    service: Service,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ClusterError> {
    let tls = service.auth.tls().map(|t| t.server_config());
    let svc = RaftServer::new(service).max_decoding_message_size(64 << 20);
    // Accepted connections without Nagle's algorithm, as the dialing side
    // has (tonic's `Endpoint` default): a Raft answer or a relay's answer
    // is a small write that must not wait for the previous one's ACK.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    // Windows wide enough for a snapshot's 1 MiB chunks: HTTP/2's
    // default 64 KiB makes a stream wait for a round trip per 64 KiB.
    let mut server = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(WINDOW))
        .initial_connection_window_size(Some(2 * WINDOW));
    if let Some(tls) = tls {
        server = server
            .tls_config(tls)
            .map_err(|e| ClusterError::Tls(error_chain(&e)))?;
    }
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.changed().await;
        };
        if let Err(e) = server
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
        {
            tracing::error!(error = %e, "cluster mesh server failed");
        }
    });
    Ok(())
}

/// An error with its sources: tonic's own text ("transport error") hides
/// the TLS reason.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Outbound side: one queue and task per peer.
pub struct Transport {
    id: u64,
    auth: MeshAuth,
    isolated: Arc<AtomicBool>,
    report: mpsc::Sender<Cmd>,
    peers: HashMap<u64, (String, mpsc::Sender<Message>)>,
    snapshot_dir: Arc<std::path::PathBuf>,
    formats: Arc<crate::batch::LogFormats>,
    /// The mesh's runtime: peer tasks run there, not on the driver's thread.
    rt: tokio::runtime::Handle,
}

impl Transport {
    pub fn new(
        id: u64,
        auth: MeshAuth,
        isolated: Arc<AtomicBool>,
        report: mpsc::Sender<Cmd>,
        snapshot_dir: std::path::PathBuf,
        formats: Arc<crate::batch::LogFormats>,
    ) -> Self {
        Transport {
            id,
            auth,
            isolated,
            report,
            peers: HashMap::new(),
            snapshot_dir: Arc::new(snapshot_dir),
            formats,
            rt: tokio::runtime::Handle::current(),
        }
    }

    pub fn set_peers(&mut self, peers: &[(u64, String)]) {
        self.peers
            .retain(|id, (addr, _)| peers.iter().any(|(i, a)| i == id && a == addr));
        for (id, addr) in peers {
            if *id == self.id || self.peers.contains_key(id) {
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            self.rt.spawn(peer_task(
                PeerLink {
                    peer: *id,
                    addr: addr.clone(),
                    from: self.id,
                    auth: self.auth.clone(),
                    isolated: self.isolated.clone(),
                    dir: self.snapshot_dir.clone(),
                    report: self.report.clone(),
                    formats: self.formats.clone(),
                },
                rx,
            ));
            self.peers.insert(*id, (addr.clone(), tx));
        }
    }

    pub fn send(&mut self, msgs: Vec<Message>) {
        if self.isolated.load(Ordering::SeqCst) {
            return;
        }
        for m in msgs {
            match self.peers.get(&m.to) {
                Some((_, tx)) => {
                    let _ = tx.try_send(m);
                }
                None => tracing::debug!(to = m.to, "no address for raft peer"),
            }
        }
    }
}

async fn peer_task(link: PeerLink, mut rx: mpsc::Receiver<Message>) {
    let PeerLink {
        peer,
        from,
        ref isolated,
        ref report,
        ..
    } = link;
    let mut client: Option<RaftClient<tonic::transport::Channel>> = None;
    let mut stream = raft_stream::Outbox::default();
    loop {
        let first = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => m,
                None => break,
            },
            answer = stream.answer() => {
                stream.answered(answer, &link).await;
                // A peer found to have no streams: what the stream still
                // held goes by `Send`.
                send_handed_back(&link, &mut client, stream.handed_back()).await;
                continue;
            }
        };
        let size = |m: &Message| m.get_entries().iter().map(|e| e.data.len()).sum::<usize>();
        let mut bytes = size(&first);
        let mut batch = vec![first];
        while batch.len() < BATCH && bytes < BATCH_BYTES {
            match rx.try_recv() {
                Ok(m) => {
                    bytes += size(&m);
                    batch.push(m);
                }
                Err(_) => break,
            }
        }
        // Once the log has batch entries, a node of an older version gets
        // nothing (`batch::LogFormats::fenced`), and entries or snapshots go
        // only to a node heard saying it reads them since its connection
        // last failed (it may have come back as another version).
        if link
            .formats
            .peer_format(peer)
            .is_some_and(|f| link.formats.fenced(peer, f))
        {
            if batch
                .iter()
                .any(|m| m.get_msg_type() == raft::prelude::MessageType::MsgSnapshot)
            {
                let _ = report.try_send(Cmd::SnapshotSent(peer, false));
            }
            continue;
        }
        if !link.formats.may_send_entries(peer) {
            batch.retain(|m| {
                let snapshot = m.get_msg_type() == raft::prelude::MessageType::MsgSnapshot;
                if snapshot {
                    let _ = report.try_send(Cmd::SnapshotSent(peer, false));
                }
                // Proposals forwarded to the leader still go.
                !snapshot
                    && (m.get_entries().is_empty()
                        || m.get_msg_type() == raft::prelude::MessageType::MsgPropose)
            });
        }
        // A snapshot that refers to a file: the file goes first, on a
        // connection of its own, so this peer's other messages do not wait.
        batch.retain(|m| {
            let streamed = m.get_msg_type() == raft::prelude::MessageType::MsgSnapshot
                && crate::snapshots::Reference::decode(m.get_snapshot().get_data()).is_some();
            if streamed {
                tokio::spawn(send_snapshot(link.clone(), m.clone()));
            }
            !streamed
        });
        if batch.is_empty() {
            continue;
        }
        let has_snapshot = batch
            .iter()
            .any(|m| m.get_msg_type() == raft::prelude::MessageType::MsgSnapshot);
        if isolated.load(Ordering::SeqCst) {
            if has_snapshot {
                let _ = report.try_send(Cmd::SnapshotSent(peer, false));
            }
            continue;
        }
        let messages: Vec<Vec<u8>> = batch
            .iter()
            .filter_map(|m| m.write_to_bytes().ok())
            .collect();
        let proposes = batch
            .iter()
            .any(|m| m.get_msg_type() == raft::prelude::MessageType::MsgPropose);
        let batch = RaftBatch {
            from,
            messages,
            log_format: link.formats.own(),
            cluster_log_format: link.formats.agreed(),
            seq: 0,
        };
        // Everything but an inline snapshot (whose outcome raft-rs must
        // hear) goes by the stream, where the peer has one.
        if !has_snapshot && stream.usable() {
            match stream.send(&link, batch, proposes).await {
                Ok(()) => {}
                // The peer has streams and is unreachable now (the stream
                // kept what Raft needs sent again).
                Err(None) => {
                    let _ = report.try_send(Cmd::Unreachable(peer));
                }
                // A node of an earlier version: what the stream held, then
                // this batch, by `Send`.
                Err(Some(batch)) => {
                    if send_handed_back(&link, &mut client, stream.handed_back()).await
                        && !send_unary(&link, &mut client, &batch).await
                    {
                        let _ = report.try_send(Cmd::Unreachable(peer));
                    }
                }
            }
            continue;
        }
        let sent = send_unary(&link, &mut client, &batch).await;
        if has_snapshot {
            let _ = report.try_send(Cmd::SnapshotSent(peer, sent));
        }
        if !sent {
            let _ = report.try_send(Cmd::Unreachable(peer));
        }
    }
}

/// What a peer's stream held when the peer turned out to have none, by
/// `Send`, in order, up to the first that fails (then the peer is reported
/// unreachable, and Raft and the proposers' timeouts take over). False if
/// one failed.
async fn send_handed_back(
    link: &PeerLink,
    client: &mut Option<RaftClient<tonic::transport::Channel>>,
    batches: Vec<RaftBatch>,
) -> bool {
    for b in batches {
        if !send_unary(link, client, &b).await {
            let _ = link.report.try_send(Cmd::Unreachable(link.peer));
            return false;
        }
    }
    true
}

/// One batch by a `Send` call (to a node without Raft streams, or an
/// inline snapshot, whose outcome raft-rs must hear). Raft copes with late
/// or repeated messages, so it is tried a few times (a lost MsgPropose
/// would otherwise lose a proposal).
async fn send_unary(
    link: &PeerLink,
    client: &mut Option<RaftClient<tonic::transport::Channel>>,
    batch: &RaftBatch,
) -> bool {
    for attempt in 0..3u64 {
        if link.isolated.load(Ordering::SeqCst) {
            return false;
        }
        if client.is_none() {
            *client = dial(
                &link.auth,
                &link.addr,
                Some(link.peer),
                Some(Duration::from_secs(5)),
            )
            .await
            .ok();
        }
        if let Some(c) = client.as_mut() {
            match c.send(link.auth.request(batch.clone())).await {
                Ok(_) => return true,
                Err(e) => {
                    tracing::debug!(peer = link.peer, error = %e, "raft send failed");
                    *client = None;
                    link.formats.forget(link.peer);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
    }
    false
}

/// A snapshot file being received: removed unless it was renamed into
/// place (a stream cut short, refused or failed leaves nothing behind).
struct PartFile(std::path::PathBuf);

impl Drop for PartFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One peer as its sender task sees it.
#[derive(Clone)]
pub(crate) struct PeerLink {
    pub(crate) peer: u64,
    pub(crate) addr: String,
    from: u64,
    pub(crate) auth: MeshAuth,
    pub(crate) isolated: Arc<AtomicBool>,
    dir: Arc<std::path::PathBuf>,
    pub(crate) report: mpsc::Sender<Cmd>,
    pub(crate) formats: Arc<crate::batch::LogFormats>,
}

/// Stream a snapshot file to a peer, then hand it the Raft message that
/// refers to it; raft-rs hears how it went either way.
async fn send_snapshot(p: PeerLink, msg: Message) {
    let index = msg.get_snapshot().get_metadata().index;
    let size = crate::snapshots::Reference::decode(msg.get_snapshot().get_data())
        .map(|r| r.size)
        .unwrap_or(0);
    let started = tokio::time::Instant::now();
    // Generous: a stalled peer must not hold raft-rs's snapshot state forever.
    let limit = Duration::from_secs(60) + Duration::from_millis(size / 2_000);
    let r = tokio::time::timeout(limit, stream_snapshot(&p, &msg, index, size)).await;
    let ok = match r {
        Ok(Ok(())) => {
            tracing::info!(
                peer = p.peer,
                index,
                bytes = size,
                secs = started.elapsed().as_secs_f64(),
                "snapshot sent"
            );
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(peer = p.peer, index, error = %e, "snapshot not sent");
            false
        }
        Err(_) => {
            tracing::warn!(peer = p.peer, index, "snapshot not sent in time");
            false
        }
    };
    let _ = p.report.send(Cmd::SnapshotSent(p.peer, ok)).await;
}

async fn stream_snapshot(p: &PeerLink, msg: &Message, index: u64, size: u64) -> Result<(), String> {
    let endpoint = p
        .auth
        .endpoint(&p.addr, Some(p.peer))?
        .connect_timeout(Duration::from_millis(2000))
        .tcp_keepalive(Some(Duration::from_secs(10)))
        .initial_stream_window_size(Some(WINDOW))
        .initial_connection_window_size(Some(2 * WINDOW));
    let ch = endpoint.connect().await.map_err(|e| e.to_string())?;
    let mut client = RaftClient::new(ch)
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);
    let path = crate::snapshots::outgoing(&p.dir, index);
    let (tx, rx) = mpsc::channel::<SnapshotChunk>(4);
    let (from, isolated) = (p.from, p.isolated.clone());
    let reader = tokio::task::spawn_blocking(move || -> Result<(), String> {
        use std::io::Read;
        let mut f = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        loop {
            if isolated.load(Ordering::SeqCst) {
                return Err("isolated".into());
            }
            let mut data = vec![0u8; crate::snapshots::CHUNK];
            let mut n = 0;
            while n < data.len() {
                match f.read(&mut data[n..]).map_err(|e| e.to_string())? {
                    0 => break,
                    k => n += k,
                }
            }
            if n == 0 {
                return Ok(());
            }
            data.truncate(n);
            let chunk = SnapshotChunk {
                from,
                index,
                size,
                data,
            };
            if tx.blocking_send(chunk).is_err() {
                return Err("the receiver went away".into());
            }
        }
    });
    let sent = client
        .install_snapshot(
            p.auth
                .request(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await;
    reader.await.map_err(|e| e.to_string())??;
    sent.map_err(|e| e.message().to_string())?;
    if p.isolated.load(Ordering::SeqCst) {
        return Err("isolated".into());
    }
    let bytes = msg.write_to_bytes().map_err(|e| e.to_string())?;
    client
        .send(p.auth.request(RaftBatch {
            from: p.from,
            messages: vec![bytes],
            log_format: p.formats.own(),
            cluster_log_format: p.formats.agreed(),
            seq: 0,
        }))
        .await
        .map_err(|e| e.message().to_string())?;
    Ok(())
}

/// Ask a member at `seed` to add us; returns the members, us included.
pub async fn join(
    seed: &str,
    auth: &MeshAuth,
    id: u64,
    address: &str,
) -> Result<Vec<(u64, String)>, ClusterError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        let attempt = async {
            let mut c = dial(auth, seed, None, None)
                .await
                .map_err(|e| (refused_in_handshake(&e), e))?;
            let req = auth.request(JoinRequest {
                node_id: id,
                address: address.to_string(),
            });
            c.join(req).await.map_err(|e| {
                // Refused for who we are (the secret, the certificate).
                // TLS 1.3 finishes the client's side of the handshake
                // first: the server's alert comes with the first call.
                let text = status_text(&e);
                let refused = matches!(
                    e.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) || refused_in_handshake(&text);
                (refused, text)
            })
        };
        match attempt.await {
            Ok(resp) => {
                return Ok(resp
                    .into_inner()
                    .peers
                    .into_iter()
                    .map(|p| (p.id, p.address))
                    .collect())
            }
            // Refused for who we are: trying again changes nothing.
            Err((true, e)) => return Err(ClusterError::Join(e)),
            Err((false, e)) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(ClusterError::Join(last))
}

/// Query a node's status over the mesh (for `starling cluster status`).
pub async fn remote_status(addr: &str, auth: &MeshAuth) -> Result<Status, String> {
    let mut c = dial(auth, addr, None, None).await?;
    let s = c
        .status(auth.request(StatusRequest {}))
        .await
        .map_err(|e| status_text(&e))?
        .into_inner();
    Ok(Status {
        id: s.id,
        leader: s.leader,
        term: s.term,
        commit: s.commit,
        applied: s.applied,
        ordered: s.applied,
        read_requests: 0,
        role: s.role,
        peers: s.peers.into_iter().map(|p| (p.id, p.address)).collect(),
        active: Vec::new(),
        app: s.app,
    })
}

/// Outbound application messages: one queue and task per node and lane. A
/// payload stays queued until the node answers for it; the node refusing
/// it, or [`Relayer::take_back`], hands it back to the application.
pub struct Relayer {
    id: u64,
    auth: MeshAuth,
    isolated: Arc<AtomicBool>,
    status: watch::Receiver<Status>,
    queues: std::sync::Mutex<HashMap<(u64, Lane), Arc<PeerRelay>>>,
    returned: mpsc::UnboundedSender<Returned>,
    /// The epoch of the next relay task (its stream's numbering).
    next_epoch: AtomicU64,
}

/// Which queue to a node a payload takes. A batch is answered once the
/// receiver owns every payload in it, which for a message can take seconds
/// (it follows its session to a third node, or waits for a commit); control
/// messages, answered at once, have their own queue so they never wait
/// behind such a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Ordered traffic: stanzas.
    Stanzas,
    /// Coordination between nodes (session hand-overs): small, answered
    /// at once, not ordered with the stanzas.
    Control,
    /// A payload sent while the answer to a batch from another node waits
    /// for it (a stanza passed on after it was received, following its
    /// session), by depth: how many answers wait one behind the other. A
    /// batch's answer waits only for payloads deeper than its own, so a
    /// payload never queues behind a batch that waits for it, and two
    /// nodes passing stanzas back to each other cannot each wait for the
    /// other's answer. The application sets the depth.
    Forward(u8),
}

/// Payloads queued per node before new ones are refused.
const RELAY_QUEUE: usize = 8192;
/// A relay batch read later than this after it was sent is refused.
const RELAY_STALE: Duration = Duration::from_millis(2500);
/// How long a receiver waits for the application to take a payload.
const RELAY_ANSWER: Duration = Duration::from_secs(8);
/// How long a relay batch waits for this node to apply what its sender had
/// applied when it sent the batch.
const RELAY_CATCH_UP: Duration = Duration::from_secs(1);

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One queued payload and the receipt of whoever waits for it.
struct Queued {
    payload: Vec<u8>,
    receipt: Option<Receipt>,
    /// What the receiver said it was about to write this as.
    marks: Vec<crate::Mark>,
}

/// A node's queue, shared by its relay task and the senders.
struct PeerRelay {
    addr: String,
    state: std::sync::Mutex<PeerQueue>,
    wake: tokio::sync::Notify,
    /// Mesh connections its relay task has made (1 when it never broke).
    connects: AtomicU64,
}

/// One relay queue, for metrics.
#[derive(Debug, Clone)]
pub struct RelayQueueStats {
    pub node: u64,
    /// "stanzas", "control" or "forward".
    pub lane: &'static str,
    /// Payloads queued or in flight.
    pub pending: usize,
    /// Connections made to the node for this queue.
    pub connects: u64,
}

#[derive(Default)]
struct PeerQueue {
    items: std::collections::VecDeque<Queued>,
    /// Bumped by `take_back`: a batch in flight from before it comes back
    /// if it fails, instead of being retried.
    generation: u64,
    /// The task has ended (the node left the membership).
    closed: bool,
    /// Payloads taken for the batch being sent.
    in_flight: usize,
}

impl PeerRelay {
    fn lock(&self) -> std::sync::MutexGuard<'_, PeerQueue> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Relayer {
    pub fn new(
        id: u64,
        auth: MeshAuth,
        isolated: Arc<AtomicBool>,
        status: watch::Receiver<Status>,
        returned: mpsc::UnboundedSender<Returned>,
    ) -> Self {
        Relayer {
            id,
            auth,
            isolated,
            status,
            queues: std::sync::Mutex::new(HashMap::new()),
            returned,
            // A random start (not the clock, which may step back across a
            // restart): a receiver never mistakes a new life's numbering
            // for one it remembers.
            next_epoch: AtomicU64::new(rand::random::<u64>() >> 1),
        }
    }

    /// Queue `payload` for `node`; given straight back if the node is
    /// unknown or its queue is full.
    pub fn send(
        &self,
        node: u64,
        lane: Lane,
        payload: Vec<u8>,
        receipt: Option<Receipt>,
        rt: &tokio::runtime::Handle,
    ) -> Result<(), Returned> {
        let back = |payload, receipt| Returned {
            node,
            payload,
            receipt,
            marks: Vec::new(),
        };
        let addr = match self
            .status
            .borrow()
            .peers
            .iter()
            .find(|(id, _)| *id == node)
        {
            Some((_, a)) => a.clone(),
            None => return Err(back(payload, receipt)),
        };
        let peer = {
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            let key = (node, lane);
            let fresh = queues
                .get(&key)
                .is_none_or(|p| p.addr != addr || p.lock().closed);
            if fresh {
                let peer = Arc::new(PeerRelay {
                    addr: addr.clone(),
                    state: std::sync::Mutex::new(PeerQueue::default()),
                    wake: tokio::sync::Notify::new(),
                    connects: AtomicU64::new(0),
                });
                // What the old task still held goes to the new address.
                if let Some(old) = queues.insert(key, peer.clone()) {
                    let mut o = old.lock();
                    o.generation += 1;
                    o.closed = true;
                    let items = std::mem::take(&mut o.items);
                    drop(o);
                    old.wake.notify_one();
                    peer.lock().items.extend(items);
                }
                rt.spawn(relay_task(RelayLink {
                    node,
                    lane,
                    peer: peer.clone(),
                    from: self.id,
                    // Each task numbers its payloads from 1 under an
                    // epoch of its own, never reused (see `next_epoch`).
                    epoch: self.next_epoch.fetch_add(1, Ordering::Relaxed),
                    auth: self.auth.clone(),
                    isolated: self.isolated.clone(),
                    status: self.status.clone(),
                    returned: self.returned.clone(),
                }));
            }
            match queues.get(&key) {
                Some(p) => p.clone(),
                None => return Err(back(payload, receipt)),
            }
        };
        {
            let mut q = peer.lock();
            // Closed meanwhile (the node left, or moved to a new address):
            // its task no longer sends what is queued here.
            if q.items.len() >= RELAY_QUEUE || q.closed {
                return Err(back(payload, receipt));
            }
            q.items.push_back(Queued {
                payload,
                receipt,
                marks: Vec::new(),
            });
        }
        peer.wake.notify_one();
        Ok(())
    }

    /// Each queue's depth and connections, for metrics.
    pub fn stats(&self) -> Vec<RelayQueueStats> {
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((node, lane), p)| {
                let q = p.lock();
                RelayQueueStats {
                    node: *node,
                    lane: match lane {
                        Lane::Stanzas => "stanzas",
                        Lane::Control => "control",
                        Lane::Forward(_) => "forward",
                    },
                    pending: q.items.len() + q.in_flight,
                    connects: p.connects.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Payloads queued or in flight to any node.
    pub fn pending(&self) -> usize {
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|p| {
                let q = p.lock();
                q.items.len() + q.in_flight
            })
            .sum()
    }

    /// Give up on `node`: what is queued comes back now, a batch in flight
    /// comes back if it fails.
    pub fn take_back(&self, node: u64) {
        let peers: Vec<Arc<PeerRelay>> = self
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|((n, _), _)| *n == node)
            .map(|(_, p)| p.clone())
            .collect();
        for peer in peers {
            self.take_back_from(node, &peer);
        }
    }

    fn take_back_from(&self, node: u64, peer: &PeerRelay) {
        let items = {
            let mut q = peer.lock();
            q.generation += 1;
            std::mem::take(&mut q.items)
        };
        if !items.is_empty() {
            tracing::warn!(
                node,
                count = items.len(),
                "node given up on: its queued relays are routed again"
            );
        }
        for it in items {
            let _ = self.returned.send(Returned {
                node,
                payload: it.payload,
                receipt: it.receipt,
                marks: it.marks,
            });
        }
        peer.wake.notify_one();
    }
}

/// Where a lane's numbered stream is told apart from the others.
fn lane_code(lane: Lane) -> u32 {
    match lane {
        Lane::Stanzas => 0,
        Lane::Control => 1,
        Lane::Forward(d) => 2 + u32::from(d),
    }
}

/// What a relay task needs besides its queue.
struct RelayLink {
    node: u64,
    lane: Lane,
    peer: Arc<PeerRelay>,
    from: u64,
    epoch: u64,
    auth: MeshAuth,
    isolated: Arc<AtomicBool>,
    status: watch::Receiver<Status>,
    returned: mpsc::UnboundedSender<Returned>,
}

impl RelayLink {
    fn give_back(&self, items: impl IntoIterator<Item = Queued>) {
        for it in items {
            let _ = self.returned.send(Returned {
                node: self.node,
                payload: it.payload,
                receipt: it.receipt,
                marks: it.marks,
            });
        }
    }

    /// Payloads the node refused: routed again by the application. Their
    /// marks stay: a node refuses only what it did not write, and marks a
    /// payload refused still carries are an earlier life's, which may have
    /// written it (a node that restarted, see `Incoming::marks`).
    fn refused(&self, back: Vec<Queued>) {
        if !back.is_empty() {
            tracing::info!(
                node = self.node,
                count = back.len(),
                "relayed payloads refused; routing them again"
            );
            self.give_back(back);
        }
    }

    /// The node left: the queue closes and what it holds goes back.
    fn close(&self) {
        let rest: Vec<Queued> = {
            let mut q = self.peer.lock();
            q.closed = true;
            q.items.drain(..).collect()
        };
        self.give_back(rest);
    }

    /// Not a member any more: nothing more goes there.
    fn left(&self) -> bool {
        !self
            .status
            .borrow()
            .peers
            .iter()
            .any(|(id, _)| *id == self.node)
    }
}

/// How a relay stream ended.
enum Ended {
    /// Broken (or never opened): open another and send again what had no
    /// answer. True when it carried answers before it broke.
    Broken(bool),
    /// The node does not know streams (an older version): batches.
    Unimplemented,
    /// The queue is closed or the node left, and nothing is in flight.
    Done,
}

/// Streams to an older node are tried again this long after it said it
/// does not know them (it may have been upgraded meanwhile).
const STREAM_RETRY: Duration = Duration::from_secs(30);
/// A payload in flight to a node given up on goes back to the application
/// only once it was sent this long ago: by then the node, should it still
/// read the frame, refuses it as stale.
const GIVE_BACK_AFTER: Duration = Duration::from_millis(
    RELAY_STALE.as_millis() as u64 + RELAY_CATCH_UP.as_millis() as u64 + 1000,
);

async fn relay_task(link: RelayLink) {
    let mut client: Option<RaftClient<tonic::transport::Channel>> = None;
    let mut outbox = relay_stream::Outbox::new(link.epoch, lane_code(link.lane));
    let mut batches_until: Option<std::time::Instant> = None;
    let mut attempt = 0u32;
    // The queue's generation when what is in flight was sent.
    let mut sent_in = link.peer.lock().generation;
    loop {
        // Given up on meanwhile ([`Relayer::take_back`]) or moved to a new
        // address: what was in flight and had no answer goes back to the
        // application, not to this node.
        let generation = link.peer.lock().generation;
        if generation != sent_in {
            // Only what was last sent long enough ago that the node can no
            // longer take it (it refuses frames older than RELAY_STALE,
            // after at most RELAY_CATCH_UP) goes back now; the rest waits
            // here, not sent again, until it is that old.
            let now = std::time::Instant::now();
            let old: Vec<u64> = outbox
                .in_flight
                .iter()
                .filter(|(_, f)| now.duration_since(f.sent) >= GIVE_BACK_AFTER)
                .map(|(seq, _)| *seq)
                .collect();
            let items: Vec<Queued> = old
                .into_iter()
                .filter_map(|seq| outbox.in_flight.remove(&seq))
                .map(|f| f.item)
                .collect();
            if !items.is_empty() {
                tracing::debug!(
                    node = link.node,
                    count = items.len(),
                    "relays in flight given back"
                );
            }
            link.give_back(items);
            link.peer.lock().in_flight = outbox.in_flight.len();
            if let Some(youngest) = outbox.in_flight.values().map(|f| f.sent).max() {
                let at = youngest + GIVE_BACK_AFTER;
                tokio::time::sleep_until(at.into()).await;
                continue;
            }
            sent_in = generation;
        }
        let done = {
            let q = link.peer.lock();
            q.closed && outbox.in_flight.is_empty()
        };
        if done {
            return;
        }
        if link.isolated.load(Ordering::SeqCst) {
            let _ =
                tokio::time::timeout(Duration::from_millis(200), link.peer.wake.notified()).await;
            continue;
        }
        if client.is_none() {
            client = dial(&link.auth, &link.peer.addr, Some(link.node), None)
                .await
                .ok();
            if client.is_some() {
                link.peer.connects.fetch_add(1, Ordering::Relaxed);
            }
        }
        let Some(c) = client.as_mut() else {
            attempt += 1;
            backoff(&link, attempt).await;
            continue;
        };
        if batches_until.is_some_and(|t| std::time::Instant::now() < t) {
            match relay_batch(&link, c).await {
                Some(true) => attempt = 0,
                Some(false) => {
                    client = None;
                    attempt += 1;
                    backoff(&link, attempt).await;
                }
                None => return,
            }
            continue;
        }
        match relay_stream_once(&link, c, &mut outbox).await {
            Ended::Done => return,
            Ended::Unimplemented => {
                tracing::info!(
                    node = link.node,
                    "node relays in batches (an older version)"
                );
                // Whatever was in flight goes first in the batches.
                let mut q = link.peer.lock();
                let mut items: std::collections::VecDeque<Queued> =
                    std::mem::take(&mut outbox.in_flight)
                        .into_values()
                        .map(|f| f.item)
                        .collect();
                items.extend(q.items.drain(..));
                q.items = items;
                q.in_flight = 0;
                batches_until = Some(std::time::Instant::now() + STREAM_RETRY);
            }
            Ended::Broken(answered) => {
                client = None;
                if answered {
                    attempt = 0;
                }
                link.peer.lock().in_flight = outbox.in_flight.len();
                attempt += 1;
                if attempt == 4 {
                    tracing::warn!(
                        node = link.node,
                        in_flight = outbox.in_flight.len(),
                        "relay stream failing; keeping what is in flight and retrying"
                    );
                }
                backoff(&link, attempt).await;
            }
        }
    }
}

async fn backoff(link: &RelayLink, attempt: u32) {
    let wait = Duration::from_millis((50u64 << attempt.min(4)).min(500));
    let _ = tokio::time::timeout(wait, link.peer.wake.notified()).await;
}

/// One stream's life: send again what is in flight, then what is queued,
/// and settle each payload as its answer comes.
async fn relay_stream_once(
    link: &RelayLink,
    client: &mut RaftClient<tonic::transport::Channel>,
    outbox: &mut relay_stream::Outbox<Queued>,
) -> Ended {
    // Room for every frame message the window allows, so sending never
    // waits (what is in the channel is in flight).
    let (tx, rx) = mpsc::channel::<RelayFrames>(relay_stream::WINDOW / relay_stream::FRAME + 2);
    let frames = |outbox: &relay_stream::Outbox<Queued>, seqs: Vec<u64>| {
        let payloads = seqs
            .into_iter()
            .filter_map(|seq| {
                outbox.in_flight.get(&seq).map(|f| RelayPayload {
                    seq,
                    payload: f.item.payload.clone(),
                    marks: f
                        .item
                        .marks
                        .iter()
                        .map(|m| RelayMark {
                            seq,
                            session: m.session.clone(),
                            number: m.number,
                        })
                        .collect(),
                })
            })
            .collect();
        RelayFrames {
            from: link.from,
            epoch: outbox.epoch,
            lane: outbox.lane,
            sent_at_ms: unix_ms(),
            // Causality: the receiver applies this first.
            applied: link.status.borrow().ordered,
            below: outbox.below(),
            payloads,
            marking: true,
            marked: Vec::new(),
        }
    };
    // What had no answer on the last stream goes first, in order.
    let again: Vec<u64> = outbox.in_flight.keys().copied().collect();
    let now = std::time::Instant::now();
    for f in outbox.in_flight.values_mut() {
        f.sent = now;
    }
    for chunk in again.chunks(relay_stream::FRAME) {
        let _ = tx.try_send(frames(outbox, chunk.to_vec()));
    }
    // Bounded: a node that accepts the connection but never answers (it is
    // paused) must not hold this task (take_back, the queue's closing).
    let answers = tokio::time::timeout(
        RELAY_ANSWER + Duration::from_secs(2),
        client.relay_stream(
            link.auth
                .request(tokio_stream::wrappers::ReceiverStream::new(rx)),
        ),
    )
    .await;
    let answers = match answers {
        Err(_) => {
            tracing::debug!(node = link.node, "relay stream not opened in time");
            return Ended::Broken(false);
        }
        Ok(a) => a,
    };
    let mut answers = match answers {
        Ok(a) => a.into_inner(),
        Err(e) if e.code() == tonic::Code::Unimplemented => return Ended::Unimplemented,
        Err(e) => {
            tracing::debug!(node = link.node, error = %e, "relay stream not opened");
            return Ended::Broken(false);
        }
    };
    let mut answered = false;
    // Marks recorded and not yet confirmed to the receiver (the channel
    // was full): confirmed with the next frame that fits.
    let mut to_confirm: Vec<u64> = Vec::new();
    loop {
        if !to_confirm.is_empty() {
            let mut f = frames(outbox, Vec::new());
            f.marked = std::mem::take(&mut to_confirm);
            if let Err(e) = tx.try_send(f) {
                let mut f = e.into_inner();
                to_confirm = std::mem::take(&mut f.marked);
            }
        }
        // Take what is queued, as far as the window allows.
        let fresh: Vec<u64> = {
            let mut q = link.peer.lock();
            // Bounded by the window and by the room in the channel (a
            // frame message per FRAME payloads), so sending never fails.
            let room = relay_stream::WINDOW
                .saturating_sub(outbox.in_flight.len())
                .min(tx.capacity() * relay_stream::FRAME);
            let n = if q.closed { 0 } else { room.min(q.items.len()) };
            let now = std::time::Instant::now();
            let seqs = q
                .items
                .drain(..n)
                .map(|item| {
                    let seq = outbox.next;
                    outbox.next += 1;
                    outbox
                        .in_flight
                        .insert(seq, relay_stream::InFlight { item, sent: now });
                    seq
                })
                .collect();
            q.in_flight = outbox.in_flight.len();
            seqs
        };
        for chunk in fresh.chunks(relay_stream::FRAME) {
            if tx.try_send(frames(outbox, chunk.to_vec())).is_err() {
                return Ended::Broken(answered);
            }
        }
        let closed = link.peer.lock().closed;
        if closed && outbox.in_flight.is_empty() {
            return Ended::Done;
        }
        if link.isolated.load(Ordering::SeqCst) {
            return Ended::Broken(answered);
        }
        // A live receiver answers every payload within RELAY_ANSWER; past
        // that (and a margin) the stream is taken for dead.
        let deadline = outbox
            .oldest_sent()
            .map(|t| t + RELAY_ANSWER + Duration::from_secs(2));
        tokio::select! {
            a = answers.message() => match a {
                Ok(Some(a)) => {
                    answered = true;
                    // The receiver is about to write these to a client:
                    // kept with the payload, then confirmed.
                    for m in a.marks {
                        if let Some(f) = outbox.in_flight.get_mut(&m.seq) {
                            if f.item.marks.len() < crate::MAX_MARKS {
                                f.item.marks.push(crate::Mark { session: m.session, number: m.number });
                            }
                        }
                        to_confirm.push(m.seq);
                    }
                    let mut back = Vec::new();
                    for seq in a.owned {
                        if let Some(f) = outbox.in_flight.remove(&seq) {
                            if let Some(r) = f.item.receipt {
                                let _ = r.send(true);
                            }
                        }
                    }
                    for seq in a.refused {
                        if let Some(f) = outbox.in_flight.remove(&seq) {
                            back.push(f.item);
                        }
                    }
                    link.refused(back);
                    link.peer.lock().in_flight = outbox.in_flight.len();
                }
                Ok(None) => return Ended::Broken(answered),
                Err(e) => {
                    tracing::debug!(node = link.node, error = %e, "relay stream broken");
                    return Ended::Broken(answered);
                }
            },
            _ = link.peer.wake.notified() => {}
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            } => {
                tracing::warn!(node = link.node, in_flight = outbox.in_flight.len(), "relay answers overdue; opening a new stream");
                return Ended::Broken(answered);
            }
            _ = tokio::time::sleep(Duration::from_secs(5)), if outbox.in_flight.is_empty() => {
                if link.left() {
                    link.close();
                    return Ended::Done;
                }
            }
        }
    }
}

/// One batch by the unary `Relay` call (nodes that do not know streams):
/// Some(true) when answered, Some(false) when the call failed (the batch
/// stays queued, first), None when the task is done.
async fn relay_batch(
    link: &RelayLink,
    c: &mut RaftClient<tonic::transport::Channel>,
) -> Option<bool> {
    let (batch, generation) = {
        let mut q = link.peer.lock();
        if q.closed && q.items.is_empty() {
            return None;
        }
        let n = q.items.len().min(BATCH);
        q.in_flight = n;
        (q.items.drain(..n).collect::<Vec<_>>(), q.generation)
    };
    if batch.is_empty() {
        if link.left() {
            link.close();
            return None;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), link.peer.wake.notified()).await;
        return Some(true);
    }
    let req = link.auth.request(RelayBatch {
        from: link.from,
        payloads: batch.iter().map(|q| q.payload.clone()).collect(),
        sent_at_ms: unix_ms(),
        applied: link.status.borrow().ordered,
    });
    let answer = tokio::time::timeout(RELAY_ANSWER + Duration::from_secs(2), c.relay(req)).await;
    let mut q = link.peer.lock();
    q.in_flight = 0;
    match answer {
        Ok(Ok(ack)) => {
            drop(q);
            let refused = ack.into_inner().refused;
            let mut back = Vec::new();
            for (i, it) in batch.into_iter().enumerate() {
                if refused.contains(&(i as u32)) {
                    back.push(it);
                } else if let Some(r) = it.receipt {
                    let _ = r.send(true);
                }
            }
            link.refused(back);
            Some(true)
        }
        failed => {
            if let Ok(Err(e)) = failed {
                tracing::debug!(node = link.node, error = %e, "relay failed");
            }
            if q.generation != generation {
                drop(q);
                link.give_back(batch);
            } else {
                // Kept, first in line, for the next attempt.
                for it in batch.into_iter().rev() {
                    q.items.push_front(it);
                }
            }
            Some(false)
        }
    }
}

/// Ask a member at `addr` to remove node `id`; returns the members left.
pub async fn remote_remove(
    addr: &str,
    auth: &MeshAuth,
    id: u64,
) -> Result<Vec<(u64, String)>, String> {
    let mut c = dial(auth, addr, None, None).await?;
    let r = c
        .remove(auth.request(RemoveRequest { node_id: id }))
        .await
        .map_err(|e| status_text(&e))?
        .into_inner();
    Ok(r.peers.into_iter().map(|p| (p.id, p.address)).collect())
}

/// Hand one application message to the node at `addr`, from outside the
/// cluster (`from` is 0); the cluster secret authorizes it (admin tools).
pub async fn remote_relay(addr: &str, auth: &MeshAuth, payload: Vec<u8>) -> Result<(), String> {
    let mut c = dial(auth, addr, None, None).await?;
    c.relay(auth.request(RelayBatch {
        from: 0,
        payloads: vec![payload],
        sent_at_ms: unix_ms(),
        applied: 0,
    }))
    .await
    .map_err(|e| status_text(&e))?;
    Ok(())
}

/// Whether a connection failed in the TLS handshake on a certificate or an
/// alert (rustls's words): the credentials, which trying again does not
/// change.
fn refused_in_handshake(e: &str) -> bool {
    let e = e.to_lowercase();
    e.contains("invalid peer certificate") || e.contains("fatal alert")
}

/// A call's failure with what lies under it (a TLS alert, a refused
/// connection).
fn status_text(e: &RpcStatus) -> String {
    use std::error::Error as _;
    match e.source() {
        Some(s) => format!("{}: {}", e.message(), error_chain(s)),
        None => e.message().to_string(),
    }
}

/// A client of the node at `addr`: `peer` when its id is known (its
/// certificate must name it; a peer of ours is dialed with a short
/// connect limit), with a time limit per call if given.
pub(crate) async fn dial(
    auth: &MeshAuth,
    addr: &str,
    peer: Option<u64>,
    call_timeout: Option<Duration>,
) -> Result<RaftClient<tonic::transport::Channel>, String> {
    let connect_within = match peer {
        Some(_) => Duration::from_millis(500),
        None => Duration::from_secs(5),
    };
    let mut e = auth.endpoint(addr, peer)?.connect_timeout(connect_within);
    if let Some(t) = call_timeout {
        e = e.timeout(t);
    }
    if peer.is_some() {
        // A peer that stopped answering (paused, cut off) is found out and
        // its connection closed, and with it what was queued on it.
        e = e
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20));
    }
    // The connect timeout bounds TCP only; a paused peer's kernel accepts
    // the connection and the TLS handshake would wait for it.
    let ch = tokio::time::timeout(connect_within * 4, e.connect())
        .await
        .map_err(|_| format!("no answer from {addr} within {:?}", connect_within * 4))?
        .map_err(|e| error_chain(&e))?;
    Ok(RaftClient::new(ch)
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20))
}

/// A mesh client to `addr` (node `peer`) for streaming files.
async fn blob_client(
    auth: &MeshAuth,
    addr: &str,
    peer: u64,
) -> Result<RaftClient<tonic::transport::Channel>, String> {
    let endpoint = auth
        .endpoint(addr, Some(peer))?
        .connect_timeout(Duration::from_millis(2000))
        .tcp_keepalive(Some(Duration::from_secs(10)))
        .initial_stream_window_size(Some(WINDOW))
        .initial_connection_window_size(Some(2 * WINDOW));
    let ch = endpoint.connect().await.map_err(|e| e.to_string())?;
    Ok(RaftClient::new(ch)
        .max_encoding_message_size(8 << 20)
        .max_decoding_message_size(8 << 20))
}

/// Stream file `name` (`size` bytes, in `chunks`) to node `peer` at
/// `addr`; answered once it is on the peer's disk.
pub async fn put_blob(
    auth: &MeshAuth,
    from: u64,
    peer: u64,
    addr: &str,
    name: String,
    size: u64,
    mut chunks: mpsc::Receiver<Vec<u8>>,
) -> Result<(), String> {
    let mut client = blob_client(auth, addr, peer).await?;
    let (tx, rx) = mpsc::channel::<BlobChunk>(4);
    let feed = tokio::spawn(async move {
        while let Some(data) = chunks.recv().await {
            let c = BlobChunk {
                from,
                name: name.clone(),
                size,
                data,
            };
            if tx.send(c).await.is_err() {
                return;
            }
        }
    });
    let r = client
        .put_blob(auth.request(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await;
    feed.abort();
    r.map(|_| ()).map_err(|e| e.message().to_string())
}

/// File `name` from node `peer` at `addr`: its size and its chunks.
pub async fn get_blob(
    auth: &MeshAuth,
    from: u64,
    peer: u64,
    addr: &str,
    name: &str,
) -> Result<Option<(u64, mpsc::Receiver<Result<Vec<u8>, String>>)>, String> {
    let mut client = blob_client(auth, addr, peer).await?;
    let mut stream = match client
        .get_blob(auth.request(BlobRequest {
            from,
            name: name.to_string(),
        }))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) if e.code() == tonic::Code::NotFound => return Ok(None),
        Err(e) => return Err(e.message().to_string()),
    };
    let first = match stream.message().await {
        Ok(Some(c)) => c,
        Ok(None) => return Err("an empty blob stream".into()),
        Err(e) if e.code() == tonic::Code::NotFound => return Ok(None),
        Err(e) => return Err(e.message().to_string()),
    };
    let size = first.size;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        if tx.send(Ok(first.data)).await.is_err() {
            return;
        }
        loop {
            match stream.message().await {
                Ok(Some(c)) => {
                    if tx.send(Ok(c.data)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(e.message().to_string())).await;
                    return;
                }
            }
        }
    });
    Ok(Some((size, rx)))
}
