//! Accepting client connections and turning negotiated streams into sessions.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use actix::Actor;
use futures_channel::mpsc;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tracing::Instrument;

use super::io::{self, Outbound, RateLimit};
use super::session::{C2sSession, CloseStream};
use crate::base::clock;
use crate::base::xml::ns;
use crate::transport::context::{ConnGuard, TransportCtx};
use crate::transport::stream::bind::bind_result;
use crate::transport::stream::transport::MaybeTls;
use crate::transport::stream::{self, StreamCondition, StreamError};

/// Handle one accepted socket on the current arbiter, from the first byte
/// to the end of the session.
pub async fn handle_connection(
    ctx: Arc<TransportCtx>,
    mut tcp: TcpStream,
    mut peer: SocketAddr,
    direct_tls: bool,
    guard: ConnGuard,
) {
    if ctx.config.c2s.proxy_protocol {
        let limit = std::time::Duration::from_secs(ctx.config.limits.auth_timeout_secs);
        match tokio::time::timeout(limit, super::proxy_protocol::read_header(&mut tcp)).await {
            Ok(Ok(Some(client))) => peer = client,
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "dropping a connection without a valid PROXY header");
                return;
            }
            Err(_) => return,
        }
    }
    let sid = ctx.next_session_id();
    let span = tracing::info_span!("c2s", sid, %peer, jid = tracing::field::Empty);
    async move {
        let _ = tcp.set_nodelay(true);
        let conn = if direct_tls {
            let deadline = std::time::Duration::from_secs(ctx.config.limits.auth_timeout_secs);
            match tokio::time::timeout(deadline, ctx.tls.accept(tcp)).await {
                Ok(Ok(tls)) => MaybeTls::Tls(Box::new(tls)),
                _ => {
                    tracing::debug!("direct TLS handshake failed");
                    return;
                }
            }
        } else {
            MaybeTls::Plain(tcp)
        };
        serve(ctx, conn, peer, sid, guard).await
    }
    .instrument(span)
    .await
}

/// Handle a stream bridged from an HTTP transport (WebSocket, BOSH), from
/// its first byte to the end of the session, on the current arbiter.
pub async fn handle_bridged(
    ctx: Arc<TransportCtx>,
    io: tokio::io::DuplexStream,
    secure: bool,
    peer: SocketAddr,
    transport: &'static str,
) {
    let guard = ctx.conn_guard();
    let sid = ctx.next_session_id();
    let span = tracing::info_span!("c2s", sid, %peer, transport, jid = tracing::field::Empty);
    let conn = MaybeTls::Bridged { io, secure };
    serve(ctx, conn, peer, sid, guard).instrument(span).await
}

/// Negotiate, then run the bound or resumed session.
async fn serve(
    ctx: Arc<TransportCtx>,
    conn: MaybeTls,
    peer: SocketAddr,
    sid: u64,
    guard: ConnGuard,
) {
    match stream::negotiate(&ctx, conn, peer).await {
        Some(stream::Negotiated::Bound(bound)) => {
            tracing::Span::current().record("jid", tracing::field::display(&bound.jid));
            start_session(ctx, bound, sid, guard).await;
        }
        Some(stream::Negotiated::Resume(r)) => {
            tracing::Span::current().record("jid", tracing::field::display(&r.user));
            resume_session(ctx, r, guard).await;
        }
        None => {}
    }
}

async fn start_session(ctx: Arc<TransportCtx>, bound: stream::Bound, sid: u64, guard: ConnGuard) {
    let stream::Bound {
        stream,
        jid,
        bind_iq_id,
        sasl2,
    } = bound;
    // Binding commits through Raft (the cluster-wide session table): a node
    // without a majority refuses the login instead of binding inconsistently.
    let bound_at = crate::base::time::unix_now().as_millis() as u64;
    let record = crate::model::state::SessionRecord {
        jid: jid.to_string(),
        node: ctx.node_id(),
        sid,
        available: false,
        priority: 0,
        sm_id: None,
        bound_at,
        caps: None,
    };
    // Awaited, not blocking: other connections on this worker go on meanwhile.
    let committed = ctx
        .replicator
        .commit_async(&crate::model::state::Command::SessionBind {
            record,
            replaces: None,
        })
        .await;
    if let Err(e) = committed {
        tracing::warn!(error = %e, "bind refused: cannot commit to the cluster");
        // If the bind still lands later, this takes it out again.
        unbind_given_up(&ctx, &jid, sid);
        let mut stream = stream;
        let iq = crate::base::xml::Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", bind_iq_id);
        let err = crate::base::stanza_error::StanzaError::with_text(
            crate::base::stanza_error::StanzaCondition::InternalServerError,
            e.to_string(),
        );
        let bind2 = sasl2.is_some();
        tokio::spawn(async move {
            if !bind2 {
                let _ = stream.send_element(&err.reply_to(&iq)).await;
            }
            stream
                .fail(
                    &ctx,
                    StreamError::with_text(
                        StreamCondition::InternalServerError,
                        "the cluster has no quorum",
                    ),
                )
                .await;
            drop(guard);
        });
        return;
    }
    // The bind result is the first thing the session writes; for Bind 2,
    // the SASL2 success with what was enabled inline (XEP-0386 §3.3).
    let mut inline = crate::transport::stream::sasl2::BindInline::default();
    let mut sm_id = None;
    let first = match sasl2 {
        None => bind_result(&bind_iq_id, &jid).to_xml(ns::CLIENT),
        Some(b) => {
            inline = b.inline;
            let mut bound =
                crate::base::xml::Element::new("bound", crate::transport::stream::sasl2::BIND2);
            if let Some(resume) = inline.sm {
                let mut enabled =
                    crate::base::xml::Element::new("enabled", super::stream_management::NS);
                if resume {
                    let id = crate::transport::stream::header::new_stream_id();
                    enabled.set_attr("id", id.clone());
                    enabled.set_attr("resume", "true");
                    enabled.set_attr("max", ctx.config.limits.resume_timeout_secs.to_string());
                    sm_id = Some(id);
                }
                bound.push_child(enabled);
            }
            let mut results = b.before;
            results.push(bound);
            // XEP-0388 §2.6.1: features follow a success; after Bind 2
            // there is nothing left to negotiate.
            b.auth.success(jid.as_str(), results).to_xml("") + "<stream:features/>"
        }
    };
    let (conn, in_rx) = connection_io(&ctx, stream, first, guard);
    // The user's presence actor, started with the first session.
    let presence = ctx.presence.get_or_start(&ctx.im, &jid.to_bare());
    let mut session = C2sSession::new(
        sid,
        jid.clone(),
        ctx.clone(),
        conn,
        in_rx,
        tracing::Span::current(),
        presence,
    );
    if inline.sm.is_some() {
        session.enable_sm_inline(sm_id);
    }
    session.set_inactive(inline.inactive);
    let addr = session.start();
    let replaced = ctx.router.bind(&jid, sid, std::sync::Arc::new(addr));
    ctx.router.update(&jid, sid, |e| {
        e.bound_at = bound_at;
        // XEP-0280 enabled at bind time.
        e.carbons |= inline.carbons;
    });
    if let Some(old) = replaced {
        // RFC 6120 §7.7.2.2: the new session wins; the old one gets <conflict/>.
        old.handle.close(StreamError::with_text(
            StreamCondition::Conflict,
            "replaced by a new connection",
        ));
    }
    tracing::info!("session bound");
}

/// Start the reader and writer tasks for a negotiated stream; `first` is
/// written before anything else.
fn connection_io(
    ctx: &TransportCtx,
    stream: stream::Stream,
    first: String,
    guard: ConnGuard,
) -> (super::session::Conn, mpsc::Receiver<io::Inbound>) {
    let (mut out_tx, out_rx) = mpsc::channel::<Outbound>(ctx.config.limits.outbound_queue);
    let (abort_tx, abort_rx) = oneshot::channel();
    if !first.is_empty() {
        let _ = out_tx.try_send(Outbound::Data(first));
    }
    let written = Arc::new(io::Written::default());
    tokio::spawn(
        io::writer(stream.writer, out_rx, abort_rx, written.clone(), guard).in_current_span(),
    );
    let (in_tx, in_rx) = mpsc::channel(16);
    let activity = Arc::new(AtomicU64::new(clock::now_ms()));
    let limits = &ctx.config.limits;
    let rate = RateLimit::new(limits.rate_bytes_per_sec, limits.rate_burst_bytes);
    let stanzas = (limits.stanzas_per_sec > 0)
        .then(|| RateLimit::new(limits.stanzas_per_sec, limits.stanzas_per_sec * 2));
    let reader = tokio::spawn(
        io::reader(stream.parser, in_tx, activity.clone(), rate, stanzas).in_current_span(),
    );
    let conn = super::session::Conn {
        out: out_tx,
        abort: Some(abort_tx),
        reader: reader.abort_handle(),
        activity,
        written,
        marks: 0,
    };
    (conn, in_rx)
}

/// XEP-0198 §5: hand this connection to the detached session (fetching
/// it from the node that holds it first, if need be); it answers
/// `<resumed/>` and resends what the client has not acknowledged.
async fn resume_session(ctx: Arc<TransportCtx>, r: stream::Resuming, guard: ConnGuard) {
    let stream::Resuming {
        stream,
        session,
        h,
        sasl2,
        user,
        ..
    } = r;
    // For a resume inside SASL2, what to say if it fails after all.
    let sasl2_failed = sasl2.as_ref().map(|auth| {
        let failed =
            crate::base::xml::Element::new("failed", super::stream_management::NS).with_child(
                crate::base::xml::Element::new("item-not-found", ns::STANZA_ERRORS),
            );
        auth.success(&ctx.config.account_jid(&user), vec![failed])
            .to_xml("")
    });
    let (conn, in_rx) = connection_io(&ctx, stream, String::new(), guard);
    let mut out = conn.out.clone();
    let attached = matches!(
        session
            .send(super::session::Attach {
                conn,
                inbound: in_rx,
                h,
                sasl2,
            })
            .await,
        Ok(Ok(()))
    );
    if !attached {
        // Gone in the meantime (timed out): the client binds anew.
        // Inside SASL2 the client waits for a success: it gets one with the
        // failure inline, then the stream ends and it logs in afresh.
        let f = crate::base::xml::Element::new("failed", super::stream_management::NS).with_child(
            crate::base::xml::Element::new("item-not-found", ns::STANZA_ERRORS),
        );
        let answer = sasl2_failed.unwrap_or_else(|| f.to_xml(""));
        let _ = out.try_send(Outbound::Data(answer));
        let _ = out.try_send(Outbound::Close(None));
    }
}

/// Find session `previd` of `user` for a resume (XEP-0198 §5): here, or
/// fetched from whichever node holds it. A session the replicated table
/// knows may be moving between nodes (a drain): look again, bounded.
pub async fn locate_session(
    ctx: &Arc<TransportCtx>,
    previd: &str,
    user: &str,
) -> Option<actix::Addr<C2sSession>> {
    if previd.is_empty() {
        return None;
    }
    let started = tokio::time::Instant::now();
    let bare = ctx.config.account_jid(user);
    loop {
        if let Some((addr, _)) = ctx.sm_sessions.get(previd, &bare) {
            return Some(addr);
        }
        if ctx.replicator.cluster().status().peers.len() < 2 {
            return None; // a single node: nowhere else to look
        }
        if let Some(addr) = fetch_session(ctx, previd, user).await {
            return Some(addr);
        }
        let known = ctx
            .state
            .sessions_of(&bare)
            .iter()
            .any(|r| r.sm_id.as_deref() == Some(previd));
        // A node that restarted a moment ago may not know it yet either.
        let young = started.elapsed() < std::time::Duration::from_secs(1);
        if !(known || young) || started.elapsed() >= RESUME_SEARCH {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// How long a resume keeps looking for a session that may be moving.
const RESUME_SEARCH: std::time::Duration = std::time::Duration::from_secs(4);
/// How long one round of asking the other nodes waits for their answers.
const FETCH_WAIT: std::time::Duration = std::time::Duration::from_millis(1500);

/// Ask every other node to hand over session `previd` of `user` (at most
/// one holds it) and recreate it here, bound through Raft to this node,
/// detached until the connection attaches.
async fn fetch_session(
    ctx: &Arc<TransportCtx>,
    previd: &str,
    user: &str,
) -> Option<actix::Addr<C2sSession>> {
    let others = ctx.other_nodes();
    if others.is_empty() {
        return None;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(others.len().max(1));
    let mut tokens = Vec::new();
    for node in &others {
        let token = ctx.next_session_id();
        ctx.handoffs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token, tx.clone());
        tokens.push(token);
        let req = crate::routing::route::Relay::HandOffRequest {
            previd: previd.to_string(),
            user: user.to_string(),
            token,
            reply_to: ctx.node_id(),
        };
        crate::routing::route::relay(ctx, *node, &req);
    }
    drop(tx);
    let wait = tokio::time::Instant::now() + FETCH_WAIT;
    let mut state = None;
    for _ in 0..others.len() {
        match tokio::time::timeout_at(wait, rx.recv()).await {
            Ok(Some(Some(s))) => {
                state = Some(s);
                break;
            }
            Ok(Some(None)) => continue,
            _ => break,
        }
    }
    // Late answers find no waiter; one carrying the session installs it.
    {
        let mut h = ctx.handoffs.lock().unwrap_or_else(|e| e.into_inner());
        for t in tokens {
            h.remove(&t);
        }
    }
    let (state, from) = state?;
    install_session(ctx, state, from).await
}

/// Recreate a session handed over from `from_node`: bound here through
/// Raft (the routing table follows), detached until a connection resumes it.
pub async fn install_session(
    ctx: &Arc<TransportCtx>,
    state: crate::routing::route::HandOff,
    from_node: u64,
) -> Option<actix::Addr<C2sSession>> {
    let Ok(jid) = jid::FullJid::new(&state.jid) else {
        ctx.arriving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&state.jid);
        return None;
    };
    let sid = ctx.next_session_id();
    let last = state
        .presence
        .as_deref()
        .and_then(|x| crate::base::xml::parse_fragment(x).ok());
    let mut sm = super::stream_management::SmState::new(Some(state.sm_id.clone()));
    sm.set_inbound(state.inbound);
    sm.outbound = state.outbound;
    sm.acked = state.acked;
    sm.set_unacked(
        state
            .unacked
            .iter()
            .filter_map(|x| crate::base::xml::parse_fragment(x).ok())
            .collect(),
    );
    // Bound here first, so stanzas that follow the session queue in it.
    let presence = ctx.presence.get_or_start(&ctx.im, &jid.to_bare());
    // A session pushed here (a drain) has no connection's span yet.
    let span = match tracing::Span::current() {
        s if s.is_none() => tracing::info_span!("c2s", sid, jid = %jid, from_node),
        s => s,
    };
    let session = C2sSession::resumed(
        sid,
        jid.clone(),
        ctx.clone(),
        span,
        presence.clone(),
        sm,
        last.clone(),
    );
    let addr = session.start();
    let bound_at = crate::base::time::unix_now().as_millis() as u64;
    ctx.router
        .bind(&jid, sid, std::sync::Arc::new(addr.clone()));
    ctx.router.update(&jid, sid, |e| {
        e.bound_at = bound_at;
        e.interested = state.interested;
        e.blocklist_interested = state.blocklist_interested;
        e.carbons = state.carbons;
    });
    crate::routing::route::arrived(ctx, &jid, ctx.router.get_full(&jid));
    ctx.moved
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&state.jid);
    let record = crate::model::state::SessionRecord {
        jid: jid.to_string(),
        node: ctx.node_id(),
        sid,
        available: last.is_some(),
        priority: state.priority,
        sm_id: Some(state.sm_id.clone()),
        bound_at,
        caps: last.as_ref().and_then(crate::im::modules::caps::ver_of),
    };
    let arrived_with = state.outbound;
    match ctx
        .replicator
        .commit_async(&crate::model::state::Command::SessionBind {
            record,
            replaces: state.holder,
        })
        .await
    {
        Ok(_) => {}
        Err(crate::model::state::StateError::Superseded(_)) => {
            // Another copy of this session was bound first (a drain gave
            // up on this node and pushed it elsewhere): that one is the
            // session; this copy leaves quietly.
            // Whether the address went to another copy of this session
            // (which has what this one arrived with) or to a new login
            // (which has not: it goes back through delivery).
            let same_session = ctx
                .state
                .session(jid.as_str())
                .is_some_and(|r| r.sm_id.as_deref() == Some(state.sm_id.as_str()));
            tracing::info!(
                from_node,
                same_session,
                "the address was bound elsewhere first; this copy leaves"
            );
            addr.do_send(super::session::Abandon {
                arrived_with,
                same_session,
            });
            return None;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot take over a session: no commit");
            unbind_given_up(ctx, &jid, sid);
            addr.do_send(CloseStream(StreamError::new(
                StreamCondition::InternalServerError,
            )));
            return None;
        }
    }
    presence.do_send(crate::im::presence::Restore {
        from: jid.clone(),
        session_id: sid,
        last,
        priority: state.priority,
    });
    ctx.sm_sessions.insert(&state.sm_id, addr.clone(), jid);
    tracing::info!(from_node, "session handed over from another node");
    Some(addr)
}

/// A bind whose commit timed out may still land once a leader is back:
/// propose its removal too, so it cannot linger as a session nobody holds.
fn unbind_given_up(ctx: &TransportCtx, jid: &jid::FullJid, sid: u64) {
    ctx.replicator
        .submit(&crate::model::state::Command::SessionUnbind {
            jid: jid.to_string(),
            node: ctx.node_id(),
            sid,
        });
}
