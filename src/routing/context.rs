//! What the routing layer works with (ARCHITECTURE.md, "Layers"): the
//! configuration, the local replica and its replicator (reads, awaited
//! commits), the local session table, the two handles the node hands in
//! for what lies above routing ([`Above`], [`Elsewhere`]), and the
//! bookkeeping of sessions moving between nodes. The IM layer's context
//! ([`crate::im::context::ImCtx`]) is built on this one, and so on up: each
//! layer is given its own context and reaches what is below it through
//! `Deref`, never what is above.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::base::xml::{Element, XmlLimits};
use crate::model::config::Config;
use crate::model::state::{State, StateError};
use crate::routing::route::{Above, Elsewhere, HandOff, Require};
use crate::routing::router::Router;

/// Where a session handed over from this node went.
#[derive(Clone, Copy, Debug)]
pub struct Moved {
    pub node: u64,
    pub at: std::time::Instant,
    /// The table's record (node, sid) when it left: once the table names
    /// something else, the table knows better.
    pub table_then: Option<(u64, u64)>,
}

/// Where the answer to a resume waiting for another node goes: the
/// session's state, and the node it left.
pub type HandOffReply = tokio::sync::mpsc::Sender<Option<(HandOff, u64)>>;

/// The routing layer's context, shared by all arbiters.
pub struct RoutingCtx {
    pub config: Config,
    /// The local replica: reads only. Writes go through [`RoutingCtx::commit`].
    pub state: Arc<State>,
    pub replicator: crate::store::replication::Replicator,
    pub router: Router,
    /// Other domains: federation, components, hosted services.
    pub elsewhere: Arc<dyn Elsewhere>,
    /// What routing asks of the layers above it.
    pub above: Arc<dyn Above>,
    /// This context itself, for code that holds only a reference.
    me: Weak<RoutingCtx>,
    /// Per-address connection and login counts, shared over the mesh.
    pub ip_limits: crate::base::ip_limits::IpLimits,
    /// Sessions recently handed to another node, by full JID. Stanzas
    /// still arriving here are forwarded there.
    pub moved: Mutex<HashMap<String, Moved>>,
    /// The worker arbiters (set once the actix System runs).
    pub arbiters: OnceLock<Vec<actix_rt::ArbiterHandle>>,
    /// Resumes waiting for another node to hand a session over, by token.
    pub handoffs: Mutex<HashMap<u64, HandOffReply>>,
    /// Sessions being handed to this node (full JID): stanzas relayed for
    /// them before they are bound here wait in this buffer.
    #[allow(clippy::type_complexity)]
    pub arriving: Mutex<HashMap<String, Vec<(Element, Option<Require>)>>>,
    /// Drain pushes waiting for the target node to confirm the bind.
    pub push_acks: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<bool>>>,
    /// Failed resumes heard of, which settle messages a dead node was
    /// about to write (`written_marks.rs`).
    pub resume_verdicts: crate::routing::written_marks::Verdicts,
    /// When the node started (XEP-0012 uptime).
    pub started: std::time::Instant,
    /// Shutting down: not ready for new clients.
    pub draining: AtomicBool,
    /// `starling cluster drain` asks through the admin socket.
    pub drain_requested: tokio::sync::Notify,
}

impl RoutingCtx {
    /// A context with empty tables around the given parts.
    pub fn new(
        config: Config,
        state: Arc<State>,
        replicator: crate::store::replication::Replicator,
        elsewhere: Arc<dyn Elsewhere>,
        above: Arc<dyn Above>,
    ) -> Arc<RoutingCtx> {
        Arc::new_cyclic(|me| RoutingCtx {
            config,
            state,
            replicator,
            router: Router::default(),
            elsewhere,
            above,
            me: me.clone(),
            ip_limits: Default::default(),
            moved: Default::default(),
            arbiters: OnceLock::new(),
            handoffs: Default::default(),
            arriving: Default::default(),
            push_acks: Default::default(),
            resume_verdicts: Default::default(),
            started: std::time::Instant::now(),
            draining: AtomicBool::new(false),
            drain_requested: tokio::sync::Notify::new(),
        })
    }

    /// An owning handle on this context (alive as long as the server runs).
    pub fn arc(&self) -> Option<Arc<RoutingCtx>> {
        self.me.upgrade()
    }

    /// The other members of the cluster, by node id.
    pub fn other_nodes(&self) -> Vec<u64> {
        let status = self.replicator.cluster().status();
        status
            .peers
            .iter()
            .map(|p| p.0)
            .filter(|id| *id != status.id)
            .collect()
    }

    pub fn node_id(&self) -> u64 {
        self.config.cluster.node_id
    }

    /// Replicate a change through the cluster and apply it (see replication.rs).
    pub fn commit(
        &self,
        cmd: &crate::model::state::Command,
    ) -> Result<crate::model::state::Applied, StateError> {
        self.replicator.commit(cmd)
    }

    pub fn xml_limits(&self) -> XmlLimits {
        let l = &self.config.limits;
        XmlLimits {
            max_stanza_bytes: l.max_stanza_size,
            max_depth: l.max_depth,
            max_attributes: l.max_attributes,
        }
    }
}
