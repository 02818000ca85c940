//! `starling-cluster`: one Raft group replicated over a tonic mesh, with
//! its log in sled. It knows nothing of XMPP: it replicates opaque
//! commands into a [`StateMachine`] that the server implements.
//!
//! One task drives the raft-rs `RawNode` (tick, step, propose, Ready) in
//! `driver.rs`; `transport.rs` carries messages between nodes, which
//! authenticate each other with a shared cluster secret and, when
//! configured, certificates of the cluster's CA (`mesh_tls.rs`).

// rust-protobuf (v2) messages from raft-rs carry hidden bookkeeping fields
// and are built by assigning fields after `default()`.
#![allow(clippy::field_reassign_with_default)]

mod batch;
pub mod blobs;
mod driver;
pub mod mesh_tls;
mod raft_log;
mod raft_stream;
mod relay_stream;
mod snapshots;
pub mod storage;
mod transport;

pub use mesh_tls::{CertAuthority, MeshAuth, MeshTls, TlsError};
pub use relay_stream::ANSWER_GATHER;
pub use transport::{remote_relay, remote_remove, remote_status, Lane, RelayQueueStats};

/// Code generated from `proto/cluster.proto`.
pub mod proto {
    tonic::include_proto!("starling.cluster");
}

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

/// What the cluster replicates into. `apply` must be deterministic: every
/// node applies the same commands in the same order.
pub trait StateMachine: Send + Sync + 'static {
    /// Apply the command committed at `index`; the bytes returned go back
    /// to the node that proposed it. The driver does not flush after
    /// applying: the command is in this node's log on disk (and a
    /// majority's) before it is applied, and a state machine kept in the
    /// same sled database is made durable with the log's next flush; after
    /// a crash, sled recovers a prefix of the writes and what is missing is
    /// applied again from the log. A state machine kept elsewhere must
    /// apply idempotently by `index` (a command may be applied again after
    /// a crash).
    fn apply(&self, index: u64, command: &[u8]) -> Vec<u8>;
    /// The whole state, for a node that joins or falls behind.
    fn snapshot(&self) -> Result<Vec<u8>, String>;
    /// Replace the whole state with a snapshot.
    fn restore(&self, data: &[u8]) -> Result<(), String>;
    /// Fix a snapshot at the state as applied now and answer the job that
    /// writes it. Called on the driver thread between two applies, so it
    /// must be quick; the job runs on a thread of its own while commands go
    /// on being applied, and writes the state as it was at this call. The
    /// default holds the whole state in memory ([`StateMachine::snapshot`]).
    fn snapshot_job(&self) -> Result<SnapshotJob, String> {
        let data = self.snapshot()?;
        Ok(Box::new(move |out: &mut dyn std::io::Write| {
            out.write_all(&data).map_err(|e| e.to_string())
        }))
    }
    /// Replace the whole state with what a snapshot job wrote, read from
    /// `input` (the default reads it all, then [`StateMachine::restore`]).
    fn restore_from(&self, input: &mut dyn std::io::Read) -> Result<(), String> {
        let mut data = Vec::new();
        input
            .read_to_end(&mut data)
            .map_err(|e| format!("reading a snapshot: {e}"))?;
        self.restore(&data)
    }
    /// Whether a relay sent after this command was applied must find it
    /// applied on the receiving node (the default). A command nothing
    /// relayed depends on (an archive append) says no, so relays do not
    /// wait for a lagging node to apply a stream of such commands.
    fn orders_relays(&self, _command: &[u8]) -> bool {
        true
    }
    /// The log's first batch entry is at `index` (0: none; see
    /// `batch.rs`): commands applied under a sequence number of at least
    /// `index << 16` come after the cluster's switch to batch entries, when
    /// every node runs a version that writes them. Told before any command
    /// is applied, at the switch, and after a snapshot is installed. A
    /// state machine can key a change of its own behaviour to it, so that
    /// every node changes at the same command.
    fn batched_since(&self, _index: u64) {}
}

/// Writes a snapshot fixed by [`StateMachine::snapshot_job`].
pub type SnapshotJob =
    Box<dyn FnOnce(&mut dyn std::io::Write) -> Result<(), String> + Send + 'static>;

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's id, unique in the cluster, never 0.
    pub id: u64,
    /// Where the mesh listens (port 0 picks one).
    pub listen: SocketAddr,
    /// Address other nodes use to reach us; empty means the bound address.
    pub advertise: String,
    /// Shared secret every node presents; without it nothing is accepted.
    pub secret: String,
    /// This node's certificate and the cluster CA: mutual TLS on the mesh.
    /// `None`: plain HTTP/2 (loopback and tests).
    pub tls: Option<MeshTls>,
    /// A member to join through; `None` bootstraps a new cluster (or
    /// restarts from the data already on disk).
    pub join: Option<String>,
    pub tick: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Compact the log once this many entries are applied past its start.
    pub compact_after: u64,
    /// Where snapshot files are built and received (`None`: a directory
    /// of this process under the system's temporary directory).
    pub snapshot_dir: Option<std::path::PathBuf>,
    /// Where application files (HTTP uploads) sent over the mesh are kept
    /// (`None`: under the system's temporary directory).
    pub blob_dir: Option<std::path::PathBuf>,
}

impl ClusterConfig {
    pub fn new(id: u64, listen: SocketAddr, secret: impl Into<String>) -> Self {
        ClusterConfig {
            id,
            listen,
            advertise: String::new(),
            secret: secret.into(),
            tls: None,
            join: None,
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            compact_after: 1000,
            snapshot_dir: None,
            blob_dir: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("no quorum: the change could not be committed in time")]
    NoQuorum,
    #[error("the cluster node has stopped")]
    Stopped,
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("cannot join: {0}")]
    Join(String),
    #[error("mesh TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, String),
    #[error("proposal rejected: {0}")]
    Rejected(String),
    /// A snapshot replaced this node's state while the proposal was in
    /// flight: it may or may not be in it.
    #[error("outcome unknown: a snapshot was installed while the change was in flight")]
    Indeterminate,
    /// A peer could not be reached or did not take a file.
    #[error("peer unavailable: {0}")]
    Unavailable(String),
}

/// A node's view of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub id: u64,
    pub leader: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    /// The newest applied entry a relay from this node must find applied
    /// at its receiver ([`StateMachine::orders_relays`]); at most `applied`.
    pub ordered: u64,
    /// Read-index requests this node sent to raft-rs since it started:
    /// reads asked together share one (`driver.rs`, `issue_reads`).
    pub read_requests: u64,
    pub role: String,
    /// Members: (id, mesh address).
    pub peers: Vec<(u64, String)>,
    /// On the leader: members it heard from within the last election
    /// timeout (raft-rs check_quorum bookkeeping). Empty elsewhere.
    pub active: Vec<u64>,
    /// The application's own status line (remote status only).
    pub app: String,
}

/// A function that describes the application's state for `Status`.
pub type AppStatus = Arc<std::sync::OnceLock<Box<dyn Fn() -> String + Send + Sync>>>;

/// Application messages from other nodes: (sender id, payload).
pub type RelayReceiver = mpsc::Receiver<Incoming>;

/// The answer to one relayed payload: true once the receiving node owns
/// it, false if it could not take it. Dropping it unanswered means false.
pub type Receipt = oneshot::Sender<bool>;

/// An application message from another member, with the receipt the
/// sender waits for before it forgets the message.
pub struct Incoming {
    pub from: u64,
    pub payload: Vec<u8>,
    pub receipt: Receipt,
    /// Set when the sender records marks (see [`Marker`]).
    pub mark: Option<Marker>,
    /// Marks a payload sent again carries: an earlier life of this node
    /// recorded them, and may have written it before it ended. Settle
    /// them (the client's resume attempt) before delivering it again.
    pub marks: Vec<Mark>,
}

/// Lets the application tell a payload's sender, before it writes the
/// payload to a client, which stanza of which resumable session it will
/// be (`RelayAnswers.marks`). The sender keeps the mark with the payload:
/// should this node die after the write and before its answer, the
/// sender gives the payload back *with* its marks, and the client's next
/// resume attempt (its XEP-0198 `h`) tells whether it arrived, instead of
/// the payload being routed again (a duplicate) or taken as delivered (a
/// loss). Write only once the returned receiver fires; if it fails (the
/// stream broke, the sender is gone), write anyway: the sender then has
/// no mark, as before marks.
#[derive(Clone)]
pub struct Marker {
    pub(crate) seq: u64,
    pub(crate) tx: mpsc::UnboundedSender<relay_stream::MarkRequest>,
}

impl Marker {
    /// Ask the sender to record that this payload goes out as stanza
    /// `number` of session `session` (its resumption id).
    pub fn mark(&self, session: &str, number: u64) -> oneshot::Receiver<()> {
        let (gate, rx) = oneshot::channel();
        let _ = self.tx.send(relay_stream::MarkRequest {
            seq: self.seq,
            session: session.to_string(),
            number,
            gate,
        });
        rx
    }
}

/// Marks kept per payload at most (one per session it is written to; a
/// relayed payload goes to one session, once per life of its node).
pub(crate) const MAX_MARKS: usize = 8;

/// A mark the receiving node recorded with a payload before writing it:
/// the payload went out as stanza `number` of resumable session `session`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub session: String,
    pub number: u64,
}

/// A payload the relayer gives back to the application: the node refused
/// it, or was given up on ([`Cluster::take_back`]) before it took it. The
/// application routes it again; `receipt` is the sender's, still unanswered.
pub struct Returned {
    pub node: u64,
    pub payload: Vec<u8>,
    pub receipt: Option<Receipt>,
    /// What the node said it was about to write it as (see [`Marker`]):
    /// empty unless it may have reached a client.
    pub marks: Vec<Mark>,
}

pub(crate) enum Cmd {
    Step(Box<raft::prelude::Message>),
    Propose(Vec<u8>, oneshot::Sender<Result<Vec<u8>, ClusterError>>),
    AddNode(
        u64,
        String,
        oneshot::Sender<Result<Vec<(u64, String)>, ClusterError>>,
    ),
    RemoveNode(
        u64,
        oneshot::Sender<Result<Vec<(u64, String)>, ClusterError>>,
    ),
    Unreachable(u64),
    TransferLeader(u64),
    SetPeers(Vec<(u64, String)>),
    /// A snapshot to this peer was delivered (true) or lost (false).
    SnapshotSent(u64, bool),
    /// Raft ReadIndex: answered with the leader's commit index once the
    /// leader has confirmed it still leads.
    ReadIndex(oneshot::Sender<u64>),
}

/// A running node. Dropping it does not stop it; call [`Cluster::shutdown`].
#[derive(Clone)]
pub struct Cluster {
    id: u64,
    tx: mpsc::Sender<Cmd>,
    status: watch::Receiver<Status>,
    addr: SocketAddr,
    isolated: Arc<AtomicBool>,
    stop: Arc<watch::Sender<bool>>,
    relayer: Arc<transport::Relayer>,
    relay_rx: Arc<std::sync::Mutex<Option<RelayReceiver>>>,
    returned_rx: Arc<std::sync::Mutex<Option<mpsc::UnboundedReceiver<Returned>>>>,
    /// The runtime the node runs on (relay tasks are spawned there even
    /// when `relay` is called from another thread).
    rt: tokio::runtime::Handle,
    app_status: AppStatus,
    /// What relay streams carried here (and the fault switch that cuts them).
    seen: Arc<relay_stream::Seen>,
    raft_streams: Arc<raft_stream::Switches>,
    /// Which log formats the members read (batch entries' gate).
    formats: Arc<batch::LogFormats>,
    /// The driver's thread, joined by [`Cluster::shutdown_and_wait`].
    driver: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// How this node authenticates to its peers (file streams dial them).
    auth: MeshAuth,
    /// Application files (see `blobs`).
    blob_dir: std::path::PathBuf,
}

impl Cluster {
    /// Start a node on `db` (which also holds the state machine's data).
    pub async fn start(
        db: sled::Db,
        sm: Arc<dyn StateMachine>,
        cfg: ClusterConfig,
    ) -> Result<Cluster, ClusterError> {
        if let Some(tls) = &cfg.tls {
            if !tls.names_node(cfg.id) {
                return Err(ClusterError::Tls(format!(
                    "the node certificate does not name {} (the certificate of node {} is needed)",
                    mesh_tls::node_name(cfg.id),
                    cfg.id
                )));
            }
        }
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| ClusterError::Listen(cfg.listen.to_string(), e.to_string()))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ClusterError::Listen(cfg.listen.to_string(), e.to_string()))?;
        let advertise = if cfg.advertise.is_empty() {
            addr.to_string()
        } else {
            cfg.advertise.clone()
        };
        let snapshot_dir = cfg.snapshot_dir.clone().unwrap_or_else(|| {
            static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            std::env::temp_dir().join(format!(
                "starling-snapshots-{}-{}-{}",
                std::process::id(),
                cfg.id,
                STARTED.fetch_add(1, Ordering::Relaxed)
            ))
        });
        let blob_dir = cfg
            .blob_dir
            .clone()
            .unwrap_or_else(|| snapshot_dir.join("blobs"));
        let store = storage::SledStorage::open(db, sm, snapshot_dir.clone())
            .map_err(|e| ClusterError::Storage(e.to_string()))?;
        let fresh = !store
            .is_initialized()
            .map_err(|e| ClusterError::Storage(e.to_string()))?;
        if fresh && cfg.join.is_none() {
            store
                .bootstrap(cfg.id)
                .map_err(|e| ClusterError::Storage(e.to_string()))?;
            store
                .set_peers(&[(cfg.id, advertise.clone())])
                .map_err(|e| ClusterError::Storage(e.to_string()))?;
        }
        let (tx, rx) = mpsc::channel(4096);
        let (status_tx, status) = watch::channel(Status {
            id: cfg.id,
            ..Status::default()
        });
        let isolated = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(watch::channel(false).0);
        let auth = MeshAuth::new(cfg.secret.clone(), cfg.tls.clone());
        let formats = Arc::new(batch::LogFormats::default());
        let transport = transport::Transport::new(
            cfg.id,
            auth.clone(),
            isolated.clone(),
            tx.clone(),
            snapshot_dir.clone(),
            formats.clone(),
        );
        let (relay_tx, relay_rx) = mpsc::channel(8192);
        let app_status: AppStatus = Arc::new(std::sync::OnceLock::new());
        let seen = Arc::new(relay_stream::Seen::default());
        let raft_streams = Arc::new(raft_stream::Switches::default());
        transport::serve(
            listener,
            transport::Service {
                auth: auth.clone(),
                isolated: isolated.clone(),
                tx: tx.clone(),
                status: status.clone(),
                relay: relay_tx,
                app_status: app_status.clone(),
                snapshot_dir,
                blob_dir: blob_dir.clone(),
                seen: seen.clone(),
                formats: formats.clone(),
                raft_streams: raft_streams.clone(),
            },
            stop.subscribe(),
        )?;
        let (returned_tx, returned_rx) = mpsc::unbounded_channel();
        let relayer = Arc::new(transport::Relayer::new(
            cfg.id,
            auth.clone(),
            isolated.clone(),
            status.clone(),
            returned_tx,
        ));
        let formats_keep = formats.clone();
        let node = driver::Driver::new(&cfg, store.clone(), transport, status_tx, formats)
            .map_err(|e| ClusterError::Storage(e.to_string()))?;
        // The driver has a thread of its own: applying a batch and its fsync
        // block it, and the mesh (relays, raft messages, snapshots) goes on
        // on this runtime meanwhile.
        let stop_rx = stop.subscribe();
        let driver_rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClusterError::Storage(format!("cannot start the raft driver: {e}")))?;
        let driver = std::thread::Builder::new()
            .name(format!("raft-driver-{}", cfg.id))
            .spawn(move || driver_rt.block_on(node.run(rx, stop_rx)))
            .map_err(|e| ClusterError::Storage(format!("cannot start the raft driver: {e}")))?;
        let relay_rx = Arc::new(std::sync::Mutex::new(Some(relay_rx)));
        let returned_rx = Arc::new(std::sync::Mutex::new(Some(returned_rx)));
        let cluster = Cluster {
            id: cfg.id,
            tx,
            status,
            addr,
            isolated,
            stop,
            relayer,
            relay_rx,
            returned_rx,
            rt: tokio::runtime::Handle::current(),
            app_status,
            seen,
            raft_streams,
            formats: formats_keep,
            driver: Arc::new(std::sync::Mutex::new(Some(driver))),
            auth: auth.clone(),
            blob_dir,
        };
        if fresh {
            if let Some(seed) = &cfg.join {
                let peers = transport::join(seed, &auth, cfg.id, &advertise).await?;
                // Our replies must reach the leader before its quorum check runs.
                cluster
                    .tx
                    .send(Cmd::SetPeers(peers))
                    .await
                    .map_err(|_| ClusterError::Stopped)?;
            }
        }
        Ok(cluster)
    }

    /// Where application files are kept on this node.
    pub fn blob_dir(&self) -> &std::path::Path {
        &self.blob_dir
    }

    /// The mesh address of member `node`.
    fn peer_addr(&self, node: u64) -> Result<String, ClusterError> {
        self.status()
            .peers
            .iter()
            .find(|(id, _)| *id == node)
            .map(|(_, a)| a.clone())
            .ok_or_else(|| ClusterError::Unavailable(format!("node {node} is not a member")))
    }

    /// Stream an application file to member `node` (`size` bytes, fed
    /// through `chunks`); answered once it is on that node's disk.
    pub async fn put_blob(
        &self,
        node: u64,
        name: &str,
        size: u64,
        chunks: mpsc::Receiver<Vec<u8>>,
    ) -> Result<(), ClusterError> {
        if !blobs::valid_name(name) {
            return Err(ClusterError::Unavailable(format!("bad blob name {name:?}")));
        }
        let addr = self.peer_addr(node)?;
        transport::put_blob(
            &self.auth,
            self.id,
            node,
            &addr,
            name.to_string(),
            size,
            chunks,
        )
        .await
        .map_err(ClusterError::Unavailable)
    }

    /// An application file from member `node`: its size and its chunks
    /// (`None` if that node has no such file).
    #[allow(clippy::type_complexity)]
    pub async fn get_blob(
        &self,
        node: u64,
        name: &str,
    ) -> Result<Option<(u64, mpsc::Receiver<Result<Vec<u8>, String>>)>, ClusterError> {
        let addr = self.peer_addr(node)?;
        transport::get_blob(&self.auth, self.id, node, &addr, name)
            .await
            .map_err(ClusterError::Unavailable)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The mesh address this node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replicate `command`; resolves with the state machine's answer once
    /// it is applied here. Fails with `NoQuorum` if a majority cannot be
    /// reached within `timeout` (the outcome is then unknown).
    pub async fn propose(
        &self,
        command: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, ClusterError> {
        self.clone().proposed(None, command, timeout).await
    }

    /// [`Cluster::propose`] with the command queued before this returns, so
    /// that commands proposed one after another from one thread enter the
    /// log in that order (two offline messages to one user, say) whichever
    /// of their futures runs first. A full queue falls back to waiting for
    /// room, and a proposal refused for want of a leader is sent again;
    /// only those two rare paths can reorder.
    pub fn propose_in_order(
        &self,
        command: Vec<u8>,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, ClusterError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let queued = match self.tx.try_send(Cmd::Propose(command.clone(), tx)) {
            Ok(()) => Some(rx),
            Err(_) => None,
        };
        self.clone().proposed(queued, command, timeout)
    }

    async fn proposed(
        self,
        mut queued: Option<oneshot::Receiver<Result<Vec<u8>, ClusterError>>>,
        command: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, ClusterError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let rx = match queued.take() {
                Some(rx) => rx,
                None => {
                    let (tx, rx) = oneshot::channel();
                    self.tx
                        .send(Cmd::Propose(command.clone(), tx))
                        .await
                        .map_err(|_| ClusterError::Stopped)?;
                    rx
                }
            };
            match tokio::time::timeout_at(deadline, rx).await {
                // Dropped before entering the log (no leader yet): safe to retry.
                Ok(Ok(Err(ClusterError::Rejected(_))))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Ok(r)) => return r,
                Ok(Err(_)) => return Err(ClusterError::Stopped),
                // Not committed in time: the outcome is unknown, so no retry.
                Err(_) => return Err(ClusterError::NoQuorum),
            }
        }
    }

    /// Wait until this node has applied everything the cluster had
    /// committed when asked (Raft ReadIndex: the leader confirms with a
    /// quorum that it still leads): a read of local state after this is at
    /// least as new as any write acknowledged before the call. Fails with
    /// `NoQuorum` when no leader answers within `timeout`.
    pub async fn caught_up(&self, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // raft-rs drops a read it cannot serve yet (no leader, or a leader
        // that has not committed in its term): ask again now and then.
        let index = loop {
            let (tx, rx) = oneshot::channel();
            self.tx
                .send(Cmd::ReadIndex(tx))
                .await
                .map_err(|_| ClusterError::Stopped)?;
            let retry = (tokio::time::Instant::now() + Duration::from_millis(300)).min(deadline);
            match tokio::time::timeout_at(retry, rx).await {
                Ok(Ok(i)) => break i,
                Ok(Err(_)) => return Err(ClusterError::Stopped),
                Err(_) if retry >= deadline => return Err(ClusterError::NoQuorum),
                Err(_) => {}
            }
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.wait_for(left, |s| s.applied >= index)
            .await
            .map(|_| ())
            .map_err(|_| ClusterError::NoQuorum)
    }

    /// Remove a member (through raft, so every node agrees).
    pub async fn remove_node(
        &self,
        id: u64,
        timeout: Duration,
    ) -> Result<Vec<(u64, String)>, ClusterError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::RemoveNode(id, tx))
            .await
            .map_err(|_| ClusterError::Stopped)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClusterError::Stopped),
            Err(_) => Err(ClusterError::NoQuorum),
        }
    }

    /// Ask the leader role to move to `id` (used before draining a node).
    pub async fn transfer_leader(&self, id: u64) {
        let _ = self.tx.send(Cmd::TransferLeader(id)).await;
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Wait (bounded) until `pred` holds for this node's status.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&Status) -> bool,
    ) -> Result<Status, Status> {
        let mut rx = self.status.clone();
        let res = tokio::time::timeout(timeout, async {
            loop {
                if pred(&rx.borrow()) {
                    return;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await;
        let s = self.status();
        if res.is_ok() {
            Ok(s)
        } else {
            Err(s)
        }
    }

    /// Test and operations switch: drop every raft message to and from
    /// this node, as if its network were cut.
    pub fn set_isolated(&self, isolated: bool) {
        self.isolated.store(isolated, Ordering::SeqCst);
    }

    /// Test and operations switch: cut every relay stream arriving here
    /// right after `n` payloads were handed on (0: never), before their
    /// answers go out, as a broken connection would. The senders open new
    /// streams and send again what had no answer; nothing may be lost or
    /// handed on twice.
    pub fn set_relay_cut_every(&self, n: u64) {
        self.seen.cut_every.store(n, Ordering::SeqCst);
    }

    /// Test switch: say this node reads log format `format` only (1: one
    /// command per entry, as a node from before batch entries), so the
    /// cluster proposes no batches while it is a voter.
    pub fn set_claimed_log_format(&self, format: u32) {
        self.formats.claim.store(format, Ordering::SeqCst);
    }

    /// Test switch: refuse relay streams as a node of an older version
    /// does, so senders use `Relay` batches (a rolling upgrade's mixed
    /// cluster).
    pub fn set_relay_streams_refused(&self, refused: bool) {
        self.seen.refuse_streams.store(refused, Ordering::SeqCst);
    }

    /// Test and operations switch: cut every Raft stream arriving here
    /// right after `n` batches were handed to the driver (0: never), before
    /// their answers go out. The senders open new streams and send again
    /// what had no answer: no proposal may be lost or applied twice.
    pub fn set_raft_stream_cut_every(&self, n: u64) {
        self.raft_streams.cut_every.store(n, Ordering::SeqCst);
    }

    /// How many Raft streams [`Cluster::set_raft_stream_cut_every`] has cut.
    pub fn raft_streams_cut(&self) -> u64 {
        self.raft_streams.cuts.load(Ordering::SeqCst)
    }

    /// Test switch: refuse Raft streams as a node of an older version
    /// does, so peers send it `Send` batches.
    pub fn set_raft_streams_refused(&self, refused: bool) {
        self.raft_streams.refuse.store(refused, Ordering::SeqCst);
    }

    /// How many relay streams [`Cluster::set_relay_cut_every`] has cut.
    pub fn relay_streams_cut(&self) -> u64 {
        self.seen.cuts.load(Ordering::SeqCst)
    }

    /// How many answer messages (owned or refused payloads) this node has
    /// sent on relay streams into it: at most one per [`ANSWER_GATHER`] on
    /// a stream, except when 256 answers are ready at once.
    pub fn relay_answer_messages(&self) -> u64 {
        self.seen.answer_messages.load(Ordering::SeqCst)
    }

    /// Send an application message to another member: ordered per
    /// destination, kept and retried until that node answers for it. What
    /// it refuses, or what is still here when [`Cluster::take_back`] gives
    /// up on it, comes back through [`Cluster::take_returned`]. `receipt`
    /// is answered true once the node owns the payload. Callable from any
    /// thread. An unknown node or a full queue gives the payload back at once.
    pub fn relay(
        &self,
        node: u64,
        lane: Lane,
        payload: Vec<u8>,
        receipt: Option<Receipt>,
    ) -> Result<(), Returned> {
        self.relayer.send(node, lane, payload, receipt, &self.rt)
    }

    /// Each relay queue's depth and connections (metrics).
    pub fn relay_stats(&self) -> Vec<RelayQueueStats> {
        self.relayer.stats()
    }

    /// Relayed payloads not yet owned by their node (queued or in flight).
    pub fn relays_pending(&self) -> usize {
        self.relayer.pending()
    }

    /// Stop trying `node` (it was found dead): everything queued for it,
    /// and a batch in flight if that fails, comes back as [`Returned`].
    pub fn take_back(&self, node: u64) {
        self.relayer.take_back(node)
    }

    /// The stream of payloads given back to the application; once.
    pub fn take_returned(&self) -> Option<mpsc::UnboundedReceiver<Returned>> {
        self.returned_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Describe the application's state in remote status answers (once).
    pub fn set_app_status(&self, f: Box<dyn Fn() -> String + Send + Sync>) {
        let _ = self.app_status.set(f);
    }

    /// The stream of (sender, payload) application messages; once.
    pub fn take_relay_receiver(&self) -> Option<RelayReceiver> {
        self.relay_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Resolves when [`Cluster::shutdown`] has been called.
    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Stop the driver and the mesh server.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// [`Cluster::shutdown`], then wait until the driver has finished what
    /// it was doing (a batch being applied, a snapshot being installed):
    /// a process that exits after this leaves its store consistent. Call
    /// it from a thread that may block, not from the mesh's runtime.
    pub fn shutdown_and_wait(&self) {
        self.shutdown();
        let handle = self.driver.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            if h.join().is_err() {
                tracing::error!("the raft driver thread panicked");
            }
        }
    }
}
