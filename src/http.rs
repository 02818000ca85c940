//! HTTP for operators and load balancers (actix-web, default port 5280):
//! `/health/live` answers while the process runs; `/health/ready` only
//! while the node is a cluster member with a leader, caught up with the
//! commit index, and not shutting down, so HAProxy stops sending clients
//! to a node that cannot serve them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{get, web, App, HttpResponse, HttpServer, Responder};

use crate::server::ServerCtx;

/// How far the applied index may trail the commit index and still be "ready".
const MAX_LAG: u64 = 100;

#[get("/health/live")]
async fn live() -> impl Responder {
    HttpResponse::Ok().content_type("text/plain").body("live\n")
}

#[get("/health/ready")]
async fn ready(ctx: web::Data<Arc<ServerCtx>>) -> impl Responder {
    let s = ctx.replicator.cluster().status();
    // The latest commit failed: try one now before saying so.
    let cannot_commit = ctx.replicator.cannot_commit()
        && !matches!(
            tokio::time::timeout(Duration::from_secs(2), ctx.replicator.probe()).await,
            Ok(true)
        );
    let reason = if ctx.draining.load(Ordering::Acquire) {
        Some("draining")
    } else if s.leader == 0 {
        Some("no cluster leader (not in the majority?)")
    } else if s.commit.saturating_sub(s.applied) > MAX_LAG {
        Some("catching up")
    } else if !s.peers.iter().any(|(id, _)| *id == s.id) {
        Some("not a cluster member")
    } else if cannot_commit {
        Some("cannot commit to the cluster")
    } else {
        None
    };
    match reason {
        None => HttpResponse::Ok().content_type("text/plain").body(format!(
            "ready node={} role={} leader={} applied={}\n",
            s.id, s.role, s.leader, s.applied
        )),
        Some(r) => HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(format!("not ready: {r}\n")),
    }
}

/// Serve on `listener` inside the running actix System.
pub fn start(
    ctx: Arc<ServerCtx>,
    listener: std::net::TcpListener,
) -> std::io::Result<actix_web::dev::ServerHandle> {
    let data = web::Data::new(ctx);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .service(live)
            .service(ready)
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok(handle)
}
