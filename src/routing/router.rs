//! The routing table: bare JID -> this node's bound sessions. A shared map
//! behind a read-write lock, not an actor, so lookups never queue.

use std::collections::HashMap;
use std::sync::RwLock;

use std::sync::Arc;

use jid::{BareJid, FullJid};

use starling_cluster::{Marker, Receipt};
use tokio::sync::oneshot;

use crate::base::stream_error::{StreamCondition, StreamError};
use crate::base::xml::Element;

/// What routing needs of a bound session, whatever transport carries it
/// (a c2s connection today). The transport implements it; the table holds
/// it without knowing the transport.
pub trait SessionHandle: Send + Sync {
    /// Queue a stanza for the client, unless the queue is full or the
    /// session has ended: then the stanza (and `receipt`) comes back.
    /// `receipt` is answered once the session owns the stanza for good:
    /// written to its client's socket, or kept for the client to resume.
    fn try_deliver(&self, stanza: Element, receipt: Option<Receipt>) -> Result<(), Refused>;
    /// [`Self::try_deliver`] for a relayed stanza whose sender records,
    /// before the stanza is written, which stanza of the session it is
    /// ([`Marker`]). A transport without resumable sessions ignores it.
    fn try_deliver_marked(
        &self,
        stanza: Element,
        receipt: Option<Receipt>,
        marker: Option<Marker>,
    ) -> Result<(), Refused> {
        let _ = marker;
        self.try_deliver(stanza, receipt)
    }
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
    /// Keyed by the bare JID's text, so a lookup by a full JID borrows its
    /// bare part instead of making one (every message asks).
    sessions: RwLock<HashMap<String, Vec<SessionEntry>>>,
}

fn bare_of(jid: &FullJid) -> &str {
    crate::base::jid_text::bare(jid.as_str())
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
        let list = map.entry(bare_of(jid).to_string()).or_default();
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
        let bare = bare_of(jid);
        if let Some(list) = map.get_mut(bare) {
            list.retain(|e| e.id != id);
            if list.is_empty() {
                map.remove(bare);
            }
        }
    }

    /// Change one session's entry (if it is still that session).
    pub fn update(&self, jid: &FullJid, id: u64, f: impl FnOnce(&mut SessionEntry)) {
        let mut map = self.sessions.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map
            .get_mut(bare_of(jid))
            .and_then(|l| l.iter_mut().find(|e| e.id == id))
        {
            f(e);
        }
    }

    pub fn get_full(&self, jid: &FullJid) -> Option<SessionEntry> {
        let map = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        map.get(bare_of(jid))?
            .iter()
            .find(|e| e.resource == jid.resource().as_str())
            .cloned()
    }

    pub fn resources(&self, bare: &BareJid) -> Vec<SessionEntry> {
        let map = self.sessions.read().unwrap_or_else(|e| e.into_inner());
        map.get(bare.as_str()).cloned().unwrap_or_default()
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
                    let full = FullJid::new(&format!("{bare}/{}", e.resource)).ok()?;
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
    deliver_marked(entry, stanza, receipt, None)
}

/// [`deliver_owned`] for a relayed stanza with its sender's [`Marker`].
pub fn deliver_marked(
    entry: &SessionEntry,
    stanza: Element,
    receipt: Option<Receipt>,
    marker: Option<Marker>,
) -> Result<(), (Element, Option<Receipt>)> {
    // The session answers `inner` once the stanza is written; `receipt` is
    // answered from it, or after OWNED_AFTER in any case (see `watch`).
    // Without a runtime to wait on (never in the server) the session
    // answers `receipt` itself.
    let (inner, watched) = match receipt {
        Some(r) => match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some((r, rx, rt)))
            }
            Err(_) => (Some(r), None),
        },
        None => (None, None),
    };
    match entry.handle.try_deliver_marked(stanza, inner, marker) {
        Ok(()) => {}
        Err(Refused::Full(last, inner)) => {
            tracing::warn!(resource = %entry.resource, "session too slow; cutting it off");
            entry.handle.deliver_anyway(last, inner);
            entry.handle.close(StreamError::with_text(
                StreamCondition::ResourceConstraint,
                "too many stanzas queued for this client",
            ));
        }
        Err(Refused::Closed(el, inner)) => {
            tracing::debug!(resource = %entry.resource, stanza = %el.name, "session ended as the stanza reached it; given back");
            return Err((el, watched.map(|(r, _, _)| r).or(inner)));
        }
    }
    if let Some((r, rx, rt)) = watched {
        rt.spawn(watch(r, rx));
    }
    Ok(())
}

/// `OWNED_AFTER`, the longest a delivered stanza's receipt waits for the
/// session to write it: 250 ms unless `[limits] write_wait_ms` says
/// otherwise (set once at start, [`set_owned_after`]). Past it the stanza
/// counts as owned once in the session's queue (as it did before writes
/// were awaited): a session busy on a slow commit, or a client that reads
/// slowly, does not hold up its sender (a relay batch is answered only
/// when all its stanzas are owned).
static OWNED_AFTER_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(250);

/// The node's `[limits] write_wait_ms` (one setting per process).
pub fn set_owned_after(wait: std::time::Duration) {
    OWNED_AFTER_MS.store(
        wait.as_millis().try_into().unwrap_or(u64::MAX),
        std::sync::atomic::Ordering::Relaxed,
    );
}

fn owned_after() -> std::time::Duration {
    std::time::Duration::from_millis(OWNED_AFTER_MS.load(std::sync::atomic::Ordering::Relaxed))
}

/// Answer `receipt` with the session's answer, or `true` after
/// `OWNED_AFTER`; `false` when the session dropped the stanza unprocessed
/// (it stopped with the stanza in its mailbox: nobody has it, so the sender
/// routes it again).
async fn watch(receipt: Receipt, session: oneshot::Receiver<bool>) {
    let owned = match tokio::time::timeout(owned_after(), session).await {
        Ok(Ok(owned)) => owned,
        Ok(Err(_)) => false,
        Err(_) => true,
    };
    let _ = receipt.send(owned);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// What a fake session does with a delivered stanza's receipt.
    enum Does {
        Answers(bool),
        Holds(std::sync::Mutex<Vec<Receipt>>),
        Drops,
        HasEnded,
    }

    impl SessionHandle for Does {
        fn try_deliver(&self, stanza: Element, receipt: Option<Receipt>) -> Result<(), Refused> {
            match self {
                Does::Answers(v) => {
                    if let Some(r) = receipt {
                        let _ = r.send(*v);
                    }
                }
                Does::Holds(held) => held.lock().unwrap().extend(receipt),
                Does::Drops => drop(receipt),
                Does::HasEnded => return Err(Refused::Closed(stanza, receipt)),
            }
            Ok(())
        }
        fn deliver_anyway(&self, _: Element, _: Option<Receipt>) {}
        fn close(&self, _: StreamError) {}
        fn connected(&self) -> bool {
            true
        }
    }

    fn entry(does: Does) -> SessionEntry {
        SessionEntry {
            id: 1,
            resource: "r".into(),
            handle: Arc::new(does),
            available: true,
            priority: 0,
            interested: false,
            blocklist_interested: false,
            carbons: false,
            bound_at: 0,
        }
    }

    async fn delivered(does: Does) -> (Result<bool, ()>, Duration) {
        let (r, answer) = oneshot::channel();
        let started = Instant::now();
        let e = entry(does);
        assert!(deliver_owned(&e, Element::new("message", "jabber:client"), Some(r)).is_ok());
        let got = tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .expect("answered")
            .map_err(|_| ());
        (got, started.elapsed())
    }

    #[tokio::test]
    async fn the_sessions_answer_is_the_answer() {
        let (got, took) = delivered(Does::Answers(true)).await;
        assert_eq!(got, Ok(true));
        assert!(took < owned_after(), "{took:?}");
    }

    #[tokio::test]
    async fn a_session_that_has_not_written_it_yet_owns_it_after_a_while() {
        let (got, took) = delivered(Does::Holds(Default::default())).await;
        assert_eq!(got, Ok(true), "in the session's queue: owned");
        assert!(
            took >= owned_after(),
            "answered before the session could write: {took:?}"
        );
    }

    #[tokio::test]
    async fn a_stanza_the_session_dropped_unprocessed_is_not_owned() {
        let (got, _) = delivered(Does::Drops).await;
        assert_eq!(got, Ok(false), "the sender must route it again");
    }

    #[tokio::test]
    async fn a_session_that_ended_gives_the_stanza_and_its_receipt_back() {
        let (r, answer) = oneshot::channel();
        let e = entry(Does::HasEnded);
        let Err((el, Some(back))) =
            deliver_owned(&e, Element::new("message", "jabber:client"), Some(r))
        else {
            panic!("not given back");
        };
        assert_eq!(el.name, "message");
        let _ = back.send(true);
        assert_eq!(answer.await, Ok(true), "the caller's receipt itself");
    }
}
