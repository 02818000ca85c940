//! Noticing dead nodes (issue: cluster failure handling). The leader sees,
//! through Raft's quorum bookkeeping, which members it has heard from; a
//! member silent for `DOWN_AFTER` has its sessions purged from the table,
//! and each purged session's subscribers get unavailable presence
//! (RFC 6121 §4.5.2) on its behalf. Messages to those users then go to
//! offline storage like for anyone offline.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jid::{FullJid, Jid};

use crate::base::xml::{ns, Element};
use crate::model::state::{Command, SessionRecord};
use crate::node::server::ServerCtx;

/// How long a member may be silent before its sessions are purged.
pub const DOWN_AFTER: Duration = Duration::from_secs(3);
const CHECK_EVERY: Duration = Duration::from_millis(500);

pub async fn watch(ctx: Arc<ServerCtx>) {
    let mut down_since: HashMap<u64, Instant> = HashMap::new();
    let mut purged: HashSet<u64> = HashSet::new();
    let mut stopped = ctx.replicator.cluster().stopped();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stopped.changed() => return,
        }
        let status = ctx.replicator.cluster().status();
        if status.role != "leader" {
            down_since.clear();
            continue;
        }
        for (id, _) in &status.peers {
            if *id == status.id {
                continue;
            }
            if status.active.contains(id) {
                down_since.remove(id);
                purged.remove(id);
                continue;
            }
            let since = *down_since.entry(*id).or_insert_with(Instant::now);
            if since.elapsed() >= DOWN_AFTER && !purged.contains(id) {
                match ctx
                    .replicator
                    .commit_async(&Command::PurgeNode {
                        node: *id,
                        before: None,
                    })
                    .await
                {
                    Ok(applied) => {
                        tracing::warn!(
                            node = id,
                            sessions = applied.purged.len(),
                            "node is down; its sessions were purged"
                        );
                        purged.insert(*id);
                        for rec in applied.purged {
                            announce_gone(&ctx, &rec);
                        }
                        // Rooms the dead node held start again here.
                        if !applied.released.is_empty() {
                            if let Some(host) = crate::transport::s2s::hosted::host(&ctx) {
                                ctx.services.revive(&applied.released, &host);
                            }
                        }
                    }
                    Err(e) => tracing::warn!(node = id, error = %e, "cannot purge a down node"),
                }
            }
        }
    }
}

/// Unavailable presence from a purged session to its subscribers and the
/// user's other resources.
fn announce_gone(ctx: &ServerCtx, rec: &SessionRecord) {
    if !rec.available {
        return;
    }
    let Ok(full) = FullJid::new(&rec.jid) else {
        return;
    };
    let bare = full.to_bare();
    let user = ctx.config.account_of(&bare).unwrap_or_default();
    let p = Element::new("presence", ns::CLIENT)
        .with_attr("type", "unavailable")
        .with_attr("from", rec.jid.clone());
    let mut targets: Vec<String> = ctx
        .state
        .roster(&user)
        .unwrap_or_default()
        .into_iter()
        .filter(|i| i.sub.from)
        .map(|i| i.jid)
        .collect();
    targets.push(bare.to_string());
    for t in targets {
        if let Ok(to) = Jid::new(&t) {
            let mut p = p.clone();
            p.set_attr("to", t);
            crate::im::presence::deliver_presence(ctx, p, &to);
        }
    }
}
