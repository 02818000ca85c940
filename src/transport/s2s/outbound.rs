//! One outbound link per remote domain per node (RFC 6120 §4, XEP-0220):
//! an actor that queues stanzas (bounded) while it connects, encrypts and
//! authenticates with dialback, then writes them in order. If the link
//! cannot be set up, what waits is bounced with `<remote-server-not-found/>`
//! or `<remote-server-timeout/>`; an idle link closes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::{dialback, stream, S2sError};
use crate::base::stanza_error::StanzaCondition;
use crate::base::xml::{ns, Element, StreamEvent};
use crate::transport::context::TransportCtx;

#[derive(Message)]
#[rtype(result = "()")]
pub struct SendStanza(pub Element);

#[derive(Message)]
#[rtype(result = "()")]
struct Established(mpsc::Sender<String>);

#[derive(Message)]
#[rtype(result = "()")]
struct Failed(S2sError);

#[derive(Message)]
#[rtype(result = "()")]
struct Closed;

pub struct OutboundLink {
    ctx: Arc<TransportCtx>,
    /// Our domain on this link (the cluster's, or a hosted component's).
    local: String,
    remote: String,
    queue: VecDeque<Element>,
    writer: Option<mpsc::Sender<String>>,
    last_activity: Instant,
    span: tracing::Span,
}

impl OutboundLink {
    pub fn new(ctx: Arc<TransportCtx>, local: String, remote: String) -> OutboundLink {
        let span = tracing::info_span!("s2s_out", local = %local, remote = %remote);
        OutboundLink {
            ctx,
            local,
            remote,
            queue: VecDeque::new(),
            writer: None,
            last_activity: Instant::now(),
            span,
        }
    }

    fn write(&mut self, mut el: Element, ctx: &mut Context<Self>) {
        self.last_activity = Instant::now();
        super::retag(&mut el, ns::CLIENT, ns::SERVER);
        let xml = el.to_xml(ns::SERVER);
        if let Some(w) = &self.writer {
            if w.try_send(xml).is_err() {
                let _g = self.span.enter();
                tracing::warn!("outbound link is not keeping up; closing it");
                ctx.stop();
            }
        }
    }
}

impl Actor for OutboundLink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let me = ctx.address();
        let c = self.ctx.clone();
        let remote = self.remote.clone();
        let local = self.local.clone();
        let span = self.span.clone();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                match establish(&c, &local, &remote).await {
                    Ok((conn, bidi)) => {
                        tracing::info!(bidi, "outbound link ready");
                        let (tx, rx) = mpsc::channel(c.config.s2s.queue.max(16));
                        me.do_send(Established(tx));
                        run(&c, &remote, bidi, conn, rx).await;
                        me.do_send(Closed);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot reach remote server");
                        me.do_send(Failed(e));
                    }
                }
            },
            span,
        ));
        let idle = Duration::from_secs(self.ctx.config.s2s.idle_timeout_secs);
        ctx.run_interval(idle.min(Duration::from_secs(30)), move |act, ctx| {
            if act.writer.is_some() && act.last_activity.elapsed() >= idle {
                let _g = act.span.enter();
                tracing::info!("idle outbound link closes");
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        let mut links = self.ctx.s2s.links.lock().unwrap_or_else(|e| e.into_inner());
        let key = (self.local.clone(), self.remote.clone());
        if links.get(&key).is_some_and(|a| !a.connected()) {
            links.remove(&key);
        }
        drop(links);
        // Anything still waiting never left: its senders hear so.
        for el in self.queue.drain(..) {
            super::bounce_local(&self.ctx, &el, StanzaCondition::RemoteServerNotFound);
        }
    }
}

impl Handler<SendStanza> for OutboundLink {
    type Result = ();

    fn handle(&mut self, msg: SendStanza, ctx: &mut Context<Self>) {
        crate::base::metrics::get().s2s_stanza(false);
        if self.writer.is_some() {
            self.write(msg.0, ctx);
        } else if self.queue.len() >= self.ctx.config.s2s.queue {
            super::bounce_local(&self.ctx, &msg.0, StanzaCondition::ResourceConstraint);
        } else {
            self.queue.push_back(msg.0);
        }
    }
}

impl Handler<Established> for OutboundLink {
    type Result = ();

    fn handle(&mut self, msg: Established, ctx: &mut Context<Self>) {
        self.writer = Some(msg.0);
        let waiting: Vec<Element> = self.queue.drain(..).collect();
        for el in waiting {
            self.write(el, ctx);
        }
    }
}

impl Handler<Failed> for OutboundLink {
    type Result = ();

    fn handle(&mut self, msg: Failed, ctx: &mut Context<Self>) {
        let condition = msg.0.condition();
        for el in self.queue.drain(..) {
            super::bounce_local(&self.ctx, &el, condition);
        }
        ctx.stop();
    }
}

impl Handler<Closed> for OutboundLink {
    type Result = ();

    fn handle(&mut self, _msg: Closed, ctx: &mut Context<Self>) {
        self.writer = None;
        ctx.stop();
    }
}

/// Connect and authenticate `local` (our domain or a hosted component's)
/// to `remote` with dialback (XEP-0220 §2.1): send our key, wait for the
/// remote's verdict, which it gets by asking `local`'s authoritative
/// server (any of our nodes).
async fn establish(
    ctx: &Arc<TransportCtx>,
    local: &str,
    remote: &str,
) -> Result<(stream::Conn, bool), S2sError> {
    let (mut conn, id, features) = stream::open(ctx, local, remote).await?;
    let ours = local.to_string();
    // XEP-0288: where the peer offers it, this link carries its stanzas to
    // us too (asked for before authenticating).
    let bidi = features.get_child("bidi", BIDI_FEATURE_NS).is_some();
    if bidi {
        conn.send(&format!("<bidi xmlns='{BIDI_NS}'/>")).await?;
    }
    // RFC 6120 §6, XEP-0178: SASL EXTERNAL with our certificate where the
    // peer offers it (it verified our certificate); dialback otherwise.
    let external = features
        .get_child("mechanisms", ns::SASL)
        .is_some_and(|m| m.elements().any(|x| x.text().trim() == "EXTERNAL"));
    if external && ctx.s2s.verify {
        use base64::Engine;
        let authzid = base64::engine::general_purpose::STANDARD.encode(&ours);
        conn.send(&format!(
            "<auth xmlns='{}' mechanism='EXTERNAL'>{authzid}</auth>",
            ns::SASL
        ))
        .await?;
        let answer = conn.element().await?;
        if answer.is("success", ns::SASL) {
            conn.restart();
            conn.send(&stream::initiating_header(&ours, remote)).await?;
            conn.header().await?;
            let _features = conn.element().await?;
            tracing::info!("authenticated with SASL EXTERNAL");
            return Ok((conn, bidi));
        }
        tracing::info!("SASL EXTERNAL refused; trying dialback");
    }
    if features
        .get_child("dialback", dialback::FEATURE_NS)
        .is_none()
    {
        tracing::debug!("remote does not advertise dialback; trying it anyway");
    }
    let key = ctx.s2s.secret.key(remote, &ours, &id);
    conn.send(&format!(
        "<db:result from='{ours}' to='{remote}'>{key}</db:result>"
    ))
    .await?;
    let wait = Duration::from_secs(ctx.config.s2s.connect_timeout_secs);
    let verdict = tokio::time::timeout(wait, async {
        loop {
            let el = conn.element().await?;
            if el.is("result", dialback::NS) {
                return Ok::<Element, S2sError>(el);
            }
        }
    })
    .await
    .map_err(|_| S2sError::Timeout)??;
    match verdict.attr("type") {
        Some("valid") => Ok((conn, bidi)),
        _ => Err(S2sError::Refused(remote.to_string())),
    }
}

/// XEP-0288 bidirectional server-to-server connections.
const BIDI_FEATURE_NS: &str = "urn:xmpp:features:bidi";
const BIDI_NS: &str = "urn:xmpp:bidi";

/// Write queued stanzas until the link is dropped. Read what the remote
/// sends: on a bidirectional link (XEP-0288), its stanzas to us, which must
/// come from the domain we connected to and authenticated (`<invalid-from/>`
/// otherwise); on a one-way link, nothing but a possible stream error.
async fn run(
    ctx: &Arc<TransportCtx>,
    remote: &str,
    bidi: bool,
    conn: stream::Conn,
    mut rx: mpsc::Receiver<String>,
) {
    let (mut reader, mut writer) = conn.split();
    let (err_tx, mut err_rx) = mpsc::channel::<String>(1);
    let read = async move {
        loop {
            match reader.next().await {
                Ok(StreamEvent::End) | Err(_) => return,
                Ok(StreamEvent::Stanza(el)) if el.is("error", ns::STREAM) => {
                    tracing::warn!(error = ?el.elements().next().map(|e| e.name.clone()), "remote closed the link with a stream error");
                    return;
                }
                Ok(StreamEvent::Stanza(mut el))
                    if bidi && matches!(el.name.as_str(), "message" | "presence" | "iq") =>
                {
                    let from_ok = el
                        .attr("from")
                        .and_then(|f| jid::Jid::new(f).ok())
                        .is_some_and(|j| j.domain().as_str().eq_ignore_ascii_case(remote));
                    let to_ok = el
                        .attr("to")
                        .and_then(|t| jid::Jid::new(t).ok())
                        .is_some_and(|j| super::is_local_domain(ctx, j.domain().as_str()));
                    if !(from_ok && to_ok) {
                        let e = crate::transport::stream::StreamError::with_text(
                            crate::transport::stream::StreamCondition::InvalidFrom,
                            "stanza not from the domain of this link",
                        );
                        let _ = err_tx.try_send(format!("{}</stream:stream>", e.to_xml()));
                        return;
                    }
                    super::retag(&mut el, ns::SERVER, ns::CLIENT);
                    tracing::debug!(name = %el.name, "stanza in over the bidirectional link");
                    super::deliver_local(ctx, el);
                }
                Ok(_) => {}
            }
        }
    };
    let write = async move {
        loop {
            let first = tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => m,
                    None => break,
                },
                e = err_rx.recv() => {
                    if let Some(e) = e {
                        let _ = writer.write_all(e.as_bytes()).await;
                        let _ = writer.shutdown().await;
                    }
                    return;
                }
            };
            let mut batch = first;
            while let Ok(more) = rx.try_recv() {
                batch.push_str(&more);
                if batch.len() > 64 * 1024 {
                    break;
                }
            }
            if writer.write_all(batch.as_bytes()).await.is_err() || writer.flush().await.is_err() {
                return;
            }
        }
        let _ = writer.write_all(b"</stream:stream>").await;
        let _ = writer.shutdown().await;
    };
    tokio::pin!(read);
    tokio::pin!(write);
    tokio::select! {
        // The writer may still owe the remote a stream error.
        _ = &mut read => {
            let _ = tokio::time::timeout(Duration::from_millis(500), &mut write).await;
        }
        _ = &mut write => {}
    }
}
