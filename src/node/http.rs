//! HTTP (actix-web, default port 5280; HTTPS on `http.tls_listen`): XMPP
//! over WebSocket at `/xmpp-websocket` (c2s/websocket.rs), connection
//! discovery at `/.well-known/host-meta[.json]` (XEP-0156), and for
//! operators and load balancers `/health/live` answers while the process runs; `/health/ready` only
//! while the node is a cluster member with a leader, caught up with the
//! commit index, and not shutting down, so HAProxy stops sending clients
//! to a node that cannot serve them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::{Method, StatusCode};
use actix_web::{get, web, App, HttpRequest, HttpResponse, HttpServer, Responder};

use crate::node::server::ServerCtx;

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

/// Prometheus/OpenMetrics exposition (`metrics.rs`): the counters, and
/// gauges of this node's state read now.
#[get("/metrics")]
async fn metrics(req: HttpRequest, ctx: web::Data<Arc<ServerCtx>>) -> HttpResponse {
    if !ctx.config.http.metrics {
        return HttpResponse::NotFound().finish();
    }
    // From this machine, or with the admin token (Prometheus sends it as
    // a bearer token): the figures describe the cluster.
    if !crate::node::admin_http::may_scrape(&req, &ctx) {
        return HttpResponse::Unauthorized()
            .content_type("text/plain")
            .body("metrics: from loopback, or with the admin bearer token\n");
    }
    let m = crate::base::metrics::get();
    let s = ctx.replicator.cluster().status();
    let set = |name, v: u64| m.set(name, i64::try_from(v).unwrap_or(i64::MAX));
    m.sessions
        .get_or_create(&vec![("transport", "client")])
        .set(ctx.router.count() as i64);
    let s2s_out = ctx
        .s2s
        .links
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter(|a| a.connected())
        .count();
    m.sessions
        .get_or_create(&vec![("transport", "s2s_out")])
        .set(s2s_out as i64);
    set("raft_term", s.term);
    set("raft_commit_index", s.commit);
    set("raft_applied_index", s.applied);
    set("raft_apply_lag", s.commit.saturating_sub(s.applied));
    set("raft_leader_id", s.leader);
    set("raft_read_requests", s.read_requests);
    set("raft_is_leader", u64::from(s.role == "leader"));
    set("cluster_members", s.peers.len() as u64);
    set(
        "relays_pending",
        ctx.replicator.cluster().relays_pending() as u64,
    );
    set("offline_messages", ctx.state.offline_total());
    set("archive_bytes", ctx.state.archive_bytes_total());
    for q in ctx.replicator.cluster().relay_stats() {
        let labels = |stat: &str| {
            vec![
                ("node", q.node.to_string()),
                ("lane", q.lane.to_string()),
                ("stat", stat.to_string()),
            ]
        };
        m.node_gauges
            .get_or_create(&labels("queued"))
            .set(q.pending as i64);
        m.node_gauges
            .get_or_create(&labels("connects"))
            .set(q.connects as i64);
    }
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(m.encode())
}

/// A CORS preflight.
async fn preflight(req: HttpRequest, ctx: web::Data<Arc<ServerCtx>>) -> HttpResponse {
    crate::transport::c2s::http_bridge::cors(&req, &ctx.config, StatusCode::NO_CONTENT).finish()
}

/// The connection endpoints this node serves (XEP-0156 §3).
fn endpoints(
    req: &HttpRequest,
    config: &crate::model::config::Config,
) -> Vec<(&'static str, String)> {
    let base = crate::transport::c2s::http_bridge::public_base(req, config);
    let mut links = Vec::new();
    if config.http.websocket {
        links.push((
            "urn:xmpp:alt-connections:websocket",
            format!("{}/xmpp-websocket", base.replacen("http", "ws", 1)),
        ));
    }
    if config.http.bosh {
        links.push((
            "urn:xmpp:alt-connections:xbosh",
            format!("{base}/http-bind"),
        ));
    }
    links
}

/// XEP-0156 §3.1: host-meta (XRD).
#[get("/.well-known/host-meta")]
async fn host_meta(req: HttpRequest, ctx: web::Data<Arc<ServerCtx>>) -> impl Responder {
    let mut xrd = String::from(
        "<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n",
    );
    for (rel, href) in endpoints(&req, &ctx.config) {
        xrd.push_str(&format!(
            "  <Link rel='{rel}' href='{}'/>\n",
            crate::base::xml::element::escape(&href)
        ));
    }
    xrd.push_str("</XRD>\n");
    crate::transport::c2s::http_bridge::cors(&req, &ctx.config, StatusCode::OK)
        .content_type("application/xrd+xml")
        .body(xrd)
}

/// XEP-0156 §3.2: host-meta.json (JRD).
#[get("/.well-known/host-meta.json")]
async fn host_meta_json(req: HttpRequest, ctx: web::Data<Arc<ServerCtx>>) -> impl Responder {
    let links: Vec<serde_json::Value> = endpoints(&req, &ctx.config)
        .into_iter()
        .map(|(rel, href)| serde_json::json!({ "rel": rel, "href": href }))
        .collect();
    crate::transport::c2s::http_bridge::cors(&req, &ctx.config, StatusCode::OK)
        .content_type("application/json")
        .body(serde_json::json!({ "links": links }).to_string())
}

/// Serve inside the running actix System: plain HTTP on `listener`, HTTPS
/// (and wss) on `tls`. `None` when neither is configured.
pub fn start(
    ctx: Arc<ServerCtx>,
    listener: Option<std::net::TcpListener>,
    tls: Option<(std::net::TcpListener, tokio_rustls::rustls::ServerConfig)>,
) -> std::io::Result<Option<actix_web::dev::ServerHandle>> {
    if listener.is_none() && tls.is_none() {
        return Ok(None);
    }
    let workers = ctx.config.workers();
    // The web transports are given the transports' context, the rest the node's.
    let transport = web::Data::new(ctx.transport.clone());
    let data = web::Data::new(ctx);
    // BOSH sessions, shared by every worker.
    let bosh = web::Data::new(crate::transport::c2s::bosh::Registry::default());
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(transport.clone())
            .app_data(bosh.clone())
            .service(live)
            .service(ready)
            .service(metrics)
            .configure(crate::node::admin_http::routes)
            .service(host_meta)
            .service(host_meta_json)
            .route(
                "/xmpp-websocket",
                web::get().to(crate::transport::c2s::websocket::upgrade),
            )
            .route("/http-bind", web::post().to(crate::transport::c2s::bosh::request))
            .route(
                "/upload/{id}/{name}",
                web::put().to(crate::node::upload::files::put),
            )
            .route(
                "/upload/{id}/{name}",
                web::get().to(crate::node::upload::files::get),
            )
            .route("/http-bind", web::get().to(crate::transport::c2s::bosh::info))
            .default_service(web::route().method(Method::OPTIONS).to(preflight))
    })
    .workers(workers)
    // A stopping node lets requests under way finish (the answer to the
    // admin API's drain request itself) for at most this long.
    .shutdown_timeout(1)
    // Small writes (a stanza, a BOSH answer) go out at once, not after the
    // peer's delayed ACK (Nagle).
    .on_connect(|conn, _| {
        if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
            let _ = tcp.set_nodelay(true);
        } else if let Some(tls) =
            conn.downcast_ref::<actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>>()
        {
            let _ = tls.get_ref().0.set_nodelay(true);
        }
    })
    // Slow senders of request heads are cut off (slowloris).
    .client_request_timeout(Duration::from_secs(5))
    .disable_signals();
    if let Some(l) = listener {
        server = server.listen(l)?;
    }
    if let Some((l, config)) = tls {
        server = server.listen_rustls_0_23(l, config)?;
    }
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok(Some(handle))
}
