//! One node: binds the listeners, spreads connections over worker arbiters
//! (one per core), and shuts down gracefully on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::{Arbiter, System};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::base::tls::TlsError;
use crate::im::context::ImCtx;
use crate::im::modules::Modules;
use crate::model::config::Config;
use crate::model::state::{State, StateError};
use crate::routing::context::RoutingCtx;
use crate::transport::c2s::listener::handle_connection;
use crate::transport::context::{LateTransport, TransportCtx, TransportParts};
use crate::transport::stream::{StreamCondition, StreamError};

/// How long a stopping node waits for the messages it holds to be owned.
const UNOWNED_GRACE: Duration = Duration::from_secs(5);
/// How often a node that restarted tries to purge its old sessions.
const PURGE_TRIES: u32 = 10;

/// The node's context: every layer's context (the transports', which is
/// built on the IM layer's, which is built on routing's: reached through
/// `Deref`) and what only the node-level modules use.
pub struct ServerCtx {
    pub transport: Arc<TransportCtx>,
    /// HTTP file upload (XEP-0363), if on.
    pub uploads: Option<Arc<crate::node::upload::Uploads>>,
}

impl std::ops::Deref for ServerCtx {
    type Target = TransportCtx;

    fn deref(&self) -> &TransportCtx {
        &self.transport
    }
}

/// The node wires routing to the layers above it: delivery (routing a
/// message again, offline last), presence (probes relayed from other
/// nodes) and c2s (session hand-over). It holds the upper contexts
/// weakly (they hold routing's context, which holds this).
#[derive(Default)]
struct Wiring {
    transport: LateTransport,
}

impl Wiring {
    fn transport(&self) -> Option<Arc<TransportCtx>> {
        self.transport.get()
    }
}

impl crate::routing::route::Above for Wiring {
    fn store_or_route(
        &self,
        _ctx: Arc<RoutingCtx>,
        el: crate::base::xml::Element,
        to: jid::FullJid,
        exclude: Option<u64>,
    ) -> crate::routing::route::Later<bool> {
        let Some(t) = self.transport() else {
            tracing::warn!(%to, "message not routed again: the node is stopping");
            return Box::pin(async { false });
        };
        Box::pin(async move { crate::im::delivery::store_or_route(&t.im, el, &to, exclude).await })
    }

    fn answer_probe(
        &self,
        _ctx: &RoutingCtx,
        from: jid::BareJid,
        reply_to: Option<jid::FullJid>,
        contact: &jid::BareJid,
    ) {
        let Some(t) = self.transport() else {
            tracing::warn!(%from, %contact, "relayed presence probe dropped: the node is stopping");
            return;
        };
        if let Some(a) = t.presence.get(contact) {
            a.do_send(crate::im::presence::SendCurrent {
                to: from,
                resource: reply_to,
                check_subscription: true,
            });
        }
    }

    fn take_over(
        &self,
        ctx: &RoutingCtx,
        previd: &str,
        user: &str,
        to: u64,
    ) -> crate::routing::route::Later<Option<crate::routing::route::HandOff>> {
        let bare = ctx.config.account_jid(user);
        let Some(t) = self.transport() else {
            tracing::warn!(%bare, to, "session not handed over: the node is stopping");
            return Box::pin(async { None });
        };
        let addr = t.sm_sessions.get(previd, &bare).map(|(addr, _)| addr);
        Box::pin(async move {
            let addr = addr?;
            addr.send(crate::transport::c2s::session::TakeOver {
                reason: StreamError::with_text(
                    crate::base::stream_error::StreamCondition::Conflict,
                    "session resumed elsewhere",
                ),
                to,
            })
            .await
            .ok()
            .flatten()
        })
    }

    fn install_session(
        &self,
        ctx: Arc<RoutingCtx>,
        state: crate::routing::route::HandOff,
        from: u64,
    ) -> crate::routing::route::Later<bool> {
        let Some(t) = self.transport() else {
            // What waited for the session goes through delivery again (and
            // is logged there if that cannot happen either).
            tracing::warn!(
                jid = %state.jid,
                unacked = state.unacked.len(),
                from,
                "handed-over session not installed: the node is stopping"
            );
            match jid::FullJid::new(&state.jid) {
                Ok(jid) => crate::routing::route::arrived(&ctx, &jid, None),
                Err(_) => {
                    ctx.arriving
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&state.jid);
                }
            }
            return Box::pin(async { false });
        };
        Box::pin(async move {
            crate::transport::c2s::listener::install_session(&t, state, from)
                .await
                .is_some()
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data_dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("feature modules: {0}")]
    Modules(#[from] crate::im::modules::ModulesError),
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        key: &'static str,
        addr: String,
        source: std::io::Error,
    },
}

fn bind(key: &'static str, addr: SocketAddr) -> Result<std::net::TcpListener, StartError> {
    let err = |source| StartError::Bind {
        key,
        addr: addr.to_string(),
        source,
    };
    let l = std::net::TcpListener::bind(addr).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    Ok(l)
}

/// How long shutdown waits for streams to flush.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Run a node until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), StartError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let c2s = bind("c2s.listen", config.c2s_listen())?;
    let direct = config
        .direct_tls_listen()
        .map(|a| bind("c2s.direct_tls_listen", a))
        .transpose()?;
    let http = config
        .http_listen()
        .map(|a| bind("http.listen", a))
        .transpose()?;
    let https = config
        .http_tls_listen()
        .map(|a| bind("http.tls_listen", a))
        .transpose()?;
    let s2s = config
        .s2s_listen()
        .map(|a| bind("s2s.listen", a))
        .transpose()?;
    let s2s_direct = config
        .s2s_direct_tls_listen()
        .map(|a| bind("s2s.direct_tls_listen", a))
        .transpose()?;
    let component = config
        .component_listen()
        .map(|a| bind("component.listen", a))
        .transpose()?;
    let state = Arc::new(State::open(&config.data_dir)?);
    let event_hook = Arc::new(std::sync::OnceLock::new());
    let (replicator, raft_thread) = start_cluster(&config, state.clone(), event_hook.clone())?;
    let identity = crate::base::tls::load_identity(
        config.tls.cert.as_deref(),
        config.tls.key.as_deref(),
        &config.data_dir,
        &config.domain,
    )?;
    let tls = crate::base::tls::server_config(&identity, config.tls.session_tickets)?;
    let tls_end_point = identity
        .certs
        .first()
        .and_then(|c| crate::model::sasl::ht::end_point_hash(c));
    let https = match https {
        Some(l) => Some((l, crate::base::tls::http_server_config(&identity)?)),
        None => None,
    };
    // Read (or made) once: federation's dialback keys, upload signatures
    // and made-up SCRAM salts all derive from it.
    let secret = cluster_secret(&config)?;
    let s2s_state = crate::transport::s2s::S2s::new(&identity, &config.s2s, &secret)?;
    let admin = crate::node::admin::bind(&config.data_dir).map_err(|source| StartError::Bind {
        key: "admin socket",
        addr: config
            .data_dir
            .join(crate::node::admin::SOCKET)
            .display()
            .to_string(),
        source,
    })?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let workers = config.workers();
    crate::routing::router::set_owned_after(std::time::Duration::from_millis(
        config.limits.write_wait_ms,
    ));
    let uploads = config.upload.service_domain(&config.domain).map(|d| {
        Arc::new(crate::node::upload::Uploads::new(
            d,
            config.upload.clone(),
            upload_dir(&config),
            upload_base(
                &config,
                http.as_ref().and_then(|l| l.local_addr().ok()),
                https.as_ref().and_then(|(l, _)| l.local_addr().ok()),
            ),
            &secret,
        ))
    });
    let mut services = crate::im::services::Services::from_config(
        &config.services,
        &config.domain,
        config.mam.enabled,
    );
    if let Some(u) = &uploads {
        services.insert(
            &u.domain,
            Arc::new(crate::node::upload::UploadService(u.clone())),
        );
    }
    let scram_fake_key = crate::model::sasl::credentials::ScramHash::Sha256
        .hmac(secret.as_bytes(), b"starling scram fake salt");
    let wiring = Arc::new(Wiring::default());
    let transports = Arc::new(crate::transport::s2s::Transports::default());
    let routing = RoutingCtx::new(
        config,
        state,
        replicator,
        transports.clone(),
        wiring.clone(),
    );
    let im = ImCtx::new(routing, Modules::standard()?, services);
    let transport = TransportCtx::new(
        im,
        TransportParts {
            tls: TlsAcceptor::from(tls.clone()),
            tls_end_point,
            s2s: s2s_state,
            scram_fake_key,
            shutdown: shutdown_rx,
        },
    );
    wiring.transport.set(&transport);
    transports.ctx.set(&transport);
    let ctx = Arc::new(ServerCtx { transport, uploads });
    // What committed commands mean for this node's sessions (replication.rs).
    let weak = Arc::downgrade(&ctx);
    let _ = event_hook.set(Box::new(move |ev| {
        if let Some(ctx) = weak.upgrade() {
            crate::node::session_events::on_event(&ctx, ev);
        }
    }));
    // Sessions this node held before a restart are gone.
    let started = crate::base::time::unix_now().as_millis() as u64;
    let purge = crate::model::state::Command::PurgeNode {
        node: ctx.node_id(),
        before: Some(started),
    };
    if let Err(e) = ctx.commit(&purge) {
        // Left in the table, they would route messages here for sessions
        // that are gone (each found missing and routed again, slowly): try
        // again in the background. A purge landing after this node bound
        // new sessions registers them again (session_events.rs).
        tracing::info!(error = %e, "could not purge this node's old sessions yet; retrying");
        let c = ctx.clone();
        ctx.replicator.runtime().spawn(async move {
            for _ in 0..PURGE_TRIES {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let me = c.node_id();
                // Only a record from before this start is stale: one bound
                // since may not be in the router yet (its commit
                // lands first), and purging it would hide a live session
                // until it registers again.
                let stale = c.state.all_sessions().into_iter().any(|r| {
                    r.node == me
                        && r.bound_at < started
                        && jid::FullJid::new(&r.jid)
                            .ok()
                            .and_then(|j| c.router.get_full(&j))
                            .is_none_or(|e| e.id != r.sid)
                });
                if !stale {
                    return tracing::info!("no old sessions of this node left in the table");
                }
                match c.replicator.commit_async(&purge).await {
                    Ok(_) => return tracing::info!("this node's old sessions purged"),
                    Err(e) => tracing::info!(error = %e, "purging this node's old sessions failed"),
                }
            }
            tracing::warn!(
                "could not purge this node's old sessions; they stay until the node is seen down"
            );
        });
    }
    if let Some(rx) = ctx.replicator.cluster().take_relay_receiver() {
        ctx.replicator
            .runtime()
            .spawn(crate::routing::route::serve_relays(ctx.routing.clone(), rx));
    }
    if let Some(rx) = ctx.replicator.cluster().take_returned() {
        ctx.replicator
            .runtime()
            .spawn(crate::routing::route::serve_returned(
                ctx.routing.clone(),
                rx,
            ));
    }
    ctx.replicator
        .runtime()
        .spawn(crate::node::liveness::watch(ctx.clone()));
    ctx.replicator
        .runtime()
        .spawn(crate::node::memory::watch(ctx.clone()));
    ctx.replicator
        .runtime()
        .spawn(crate::im::modules::archive::expire_old(ctx.im.clone()));
    ctx.replicator
        .runtime()
        .spawn(crate::node::upload::files::sweep(ctx.clone()));
    ctx.replicator
        .runtime()
        .spawn(crate::node::temporary_accounts::sweep(ctx.clone()));
    ctx.replicator
        .runtime()
        .spawn(crate::node::ip_reports::report(ctx.clone()));
    // `starling cluster status` shows sessions per node from the table.
    let weak = Arc::downgrade(&ctx);
    ctx.replicator.cluster().set_app_status(Box::new(move || {
        let Some(ctx) = weak.upgrade() else {
            return String::new();
        };
        let mut per: std::collections::BTreeMap<u64, usize> = Default::default();
        for rec in ctx.state.all_sessions() {
            *per.entry(rec.node).or_default() += 1;
        }
        let list: Vec<String> = per.iter().map(|(n, c)| format!("node {n}: {c}")).collect();
        // The status page (admin_http.rs) reads the JSON after "summary=".
        format!(
            "sessions: {} summary={}",
            if list.is_empty() {
                "none".to_string()
            } else {
                list.join(", ")
            },
            crate::node::admin_http::node_summary(&ctx)
        )
    }));
    let c2s_addr = c2s.local_addr().ok();
    let direct_addr = direct.as_ref().and_then(|d| d.local_addr().ok());
    tracing::info!(domain = %ctx.config.domain, c2s = ?c2s_addr, direct_tls = ?direct_addr, workers, "starling is up");
    // Where `starling user ...` finds this node's admin API (before the
    // ready line: whoever waits for that finds the address too).
    if ctx.config.http.admin != "off" {
        if let Some(a) = http.as_ref().and_then(|h| h.local_addr().ok()) {
            let url = crate::node::admin_client::url_file(a);
            let file = ctx
                .config
                .data_dir
                .join(crate::node::admin_client::URL_FILE);
            if let Err(e) = std::fs::write(&file, url) {
                tracing::warn!(error = %e, "cannot write the admin API address");
            }
        }
    }
    // One machine-readable line on stdout: tests and scripts read the bound ports here.
    let cluster = ctx.replicator.cluster();
    let s2s_addr = s2s.as_ref().and_then(|l| l.local_addr().ok());
    let component_addr = component.as_ref().and_then(|l| l.local_addr().ok());
    let s2s_tls_addr = s2s_direct.as_ref().and_then(|l| l.local_addr().ok());
    let shown = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_else(|| "off".into());
    println!(
        "starling ready domain={} c2s={} c2s_tls={} cluster={} node={} http={} s2s={} component={} s2s_tls={} https={}",
        ctx.config.domain,
        c2s_addr.map(|a| a.to_string()).unwrap_or_default(),
        direct_addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "off".into()),
        cluster.local_addr(),
        cluster.id(),
        http.as_ref()
            .and_then(|h| h.local_addr().ok())
            .map(|a| a.to_string())
            .unwrap_or_else(|| "off".into()),
        shown(s2s_addr),
        shown(component_addr),
        shown(s2s_tls_addr),
        shown(https.as_ref().and_then(|(l, _)| l.local_addr().ok())),
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let system = System::new();
    let arbiters: Vec<Arbiter> = (0..workers).map(|_| Arbiter::new()).collect();
    let handles: Vec<_> = arbiters.iter().map(|a| a.handle()).collect();
    let _ = ctx.arbiters.set(handles.clone());
    let run_ctx = ctx.clone();
    system.block_on(async move {
        let ctx = run_ctx;
        let mut tasks = Vec::new();
        for (listener, direct_tls) in std::iter::once((c2s, false)).chain(direct.map(|d| (d, true)))
        {
            tasks.push(actix_rt::spawn(serve_listener(
                ctx.transport.clone(),
                listener,
                handles.clone(),
                move |ctx: Arc<TransportCtx>, tcp, peer| {
                    let guard = ctx.conn_guard();
                    handle_connection(ctx, tcp, peer, direct_tls, guard)
                },
            )));
        }
        if let Some(l) = s2s {
            tasks.push(actix_rt::spawn(serve_listener(
                ctx.transport.clone(),
                l,
                handles.clone(),
                crate::transport::s2s::inbound::handle,
            )));
        }
        if let Some(l) = s2s_direct {
            tasks.push(actix_rt::spawn(serve_listener(
                ctx.transport.clone(),
                l,
                handles.clone(),
                crate::transport::s2s::inbound::handle_direct_tls,
            )));
        }
        if let Some(l) = component {
            tasks.push(actix_rt::spawn(serve_listener(
                ctx.transport.clone(),
                l,
                handles.clone(),
                crate::transport::component::handle,
            )));
        }
        tasks.push(actix_rt::spawn(crate::node::admin::serve(
            ctx.clone(),
            admin,
        )));
        let http = match crate::node::http::start(ctx.clone(), http, https) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "HTTP server failed to start");
                None
            }
        };
        tokio::select! {
            _ = wait_for_signal() => {}
            _ = ctx.drain_requested.notified() => {}
        }
        // Not ready any more: load balancers stop sending new clients; hand
        // leadership and resumable sessions to other nodes.
        // New streams (and resumes) here are refused with <system-shutdown/>
        // from now on, so their clients go to a node that stays.
        let _ = shutdown_tx.send(true);
        crate::node::drain::drain(&ctx).await;
        tracing::info!(sessions = ctx.router.count(), "shutting down");
        for t in &tasks {
            t.abort();
        }
        for entry in ctx.router.all() {
            entry
                .handle
                .close(StreamError::new(StreamCondition::SystemShutdown));
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while ctx.open_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Messages this node still holds for others (relays not yet taken,
        // offline commits under way) are seen through before it stops.
        let deadline = tokio::time::Instant::now() + UNOWNED_GRACE;
        while ctx.replicator.unowned() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = ctx.replicator.unowned();
        if left > 0 {
            tracing::warn!(left, "stopping with messages not yet owned by any node");
        }
        if let Some(h) = http {
            // Graceful: an answer being written (to the drain request that
            // started this) is not cut off; at most `shutdown_timeout`.
            h.stop(true).await;
        }
    });
    for a in arbiters {
        a.stop();
        let _ = a.join();
    }
    // Sessions that stopped with the arbiters (handed-over ones forwarding
    // what was still on its way to them) may have just queued relays or
    // offline commits: the cluster stays up until those are owned.
    let deadline = std::time::Instant::now() + UNOWNED_GRACE;
    while ctx.replicator.unowned() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if ctx.replicator.unowned() > 0 {
        tracing::warn!(
            left = ctx.replicator.unowned(),
            "stopped with messages not yet owned by any node"
        );
    }
    crate::node::admin::remove(&ctx.config.data_dir);
    // The driver finishes the batch it is applying before the store is
    // flushed and the process exits.
    ctx.replicator.cluster().shutdown_and_wait();
    let _ = raft_thread.join();
    ctx.state.flush()?;
    tracing::info!("stopped");
    Ok(())
}

/// The cluster secret: configured, or generated once into the data dir.
/// The cluster secret if this machine knows it (configured, or in the data
/// dir), without making one: for commands that only talk to a cluster.
pub fn known_cluster_secret(config: &Config) -> Result<String, String> {
    if !config.cluster.secret.is_empty() {
        return Ok(config.cluster.secret.clone());
    }
    let path = config.data_dir.join("cluster.secret");
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(s.trim().to_string()),
        Err(_) => Err(format!(
            "no cluster secret: set STARLING_CLUSTER_SECRET to the cluster's secret, or run this \
             where a node's data dir is (its {} holds it)",
            path.display()
        )),
    }
}

/// This node's mesh certificate, when `[cluster] tls_*` are set.
pub fn mesh_tls(config: &Config) -> Result<Option<starling_cluster::MeshTls>, String> {
    let c = &config.cluster;
    if c.tls_cert.is_empty() {
        return Ok(None);
    }
    starling_cluster::MeshTls::load(
        std::path::Path::new(&c.tls_ca),
        std::path::Path::new(&c.tls_cert),
        std::path::Path::new(&c.tls_key),
    )
    .map(Some)
    .map_err(|e| format!("[cluster] tls: {e}"))
}

/// What a command that talks to the cluster presents: the secret this
/// machine knows and the configured certificate.
pub fn known_mesh_auth(config: &Config) -> Result<starling_cluster::MeshAuth, String> {
    Ok(starling_cluster::MeshAuth::new(
        known_cluster_secret(config)?,
        mesh_tls(config)?,
    ))
}

/// Where uploaded files live (`[upload] dir`, else `data_dir/upload`).
pub fn upload_dir(config: &Config) -> std::path::PathBuf {
    if config.upload.dir.is_empty() {
        config.data_dir.join("upload")
    } else {
        std::path::PathBuf::from(&config.upload.dir)
    }
}

/// The URL base of upload URLs: `[http] public_url`, else this node's
/// HTTPS or HTTP address (the domain in place of an unspecified address).
fn upload_base(config: &Config, http: Option<SocketAddr>, https: Option<SocketAddr>) -> String {
    if !config.http.public_url.is_empty() {
        return config.http.public_url.trim_end_matches('/').to_string();
    }
    let (scheme, addr) = match (https, http) {
        (Some(a), _) => ("https", a),
        (None, Some(a)) => ("http", a),
        (None, None) => return format!("https://{}", config.domain),
    };
    let host = if addr.ip().is_unspecified() {
        config.domain.clone()
    } else {
        match addr.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        }
    };
    format!("{scheme}://{host}:{}", addr.port())
}

pub fn cluster_secret(config: &Config) -> Result<String, StartError> {
    if !config.cluster.secret.is_empty() {
        return Ok(config.cluster.secret.clone());
    }
    let path = config.data_dir.join("cluster.secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        return Ok(s.trim().to_string());
    }
    use rand::distributions::Alphanumeric;
    use rand::Rng;
    let secret: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    crate::base::tls::write_private(&path, secret.as_bytes())
        .map_err(|e| StartError::Cluster(format!("cannot write {}: {e}", path.display())))?;
    Ok(secret)
}

/// Start this node's Raft member on a runtime of its own and wait
/// until it has a leader (a lone node elects itself at once).
fn start_cluster(
    config: &Config,
    state: Arc<State>,
    hook: Arc<std::sync::OnceLock<crate::store::replication::EventHook>>,
) -> Result<
    (
        crate::store::replication::Replicator,
        std::thread::JoinHandle<()>,
    ),
    StartError,
> {
    let mut cfg = starling_cluster::ClusterConfig::new(
        config.cluster.node_id,
        config.cluster_listen(),
        cluster_secret(config)?,
    );
    cfg.advertise = config.cluster.advertise.clone();
    cfg.join = Some(config.cluster.join.clone()).filter(|j| !j.is_empty());
    cfg.tls = mesh_tls(config).map_err(StartError::Cluster)?;
    if cfg.tls.is_none() && !config.cluster_listen().ip().is_loopback() {
        tracing::warn!(
            listen = %config.cluster_listen(),
            "the cluster mesh is plain HTTP/2 off loopback: set [cluster] tls_ca, tls_cert and \
             tls_key (`starling cluster certs`) for mutual TLS between nodes"
        );
    }
    cfg.snapshot_dir = Some(config.data_dir.join("snapshots"));
    cfg.blob_dir = Some(upload_dir(config));
    let db = state.db().clone();
    let node_id = config.cluster.node_id;
    let domain = config.domain.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            // The mesh (relays in and out, raft messages), the archive
            // writer and the relay handlers; the Raft driver, which blocks
            // while it applies and flushes, has a thread of its own.
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(StartError::Cluster(e.to_string())));
                    return;
                }
            };
            let sm = Arc::new(crate::store::replication::ReplicatedState {
                state,
                node: node_id,
                domain,
                on_event: hook,
                batched_since: Default::default(),
            });
            let started = rt.block_on(starling_cluster::Cluster::start(db, sm, cfg));
            match started {
                Ok(cluster) => {
                    let waited =
                        rt.block_on(cluster.wait_for(Duration::from_secs(30), |s| s.leader != 0));
                    if waited.is_err() {
                        tracing::warn!("no cluster leader yet; writes wait for a quorum");
                    }
                    let _ = tx.send(Ok((cluster.clone(), rt.handle().clone())));
                    // Keep the runtime alive until the node is shut down.
                    let mut stopped = cluster.stopped();
                    rt.block_on(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    });
                }
                Err(e) => {
                    let _ = tx.send(Err(StartError::Cluster(e.to_string())));
                }
            }
        })
        .map_err(|e| StartError::Cluster(e.to_string()))?;
    let (cluster, handle) = rx
        .recv()
        .map_err(|_| StartError::Cluster("raft thread died".into()))??;
    Ok((
        crate::store::replication::Replicator::new(cluster, handle),
        thread,
    ))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await
        }
    }
}

/// Accept on `listener` and run `handle` for each connection on the worker
/// arbiters in turn (client, server-to-server and component streams). An
/// accept error (out of file descriptors and the like) backs off briefly.
async fn serve_listener<F, Fut>(
    ctx: Arc<TransportCtx>,
    listener: std::net::TcpListener,
    arbiters: Vec<actix_rt::ArbiterHandle>,
    handle: F,
) where
    F: Fn(Arc<TransportCtx>, tokio::net::TcpStream, SocketAddr) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "listener failed");
            return;
        }
    };
    let mut next = 0usize;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(std_tcp) = tcp.into_std() else {
            continue;
        };
        let ctx = ctx.clone();
        let handle = handle.clone();
        arbiters[next % arbiters.len()].spawn(async move {
            // Register the socket with this arbiter's own reactor.
            if let Ok(tcp) = tokio::net::TcpStream::from_std(std_tcp) {
                handle(ctx, tcp, peer).await;
            }
        });
        next = next.wrapping_add(1);
    }
}
