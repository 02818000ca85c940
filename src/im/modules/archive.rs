//! Archiving messages as they pass (XEP-0313 §4 with XEP-0359 stanza ids
//! and XEP-0334 hints): place 15 of the message pipeline.
//!
//! A message a local user sends goes into the sender's archive, and one a
//! local user receives into the recipient's, each under a fresh id that
//! the message then carries as `<stanza-id by='user@domain'/>`. Both
//! writes go through the cluster, many messages per log entry (the
//! [`Writer`] batches them); the sender's XEP-0198 acknowledgement waits
//! for them ([`Waits`]), so an acknowledged message is on a majority's
//! disk. A `<stanza-id/>` that claims to be ours but that we did not make
//! (sent by a client or another server) is removed first (XEP-0359 §5).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use jid::{FullJid, Jid};
use tokio::sync::{mpsc, oneshot};

use super::hooks::{MessageHook, Verdict, Waits};
use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::xml::{ns, Element};
use crate::im::context::ImCtx;
use crate::model::state::archive::ArchiveId;
use crate::model::state::{ArchiveEntry, Command};

pub const SID_NS: &str = "urn:xmpp:sid:0";
const HINTS: &str = "urn:xmpp:hints";

/// Payloads that make a body-less message worth keeping (§4: "messages
/// that carry meaning for the conversation").
const KEPT_PAYLOADS: [&str; 7] = [
    "eu.siacs.conversations.axolotl", // OMEMO (XEP-0384 v0.3)
    "urn:xmpp:omemo:2",
    "urn:xmpp:chat-markers:0",    // XEP-0333
    "urn:xmpp:message-retract:1", // XEP-0424
    "urn:xmpp:reactions:0",       // XEP-0444
    "urn:xmpp:message-correct:0", // XEP-0308
    "urn:xmpp:jingle-message:0",  // XEP-0353
];

/// Most messages in one log entry, and most bytes of XML (well under the
/// mesh's message limit, whatever the size of each message).
const BATCH_MAX: usize = 512;
const BATCH_MAX_BYTES: usize = 4 << 20;
/// Log entries of archive messages being committed at once.
const IN_FLIGHT: usize = 8;

/// Whether a message goes into archives at all (§4, XEP-0334).
pub fn archivable(msg: &Element) -> bool {
    let t = msg.attr("type").unwrap_or("normal");
    if matches!(t, "groupchat" | "error" | "headline") {
        return false;
    }
    let hint = |name| msg.get_child(name, HINTS).is_some();
    if hint("no-store") || hint("no-permanent-store") {
        return false;
    }
    // Copies and query results are not new messages.
    if msg.elements().any(|c| {
        (c.ns == super::carbons::NS && (c.name == "sent" || c.name == "received"))
            || (c.ns == super::mam::NS && c.name == "result")
    }) {
        return false;
    }
    msg.get_child("body", ns::CLIENT).is_some()
        || hint("store")
        || msg
            .elements()
            .any(|c| KEPT_PAYLOADS.contains(&c.ns.as_str()))
}

/// Drop `<stanza-id/>`s that name `by` as their maker: only the archive
/// of `by` may put them there. Also used to take the sender's own id off
/// the copy that goes to the contact (XEP-0313 §3: it belongs to the
/// sender's carbons only).
pub fn strip_forged(msg: &mut Element, by: &str) {
    msg.children.retain(|n| match n {
        crate::base::xml::Node::Element(e) => {
            !(e.name == "stanza-id"
                && e.ns == SID_NS
                && e.attr("by").is_some_and(|b| b.eq_ignore_ascii_case(by)))
        }
        _ => true,
    });
}

/// Ids unique in the cluster and rising on this node: the time in
/// microseconds (never less than the last one made) and the node's id.
#[derive(Default)]
struct Ids {
    last_micros: AtomicU64,
}

/// The environment variable of a fault switch: this node makes its ids
/// as if its clock were this many seconds behind (not `STARLING_*`: those
/// are settings, and a node refuses unknown ones).
pub const CLOCK_BEHIND: &str = "FAULT_ARCHIVE_CLOCK_BEHIND_SECS";

fn clock_behind_micros() -> u64 {
    static BEHIND: OnceLock<u64> = OnceLock::new();
    *BEHIND.get_or_init(|| {
        std::env::var(CLOCK_BEHIND)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |s| s.saturating_mul(1_000_000))
    })
}

impl Ids {
    fn next(&self, node: u64) -> u64 {
        let now = (crate::base::time::unix_now().as_micros() as u64)
            .saturating_sub(clock_behind_micros());
        let mut last = self.last_micros.load(Ordering::Relaxed);
        loop {
            let t = now.max(last + 1);
            match self.last_micros.compare_exchange_weak(
                last,
                t,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return ArchiveId::at(t) | (node & ((1 << ArchiveId::NODE_BITS) - 1)),
                Err(seen) => last = seen,
            }
        }
    }
}

enum Job {
    Entry(ArchiveEntry, oneshot::Sender<bool>),
    /// Answered once everything queued before it is committed.
    Barrier(oneshot::Sender<()>),
}

/// Archive writes on their way through the cluster: a task on the Raft
/// runtime takes what has queued up (at most [`BATCH_MAX`]) into one
/// `ArchiveAppend`, with up to [`IN_FLIGHT`] of them being committed at
/// once, and tells each message's waiter when its entry is durable.
struct Writer {
    tx: mpsc::UnboundedSender<Job>,
    /// Entries queued and not yet committed (or failed).
    pending: Arc<AtomicU64>,
    /// Messages not archived for a full backlog since the last warning,
    /// and when that was (ms): the warning says how many, once a second.
    missed: AtomicU64,
    missed_logged_at: AtomicU64,
}

impl Writer {
    fn start(ctx: &ImCtx) -> Writer {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let pending = Arc::new(AtomicU64::new(0));
        let me = ctx.weak();
        let quota_bytes = ctx.config.mam.quota_bytes;
        let left = pending.clone();
        ctx.replicator.runtime().spawn(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
            let mut barrier = None;
            loop {
                if let Some(b) = barrier.take() {
                    // Every earlier batch is done once all slots are free.
                    let Ok(all) = slots.acquire_many(IN_FLIGHT as u32).await else {
                        return;
                    };
                    drop(all);
                    let _ = oneshot::Sender::send(b, ());
                }
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let mut batch = Vec::new();
                let mut bytes = 0;
                let mut next = rx.recv().await;
                while let Some(job) = next.take() {
                    match job {
                        Job::Entry(e, done) => {
                            bytes += e.xml.len() + e.with.len();
                            batch.push((e, done));
                        }
                        Job::Barrier(b) => {
                            barrier = Some(b);
                            break;
                        }
                    }
                    if batch.len() < BATCH_MAX && bytes < BATCH_MAX_BYTES {
                        next = rx.try_recv().ok();
                    }
                }
                if batch.is_empty() {
                    if barrier.is_none() {
                        return; // the channel closed: the node is stopping
                    }
                    continue;
                }
                let Some(c) = me.upgrade() else {
                    return; // the node is gone
                };
                let owning = c.replicator.owning();
                let left = left.clone();
                let (entries, done): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                let n = entries.len();
                let cmd = Command::ArchiveAppend {
                    entries,
                    quota_bytes,
                };
                // Queued here, in the order the messages came: the archive
                // is in commit order, so the log must have them in order.
                let committed = c.replicator.commit_in_order(&cmd);
                drop(cmd);
                tokio::spawn(async move {
                    let (_slot, _owning) = (slot, owning);
                    let ok = match committed.await {
                        Ok(applied) => {
                            if !applied.refused.is_empty() {
                                tracing::warn!(
                                    refused = applied.refused.len(),
                                    "messages delivered but not archived: archive quota reached, or an id that names another message"
                                );
                            }
                            true
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, messages = n, "archive write failed");
                            false
                        }
                    };
                    left.fetch_sub(n as u64, Ordering::AcqRel);
                    for d in done {
                        let _ = d.send(ok);
                    }
                });
            }
        });
        Writer {
            tx,
            pending,
            missed: AtomicU64::new(0),
            missed_logged_at: AtomicU64::new(0),
        }
    }
}

/// The archiving hook.
#[derive(Default)]
pub struct Archive {
    ids: Ids,
    writer: OnceLock<Writer>,
}

impl Archive {
    /// Put `msg` into `user`'s archive (with `with` the other party) if
    /// the user's preferences want it, stamping it with the id; the
    /// returned receiver answers once the entry is committed. False when
    /// `limit` writes already wait (the cluster commits slower than
    /// messages come): nothing was queued.
    fn keep(
        &self,
        ctx: &ImCtx,
        user: &str,
        with: &Jid,
        msg: &mut Element,
        waits: &mut Waits,
        limit: u64,
    ) -> bool {
        if !super::mam::wanted(ctx, user, with) {
            return true;
        }
        let id = self.ids.next(ctx.config.cluster.node_id);
        let entry = ArchiveEntry {
            user: user.to_string(),
            id,
            with: with.to_string(),
            xml: msg.to_xml(ns::CLIENT),
        };
        let (done, waiter) = oneshot::channel();
        let writer = self.writer.get_or_init(|| Writer::start(ctx));
        if writer.pending.fetch_add(1, Ordering::AcqRel) >= limit {
            writer.pending.fetch_sub(1, Ordering::AcqRel);
            // Under overload this is every message: one line a second.
            let missed = writer.missed.fetch_add(1, Ordering::AcqRel) + 1;
            let now = crate::base::clock::now_ms();
            let last = writer.missed_logged_at.load(Ordering::Acquire);
            if now.saturating_sub(last) >= 1000
                && writer
                    .missed_logged_at
                    .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                writer.missed.fetch_sub(missed, Ordering::AcqRel);
                tracing::warn!(
                    user,
                    messages = missed,
                    "archive backlog full (the cluster is not committing fast enough): messages refused with resource-constraint (incoming ones from other servers delivered unarchived)"
                );
            }
            return false;
        }
        if writer.tx.send(Job::Entry(entry, done)).is_err() {
            writer.pending.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(user, "archive writer is gone; message not archived");
            return true;
        }
        waits.push(waiter);
        msg.push_child(
            Element::new("stanza-id", SID_NS)
                .with_attr("by", ctx.config.account_jid(user))
                .with_attr("id", ArchiveId::text(id)),
        );
        true
    }
}

impl Archive {
    /// Resolves once every message this node has queued for archives so
    /// far is committed (at once when none is pending), so a query sees
    /// what its user just sent and received here.
    pub fn settled(&self) -> Option<oneshot::Receiver<()>> {
        let w = self.writer.get()?;
        if w.pending.load(Ordering::Acquire) == 0 {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        w.tx.send(Job::Barrier(tx)).ok()?;
        Some(rx)
    }
}

impl MessageHook for Archive {
    fn order(&self) -> u16 {
        15
    }

    fn outbound(
        &self,
        ctx: &ImCtx,
        from: &FullJid,
        to: &Jid,
        msg: &mut Element,
        waits: &mut Waits,
    ) -> Verdict {
        let bare = from.to_bare();
        strip_forged(msg, bare.as_str());
        let user = ctx.config.account_of(from).unwrap_or_default();
        let user = user.as_str();
        // A note to self is archived once, as it arrives (inbound).
        let to_self = to.to_bare() == bare;
        if ctx.config.mam.enabled
            && !to_self
            && archivable(msg)
            && !self.keep(ctx, user, to, msg, waits, ctx.config.mam.backlog)
        {
            // An acknowledged message is in its sender's archive: one that
            // cannot be archived now is refused, not delivered unarchived
            // (RFC 6120 §8.3.3.18, type wait: the client may send it again).
            tracing::debug!(user, "message refused: archive backlog full");
            return Verdict::Stop(Some(
                StanzaError::with_text(
                    StanzaCondition::ResourceConstraint,
                    "the message archive is behind; try again shortly",
                )
                .reply_to(msg),
            ));
        }
        Verdict::Continue
    }

    fn inbound(
        &self,
        ctx: &ImCtx,
        user: &str,
        from: &Jid,
        msg: &mut Element,
        waits: &mut Waits,
    ) -> Verdict {
        strip_forged(msg, &ctx.config.account_jid(user));
        // The sender's copy decided whether the message goes on (at
        // `backlog`); the recipient's copy may go past it, up to twice
        // that, so an accepted message gets both copies. Only a flood from
        // outside (federation, components: no sender's copy here) reaches
        // the hard cap; those copies are then delivered unarchived, logged.
        let cap = ctx.config.mam.backlog.saturating_mul(2);
        if ctx.config.mam.enabled && archivable(msg) && !self.keep(ctx, user, from, msg, waits, cap)
        {
            tracing::debug!(
                user,
                "archive backlog full: an incoming copy delivered but not archived"
            );
        }
        Verdict::Continue
    }
}

/// How often the leader looks for messages past `[mam] retention_days`.
const EXPIRE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Retention: while this node leads, once an hour (the first time a minute
/// after start), messages older than `[mam] retention_days` leave every
/// archive in one replicated command.
pub async fn expire_old(ctx: Arc<ImCtx>) {
    let days = ctx.config.mam.retention_days;
    if !ctx.config.mam.enabled || days == 0 {
        return;
    }
    let mut stopped = ctx.replicator.cluster().stopped();
    let mut wait = std::time::Duration::from_secs(60);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped.changed() => return,
        }
        wait = EXPIRE_EVERY;
        if ctx.replicator.cluster().status().role != "leader" {
            continue;
        }
        let now = crate::base::time::unix_now().as_micros() as u64;
        let micros = now.saturating_sub(days * 86_400 * 1_000_000);
        if let Err(e) = ctx
            .replicator
            .commit_async(&Command::ArchiveExpire { micros })
            .await
        {
            tracing::warn!(error = %e, "archive retention pass failed; tried again later");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(xml: &str) -> Element {
        crate::base::xml::parse_fragment(xml).unwrap()
    }

    #[test]
    fn what_is_archived_follows_section_4_and_the_hints() {
        assert!(archivable(&msg(
            "<message type='chat'><body>hi</body></message>"
        )));
        assert!(archivable(&msg("<message><body>hi</body></message>")));
        assert!(!archivable(&msg("<message type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>")));
        assert!(archivable(&msg(
            "<message type='chat'><displayed xmlns='urn:xmpp:chat-markers:0' id='x'/></message>"
        )));
        assert!(!archivable(&msg(
            "<message type='headline'><body>news</body></message>"
        )));
        assert!(!archivable(&msg(
            "<message type='groupchat'><body>x</body></message>"
        )));
        assert!(!archivable(&msg(
            "<message type='chat'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>"
        )));
        assert!(archivable(&msg(
            "<message type='chat'><store xmlns='urn:xmpp:hints'/></message>"
        )));
    }

    #[test]
    fn only_stanza_ids_claiming_the_archive_owner_are_stripped() {
        let mut m = msg("<message><body>x</body><stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='forged'/><stanza-id xmlns='urn:xmpp:sid:0' by='room@conference.example' id='theirs'/></message>");
        strip_forged(&mut m, "bob@localhost");
        let left: Vec<_> = m
            .elements()
            .filter(|e| e.name == "stanza-id")
            .filter_map(|e| e.attr("id"))
            .collect();
        assert_eq!(left, ["theirs"]);
    }

    #[test]
    fn ids_rise_even_when_made_in_the_same_microsecond() {
        let ids = Ids::default();
        let a = ids.next(3);
        let b = ids.next(3);
        assert!(b > a);
        assert_eq!(a & 0xfff, 3);
    }
}
