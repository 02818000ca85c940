//! The admin HTTP API and the status page, on the HTTP listener.
//!
//! `/admin/api/...` answers JSON to requests with `Authorization: Bearer
//! TOKEN` (`[http] admin_token`, or the token the node writes to
//! `data_dir/admin.token` at start); by default only from this machine
//! (`[http] admin = "loopback"`: the peer address, not a forwarded header).
//!
//! - `GET status`: every node of the cluster (role, term, commit/applied
//!   index and lag, sessions), the leader, this node's stanza counters;
//! - `GET users`, `POST users` `{"user","password"}`, `PUT
//!   users/{user}/password` `{"password"}`, `DELETE users/{user}`,
//!   `DELETE users/{user}/archive` (empties the message archive);
//! - `GET sessions`, `DELETE sessions/{full JID}` (ended on whichever node
//!   holds it);
//! - `POST cluster/drain` (this node), `DELETE cluster/nodes/{id}`;
//! - `GET rooms` (group chat rooms with records), `GET pubsub` (the nodes of
//!   `pubsub.DOMAIN`), `GET reports` (XEP-0377
//!   spam and abuse reports), `POST broadcast` `{"body"}` (a headline to
//!   every online session).
//!
//! `/admin` is the status page: HTML that asks for the token once and shows
//! `status` every two seconds.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::base::xml::{ns, Element};
use crate::model::state::Command;
use crate::node::admin::{execute, AdminOp};
use crate::node::server::ServerCtx;

type Ctx = web::Data<Arc<ServerCtx>>;

/// The routes, for `http.rs`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin", web::get().to(page))
        .route("/admin/api/status", web::get().to(status))
        .route("/admin/api/users", web::get().to(users))
        .route("/admin/api/users", web::post().to(add_user))
        .route("/admin/api/users/{user}", web::delete().to(delete_user))
        .route("/admin/api/users/{user}/password", web::put().to(password))
        .route(
            "/admin/api/users/{user}/archive",
            web::delete().to(purge_archive),
        )
        .route("/admin/api/sessions", web::get().to(sessions))
        .route("/admin/api/sessions/{jid}", web::delete().to(kick))
        .route("/admin/api/cluster/drain", web::post().to(drain))
        .route(
            "/admin/api/cluster/nodes/{id}",
            web::delete().to(remove_node),
        )
        .route("/admin/api/rooms", web::get().to(rooms))
        .route("/admin/api/pubsub", web::get().to(pubsub_nodes))
        .route("/admin/api/reports", web::get().to(reports))
        .route("/admin/api/broadcast", web::post().to(broadcast));
}

fn reply(status: actix_web::http::StatusCode, v: Value) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json")
        .insert_header(("Cache-Control", "no-store"))
        .body(v.to_string())
}

fn error(status: actix_web::http::StatusCode, why: impl Into<String>) -> HttpResponse {
    reply(status, json!({ "error": why.into() }))
}

/// Whether the request may use the API: allowed from where it comes, and
/// with the token. `Err` is the answer to give.
fn allowed(req: &HttpRequest, ctx: &ServerCtx) -> Result<(), Box<HttpResponse>> {
    allowed_with(req, ctx, &ctx.config.http.admin)
}

/// [`allowed`] with the access rule `mode` ("loopback", "any", "off").
fn allowed_with(req: &HttpRequest, ctx: &ServerCtx, mode: &str) -> Result<(), Box<HttpResponse>> {
    use actix_web::http::StatusCode;
    let from_here = req.peer_addr().is_some_and(|p| p.ip().is_loopback());
    match mode {
        "any" => {}
        "loopback" if from_here => {}
        _ => return Err(Box::new(error(StatusCode::NOT_FOUND, "not found"))),
    }
    let token = if ctx.config.http.admin_token.is_empty() {
        std::fs::read_to_string(ctx.config.data_dir.join(crate::node::admin::TOKEN))
            .unwrap_or_default()
    } else {
        ctx.config.http.admin_token.clone()
    };
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let ok = !token.is_empty()
        && bool::from(subtle::ConstantTimeEq::ct_eq(
            given.as_bytes(),
            token.trim().as_bytes(),
        ));
    if ok {
        Ok(())
    } else {
        Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required",
        )))
    }
}

/// `/metrics`: open to this machine; from elsewhere, with the token.
pub fn may_scrape(req: &HttpRequest, ctx: &ServerCtx) -> bool {
    if req.peer_addr().is_some_and(|p| p.ip().is_loopback()) {
        return true;
    }
    ctx.config.http.admin != "off" && allowed_with(req, ctx, "any").is_ok()
}

macro_rules! guard {
    ($req:expr, $ctx:expr) => {
        if let Err(r) = allowed(&$req, &$ctx) {
            return *r;
        }
    };
}

/// An account operation, committed off the worker thread (the commit
/// waits for one replication round).
async fn run(ctx: &Arc<ServerCtx>, op: AdminOp) -> Result<Vec<String>, String> {
    let c = ctx.clone();
    let deleted = match &op {
        AdminOp::Del { user } => Some(user.clone()),
        _ => None,
    };
    let result = tokio::task::spawn_blocking(move || {
        execute(&c.state, &c.config.domain, &op, |cmd| c.commit(cmd))
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    if let (Ok(_), Some(user)) = (&result, deleted) {
        tracing::info!(%user, "account deleted through the admin API");
    }
    result
}

fn done(result: Result<Vec<String>, String>) -> HttpResponse {
    use actix_web::http::StatusCode;
    match result {
        Ok(_) => reply(StatusCode::OK, json!({ "ok": true })),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// Counters this node reports about itself (and, through the mesh status
/// call, to the other nodes' status pages).
pub fn node_summary(ctx: &ServerCtx) -> String {
    let m = crate::base::metrics::get();
    let (i, o) = m.stanza_totals();
    json!({ "sessions_here": ctx.router.count(), "stanzas_in": i, "stanzas_out": o }).to_string()
}

async fn status(req: HttpRequest, ctx: Ctx) -> HttpResponse {
    guard!(req, ctx);
    let cluster = ctx.replicator.cluster();
    let me = cluster.status();
    let mut per_node: std::collections::BTreeMap<u64, usize> = Default::default();
    for rec in ctx.state.all_sessions() {
        *per_node.entry(rec.node).or_default() += 1;
    }
    let auth = crate::node::server::known_mesh_auth(&ctx.config).ok();
    let mut nodes = Vec::new();
    for (id, addr) in &me.peers {
        let s = if *id == me.id {
            Some(me.clone())
        } else if let Some(auth) = &auth {
            tokio::time::timeout(
                Duration::from_secs(1),
                starling_cluster::remote_status(addr, auth),
            )
            .await
            .ok()
            .and_then(Result::ok)
        } else {
            None
        };
        let own: Value = s
            .as_ref()
            .and_then(|s| {
                if s.id == me.id {
                    Some(node_summary(&ctx))
                } else {
                    s.app.split_once("summary=").map(|(_, j)| j.to_string())
                }
            })
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or(Value::Null);
        nodes.push(json!({
            "id": id,
            "address": addr,
            "reachable": s.is_some(),
            "role": s.as_ref().map(|s| s.role.clone()),
            "term": s.as_ref().map(|s| s.term),
            "commit": s.as_ref().map(|s| s.commit),
            "applied": s.as_ref().map(|s| s.applied),
            "lag": s.as_ref().map(|s| s.commit.saturating_sub(s.applied)),
            "sessions": per_node.get(id).copied().unwrap_or(0),
            "stanzas_in": own.get("stanzas_in").cloned().unwrap_or(Value::Null),
            "stanzas_out": own.get("stanzas_out").cloned().unwrap_or(Value::Null),
        }));
    }
    reply(
        actix_web::http::StatusCode::OK,
        json!({
            "domain": ctx.config.domain,
            "node": me.id,
            "leader": me.leader,
            "term": me.term,
            "sessions": per_node.values().sum::<usize>(),
            "nodes": nodes,
        }),
    )
}

async fn users(req: HttpRequest, ctx: Ctx) -> HttpResponse {
    guard!(req, ctx);
    match ctx.state.list_accounts() {
        Ok(u) => reply(actix_web::http::StatusCode::OK, json!({ "users": u })),
        Err(e) => error(
            actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        ),
    }
}

fn field(body: &[u8], name: &str) -> Result<String, Box<HttpResponse>> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get(name).and_then(Value::as_str).map(str::to_string))
        .ok_or_else(|| {
            Box::new(error(
                actix_web::http::StatusCode::BAD_REQUEST,
                format!("a JSON object with a string {name:?} is required"),
            ))
        })
}

async fn add_user(req: HttpRequest, ctx: Ctx, body: web::Bytes) -> HttpResponse {
    guard!(req, ctx);
    let (user, password) = match (field(&body, "user"), field(&body, "password")) {
        (Ok(u), Ok(p)) => (u, p),
        (Err(r), _) | (_, Err(r)) => return *r,
    };
    done(run(&ctx, AdminOp::Add { user, password }).await)
}

async fn password(
    req: HttpRequest,
    ctx: Ctx,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    guard!(req, ctx);
    let password = match field(&body, "password") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    done(
        run(
            &ctx,
            AdminOp::Passwd {
                user: path.into_inner(),
                password,
            },
        )
        .await,
    )
}

async fn delete_user(req: HttpRequest, ctx: Ctx, path: web::Path<String>) -> HttpResponse {
    guard!(req, ctx);
    done(
        run(
            &ctx,
            AdminOp::Del {
                user: path.into_inner(),
            },
        )
        .await,
    )
}

async fn purge_archive(req: HttpRequest, ctx: Ctx, path: web::Path<String>) -> HttpResponse {
    guard!(req, ctx);
    done(
        run(
            &ctx,
            AdminOp::PurgeArchive {
                user: path.into_inner(),
            },
        )
        .await,
    )
}

async fn sessions(req: HttpRequest, ctx: Ctx) -> HttpResponse {
    guard!(req, ctx);
    let list: Vec<Value> = ctx
        .state
        .all_sessions()
        .into_iter()
        .map(|r| {
            json!({
                "jid": r.jid,
                "node": r.node,
                "available": r.available,
                "priority": r.priority,
                "resumable": r.sm_id.is_some(),
                "bound_at_ms": r.bound_at,
            })
        })
        .collect();
    reply(actix_web::http::StatusCode::OK, json!({ "sessions": list }))
}

async fn kick(req: HttpRequest, ctx: Ctx, path: web::Path<String>) -> HttpResponse {
    guard!(req, ctx);
    let jid = path.into_inner();
    if ctx.state.session(&jid).is_none() {
        return error(
            actix_web::http::StatusCode::NOT_FOUND,
            format!("no session {jid}"),
        );
    }
    match ctx
        .replicator
        .commit_async(&Command::SessionKick { jid })
        .await
    {
        Ok(_) => reply(actix_web::http::StatusCode::OK, json!({ "ok": true })),
        Err(e) => error(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        ),
    }
}

async fn drain(req: HttpRequest, ctx: Ctx) -> HttpResponse {
    guard!(req, ctx);
    ctx.drain_requested.notify_one();
    reply(
        actix_web::http::StatusCode::ACCEPTED,
        json!({ "ok": true, "draining": ctx.node_id() }),
    )
}

async fn remove_node(req: HttpRequest, ctx: Ctx, path: web::Path<u64>) -> HttpResponse {
    guard!(req, ctx);
    let id = path.into_inner();
    match ctx
        .replicator
        .cluster()
        .remove_node(id, Duration::from_secs(10))
        .await
    {
        Ok(members) => reply(
            actix_web::http::StatusCode::OK,
            json!({ "ok": true, "members": members.into_iter().map(|(i, _)| i).collect::<Vec<_>>() }),
        ),
        Err(e) => error(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        ),
    }
}

async fn rooms(req: HttpRequest, ctx: Ctx) -> HttpResponse {
    guard!(req, ctx);
    let rooms: Vec<Value> = ctx
        .state
        .hosted_claims()
        .into_iter()
        .map(|(jid, node)| json!({ "jid": jid, "node": node }))
        .collect();
    reply(actix_web::http::StatusCode::OK, json!({ "rooms": rooms }))
}

/// The nodes of the publish-subscribe service (`pubsub.DOMAIN`, XEP-0060):
/// name, kind of access, items held.
async fn pubsub_nodes(req: HttpRequest, ctx: Ctx) -> HttpResponse {
    guard!(req, ctx);
    let Some(domain) = ctx.config.services.pubsub_domain(&ctx.config.domain) else {
        return reply(
            actix_web::http::StatusCode::OK,
            json!({ "service": Value::Null, "nodes": [] }),
        );
    };
    let owner = crate::im::pubsub::service_key(&domain);
    let nodes: Vec<Value> = ctx
        .state
        .pubsub_nodes(&owner)
        .into_iter()
        .map(|name| {
            let items = ctx.state.pubsub_items(&owner, &name).len();
            let meta = ctx.state.pubsub_node(&owner, &name);
            let access = meta.as_ref().map(|m| m.config.access_model.as_str());
            let title = meta.and_then(|m| m.config.title);
            json!({ "node": name, "items": items, "access": access, "title": title })
        })
        .collect();
    reply(
        actix_web::http::StatusCode::OK,
        json!({ "service": domain, "nodes": nodes }),
    )
}

/// XEP-0377 spam and abuse reports, oldest first.
async fn reports(req: HttpRequest, ctx: Ctx) -> HttpResponse {
    guard!(req, ctx);
    let list = ctx.state.spam_reports();
    reply(
        actix_web::http::StatusCode::OK,
        json!({ "reports": serde_json::to_value(list).unwrap_or(Value::Null) }),
    )
}

async fn broadcast(req: HttpRequest, ctx: Ctx, body: web::Bytes) -> HttpResponse {
    guard!(req, ctx);
    let text = match field(&body, "body") {
        Ok(t) if !t.trim().is_empty() => t,
        Ok(_) => {
            return error(
                actix_web::http::StatusCode::BAD_REQUEST,
                "the body is empty",
            )
        }
        Err(r) => return *r,
    };
    let mut sent = 0;
    for r in ctx.state.all_sessions() {
        let Ok(full) = jid::FullJid::new(&r.jid) else {
            continue;
        };
        let msg = Element::new("message", ns::CLIENT)
            .with_attr("from", ctx.config.domain.clone())
            .with_attr("to", r.jid.clone())
            .with_attr("type", "headline")
            .with_child(Element::new("body", ns::CLIENT).with_text(text.clone()));
        if let Some(t) = crate::routing::route::full(&ctx, &full) {
            crate::routing::route::send(&ctx, &t, msg, None);
            sent += 1;
        }
    }
    reply(
        actix_web::http::StatusCode::OK,
        json!({ "ok": true, "sent": sent }),
    )
}

async fn page(req: HttpRequest, ctx: Ctx) -> HttpResponse {
    use actix_web::http::StatusCode;
    let from_here = req.peer_addr().is_some_and(|p| p.ip().is_loopback());
    match ctx.config.http.admin.as_str() {
        "any" => {}
        "loopback" if from_here => {}
        _ => return error(StatusCode::NOT_FOUND, "not found"),
    }
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .insert_header((
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
        ))
        .body(STATUS_PAGE)
}

const STATUS_PAGE: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Starling status</title>
<style>
body{font:14px system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin-top:1em}
th,td{border:1px solid #ccc;padding:.4em .8em;text-align:right}
th{background:#f3f3f3}
td.l,th.l{text-align:left}
tr.leader td{background:#eef8ee}
tr.down td{background:#fbeaea}
#err{color:#a00}
</style></head>
<body>
<h1>Starling <span id="domain"></span></h1>
<p id="summary">Loading…</p>
<p id="err"></p>
<table id="nodes"><thead><tr>
<th>node</th><th class="l">address</th><th class="l">role</th><th>term</th><th>commit</th>
<th>applied</th><th>lag</th><th>sessions</th><th>stanzas in/s</th><th>stanzas out/s</th>
</tr></thead><tbody></tbody></table>
<p><small>Refreshes every 2 s. <span id="updated"></span></small></p>
<script>
(function () {
  var key = "starling-admin-token";
  var token = new URLSearchParams(location.hash.slice(1)).get("token") || sessionStorage.getItem(key);
  if (!token) token = prompt("Admin token (data_dir/admin.token)") || "";
  sessionStorage.setItem(key, token);
  var last = {};
  function cell(tr, text, cls) {
    var td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "–" : String(text);
    if (cls) td.className = cls;
    tr.appendChild(td);
  }
  function rate(id, name, value, now) {
    var prev = last[id + name];
    last[id + name] = { v: value, t: now };
    if (!prev || value === null || value === undefined) return null;
    return ((value - prev.v) / ((now - prev.t) / 1000)).toFixed(1);
  }
  function refresh() {
    fetch("/admin/api/status", { headers: { Authorization: "Bearer " + token } })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (s) {
        var now = Date.now();
        document.getElementById("err").textContent = "";
        document.getElementById("domain").textContent = s.domain;
        document.getElementById("summary").textContent =
          s.nodes.length + " nodes, leader node " + s.leader + ", term " + s.term + ", " + s.sessions + " sessions";
        var body = document.querySelector("#nodes tbody");
        body.textContent = "";
        s.nodes.forEach(function (n) {
          var tr = document.createElement("tr");
          tr.dataset.node = n.id;
          if (n.id === s.leader) tr.className = "leader";
          if (!n.reachable) tr.className = "down";
          cell(tr, n.id);
          cell(tr, n.address, "l");
          cell(tr, n.reachable ? n.role : "unreachable", "l");
          cell(tr, n.term);
          cell(tr, n.commit);
          cell(tr, n.applied);
          cell(tr, n.lag);
          cell(tr, n.sessions);
          cell(tr, rate(n.id, "in", n.stanzas_in, now));
          cell(tr, rate(n.id, "out", n.stanzas_out, now));
          body.appendChild(tr);
        });
        document.getElementById("updated").textContent = "Updated " + new Date(now).toLocaleTimeString();
      })
      .catch(function (e) {
        document.getElementById("err").textContent = "Cannot read the status: " + e.message;
      });
  }
  refresh();
  setInterval(refresh, 2000);
})();
</script>
</body></html>
"##;
