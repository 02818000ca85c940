//! Temporary accounts of the anonymous host (XEP-0175 §3): each is removed
//! with its data when its session ends (c2s/session.rs). This sweep removes
//! those whose removal never happened: their node died, or the login ended
//! before a resource was bound. The leader deletes an account that had no
//! session in two sweeps in a row.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::model::config::is_anonymous_account;
use crate::model::state::Command;
use crate::node::server::ServerCtx;

/// Longer than a login takes to bind (negotiation is bounded by
/// `limits.auth_timeout_secs`).
const EVERY: Duration = Duration::from_secs(60);

pub async fn sweep(ctx: Arc<ServerCtx>) {
    if ctx.config.anonymous().is_none() {
        return;
    }
    let every = EVERY.max(Duration::from_secs(ctx.config.limits.auth_timeout_secs));
    let mut stopped = ctx.replicator.cluster().stopped();
    let mut unbound_before: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.changed() => return,
        }
        if ctx.replicator.cluster().status().role != "leader" {
            unbound_before.clear();
            continue;
        }
        let unbound: HashSet<String> = ctx
            .state
            .list_accounts()
            .unwrap_or_default()
            .into_iter()
            .filter(|u| is_anonymous_account(u) && ctx.state.sessions_of(u).is_empty())
            .collect();
        for username in unbound.intersection(&unbound_before) {
            tracing::info!(%username, "temporary account without a session removed");
            let cmd = Command::DeleteAccount {
                username: username.clone(),
            };
            if let Err(e) = ctx.replicator.commit_async(&cmd).await {
                tracing::warn!(error = %e, %username, "temporary account not removed; tried again later");
            }
        }
        unbound_before = unbound;
    }
}
