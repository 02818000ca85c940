//! The routing table: bare JID -> this node's bound sessions. A shared map
//! behind a read-write lock, not an actor, so lookups never queue.

use std::collections::HashMap;
use std::sync::RwLock;

use std::sync::Arc;

use jid::{BareJid, FullJid};

use starling_cluster::Receipt;

use crate::stream_error::{StreamCondition, StreamError};
use crate::xml::Element;

/// What routing needs of a bound session, whatever transport carries it
/// (a c2s connection today). The transport implements it; the table holds
/// it without knowing the transport.
pub trait SessionHandle: Send + Sync {
    /// Queue a stanza for the client, unless the queue is full or the
    /// session has ended: then the stanza (and `receipt`) comes back.
    /// `receipt` is answered once the session owns the stanza for good:
    /// written to its client's socket, or kept for the client to resume.
    fn try_deliver(&self, stanza: Element, receipt: Option<Receipt>) -> Result<(), Refused>;
    /// Queue a stanza even past the queue's bound (one last stanza before
    /// a close).
    fn deliver_anyway(&self, stanza: Element, receipt: Option<Receipt>);
    /// End the session's stream with this error.
    fn close(&self, error: StreamError);
    /// The session is still running.
    fn connected(&self) -> bool;
}

/// Why [`SessionHandle::try_deliver`] gave a stanza back.
pub enum Refused {
    Full(Element, Option<Receipt>),
    Closed(Element, Option<Receipt>),
}

#[derive(Clone)]
pub struct SessionEntry {
    pub id: u64,
    pub resource: String,
    pub handle: Arc<dyn SessionHandle>,
    /// Has sent available presence (RFC 6121 §4.2).
    pub available: bool,
    pub priority: i8,
    /// Asked for the roster: gets roster pushes (RFC 6121 §2.1.6).
    pub interested: bool,
    /// Asked for the blocklist: gets blocklist pushes (XEP-0191).
    pub blocklist_interested: bool,
    /// Enabled message carbons (XEP-0280).
    pub carbons: bool,
    /// When it was bound (unix ms), as in its session-table record.
    pub bound_at: u64,
}

#[derive(Default)]
pub struct Router {
    sessions: RwLock<HashMap<BareJid, Vec<SessionEntry>>>,
}

impl Router {
    /// Register a bound session; returns the session it replaces, if any.
    pub fn bind(
        &self,
        jid: &FullJid,
        id: u64,
        handle: Arc<dyn SessionHandle>,
    ) -> Option<SessionEntry> {
        let mut map = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(jid.to_bare()).or_default();
        let resource = jid.resource().as_str();
        let old = list
            .iter()
            .position(|e| e.resource == resource)
            .map(|i| list.remove(i));
        // Most users have one resource: grow one entry at a time, not four.
        list.reserve_exact(1);
        list.push(SessionEntry {
            id,
            resource: resource.to_string(),
            handle,
            available: false,
            priority: 0,
            interested: false,
            blocklist_interested: false,
            carbons: false,
            bound_at: 0,
        });
        old
    }

    /// Remove a session, only if the entry is still that session's.
    pub fn unbind(&self, jid: &FullJid, id: u64) {
        let mut map = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        let bare = jid.to_bare();
        if let Some(list) = map.get_mut(&bare) {
            list.retain(|e| e.id != id);
            if list.is_empty() {
                map.remove(&bare);
            }
        }
    }

    /// Change one session's entry (if it is still that session).
    pub fn update(&self, jid: &FullJid, id: u64, f: impl FnOnce(&mut SessionEntry)) {
        let mut map = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map
            .get_mut(&jid.to_bare())
            .and_then(|l| l.iter_mut().find(|e| e.id == id))
        {
            f(e);
        }
    }

    pub fn get_full(&self, jid: &FullJid) -> Option<SessionEntry> {
        let map = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        map.get(&jid.to_bare())?
            .iter()
            .find(|e| e.resource == jid.resource().as_str())
            .cloned()
    }

    pub fn resources(&self, bare: &BareJid) -> Vec<SessionEntry> {
        let map = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        map.get(bare).cloned().unwrap_or_default()
    }

    pub fn all(&self) -> Vec<SessionEntry> {
        let map = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        map.values().flatten().cloned().collect()
    }

    /// Every session here with its full JID.
    pub fn all_full(&self) -> Vec<(FullJid, SessionEntry)> {
        let map = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .flat_map(|(bare, list)| {
                list.iter().filter_map(move |e| {
                    let full = bare.with_resource_str(&e.resource).ok()?;
                    Some((full, e.clone()))
                })
            })
            .collect()
    }

    pub fn count(&self) -> usize {
        let map = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        map.values().map(Vec::len).sum()
    }
}

/// Hand a stanza to a session. A session whose mailbox is full cannot keep
/// up: it is cut off rather than allowed to grow memory without bound. The
/// stanza that found it full still goes in, ahead of the close, so it ends
/// like the rest of the queue: what the client never acknowledged goes
/// back through delivery (XEP-0198 §5), not nowhere. A session that ended
/// as the stanza reached it gives the stanza back (`Err`) for the caller
/// to route again.
pub fn deliver(entry: &SessionEntry, stanza: Element) -> Result<(), Element> {
    deliver_owned(entry, stanza, None).map_err(|(el, _)| el)
}

/// [`deliver`], answering `receipt` once the session owns the stanza (see
/// [`SessionHandle::try_deliver`]); given back with the stanza.
pub fn deliver_owned(
    entry: &SessionEntry,
    stanza: Element,
    receipt: Option<Receipt>,
) -> Result<(), (Element, Option<Receipt>)> {
    match entry.handle.try_deliver(stanza, receipt) {
        Ok(()) => Ok(()),
        Err(Refused::Full(last, receipt)) => {
            tracing::warn!(resource = %entry.resource, "session too slow; cutting it off");
            entry.handle.deliver_anyway(last, receipt);
            entry.handle.close(StreamError::with_text(
                StreamCondition::ResourceConstraint,
                "too many stanzas queued for this client",
            ));
            Ok(())
        }
        Err(Refused::Closed(el, receipt)) => {
            tracing::debug!(resource = %entry.resource, stanza = %el.name, "session ended as the stanza reached it; given back");
            Err((el, receipt))
        }
    }
}
