//! Hosted service domains: a feature that owns a domain of its own (a
//! subdomain such as `conference.DOMAIN`) answers every stanza addressed to
//! that domain or to an entity on it. Local users reach it from any node
//! and other servers reach it over federation (the s2s transport accepts
//! and sends for hosted domains); the server's disco#items lists it
//! (XEP-0030 §4). A service holds no handle on the rest of the server but
//! the [`Host`] it is given with each stanza.
//!
//! Generic answers for every service: disco#info from its declaration
//! (XEP-0030 §3), disco#items from its items, XEP-0199 ping; an iq nobody
//! handles gets `<service-unavailable/>` (RFC 6120 §8.4).
//!
//! A service whose entities keep state (group-chat rooms) declares
//! [`HostedService::owns_entities`]: each entity (`name@domain`) lives on
//! one node of the cluster, the one that claimed it through Raft
//! (`Command::HostedClaim`; a node that dies loses its claims with its
//! sessions). A stanza for an entity reaches its owner from any node
//! (relayed over the mesh); a stanza that may create one (a join) on an
//! unclaimed entity claims it for the node it arrived on first.
//!
//! Services: `echo` (`[services] echo = "echo.DOMAIN"`), a diagnostic that
//! answers chat and normal messages with "echo: <body>"; group chat
//! (`muc.rs`'s rooms, `[services] muc`, by default `conference.DOMAIN`);
//! publish-subscribe (`pubsub/service.rs`, `[services] pubsub`, by
//! default `pubsub.DOMAIN`).

use std::collections::HashMap;
use std::sync::Arc;

use crate::base::stanza_error::{bounce, StanzaCondition};
use crate::base::xml::{ns, Element};

/// What a service may ask of the node it runs on: the node implements it
/// (the transports' side of routing), so a service never names them.
pub trait Host: Send + Sync {
    /// Send a stanza (its `from` an entity of the service) wherever its
    /// `to` is: a local user on any node, a remote server, a service.
    fn send(&self, stanza: Element);
    /// This node's id.
    fn node(&self) -> u64;
    /// The node that owns `entity` (a bare JID), if one claimed it.
    fn owner(&self, entity: &str) -> Option<u64>;
    /// Claim `entity` for this node through the cluster; `then` gets the
    /// owner once the claim is applied (this node, or an earlier
    /// claimer), or None if the cluster could not commit.
    fn claim(&self, entity: &str, then: Box<dyn FnOnce(Option<u64>) + Send>);
    /// Pass a stanza for an entity of `domain` to its owner `node`
    /// (`hops`: nodes it went through, this one included).
    fn relay(&self, node: u64, domain: &str, stanza: &Element, hops: u8);
    /// Where the service starts its actors.
    fn arbiter(&self) -> Option<actix_rt::ArbiterHandle>;
    /// An entity's replicated records, by key (this node's replica).
    fn load(&self, entity: &str) -> Vec<(String, String)>;
    /// One of an entity's records.
    fn load_one(&self, entity: &str, key: &str) -> Option<String>;
    /// The entities of `domain` some node has claimed.
    fn entities(&self, domain: &str) -> Vec<String>;
    /// Write an entity's records through the cluster (None removes one);
    /// `then` learns whether they are committed.
    fn store(
        &self,
        entity: &str,
        writes: Vec<(String, Option<String>)>,
        archive: Vec<crate::model::state::ArchiveEntry>,
        replace: Vec<crate::model::state::ArchiveEntry>,
        then: Box<dyn FnOnce(bool) + Send>,
    );
    /// An archive query (XEP-0313) to `owner`'s own archive: the results
    /// and the answer, in order.
    fn archive_query(&self, owner: &str, iq: &Element) -> Vec<Element>;
    /// Give `entity` to node `to` (this node drains); `then` learns
    /// whether the move is committed.
    fn hand_over(&self, entity: &str, to: u64, then: Box<dyn FnOnce(bool) + Send>);
    /// Whether `full` is a session of this cluster's users that the
    /// cluster no longer has (its node died, or it ended unannounced).
    fn session_gone(&self, full: &str) -> bool;
    /// This node's replica of the cluster's state (reads are local).
    fn state(&self) -> Option<Arc<crate::model::state::State>>;
    /// The server's own domain.
    fn domain(&self) -> String;
    /// `then(true)` once this node has applied everything the cluster had
    /// committed when asked (false: no quorum answered in time).
    fn caught_up(&self, then: Box<dyn FnOnce(bool) + Send>);
    /// Commit a change through the cluster; `then` learns what it applied.
    fn commit(
        &self,
        cmd: crate::model::state::Command,
        then: Box<dyn FnOnce(Result<crate::model::state::Applied, String>) + Send>,
    );
}

/// A service on a hosted domain.
pub trait HostedService: Send + Sync {
    /// The disco#info identity: (category, type, name).
    fn identity(&self) -> (&'static str, &'static str, &'static str);
    /// The disco#info features beyond disco and ping.
    fn features(&self) -> Vec<&'static str> {
        Vec::new()
    }
    /// The disco#items of the service's domain: (jid, name).
    fn items(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// An extended disco#info form (XEP-0128), if the service has one.
    fn info_extension(&self) -> Option<Element> {
        None
    }
    /// A stanza for the service (not an iq the generic part answered);
    /// returns the stanzas to send, each with `from` and `to` set.
    fn handle(&self, stanza: &Element) -> Vec<Element>;
    /// Whether its entities keep state, each on one owner node.
    fn owns_entities(&self) -> bool {
        false
    }
    /// The disco#items of the domain across the cluster (entities on any
    /// node), if the service lists them from the store; else `items`.
    fn cluster_items(&self, _domain: &str, _host: &Arc<dyn Host>) -> Option<Vec<(String, String)>> {
        None
    }
    /// Whether `stanza` may create the entity it is addressed to.
    fn creates(&self, _stanza: &Element) -> bool {
        false
    }
    /// Whether `entity` has state kept in the cluster (an entity that
    /// lives on, claimed again by the next node that needs it).
    fn stored(&self, _entity: &str, _host: &Arc<dyn Host>) -> bool {
        false
    }
    /// Start `entity` again from its kept state on this node, which just
    /// claimed it (its owner died).
    fn revive(&self, _entity: &str, _host: &Arc<dyn Host>) {}
    /// A node died: entities here drop what they held of its sessions.
    fn node_gone(&self, _host: &Arc<dyn Host>) {}
    /// This node drains: give every entity here to one of `others`.
    fn hand_over(&self, _others: &[u64]) {}
    /// How many entities run on this node.
    fn running(&self) -> usize {
        0
    }
    /// A stanza for the service (or an entity of a service without owned
    /// entities), before the generic answers: a service whose answers
    /// come later (after a commit) takes it and answers through `host`;
    /// false leaves it to the generic part and `handle`.
    fn serve_later(&self, _stanza: &Element, _host: &Arc<dyn Host>) -> bool {
        false
    }
    /// A stanza for one of its entities, on the entity's owner node (or
    /// on the node it arrived at, for an unclaimed entity that it does not
    /// create); answers go out through `host`.
    fn take(&self, stanza: Element, host: &Arc<dyn Host>) {
        for out in self.handle(&stanza) {
            host.send(out);
        }
    }
}

/// The hosted services, by domain (lower case).
#[derive(Default)]
pub struct Services {
    by_domain: HashMap<String, Arc<dyn HostedService>>,
}

impl Services {
    /// The services `config` turns on, for the server's `domain`.
    pub fn from_config(
        config: &crate::model::config::ServicesSection,
        domain: &str,
        archive: bool,
    ) -> Services {
        let mut s = Services::default();
        if !config.echo.is_empty() {
            s.by_domain
                .insert(config.echo.to_ascii_lowercase(), Arc::new(Echo));
        }
        if let Some(d) = config.pubsub_domain(domain) {
            s.by_domain.insert(
                d.clone(),
                Arc::new(crate::im::pubsub::service::Pubsub::new(&d)),
            );
        }
        if let Some(muc) = config.muc_domain(domain) {
            let limits = crate::im::muc::Limits::from_config(config, archive);
            let service: Arc<dyn HostedService> = crate::im::muc::Muc::new(&muc, limits);
            s.by_domain.insert(muc.clone(), service);
        }
        s
    }

    /// Host `service` at `domain` too.
    pub fn insert(&mut self, domain: &str, service: Arc<dyn HostedService>) {
        self.by_domain.insert(domain.to_ascii_lowercase(), service);
    }

    /// Whether `domain` is a hosted service domain.
    pub fn hosts(&self, domain: &str) -> bool {
        self.by_domain.contains_key(&domain.to_ascii_lowercase())
    }

    /// The hosted domains, sorted (for disco#items).
    pub fn domains(&self) -> Vec<&str> {
        let mut d: Vec<&str> = self.by_domain.keys().map(String::as_str).collect();
        d.sort_unstable();
        d
    }

    /// Serve a stanza addressed to `domain` (or an entity on it): answers
    /// and stanzas for the entity's owner go out through `host`.
    /// `hops`: how many nodes it went through (another node took this one
    /// for the owner; an owner that moved meanwhile gets it passed on, a
    /// few times at most).
    pub fn serve(&self, domain: &str, stanza: Element, host: &Arc<dyn Host>, hops: u8) {
        let Some(service) = self.by_domain.get(&domain.to_ascii_lowercase()) else {
            if let Some(e) = bounce(&stanza, StanzaCondition::ServiceUnavailable) {
                host.send(e);
            }
            return;
        };
        let entity = stanza
            .attr("to")
            .and_then(|t| jid::Jid::new(t).ok())
            .filter(|j| j.node().is_some())
            .map(|j| j.to_bare().to_string());
        let items_of_domain = stanza.name == "iq"
            && stanza.attr("type") == Some("get")
            && stanza
                .attr("to")
                .is_some_and(|t| t.eq_ignore_ascii_case(domain))
            && stanza
                .elements()
                .next()
                .is_some_and(|q| q.is("query", ns::DISCO_ITEMS) && q.attr("node").is_none());
        if items_of_domain {
            if let Some(items) = service.cluster_items(domain, host) {
                let mut q = Element::new("query", ns::DISCO_ITEMS);
                for (jid, name) in items {
                    let mut item = Element::new("item", ns::DISCO_ITEMS).with_attr("jid", jid);
                    if !name.is_empty() {
                        item.set_attr("name", name);
                    }
                    q.push_child(item);
                }
                host.send(crate::im::modules::result(&stanza, Some(q)));
                return;
            }
        }
        match entity {
            Some(entity) if service.owns_entities() => {
                to_entity(service.clone(), domain, entity, stanza, host, hops)
            }
            _ => {
                if service.serve_later(&stanza, host) {
                    return;
                }
                for out in self.handle(domain, &stanza) {
                    host.send(out);
                }
            }
        }
    }

    /// Entities a dead node owned (`Applied::released`): each with kept
    /// state is claimed for this node and started again here.
    pub fn revive(&self, entities: &[String], host: &Arc<dyn Host>) {
        for entity in entities {
            let Some(service) = jid::BareJid::new(entity).ok().and_then(|j| {
                self.by_domain
                    .get(&j.domain().as_str().to_ascii_lowercase())
                    .cloned()
            }) else {
                continue;
            };
            if !service.owns_entities() || !service.stored(entity, host) {
                continue;
            }
            let h = host.clone();
            let e = entity.clone();
            host.claim(
                entity,
                Box::new(move |owner| {
                    if owner == Some(h.node()) {
                        tracing::info!(entity = %e, "hosted entity revived here");
                        service.revive(&e, &h);
                    }
                }),
            );
        }
    }

    /// This node drains: its entities move to `others` (each starts
    /// there from its records on its next stanza). Returns once none
    /// runs here, or after `wait`.
    pub async fn hand_over(&self, others: &[u64], wait: std::time::Duration) {
        if others.is_empty() {
            return;
        }
        for s in self.by_domain.values() {
            s.hand_over(others);
        }
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            if self.by_domain.values().all(|s| s.running() == 0) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tracing::warn!("drain: some hosted entities were not handed over in time");
    }

    /// A node died: every service drops what it held of its sessions.
    pub fn node_gone(&self, host: &Arc<dyn Host>) {
        for s in self.by_domain.values() {
            s.node_gone(host);
        }
    }

    /// Answer a stanza addressed to `domain` (or an entity on it, for a
    /// service without owned entities): the stanzas to send in return.
    pub fn handle(&self, domain: &str, stanza: &Element) -> Vec<Element> {
        let Some(service) = self.by_domain.get(&domain.to_ascii_lowercase()) else {
            return bounce(stanza, StanzaCondition::ServiceUnavailable)
                .into_iter()
                .collect();
        };
        if stanza.name != "iq" {
            return service.handle(stanza);
        }
        match stanza.attr("type") {
            Some("get") | Some("set") => {}
            _ => return service.handle(stanza), // results and errors
        }
        let to_domain = stanza
            .attr("to")
            .is_some_and(|t| t.eq_ignore_ascii_case(domain));
        let payload = stanza.elements().next();
        let get = stanza.attr("type") == Some("get");
        match payload.map(|p| p.ns.as_str()) {
            Some(ns::DISCO_INFO)
                if get && to_domain && payload.and_then(|p| p.attr("node")).is_none() =>
            {
                let (category, kind, name) = service.identity();
                let mut q = Element::new("query", ns::DISCO_INFO).with_child(
                    Element::new("identity", ns::DISCO_INFO)
                        .with_attr("category", category)
                        .with_attr("type", kind)
                        .with_attr("name", name),
                );
                let mut features = vec![ns::DISCO_INFO, ns::DISCO_ITEMS, ns::PING];
                features.extend(service.features());
                features.sort_unstable();
                features.dedup();
                for f in features {
                    q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
                }
                if let Some(form) = service.info_extension() {
                    q.push_child(form);
                }
                vec![crate::im::modules::result(stanza, Some(q))]
            }
            Some(ns::DISCO_ITEMS)
                if get && to_domain && payload.and_then(|p| p.attr("node")).is_none() =>
            {
                let mut q = Element::new("query", ns::DISCO_ITEMS);
                for (jid, name) in service.items() {
                    let mut item = Element::new("item", ns::DISCO_ITEMS).with_attr("jid", jid);
                    if !name.is_empty() {
                        item.set_attr("name", name);
                    }
                    q.push_child(item);
                }
                vec![crate::im::modules::result(stanza, Some(q))]
            }
            Some(ns::PING) if get && to_domain => vec![crate::im::modules::result(stanza, None)],
            _ => {
                let answers = service.handle(stanza);
                if answers.is_empty() {
                    bounce(stanza, StanzaCondition::ServiceUnavailable)
                        .into_iter()
                        .collect()
                } else {
                    answers
                }
            }
        }
    }
}

/// How often a stanza for an entity is passed between nodes.
const MAX_HOPS: u8 = 3;

/// A stanza for `entity` of a service whose entities live on one node each.
fn to_entity(
    service: Arc<dyn HostedService>,
    domain: &str,
    entity: String,
    stanza: Element,
    host: &Arc<dyn Host>,
    hops: u8,
) {
    let me = host.node();
    match host.owner(&entity) {
        Some(n) if n == me => service.take(stanza, host),
        Some(n) if hops < MAX_HOPS => host.relay(n, domain, &stanza, hops.saturating_add(1)),
        Some(n) => {
            tracing::info!(%entity, owner = n, hops, "hosted stanza dropped: passed between nodes too often");
            if let Some(e) = bounce(&stanza, StanzaCondition::ServiceUnavailable) {
                host.send(e);
            }
        }
        None if service.creates(&stanza) || service.stored(&entity, host) => {
            let h = host.clone();
            let domain = domain.to_string();
            host.claim(
                &entity.clone(),
                Box::new(move |owner| match owner {
                    Some(n) if n == h.node() => service.take(stanza, &h),
                    Some(n) if hops < MAX_HOPS => h.relay(n, &domain, &stanza, hops.saturating_add(1)),
                    Some(n) => {
                        tracing::info!(%entity, owner = n, hops, "hosted stanza dropped: passed between nodes too often");
                        if let Some(e) = bounce(&stanza, StanzaCondition::ServiceUnavailable) {
                            h.send(e);
                        }
                    }
                    None => {
                        tracing::info!(%entity, "hosted stanza dropped: no commit for the claim");
                        if let Some(e) = bounce(&stanza, StanzaCondition::ServiceUnavailable) {
                            h.send(e);
                        }
                    }
                }),
            );
        }
        None => service.take(stanza, host),
    }
}

/// The diagnostic echo service.
struct Echo;

impl HostedService for Echo {
    fn identity(&self) -> (&'static str, &'static str, &'static str) {
        ("component", "generic", "Starling echo")
    }

    fn handle(&self, stanza: &Element) -> Vec<Element> {
        if stanza.name != "message" {
            return Vec::new();
        }
        if !matches!(stanza.attr("type").unwrap_or("normal"), "chat" | "normal") {
            return Vec::new();
        }
        let (Some(from), Some(to)) = (stanza.attr("from"), stanza.attr("to")) else {
            return Vec::new();
        };
        let Some(body) = stanza.get_child("body", ns::CLIENT) else {
            return Vec::new();
        };
        let mut reply = Element::new("message", ns::CLIENT)
            .with_attr("from", to)
            .with_attr("to", from)
            .with_attr("type", stanza.attr("type").unwrap_or("normal"))
            .with_child(
                Element::new("body", ns::CLIENT).with_text(format!("echo: {}", body.text())),
            );
        if let Some(id) = stanza.attr("id") {
            reply.set_attr("id", id);
        }
        vec![reply]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo() -> Services {
        Services::from_config(
            &crate::model::config::ServicesSection {
                echo: "Echo.Example".into(),
                muc: Some(String::new()),
                ..Default::default()
            },
            "example",
            false,
        )
    }

    #[test]
    fn echo_answers_a_chat_message_from_the_addressed_entity() {
        let msg = crate::base::xml::parse_fragment(
            "<message xmlns='jabber:client' from='a@example/r' to='bot@echo.example' type='chat' id='m1'><body>hi</body></message>",
        )
        .expect("xml");
        let out = echo().handle("echo.example", &msg);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].attr("from"), Some("bot@echo.example"));
        assert_eq!(out[0].attr("to"), Some("a@example/r"));
        assert_eq!(
            out[0].get_child("body", ns::CLIENT).map(|b| b.text()),
            Some("echo: hi".to_string())
        );
    }

    #[test]
    fn disco_info_comes_from_the_declaration_and_unknown_iqs_are_refused() {
        let s = echo();
        let info = crate::base::xml::parse_fragment(
            "<iq xmlns='jabber:client' from='a@example/r' to='echo.example' type='get' id='i1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        )
        .expect("xml");
        let out = s.handle("echo.example", &info);
        let q = out[0].get_child("query", ns::DISCO_INFO).expect("query");
        let vars: Vec<_> = q.elements().filter_map(|f| f.attr("var")).collect();
        assert!(vars.contains(&ns::PING), "{vars:?}");
        assert_eq!(
            q.elements().next().and_then(|i| i.attr("category")),
            Some("component")
        );
        let other = crate::base::xml::parse_fragment(
            "<iq xmlns='jabber:client' from='a@example/r' to='echo.example' type='get' id='i2'><query xmlns='jabber:iq:version'/></iq>",
        )
        .expect("xml");
        let out = s.handle("echo.example", &other);
        assert_eq!(out[0].attr("type"), Some("error"));
        assert!(s.hosts("ECHO.example"));
        assert!(!s.hosts("example"));
    }
}
