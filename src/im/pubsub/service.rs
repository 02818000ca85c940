//! The publish-subscribe service at `pubsub.DOMAIN` (XEP-0060), a hosted
//! service domain (`services.rs`) run by the engine in `mod.rs`: any
//! local user creates nodes and owns them; affiliations decide who
//! publishes and reads (§4.1); subscribers hear of changes. Its nodes
//! are listed by disco#items (§5.2), each described by disco#info with
//! its meta-data form (§5.4), its items listed (§5.5). Any node of the
//! cluster serves it: its state is replicated.

use std::sync::Arc;

use jid::Jid;

use super::{Backend, Kind, Request, NS, OWNER};
use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::xml::{ns, Element};
use crate::im::services::{Host, HostedService};
use crate::model::state::{Applied, Command, State};

pub struct Pubsub {
    domain: String,
    key: String,
}

impl Pubsub {
    pub fn new(domain: &str) -> Pubsub {
        Pubsub {
            domain: domain.to_string(),
            key: super::service_key(domain),
        }
    }
}

/// The engine's view of this node, through the host.
struct Hosted {
    host: Arc<dyn Host>,
    state: Arc<State>,
    domain: String,
}

impl Backend for Hosted {
    fn state(&self) -> &State {
        &self.state
    }

    fn domain(&self) -> &str {
        &self.domain
    }

    fn commit(&self, cmd: Command, then: Box<dyn FnOnce(Result<Applied, String>) + Send>) {
        self.host.commit(cmd, then)
    }

    fn send(&self, stanza: Element) {
        self.host.send(stanza)
    }

    fn caught_up(&self, then: Box<dyn FnOnce(bool) + Send>) {
        self.host.caught_up(then)
    }
}

impl HostedService for Pubsub {
    fn identity(&self) -> (&'static str, &'static str, &'static str) {
        ("pubsub", "service", "Publish-Subscribe")
    }

    fn features(&self) -> Vec<&'static str> {
        let mut f = super::FEATURES.to_vec();
        f.extend([
            "http://jabber.org/protocol/pubsub#meta-data",
            "http://jabber.org/protocol/pubsub#modify-affiliations",
            "http://jabber.org/protocol/pubsub#multi-subscribe",
            "http://jabber.org/protocol/pubsub#outcast-affiliation",
            "http://jabber.org/protocol/pubsub#publisher-affiliation",
            "http://jabber.org/protocol/pubsub#member-affiliation",
        ]);
        f
    }

    fn handle(&self, _stanza: &Element) -> Vec<Element> {
        Vec::new() // messages and presence: nothing to do; errors are not answered
    }

    fn serve_later(&self, stanza: &Element, host: &Arc<dyn Host>) -> bool {
        if stanza.name != "iq" || !matches!(stanza.attr("type"), Some("get") | Some("set")) {
            return false;
        }
        let Some(payload) = stanza.elements().next() else {
            return false;
        };
        let (Some(state), Some(from)) = (
            host.state(),
            stanza.attr("from").and_then(|f| Jid::new(f).ok()),
        ) else {
            return false;
        };
        let set = stanza.attr("type") == Some("set");
        let backend: Arc<dyn Backend> = Arc::new(Hosted {
            host: host.clone(),
            state: state.clone(),
            domain: host.domain(),
        });
        let request = Request {
            backend,
            kind: Kind::Service,
            owner: self.key.clone(),
            service: self.domain.clone(),
            from,
        };
        let reply = |r: Result<Option<Element>, StanzaError>, iq: &Element| match r {
            Ok(p) => crate::im::modules::result(iq, p),
            Err(e) => e.reply_to(iq),
        };
        let node = payload.attr("node").map(str::to_string);
        match (payload.ns.as_str(), set) {
            (NS | OWNER, _) => {
                let (h, iq) = (host.clone(), stanza.clone());
                request.handle(set, payload, Box::new(move |r| h.send(reply(r, &iq))));
            }
            // Reads wait until this node has applied what the cluster had
            // committed (a node another node just made is listed).
            (ns::DISCO_ITEMS, false) | (ns::DISCO_INFO, false)
                if payload.ns == ns::DISCO_ITEMS || node.is_some() =>
            {
                let (h, iq, me) = (host.clone(), stanza.clone(), self.clone_ref());
                host.caught_up(Box::new(move |_| {
                    let r = if iq
                        .elements()
                        .next()
                        .is_some_and(|q| q.ns == ns::DISCO_ITEMS)
                    {
                        me.items(&request, &state, node.as_deref())
                    } else {
                        me.info(&state, node.as_deref())
                    };
                    h.send(reply(r, &iq));
                }));
            }
            _ => return false,
        }
        true
    }
}

impl Pubsub {
    /// A copy to move into a callback (the service keeps no other state).
    fn clone_ref(&self) -> Pubsub {
        Pubsub::new(&self.domain)
    }

    /// §5.2 (the nodes) and §5.5 (a node's items).
    fn items(
        &self,
        r: &Request,
        state: &State,
        node: Option<&str>,
    ) -> Result<Option<Element>, StanzaError> {
        let mut q = Element::new("query", ns::DISCO_ITEMS);
        match node {
            None => {
                for name in state.pubsub_nodes(&self.key) {
                    let meta = state.pubsub_node(&self.key, &name);
                    let mut item = Element::new("item", ns::DISCO_ITEMS)
                        .with_attr("jid", self.domain.clone())
                        .with_attr("node", name);
                    if let Some(t) = meta.and_then(|m| m.config.title) {
                        item.set_attr("name", t);
                    }
                    q.push_child(item);
                }
            }
            Some(n) => {
                let meta = state
                    .pubsub_node(&self.key, n)
                    .ok_or_else(|| StanzaError::new(StanzaCondition::ItemNotFound))?;
                r.may_read(&meta)?;
                q.set_attr("node", n);
                for (id, _) in state.pubsub_items(&self.key, n) {
                    q.push_child(
                        Element::new("item", ns::DISCO_ITEMS)
                            .with_attr("jid", self.domain.clone())
                            .with_attr("name", id),
                    );
                }
            }
        }
        Ok(Some(q))
    }

    /// §5.4: a node's identity and meta-data.
    fn info(&self, state: &State, node: Option<&str>) -> Result<Option<Element>, StanzaError> {
        let n = node.unwrap_or_default();
        let meta = state
            .pubsub_node(&self.key, n)
            .ok_or_else(|| StanzaError::new(StanzaCondition::ItemNotFound))?;
        let data = super::node_config::DATA;
        let field = |var: &str, value: String| {
            Element::new("field", data)
                .with_attr("var", var)
                .with_child(Element::new("value", data).with_text(value))
        };
        let owners: Vec<String> = meta
            .affiliations
            .iter()
            .filter(|(_, a)| *a == crate::model::state::pubsub::Affiliation::Owner)
            .map(|(j, _)| j.clone())
            .collect();
        let mut form = Element::new("x", data)
            .with_attr("type", "result")
            .with_child(
                field(
                    "FORM_TYPE",
                    "http://jabber.org/protocol/pubsub#meta-data".into(),
                )
                .with_attr("type", "hidden"),
            )
            .with_child(field(
                "pubsub#access_model",
                meta.config.access_model.as_str().into(),
            ))
            .with_child(field(
                "pubsub#title",
                meta.config.title.clone().unwrap_or_default(),
            ));
        let mut o = Element::new("field", data).with_attr("var", "pubsub#owner");
        for j in owners {
            o.push_child(Element::new("value", data).with_text(j));
        }
        form.push_child(o);
        Ok(Some(
            Element::new("query", ns::DISCO_INFO)
                .with_attr("node", n)
                .with_child(
                    Element::new("identity", ns::DISCO_INFO)
                        .with_attr("category", "pubsub")
                        .with_attr("type", "leaf"),
                )
                .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", NS))
                .with_child(form),
        ))
    }
}
