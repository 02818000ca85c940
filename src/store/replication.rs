//! Persistent state replicated through Raft: the server's typed commands
//! are proposed to the cluster and applied on every node by the same state
//! machine (design.md, "Cluster state"). Reads use the local replica.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use starling_cluster::{Cluster, ClusterError, StateMachine};

use crate::model::state::{Applied, Command, State, StateError};

/// How long a write waits for a quorum before it is refused.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// A command's result as it travels back to the proposing node.
#[derive(Debug, Serialize, Deserialize)]
enum Outcome {
    Ok {
        roster_version: u64,
        #[serde(default)]
        purged: Vec<crate::model::state::SessionRecord>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        refused: Vec<u64>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        released: Vec<String>,
        #[serde(default)]
        pubsub: crate::model::state::pubsub::PubsubApplied,
    },
    AccountExists(String),
    NoSuchAccount(String),
    QuotaExceeded(String),
    Superseded(String),
    Failed(String),
}

impl From<Result<Applied, StateError>> for Outcome {
    fn from(r: Result<Applied, StateError>) -> Self {
        match r {
            Ok(a) => Outcome::Ok {
                roster_version: a.roster_version,
                purged: a.purged,
                refused: a.refused,
                released: a.released,
                pubsub: a.pubsub,
            },
            Err(StateError::AccountExists(u)) => Outcome::AccountExists(u),
            Err(StateError::NoSuchAccount(u)) => Outcome::NoSuchAccount(u),
            Err(StateError::QuotaExceeded(u)) => Outcome::QuotaExceeded(u),
            Err(StateError::Superseded(u)) => Outcome::Superseded(u),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }
}

impl From<Outcome> for Result<Applied, StateError> {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Ok {
                roster_version,
                purged,
                refused,
                released,
                pubsub,
            } => Ok(Applied {
                roster_version,
                displaced: None,
                purged,
                refused,
                released,
                pubsub,
            }),
            Outcome::AccountExists(u) => Err(StateError::AccountExists(u)),
            Outcome::NoSuchAccount(u) => Err(StateError::NoSuchAccount(u)),
            Outcome::QuotaExceeded(u) => Err(StateError::QuotaExceeded(u)),
            Outcome::Superseded(u) => Err(StateError::Superseded(u)),
            Outcome::Failed(e) => Err(StateError::Cluster(e)),
        }
    }
}

/// What applying a command means for this node's live sessions. Decided
/// from the replica at that log index, so exactly one node acts where one
/// must.
#[derive(Debug)]
pub enum StateEvent {
    /// A bind elsewhere displaced this session of ours (RFC 6120 §7.7.2.2).
    Displaced(crate::model::state::SessionRecord),
    /// A node's sessions were purged (it was found dead). If it is this
    /// node, it was wrong: its live sessions register again.
    Purged(u64),
    /// `bare` has messages waiting offline while this node holds the
    /// resource that should get them (XEP-0160): deliver them now.
    OfflineWaiting(String),
    /// The account (a username) was deleted: its sessions here end.
    AccountDeleted(String),
    /// An operator ended this full JID's session.
    Kicked(String),
}

pub type EventHook = Box<dyn Fn(StateEvent) + Send + Sync>;

/// The state machine the cluster applies committed commands to.
pub struct ReplicatedState {
    pub state: Arc<State>,
    /// This node's id.
    pub node: u64,
    /// The served domain (offline queues are per username).
    pub domain: String,
    /// Told of [`StateEvent`]s (set once the server is up). Called on the
    /// Raft thread: it must only hand work on, never wait.
    pub on_event: Arc<std::sync::OnceLock<EventHook>>,
    /// The index of the log's first batch entry (0: none yet), as the
    /// cluster says (`StateMachine::batched_since`).
    pub batched_since: std::sync::atomic::AtomicU64,
}

impl ReplicatedState {
    fn emit(&self, ev: StateEvent) {
        if let Some(hook) = self.on_event.get() {
            hook(ev);
        }
    }

    /// After `cmd` applied: does this node hold the resource that should
    /// get `bare`'s offline messages now? The best available resource with
    /// a non-negative priority (ties: the smallest JID), the same answer on
    /// every replica at this index.
    fn offline_owner(&self, bare: &str) -> bool {
        let user = crate::model::config::account_key(&self.domain, bare);
        if !self.state.has_offline(&user) {
            return false;
        }
        self.state
            .sessions_of(bare)
            .into_iter()
            .filter(|r| r.available && r.priority >= 0)
            .max_by(|a, b| a.priority.cmp(&b.priority).then(b.jid.cmp(&a.jid)))
            .is_some_and(|r| r.node == self.node)
    }

    fn events(&self, cmd: &Command, result: &Result<Applied, StateError>) {
        let Ok(applied) = result else { return };
        // RFC 6120 §7.7.2.2 across nodes: the node that held the resource
        // ends its session, so every node resolves the conflict the same way.
        if let Some(old) = &applied.displaced {
            if old.node == self.node {
                self.emit(StateEvent::Displaced(old.clone()));
            }
        }
        let waiting = match cmd {
            // A node's start-up purge that found nothing of its old
            // sessions left has nothing for the node to mend.
            Command::PurgeNode { node, before }
                if before.is_none() || !applied.purged.is_empty() =>
            {
                self.emit(StateEvent::Purged(*node));
                None
            }
            Command::DeleteAccount { username } => {
                self.emit(StateEvent::AccountDeleted(username.clone()));
                None
            }
            Command::SessionKick { jid } => {
                self.emit(StateEvent::Kicked(jid.clone()));
                None
            }
            Command::OfflinePush { username, .. } => {
                Some(crate::model::config::account_jid(&self.domain, username))
            }
            Command::SessionBind { record, .. } | Command::SessionPresence { record }
                if record.available && record.priority >= 0 =>
            {
                record.jid.split_once('/').map(|(b, _)| b.to_string())
            }
            _ => None,
        };
        if let Some(bare) = waiting.filter(|b| self.offline_owner(b)) {
            self.emit(StateEvent::OfflineWaiting(bare));
        }
    }
}

impl StateMachine for ReplicatedState {
    fn apply(&self, index: u64, command: &[u8]) -> Vec<u8> {
        // After the cluster's switch to batch entries (every node of this
        // version or newer), the archive is kept in commit order.
        let since = self
            .batched_since
            .load(std::sync::atomic::Ordering::Acquire);
        self.state
            .set_archive_commit_order(since != 0 && index >= since << 16);
        let result = match serde_json::from_slice::<Command>(command) {
            Ok(cmd) => {
                let r = self
                    .state
                    .apply_unflushed(crate::model::state::LogIndex::Raft(index), &cmd);
                self.events(&cmd, &r);
                r
            }
            Err(e) => Err(StateError::Corrupt(e)),
        };
        if let Err(e) = &result {
            if matches!(e, StateError::Storage(_) | StateError::Corrupt(_)) {
                tracing::error!(error = %e, "applying a committed command failed");
            }
        }
        serde_json::to_vec(&Outcome::from(result)).unwrap_or_default()
    }

    fn batched_since(&self, index: u64) {
        self.batched_since
            .store(index, std::sync::atomic::Ordering::Release);
    }

    fn snapshot(&self) -> Result<Vec<u8>, String> {
        self.state.export().map_err(|e| e.to_string())
    }

    fn restore(&self, data: &[u8]) -> Result<(), String> {
        self.state.import(data).map_err(|e| e.to_string())
    }

    /// Fixed here, written by the snapshot thread while commits go on
    /// (`state/tracked.rs`): the archive never sits in memory whole.
    fn snapshot_job(&self) -> Result<starling_cluster::SnapshotJob, String> {
        self.state.begin_snapshot().map_err(|e| e.to_string())?;
        // A job dropped unrun (no disk space for the file) ends the record.
        let pending = crate::model::state::SnapshotPending::new(self.state.clone());
        Ok(Box::new(move |out: &mut dyn std::io::Write| {
            pending.write(out).map_err(|e| e.to_string())
        }))
    }

    fn restore_from(&self, input: &mut dyn std::io::Read) -> Result<(), String> {
        self.state.import_from(input).map_err(|e| e.to_string())
    }

    /// Archive appends order nothing: a message is delivered without
    /// waiting for its archive copy, so a relay need not wait for a node
    /// to apply the stream of them (cross-node latency under load).
    fn orders_relays(&self, command: &[u8]) -> bool {
        !crate::model::state::Command::is_archive_append(command)
    }
}

/// Proposes commands from synchronous code (actors, modules) to the Raft
/// driver, which runs on its own runtime thread.
#[derive(Clone)]
pub struct Replicator {
    cluster: Cluster,
    rt: tokio::runtime::Handle,
    health: Arc<CommitHealth>,
    /// Messages being stored or routed again on a task (see [`Owning`]).
    owning: Arc<std::sync::atomic::AtomicUsize>,
}

/// Held while a task finishes taking a message into the server's care
/// (an offline commit, a re-route): shutdown waits for these.
pub struct Owning(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Owning {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Unix ms of the last commit that succeeded and the last that failed: a
/// node whose latest attempt failed is not ready (http.rs).
#[derive(Default)]
struct CommitHealth {
    last_ok: std::sync::atomic::AtomicU64,
    last_failed: std::sync::atomic::AtomicU64,
}

impl CommitHealth {
    fn record(&self, ok: bool) {
        let now = crate::base::time::unix_now().as_millis() as u64;
        let slot = if ok { &self.last_ok } else { &self.last_failed };
        slot.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Replicator {
    pub fn new(cluster: Cluster, rt: tokio::runtime::Handle) -> Self {
        Replicator {
            cluster,
            rt,
            health: Arc::default(),
            owning: Arc::default(),
        }
    }

    /// Count a message being taken into the server's care until dropped.
    pub fn owning(&self) -> Owning {
        self.owning
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Owning(self.owning.clone())
    }

    /// Messages not yet owned anywhere: being stored, routed again, or
    /// relayed and not yet taken by their node. A stopping node waits
    /// (bounded) until this is zero.
    pub fn unowned(&self) -> usize {
        self.owning.load(std::sync::atomic::Ordering::Acquire) + self.cluster.relays_pending()
    }

    /// The latest commit attempt failed (no quorum, or the Raft thread is
    /// stuck) and none succeeded since.
    pub fn cannot_commit(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.health.last_failed.load(Relaxed) > self.health.last_ok.load(Relaxed)
    }

    /// Commit a command that changes nothing, to find out whether commits
    /// go through again (readiness probes after a failure).
    pub async fn probe(&self) -> bool {
        let noop = Command::SessionUnbind {
            jid: String::new(),
            node: 0,
            sid: 0,
        };
        self.commit_async(&noop).await.is_ok()
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Propose without waiting (session bookkeeping that must not hold up
    /// an actor). Failures are logged; the node purge cleans up.
    pub fn submit(&self, cmd: &Command) {
        let Ok(bytes) = serde_json::to_vec(cmd) else {
            return;
        };
        let cluster = self.cluster.clone();
        let health = self.health.clone();
        self.rt.spawn(async move {
            let r = cluster.propose(bytes, COMMIT_TIMEOUT).await;
            health.record(r.is_ok());
            if let Err(e) = r {
                tracing::warn!(error = %e, "state update not committed");
            }
        });
    }

    /// [`Replicator::commit_async`] for callers that cannot await: `then`
    /// gets the outcome, on the Raft runtime.
    pub fn commit_then(&self, cmd: Command, then: Box<dyn FnOnce(Result<Applied, String>) + Send>) {
        let me = self.clone();
        self.rt.spawn(async move {
            then(me.commit_async(&cmd).await.map_err(|e| e.to_string()));
        });
    }

    /// `then(true)` once this node has applied what the cluster had
    /// committed when asked (Raft ReadIndex); false if no quorum answered
    /// within 2 s.
    pub fn caught_up_then(&self, then: Box<dyn FnOnce(bool) + Send>) {
        let cluster = self.cluster.clone();
        self.rt.spawn(async move {
            then(cluster.caught_up(Duration::from_secs(2)).await.is_ok());
        });
    }

    /// `commit` for code already running on the Raft runtime.
    pub async fn commit_async(&self, cmd: &Command) -> Result<Applied, StateError> {
        let bytes = serde_json::to_vec(cmd)?;
        let r = self.cluster.propose(bytes, COMMIT_TIMEOUT).await;
        self.health.record(r.is_ok());
        decode(r)
    }

    /// [`Replicator::commit_async`] with the command queued before this
    /// returns: two commands committed in order from one thread enter the
    /// log in that order whichever future is polled first.
    pub fn commit_in_order(
        &self,
        cmd: &Command,
    ) -> impl std::future::Future<Output = Result<Applied, StateError>> + Send + 'static {
        let queued = serde_json::to_vec(cmd)
            .map(|bytes| self.cluster.propose_in_order(bytes, COMMIT_TIMEOUT))
            .map_err(StateError::from);
        let health = self.health.clone();
        async move {
            let r = queued?.await;
            health.record(r.is_ok());
            decode(r)
        }
    }

    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.rt
    }

    /// Replicate `cmd` and return its result once applied on this node.
    /// Blocks the calling thread for one commit (a few milliseconds); a
    /// node cut off from the majority gets an error instead of a silent,
    /// inconsistent write.
    pub fn commit(&self, cmd: &Command) -> Result<Applied, StateError> {
        let bytes = serde_json::to_vec(cmd)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let cluster = self.cluster.clone();
        let health = self.health.clone();
        self.rt.spawn(async move {
            let r = cluster.propose(bytes, COMMIT_TIMEOUT).await;
            health.record(r.is_ok());
            let _ = tx.send(r);
        });
        match rx.recv_timeout(COMMIT_TIMEOUT + Duration::from_secs(1)) {
            Ok(Ok(out)) => match serde_json::from_slice::<Outcome>(&out) {
                Ok(o) => o.into(),
                Err(e) => Err(StateError::Corrupt(e)),
            },
            Ok(Err(ClusterError::NoQuorum)) | Err(_) => Err(StateError::Cluster(
                "no quorum: this node cannot reach a majority of the cluster".into(),
            )),
            Ok(Err(e)) => Err(StateError::Cluster(e.to_string())),
        }
    }
}

/// The state machine's answer to one commit.
fn decode(r: Result<Vec<u8>, ClusterError>) -> Result<Applied, StateError> {
    match r {
        Ok(out) => serde_json::from_slice::<Outcome>(&out)
            .map_err(StateError::Corrupt)?
            .into(),
        Err(ClusterError::NoQuorum) => Err(StateError::Cluster(
            "no quorum: this node cannot reach a majority of the cluster".into(),
        )),
        Err(e) => Err(StateError::Cluster(e.to_string())),
    }
}
