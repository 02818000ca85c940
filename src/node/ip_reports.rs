//! Telling the other nodes this node's per-address connection and login
//! counts (`ip_limits.rs`), once a second while it has any worth telling,
//! so each node's limit holds roughly for the whole cluster.

use std::sync::Arc;
use std::time::Duration;

use crate::node::server::ServerCtx;
use crate::routing::route::{relay, Relay};

const EVERY: Duration = Duration::from_secs(1);

pub async fn report(ctx: Arc<ServerCtx>) {
    let limits = &ctx.config.limits;
    let (connections, logins) = (
        limits.connections_per_ip_per_min,
        limits.logins_per_ip_per_min,
    );
    if connections == 0 && logins == 0 {
        return;
    }
    let mut stopped = ctx.replicator.cluster().stopped();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stopped.changed() => return,
        }
        let now = crate::base::time::unix_now().as_millis() as u64;
        let Some(report) = ctx.ip_limits.report(connections, logins, now) else {
            continue;
        };
        let msg = Relay::IpCounts(report);
        for node in ctx.other_nodes() {
            relay(&ctx, node, &msg);
        }
    }
}
