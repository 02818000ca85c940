//! Draining a node (SIGTERM, or `starling cluster drain`): stop being
//! ready so load balancers send no new clients, move Raft leadership away,
//! and hand every resumable session (XEP-0198) to another node, where its
//! client resumes after `<system-shutdown/>`. Other sessions just end and
//! their clients log in again. External components are closed with
//! `<system-shutdown/>` and unbound, to reconnect elsewhere. Every step is
//! bounded.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::node::server::ServerCtx;
use crate::routing::route::{relay, HandOff, Relay};
use crate::transport::stream::{StreamCondition, StreamError};

const LEADER_WAIT: Duration = Duration::from_secs(3);
/// How long a drained node keeps forwarding to sessions it handed over.
const LINGER: Duration = Duration::from_millis(500);
/// How long one node gets to confirm a pushed session is bound there.
const PUSH_WAIT: Duration = Duration::from_secs(3);

pub async fn drain(ctx: &Arc<ServerCtx>) {
    ctx.draining.store(true, Ordering::Release);
    let cluster = ctx.replicator.cluster();
    let others = ctx.other_nodes();
    tracing::info!(
        sessions = ctx.router.count(),
        peers = others.len(),
        "draining"
    );
    if others.is_empty() {
        return;
    }
    // Components (gateways) first: they reconnect to a node that stays,
    // and meanwhile stanzas for them get an error that says why.
    crate::transport::component::close_all(ctx, PUSH_WAIT).await;
    // Then each resumable session, spread over the other nodes, while we
    // are still leader (raft-rs drops proposals during a leader transfer,
    // and the new nodes' binds are proposals).
    let sessions = ctx.sm_sessions.all();
    let mut pushes = tokio::task::JoinSet::new();
    for (i, (_, addr)) in sessions.into_iter().enumerate() {
        let reason = StreamError::with_text(
            StreamCondition::SystemShutdown,
            "node draining; resume elsewhere",
        );
        let order: Vec<u64> = (0..others.len())
            .map(|k| others[(i + k) % others.len()])
            .collect();
        let take = crate::transport::c2s::session::TakeOver {
            reason,
            to: order[0],
        };
        if let Ok(Some(state)) = addr.send(take).await {
            pushes.spawn(push(ctx.clone(), state, order));
        }
    }
    let results = pushes.join_all().await;
    let moved = results.iter().filter(|ok| **ok).count();
    // Then the rooms (their occupants are bound elsewhere by now).
    ctx.services.hand_over(&others, PUSH_WAIT).await;
    // Then leadership, so the cluster keeps committing without us.
    let status = cluster.status();
    if status.role == "leader" {
        cluster.transfer_leader(others[0]).await;
        let _ = cluster.wait_for(LEADER_WAIT, |s| s.role != "leader").await;
    }
    // Stanzas already on their way here for the moved sessions are
    // forwarded by the old session actors: give them a moment to arrive.
    if moved > 0 {
        tokio::time::sleep(LINGER).await;
    }
    tracing::info!(
        handed_over = moved,
        failed = results.len() - moved,
        "drain done"
    );
}

/// Hand `state` to the first node in `order` that confirms it bound the
/// session (the bind is a Raft commit there). When none does, the client
/// cannot resume; what it never acknowledged goes back through delivery
/// (offline storage), as on a resume timeout (XEP-0198 §5).
async fn push(ctx: Arc<ServerCtx>, state: HandOff, order: Vec<u64>) -> bool {
    for target in order {
        crate::routing::route::note_moved(&ctx, &state.jid, target);
        let token = ctx.next_session_id();
        let (tx, rx) = tokio::sync::oneshot::channel();
        ctx.push_acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token, tx);
        relay(
            &ctx,
            target,
            &Relay::HandOffPush {
                state: state.clone(),
                token,
            },
        );
        let confirmed = matches!(tokio::time::timeout(PUSH_WAIT, rx).await, Ok(Ok(true)));
        if confirmed {
            return true;
        }
        ctx.push_acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&token);
        // No answer (yet), or refused because a copy pushed earlier was
        // bound first: the table knows. A copy bound elsewhere is the
        // session; one more push could only lose to it.
        if let Some(node) = bound_elsewhere(&ctx, &state) {
            tracing::info!(jid = %state.jid, target, node, "session push not confirmed, but the session is bound there");
            crate::routing::route::note_moved(&ctx, &state.jid, node);
            return true;
        }
        tracing::warn!(jid = %state.jid, target, "session push not confirmed");
    }
    ctx.moved
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&state.jid);
    let bare = match jid::FullJid::new(&state.jid) {
        Ok(j) => jid::Jid::from(j.to_bare()),
        Err(_) => return false,
    };
    for xml in &state.unacked {
        if let Ok(el) = crate::base::xml::parse_fragment(xml) {
            if el.name == "message" {
                let _ = crate::im::delivery::message_again(&ctx, el, bare.clone());
            }
        }
    }
    false
}

/// The node where another copy of the handed-over session `state` is
/// bound, per the table (same stream-management id, another node).
fn bound_elsewhere(ctx: &ServerCtx, state: &HandOff) -> Option<u64> {
    ctx.state
        .session(&state.jid)
        .filter(|r| r.node != ctx.node_id() && r.sm_id.as_deref() == Some(state.sm_id.as_str()))
        .map(|r| r.node)
}
