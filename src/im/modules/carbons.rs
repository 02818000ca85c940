//! XEP-0280 Message Carbons: copies of a user's chats to their other
//! resources that asked for them.

use jid::FullJid;

use super::{Addressee, IqKind, IqRequest, IqResponse, Module};
use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::xml::{ns, Element};
use crate::im::context::ImCtx;
use crate::routing::route::{Require, Target};

pub const NS: &str = "urn:xmpp:carbons:2";
const FORWARD: &str = "urn:xmpp:forward:0";
const HINTS: &str = "urn:xmpp:hints";

pub struct Carbons;

/// §6: chats, and normal messages with a body, unless marked private or
/// no-copy, and never a carbon itself.
pub fn eligible(msg: &Element) -> bool {
    let t = msg.attr("type").unwrap_or("normal");
    let kind_ok = t == "chat" || (t == "normal" && msg.get_child("body", ns::CLIENT).is_some());
    kind_ok
        && msg.get_child("private", NS).is_none()
        && msg.get_child("no-copy", HINTS).is_none()
        && msg.get_child("received", NS).is_none()
        && msg.get_child("sent", NS).is_none()
}

fn wrap(kind: &str, user: &jid::BareJid, to: &str, msg: &Element) -> Element {
    Element::new("message", ns::CLIENT)
        .with_attr("from", user.to_string())
        .with_attr("to", to)
        .with_attr("type", msg.attr("type").unwrap_or("normal"))
        .with_child(
            Element::new(kind, NS)
                .with_child(Element::new("forwarded", FORWARD).with_child(msg.clone())),
        )
}

/// Copies of a message `user` received, for carbons-enabled resources
/// other than those it was delivered to.
pub fn copy_received(ctx: &ImCtx, user: &jid::BareJid, msg: &Element, delivered_to: &[Target]) {
    if !eligible(msg) {
        return;
    }
    let skip: Vec<&str> = delivered_to.iter().map(|d| d.jid.as_str()).collect();
    for t in crate::routing::route::resources_except(ctx, user, &skip) {
        crate::routing::route::send(
            ctx,
            &t,
            wrap("received", user, &t.jid, msg),
            Some(Require::Carbons),
        );
    }
}

/// Copies of a message `from` sent, for its other carbons-enabled resources.
pub fn copy_sent(ctx: &ImCtx, from: &FullJid, msg: &Element) {
    if !eligible(msg) {
        return;
    }
    let user = from.to_bare();
    for t in crate::routing::route::resources_except(ctx, &user, &[from.as_str()]) {
        crate::routing::route::send(
            ctx,
            &t,
            wrap("sent", &user, &t.jid, msg),
            Some(Require::Carbons),
        );
    }
}

/// Carbons in the message pipeline (place 20): copies of what a user sent
/// and received go to their other carbons-enabled resources.
impl super::hooks::MessageHook for Carbons {
    fn order(&self) -> u16 {
        20
    }

    fn outbound(
        &self,
        ctx: &ImCtx,
        from: &FullJid,
        _to: &jid::Jid,
        msg: &mut Element,
        _waits: &mut super::hooks::Waits,
    ) -> super::hooks::Verdict {
        copy_sent(ctx, from, msg);
        super::hooks::Verdict::Continue
    }

    fn delivering(&self, ctx: &ImCtx, user: &jid::BareJid, msg: &Element, to: &[Target]) {
        copy_received(ctx, user, msg, to);
    }
}

impl Module for Carbons {
    fn features(&self, _: &ImCtx) -> Vec<&'static str> {
        vec![NS]
    }

    fn handles(&self) -> Vec<(IqKind, Addressee, &'static str)> {
        vec![
            (IqKind::Set, Addressee::Account, NS),
            (IqKind::Set, Addressee::Host, NS),
        ]
    }

    fn handle_iq(&self, req: &IqRequest) -> IqResponse {
        let on = match req.payload.name.as_str() {
            "enable" => true,
            "disable" => false,
            _ => return Err(StanzaError::new(StanzaCondition::BadRequest)).into(),
        };
        req.server
            .router
            .update(req.from, req.session_id, |e| e.carbons = on);
        Ok(None).into()
    }
}
