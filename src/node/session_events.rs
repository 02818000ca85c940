//! What committed cluster state means for this node's live sessions
//! (replication.rs decides, on the Raft thread, from the replica at the
//! entry's index; this module acts, without waiting on anything):
//!
//! - a bind elsewhere displaced a session here: it ends with `<conflict/>`
//!   (RFC 6120 §7.7.2.2);
//! - another node was found dead and purged: what the relayer still holds
//!   for it is routed again (other resources, or offline storage);
//! - this node was purged while alive (paused, or cut off from the
//!   majority): its live sessions register again, and their presence is
//!   said again, so nobody routes around them;
//! - messages wait offline while a resource here should have them
//!   (XEP-0160): they are delivered now;
//! - an account was deleted (on any node): its sessions here end with
//!   `<not-authorized/>`.

use std::sync::Arc;

use jid::{BareJid, FullJid};

use crate::model::state::{Command, SessionRecord, StateError};
use crate::node::server::ServerCtx;
use crate::store::replication::StateEvent;
use crate::transport::stream::{StreamCondition, StreamError};

/// Called on the Raft thread for each event: hands work on, never waits.
pub fn on_event(ctx: &Arc<ServerCtx>, ev: StateEvent) {
    match ev {
        StateEvent::Displaced(old) => displaced(ctx, &old),
        StateEvent::Purged(node) if node != ctx.node_id() => {
            ctx.replicator.cluster().take_back(node);
            // Rooms here drop the dead node's occupants.
            if let Some(host) = crate::transport::s2s::hosted::host(ctx) {
                ctx.services.node_gone(&host);
            }
        }
        StateEvent::Purged(_) => register_again(ctx),
        StateEvent::AccountDeleted(user) => account_deleted(ctx, &user),
        StateEvent::Kicked(jid) => {
            if let Some(e) = FullJid::new(&jid)
                .ok()
                .and_then(|j| ctx.router.get_full(&j))
            {
                tracing::info!(%jid, "session ended by an operator");
                e.handle.close(StreamError::with_text(
                    StreamCondition::PolicyViolation,
                    "ended by the server's operator",
                ));
            }
        }
        StateEvent::OfflineWaiting(bare) => {
            if let Some(p) = BareJid::new(&bare).ok().and_then(|b| ctx.presence.get(&b)) {
                p.do_send(crate::im::presence::FlushOffline);
            }
        }
    }
}

fn account_deleted(ctx: &ServerCtx, user: &str) {
    let Ok(bare) = BareJid::new(&ctx.config.account_jid(user)) else {
        return;
    };
    let gone = StreamError::with_text(StreamCondition::NotAuthorized, "account removed");
    for entry in ctx.router.resources(&bare) {
        tracing::info!(jid = %bare, resource = %entry.resource, "account deleted: ending its session");
        entry.handle.close(gone.clone());
    }
}

fn displaced(ctx: &ServerCtx, old: &SessionRecord) {
    let Ok(full) = FullJid::new(&old.jid) else {
        return;
    };
    if let Some(e) = ctx.router.get_full(&full).filter(|e| e.id == old.sid) {
        e.handle.close(StreamError::with_text(
            StreamCondition::Conflict,
            "replaced by a new connection",
        ));
    }
}

/// The cluster dropped this node's sessions from the table while they
/// were alive here. Bind each again, as it was (its bind time included: a
/// newer login of the same address elsewhere wins, and this one then ends
/// with `<conflict/>` so its client resumes or logs in again).
fn register_again(ctx: &Arc<ServerCtx>) {
    let live = ctx.router.all_full();
    if live.is_empty() {
        return;
    }
    tracing::warn!(
        sessions = live.len(),
        "this node's sessions were purged while it was alive (paused or cut off); registering them again"
    );
    for (full, e) in live {
        let record = SessionRecord {
            jid: full.to_string(),
            node: ctx.node_id(),
            sid: e.id,
            available: e.available,
            priority: e.priority,
            sm_id: ctx.sm_sessions.id_of(&full),
            bound_at: e.bound_at,
            caps: None,
        };
        let c = ctx.clone();
        ctx.replicator.runtime().spawn(async move {
            match c
                .replicator
                .commit_async(&Command::SessionBind {
                    record,
                    replaces: None,
                })
                .await
            {
                Ok(_) => {
                    if let Some(p) = c.presence.get(&full.to_bare()) {
                        p.do_send(crate::im::presence::Rebroadcast);
                    }
                }
                Err(StateError::Superseded(_)) => {
                    tracing::info!(jid = %full, "a newer login replaced this session meanwhile");
                    e.handle.close(StreamError::with_text(
                        StreamCondition::Conflict,
                        "replaced by a new connection",
                    ));
                }
                Err(err) => {
                    // Still cut off: close it, so its client resumes on a
                    // node that can reach the cluster.
                    tracing::warn!(jid = %full, error = %err, "cannot register a live session again; closing it");
                    e.handle.close(StreamError::with_text(
                        StreamCondition::SystemShutdown,
                        "this node lost touch with the cluster",
                    ));
                }
            }
        });
    }
}
