//! `C2sSession`: one actor per bound client session. It owns the inbound
//! stanza stream, checks and stamps `from`, hands stanzas to the delivery
//! rules, and queues outbound stanzas to the writer task.
//!
//! With stream management (XEP-0198) the session outlives its connection:
//! when the connection drops it detaches, keeps queueing, and a new
//! connection can resume it (`Attach`) until the resume timeout; then what
//! the client never acknowledged is stored offline or bounced.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_channel::mpsc;
use jid::{FullJid, Jid};
use starling_cluster::{Marker, Receipt};
use tokio::sync::oneshot;
use tracing::Span;

use super::io::{Inbound, Outbound};
use super::stream_management::{SmState, NS as SM_NS};
use crate::base::clock;
use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::xml::{ns, Element, ParseError, StreamEvent};
use crate::im::delivery;
use crate::transport::context::TransportCtx;
use crate::transport::stream::{StreamCondition, StreamError};

/// XEP-0352 Client State Indication.
pub const CSI_NS: &str = "urn:xmpp:csi:0";

/// Deliver a stanza to this session's client; the receipt is answered
/// once the session owns it for good (see [`Self::owned_when_written`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub Element, pub Option<Receipt>, pub Option<Marker>);

/// End this session's stream with an error.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseStream(pub StreamError);

/// One connection's I/O, as the session sees it.
pub struct Conn {
    pub out: mpsc::Sender<Outbound>,
    pub abort: Option<oneshot::Sender<StreamError>>,
    pub reader: tokio::task::AbortHandle,
    pub activity: Arc<AtomicU64>,
    /// Answers that wait for a stanza to reach the socket.
    pub written: Arc<super::io::Written>,
    /// Writes numbered so far (see [`super::io::Outbound::Marked`]).
    pub marks: u64,
}

/// Inbound events, tagged with the connection they came from.
pub type Tagged = (u64, Inbound);

/// Another node resumes this session: hand over the state and stop
/// quietly (no unavailable presence, nothing redelivered).
#[derive(Message)]
#[rtype(result = "Option<crate::routing::route::HandOff>")]
pub struct TakeOver {
    /// Why the client's connection here ends.
    pub reason: StreamError,
    /// The node the session goes to: stanzas for it follow it there from
    /// the moment it leaves the router here.
    pub to: u64,
}

/// A resuming connection takes over this session (XEP-0198 §5).
#[derive(Message)]
#[rtype(result = "Result<(), ()>")]
pub struct Attach {
    pub conn: Conn,
    pub inbound: mpsc::Receiver<Inbound>,
    /// The client's `h`.
    pub h: u32,
    /// Resumed inside SASL2 (XEP-0388): `<resumed/>` goes in its success.
    pub sasl2: Option<crate::transport::stream::sasl2::Authenticated>,
}

pub struct C2sSession {
    pub id: u64,
    pub jid: FullJid,
    ctx: Arc<TransportCtx>,
    /// `None` while detached (connection lost, waiting for a resume).
    conn: Option<Conn>,
    /// Generation of the current connection; events from older ones are ignored.
    generation: u64,
    first_inbound: Option<mpsc::Receiver<Inbound>>,
    ping_sent_at: Option<u64>,
    closed: bool,
    span: Span,
    presence: Addr<crate::im::presence::UserPresence>,
    sm: Option<SmState>,
    ack_requested: bool,
    resume_timer: Option<SpawnHandle>,
    /// CSI: the client said it is inactive; presence is held, coalesced.
    inactive: bool,
    held: Vec<Element>,
    /// The last presence broadcast by this resource (moves with a hand-off).
    last_presence: Option<Element>,
    /// Handed to another node: stop without the usual goodbyes, and
    /// meanwhile forward what still arrives here.
    moved: bool,
    /// Stanzas that arrived after the hand-off, before its target was known.
    forward_later: Vec<Element>,
    /// A resumable id enabled at bind time, registered once started.
    sm_inline: Option<String>,
}

/// How long a handed-over session keeps forwarding stanzas that were
/// already on their way to it.
const FORWARD_GRACE: Duration = Duration::from_secs(10);

fn is_stanza(el: &Element) -> bool {
    el.ns == ns::CLIENT && matches!(el.name.as_str(), "message" | "presence" | "iq")
}

impl C2sSession {
    pub fn new(
        id: u64,
        jid: FullJid,
        ctx: Arc<TransportCtx>,
        conn: Conn,
        inbound: mpsc::Receiver<Inbound>,
        span: Span,
        presence: Addr<crate::im::presence::UserPresence>,
    ) -> Self {
        C2sSession {
            id,
            jid,
            ctx,
            conn: Some(conn),
            generation: 0,
            first_inbound: Some(inbound),
            ping_sent_at: None,
            closed: false,
            span,
            presence,
            sm: None,
            ack_requested: false,
            resume_timer: None,
            inactive: false,
            held: Vec::new(),
            last_presence: None,
            moved: false,
            forward_later: Vec::new(),
            sm_inline: None,
        }
    }

    /// A session arriving from another node, detached until `Attach`.
    pub fn resumed(
        id: u64,
        jid: FullJid,
        ctx: Arc<TransportCtx>,
        span: Span,
        presence: Addr<crate::im::presence::UserPresence>,
        sm: SmState,
        last_presence: Option<Element>,
    ) -> Self {
        C2sSession {
            id,
            jid,
            ctx,
            conn: None,
            generation: 0,
            first_inbound: None,
            ping_sent_at: None,
            closed: false,
            span,
            presence,
            sm: Some(sm),
            ack_requested: false,
            resume_timer: None,
            inactive: false,
            held: Vec::new(),
            last_presence,
            moved: false,
            forward_later: Vec::new(),
            sm_inline: None,
        }
    }

    fn attach_stream(&mut self, rx: mpsc::Receiver<Inbound>, ctx: &mut Context<Self>) {
        use tokio_stream::StreamExt;
        let generation = self.generation;
        ctx.add_stream(rx.map(move |i| (generation, i)));
    }

    /// Write raw XML (stream management and other non-stanza elements).
    fn write(&mut self, data: String, ctx: &mut Context<Self>) {
        self.write_gated(data, None, ctx)
    }

    /// [`Self::write`], held by the writer until `gate` opens (see
    /// [`Outbound::Gated`]).
    fn write_gated(
        &mut self,
        data: String,
        gate: Option<super::io::Gate>,
        ctx: &mut Context<Self>,
    ) {
        let Some(conn) = &mut self.conn else { return };
        // `[log] level = "info,stanza=trace"`: every stanza, in the session's span.
        if tracing::enabled!(target: "stanza", tracing::Level::TRACE) {
            let _g = self.span.enter();
            tracing::trace!(target: "stanza", out = %data);
        }
        conn.marks += 1;
        let out = match gate {
            Some(gate) => Outbound::Gated(data, conn.marks, gate),
            None => Outbound::Marked(data, conn.marks),
        };
        if conn.out.try_send(out).is_err() {
            self.close(
                StreamError::with_text(
                    StreamCondition::ResourceConstraint,
                    "client is not reading",
                ),
                ctx,
            );
        }
    }

    /// Answer `receipt` once what this session wrote last is with the
    /// kernel (a kill -9 of this node no longer loses it); at once when
    /// nothing is connected (the stanza waits in the stream management
    /// queue for a resume, or went back through delivery) or the session
    /// is ending (its queue goes back through delivery).
    fn owned_when_written(&self, receipt: Receipt) {
        match &self.conn {
            Some(conn) if !self.closed => conn.written.after(conn.marks, receipt),
            _ => crate::routing::route::answer(Some(receipt), true),
        }
    }

    /// Send a stanza to the client: counted and queued for acknowledgement
    /// with stream management, held while inactive if it is presence.
    pub fn send(&mut self, el: &Element, ctx: &mut Context<Self>) {
        self.send_marked(el, None, ctx)
    }

    /// [`Self::send`] for a relayed stanza whose sender records, before
    /// it is written, which stanza of this session it is (`marker`).
    fn send_marked(&mut self, el: &Element, marker: Option<Marker>, ctx: &mut Context<Self>) {
        // XEP-0352: presence waits (the latest per sender) while inactive.
        if self.inactive && !self.closed && el.name == "presence" {
            let from = el.attr("from").map(str::to_string);
            self.held
                .retain(|p| p.attr("from").map(str::to_string) != from);
            self.held.push(el.clone());
            // Bounded: past the cap, everything held goes out now (the
            // client pays the radio wake-up once, the server holds little).
            if self.held.len() > self.ctx.config.limits.csi_held {
                tracing::debug!(held = self.held.len(), "CSI buffer full; flushing");
                self.flush_held(ctx);
            }
            return;
        }
        self.send_now_marked(el, marker, ctx);
    }

    /// Send what CSI held, oldest first.
    fn flush_held(&mut self, ctx: &mut Context<Self>) {
        for p in std::mem::take(&mut self.held) {
            self.send_now(&p, ctx);
        }
    }

    /// [`Self::send`] past the CSI hold: counted for stream management, written.
    fn send_now(&mut self, el: &Element, ctx: &mut Context<Self>) {
        self.send_now_marked(el, None, ctx)
    }

    /// [`Self::send_now`]; with a `marker`, the write waits until the
    /// stanza's sender has recorded its number in this resumable session:
    /// should this node die before answering the sender, the client's
    /// resume attempt elsewhere (its `h`) tells the sender whether the
    /// stanza arrived (`route::reroute`).
    fn send_now_marked(&mut self, el: &Element, marker: Option<Marker>, ctx: &mut Context<Self>) {
        if self.closed {
            // Reached a session that is ending: not lost with it.
            self.give_back(el.clone());
            return;
        }
        let xml = el.to_xml(ns::CLIENT);
        crate::base::metrics::get().stanza(false, &el.name);
        let mut gate = None;
        if let Some(sm) = &mut self.sm {
            if is_stanza(el) {
                sm.sent(el, xml.len());
                if let (Some(m), Some(id), Some(_)) = (marker, &sm.id, &self.conn) {
                    gate = Some(super::io::Gate::new(m.mark(id, u64::from(sm.outbound))));
                }
                // A client that never acknowledges (or never comes back to
                // resume) cannot make the server hold unbounded data: the
                // session ends and what it holds goes to offline storage.
                let limits = &self.ctx.config.limits;
                if sm.over(limits.sm_unacked, limits.sm_unacked_bytes) {
                    let unacked = sm.unacked.len();
                    self.span.in_scope(|| {
                        tracing::warn!(unacked, "too much unacknowledged; ending the session")
                    });
                    self.close(
                        StreamError::with_text(
                            StreamCondition::ResourceConstraint,
                            "too many unacknowledged stanzas",
                        ),
                        ctx,
                    );
                    return;
                }
            }
        }
        self.write_gated(xml, gate, ctx);
        // Ask for an acknowledgement now and then (XEP-0198 §4).
        let ask = self.sm.as_ref().is_some_and(|s| s.unacked.len() >= 5) && !self.ack_requested;
        if ask && self.conn.is_some() {
            self.ack_requested = true;
            self.write(format!("<r xmlns='{SM_NS}'/>"), ctx);
        }
    }

    /// End the stream with `err` and stop the actor.
    pub fn close(&mut self, err: StreamError, ctx: &mut Context<Self>) {
        if !self.closed {
            self.closed = true;
            // Nothing new is routed here from now on; what is already on
            // its way is given back (send).
            if !self.moved {
                // In order: what the client never acknowledged goes back
                // before anything still on its way here, and before any
                // message routed to the user once this session is unbound
                // (offline storage queues those after these).
                let ctx2 = self.ctx.clone();
                let user = self.ctx.config.account_of(&self.jid);
                let _order = ctx2.presence.offline_order(user.as_deref().unwrap_or(""));
                self.ctx.router.unbind(&self.jid, self.id);
                self.redeliver_unacked();
            }
            let _g = self.span.enter();
            tracing::info!(%err, "closing session");
            if let Some(conn) = &mut self.conn {
                let sent = conn.out.try_send(Outbound::Close(Some(err.clone())));
                if sent.is_err_and(|e| e.is_full()) {
                    if let Some(abort) = conn.abort.take() {
                        let _ = abort.send(err);
                    }
                }
            }
            // Stop once what is already in the mailbox was handled (given
            // back): stopping now would drop it with the mailbox.
            ctx.address().do_send(Finish);
            return;
        }
        ctx.stop();
    }

    /// The connection is gone. A resumable session waits for a resume;
    /// any other ends.
    fn connection_lost(&mut self, ctx: &mut Context<Self>) {
        let resumable = self.sm.as_ref().is_some_and(|s| s.id.is_some());
        if let Some(mut conn) = self.conn.take() {
            conn.reader.abort();
            let _ = conn.out.try_send(Outbound::Close(None));
        }
        if !resumable || self.closed {
            self.closed = true;
            ctx.stop();
            return;
        }
        let timeout = Duration::from_secs(self.ctx.config.limits.resume_timeout_secs);
        let _g = self.span.enter();
        tracing::info!(?timeout, "connection lost; waiting for a resume");
        self.resume_timer = Some(ctx.run_later(timeout, |act, ctx| {
            let _g = act.span.enter();
            tracing::info!("not resumed in time; session ends");
            act.closed = true;
            ctx.stop();
        }));
    }

    fn handle_sm(&mut self, el: Element, ctx: &mut Context<Self>) {
        match el.name.as_str() {
            "enable" if self.sm.is_none() => {
                let resume = matches!(el.attr("resume"), Some("true") | Some("1"));
                let id = resume.then(crate::transport::stream::header::new_stream_id);
                let mut enabled = Element::new("enabled", SM_NS);
                if let Some(id) = &id {
                    enabled.set_attr("id", id.clone());
                    enabled.set_attr("resume", "true");
                    enabled.set_attr(
                        "max",
                        self.ctx.config.limits.resume_timeout_secs.to_string(),
                    );
                    self.register_resumable(id, ctx);
                }
                self.sm = Some(SmState::new(id));
                self.write(enabled.to_xml(""), ctx);
            }
            "enable" => {
                let f = Element::new("failed", SM_NS)
                    .with_child(Element::new("unexpected-request", ns::STANZA_ERRORS));
                self.write(f.to_xml(""), ctx);
            }
            "r" => {
                // Answered once everything received so far is owned (a
                // message in flight to another node is not yet).
                let h = self.sm.as_mut().map(|s| {
                    s.wanted = Some(s.inbound);
                    s.answer_due()
                });
                match h {
                    Some(true) => self.answer_ack(ctx),
                    Some(false) => {}
                    None => self.close(
                        StreamError::with_text(
                            StreamCondition::UnsupportedStanzaType,
                            "stream management is not enabled",
                        ),
                        ctx,
                    ),
                }
            }
            "a" => {
                let h = el.attr("h").and_then(|h| h.parse::<u32>().ok());
                let (Some(sm), Some(h)) = (self.sm.as_mut(), h) else {
                    return self.close(
                        StreamError::with_text(StreamCondition::UndefinedCondition, "bad <a/>"),
                        ctx,
                    );
                };
                self.ack_requested = false;
                if let Err(e) = sm.ack(h) {
                    let mut err = StreamError::with_text(
                        StreamCondition::UndefinedCondition,
                        format!("h={} but only {} stanzas were sent", e.h, e.sent),
                    );
                    err.text = Some(format!(
                        "handled-count-too-high: h={} send-count={}",
                        e.h, e.sent
                    ));
                    self.close(err, ctx);
                }
            }
            _ => self.close(
                StreamError::with_text(
                    StreamCondition::UnsupportedStanzaType,
                    format!("<{}/>", el.name),
                ),
                ctx,
            ),
        }
    }

    fn answer_ack(&mut self, ctx: &mut Context<Self>) {
        if let Some(sm) = self.sm.as_mut() {
            sm.wanted = None;
            let h = sm.handled;
            self.write(format!("<a xmlns='{SM_NS}' h='{h}'/>"), ctx);
        }
    }

    /// Message `seq` is owned (or could not be): `h` may advance. One
    /// that could not be owned (this node cannot reach the cluster) is
    /// never acknowledged: the stream ends so the client resumes elsewhere
    /// and sends it again.
    fn settled(&mut self, seq: u32, owned: bool, ctx: &mut Context<Self>) {
        let Some(sm) = self.sm.as_mut() else { return };
        sm.settle(seq, owned);
        if !owned {
            tracing::warn!(seq, "a message could not be owned; closing the stream so the client resends it elsewhere");
            return self.close(
                StreamError::with_text(
                    StreamCondition::InternalServerError,
                    "this node cannot reach the cluster; resume on another node",
                ),
                ctx,
            );
        }
        if sm.answer_due() {
            self.answer_ack(ctx);
        }
    }

    fn handle_csi(&mut self, el: Element, ctx: &mut Context<Self>) {
        match el.name.as_str() {
            "inactive" => self.inactive = true,
            "active" => {
                self.inactive = false;
                self.flush_held(ctx);
            }
            _ => {}
        }
    }

    fn handle_stanza(&mut self, mut el: Element, ctx: &mut Context<Self>) {
        if tracing::enabled!(target: "stanza", tracing::Level::TRACE) {
            let _g = self.span.enter();
            tracing::trace!(target: "stanza", r#in = %el.to_xml(ns::CLIENT));
        }
        if self.closed {
            // Read after the stream was closed (the session drains its
            // mailbox before it stops): never acknowledged, so the client
            // sends it again on its next stream.
            let _g = self.span.enter();
            tracing::debug!(stanza = %el.name, "client stanza after close; not handled");
            return;
        }
        if el.ns == SM_NS {
            return self.handle_sm(el, ctx);
        }
        if el.ns == CSI_NS {
            return self.handle_csi(el, ctx);
        }
        if !is_stanza(&el) {
            return self.close(
                StreamError::with_text(
                    StreamCondition::UnsupportedStanzaType,
                    format!("<{}/> is not a stanza", el.name),
                ),
                ctx,
            );
        }
        crate::base::metrics::get().stanza(true, &el.name);
        // XEP-0198 with a promise: a message counts as handled (h) once the
        // server owns it, not when it is read.
        let (receipt, waiting) = match &mut self.sm {
            Some(sm) if el.name == "message" => {
                let seq = sm.received_pending();
                let (tx, rx) = tokio::sync::oneshot::channel::<bool>();
                (Some(tx), Some((seq, rx)))
            }
            Some(sm) => {
                sm.received();
                (None, None)
            }
            None => (None, None),
        };
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
        if el.name == "presence" && el.attr("to").is_none() {
            self.last_presence = match el.attr("type") {
                None => Some(el.clone()),
                _ => None,
            };
        }
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
        // Where the message's recipient is, for the acknowledgement
        // latency (metrics.rs).
        let recipient = waiting.as_ref().map(|_| self.recipient_of(&el));
        let started = std::time::Instant::now();
        let outcome = delivery::from_client(&self.ctx, &sender, el, receipt);
        if let (Some((seq, mut rx)), Some(recipient)) = (waiting, recipient) {
            let m = crate::base::metrics::get();
            match rx.try_recv() {
                // Owned already (a session here took it): no task needed.
                Ok(owned) => {
                    m.acked(recipient, started.elapsed());
                    self.settled(seq, owned, ctx)
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                    m.acked(recipient, started.elapsed());
                    self.settled(seq, true, ctx)
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {
                    ctx.spawn(
                        async move { rx.await.unwrap_or(true) }
                            .into_actor(self)
                            .map(move |owned, act, ctx| {
                                m.acked(recipient, started.elapsed());
                                act.settled(seq, owned, ctx)
                            }),
                    );
                }
            }
        }
        self.act_on(outcome, ctx);
    }

    /// Write the reply, end the stream if asked, and await what comes later.
    fn act_on(&mut self, outcome: delivery::Outcome, ctx: &mut Context<Self>) {
        for el in &outcome.before {
            self.send(el, ctx);
        }
        if let Some(reply) = outcome.reply {
            self.send(&reply, ctx);
        }
        if let Some(err) = outcome.close {
            self.close(err, ctx);
        }
        // The session reads nothing more until it is done (stanzas keep
        // their order, a roster set lands before the presence after it);
        // the thread and the other sessions on it go on.
        if let Some(later) = outcome.later {
            ctx.wait(later.into_actor(self).map(|o, act, ctx| {
                if !act.closed {
                    act.act_on(o, ctx)
                }
            }));
        }
    }

    /// XEP-0199 keepalive: ping a silent client, drop one that stays silent.
    fn check_idle(&mut self, ctx: &mut Context<Self>) {
        let Some(conn) = &self.conn else { return };
        let limits = &self.ctx.config.limits;
        let now = clock::now_ms();
        let last = conn.activity.load(Ordering::Relaxed);
        match self.ping_sent_at {
            Some(sent) if last >= sent => self.ping_sent_at = None,
            Some(sent) if now.saturating_sub(sent) >= limits.ping_timeout_secs * 1000 => {
                // A dead connection: a resumable session detaches instead.
                if self.sm.as_ref().is_some_and(|s| s.id.is_some()) {
                    self.ping_sent_at = None;
                    return self.connection_lost(ctx);
                }
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
            // Not counted by stream management: it is the server's own probe.
            self.write(ping.to_xml(ns::CLIENT), ctx);
        }
    }

    /// A stanza for a session already handed to another node: send it on
    /// to that node (known once the hand-off is under way; until then it
    /// waits here, and at the end of the grace period goes offline).
    fn forward(&mut self, el: Element, ctx: &mut Context<Self>) {
        let first = self.forward_later.is_empty();
        self.forward_later.push(el);
        if !self.flush_forwarded() && first {
            self.retry_forward(ctx);
        }
    }

    fn retry_forward(&mut self, ctx: &mut Context<Self>) {
        ctx.run_later(Duration::from_millis(100), |act, ctx| {
            if !act.flush_forwarded() {
                act.retry_forward(ctx);
            }
        });
    }

    /// Relay what waits to the node the session moved to; false if that
    /// node is not known yet.
    fn flush_forwarded(&mut self) -> bool {
        let target = self
            .ctx
            .moved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(self.jid.as_str())
            .map(|m| m.node);
        let Some(node) = target.filter(|n| *n != self.ctx.node_id()) else {
            return false;
        };
        for el in self.forward_later.drain(..) {
            crate::routing::route::relay(
                &self.ctx,
                node,
                &crate::routing::route::Relay::Stanza {
                    to: self.jid.to_string(),
                    require: None,
                    xml: el.to_xml(ns::CLIENT),
                    hops: 1,
                    depth: 0,
                },
            );
        }
        true
    }

    /// Close the connection attached here, if any: the session goes on
    /// without it (elsewhere, or on a newer connection).
    fn supersede_conn(&mut self, reason: StreamError) {
        if let Some(mut old) = self.conn.take() {
            let _ = old.out.try_send(Outbound::Close(Some(reason)));
            old.reader.abort();
        }
    }

    /// What the client never acknowledged must not vanish (XEP-0198 §5):
    /// messages go back through delivery (offline storage if no other
    /// resource takes them), iq requests get an error, presence is dropped.
    /// Where a message's addressee is: a session on this node, on another
    /// node, or neither.
    fn recipient_of(&self, el: &Element) -> crate::base::metrics::Recipient {
        use crate::base::metrics::Recipient;
        let Some(to) = el.attr("to").and_then(|t| Jid::new(t).ok()) else {
            return Recipient::Elsewhere;
        };
        let bare = to.to_bare();
        if !self.ctx.router.resources(&bare).is_empty() {
            Recipient::Local
        } else if !self.ctx.state.sessions_of(bare.as_str()).is_empty() {
            Recipient::OtherNode
        } else {
            Recipient::Elsewhere
        }
    }

    /// Make session `id` resumable: findable here, and recorded
    /// cluster-wide so the client can resume on any node.
    fn register_resumable(&self, id: &str, ctx: &mut Context<Self>) {
        self.ctx
            .sm_sessions
            .insert(id, ctx.address(), self.jid.clone());
        self.ctx
            .replicator
            .submit(&crate::model::state::Command::SessionResumable {
                jid: self.jid.to_string(),
                node: self.ctx.node_id(),
                sid: self.id,
                sm_id: id.to_string(),
            });
    }

    /// Stream management enabled at bind time (XEP-0386 inline); `id` when
    /// resumable. The `<enabled/>` went out in the bind's success.
    pub fn enable_sm_inline(&mut self, id: Option<String>) {
        self.sm_inline = id.clone();
        self.sm = Some(SmState::new(id));
    }

    /// CSI state at bind time (XEP-0386 inline `<inactive/>`).
    pub fn set_inactive(&mut self, inactive: bool) {
        self.inactive = inactive;
    }

    /// Whether this is a temporary account of the anonymous host.
    fn anonymous(&self) -> bool {
        self.ctx
            .config
            .account_of(&self.jid)
            .is_some_and(|u| crate::model::config::is_anonymous_account(&u))
    }

    fn redeliver_unacked(&mut self) {
        let Some(sm) = self.sm.as_mut() else { return };
        let pending: Vec<Element> = sm.take_unacked();
        for el in pending {
            self.give_back(el);
        }
    }

    /// A stanza this session will never deliver: a message goes through
    /// delivery again (another resource, or offline storage), an iq
    /// request gets an error, presence is dropped.
    fn give_back(&mut self, el: Element) {
        match el.name.as_str() {
            // A temporary account ends with its session: nothing waits
            // for it, the sender hears so (XEP-0175 §3).
            "message" if self.anonymous() => {
                tracing::info!(
                    reason = "temporary account ended",
                    "message returned to its sender"
                );
                if let Some(err) =
                    crate::base::stanza_error::bounce(&el, StanzaCondition::RecipientUnavailable)
                {
                    delivery::route_reply(&self.ctx, err);
                }
            }
            "message" => {
                let _ = delivery::message_again(&self.ctx, el, Jid::from(self.jid.to_bare()));
            }
            "iq" if matches!(el.attr("type"), Some("get") | Some("set")) => {
                let mut err = StanzaError::new(StanzaCondition::RecipientUnavailable).reply_to(&el);
                err.set_attr("from", self.jid.to_string());
                if let Some(to) = err.attr("to").and_then(|t| jid::FullJid::new(t).ok()) {
                    if let Some(t) = crate::routing::route::full(&self.ctx, &to) {
                        crate::routing::route::send(&self.ctx, &t, err, None);
                    }
                }
            }
            _ => {}
        }
    }
}

impl Actor for C2sSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Resumable from the start (Bind 2 inline): findable here and,
        // through the table, from every node.
        if let Some(id) = self.sm_inline.take() {
            self.register_resumable(&id, ctx);
        }
        ctx.set_mailbox_capacity(self.ctx.config.limits.outbound_queue);
        if let Some(rx) = self.first_inbound.take() {
            self.attach_stream(rx, ctx);
        }
        // Arrived from another node without a connection: wait for a resume.
        if self.conn.is_none() {
            let timeout = Duration::from_secs(self.ctx.config.limits.resume_timeout_secs);
            self.resume_timer = Some(ctx.run_later(timeout, |act, ctx| {
                act.closed = true;
                ctx.stop();
            }));
        }
        let ms = (self.ctx.config.limits.idle_ping_secs * 1000 / 2).clamp(250, 5000);
        ctx.run_interval(Duration::from_millis(ms), |act, ctx| act.check_idle(ctx));
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        // What goes back to delivery from here is queued for offline
        // storage before any newer message to the user (see `close`).
        let ctx2 = self.ctx.clone();
        let user = self.ctx.config.account_of(&self.jid);
        let _order = ctx2.presence.offline_order(user.as_deref().unwrap_or(""));
        self.ctx.router.unbind(&self.jid, self.id);
        if self.moved {
            // The session lives on elsewhere: no unbind (its new bind
            // replaced the record), no unavailable. A message that could
            // not follow it goes through delivery again (offline storage).
            let bare = Jid::from(self.jid.to_bare());
            for el in self.forward_later.drain(..) {
                if el.name == "message" {
                    let _ = delivery::message_again(&self.ctx, el, bare.clone());
                }
            }
            return;
        }
        self.ctx
            .replicator
            .submit(&crate::model::state::Command::SessionUnbind {
                jid: self.jid.to_string(),
                node: self.ctx.node_id(),
                sid: self.id,
            });
        if let Some(id) = self.sm.as_ref().and_then(|s| s.id.clone()) {
            self.ctx.sm_sessions.remove(&id);
        }
        self.redeliver_unacked();
        if self.anonymous() {
            // XEP-0175 §3: the temporary account goes with its session,
            // and its data with it (roster, offline messages, archive).
            if let Some(username) = user.clone() {
                tracing::info!(%username, "temporary account removed at the end of its session");
                self.ctx
                    .replicator
                    .submit(&crate::model::state::Command::DeleteAccount { username });
            }
        }
        if let Some(mut conn) = self.conn.take() {
            if !self.closed {
                let _ = conn.out.try_send(Outbound::Close(None));
            }
            conn.reader.abort();
        }
        // RFC 6121 §4.5.2: contacts see the resource go unavailable.
        self.presence.do_send(crate::im::presence::Gone {
            from: self.jid.clone(),
            session_id: self.id,
        });
        let _g = self.span.enter();
        tracing::info!("session ended");
    }
}

impl StreamHandler<Tagged> for C2sSession {
    fn handle(&mut self, (generation, item): Tagged, ctx: &mut Context<Self>) {
        if generation != self.generation || self.conn.is_none() {
            return; // a connection this session no longer uses
        }
        let _g = self.span.clone().entered();
        match *item {
            Ok(StreamEvent::Stanza(el)) => self.handle_stanza(el, ctx),
            Ok(StreamEvent::Keepalive) => {}
            // A clean close ends the session: no resumption (XEP-0198 §5).
            Ok(StreamEvent::End) => {
                if let Some(conn) = &mut self.conn {
                    let _ = conn.out.try_send(Outbound::Close(None));
                }
                self.closed = true;
                ctx.stop();
            }
            Ok(StreamEvent::Header(_)) => {
                self.close(StreamError::new(StreamCondition::NotWellFormed), ctx)
            }
            Err(ParseError::Closed) | Err(ParseError::Io(_)) => self.connection_lost(ctx),
            Err(e) => self.close(StreamError::from(&e), ctx),
        }
    }

    /// Streams end after their last event; that event decides.
    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

/// The routing table reaches a c2s session through its mailbox.
impl crate::routing::router::SessionHandle for Addr<C2sSession> {
    fn try_deliver(
        &self,
        stanza: Element,
        receipt: Option<Receipt>,
    ) -> Result<(), crate::routing::router::Refused> {
        self.try_deliver_marked(stanza, receipt, None)
    }

    fn try_deliver_marked(
        &self,
        stanza: Element,
        receipt: Option<Receipt>,
        marker: Option<Marker>,
    ) -> Result<(), crate::routing::router::Refused> {
        match self.try_send(Deliver(stanza, receipt, marker)) {
            Ok(()) => Ok(()),
            Err(SendError::Full(Deliver(el, r, _))) => {
                Err(crate::routing::router::Refused::Full(el, r))
            }
            Err(SendError::Closed(Deliver(el, r, _))) => {
                Err(crate::routing::router::Refused::Closed(el, r))
            }
        }
    }

    fn deliver_anyway(&self, stanza: Element, receipt: Option<Receipt>) {
        self.do_send(Deliver(stanza, receipt, None));
    }

    fn close(&self, error: StreamError) {
        self.do_send(CloseStream(error));
    }

    fn connected(&self) -> bool {
        Addr::connected(self)
    }
}

impl Handler<Deliver> for C2sSession {
    type Result = ();

    fn handle(&mut self, Deliver(el, receipt, marker): Deliver, ctx: &mut Context<Self>) {
        if self.moved {
            self.forward(el, ctx);
            crate::routing::route::answer(receipt, true);
        } else {
            self.send_marked(&el, marker, ctx);
            if let Some(r) = receipt {
                self.owned_when_written(r);
            }
            // XEP-0357: detached, waiting for a resume: the devices hear of it.
            if self.conn.is_none() && !self.closed && el.name == "message" {
                let waiting = self.sm.as_ref().map_or(1, |sm| {
                    sm.unacked
                        .iter()
                        .filter(|m| crate::im::modules::push::wakes(m))
                        .count() as u64
                });
                if let Some(user) = self.ctx.config.account_of(&self.jid) {
                    self.ctx.modules.push.missed(&self.ctx, &user, &el, waiting);
                }
            }
        }
    }
}

/// Stop a closed session after the stanzas queued before its close.
#[derive(Message)]
#[rtype(result = "()")]
struct Finish;

impl Handler<Finish> for C2sSession {
    type Result = ();

    fn handle(&mut self, _: Finish, ctx: &mut Context<Self>) {
        // A router lookup made just before the unbind may still be
        // sending: a moment more for it.
        ctx.run_later(Duration::from_millis(20), |_, ctx| ctx.stop());
    }
}

impl Handler<CloseStream> for C2sSession {
    type Result = ();

    fn handle(&mut self, msg: CloseStream, ctx: &mut Context<Self>) {
        if !self.closed {
            self.close(msg.0, ctx);
        }
    }
}

impl Handler<TakeOver> for C2sSession {
    type Result = Option<crate::routing::route::HandOff>;

    fn handle(
        &mut self,
        msg: TakeOver,
        ctx: &mut Context<Self>,
    ) -> Option<crate::routing::route::HandOff> {
        if self.closed || self.moved {
            return None;
        }
        let sm = self.sm.as_ref()?;
        let sm_id = sm.id.clone()?;
        let entry = self.ctx.router.get_full(&self.jid);
        let state = crate::routing::route::HandOff {
            jid: self.jid.to_string(),
            sm_id,
            inbound: sm.resume_h(),
            outbound: sm.outbound,
            acked: sm.acked,
            unacked: sm.unacked.iter().map(|e| e.to_xml(ns::CLIENT)).collect(),
            presence: self.last_presence.as_ref().map(|p| p.to_xml(ns::CLIENT)),
            priority: entry.as_ref().map(|e| e.priority).unwrap_or(0),
            interested: entry.as_ref().is_some_and(|e| e.interested),
            blocklist_interested: entry.as_ref().is_some_and(|e| e.blocklist_interested),
            carbons: entry.as_ref().is_some_and(|e| e.carbons),
            holder: Some((self.ctx.node_id(), self.id)),
        };
        // A connection still attached here is superseded.
        self.supersede_conn(msg.reason);
        self.moved = true;
        self.closed = true;
        if let Some(t) = self.resume_timer.take() {
            ctx.cancel_future(t);
        }
        // Out of the router now, so new stanzas follow the session (the
        // table names this node until the new bind applies: `moved` says
        // where it went); the ones already queued here are forwarded.
        crate::routing::route::note_moved(&self.ctx, self.jid.as_str(), msg.to);
        self.ctx.router.unbind(&self.jid, self.id);
        if let Some(id) = self.sm.as_ref().and_then(|s| s.id.clone()) {
            self.ctx.sm_sessions.remove(&id);
        }
        self.presence.do_send(crate::im::presence::Moved {
            from: self.jid.clone(),
            session_id: self.id,
        });
        {
            let _g = self.span.enter();
            tracing::info!("session handed over to another node");
        }
        ctx.run_later(FORWARD_GRACE, |_, ctx| ctx.stop());
        Some(state)
    }
}

/// A handed-over copy of a session whose bind lost (see `install_session`):
/// it leaves without a trace. When another copy of the same session won,
/// what this one arrived with is the winner's too, and only what reached it
/// since (`arrived_with` counts the stanzas it came with) follows the
/// session to where the table says it is; when a new login took the
/// address, everything unacknowledged goes back through delivery.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Abandon {
    pub arrived_with: u32,
    pub same_session: bool,
}

impl Handler<Abandon> for C2sSession {
    type Result = ();

    fn handle(&mut self, msg: Abandon, ctx: &mut Context<Self>) {
        if self.moved {
            return;
        }
        self.ctx.router.unbind(&self.jid, self.id);
        let fresh: Vec<Element> = match self.sm.as_mut() {
            Some(sm) if !msg.same_session => sm.take_unacked(),
            Some(sm) => {
                let n = sm.outbound.wrapping_sub(msg.arrived_with) as usize;
                let all = sm.take_unacked();
                let skip = all.len().saturating_sub(n);
                all.into_iter().skip(skip).collect()
            }
            None => Vec::new(),
        };
        self.supersede_conn(StreamError::with_text(
            StreamCondition::Conflict,
            "session resumed elsewhere",
        ));
        self.moved = true;
        self.closed = true;
        if let Some(t) = self.resume_timer.take() {
            ctx.cancel_future(t);
        }
        if !msg.same_session {
            for el in fresh {
                self.give_back(el);
            }
        } else {
            // Stanzas still on their way here follow it too (see `forward`).
            if let Some(rec) = self
                .ctx
                .state
                .session(self.jid.as_str())
                .filter(|r| r.node != self.ctx.node_id())
            {
                crate::routing::route::note_moved(&self.ctx, self.jid.as_str(), rec.node);
            }
            for el in fresh {
                self.forward(el, ctx);
            }
        }
        {
            let _g = self.span.enter();
            tracing::info!("left: another copy of this session was bound first");
        }
        ctx.run_later(FORWARD_GRACE, |_, ctx| ctx.stop());
    }
}

impl Handler<Attach> for C2sSession {
    type Result = Result<(), ()>;

    fn handle(&mut self, msg: Attach, ctx: &mut Context<Self>) -> Result<(), ()> {
        let Attach {
            mut conn,
            inbound,
            h,
            sasl2,
        } = msg;
        let Some(sm) = self.sm.as_mut().filter(|_| !self.closed) else {
            return Err(());
        };
        let Some(id) = sm.id.clone() else {
            return Err(());
        };
        if let Err(e) = sm.ack(h) {
            let f = Element::new("failed", SM_NS)
                .with_attr("h", sm.resume_h().to_string())
                .with_child(Element::new("undefined-condition", ns::STANZA_ERRORS))
                .with_child(Element::new("text", ns::STANZA_ERRORS).with_text(format!(
                    "handled-count-too-high: h={} send-count={}",
                    e.h, e.sent
                )));
            let _ = conn.out.try_send(Outbound::Data(f.to_xml("")));
            let _ = conn.out.try_send(Outbound::Close(None));
            return Err(());
        }
        // A second resume takes over from a connection still attached.
        self.supersede_conn(StreamError::with_text(
            StreamCondition::Conflict,
            "session resumed elsewhere",
        ));
        if let Some(t) = self.resume_timer.take() {
            ctx.cancel_future(t);
        }
        self.generation += 1;
        self.conn = Some(conn);
        self.ping_sent_at = None;
        self.attach_stream(inbound, ctx);
        let inbound_h = self.sm.as_ref().map(|s| s.resume_h()).unwrap_or(0);
        let resumed = Element::new("resumed", SM_NS)
            .with_attr("h", inbound_h.to_string())
            .with_attr("previd", id);
        let first = match sasl2 {
            Some(auth) => auth.success(self.jid.as_str(), vec![resumed]),
            None => resumed,
        };
        self.write(first.to_xml(""), ctx);
        // Everything not acknowledged goes again, in order (§5).
        let again: Vec<String> = self
            .sm
            .as_ref()
            .map(|s| s.unacked.iter().map(|e| e.to_xml(ns::CLIENT)).collect())
            .unwrap_or_default();
        for x in again {
            self.write(x, ctx);
        }
        let _g = self.span.enter();
        tracing::info!("session resumed");
        Ok(())
    }
}
