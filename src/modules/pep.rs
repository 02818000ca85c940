//! Personal Eventing Protocol (XEP-0163): every account is a
//! publish-subscribe service (XEP-0060) at its bare JID. Nodes are made on
//! first publish (§3, `#auto-create`), kept in replicated state
//! (`state/pubsub.rs`), and every publish or retraction is told to:
//!
//! - the owner's resources and the contacts who may read the node (the
//!   access model, XEP-0060 §4.5) whose capabilities (XEP-0115, `caps.rs`)
//!   ask for `NODE+notify` (§4.3.1); contacts of other servers get it at
//!   their bare JID, where their server delivers it;
//! - explicit subscribers (XEP-0060 §6.1).
//!
//! A session coming online with `+notify` interests gets the last item of
//! each node it may read, of its contacts and its own (§4.3.2).
//! Publish options (XEP-0223) are preconditions: a node configured
//! otherwise answers `<precondition-not-met/>` and keeps its items.

use jid::{BareJid, FullJid, Jid};

use super::pubsub_config::{self, DATA, NODE_CONFIG, PUBLISH_OPTIONS};
use super::{Addressee, IqKind, IqRequest, IqResponse, Module};
use crate::server::ServerCtx;
use crate::stanza_error::{StanzaCondition, StanzaError};
use crate::state::pubsub::{AccessModel, NodeConfig, NodeMeta, PubsubOp};
use crate::state::Command;
use crate::xml::{ns, parse_fragment, Element};

pub const NS: &str = "http://jabber.org/protocol/pubsub";
pub const OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
/// What `pubsub#max_items` = `max` means, and the most items a node keeps.
pub const MAX_ITEMS: u32 = 256;
/// The most nodes one account keeps.
pub const MAX_NODES: usize = 512;

pub struct Pep;

impl Module for Pep {
    fn account_features(&self, _: &ServerCtx) -> Vec<&'static str> {
        vec![
            NS,
            "http://jabber.org/protocol/pubsub#access-open",
            "http://jabber.org/protocol/pubsub#access-presence",
            "http://jabber.org/protocol/pubsub#access-roster",
            "http://jabber.org/protocol/pubsub#access-whitelist",
            "http://jabber.org/protocol/pubsub#auto-create",
            "http://jabber.org/protocol/pubsub#auto-subscribe",
            "http://jabber.org/protocol/pubsub#config-node",
            "http://jabber.org/protocol/pubsub#create-and-configure",
            "http://jabber.org/protocol/pubsub#create-nodes",
            "http://jabber.org/protocol/pubsub#delete-items",
            "http://jabber.org/protocol/pubsub#delete-nodes",
            "http://jabber.org/protocol/pubsub#filtered-notifications",
            "http://jabber.org/protocol/pubsub#item-ids",
            "http://jabber.org/protocol/pubsub#last-published",
            "http://jabber.org/protocol/pubsub#persistent-items",
            "http://jabber.org/protocol/pubsub#publish",
            "http://jabber.org/protocol/pubsub#publish-options",
            "http://jabber.org/protocol/pubsub#purge-nodes",
            "http://jabber.org/protocol/pubsub#retract-items",
            "http://jabber.org/protocol/pubsub#retrieve-default",
            "http://jabber.org/protocol/pubsub#retrieve-items",
            "http://jabber.org/protocol/pubsub#subscribe",
        ]
    }

    fn handles(&self) -> Vec<(IqKind, Addressee, &'static str)> {
        let mut v = Vec::new();
        for kind in [IqKind::Get, IqKind::Set] {
            for to in [Addressee::Account, Addressee::OtherAccount] {
                v.push((kind, to, NS));
                v.push((kind, to, OWNER));
            }
        }
        v
    }

    fn handle_iq(&self, req: &IqRequest) -> IqResponse {
        let owner_bare = match (&req.addressee, &req.target) {
            (Addressee::OtherAccount, Some(t)) => t.clone(),
            _ => req.from.to_bare(),
        };
        let is_owner = owner_bare == req.from.to_bare();
        let Some(op) = req.payload.elements().next() else {
            return bad("an empty pubsub request").into();
        };
        let owner_ns = req.payload.ns == OWNER;
        if owner_ns && !is_owner {
            return Err(StanzaError::new(StanzaCondition::Forbidden)).into();
        }
        let svc = Service {
            ctx: req.server,
            owner: owner_bare.node().map(|n| n.as_str()).unwrap_or_default(),
            owner_bare: &owner_bare,
            from: req.from,
            is_owner,
        };
        match (owner_ns, req.kind, op.name.as_str()) {
            (false, IqKind::Set, "publish") => svc.publish(req.payload, op),
            (false, IqKind::Set, "retract") => svc.retract(op),
            (false, IqKind::Set, "create") => svc.create(req.payload, op),
            (false, IqKind::Set, "subscribe") => svc.subscribe(op, true),
            (false, IqKind::Set, "unsubscribe") => svc.subscribe(op, false),
            (false, IqKind::Get, "items") => svc.items(op).into(),
            (false, IqKind::Get, "subscriptions") => svc.subscriptions(op).into(),
            (false, IqKind::Get, "affiliations") => svc.affiliations(op).into(),
            (true, IqKind::Get, "configure") => svc.configure_get(op).into(),
            (true, IqKind::Set, "configure") => svc.configure_set(op),
            (true, IqKind::Get, "default") => Ok(Some(
                Element::new("pubsub", OWNER).with_child(
                    Element::new("default", OWNER)
                        .with_child(pubsub_config::form(&pep_default(""), MAX_ITEMS)),
                ),
            ))
            .into(),
            (true, IqKind::Set, "delete") => svc.delete(op),
            (true, IqKind::Set, "purge") => svc.purge(op),
            (_, _, other) => Err(unsupported(other)).into(),
        }
    }
}

/// A node's configuration when its first publish names none: XEP-0163's
/// defaults, except what clients rely on for well-known nodes.
fn pep_default(_node: &str) -> NodeConfig {
    NodeConfig::default()
}

fn bad(text: &str) -> Result<Option<Element>, StanzaError> {
    Err(StanzaError::with_text(StanzaCondition::BadRequest, text))
}

fn app(name: &str) -> Element {
    Element::new(name, ERRORS)
}

fn unsupported(feature: &str) -> StanzaError {
    StanzaError::new(StanzaCondition::FeatureNotImplemented)
        .with_app(app("unsupported").with_attr("feature", feature))
}

fn item_not_found() -> StanzaError {
    StanzaError::new(StanzaCondition::ItemNotFound)
}

fn node_required() -> StanzaError {
    StanzaError::new(StanzaCondition::BadRequest).with_app(app("nodeid-required"))
}

/// One request's view of the service: whose nodes, and who asks.
struct Service<'a> {
    ctx: &'a ServerCtx,
    owner: &'a str,
    owner_bare: &'a BareJid,
    from: &'a FullJid,
    is_owner: bool,
}

impl Service<'_> {
    fn node_name(op: &Element) -> Result<String, StanzaError> {
        op.attr("node")
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .ok_or_else(node_required)
    }

    fn meta(&self, node: &str) -> Result<NodeMeta, StanzaError> {
        self.ctx
            .state
            .pubsub_node(self.owner, node)
            .ok_or_else(item_not_found)
    }

    /// May the requester read `meta`'s items (XEP-0060 §4.5, §6.5.x)?
    fn may_read(&self, meta: &NodeMeta) -> Result<(), StanzaError> {
        if self.is_owner {
            return Ok(());
        }
        let requester = self.from.to_bare();
        may_read(self.ctx, self.owner, meta, requester.as_str())
    }

    fn commit(
        &self,
        node: &str,
        op: PubsubOp,
        then: impl FnOnce(&ServerCtx, crate::state::Applied) -> IqResponse + Send + 'static,
    ) -> IqResponse {
        super::commit_then(
            self.ctx,
            Command::Pubsub {
                owner: self.owner.to_string(),
                node: node.to_string(),
                op,
            },
            "a PEP change",
            then,
        )
    }

    /// §7.1 with XEP-0163 §3 and XEP-0223.
    fn publish(&self, pubsub: &Element, op: &Element) -> IqResponse {
        if !self.is_owner {
            return Err(StanzaError::new(StanzaCondition::Forbidden)).into();
        }
        let node = match Self::node_name(op) {
            Ok(n) => n,
            Err(e) => return Err(e).into(),
        };
        let mut items = op.elements().filter(|e| e.name == "item");
        let (Some(item), None) = (items.next(), items.next()) else {
            return Err(
                StanzaError::new(StanzaCondition::BadRequest).with_app(app("invalid-payload"))
            )
            .into();
        };
        let mut payloads = item.elements();
        let (Some(payload), None) = (payloads.next(), payloads.next()) else {
            return Err(
                StanzaError::new(StanzaCondition::BadRequest).with_app(app("invalid-payload"))
            )
            .into();
        };
        let options = pubsub
            .get_child("publish-options", NS)
            .and_then(|p| p.get_child("x", DATA));
        let existing = self.ctx.state.pubsub_node(self.owner, &node);
        let config = match (&existing, options) {
            (Some(meta), Some(x)) => {
                if !pubsub_config::met(&meta.config, x, MAX_ITEMS) {
                    return Err(StanzaError::with_text(
                        StanzaCondition::Conflict,
                        "the node is configured otherwise",
                    )
                    .with_app(app("precondition-not-met")))
                    .into();
                }
                meta.config.clone()
            }
            (Some(meta), None) => meta.config.clone(),
            (None, Some(x)) => match pubsub_config::apply(&pep_default(&node), x, MAX_ITEMS) {
                Ok(c) => c,
                Err(e) => return Err(e).into(),
            },
            (None, None) => pep_default(&node),
        };
        if existing.is_none() && self.ctx.state.pubsub_nodes(self.owner).len() >= MAX_NODES {
            return Err(StanzaError::with_text(
                StanzaCondition::ResourceConstraint,
                "too many nodes",
            ))
            .into();
        }
        let id = item
            .attr("id")
            .filter(|i| !i.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
        let xml = payload.to_xml("");
        let event_item = Element::new("item", EVENT)
            .with_attr("id", id.clone())
            .with_child(payload.clone());
        let owner_bare = self.owner_bare.clone();
        let (n, answer_id) = (node.clone(), id.clone());
        self.commit(
            &node,
            PubsubOp::Publish {
                id,
                xml,
                config: config.clone(),
            },
            move |ctx, _| {
                let items = Element::new("items", EVENT)
                    .with_attr("node", n.clone())
                    .with_child(event_item);
                notify(ctx, &owner_bare, &n, items);
                Ok(Some(
                    Element::new("pubsub", NS).with_child(
                        Element::new("publish", NS)
                            .with_attr("node", n)
                            .with_child(Element::new("item", NS).with_attr("id", answer_id)),
                    ),
                ))
                .into()
            },
        )
    }

    /// §7.2.
    fn retract(&self, op: &Element) -> IqResponse {
        if !self.is_owner {
            return Err(StanzaError::new(StanzaCondition::Forbidden)).into();
        }
        let node = match Self::node_name(op).and_then(|n| self.meta(&n).map(|m| (n, m))) {
            Ok(n) => n,
            Err(e) => return Err(e).into(),
        };
        let (node, meta) = node;
        let Some(id) = op
            .elements()
            .find(|e| e.name == "item")
            .and_then(|i| i.attr("id"))
            .map(str::to_string)
        else {
            return Err(
                StanzaError::new(StanzaCondition::BadRequest).with_app(app("item-required"))
            )
            .into();
        };
        let tell =
            meta.config.notify_retract || matches!(op.attr("notify"), Some("1") | Some("true"));
        let owner_bare = self.owner_bare.clone();
        let n = node.clone();
        self.commit(
            &node,
            PubsubOp::Retract { id: id.clone() },
            move |ctx, applied| {
                if !applied.pubsub.found {
                    return Err(item_not_found()).into();
                }
                if tell {
                    let items = Element::new("items", EVENT)
                        .with_attr("node", n.clone())
                        .with_child(Element::new("retract", EVENT).with_attr("id", id));
                    notify(ctx, &owner_bare, &n, items);
                }
                Ok(None).into()
            },
        )
    }

    /// §8.1 (with §8.1.3, create and configure).
    fn create(&self, pubsub: &Element, op: &Element) -> IqResponse {
        if !self.is_owner {
            return Err(StanzaError::new(StanzaCondition::Forbidden)).into();
        }
        let node = match Self::node_name(op) {
            Ok(n) => n,
            Err(_) => {
                return Err(unsupported("instant-nodes")).into();
            }
        };
        if self.ctx.state.pubsub_node(self.owner, &node).is_some() {
            return Err(StanzaError::new(StanzaCondition::Conflict)).into();
        }
        if self.ctx.state.pubsub_nodes(self.owner).len() >= MAX_NODES {
            return Err(StanzaError::with_text(
                StanzaCondition::ResourceConstraint,
                "too many nodes",
            ))
            .into();
        }
        let mut config = pep_default(&node);
        if let Some(x) = pubsub
            .get_child("configure", NS)
            .and_then(|c| c.get_child("x", DATA))
        {
            config = match pubsub_config::apply(&config, x, MAX_ITEMS) {
                Ok(c) => c,
                Err(e) => return Err(e).into(),
            };
        }
        self.commit(&node, PubsubOp::Create { config }, |_, applied| {
            if applied.pubsub.existed {
                Err(StanzaError::new(StanzaCondition::Conflict)).into()
            } else {
                Ok(None).into()
            }
        })
    }

    /// §6.1 and §6.2: an explicit subscription, for someone who may read
    /// the node and is not a contact (contacts get notifications by
    /// their presence subscription).
    fn subscribe(&self, op: &Element, on: bool) -> IqResponse {
        let node = match Self::node_name(op).and_then(|n| self.meta(&n).map(|m| (n, m))) {
            Ok(n) => n,
            Err(e) => return Err(e).into(),
        };
        let (node, meta) = node;
        let Some(jid) = op.attr("jid").and_then(|j| Jid::new(j).ok()) else {
            return Err(StanzaError::new(StanzaCondition::BadRequest).with_app(app("invalid-jid")))
                .into();
        };
        // §6.1.3.1: one subscribes only oneself.
        if jid.to_bare() != self.from.to_bare() {
            return Err(StanzaError::new(StanzaCondition::BadRequest).with_app(app("invalid-jid")))
                .into();
        }
        if on {
            if let Err(e) = self.may_read(&meta) {
                return Err(e).into();
            }
        }
        let jid_s = jid.to_string();
        let op_ = if on {
            PubsubOp::Subscribe { jid: jid_s.clone() }
        } else {
            PubsubOp::Unsubscribe { jid: jid_s.clone() }
        };
        let (owner, n) = (self.owner.to_string(), node.clone());
        let last = meta.config.send_last_published_item != crate::state::pubsub::SendLast::Never;
        let owner_bare = self.owner_bare.clone();
        self.commit(&node, op_, move |ctx, applied| {
            if !on {
                if !applied.pubsub.found {
                    return Err(StanzaError::new(StanzaCondition::UnexpectedRequest)
                        .with_app(app("not-subscribed")))
                    .into();
                }
                return Ok(None).into();
            }
            // §6.1.7: the last item, to the new subscriber.
            if last {
                if let Some((id, xml)) = ctx.state.pubsub_items(&owner, &n).pop() {
                    send_event(ctx, &owner_bare, &jid_s, &n, &id, &xml);
                }
            }
            Ok(Some(
                Element::new("pubsub", NS).with_child(
                    Element::new("subscription", NS)
                        .with_attr("node", n)
                        .with_attr("jid", jid_s.clone())
                        .with_attr("subscription", "subscribed"),
                ),
            ))
            .into()
        })
    }

    /// §6.5: all items, the newest `max_items`, or those named.
    fn items(&self, op: &Element) -> Result<Option<Element>, StanzaError> {
        let node = Self::node_name(op)?;
        let meta = self.meta(&node)?;
        self.may_read(&meta)?;
        let all = self.ctx.state.pubsub_items(self.owner, &node);
        let wanted: Vec<&str> = op
            .elements()
            .filter(|e| e.name == "item")
            .filter_map(|e| e.attr("id"))
            .collect();
        let mut chosen: Vec<&(String, String)> = if wanted.is_empty() {
            all.iter().collect()
        } else {
            all.iter()
                .filter(|(id, _)| wanted.contains(&id.as_str()))
                .collect()
        };
        if let Some(max) = op.attr("max_items") {
            let max: usize = max.parse().map_err(|_| {
                StanzaError::with_text(StanzaCondition::BadRequest, "max_items must be a number")
            })?;
            let skip = chosen.len().saturating_sub(max);
            chosen.drain(..skip);
        }
        // Newest first (§6.5.7 leaves the order to the service; clients
        // asking for one item want the latest).
        chosen.reverse();
        let mut items = Element::new("items", NS).with_attr("node", node);
        for (id, xml) in chosen {
            let mut item = Element::new("item", NS).with_attr("id", id.clone());
            match parse_fragment(xml) {
                Ok(p) => item.push_child(p),
                Err(e) => tracing::warn!(error = %e, "a stored PEP item does not parse; left out"),
            }
            items.push_child(item);
        }
        Ok(Some(Element::new("pubsub", NS).with_child(items)))
    }

    /// §5.6: the requester's explicit subscriptions among these nodes.
    fn subscriptions(&self, op: &Element) -> Result<Option<Element>, StanzaError> {
        let only = op.attr("node");
        let me = self.from.to_bare();
        let mut out = Element::new("subscriptions", NS);
        for name in self.ctx.state.pubsub_nodes(self.owner) {
            if only.is_some_and(|n| n != name) {
                continue;
            }
            if let Some(meta) = self.ctx.state.pubsub_node(self.owner, &name) {
                for s in meta
                    .subscribers
                    .iter()
                    .filter(|s| Jid::new(s).is_ok_and(|j| j.to_bare() == me))
                {
                    out.push_child(
                        Element::new("subscription", NS)
                            .with_attr("node", name.clone())
                            .with_attr("jid", s.clone())
                            .with_attr("subscription", "subscribed"),
                    );
                }
            }
        }
        Ok(Some(Element::new("pubsub", NS).with_child(out)))
    }

    /// §5.7: the owner owns every node of the account.
    fn affiliations(&self, op: &Element) -> Result<Option<Element>, StanzaError> {
        let mut out = Element::new("affiliations", NS);
        if self.is_owner {
            for name in self.ctx.state.pubsub_nodes(self.owner) {
                if op.attr("node").is_none_or(|n| n == name) {
                    out.push_child(
                        Element::new("affiliation", NS)
                            .with_attr("node", name)
                            .with_attr("affiliation", "owner"),
                    );
                }
            }
        }
        Ok(Some(Element::new("pubsub", NS).with_child(out)))
    }

    /// §8.2.
    fn configure_get(&self, op: &Element) -> Result<Option<Element>, StanzaError> {
        let node = Self::node_name(op)?;
        let meta = self.meta(&node)?;
        Ok(Some(
            Element::new("pubsub", OWNER).with_child(
                Element::new("configure", OWNER)
                    .with_attr("node", node)
                    .with_child(pubsub_config::form(&meta.config, MAX_ITEMS)),
            ),
        ))
    }

    /// §8.2.5.
    fn configure_set(&self, op: &Element) -> IqResponse {
        let node = match Self::node_name(op).and_then(|n| self.meta(&n).map(|m| (n, m))) {
            Ok(n) => n,
            Err(e) => return Err(e).into(),
        };
        let (node, meta) = node;
        let Some(x) = op.get_child("x", DATA) else {
            return bad("a configure request needs a form").into();
        };
        if x.attr("type") == Some("cancel") {
            return Ok(None).into();
        }
        let form_type = x
            .elements()
            .find(|f| f.attr("var") == Some("FORM_TYPE"))
            .map(|f| f.text());
        if form_type.is_some_and(|t| t.trim() != NODE_CONFIG && t.trim() != PUBLISH_OPTIONS) {
            return bad("not a node configuration form").into();
        }
        let config = match pubsub_config::apply(&meta.config, x, MAX_ITEMS) {
            Ok(c) => c,
            Err(e) => return Err(e).into(),
        };
        self.commit(&node, PubsubOp::Configure { config }, |_, _| {
            Ok(None).into()
        })
    }

    /// §8.4.
    fn delete(&self, op: &Element) -> IqResponse {
        let node = match Self::node_name(op).and_then(|n| self.meta(&n).map(|m| (n, m))) {
            Ok(n) => n,
            Err(e) => return Err(e).into(),
        };
        let (node, meta) = node;
        let owner_bare = self.owner_bare.clone();
        let n = node.clone();
        self.commit(&node, PubsubOp::Delete, move |ctx, _| {
            if meta.config.notify_delete {
                notify_meta(
                    ctx,
                    &owner_bare,
                    &n,
                    &meta,
                    Element::new("delete", EVENT).with_attr("node", n.clone()),
                );
            }
            Ok(None).into()
        })
    }

    /// §8.5.
    fn purge(&self, op: &Element) -> IqResponse {
        let node = match Self::node_name(op).and_then(|n| self.meta(&n).map(|m| (n, m))) {
            Ok(n) => n,
            Err(e) => return Err(e).into(),
        };
        let (node, meta) = node;
        let owner_bare = self.owner_bare.clone();
        let n = node.clone();
        self.commit(&node, PubsubOp::Purge, move |ctx, _| {
            if meta.config.notify_retract {
                notify_meta(
                    ctx,
                    &owner_bare,
                    &n,
                    &meta,
                    Element::new("purge", EVENT).with_attr("node", n.clone()),
                );
            }
            Ok(None).into()
        })
    }
}

/// May `requester` (a bare JID, not the owner) read `owner`'s node?
fn may_read(
    ctx: &ServerCtx,
    owner: &str,
    meta: &NodeMeta,
    requester: &str,
) -> Result<(), StanzaError> {
    let item = || ctx.state.roster_item(owner, requester).ok().flatten();
    match meta.config.access_model {
        AccessModel::Open => Ok(()),
        AccessModel::Presence => match item() {
            Some(i) if i.sub.from => Ok(()),
            _ => Err(StanzaError::new(StanzaCondition::NotAuthorized)
                .with_app(app("presence-subscription-required"))),
        },
        AccessModel::Roster => match item() {
            Some(i) if i.in_roster && (i.sub.from || i.sub.to) => Ok(()),
            _ => Err(StanzaError::new(StanzaCondition::NotAuthorized)
                .with_app(app("not-in-roster-group"))),
        },
        AccessModel::Whitelist => {
            Err(StanzaError::new(StanzaCondition::NotAllowed).with_app(app("closed-node")))
        }
    }
}

/// A notification message for `to`.
fn event_message(owner: &BareJid, to: &str, inner: Element) -> Element {
    Element::new("message", ns::CLIENT)
        .with_attr("from", owner.to_string())
        .with_attr("to", to.to_string())
        .with_attr("type", "headline")
        .with_attr("id", format!("pep-{:016x}", rand::random::<u64>()))
        .with_child(Element::new("event", EVENT).with_child(inner))
}

/// One stored item as an event for `to`.
fn send_event(ctx: &ServerCtx, owner: &BareJid, to: &str, node: &str, id: &str, xml: &str) {
    let Ok(payload) = parse_fragment(xml) else {
        return tracing::warn!(%owner, node, "a stored PEP item does not parse; not sent");
    };
    let items = Element::new("items", EVENT)
        .with_attr("node", node)
        .with_child(
            Element::new("item", EVENT)
                .with_attr("id", id)
                .with_child(payload),
        );
    send_to(ctx, to, event_message(owner, to, items));
}

/// Send to a JID: a local session or account, or another server.
fn send_to(ctx: &ServerCtx, to: &str, msg: Element) {
    let Ok(jid) = Jid::new(to) else { return };
    if jid.domain().as_str() != ctx.config.domain {
        return ctx.elsewhere.send(ctx, msg);
    }
    match jid.try_as_full() {
        Ok(full) => {
            if let Some(t) = crate::route::full(ctx, full) {
                crate::route::send(ctx, &t, msg, None);
            }
        }
        Err(_) => {
            for t in crate::route::resources(ctx, &jid.to_bare()) {
                if t.available {
                    let mut m = msg.clone();
                    m.set_attr("to", t.jid.clone());
                    crate::route::send(ctx, &t, m, None);
                }
            }
        }
    }
}

/// Tell everyone who should hear of a change to `node` (the module doc).
pub fn notify(ctx: &ServerCtx, owner: &BareJid, node: &str, inner: Element) {
    let user = owner.node().map(|n| n.as_str()).unwrap_or_default();
    let Some(meta) = ctx.state.pubsub_node(user, node) else {
        return;
    };
    notify_meta(ctx, owner, node, &meta, inner)
}

fn notify_meta(ctx: &ServerCtx, owner: &BareJid, node: &str, meta: &NodeMeta, inner: Element) {
    let user = owner.node().map(|n| n.as_str()).unwrap_or_default();
    let mut sent: Vec<String> = Vec::new();
    let mut send = |to: String| {
        if !sent.contains(&to) {
            send_to(ctx, &to, event_message(owner, &to, inner.clone()));
            sent.push(to);
        }
    };
    let wants =
        |full: &str| super::caps::interests(ctx, full).is_some_and(|i| i.iter().any(|n| n == node));
    // The owner's resources, and contacts who may read the node.
    let mut bares = vec![owner.to_string()];
    if meta.config.access_model != AccessModel::Whitelist {
        if let Ok(roster) = ctx.state.roster(user) {
            for item in roster {
                if may_read(ctx, user, meta, &item.jid).is_ok() && (item.sub.from) {
                    bares.push(item.jid);
                }
            }
        }
    }
    for bare in bares {
        let Ok(b) = BareJid::new(&bare) else { continue };
        if b.domain().as_str() != ctx.config.domain {
            // Its server knows its resources' interests (XEP-0163 §4.3.1).
            send(bare);
            continue;
        }
        for t in crate::route::resources(ctx, &b) {
            if t.available && wants(&t.jid) {
                send(t.jid);
            }
        }
    }
    for s in &meta.subscribers {
        send(s.clone());
    }
}

/// A session came online (or its capabilities became known): the last
/// item of each node it wants and may read, of its contacts and its own
/// account (XEP-0163 §4.3.2, `on_sub_and_presence`).
pub fn send_last_items(ctx: &ServerCtx, full: &FullJid, interests: &[String]) {
    if interests.is_empty() {
        return;
    }
    let me = full.to_bare();
    let user = me.node().map(|n| n.as_str()).unwrap_or_default();
    let mut owners = vec![me.clone()];
    if let Ok(roster) = ctx.state.roster(user) {
        for item in roster.into_iter().filter(|i| i.sub.to) {
            if let Ok(b) = BareJid::new(&item.jid) {
                if b.domain().as_str() == ctx.config.domain {
                    owners.push(b);
                }
            }
        }
    }
    for owner in owners {
        let o = owner.node().map(|n| n.as_str()).unwrap_or_default();
        for node in interests {
            let Some(meta) = ctx.state.pubsub_node(o, node) else {
                continue;
            };
            if meta.config.send_last_published_item
                != crate::state::pubsub::SendLast::OnSubAndPresence
            {
                continue;
            }
            if owner != me && may_read(ctx, o, &meta, me.as_str()).is_err() {
                continue;
            }
            if let Some((id, xml)) = ctx.state.pubsub_items(o, node).pop() {
                send_event(ctx, &owner, full.as_str(), node, &id, &xml);
            }
        }
    }
}
