//! Draining a node (SIGTERM, or `starling cluster drain`): stop being
//! ready so load balancers send no new clients, move Raft leadership away,
//! and hand every resumable session (XEP-0198) to another node, where its
//! client resumes after `<system-shutdown/>`. Other sessions just end and
//! their clients log in again. Every step is bounded.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::route::{relay, Relay};
use crate::server::ServerCtx;
use crate::stream::{StreamCondition, StreamError};

const LEADER_WAIT: Duration = Duration::from_secs(3);
const HANDOFF_WAIT: Duration = Duration::from_secs(3);

pub async fn drain(ctx: &Arc<ServerCtx>) {
    ctx.draining.store(true, Ordering::Release);
    let cluster = ctx.replicator.cluster();
    let status = cluster.status();
    let others: Vec<u64> = status
        .peers
        .iter()
        .map(|p| p.0)
        .filter(|id| *id != status.id)
        .collect();
    tracing::info!(
        sessions = ctx.router.count(),
        peers = others.len(),
        "draining"
    );
    if others.is_empty() {
        return;
    }
    // Each resumable session first, spread over the other nodes, while we
    // are still leader (raft-rs drops proposals during a leader transfer,
    // and the new nodes' binds are proposals).
    let sessions = ctx.sm_sessions.all();
    let mut moved = Vec::new();
    for (i, (_, addr)) in sessions.into_iter().enumerate() {
        let reason = StreamError::with_text(
            StreamCondition::SystemShutdown,
            "node draining; resume elsewhere",
        );
        if let Ok(Some(state)) = addr.send(crate::c2s::session::TakeOver(reason)).await {
            let target = others[i % others.len()];
            moved.push((state.jid.clone(), target));
            ctx.moved
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(state.jid.clone(), (target, std::time::Instant::now()));
            relay(ctx, target, &Relay::HandOffPush { state });
        }
    }
    // Wait (bounded) until the routing table shows them on their new nodes.
    let deadline = tokio::time::Instant::now() + HANDOFF_WAIT;
    while tokio::time::Instant::now() < deadline {
        let done = moved
            .iter()
            .all(|(jid, node)| ctx.state.session(jid).is_some_and(|r| r.node == *node));
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then leadership, so the cluster keeps committing without us.
    let status = cluster.status();
    if status.role == "leader" {
        cluster.transfer_leader(others[0]).await;
        let _ = cluster.wait_for(LEADER_WAIT, |s| s.role != "leader").await;
    }
    tracing::info!(handed_over = moved.len(), "drain done");
}
