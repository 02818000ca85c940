//! Roster management (RFC 6121 §2) with roster versioning (XEP-0237).

use jid::BareJid;

use super::subscription::SubKind;
use super::{Addressee, IqKind, IqRequest, IqResponse, Module};
use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::xml::{ns, Element};
use crate::im::context::ImCtx;
use crate::model::state::{Command, RosterItem};

pub const NS: &str = "jabber:iq:roster";
/// Longest item name or group name we keep (RFC 6121 §2.1.2.5 lets servers cap it).
pub const MAX_TEXT: usize = 1023;
/// Most groups on one item.
pub const MAX_GROUPS: usize = 64;

pub struct Roster;

/// `<item/>` as clients see it.
pub fn item_element(item: &RosterItem) -> Element {
    let mut el = Element::new("item", NS)
        .with_attr("jid", item.jid.clone())
        .with_attr("subscription", item.sub.attr());
    if let Some(n) = &item.name {
        el.set_attr("name", n.clone());
    }
    if item.sub.pending_out {
        el.set_attr("ask", "subscribe");
    }
    if item.approved {
        el.set_attr("approved", "true");
    }
    for g in &item.groups {
        el.push_child(Element::new("group", NS).with_text(g.clone()));
    }
    el
}

/// Push one item (or its removal) to each interested resource (§2.1.6),
/// on whichever node it is.
fn push(ctx: &ImCtx, user: &BareJid, item: Element, ver: u64) {
    let query = Element::new("query", NS)
        .with_attr("ver", ver.to_string())
        .with_child(item);
    for t in crate::routing::route::resources(ctx, user) {
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", format!("push{ver}"))
            .with_attr("to", t.jid.clone())
            .with_child(query.clone());
        crate::routing::route::send(ctx, &t, iq, Some(crate::routing::route::Require::Roster));
    }
}

fn username(ctx: &ImCtx, user: &BareJid) -> String {
    ctx.config.account_of(user).unwrap_or_default()
}

/// What a roster push says of `item`: the item, or its removal.
fn pushed_element(item: &RosterItem) -> Element {
    if item.in_roster {
        item_element(item)
    } else {
        Element::new("item", NS)
            .with_attr("jid", item.jid.clone())
            .with_attr("subscription", "remove")
    }
}

/// A client's roster set: committed, then pushed and answered; the session
/// goes on meanwhile.
fn store_push_answer(ctx: &ImCtx, user: &BareJid, item: RosterItem) -> IqResponse {
    let el = pushed_element(&item);
    let user = user.clone();
    let cmd = Command::RosterPut {
        username: username(ctx, &user),
        item,
        expect: None,
    };
    super::commit_then(ctx, cmd, "roster write", move |ctx, applied| {
        push(ctx, &user, el, applied.roster_version);
        Ok(None).into()
    })
}

/// Store a changed item (awaited, not blocking); push it only if what the
/// client sees changed (a pending inbound request, for one, is not part of
/// the roster).
///
/// Only if the stored item is still `old`: a subscription change is
/// computed from it, and another change to the same item (the contact's
/// answer, on any node) may have landed meanwhile. Returns false when one
/// did (nothing was written): read the item again and recompute.
pub async fn store(
    ctx: &ImCtx,
    user: &BareJid,
    old: Option<&RosterItem>,
    item: RosterItem,
) -> bool {
    let seen = |i: &RosterItem| i.in_roster.then(|| item_element(i));
    let pushed = (old.and_then(seen) != seen(&item)).then(|| pushed_element(&item));
    let cmd = Command::RosterPut {
        username: username(ctx, user),
        item,
        expect: Some(crate::model::state::ExpectedItem { item: old.cloned() }),
    };
    match ctx.replicator.commit_async(&cmd).await {
        Ok(applied) => {
            if let Some(el) = pushed {
                push(ctx, user, el, applied.roster_version);
            }
            true
        }
        Err(crate::model::state::StateError::Superseded(what)) => {
            tracing::debug!(%what, "roster item changed meanwhile; computing again");
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "roster write failed");
            true
        }
    }
}

fn bad(cond: StanzaCondition, text: &str) -> IqResponse {
    Err(StanzaError::with_text(cond, text)).into()
}

impl Roster {
    fn get(&self, req: &IqRequest) -> IqResponse {
        let ctx = req.server;
        let user = username(ctx, &req.from.to_bare());
        ctx.router
            .update(req.from, req.session_id, |e| e.interested = true);
        let ver = ctx.state.roster_version(&user).unwrap_or(0);
        // XEP-0237 §2.3: an up-to-date client gets an empty result.
        if req.payload.attr("ver") == Some(ver.to_string().as_str()) {
            return Ok(None).into();
        }
        let mut q = Element::new("query", NS).with_attr("ver", ver.to_string());
        for item in ctx
            .state
            .roster(&user)
            .unwrap_or_default()
            .iter()
            .filter(|i| i.in_roster)
        {
            q.push_child(item_element(item));
        }
        Ok(Some(q)).into()
    }

    fn set(&self, req: &IqRequest) -> IqResponse {
        let ctx = req.server;
        let user_bare = req.from.to_bare();
        let user = username(ctx, &user_bare);
        // RFC 6121 §2.3.3: exactly one item.
        let mut items = req.payload.elements().filter(|e| e.is("item", NS));
        let (Some(el), None) = (items.next(), items.next()) else {
            return bad(
                StanzaCondition::BadRequest,
                "a roster set carries exactly one item",
            );
        };
        let Some(jid) = el.attr("jid") else {
            return bad(StanzaCondition::BadRequest, "item without a jid");
        };
        let Ok(contact) = BareJid::new(jid) else {
            return bad(
                StanzaCondition::JidMalformed,
                "item jid is not a valid bare JID",
            );
        };
        if jid.contains('/') {
            return bad(StanzaCondition::BadRequest, "roster items are bare JIDs");
        }
        let existing = ctx
            .state
            .roster_item(&user, contact.as_str())
            .ok()
            .flatten();
        if el.attr("subscription") == Some("remove") {
            return remove(ctx, req, &user_bare, existing);
        }
        let name = el
            .attr("name")
            .map(str::to_string)
            .filter(|n| !n.is_empty());
        if name.as_ref().is_some_and(|n| n.len() > MAX_TEXT) {
            return bad(StanzaCondition::NotAcceptable, "name too long");
        }
        let mut groups: Vec<String> = Vec::new();
        for g in el.elements().filter(|e| e.is("group", NS)) {
            let g = g.text();
            if g.is_empty() {
                return bad(StanzaCondition::NotAcceptable, "empty group name");
            }
            if g.len() > MAX_TEXT {
                return bad(StanzaCondition::NotAcceptable, "group name too long");
            }
            if groups.contains(&g) {
                return bad(StanzaCondition::BadRequest, "duplicate group");
            }
            groups.push(g);
        }
        if groups.len() > MAX_GROUPS {
            return bad(StanzaCondition::NotAcceptable, "too many groups");
        }
        // 'subscription' and 'ask' from a client are ignored (§2.1.2.5).
        let mut item = existing.unwrap_or_else(|| RosterItem::new(contact.as_str()));
        item.name = name;
        item.groups = groups;
        item.in_roster = true;
        store_push_answer(ctx, &user_bare, item)
    }
}

/// §2.5: removing an item cancels subscriptions both ways first.
fn remove(
    ctx: &ImCtx,
    req: &IqRequest,
    user: &BareJid,
    existing: Option<RosterItem>,
) -> IqResponse {
    let Some(item) = existing.filter(|i| i.in_roster) else {
        return bad(StanzaCondition::ItemNotFound, "no such roster item");
    };
    let Ok(contact) = BareJid::new(&item.jid) else {
        return bad(StanzaCondition::ItemNotFound, "no such roster item");
    };
    let mut kinds = Vec::new();
    if item.sub.to || item.sub.pending_out {
        kinds.push(SubKind::Unsubscribe);
    }
    if item.sub.from || item.sub.pending_in {
        kinds.push(SubKind::Unsubscribed);
    }
    let _ = req;
    let Some(c) = ctx.arc() else {
        return bad(StanzaCondition::InternalServerError, "stopping");
    };
    let user = user.clone();
    IqResponse::later(async move {
        for kind in kinds {
            let p = Element::new("presence", ns::CLIENT)
                .with_attr("type", kind.as_str())
                .with_attr("from", user.to_string())
                .with_attr("to", contact.to_string());
            if kind == SubKind::Unsubscribed {
                if let Some(a) = c.presence.get(&user) {
                    a.do_send(crate::im::presence::SendUnavailable {
                        to: contact.clone(),
                    });
                }
            }
            crate::im::presence::subscription_inbound(&c, p, kind, &user, &contact).await;
        }
        let cmd = Command::RosterDelete {
            username: username(&c, &user),
            jid: item.jid.clone(),
        };
        match c.replicator.commit_async(&cmd).await {
            Ok(applied) => {
                let el = Element::new("item", NS)
                    .with_attr("jid", item.jid)
                    .with_attr("subscription", "remove");
                push(&c, &user, el, applied.roster_version);
                Ok(None).into()
            }
            Err(e) => {
                tracing::error!(error = %e, "roster delete failed");
                bad(StanzaCondition::InternalServerError, "storage error")
            }
        }
    })
}

impl Module for Roster {
    fn handles(&self) -> Vec<(IqKind, Addressee, &'static str)> {
        vec![
            (IqKind::Get, Addressee::Account, NS),
            (IqKind::Set, Addressee::Account, NS),
            (IqKind::Get, Addressee::OtherAccount, NS),
            (IqKind::Set, Addressee::OtherAccount, NS),
        ]
    }

    fn handle_iq(&self, req: &IqRequest) -> IqResponse {
        // §2.1.5 / §2.3.3: only the user may read or change their roster.
        if req.addressee == Addressee::OtherAccount {
            return bad(StanzaCondition::Forbidden, "not your roster");
        }
        match req.kind {
            IqKind::Get => self.get(req),
            IqKind::Set => self.set(req),
        }
    }
}
