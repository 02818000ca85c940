//! Accepting client connections and turning negotiated streams into sessions.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use actix::Actor;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::io::{self, Outbound, RateLimit};
use super::session::{C2sSession, CloseStream};
use crate::clock;
use crate::server::{ConnGuard, ServerCtx};
use crate::stream::bind::bind_result;
use crate::stream::transport::MaybeTls;
use crate::stream::{self, StreamCondition, StreamError};
use crate::xml::ns;

/// Handle one accepted socket on the current arbiter, from the first byte
/// to the end of the session.
pub async fn handle_connection(
    ctx: Arc<ServerCtx>,
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
        match stream::negotiate(&ctx, conn, peer).await {
            Some(stream::Negotiated::Bound(bound)) => {
                tracing::Span::current().record("jid", tracing::field::display(&bound.jid));
                start_session(ctx, bound, sid, guard);
            }
            Some(stream::Negotiated::Resume(r)) => {
                tracing::Span::current().record("jid", tracing::field::display(&r.jid));
                resume_session(ctx, r, guard).await;
            }
            None => {}
        }
    }
    .instrument(span)
    .await
}

fn start_session(ctx: Arc<ServerCtx>, bound: stream::Bound, sid: u64, guard: ConnGuard) {
    let stream::Bound {
        stream,
        jid,
        bind_iq_id,
    } = bound;
    // Binding commits through Raft (the cluster-wide session table): a node
    // without a majority refuses the login instead of binding inconsistently.
    let record = crate::state::SessionRecord {
        jid: jid.to_string(),
        node: ctx.node_id(),
        sid,
        available: false,
        priority: 0,
    };
    if let Err(e) = ctx.commit(&crate::state::Command::SessionBind { record }) {
        tracing::warn!(error = %e, "bind refused: cannot commit to the cluster");
        let mut stream = stream;
        let iq = crate::xml::Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", bind_iq_id);
        let err = crate::stanza_error::StanzaError::with_text(
            crate::stanza_error::StanzaCondition::InternalServerError,
            e.to_string(),
        );
        tokio::spawn(async move {
            let _ = stream.send_element(&err.reply_to(&iq)).await;
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
    // The bind result is the first thing the session writes.
    let first = bind_result(&bind_iq_id, &jid).to_xml(ns::CLIENT);
    let (conn, in_rx) = connection_io(&ctx, stream, first, guard);
    // The user's presence actor, started with the first session.
    let presence = ctx.presence.get_or_start(&ctx, &jid.to_bare());
    let session = C2sSession::new(
        sid,
        jid.clone(),
        ctx.clone(),
        conn,
        in_rx,
        tracing::Span::current(),
        presence,
    );
    let addr = session.start();
    if let Some(old) = ctx.router.bind(&jid, sid, addr) {
        // RFC 6120 §7.7.2.2: the new session wins; the old one gets <conflict/>.
        old.addr.do_send(CloseStream(StreamError::with_text(
            StreamCondition::Conflict,
            "replaced by a new connection",
        )));
    }
    tracing::info!("session bound");
}

/// Start the reader and writer tasks for a negotiated stream; `first` is
/// written before anything else.
fn connection_io(
    ctx: &ServerCtx,
    stream: stream::Stream,
    first: String,
    guard: ConnGuard,
) -> (super::session::Conn, mpsc::Receiver<io::Inbound>) {
    let (out_tx, out_rx) = mpsc::channel::<Outbound>(ctx.config.limits.outbound_queue);
    let (abort_tx, abort_rx) = oneshot::channel();
    if !first.is_empty() {
        let _ = out_tx.try_send(Outbound::Data(first));
    }
    tokio::spawn(io::writer(stream.writer, out_rx, abort_rx, guard).in_current_span());
    let (in_tx, in_rx) = mpsc::channel(16);
    let activity = Arc::new(AtomicU64::new(clock::now_ms()));
    let limits = &ctx.config.limits;
    let rate = RateLimit::new(limits.rate_bytes_per_sec, limits.rate_burst_bytes);
    let reader =
        tokio::spawn(io::reader(stream.parser, in_tx, activity.clone(), rate).in_current_span());
    let conn = super::session::Conn {
        out: out_tx,
        abort: Some(abort_tx),
        reader: reader.abort_handle(),
        activity,
    };
    (conn, in_rx)
}

/// XEP-0198 §5: hand this connection to the detached session; it answers
/// `<resumed/>` and resends what the client has not acknowledged.
async fn resume_session(ctx: Arc<ServerCtx>, r: stream::Resuming, guard: ConnGuard) {
    let stream::Resuming {
        stream, session, h, ..
    } = r;
    let (conn, in_rx) = connection_io(&ctx, stream, String::new(), guard);
    let out = conn.out.clone();
    let attached = session
        .send(super::session::Attach {
            conn,
            inbound: in_rx,
            h,
        })
        .await;
    if !matches!(attached, Ok(Ok(()))) {
        // Gone in the meantime (timed out): the client binds anew.
        let f = crate::xml::Element::new("failed", super::stream_management::NS).with_child(
            crate::xml::Element::new("item-not-found", ns::STANZA_ERRORS),
        );
        let _ = out.try_send(Outbound::Data(f.to_xml("")));
        let _ = out.try_send(Outbound::Close(None));
    }
}
