//! What happens to a stanza a local client sent (RFC 6120 §8, RFC 6121 §8):
//! server-handled iqs go to the modules, everything else is delivered by
//! address. Presence here is only what one node knows: available flags and
//! priorities of the user's own sessions; rosters come with the IM work.

use jid::{BareJid, FullJid, Jid};

use crate::c2s::session::bounce;
use crate::modules::{Addressee, IqKind};
use crate::router::{deliver, SessionEntry};
use crate::server::ServerCtx;
use crate::stanza_error::{StanzaCondition, StanzaError};
use crate::stream::StreamError;
use crate::xml::{ns, Element};

/// What the sending session must do after routing.
#[derive(Default)]
pub struct Outcome {
    /// A reply to write back to the sender.
    pub reply: Option<Element>,
    /// End the sender's stream.
    pub close: Option<StreamError>,
}

impl Outcome {
    fn reply(el: Option<Element>) -> Self {
        Outcome {
            reply: el,
            close: None,
        }
    }
}

/// Route a stanza from the local session `from` (its 'from' already stamped).
pub fn from_client(ctx: &ServerCtx, from: &FullJid, stanza: Element) -> Outcome {
    let to = match stanza.attr("to").map(Jid::new) {
        None => None,
        Some(Ok(j)) => Some(j),
        Some(Err(_)) => return Outcome::reply(bounce(&stanza, StanzaCondition::JidMalformed)),
    };
    match stanza.name.as_str() {
        "iq" => iq(ctx, from, stanza, to),
        "message" => Outcome::reply(message(
            ctx,
            stanza,
            to.unwrap_or_else(|| from.to_bare().into()),
        )),
        _ => Outcome::reply(presence(ctx, from, stanza, to)),
    }
}

fn is_local(ctx: &ServerCtx, jid: &Jid) -> bool {
    jid.domain().as_str() == ctx.config.domain
}

fn iq(ctx: &ServerCtx, from: &FullJid, iq: Element, to: Option<Jid>) -> Outcome {
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
    let addressee = match &to {
        None => Some(Addressee::Account),
        Some(j) if j.is_bare() && j.node().is_none() && is_local(ctx, j) => Some(Addressee::Host),
        Some(j) if j.is_bare() && j.to_bare() == own_bare => Some(Addressee::Account),
        _ => None,
    };
    if let Some(addressee) = addressee {
        let Some(kind) = kind else {
            return Outcome::default(); // a result or error for the server: nothing to do
        };
        return crate::modules::dispatch(ctx, from, &iq, kind, addressee);
    }
    let Some(to) = to else {
        return Outcome::default();
    };
    if !is_local(ctx, &to) {
        return Outcome::reply(bounce(&iq, StanzaCondition::RemoteServerNotFound));
    }
    match to.try_as_full() {
        Ok(full) => match ctx.router.get_full(full) {
            Some(entry) => {
                deliver(&entry, iq);
                Outcome::default()
            }
            None if kind.is_some() => {
                Outcome::reply(bounce(&iq, StanzaCondition::ServiceUnavailable))
            }
            None => Outcome::default(),
        },
        // RFC 6121 §8.5.3: an iq to another account's bare JID is answered by
        // the server on its behalf; nothing here handles one yet.
        Err(_) if kind.is_some() => {
            Outcome::reply(bounce(&iq, StanzaCondition::ServiceUnavailable))
        }
        Err(_) => Outcome::default(),
    }
}

/// RFC 6121 §8.5 for messages; returns an error reply for the sender, if any.
fn message(ctx: &ServerCtx, msg: Element, to: Jid) -> Option<Element> {
    let mtype = msg.attr("type").unwrap_or("normal").to_string();
    if !is_local(ctx, &to) {
        return bounce(&msg, StanzaCondition::RemoteServerNotFound);
    }
    let Some(node) = to.node() else {
        // Messages to the server itself: nothing answers them.
        return bounce(&msg, StanzaCondition::ServiceUnavailable).filter(|_| mtype != "headline");
    };
    let username = node.as_str();
    if !ctx.state.account_exists(username) {
        // §8.5.1: no such user.
        return match mtype.as_str() {
            "headline" | "error" => None,
            _ => bounce(&msg, StanzaCondition::ServiceUnavailable),
        };
    }
    if let Ok(full) = to.try_as_full() {
        if let Some(entry) = ctx.router.get_full(full) {
            deliver(&entry, msg);
            return None;
        }
        // §8.5.3.2.1: an offline full JID is treated as the bare JID, except groupchat.
        if mtype == "groupchat" {
            return bounce(&msg, StanzaCondition::ServiceUnavailable);
        }
    }
    let bare = to.to_bare();
    let targets = bare_targets(ctx, &bare);
    match mtype.as_str() {
        "groupchat" => bounce(&msg, StanzaCondition::ServiceUnavailable),
        "error" => {
            targets.iter().for_each(|t| deliver(t, msg.clone()));
            None
        }
        "headline" => {
            targets.iter().for_each(|t| deliver(t, msg.clone()));
            None
        }
        _ if targets.is_empty() => {
            // §8.5.2.2: no available resource. Offline storage comes with
            // the IM work; until then the sender learns it was not delivered.
            bounce(&msg, StanzaCondition::ServiceUnavailable)
        }
        _ => {
            targets.iter().for_each(|t| deliver(t, msg.clone()));
            None
        }
    }
}

/// §8.5.2.1: the available resources with the highest non-negative priority.
fn bare_targets(ctx: &ServerCtx, bare: &BareJid) -> Vec<SessionEntry> {
    let avail: Vec<SessionEntry> = ctx
        .router
        .resources(bare)
        .into_iter()
        .filter(|e| e.available && e.priority >= 0)
        .collect();
    let Some(top) = avail.iter().map(|e| e.priority).max() else {
        return Vec::new();
    };
    avail.into_iter().filter(|e| e.priority == top).collect()
}

/// RFC 6121 §4: broadcast presence goes to the user's own available
/// resources (contacts come with rosters); directed presence to its target.
fn presence(ctx: &ServerCtx, from: &FullJid, pres: Element, to: Option<Jid>) -> Option<Element> {
    let ptype = pres.attr("type").unwrap_or("available").to_string();
    match to {
        None => {
            let available = match ptype.as_str() {
                "available" => true,
                "unavailable" => false,
                // Subscription management without a 'to' is meaningless.
                _ => return bounce(&pres, StanzaCondition::BadRequest),
            };
            let priority = pres
                .get_child("priority", ns::CLIENT)
                .and_then(|p| p.text().trim().parse::<i8>().ok())
                .unwrap_or(0);
            let me = ctx.router.get_full(from)?;
            let was_available = me.available;
            ctx.router.set_presence(from, me.id, available, priority);
            if available || was_available {
                for entry in ctx.router.resources(&from.to_bare()) {
                    if entry.available || entry.id == me.id {
                        deliver(&entry, pres.clone());
                    }
                }
            }
            None
        }
        Some(to) => {
            if !is_local(ctx, &to) {
                return bounce(&pres, StanzaCondition::RemoteServerNotFound);
            }
            match to.try_as_full() {
                Ok(full) => {
                    if let Some(entry) = ctx.router.get_full(full) {
                        deliver(&entry, pres);
                    }
                }
                Err(bare) => {
                    for entry in ctx
                        .router
                        .resources(bare)
                        .into_iter()
                        .filter(|e| e.available)
                    {
                        deliver(&entry, pres.clone());
                    }
                }
            }
            None
        }
    }
}

/// An available session ended: the user's other resources see it leave
/// (RFC 6121 §4.5.2).
pub fn session_ended(ctx: &ServerCtx, jid: &FullJid) {
    let unavailable = Element::new("presence", ns::CLIENT)
        .with_attr("type", "unavailable")
        .with_attr("from", jid.to_string());
    for entry in ctx.router.resources(&jid.to_bare()) {
        if entry.available {
            deliver(&entry, unavailable.clone());
        }
    }
}
