//! Persistent state replicated through Raft: the server's typed commands
//! are proposed to the cluster and applied on every node by the same state
//! machine (design.md, "Cluster state"). Reads use the local replica.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use starling_cluster::{Cluster, ClusterError, StateMachine};

use crate::state::{Applied, Command, State, StateError};

/// How long a write waits for a quorum before it is refused.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// A command's result as it travels back to the proposing node.
#[derive(Debug, Serialize, Deserialize)]
enum Outcome {
    Ok {
        roster_version: u64,
        #[serde(default)]
        purged: Vec<crate::state::SessionRecord>,
    },
    AccountExists(String),
    NoSuchAccount(String),
    QuotaExceeded(String),
    Failed(String),
}

impl From<Result<Applied, StateError>> for Outcome {
    fn from(r: Result<Applied, StateError>) -> Self {
        match r {
            Ok(a) => Outcome::Ok {
                roster_version: a.roster_version,
                purged: a.purged,
            },
            Err(StateError::AccountExists(u)) => Outcome::AccountExists(u),
            Err(StateError::NoSuchAccount(u)) => Outcome::NoSuchAccount(u),
            Err(StateError::QuotaExceeded(u)) => Outcome::QuotaExceeded(u),
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
            } => Ok(Applied {
                roster_version,
                displaced: None,
                purged,
            }),
            Outcome::AccountExists(u) => Err(StateError::AccountExists(u)),
            Outcome::NoSuchAccount(u) => Err(StateError::NoSuchAccount(u)),
            Outcome::QuotaExceeded(u) => Err(StateError::QuotaExceeded(u)),
            Outcome::Failed(e) => Err(StateError::Cluster(e)),
        }
    }
}

pub type DisplacedHook = Box<dyn Fn(crate::state::SessionRecord) + Send + Sync>;

/// The state machine the cluster applies committed commands to.
pub struct ReplicatedState {
    pub state: Arc<State>,
    /// This node's id.
    pub node: u64,
    /// Called when a bind elsewhere displaces one of this node's sessions
    /// (set once the server is up).
    pub on_displaced: Arc<std::sync::OnceLock<DisplacedHook>>,
}

impl StateMachine for ReplicatedState {
    fn apply(&self, _index: u64, command: &[u8]) -> Vec<u8> {
        let result = match serde_json::from_slice::<Command>(command) {
            Ok(cmd) => self.state.apply_unflushed(&cmd),
            Err(e) => Err(StateError::Corrupt(e)),
        };
        // RFC 6120 §7.7.2.2 across nodes: the node that held the resource
        // ends its session, so every node resolves the conflict the same way.
        if let Ok(Applied {
            displaced: Some(old),
            ..
        }) = &result
        {
            if old.node == self.node {
                if let Some(hook) = self.on_displaced.get() {
                    hook(old.clone());
                }
            }
        }
        if let Err(e) = &result {
            if matches!(e, StateError::Storage(_) | StateError::Corrupt(_)) {
                tracing::error!(error = %e, "applying a committed command failed");
            }
        }
        serde_json::to_vec(&Outcome::from(result)).unwrap_or_default()
    }

    fn snapshot(&self) -> Result<Vec<u8>, String> {
        self.state.export().map_err(|e| e.to_string())
    }

    fn restore(&self, data: &[u8]) -> Result<(), String> {
        self.state.import(data).map_err(|e| e.to_string())
    }
}

/// Proposes commands from synchronous code (actors, modules) to the Raft
/// driver, which runs on its own runtime thread.
pub struct Replicator {
    cluster: Cluster,
    rt: tokio::runtime::Handle,
}

impl Replicator {
    pub fn new(cluster: Cluster, rt: tokio::runtime::Handle) -> Self {
        Replicator { cluster, rt }
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
        self.rt.spawn(async move {
            if let Err(e) = cluster.propose(bytes, COMMIT_TIMEOUT).await {
                tracing::warn!(error = %e, "session table update not committed");
            }
        });
    }

    /// `commit` for code already running on the Raft runtime.
    pub async fn commit_async(&self, cmd: &Command) -> Result<Applied, StateError> {
        let bytes = serde_json::to_vec(cmd)?;
        match self.cluster.propose(bytes, COMMIT_TIMEOUT).await {
            Ok(out) => serde_json::from_slice::<Outcome>(&out)
                .map_err(StateError::Corrupt)?
                .into(),
            Err(e) => Err(StateError::Cluster(e.to_string())),
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
        self.rt.spawn(async move {
            let _ = tx.send(cluster.propose(bytes, COMMIT_TIMEOUT).await);
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
