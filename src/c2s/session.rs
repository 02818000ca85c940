//! `C2sSession`: one actor per bound client session. It owns the inbound
//! stanza stream, checks and stamps `from`, hands stanzas to the delivery
//! rules, and queues outbound stanzas to the writer task.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use jid::{FullJid, Jid};
use tokio::sync::{mpsc, oneshot};
use tracing::Span;

use super::io::{Inbound, Outbound};
use crate::clock;
use crate::delivery;
use crate::server::ServerCtx;
use crate::stanza_error::{StanzaCondition, StanzaError};
use crate::stream::{StreamCondition, StreamError};
use crate::xml::{ns, Element, ParseError, StreamEvent};

/// Deliver a stanza to this session's client.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub Element);

/// End this session's stream with an error.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseStream(pub StreamError);

pub struct C2sSession {
    pub id: u64,
    pub jid: FullJid,
    ctx: Arc<ServerCtx>,
    out: mpsc::Sender<Outbound>,
    abort: Option<oneshot::Sender<StreamError>>,
    reader: Option<tokio::task::AbortHandle>,
    inbound: Option<mpsc::Receiver<Inbound>>,
    activity: Arc<AtomicU64>,
    ping_sent_at: Option<u64>,
    closed: bool,
    span: Span,
    presence: Addr<crate::presence::UserPresence>,
}

impl C2sSession {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        jid: FullJid,
        ctx: Arc<ServerCtx>,
        out: mpsc::Sender<Outbound>,
        abort: oneshot::Sender<StreamError>,
        reader: tokio::task::AbortHandle,
        inbound: mpsc::Receiver<Inbound>,
        activity: Arc<AtomicU64>,
        span: Span,
        presence: Addr<crate::presence::UserPresence>,
    ) -> Self {
        C2sSession {
            id,
            jid,
            ctx,
            out,
            abort: Some(abort),
            reader: Some(reader),
            inbound: Some(inbound),
            activity,
            ping_sent_at: None,
            closed: false,
            span,
            presence,
        }
    }

    /// Queue serialized data for the client; a full queue cuts it off.
    pub fn send(&mut self, el: &Element, ctx: &mut Context<Self>) {
        if self.closed {
            return;
        }
        if self
            .out
            .try_send(Outbound::Data(el.to_xml(ns::CLIENT)))
            .is_err()
        {
            self.close(
                StreamError::with_text(
                    StreamCondition::ResourceConstraint,
                    "client is not reading",
                ),
                ctx,
            );
        }
    }

    /// End the stream with `err` and stop the actor.
    pub fn close(&mut self, err: StreamError, ctx: &mut Context<Self>) {
        if !self.closed {
            self.closed = true;
            let _g = self.span.enter();
            tracing::info!(%err, "closing session");
            if let Err(mpsc::error::TrySendError::Full(_)) =
                self.out.try_send(Outbound::Close(Some(err.clone())))
            {
                if let Some(abort) = self.abort.take() {
                    let _ = abort.send(err);
                }
            }
        }
        ctx.stop();
    }

    fn handle_stanza(&mut self, mut el: Element, ctx: &mut Context<Self>) {
        if el.ns != ns::CLIENT || !matches!(el.name.as_str(), "message" | "presence" | "iq") {
            return self.close(
                StreamError::with_text(
                    StreamCondition::UnsupportedStanzaType,
                    format!("<{}/> is not a stanza", el.name),
                ),
                ctx,
            );
        }
        // RFC 6120 §8.1.2.1: the server stamps 'from'; a client may only
        // claim its own full or bare JID.
        if let Some(from) = el.attr("from") {
            let ok = match Jid::new(from) {
                Ok(j) => j == self.jid.clone() || j == self.jid.to_bare(),
                Err(_) => false,
            };
            if !ok {
                return self.close(
                    StreamError::with_text(
                        StreamCondition::InvalidFrom,
                        "'from' is not this session's address",
                    ),
                    ctx,
                );
            }
        }
        el.set_attr("from", self.jid.to_string());
        // Answers to our own keepalive pings end here.
        if el.name == "iq"
            && matches!(el.attr("type"), Some("result") | Some("error"))
            && el
                .attr("id")
                .is_some_and(|id| id.starts_with("starling-ping-"))
        {
            return;
        }
        let sender = delivery::Sender {
            jid: &self.jid,
            session_id: self.id,
            presence: &self.presence,
        };
        let outcome = delivery::from_client(&self.ctx, &sender, el);
        if let Some(reply) = outcome.reply {
            self.send(&reply, ctx);
        }
        if let Some(err) = outcome.close {
            self.close(err, ctx);
        }
    }

    /// XEP-0199 keepalive: ping a silent client, drop one that stays silent.
    fn check_idle(&mut self, ctx: &mut Context<Self>) {
        let limits = &self.ctx.config.limits;
        let now = clock::now_ms();
        let last = self.activity.load(Ordering::Relaxed);
        match self.ping_sent_at {
            Some(sent) if last >= sent => self.ping_sent_at = None,
            Some(sent) if now.saturating_sub(sent) >= limits.ping_timeout_secs * 1000 => {
                return self.close(
                    StreamError::with_text(StreamCondition::ConnectionTimeout, "no answer to ping"),
                    ctx,
                );
            }
            Some(_) => return,
            None => {}
        }
        if self.ping_sent_at.is_none() && now.saturating_sub(last) >= limits.idle_ping_secs * 1000 {
            self.ping_sent_at = Some(now);
            let ping = Element::new("iq", ns::CLIENT)
                .with_attr("type", "get")
                .with_attr("id", format!("starling-ping-{now}"))
                .with_attr("from", self.ctx.config.domain.clone())
                .with_attr("to", self.jid.to_string())
                .with_child(Element::new("ping", ns::PING));
            self.send(&ping, ctx);
        }
    }
}

impl Actor for C2sSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.ctx.config.limits.outbound_queue);
        if let Some(rx) = self.inbound.take() {
            ctx.add_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        }
        let ms = (self.ctx.config.limits.idle_ping_secs * 1000 / 2).clamp(250, 5000);
        ctx.run_interval(Duration::from_millis(ms), |act, ctx| act.check_idle(ctx));
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.ctx.router.unbind(&self.jid, self.id);
        self.ctx
            .replicator
            .submit(&crate::state::Command::SessionUnbind {
                jid: self.jid.to_string(),
                node: self.ctx.node_id(),
                sid: self.id,
            });
        if !self.closed {
            let _ = self.out.try_send(Outbound::Close(None));
        }
        if let Some(r) = self.reader.take() {
            r.abort();
        }
        // RFC 6121 §4.5.2: contacts see the resource go unavailable.
        self.presence.do_send(crate::presence::Gone {
            from: self.jid.clone(),
            session_id: self.id,
        });
        let _g = self.span.enter();
        tracing::info!("session ended");
    }
}

impl StreamHandler<Inbound> for C2sSession {
    fn handle(&mut self, item: Inbound, ctx: &mut Context<Self>) {
        let _g = self.span.clone().entered();
        match item {
            Ok(StreamEvent::Stanza(el)) => self.handle_stanza(el, ctx),
            Ok(StreamEvent::Keepalive) => {}
            Ok(StreamEvent::End) => {
                self.closed = true;
                let _ = self.out.try_send(Outbound::Close(None));
                ctx.stop();
            }
            Ok(StreamEvent::Header(_)) => {
                self.close(StreamError::new(StreamCondition::NotWellFormed), ctx)
            }
            Err(ParseError::Closed) | Err(ParseError::Io(_)) => {
                self.closed = true;
                let _ = self.out.try_send(Outbound::Close(None));
                ctx.stop();
            }
            Err(e) => self.close(StreamError::from(&e), ctx),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<Deliver> for C2sSession {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        self.send(&msg.0, ctx);
    }
}

impl Handler<CloseStream> for C2sSession {
    type Result = ();

    fn handle(&mut self, msg: CloseStream, ctx: &mut Context<Self>) {
        self.close(msg.0, ctx);
    }
}

/// An error reply for a stanza the server could not process, unless it is
/// itself an error (RFC 6120 §8.3.1: never answer an error with an error).
pub fn bounce(stanza: &Element, condition: StanzaCondition) -> Option<Element> {
    if stanza.attr("type") == Some("error") {
        return None;
    }
    Some(StanzaError::new(condition).reply_to(stanza))
}
