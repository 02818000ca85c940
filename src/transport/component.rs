//! External components (XEP-0114, "jabber:component:accept"): a gateway
//! or service connects, proves the shared secret for its domain with the
//! `<handshake/>` (SHA-1 of stream id and secret), and then exchanges
//! stanzas for that domain. Its domain is bound cluster-wide through Raft,
//! so a stanza for it from any node reaches the node it is connected to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sha1::{Digest, Sha1};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::xml::{ns, Element, StreamEvent};
use crate::model::state::Command;
use crate::transport::context::TransportCtx;
use crate::transport::s2s::stream::{fail, Conn};
use crate::transport::stream::{StreamCondition, StreamError};

/// Connected components on this node: domain -> (sid, writer).
pub type Registry =
    std::sync::Mutex<std::collections::HashMap<String, (u64, mpsc::Sender<String>)>>;

/// Whether `domain` is one of our configured components.
pub fn is_component(ctx: &TransportCtx, domain: &str) -> bool {
    ctx.config
        .component
        .secrets
        .keys()
        .any(|d| d.eq_ignore_ascii_case(domain))
}

/// Route a stanza to the component serving its `to` domain: on this node,
/// or relayed to the node it is connected to. Nobody connected: the sender
/// gets `<service-unavailable/>` naming the component ([`bounce_away`]).
pub fn route(ctx: &TransportCtx, stanza: Element, domain: &str) {
    match deliver_here(ctx, &stanza, domain) {
        Here::Delivered => return,
        Here::Full => return bounce_busy(ctx, &stanza, domain),
        Here::No => {}
    }
    match ctx.state.component(domain) {
        Some((node, _)) if node != ctx.node_id() => crate::routing::route::relay(
            ctx,
            node,
            &crate::routing::route::Relay::Component {
                domain: domain.to_string(),
                xml: stanza.to_xml(ns::CLIENT),
            },
        ),
        _ => bounce_away(ctx, &stanza, domain),
    }
}

/// A stanza for a component connected nowhere (a gateway restarting, or
/// moving to another node after a drain): its sender, here or on another
/// server, gets `<service-unavailable/>` with a text that says so (RFC 6120
/// §8.3.3.19), rather than a bare condition a user cannot read.
pub fn bounce_away(ctx: &TransportCtx, stanza: &Element, domain: &str) {
    bounce(
        ctx,
        stanza,
        StanzaCondition::ServiceUnavailable,
        format!("{domain} is not connected at the moment; try again shortly"),
        "component not connected",
    );
}

/// What became of a stanza for a component on this node.
pub enum Here {
    Delivered,
    /// Not connected here.
    No,
    /// Connected, but its queue is full (it reads too slowly).
    Full,
}

/// Hand `stanza` to the component connected here, if it is.
pub fn deliver_here(ctx: &TransportCtx, stanza: &Element, domain: &str) -> Here {
    let writer = ctx
        .components
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(domain)
        .map(|(_, w)| w.clone());
    let Some(w) = writer else { return Here::No };
    let mut el = stanza.clone();
    crate::transport::s2s::retag(&mut el, ns::CLIENT, ns::COMPONENT);
    match w.try_send(el.to_xml(ns::COMPONENT)) {
        Ok(()) => Here::Delivered,
        Err(mpsc::error::TrySendError::Full(_)) => Here::Full,
        Err(mpsc::error::TrySendError::Closed(_)) => Here::No,
    }
}

/// A stanza for a component that is connected but not keeping up: its
/// sender gets `<resource-constraint/>` (try again later) with a text.
pub fn bounce_busy(ctx: &TransportCtx, stanza: &Element, domain: &str) {
    bounce(
        ctx,
        stanza,
        StanzaCondition::ResourceConstraint,
        format!("{domain} is busy; try again shortly"),
        "component queue full",
    );
}

/// Answer a stanza for a component with `condition` and `text`, to its
/// sender wherever it is (never an error for an error); logged with
/// `reason`.
fn bounce(
    ctx: &TransportCtx,
    stanza: &Element,
    condition: StanzaCondition,
    text: String,
    reason: &str,
) {
    tracing::info!(
        kind = %stanza.name,
        from = stanza.attr("from").unwrap_or_default(),
        to = stanza.attr("to").unwrap_or_default(),
        reason,
        "stanza bounced"
    );
    if stanza.attr("type") == Some("error") {
        return;
    }
    let err = StanzaError::with_text(condition, text).reply_to(stanza);
    crate::im::delivery::route_reply(ctx, err);
}

/// One component connection, until it ends.
pub async fn handle(ctx: Arc<TransportCtx>, tcp: TcpStream, peer: SocketAddr) {
    let span = tracing::info_span!("component", %peer, domain = tracing::field::Empty);
    async move {
        let _live = crate::base::metrics::Live::new("component");
        let conn = Conn::new(Box::new(tcp), &ctx, false);
        if let Err(e) = serve(&ctx, conn).await {
            tracing::info!(error = %e, "component stream ended");
        }
    }
    .instrument(span)
    .await
}

async fn serve(
    ctx: &Arc<TransportCtx>,
    mut conn: Conn,
) -> Result<(), crate::transport::s2s::S2sError> {
    let deadline = Duration::from_secs(ctx.config.limits.auth_timeout_secs);
    let header = tokio::time::timeout(deadline, conn.header())
        .await
        .map_err(|_| crate::transport::s2s::S2sError::Timeout)??;
    let id = crate::transport::stream::header::new_stream_id();
    let domain = header.attr("to").unwrap_or_default().to_ascii_lowercase();
    conn.send(&format!(
        "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' from='{}' id='{id}'>",
        ns::COMPONENT,
        ns::STREAM,
        crate::base::xml::element::escape(&domain)
    ))
    .await?;
    if header.default_ns.as_deref() != Some(ns::COMPONENT) {
        return fail(
            &mut conn,
            StreamCondition::InvalidNamespace,
            "expected jabber:component:accept",
        )
        .await;
    }
    let secret = ctx
        .config
        .component
        .secrets
        .iter()
        .find(|(d, _)| d.eq_ignore_ascii_case(&domain))
        .map(|(_, s)| s.clone());
    let Some(secret) = secret else {
        return fail(&mut conn, StreamCondition::HostUnknown, "no such component").await;
    };
    // A draining node takes no new components: the gateway reconnects to
    // a node that stays (through the load balancer in front of them).
    if ctx.draining.load(std::sync::atomic::Ordering::Acquire) {
        return fail(
            &mut conn,
            StreamCondition::SystemShutdown,
            "node draining; connect to another node",
        )
        .await;
    }
    let hs = tokio::time::timeout(deadline, conn.element())
        .await
        .map_err(|_| crate::transport::s2s::S2sError::Timeout)??;
    // XEP-0114 §3: hex(SHA-1(stream id + secret)), compared in constant time.
    let want: String = Sha1::digest(format!("{id}{secret}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let given = hs.text().trim().to_ascii_lowercase();
    let ok = hs.name == "handshake"
        && subtle::ConstantTimeEq::ct_eq(want.as_bytes(), given.as_bytes()).into();
    if !ok {
        tracing::warn!(%domain, "component handshake refused");
        return fail(&mut conn, StreamCondition::NotAuthorized, "bad handshake").await;
    }
    let sid = ctx.next_session_id();
    // Bound cluster-wide first: a minority node cannot take components.
    if let Err(e) = ctx
        .replicator
        .commit_async(&Command::ComponentBind {
            domain: domain.clone(),
            node: ctx.node_id(),
            sid,
        })
        .await
    {
        tracing::warn!(error = %e, "cannot bind a component: no commit");
        return fail(
            &mut conn,
            StreamCondition::InternalServerError,
            "cluster unavailable",
        )
        .await;
    }
    tracing::Span::current().record("domain", tracing::field::display(&domain));
    conn.send("<handshake/>").await?;
    tracing::info!("component connected");
    let (tx, mut rx) = mpsc::channel::<String>(ctx.config.limits.outbound_queue);
    let old = ctx
        .components
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(domain.clone(), (sid, tx));
    drop(old); // a previous connection's writer ends with it
               // A drain that began while this one was binding has already closed
               // the others: this one goes too, and is unbound again.
    if ctx.draining.load(std::sync::atomic::Ordering::Acquire) {
        close_all(ctx, Duration::from_secs(3)).await;
    }
    let (mut reader, mut writer) = conn.split();
    let write = async move {
        while let Some(x) = rx.recv().await {
            if writer.write_all(x.as_bytes()).await.is_err() || writer.flush().await.is_err() {
                break;
            }
        }
        let _ = writer.write_all(b"</stream:stream>").await;
    };
    let c = ctx.clone();
    let d = domain.clone();
    let read = async move {
        loop {
            match reader.next().await {
                Ok(StreamEvent::Stanza(el)) => {
                    if let Err(reason) = from_component(&c, &d, el) {
                        tracing::info!(reason, "component stanza refused");
                        if let Some((_, w)) = c
                            .components
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(&d)
                        {
                            let _ = w.try_send(format!(
                                "{}</stream:stream>",
                                StreamError::with_text(StreamCondition::InvalidFrom, reason)
                                    .to_xml()
                            ));
                        }
                        return;
                    }
                }
                Ok(StreamEvent::Keepalive) => {}
                _ => return,
            }
        }
    };
    tokio::select! {
        _ = read => {}
        _ = write => {}
    }
    // Gone: unbind here and cluster-wide, unless a newer connection took over.
    let mut map = ctx.components.lock().unwrap_or_else(|e| e.into_inner());
    if map.get(&domain).is_some_and(|(s, _)| *s == sid) {
        map.remove(&domain);
    }
    drop(map);
    ctx.replicator.submit(&Command::ComponentUnbind {
        domain,
        node: ctx.node_id(),
        sid,
    });
    tracing::info!("component disconnected");
    Ok(())
}

/// Draining: end every component stream here with `<system-shutdown/>`,
/// then unbind its domain cluster-wide (awaited, bounded), so stanzas for
/// it get a readable error until the component is back on another node,
/// instead of waiting on this one.
pub async fn close_all(ctx: &TransportCtx, wait: Duration) {
    let all: Vec<(String, (u64, mpsc::Sender<String>))> = ctx
        .components
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .collect();
    for (domain, (sid, tx)) in all {
        let reason = StreamError::with_text(
            StreamCondition::SystemShutdown,
            "node draining; connect to another node",
        );
        // The writer closes the stream once this is out (its sender is
        // dropped here); a writer that cannot take it in a second (a stuck
        // component) is closed without it.
        let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(reason.to_xml())).await;
        drop(tx);
        tracing::info!(%domain, "component closed: node draining");
        let unbind = Command::ComponentUnbind {
            domain: domain.clone(),
            node: ctx.node_id(),
            sid,
        };
        match tokio::time::timeout(wait, ctx.replicator.commit_async(&unbind)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(%domain, error = %e, "component unbind not committed"),
            Err(_) => tracing::warn!(%domain, "component unbind not committed in time"),
        }
    }
}

/// A stanza the component sent: it must come from its own domain
/// (RFC 6120 §8.1.2.1 applied to XEP-0114); then it goes where it is
/// addressed, like a stanza from a remote server.
fn from_component(
    ctx: &Arc<TransportCtx>,
    domain: &str,
    mut el: Element,
) -> Result<(), &'static str> {
    if !matches!(el.name.as_str(), "message" | "presence" | "iq") {
        return Err("not a stanza");
    }
    let from_ok = el
        .attr("from")
        .and_then(|f| jid::Jid::new(f).ok())
        .is_some_and(|j| j.domain().as_str().eq_ignore_ascii_case(domain));
    if !from_ok {
        return Err("'from' must be in the component's domain");
    }
    let Some(to) = el.attr("to").and_then(|t| jid::Jid::new(t).ok()) else {
        return Ok(()); // nothing addressed: nothing to do
    };
    crate::transport::s2s::retag(&mut el, ns::COMPONENT, ns::CLIENT);
    if crate::transport::s2s::is_local_domain(ctx, to.domain().as_str()) {
        crate::transport::s2s::deliver_local(ctx, el);
    } else {
        crate::transport::s2s::send(ctx, el);
    }
    Ok(())
}
