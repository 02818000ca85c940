//! What the transports (c2s, s2s, components, the web transports) work
//! with: the IM layer's context ([`ImCtx`], reached through `Deref`) and
//! the transports' own parts: TLS, the federation links, the components
//! connected here, the resumable sessions, and the count of open
//! connections a stopping node waits for.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::im::context::ImCtx;

pub struct TransportCtx {
    pub im: Arc<ImCtx>,
    pub tls: TlsAcceptor,
    /// tls-server-end-point data of the c2s certificate (RFC 5929), for
    /// HT-SHA-256-ENDP (FAST); `None` for certificates it does not cover.
    pub tls_end_point: Option<Vec<u8>>,
    /// Federation: outbound links, dialback secret, resolver.
    pub s2s: crate::transport::s2s::S2s,
    /// External components connected to this node (XEP-0114).
    pub components: crate::transport::component::Registry,
    /// Stream-management sessions that can be resumed (XEP-0198).
    pub sm_sessions: crate::transport::c2s::stream_management::SmRegistry,
    /// Keys the SCRAM salts made up for unknown users (from the cluster
    /// secret: every node answers a probe alike, nobody else can compute it).
    pub scram_fake_key: Vec<u8>,
    /// This context itself, for code that holds only a reference.
    me: Weak<TransportCtx>,
    pub(crate) shutdown: watch::Receiver<bool>,
    next_id: AtomicU64,
    pub(crate) conns: Arc<AtomicUsize>,
}

/// The parts of a [`TransportCtx`] besides the IM layer's.
pub struct TransportParts {
    pub tls: TlsAcceptor,
    pub tls_end_point: Option<Vec<u8>>,
    pub s2s: crate::transport::s2s::S2s,
    pub scram_fake_key: Vec<u8>,
    pub shutdown: watch::Receiver<bool>,
}

/// The transports' context for the handles made before it (what routing
/// is given to reach the layers above it): set once, held weakly, since
/// the context holds routing's, which holds those handles.
#[derive(Default)]
pub struct LateTransport(OnceLock<Weak<TransportCtx>>);

impl LateTransport {
    pub fn set(&self, ctx: &Arc<TransportCtx>) {
        let _ = self.0.set(Arc::downgrade(ctx));
    }

    /// The context, unless it is not made yet or already gone.
    pub fn get(&self) -> Option<Arc<TransportCtx>> {
        self.0.get().and_then(Weak::upgrade)
    }
}

/// Counts a live connection until dropped, so shutdown can wait for writes.
pub struct ConnGuard(Arc<AtomicUsize>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl TransportCtx {
    pub fn new(im: Arc<ImCtx>, parts: TransportParts) -> Arc<TransportCtx> {
        Arc::new_cyclic(|me| TransportCtx {
            im,
            tls: parts.tls,
            tls_end_point: parts.tls_end_point,
            s2s: parts.s2s,
            components: Default::default(),
            sm_sessions: Default::default(),
            scram_fake_key: parts.scram_fake_key,
            me: me.clone(),
            shutdown: parts.shutdown,
            next_id: AtomicU64::new(1),
            conns: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// An owning handle on this context (alive as long as the server runs).
    pub fn arc(&self) -> Option<Arc<TransportCtx>> {
        self.me.upgrade()
    }

    pub fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn conn_guard(&self) -> ConnGuard {
        self.conns.fetch_add(1, Ordering::AcqRel);
        ConnGuard(self.conns.clone())
    }

    /// Open connections (a stopping node waits for them to close).
    pub fn open_connections(&self) -> usize {
        self.conns.load(Ordering::Acquire)
    }
}

impl std::ops::Deref for TransportCtx {
    type Target = ImCtx;

    fn deref(&self) -> &ImCtx {
        &self.im
    }
}
