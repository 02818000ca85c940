//! Publish-subscribe (XEP-0060): one engine for two kinds of service.
//!
//! - Every account is a personal eventing service (XEP-0163) at its bare
//!   JID (`modules/pep.rs` hands it the account's iqs). The account owns
//!   all its nodes; nodes are made on first publish (`#auto-create`);
//!   contacts read them by the access model (default `presence`), and a
//!   change is told to the owner's resources and the contacts whose
//!   capabilities (XEP-0115, `modules/caps.rs`) ask for `NODE+notify`
//!   (XEP-0163 §4.3.1), to contacts of other servers at their bare JID
//!   (their server delivers it), and to explicit subscribers.
//! - The service at `pubsub.DOMAIN` (`service.rs`): any local user creates
//!   nodes and owns them; affiliations (owner, publisher, member, outcast,
//!   §4.1) decide who publishes and reads; subscribers are told of changes.
//!
//! Nodes, items, subscriptions and affiliations are replicated state
//! (`state/pubsub.rs`): every change is a Raft commit, answered once
//! applied, so any node reads them and they outlive any node.
//! Publish options (XEP-0223) are preconditions: a node configured
//! otherwise answers `<precondition-not-met/>` and keeps its items.

pub mod node_config;
pub mod service;

use std::sync::Arc;

use jid::{BareJid, Jid};

use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::xml::{ns, parse_fragment, Element};
use crate::model::state::pubsub::{
    AccessModel, Affiliation, NodeConfig, NodeMeta, PubsubOp, SendLast,
};
use crate::model::state::{Applied, Command, State};
use node_config::{DATA, NODE_CONFIG, PUBLISH_OPTIONS};

pub const NS: &str = "http://jabber.org/protocol/pubsub";
pub const OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
/// What `pubsub#max_items` = `max` means, and the most items a node keeps.
pub const MAX_ITEMS: u32 = 256;
/// The most nodes one account (or the service) keeps.
pub const MAX_NODES: usize = 512;
/// The most subscriptions one node keeps, and one bare JID holds on it
/// (its resources): a remote server cannot grow a node without bound.
pub const MAX_SUBSCRIBERS: usize = 1000;
pub const MAX_SUBSCRIPTIONS_PER_JID: usize = 10;

/// The XEP-0060 features both kinds of service offer (§10).
pub const FEATURES: [&str; 22] = [
    NS,
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-roster",
    "http://jabber.org/protocol/pubsub#access-whitelist",
    "http://jabber.org/protocol/pubsub#config-node",
    // `pubsub#max_items` may be `max` (XEP-0060 §16.4.2; clients check
    // this before publishing bookmarks that way).
    "http://jabber.org/protocol/pubsub#config-node-max",
    "http://jabber.org/protocol/pubsub#create-and-configure",
    "http://jabber.org/protocol/pubsub#create-nodes",
    "http://jabber.org/protocol/pubsub#delete-items",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#item-ids",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#purge-nodes",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#retrieve-affiliations",
    "http://jabber.org/protocol/pubsub#retrieve-default",
    "http://jabber.org/protocol/pubsub#retrieve-items",
    "http://jabber.org/protocol/pubsub#retrieve-subscriptions",
    "http://jabber.org/protocol/pubsub#subscribe",
];

/// What the engine needs of the node it runs on.
pub trait Backend: Send + Sync + 'static {
    /// This node's replica (reads are local).
    fn state(&self) -> &State;
    /// The server's domain.
    fn domain(&self) -> &str;
    /// Commit a change through the cluster; `then` learns what it applied.
    fn commit(&self, cmd: Command, then: Box<dyn FnOnce(Result<Applied, String>) + Send>);
    /// Send a stanza to a local session (full JID) or another server.
    fn send(&self, stanza: Element);
    /// `then(true)` once this node has applied everything the cluster had
    /// committed when asked (false: no quorum answered in time).
    fn caught_up(&self, then: Box<dyn FnOnce(bool) + Send>);
}

/// Which service a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An account's PEP service.
    Pep,
    /// The service at `pubsub.DOMAIN`.
    Service,
}

/// The answer to a request: its result payload or an error.
pub type Answer = Box<dyn FnOnce(Result<Option<Element>, StanzaError>) + Send>;

/// One request to one service.
pub struct Request {
    pub backend: Arc<dyn Backend>,
    pub kind: Kind,
    /// Where the service's nodes are kept: the username, or `@` and the
    /// service's domain (no account can have that name).
    pub owner: String,
    /// The service's address: the account's bare JID, or the domain.
    pub service: String,
    /// Who asks.
    pub from: Jid,
}

/// The store key of the service at `domain`.
pub fn service_key(domain: &str) -> String {
    format!("@{domain}")
}

fn app(name: &str) -> Element {
    Element::new(name, ERRORS)
}

fn err(c: StanzaCondition) -> StanzaError {
    StanzaError::new(c)
}

fn unsupported(feature: &str) -> StanzaError {
    err(StanzaCondition::FeatureNotImplemented)
        .with_app(app("unsupported").with_attr("feature", feature))
}

fn bad(text: &str) -> StanzaError {
    StanzaError::with_text(StanzaCondition::BadRequest, text)
}

fn node_name(op: &Element) -> Result<String, StanzaError> {
    op.attr("node")
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .ok_or_else(|| err(StanzaCondition::BadRequest).with_app(app("nodeid-required")))
}

fn too_many() -> StanzaError {
    StanzaError::with_text(StanzaCondition::ResourceConstraint, "too many nodes")
}

/// XEP-0163 §4.1's defaults for a node made without a configuration.
pub fn default_config(kind: Kind) -> NodeConfig {
    match kind {
        Kind::Pep => NodeConfig::default(),
        Kind::Service => NodeConfig {
            access_model: AccessModel::Open,
            max_items: 10,
            send_last_published_item: SendLast::OnSub,
            ..NodeConfig::default()
        },
    }
}

impl Request {
    fn state(&self) -> &State {
        self.backend.state()
    }

    fn requester(&self) -> String {
        self.from.to_bare().to_string()
    }

    fn meta(&self, node: &str) -> Result<NodeMeta, StanzaError> {
        self.state()
            .pubsub_node(&self.owner, node)
            .ok_or_else(|| err(StanzaCondition::ItemNotFound))
    }

    /// The requester's affiliation with a node (or with the service, for
    /// a node not made yet).
    fn affiliation(&self, meta: Option<&NodeMeta>) -> Option<Affiliation> {
        match self.kind {
            Kind::Pep => (self.requester() == self.service).then_some(Affiliation::Owner),
            Kind::Service => meta.and_then(|m| m.affiliation(&self.requester())),
        }
    }

    pub(crate) fn may_read(&self, meta: &NodeMeta) -> Result<(), StanzaError> {
        may_read(
            self.state(),
            self.backend.domain(),
            self.kind,
            &self.owner,
            meta,
            &self.requester(),
            self.affiliation(Some(meta)),
        )
    }

    fn may_publish(&self, meta: Option<&NodeMeta>) -> Result<(), StanzaError> {
        match (self.affiliation(meta), meta) {
            (Some(Affiliation::Owner | Affiliation::Publisher), _) => Ok(()),
            // A node not made yet: a local user may make one on the service.
            (None, None) if self.kind == Kind::Service && self.is_local() => Ok(()),
            _ => Err(err(StanzaCondition::Forbidden)),
        }
    }

    fn is_local(&self) -> bool {
        self.from.domain().as_str() == self.backend.domain()
    }

    fn creator(&self) -> Option<String> {
        (self.kind == Kind::Service).then(|| self.requester())
    }

    fn commit(&self, node: &str, op: PubsubOp, answer: Answer, then: Then) {
        let cmd = Command::Pubsub {
            owner: self.owner.clone(),
            node: node.to_string(),
            op,
        };
        let b = self.backend.clone();
        self.backend.commit(
            cmd,
            Box::new(move |r| match r {
                Ok(applied) => answer(then(&b, applied)),
                Err(e) => {
                    tracing::warn!(error = %e, "a publish-subscribe change was not committed");
                    answer(Err(StanzaError::with_text(
                        StanzaCondition::InternalServerError,
                        e,
                    )))
                }
            }),
        );
    }

    /// Serve a get (`set` false) or set with payload `pubsub` (either
    /// namespace); `answer` is called once, maybe after a commit.
    ///
    /// A change's refusal read from this node's replica (no such node or
    /// item, not allowed) may be stale: a change another node acknowledged
    /// (an affiliation, a publish) may not be applied here yet. Before such
    /// an answer goes out, this node catches up with the cluster and the
    /// request is served again. (A refusal changed nothing, so serving it
    /// again is safe.)
    pub fn handle(self, set: bool, pubsub: &Element, answer: Answer) {
        // A read waits until this node has applied what the cluster had
        // committed when it came (a purge, a publish another client was
        // just told of): reads are never older than what was acknowledged.
        //
        // A change to the service's nodes waits too: an affiliation another
        // node just committed (an outcast, a publisher removed) must hold
        // here at once, and a stale replica would let the request through.
        // (An account's PEP nodes have one owner: only the refusals below
        // are served again.)
        if !set || self.kind == Kind::Service {
            let (b, pubsub) = (self.backend.clone(), pubsub.clone());
            return b.caught_up(Box::new(move |_| self.serve(set, &pubsub, answer)));
        }
        let again = (
            self.backend.clone(),
            self.kind,
            self.owner.clone(),
            self.service.clone(),
            self.from.clone(),
            pubsub.clone(),
        );
        self.serve(
            set,
            pubsub,
            Box::new(move |r| {
                let maybe_stale = matches!(&r, Err(e) if matches!(
                    e.condition,
                    StanzaCondition::ItemNotFound
                        | StanzaCondition::Forbidden
                        | StanzaCondition::NotAuthorized
                        | StanzaCondition::NotAllowed
                ));
                if !maybe_stale {
                    return answer(r);
                }
                let (backend, kind, owner, service, from, pubsub) = again;
                let b = backend.clone();
                b.caught_up(Box::new(move |ok| {
                    if !ok {
                        return answer(r);
                    }
                    Request {
                        backend,
                        kind,
                        owner,
                        service,
                        from,
                    }
                    .serve(set, &pubsub, answer)
                }));
            }),
        );
    }

    fn serve(self, set: bool, pubsub: &Element, answer: Answer) {
        let Some(op) = pubsub.elements().next() else {
            return answer(Err(bad("an empty pubsub request")));
        };
        let owner_ns = pubsub.ns == OWNER;
        let r = match (owner_ns, set, op.name.as_str()) {
            (false, true, "publish") => return self.publish(pubsub, op, answer),
            (false, true, "retract") => return self.retract(op, answer),
            (false, true, "create") => return self.create(pubsub, op, answer),
            (false, true, "subscribe") => return self.subscribe(op, true, answer),
            (false, true, "unsubscribe") => return self.subscribe(op, false, answer),
            (false, false, "items") => self.items(op),
            (false, false, "subscriptions") => self.subscriptions(op),
            (false, false, "affiliations") => self.affiliations(op),
            (true, false, "configure") => self.configure_get(op),
            (true, true, "configure") => return self.configure_set(op, answer),
            (true, false, "default") => Ok(Some(
                Element::new("pubsub", OWNER).with_child(
                    Element::new("default", OWNER)
                        .with_child(node_config::form(&default_config(self.kind), MAX_ITEMS)),
                ),
            )),
            (true, true, "delete") => return self.delete(op, answer),
            (true, true, "purge") => return self.purge(op, answer),
            (true, false, "affiliations") => self.owner_affiliations(op),
            (true, true, "affiliations") => return self.set_affiliations(op, answer),
            (true, false, "subscriptions") => self.owner_subscriptions(op),
            (_, _, other) => Err(unsupported(other)),
        };
        answer(r)
    }

    /// §7.1, with XEP-0163 §3 (auto-create) and XEP-0223.
    fn publish(self, pubsub: &Element, op: &Element, answer: Answer) {
        let node = match node_name(op) {
            Ok(n) => n,
            Err(e) => return answer(Err(e)),
        };
        let existing = self.state().pubsub_node(&self.owner, &node);
        if let Err(e) = self.may_publish(existing.as_ref()) {
            return answer(Err(e));
        }
        // §7.1.3.6: one item with one payload.
        let mut items = op.elements().filter(|e| e.name == "item");
        let item = match (items.next(), items.next()) {
            (Some(item), None) => item,
            (None, _) => {
                return answer(Err(
                    err(StanzaCondition::BadRequest).with_app(app("item-required"))
                ))
            }
            _ => {
                return answer(Err(
                    err(StanzaCondition::BadRequest).with_app(app("invalid-payload"))
                ))
            }
        };
        let mut payloads = item.elements();
        let payload = match (payloads.next(), payloads.next()) {
            (Some(p), None) => p,
            (None, _) => {
                return answer(Err(
                    err(StanzaCondition::BadRequest).with_app(app("payload-required"))
                ))
            }
            _ => {
                return answer(Err(
                    err(StanzaCondition::BadRequest).with_app(app("invalid-payload"))
                ))
            }
        };
        let options = pubsub
            .get_child("publish-options", NS)
            .and_then(|p| p.get_child("x", DATA));
        let config = match (&existing, options) {
            (Some(meta), Some(x)) => {
                if !node_config::met(&meta.config, x, MAX_ITEMS) {
                    return answer(Err(StanzaError::with_text(
                        StanzaCondition::Conflict,
                        "the node is configured otherwise",
                    )
                    .with_app(app("precondition-not-met"))));
                }
                meta.config.clone()
            }
            (Some(meta), None) => meta.config.clone(),
            (None, Some(x)) => match node_config::apply(&default_config(self.kind), x, MAX_ITEMS) {
                Ok(c) => c,
                Err(e) => return answer(Err(e)),
            },
            (None, None) => default_config(self.kind),
        };
        if existing.is_none() && self.state().pubsub_nodes(&self.owner).len() >= MAX_NODES {
            return answer(Err(too_many()));
        }
        let id = item
            .attr("id")
            .filter(|i| !i.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
        let event_item = Element::new("item", EVENT)
            .with_attr("id", id.clone())
            .with_child(payload.clone());
        let op = PubsubOp::Publish {
            id: id.clone(),
            xml: payload.to_xml(""),
            config,
            creator: self.creator(),
        };
        let to = Notice::of(&self, &node);
        self.commit(
            &node,
            op,
            answer,
            Box::new(move |b, _| {
                to.send(
                    b,
                    Element::new("items", EVENT)
                        .with_attr("node", to.node.clone())
                        .with_child(event_item),
                );
                Ok(Some(
                    Element::new("pubsub", NS).with_child(
                        Element::new("publish", NS)
                            .with_attr("node", to.node.clone())
                            .with_child(Element::new("item", NS).with_attr("id", id)),
                    ),
                ))
            }),
        );
    }

    /// §7.2.
    fn retract(self, op: &Element, answer: Answer) {
        let (node, meta) = match node_name(op).and_then(|n| self.meta(&n).map(|m| (n, m))) {
            Ok(n) => n,
            Err(e) => return answer(Err(e)),
        };
        if let Err(e) = self.may_publish(Some(&meta)) {
            return answer(Err(e));
        }
        let Some(id) = op
            .elements()
            .find(|e| e.name == "item")
            .and_then(|i| i.attr("id"))
            .map(str::to_string)
        else {
            return answer(Err(
                err(StanzaCondition::BadRequest).with_app(app("item-required"))
            ));
        };
        let tell =
            meta.config.notify_retract || matches!(op.attr("notify"), Some("1") | Some("true"));
        let to = Notice::of(&self, &node);
        self.commit(
            &node,
            PubsubOp::Retract { id: id.clone() },
            answer,
            Box::new(move |b, applied| {
                if !applied.pubsub.found {
                    return Err(err(StanzaCondition::ItemNotFound));
                }
                if tell {
                    to.send(
                        b,
                        Element::new("items", EVENT)
                            .with_attr("node", to.node.clone())
                            .with_child(Element::new("retract", EVENT).with_attr("id", id)),
                    );
                }
                Ok(None)
            }),
        );
    }

    /// §8.1 (with §8.1.3, create and configure).
    fn create(self, pubsub: &Element, op: &Element, answer: Answer) {
        let Ok(node) = node_name(op) else {
            return answer(Err(unsupported("instant-nodes")));
        };
        if let Err(e) = self.may_publish(None) {
            return answer(Err(e));
        }
        if self.state().pubsub_node(&self.owner, &node).is_some() {
            return answer(Err(err(StanzaCondition::Conflict)));
        }
        if self.state().pubsub_nodes(&self.owner).len() >= MAX_NODES {
            return answer(Err(too_many()));
        }
        let mut config = default_config(self.kind);
        if let Some(x) = pubsub
            .get_child("configure", NS)
            .and_then(|c| c.get_child("x", DATA))
        {
            config = match node_config::apply(&config, x, MAX_ITEMS) {
                Ok(c) => c,
                Err(e) => return answer(Err(e)),
            };
        }
        let op = PubsubOp::Create {
            config,
            creator: self.creator(),
        };
        self.commit(
            &node,
            op,
            answer,
            Box::new(|_, applied| {
                if applied.pubsub.existed {
                    Err(err(StanzaCondition::Conflict))
                } else {
                    Ok(None)
                }
            }),
        );
    }

    /// §6.1 and §6.2.
    fn subscribe(self, op: &Element, on: bool, answer: Answer) {
        let (node, meta) = match node_name(op).and_then(|n| self.meta(&n).map(|m| (n, m))) {
            Ok(n) => n,
            Err(e) => return answer(Err(e)),
        };
        let Some(jid) = op.attr("jid").and_then(|j| Jid::new(j).ok()) else {
            return answer(Err(
                err(StanzaCondition::BadRequest).with_app(app("invalid-jid"))
            ));
        };
        // §6.1.3.1: one subscribes only oneself.
        if jid.to_bare() != self.from.to_bare() {
            return answer(Err(
                err(StanzaCondition::BadRequest).with_app(app("invalid-jid"))
            ));
        }
        if on {
            if let Err(e) = self.may_read(&meta) {
                return answer(Err(e));
            }
            let bare = jid.to_bare();
            let mine = meta
                .subscribers
                .iter()
                .filter(|s| Jid::new(s).is_ok_and(|j| j.to_bare() == bare))
                .count();
            let new = !meta.subscribers.contains(&jid.to_string());
            if new
                && (mine >= MAX_SUBSCRIPTIONS_PER_JID || meta.subscribers.len() >= MAX_SUBSCRIBERS)
            {
                return answer(Err(
                    err(StanzaCondition::PolicyViolation).with_app(app("too-many-subscriptions"))
                ));
            }
        }
        let jid_s = jid.to_string();
        let op = if on {
            PubsubOp::Subscribe { jid: jid_s.clone() }
        } else {
            PubsubOp::Unsubscribe { jid: jid_s.clone() }
        };
        let (owner, service) = (self.owner.clone(), self.service.clone());
        let last = meta.config.send_last_published_item != SendLast::Never;
        let n = node.clone();
        self.commit(
            &node,
            op,
            answer,
            Box::new(move |b, applied| {
                if !on {
                    if !applied.pubsub.found {
                        return Err(
                            err(StanzaCondition::UnexpectedRequest).with_app(app("not-subscribed"))
                        );
                    }
                    return Ok(None);
                }
                // §6.1.7: the last item, to the new subscriber.
                if last {
                    if let Some((id, xml)) = b.state().pubsub_items(&owner, &n).pop() {
                        send_item(b, &service, &jid_s, &n, &id, &xml);
                    }
                }
                Ok(Some(
                    Element::new("pubsub", NS).with_child(
                        Element::new("subscription", NS)
                            .with_attr("node", n)
                            .with_attr("jid", jid_s)
                            .with_attr("subscription", "subscribed"),
                    ),
                ))
            }),
        );
    }

    /// §6.5: all items, the newest `max_items`, or those named.
    fn items(&self, op: &Element) -> Result<Option<Element>, StanzaError> {
        let node = node_name(op)?;
        let meta = self.meta(&node)?;
        self.may_read(&meta)?;
        let all = self.state().pubsub_items(&self.owner, &node);
        let wanted: Vec<&str> = op
            .elements()
            .filter(|e| e.name == "item")
            .filter_map(|e| e.attr("id"))
            .collect();
        let mut chosen: Vec<&(String, String)> = all
            .iter()
            .filter(|(id, _)| wanted.is_empty() || wanted.contains(&id.as_str()))
            .collect();
        if let Some(max) = op.attr("max_items") {
            let max: usize = max.parse().map_err(|_| bad("max_items must be a number"))?;
            let skip = chosen.len().saturating_sub(max);
            chosen.drain(..skip);
        }
        // Newest first: a client asking for one item wants the latest.
        chosen.reverse();
        let mut items = Element::new("items", NS).with_attr("node", node);
        for (id, xml) in chosen {
            let mut item = Element::new("item", NS).with_attr("id", id.clone());
            match parse_fragment(xml) {
                Ok(p) => item.push_child(p),
                Err(e) => tracing::warn!(error = %e, "a stored item does not parse; left out"),
            }
            items.push_child(item);
        }
        Ok(Some(Element::new("pubsub", NS).with_child(items)))
    }

    /// §5.6: the requester's subscriptions.
    fn subscriptions(&self, op: &Element) -> Result<Option<Element>, StanzaError> {
        let me = self.from.to_bare();
        let mut out = Element::new("subscriptions", NS);
        for (name, meta) in self.nodes(op.attr("node")) {
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
        Ok(Some(Element::new("pubsub", NS).with_child(out)))
    }

    /// §5.7: the requester's affiliations.
    fn affiliations(&self, op: &Element) -> Result<Option<Element>, StanzaError> {
        let mut out = Element::new("affiliations", NS);
        for (name, meta) in self.nodes(op.attr("node")) {
            if let Some(a) = self.affiliation(Some(&meta)) {
                out.push_child(
                    Element::new("affiliation", NS)
                        .with_attr("node", name)
                        .with_attr("affiliation", a.as_str()),
                );
            }
        }
        Ok(Some(Element::new("pubsub", NS).with_child(out)))
    }

    /// The service's nodes (or the one named).
    fn nodes(&self, only: Option<&str>) -> Vec<(String, NodeMeta)> {
        self.state()
            .pubsub_nodes(&self.owner)
            .into_iter()
            .filter(|n| only.is_none_or(|o| o == n))
            .filter_map(|n| {
                let m = self.state().pubsub_node(&self.owner, &n)?;
                Some((n, m))
            })
            .collect()
    }

    /// A node, for an owner's request.
    fn owned(&self, op: &Element) -> Result<(String, NodeMeta), StanzaError> {
        let node = node_name(op)?;
        let meta = self.meta(&node)?;
        if self.affiliation(Some(&meta)) != Some(Affiliation::Owner) {
            return Err(err(StanzaCondition::Forbidden));
        }
        Ok((node, meta))
    }

    /// §8.2.
    fn configure_get(&self, op: &Element) -> Result<Option<Element>, StanzaError> {
        let (node, meta) = self.owned(op)?;
        Ok(Some(
            Element::new("pubsub", OWNER).with_child(
                Element::new("configure", OWNER)
                    .with_attr("node", node)
                    .with_child(node_config::form(&meta.config, MAX_ITEMS)),
            ),
        ))
    }

    /// §8.2.5.
    fn configure_set(self, op: &Element, answer: Answer) {
        let (node, meta) = match self.owned(op) {
            Ok(n) => n,
            Err(e) => return answer(Err(e)),
        };
        let Some(x) = op.get_child("x", DATA) else {
            return answer(Err(bad("a configure request needs a form")));
        };
        if x.attr("type") == Some("cancel") {
            return answer(Ok(None));
        }
        let form_type = x
            .elements()
            .find(|f| f.attr("var") == Some("FORM_TYPE"))
            .map(|f| f.text());
        if form_type.is_some_and(|t| t.trim() != NODE_CONFIG && t.trim() != PUBLISH_OPTIONS) {
            return answer(Err(bad("not a node configuration form")));
        }
        let config = match node_config::apply(&meta.config, x, MAX_ITEMS) {
            Ok(c) => c,
            Err(e) => return answer(Err(e)),
        };
        self.commit(
            &node,
            PubsubOp::Configure { config },
            answer,
            Box::new(|_, _| Ok(None)),
        );
    }

    /// §8.4 (delete) and §8.5 (purge), each told to subscribers if the
    /// node's configuration says so.
    fn delete(self, op: &Element, answer: Answer) {
        self.clear(op, true, answer)
    }

    fn purge(self, op: &Element, answer: Answer) {
        self.clear(op, false, answer)
    }

    fn clear(self, op: &Element, delete: bool, answer: Answer) {
        let (node, meta) = match self.owned(op) {
            Ok(n) => n,
            Err(e) => return answer(Err(e)),
        };
        // Deleted, the node's record is gone: its subscribers are read now.
        let to = Notice::of(&self, &node).with_meta(meta.clone());
        let (change, event, tell) = if delete {
            (PubsubOp::Delete, "delete", meta.config.notify_delete)
        } else {
            (PubsubOp::Purge, "purge", meta.config.notify_retract)
        };
        self.commit(
            &node,
            change,
            answer,
            Box::new(move |b, _| {
                if tell {
                    to.send(
                        b,
                        Element::new(event, EVENT).with_attr("node", to.node.clone()),
                    );
                }
                Ok(None)
            }),
        );
    }

    /// §8.9.1: a node's affiliations, for its owner.
    fn owner_affiliations(&self, op: &Element) -> Result<Option<Element>, StanzaError> {
        let (node, meta) = self.owned(op)?;
        let mut out = Element::new("affiliations", OWNER).with_attr("node", node);
        let list: Vec<(String, Affiliation)> = match self.kind {
            Kind::Pep => vec![(self.service.clone(), Affiliation::Owner)],
            Kind::Service => meta.affiliations.clone(),
        };
        for (jid, a) in list {
            out.push_child(
                Element::new("affiliation", OWNER)
                    .with_attr("jid", jid)
                    .with_attr("affiliation", a.as_str()),
            );
        }
        Ok(Some(Element::new("pubsub", OWNER).with_child(out)))
    }

    /// §8.9.2: change affiliations (a service's nodes; a PEP node's only
    /// owner is its account, and it has no other affiliates).
    fn set_affiliations(self, op: &Element, answer: Answer) {
        if self.kind == Kind::Pep {
            return answer(Err(unsupported("modify-affiliations")));
        }
        let (node, meta) = match self.owned(op) {
            Ok(n) => n,
            Err(e) => return answer(Err(e)),
        };
        let mut changes: Vec<(String, Option<Affiliation>)> = Vec::new();
        for a in op.elements().filter(|e| e.name == "affiliation") {
            let jid = a.attr("jid").and_then(|j| BareJid::new(j).ok());
            let aff = a.attr("affiliation").and_then(Affiliation::parse);
            match (jid, aff) {
                (Some(j), Some(aff)) => {
                    // One change per JID: the last one said.
                    changes.retain(|(x, _)| x != j.as_str());
                    changes.push((j.to_string(), aff));
                }
                _ => {
                    return answer(Err(bad(
                        "each affiliation needs a bare jid and a known affiliation",
                    )))
                }
            }
        }
        // §8.9.2.4: a node keeps at least one owner.
        let mut after = meta.affiliations.clone();
        for (j, a) in &changes {
            after.retain(|(x, _)| x != j);
            if let Some(a) = a {
                after.push((j.clone(), *a));
            }
        }
        if after.len() > MAX_SUBSCRIBERS {
            return answer(Err(StanzaError::with_text(
                StanzaCondition::NotAcceptable,
                "too many affiliations on one node",
            )));
        }
        if !after.iter().any(|(_, a)| *a == Affiliation::Owner) {
            return answer(Err(StanzaError::with_text(
                StanzaCondition::NotAcceptable,
                "a node keeps at least one owner",
            )));
        }
        if changes.len() > MAX_SUBSCRIBERS {
            return answer(Err(bad("too many affiliations in one request")));
        }
        // Applied in the order given (`affiliate_each` takes from the end).
        changes.reverse();
        self.affiliate_each(node, changes, answer);
    }

    fn affiliate_each(
        self,
        node: String,
        mut changes: Vec<(String, Option<Affiliation>)>,
        answer: Answer,
    ) {
        let Some((jid, affiliation)) = changes.pop() else {
            return answer(Ok(None));
        };
        let op = PubsubOp::Affiliate { jid, affiliation };
        let (b, kind, owner, service, from) = (
            self.backend.clone(),
            self.kind,
            self.owner.clone(),
            self.service.clone(),
            self.from.clone(),
        );
        let n = node.clone();
        self.commit(
            &node,
            op,
            Box::new(move |r| match r {
                Ok(_) => Request {
                    backend: b,
                    kind,
                    owner,
                    service,
                    from,
                }
                .affiliate_each(n, changes, answer),
                Err(e) => answer(Err(e)),
            }),
            Box::new(|_, _| Ok(None)),
        );
    }

    /// §8.8.1: a node's subscriptions, for its owner.
    fn owner_subscriptions(&self, op: &Element) -> Result<Option<Element>, StanzaError> {
        let (node, meta) = self.owned(op)?;
        let mut out = Element::new("subscriptions", OWNER).with_attr("node", node);
        for s in meta.subscribers {
            out.push_child(
                Element::new("subscription", OWNER)
                    .with_attr("jid", s)
                    .with_attr("subscription", "subscribed"),
            );
        }
        Ok(Some(Element::new("pubsub", OWNER).with_child(out)))
    }
}

/// What runs once a change is committed: the answer's payload.
type Then =
    Box<dyn FnOnce(&Arc<dyn Backend>, Applied) -> Result<Option<Element>, StanzaError> + Send>;

/// Whom to tell of a change to one node, decided after it is committed.
struct Notice {
    kind: Kind,
    owner: String,
    service: String,
    node: String,
    meta: Option<NodeMeta>,
}

impl Notice {
    fn of(r: &Request, node: &str) -> Notice {
        Notice {
            kind: r.kind,
            owner: r.owner.clone(),
            service: r.service.clone(),
            node: node.to_string(),
            meta: None,
        }
    }

    /// For a node about to be deleted: its record as it was.
    fn with_meta(mut self, meta: NodeMeta) -> Notice {
        self.meta = Some(meta);
        self
    }

    fn send(&self, b: &Arc<dyn Backend>, inner: Element) {
        let state = b.state();
        let Some(meta) = self
            .meta
            .clone()
            .or_else(|| state.pubsub_node(&self.owner, &self.node))
        else {
            return;
        };
        let mut sent: Vec<String> = Vec::new();
        let mut send = |to: String| {
            if !sent.contains(&to) {
                b.send(event_message(&self.service, &to, inner.clone()));
                sent.push(to);
            }
        };
        if self.kind == Kind::Pep {
            // The owner's resources and the contacts who may read the
            // node, by their interest (XEP-0163 §4.3.1).
            let mut bares = vec![self.service.clone()];
            if let Ok(roster) = state.roster(&self.owner) {
                for item in roster.into_iter().filter(|i| i.sub.from) {
                    if may_read(
                        state,
                        b.domain(),
                        self.kind,
                        &self.owner,
                        &meta,
                        &item.jid,
                        None,
                    )
                    .is_ok()
                    {
                        bares.push(item.jid);
                    }
                }
            }
            for bare in bares {
                if !is_local(b, &bare) {
                    // Its server knows its resources' interests.
                    send(bare);
                    continue;
                }
                for r in state.sessions_of(&bare) {
                    let wants = r.available
                        && r.caps
                            .as_deref()
                            .and_then(|v| crate::im::modules::caps::interests_of(state, &r.jid, v))
                            .is_some_and(|i| i.iter().any(|n| n == &self.node));
                    if wants {
                        send(r.jid);
                    }
                }
            }
        }
        // Explicit subscribers who may still read the node (its access
        // model or their roster may have changed since): a local bare JID
        // means its available resources.
        for s in &meta.subscribers {
            let bare = Jid::new(s)
                .map(|j| j.to_bare().to_string())
                .unwrap_or_default();
            let affiliation = match self.kind {
                Kind::Pep => (bare == self.service).then_some(Affiliation::Owner),
                Kind::Service => meta.affiliation(&bare),
            };
            if may_read(
                state,
                b.domain(),
                self.kind,
                &self.owner,
                &meta,
                &bare,
                affiliation,
            )
            .is_err()
            {
                continue;
            }
            if is_local(b, s) && !s.contains('/') {
                for r in state.sessions_of(s).into_iter().filter(|r| r.available) {
                    send(r.jid);
                }
            } else {
                send(s.clone());
            }
        }
    }
}

/// Tell whoever should hear of a change to `node` committed outside a
/// request (bookmarks written as private XML, XEP-0402 §4).
pub fn tell(
    backend: &Arc<dyn Backend>,
    kind: Kind,
    owner: &str,
    service: &str,
    node: &str,
    inner: Element,
) {
    Notice {
        kind,
        owner: owner.to_string(),
        service: service.to_string(),
        node: node.to_string(),
        meta: None,
    }
    .send(backend, inner)
}

fn is_local(b: &Arc<dyn Backend>, jid: &str) -> bool {
    Jid::new(jid).is_ok_and(|j| j.domain().as_str() == b.domain())
}

/// May `requester` (a bare JID) read `meta`'s items (§4.5, §6.5.x)?
pub fn may_read(
    state: &State,
    domain: &str,
    kind: Kind,
    owner: &str,
    meta: &NodeMeta,
    requester: &str,
    affiliation: Option<Affiliation>,
) -> Result<(), StanzaError> {
    match affiliation {
        Some(Affiliation::Owner | Affiliation::Publisher | Affiliation::Member) => return Ok(()),
        Some(Affiliation::Outcast) => return Err(err(StanzaCondition::Forbidden)),
        None => {}
    }
    // Whose roster decides: the account's, or a service node's first owner.
    let roster_owner = match kind {
        Kind::Pep => Some(owner.to_string()),
        Kind::Service => meta
            .affiliations
            .iter()
            .find(|(_, a)| *a == Affiliation::Owner)
            .and_then(|(j, _)| j.split_once('@'))
            .filter(|(_, d)| *d == domain)
            .map(|(u, _)| u.to_string()),
    };
    let item = || {
        roster_owner
            .as_deref()
            .and_then(|o| state.roster_item(o, requester).ok().flatten())
    };
    match meta.config.access_model {
        AccessModel::Open => Ok(()),
        AccessModel::Presence => {
            match item() {
                Some(i) if i.sub.from => Ok(()),
                _ => Err(err(StanzaCondition::NotAuthorized)
                    .with_app(app("presence-subscription-required"))),
            }
        }
        AccessModel::Roster => match item() {
            Some(i) if i.in_roster && (i.sub.from || i.sub.to) => Ok(()),
            _ => Err(err(StanzaCondition::NotAuthorized).with_app(app("not-in-roster-group"))),
        },
        AccessModel::Whitelist => {
            Err(err(StanzaCondition::NotAllowed).with_app(app("closed-node")))
        }
    }
}

/// A notification message from `service` for `to`.
fn event_message(service: &str, to: &str, inner: Element) -> Element {
    Element::new("message", ns::CLIENT)
        .with_attr("from", service.to_string())
        .with_attr("to", to.to_string())
        .with_attr("type", "headline")
        .with_attr("id", format!("ps-{:016x}", rand::random::<u64>()))
        .with_child(Element::new("event", EVENT).with_child(inner))
}

/// One stored item as an event for `to` (a full JID, or another
/// server's JID; a local bare JID reaches its available resources).
pub fn send_item(b: &Arc<dyn Backend>, service: &str, to: &str, node: &str, id: &str, xml: &str) {
    let Ok(payload) = parse_fragment(xml) else {
        return tracing::warn!(%service, node, "a stored item does not parse; not sent");
    };
    let items = Element::new("items", EVENT)
        .with_attr("node", node)
        .with_child(
            Element::new("item", EVENT)
                .with_attr("id", id)
                .with_child(payload),
        );
    if is_local(b, to) && !to.contains('/') {
        for r in b
            .state()
            .sessions_of(to)
            .into_iter()
            .filter(|r| r.available)
        {
            b.send(event_message(service, &r.jid, items.clone()));
        }
    } else {
        b.send(event_message(service, to, items));
    }
}
