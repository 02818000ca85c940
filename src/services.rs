//! Hosted service domains: a feature that owns a domain of its own (a
//! subdomain such as `conference.DOMAIN`) answers every stanza addressed to
//! that domain or to an entity on it. Local users reach it from any node
//! and other servers reach it over federation (the s2s transport accepts
//! and sends for hosted domains); the server's disco#items lists it
//! (XEP-0030 §4). A service sees only the stanza and answers with any
//! number of stanzas; it holds no handle on the rest of the server.
//!
//! Generic answers for every service: disco#info from its declaration
//! (XEP-0030 §3), empty disco#items, XEP-0199 ping; an iq nobody handles
//! gets `<service-unavailable/>` (RFC 6120 §8.4).
//!
//! The one service today is `echo` (`[services] echo = "echo.DOMAIN"`), a
//! diagnostic: it answers chat and normal messages with "echo: <body>", so
//! an operator (or a test) can check that a hosted domain is reachable
//! locally and over federation.

use std::collections::HashMap;
use std::sync::Arc;

use crate::stanza_error::{bounce, StanzaCondition};
use crate::xml::{ns, Element};

/// A service on a hosted domain.
pub trait HostedService: Send + Sync {
    /// The disco#info identity: (category, type, name).
    fn identity(&self) -> (&'static str, &'static str, &'static str);
    /// The disco#info features beyond disco and ping.
    fn features(&self) -> Vec<&'static str> {
        Vec::new()
    }
    /// A stanza for the service (not an iq the generic part answered);
    /// returns the stanzas to send, each with `from` and `to` set.
    fn handle(&self, stanza: &Element) -> Vec<Element>;
}

/// The hosted services, by domain (lower case).
#[derive(Default)]
pub struct Services {
    by_domain: HashMap<String, Arc<dyn HostedService>>,
}

impl Services {
    /// The services `config` turns on.
    pub fn from_config(config: &crate::config::ServicesSection) -> Services {
        let mut s = Services::default();
        if !config.echo.is_empty() {
            s.by_domain
                .insert(config.echo.to_ascii_lowercase(), Arc::new(Echo));
        }
        s
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

    /// Answer a stanza addressed to `domain` (or an entity on it): the
    /// stanzas to send in return.
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
            Some(ns::DISCO_INFO) if get && to_domain => {
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
                vec![crate::modules::result(stanza, Some(q))]
            }
            Some(ns::DISCO_ITEMS) if get && to_domain => vec![crate::modules::result(
                stanza,
                Some(Element::new("query", ns::DISCO_ITEMS)),
            )],
            Some(ns::PING) if get => vec![crate::modules::result(stanza, None)],
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
        Services::from_config(&crate::config::ServicesSection {
            echo: "Echo.Example".into(),
        })
    }

    #[test]
    fn echo_answers_a_chat_message_from_the_addressed_entity() {
        let msg = crate::xml::parse_fragment(
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
        let info = crate::xml::parse_fragment(
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
        let other = crate::xml::parse_fragment(
            "<iq xmlns='jabber:client' from='a@example/r' to='echo.example' type='get' id='i2'><query xmlns='jabber:iq:version'/></iq>",
        )
        .expect("xml");
        let out = s.handle("echo.example", &other);
        assert_eq!(out[0].attr("type"), Some("error"));
        assert!(s.hosts("ECHO.example"));
        assert!(!s.hosts("example"));
    }
}
