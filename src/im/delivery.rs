//! What happens to a stanza a local client sent (RFC 6120 §8, RFC 6121 §8):
//! iqs for the server or an account go to the modules; messages are
//! delivered by address, stored offline (XEP-0160) when nobody can take
//! them, and copied to carbons-enabled resources (XEP-0280); presence goes
//! to the presence module.

use actix::Addr;
use jid::{BareJid, FullJid, Jid};

use crate::base::stanza_error::bounce;
use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::stream_error::StreamError;
use crate::base::xml::{ns, Element};
use crate::im::context::ImCtx;
use crate::im::modules::hooks::{Verdict, Waits};
use crate::im::modules::{blocking, Addressee, IqKind};
use crate::im::presence::UserPresence;
use crate::model::state::{Command, StateError};
use crate::routing::route::answer;
use starling_cluster::Receipt;

/// What the sending session must do after routing.
#[derive(Default)]
pub struct Outcome {
    /// Stanzas to write to the sender before the reply.
    pub before: Vec<Element>,
    /// A reply to write back to the sender.
    pub reply: Option<Element>,
    /// End the sender's stream.
    pub close: Option<StreamError>,
    /// The rest comes later (a write through the cluster): the session
    /// awaits it without holding anything else up, then acts on it.
    pub later: Option<crate::im::modules::Later<Outcome>>,
}

impl Outcome {
    fn reply(el: Option<Element>) -> Self {
        Outcome {
            reply: el,
            ..Outcome::default()
        }
    }
}

/// The session a stanza came from.
pub struct Sender<'a> {
    pub jid: &'a FullJid,
    pub session_id: u64,
    pub presence: &'a Addr<UserPresence>,
}

/// Route a stanza from a local session (its 'from' already stamped).
/// `receipt` (messages) is answered once the message is owned.
pub fn from_client(
    ctx: &ImCtx,
    sender: &Sender,
    stanza: Element,
    receipt: Option<Receipt>,
) -> Outcome {
    let to = match stanza.attr("to").map(Jid::new) {
        None => None,
        Some(Ok(j)) => Some(j),
        Some(Err(_)) => {
            answer(receipt, true);
            return Outcome::reply(bounce(&stanza, StanzaCondition::JidMalformed));
        }
    };
    if stanza.name != "message" {
        answer(receipt, true);
        return from_client_other(ctx, sender, stanza, to);
    }
    let from = sender.jid;
    let to = to.unwrap_or_else(|| from.to_bare().into());
    // The message pipeline (modules/hooks.rs): blocking, archive, carbons, ...
    let (mut stanza, mut waits) = (stanza, Waits::default());
    if let Verdict::Stop(reply) =
        ctx.modules
            .hooks
            .outbound(ctx, from, &to, &mut stanza, &mut waits)
    {
        answer(receipt, true);
        return Outcome::reply(reply);
    }
    // The sender's archive id went into its carbons; the contact gets none.
    crate::im::modules::archive::strip_forged(&mut stanza, from.to_bare().as_str());
    let from = Jid::from(from.clone());
    Outcome::reply(message_owned(
        ctx,
        stanza,
        to,
        None,
        receipt,
        Arrival::Fresh { from, waits },
    ))
}

/// Whether a message is new to the server (it passes the pipeline's
/// inbound side: blocking, the recipient's archive) or routed again after
/// a session or node that held it went away (it passed already).
pub enum Arrival {
    Fresh { from: Jid, waits: Waits },
    Again,
}

fn from_client_other(ctx: &ImCtx, sender: &Sender, stanza: Element, to: Option<Jid>) -> Outcome {
    let from = sender.jid;
    // RFC 6121 §3: subscription changes write rosters through the cluster;
    // the session waits for them without holding its thread.
    let sub = (stanza.name == "presence")
        .then(|| {
            stanza
                .attr("type")
                .and_then(crate::im::modules::subscription::SubKind::parse)
        })
        .flatten();
    if let (Some(kind), Some(to), Some(c)) = (sub, &to, ctx.arc()) {
        let (from, contact) = (from.clone(), to.to_bare());
        return Outcome {
            later: Some(Box::pin(async move {
                Outcome::reply(
                    crate::im::presence::subscription_outbound(&c, &from, stanza, kind, contact)
                        .await,
                )
            })),
            ..Outcome::default()
        };
    }
    match stanza.name.as_str() {
        "iq" => iq(ctx, sender, stanza, to),
        _ => Outcome::reply(crate::im::presence::from_client(
            ctx,
            from,
            sender.session_id,
            sender.presence,
            stanza,
            to,
        )),
    }
}

fn is_local(ctx: &ImCtx, jid: &Jid) -> bool {
    ctx.config.hosts_accounts(jid.domain().as_str())
}

fn iq(ctx: &ImCtx, sender: &Sender, iq: Element, to: Option<Jid>) -> Outcome {
    let from = sender.jid;
    let kind = match iq.attr("type") {
        Some("get") => Some(IqKind::Get),
        Some("set") => Some(IqKind::Set),
        Some("result") | Some("error") => None,
        _ => {
            return Outcome::reply(Some(
                StanzaError::with_text(
                    StanzaCondition::BadRequest,
                    "iq type must be get, set, result or error",
                )
                .reply_to(&iq),
            ))
        }
    };
    if iq.attr("id").is_none() {
        return Outcome::reply(bounce(&iq, StanzaCondition::BadRequest));
    }
    // RFC 6120 §8.2.3: a get or set carries exactly one payload element.
    if kind.is_some() && iq.elements().count() != 1 {
        return Outcome::reply(Some(
            StanzaError::with_text(
                StanzaCondition::BadRequest,
                "iq get/set needs exactly one child element",
            )
            .reply_to(&iq),
        ));
    }
    let own_bare = from.to_bare();
    let (addressee, target) = match &to {
        None => (Some(Addressee::Account), None),
        Some(j) if j.is_bare() && j.node().is_none() && is_local(ctx, j) => {
            (Some(Addressee::Host), None)
        }
        Some(j) if j.is_bare() && j.to_bare() == own_bare => (Some(Addressee::Account), None),
        Some(j) if j.is_bare() && is_local(ctx, j) => {
            (Some(Addressee::OtherAccount), Some(j.to_bare()))
        }
        _ => (None, None),
    };
    if let Some(addressee) = addressee {
        let Some(kind) = kind else {
            // A result or error for the server: an answer to its caps
            // question (XEP-0115), or nothing to do.
            if addressee == Addressee::Host {
                crate::im::modules::caps::answered(ctx, &iq);
            }
            return Outcome::default();
        };
        if let Some(t) = &target {
            let owner = ctx.config.account_of(t).unwrap_or_default();
            if !ctx.state.account_exists(&owner) || blocking::blocks(ctx, &owner, from.as_str()) {
                return Outcome::reply(bounce(&iq, StanzaCondition::ServiceUnavailable));
            }
        }
        return crate::im::modules::dispatch(
            ctx,
            from,
            sender.session_id,
            &iq,
            kind,
            addressee,
            target,
        );
    }
    let Some(to) = to else {
        return Outcome::default();
    };
    // RFC 6121 §2.1.6: roster pushes come only from the user's own server;
    // a client cannot push into someone else's roster.
    if kind == Some(IqKind::Set)
        && iq
            .elements()
            .any(|p| p.ns == crate::im::modules::roster::NS)
    {
        return Outcome::reply(Some(
            StanzaError::with_text(
                StanzaCondition::Forbidden,
                "roster pushes come from the server",
            )
            .reply_to(&iq),
        ));
    }
    if !is_local(ctx, &to) {
        // A remote server or a component.
        ctx.elsewhere.send(ctx, iq);
        return Outcome::default();
    }
    let user = ctx.config.account_of(from).unwrap_or_default();
    if kind.is_some() && blocking::blocks(ctx, &user, to.as_str()) {
        return Outcome::reply(Some(blocking::blocked_error(&iq)));
    }
    let recipient = ctx.config.account_of(&to).unwrap_or_default();
    let blocked = blocking::blocks(ctx, &recipient, from.as_str());
    match to.try_as_full() {
        Ok(full) => match crate::routing::route::full(ctx, full).filter(|_| !blocked) {
            Some(t) => {
                crate::routing::route::send(ctx, &t, iq, None);
                Outcome::default()
            }
            None if kind.is_some() => {
                Outcome::reply(bounce(&iq, StanzaCondition::ServiceUnavailable))
            }
            None => Outcome::default(),
        },
        Err(_) => Outcome::default(),
    }
}

/// RFC 6121 §8.5 for a message that arrived from elsewhere (a remote
/// server, a component) to a local or remote address; returns an error
/// reply for the sender, if any.
pub fn message(ctx: &ImCtx, msg: Element, to: Jid) -> Option<Element> {
    let from = msg
        .attr("from")
        .and_then(|f| Jid::new(f).ok())
        .unwrap_or_else(|| to.clone());
    let waits = Waits::default();
    message_owned(ctx, msg, to, None, None, Arrival::Fresh { from, waits })
}

/// A message routed once already (a session that held it ended before the
/// client acknowledged it): routed again to what can take it now.
pub fn message_again(ctx: &ImCtx, msg: Element, to: Jid) -> Option<Element> {
    // An archive query's result was for the session that asked; it ended.
    if msg
        .get_child("result", crate::im::modules::mam::NS)
        .is_some()
    {
        tracing::debug!(to = %to, "archive result for an ended session; dropped");
        return None;
    }
    message_owned(ctx, msg, to, None, None, Arrival::Again)
}

/// A message that must not be lost: routed by bare JID (sessions on
/// `exclude` are skipped: that node was given up on), stored offline last.
/// True once it is owned: written by a session here (see
/// `router::deliver_owned`), taken by the node holding the session,
/// answered with an error, or committed offline.
pub async fn store_or_route(
    ctx: &std::sync::Arc<ImCtx>,
    msg: Element,
    to: &FullJid,
    exclude: Option<u64>,
) -> bool {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let to = Jid::from(to.to_bare());
    if let Some(reply) = message_owned(ctx, msg, to, exclude, Some(tx), Arrival::Again) {
        route_reply(ctx, reply);
    }
    rx.await.unwrap_or(false)
}

/// Send an error reply the server made to whoever it is addressed to.
pub fn route_reply(ctx: &ImCtx, reply: Element) {
    let Some(to) = reply.attr("to").and_then(|t| Jid::new(t).ok()) else {
        return;
    };
    if !is_local(ctx, &to) {
        ctx.elsewhere.send(ctx, reply);
    } else if let Ok(full) = to.try_as_full() {
        match crate::routing::route::full(ctx, full) {
            Some(t) => crate::routing::route::send(ctx, &t, reply, None),
            None => tracing::info!(to = %full, "error reply for a session that is gone; dropped"),
        }
    }
}

/// [`message`] with a receipt, answered once the message is owned (see
/// [`store_or_route`]) or, false, when it cannot be.
pub fn message_owned(
    ctx: &ImCtx,
    mut msg: Element,
    to: Jid,
    exclude: Option<u64>,
    receipt: Option<Receipt>,
    arrival: Arrival,
) -> Option<Element> {
    let mtype = msg.attr("type").unwrap_or("normal").to_string();
    let rt = ctx.replicator.runtime();
    let (from, mut waits) = match arrival {
        Arrival::Fresh { from, waits } => (Some(from), waits),
        Arrival::Again => (None, Waits::default()),
    };
    let receipt = if is_local(ctx, &to) && to.node().is_some() && from.is_some() {
        receipt // wrapped below, once the recipient's side has run too
    } else {
        waits.wrap(receipt, rt)
    };
    if !is_local(ctx, &to) {
        ctx.elsewhere.send(ctx, msg);
        answer(receipt, true);
        return None;
    }
    // Answered at once unless a path below takes it along.
    let handled = |receipt, reply: Option<Element>| {
        answer(receipt, true);
        reply
    };
    let Some(username) = ctx.config.account_of(&to) else {
        // Messages to the server itself: nothing answers them.
        return handled(
            receipt,
            bounce(&msg, StanzaCondition::ServiceUnavailable).filter(|_| mtype != "headline"),
        );
    };
    let username = username.as_str();
    if !ctx.state.account_exists(username) {
        // §8.5.1: no such user.
        return handled(
            waits.wrap(receipt, rt),
            match mtype.as_str() {
                "headline" | "error" => None,
                _ => bounce(&msg, StanzaCondition::ServiceUnavailable),
            },
        );
    }
    // The pipeline's inbound side (blocking: XEP-0191 §3.5; the archive).
    let receipt = match &from {
        Some(from) => {
            let verdict = ctx
                .modules
                .hooks
                .inbound(ctx, username, from, &mut msg, &mut waits);
            let receipt = waits.wrap(receipt, rt);
            if let Verdict::Stop(reply) = verdict {
                return handled(receipt, reply);
            }
            receipt
        }
        None => receipt,
    };
    let bare = to.to_bare();
    if let Ok(full) = to.try_as_full() {
        if let Some(t) = crate::routing::route::full(ctx, full).filter(|t| Some(t.node) != exclude)
        {
            ctx.modules
                .hooks
                .delivering(ctx, &bare, &msg, std::slice::from_ref(&t));
            crate::routing::route::send_owned(ctx, &t, msg, None, receipt);
            return None;
        }
        // §8.5.3.2.1: an offline full JID is treated as the bare JID, except groupchat.
        if mtype == "groupchat" {
            return handled(receipt, bounce(&msg, StanzaCondition::ServiceUnavailable));
        }
    }
    let mut targets = bare_targets(ctx, &bare);
    targets.retain(|t| Some(t.node) != exclude || t.local.is_some());
    match mtype.as_str() {
        "groupchat" => handled(receipt, bounce(&msg, StanzaCondition::ServiceUnavailable)),
        "error" | "headline" => {
            targets
                .iter()
                .for_each(|t| crate::routing::route::send(ctx, t, msg.clone(), None));
            handled(receipt, None)
        }
        // §8.5.2.2 / XEP-0160: nobody to take it now: keep it for later.
        // Older messages still wait offline: behind them, in order.
        _ if targets.is_empty() || ctx.presence.offline_pending(ctx, username) => {
            store_offline(ctx, username, msg, receipt)
        }
        _ => {
            ctx.modules.hooks.delivering(ctx, &bare, &msg, &targets);
            // Owned once the first of the chosen resources has it.
            let mut receipt = receipt;
            for t in &targets {
                crate::routing::route::send_owned(ctx, t, msg.clone(), None, receipt.take());
            }
            None
        }
    }
}

/// XEP-0160 with a XEP-0203 delay stamp; a full queue answers
/// `<resource-constraint/>` rather than dropping the message. The commit is
/// awaited on the Raft runtime, never by the calling thread; `receipt` is
/// answered when it is done (false: not stored, the holder keeps it). With
/// no receipt, a failed commit is answered to the sender with an error.
fn store_offline(
    ctx: &ImCtx,
    username: &str,
    mut msg: Element,
    receipt: Option<Receipt>,
) -> Option<Element> {
    if msg.get_child("body", ns::CLIENT).is_none() && msg.elements().next().is_none() {
        answer(receipt, true);
        return None; // nothing worth keeping
    }
    let Some(c) = ctx.arc() else {
        answer(receipt, false);
        return bounce(&msg, StanzaCondition::InternalServerError);
    };
    msg.push_child(
        Element::new("delay", "urn:xmpp:delay")
            .with_attr("from", ctx.config.domain.clone())
            .with_attr(
                "stamp",
                crate::base::time::xep82(crate::base::time::unix_now()),
            )
            .with_text("Offline Storage"),
    );
    let cmd = Command::OfflinePush {
        username: username.to_string(),
        stanza: msg.to_xml(ns::CLIENT),
        quota: ctx.config.limits.offline_messages,
        quota_bytes: ctx.config.limits.offline_bytes,
    };
    let owning = ctx.replicator.owning();
    let in_flight = ctx.presence.offline_queued(username);
    // Queued now, in arrival order: the user reads them back in that order
    // (and after what an ending session gives back: `offline_order`).
    let committed = {
        let _order = ctx.presence.offline_order(username);
        ctx.replicator.commit_in_order(&cmd)
    };
    ctx.replicator.runtime().spawn(async move {
        let _owning = owning;
        let _in_flight = in_flight;
        match committed.await {
            Ok(_) => {
                answer(receipt, true);
                // XEP-0357: the user's devices hear of it.
                let user = cmd_user(&cmd);
                let waiting = c.state.offline_count(user);
                c.modules.push.missed(&c, user, &msg, waiting);
            }
            Err(StateError::QuotaExceeded(_)) => {
                msg.children.pop();
                let err = StanzaError::with_text(
                    StanzaCondition::ResourceConstraint,
                    "the recipient's offline storage is full",
                )
                .reply_to(&msg);
                route_reply(&c, err);
                answer(receipt, true);
            }
            Err(e) => {
                tracing::warn!(error = %e, to = %cmd_user(&cmd), "offline storage failed");
                match receipt {
                    Some(r) => {
                        let _ = r.send(false);
                    }
                    None => {
                        msg.children.pop();
                        if let Some(err) = bounce(&msg, StanzaCondition::InternalServerError) {
                            route_reply(&c, err);
                        }
                    }
                }
            }
        }
    });
    None
}

fn cmd_user(cmd: &Command) -> &str {
    match cmd {
        Command::OfflinePush { username, .. } => username,
        _ => "",
    }
}

/// §8.5.2.1: the available resources with the highest non-negative
/// priority, on any node.
fn bare_targets(ctx: &ImCtx, bare: &BareJid) -> Vec<crate::routing::route::Target> {
    let avail: Vec<_> = crate::routing::route::resources(ctx, bare)
        .into_iter()
        .filter(|t| t.available && t.priority >= 0)
        .collect();
    let Some(top) = avail.iter().map(|t| t.priority).max() else {
        return Vec::new();
    };
    avail.into_iter().filter(|t| t.priority == top).collect()
}
