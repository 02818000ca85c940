//! The mesh: a tonic server that takes raft messages and join requests from
//! other nodes, and one sender task per peer that batches messages to it.
//! Every call carries the cluster secret; calls without it are refused, so
//! a process without the secret can neither join nor inject messages.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message as _;
use raft::prelude::Message;
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::{Request, Response, Status as RpcStatus};

use crate::proto::raft_client::RaftClient;
use crate::proto::raft_server::{Raft, RaftServer};
use crate::proto::{
    Ack, JoinRequest, JoinResponse, Peer, RaftBatch, RelayBatch, RemoveRequest, StatusRequest,
    StatusResponse,
};
use crate::{ClusterError, Cmd, Status};

const SECRET_HEADER: &str = "x-starling-cluster-secret";
/// Messages queued per peer; beyond this they are dropped (raft resends).
const PEER_QUEUE: usize = 4096;
const BATCH: usize = 256;

fn authorized<T>(req: &Request<T>, secret: &str) -> Result<(), RpcStatus> {
    let given = req
        .metadata()
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if given.ct_eq(secret.as_bytes()).into() {
        Ok(())
    } else {
        Err(RpcStatus::unauthenticated("bad cluster secret"))
    }
}

fn with_secret<T>(msg: T, secret: &str) -> Request<T> {
    let mut req = Request::new(msg);
    if let Ok(v) = secret.parse() {
        req.metadata_mut().insert(SECRET_HEADER, v);
    }
    req
}

/// What the mesh server needs from the node.
pub struct Service {
    pub secret: String,
    pub isolated: Arc<AtomicBool>,
    pub tx: mpsc::Sender<Cmd>,
    pub status: watch::Receiver<Status>,
    pub relay: mpsc::Sender<(u64, Vec<u8>)>,
    pub app_status: crate::AppStatus,
}

fn peers_out(peers: Vec<(u64, String)>) -> Vec<Peer> {
    peers
        .into_iter()
        .map(|(id, address)| Peer { id, address })
        .collect()
}

#[tonic::async_trait]
impl Raft for Service {
    async fn send(&self, req: Request<RaftBatch>) -> Result<Response<Ack>, RpcStatus> {
        authorized(&req, &self.secret)?;
        if self.isolated.load(Ordering::SeqCst) {
            return Err(RpcStatus::unavailable("isolated"));
        }
        for bytes in req.into_inner().messages {
            let m = Message::parse_from_bytes(&bytes)
                .map_err(|_| RpcStatus::invalid_argument("bad raft message"))?;
            self.tx
                .send(Cmd::Step(Box::new(m)))
                .await
                .map_err(|_| RpcStatus::unavailable("stopping"))?;
        }
        Ok(Response::new(Ack {}))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, RpcStatus> {
        authorized(&req, &self.secret)?;
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

    async fn remove(
        &self,
        req: Request<RemoveRequest>,
    ) -> Result<Response<JoinResponse>, RpcStatus> {
        authorized(&req, &self.secret)?;
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
        authorized(&req, &self.secret)?;
        if self.isolated.load(Ordering::SeqCst) {
            return Err(RpcStatus::unavailable("isolated"));
        }
        let RelayBatch { from, payloads } = req.into_inner();
        for p in payloads {
            // Waiting here pushes back on the sender (bounded queue).
            self.relay
                .send((from, p))
                .await
                .map_err(|_| RpcStatus::unavailable("stopping"))?;
        }
        Ok(Response::new(Ack {}))
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, RpcStatus> {
        authorized(&req, &self.secret)?;
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
pub fn serve(listener: tokio::net::TcpListener, service: Service, mut stop: watch::Receiver<bool>) {
    let svc = RaftServer::new(service).max_decoding_message_size(64 << 20);
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.changed().await;
        };
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
        {
            tracing::error!(error = %e, "cluster mesh server failed");
        }
    });
}

/// Outbound side: one queue and task per peer.
pub struct Transport {
    id: u64,
    secret: String,
    isolated: Arc<AtomicBool>,
    report: mpsc::Sender<Cmd>,
    peers: HashMap<u64, (String, mpsc::Sender<Message>)>,
}

impl Transport {
    pub fn new(
        id: u64,
        secret: String,
        isolated: Arc<AtomicBool>,
        report: mpsc::Sender<Cmd>,
    ) -> Self {
        Transport {
            id,
            secret,
            isolated,
            report,
            peers: HashMap::new(),
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
            tokio::spawn(peer_task(
                *id,
                addr.clone(),
                self.id,
                self.secret.clone(),
                self.isolated.clone(),
                rx,
                self.report.clone(),
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

async fn peer_task(
    peer: u64,
    addr: String,
    from: u64,
    secret: String,
    isolated: Arc<AtomicBool>,
    mut rx: mpsc::Receiver<Message>,
    report: mpsc::Sender<Cmd>,
) {
    let mut client: Option<RaftClient<tonic::transport::Channel>> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
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
        // Raft copes with late or repeated messages, so a batch is retried a
        // few times (a lost MsgPropose would otherwise lose a proposal).
        let mut sent = false;
        for attempt in 0..3u64 {
            if isolated.load(Ordering::SeqCst) {
                break;
            }
            if client.is_none() {
                let Ok(endpoint) =
                    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                else {
                    break;
                };
                let endpoint = endpoint
                    .connect_timeout(Duration::from_millis(500))
                    .timeout(Duration::from_secs(5));
                if let Ok(ch) = endpoint.connect().await {
                    client = Some(
                        RaftClient::new(ch)
                            .max_decoding_message_size(64 << 20)
                            .max_encoding_message_size(64 << 20),
                    );
                }
            }
            if let Some(c) = client.as_mut() {
                match c
                    .send(with_secret(
                        RaftBatch {
                            from,
                            messages: messages.clone(),
                        },
                        &secret,
                    ))
                    .await
                {
                    Ok(_) => {
                        sent = true;
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(peer, error = %e, "raft send failed");
                        client = None;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
        }
        if has_snapshot {
            let _ = report.try_send(Cmd::SnapshotSent(peer, sent));
        }
        if !sent {
            let _ = report.try_send(Cmd::Unreachable(peer));
        }
    }
}

/// Ask a member at `seed` to add us; returns the members, us included.
pub async fn join(
    seed: &str,
    secret: &str,
    id: u64,
    address: &str,
) -> Result<Vec<(u64, String)>, ClusterError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        let attempt = async {
            let mut c = RaftClient::connect(format!("http://{seed}"))
                .await
                .map_err(|e| e.to_string())?;
            let req = with_secret(
                JoinRequest {
                    node_id: id,
                    address: address.to_string(),
                },
                secret,
            );
            c.join(req).await.map_err(|e| e.message().to_string())
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
            Err(e) if e.contains("secret") => return Err(ClusterError::Join(e)),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(ClusterError::Join(last))
}

/// Query a node's status over the mesh (for `starling cluster status`).
pub async fn remote_status(addr: &str, secret: &str) -> Result<Status, String> {
    let mut c = RaftClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| e.to_string())?;
    let s = c
        .status(with_secret(StatusRequest {}, secret))
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    Ok(Status {
        id: s.id,
        leader: s.leader,
        term: s.term,
        commit: s.commit,
        applied: s.applied,
        role: s.role,
        peers: s.peers.into_iter().map(|p| (p.id, p.address)).collect(),
        active: Vec::new(),
        app: s.app,
    })
}

/// Outbound application messages: one bounded queue and task per node.
pub struct Relayer {
    id: u64,
    secret: String,
    isolated: Arc<AtomicBool>,
    status: watch::Receiver<Status>,
    queues: std::sync::Mutex<HashMap<u64, RelayQueue>>,
}

/// A node's address and the queue of its relay task.
type RelayQueue = (String, mpsc::Sender<Vec<u8>>);

/// Payloads queued per node before new ones are refused.
const RELAY_QUEUE: usize = 8192;

impl Relayer {
    pub fn new(
        id: u64,
        secret: String,
        isolated: Arc<AtomicBool>,
        status: watch::Receiver<Status>,
    ) -> Self {
        Relayer {
            id,
            secret,
            isolated,
            status,
            queues: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Queue `payload` for `node`. False if the node is unknown or its
    /// queue is full (the caller decides what a lost message means).
    pub fn send(&self, node: u64, payload: Vec<u8>, rt: &tokio::runtime::Handle) -> bool {
        let addr = match self
            .status
            .borrow()
            .peers
            .iter()
            .find(|(id, _)| *id == node)
        {
            Some((_, a)) => a.clone(),
            None => return false,
        };
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = queues
            .get(&node)
            .is_none_or(|(a, tx)| *a != addr || tx.is_closed());
        if fresh {
            let (tx, rx) = mpsc::channel(RELAY_QUEUE);
            rt.spawn(relay_task(
                node,
                addr.clone(),
                self.id,
                self.secret.clone(),
                self.isolated.clone(),
                rx,
            ));
            queues.insert(node, (addr, tx));
        }
        match queues.get(&node) {
            Some((_, tx)) => tx.try_send(payload).is_ok(),
            None => false,
        }
    }
}

async fn relay_task(
    node: u64,
    addr: String,
    from: u64,
    secret: String,
    isolated: Arc<AtomicBool>,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    let mut client: Option<RaftClient<tonic::transport::Channel>> = None;
    while let Some(first) = rx.recv().await {
        let mut payloads = vec![first];
        while payloads.len() < BATCH {
            match rx.try_recv() {
                Ok(p) => payloads.push(p),
                Err(_) => break,
            }
        }
        for attempt in 0..5u64 {
            if isolated.load(Ordering::SeqCst) {
                break;
            }
            if client.is_none() {
                if let Ok(e) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
                    if let Ok(ch) = e
                        .connect_timeout(Duration::from_millis(500))
                        .timeout(Duration::from_secs(5))
                        .connect()
                        .await
                    {
                        client = Some(RaftClient::new(ch).max_encoding_message_size(64 << 20));
                    }
                }
            }
            if let Some(c) = client.as_mut() {
                match c
                    .relay(with_secret(
                        RelayBatch {
                            from,
                            payloads: payloads.clone(),
                        },
                        &secret,
                    ))
                    .await
                {
                    Ok(_) => break,
                    Err(e) => {
                        tracing::debug!(node, error = %e, "relay failed");
                        client = None;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
        }
    }
}

/// Ask a member at `addr` to remove node `id`; returns the members left.
pub async fn remote_remove(
    addr: &str,
    secret: &str,
    id: u64,
) -> Result<Vec<(u64, String)>, String> {
    let mut c = RaftClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| e.to_string())?;
    let r = c
        .remove(with_secret(RemoveRequest { node_id: id }, secret))
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    Ok(r.peers.into_iter().map(|p| (p.id, p.address)).collect())
}

/// Hand one application message to the node at `addr`, from outside the
/// cluster (`from` is 0); the cluster secret authorizes it (admin tools).
pub async fn remote_relay(addr: &str, secret: &str, payload: Vec<u8>) -> Result<(), String> {
    let mut c = RaftClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| e.to_string())?;
    c.relay(with_secret(
        RelayBatch {
            from: 0,
            payloads: vec![payload],
        },
        secret,
    ))
    .await
    .map_err(|e| e.message().to_string())?;
    Ok(())
}
