//! XEP-0030 Service Discovery: info and items for the server and for
//! accounts. Features come from what the modules declared; the server's
//! items are the services it hosts (the external components of
//! `[component] secrets`, cluster-wide, and the `[services]` domains), so
//! clients find them (§4). An account's items are the PEP nodes the asker
//! may read, and such a node's info names it a leaf (XEP-0060 §5.2, §5.3).
//!
//! The server's info also carries its contact addresses (XEP-0157, a
//! XEP-0128 form, from `[contact]`), and its hash is the server's own
//! entity capabilities (XEP-0115 §6.3): stream features name it, and a
//! disco#info query for `node#ver` answers the same info.

use super::{Addressee, IqKind, IqRequest, IqResponse, Module};
use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::xml::{ns, Element};
use crate::im::context::ImCtx;

pub struct Disco;

/// The node of the server's capabilities (XEP-0115 §4: names the software).
pub const CAPS_NODE: &str = "urn:x-starling:server";
const SERVERINFO: &str = "http://jabber.org/network/serverinfo";
const DATA: &str = "jabber:x:data";

/// The server's disco#info answer (without a `node`).
pub fn server_info(ctx: &ImCtx) -> Element {
    let mut q = Element::new("query", ns::DISCO_INFO);
    q.push_child(
        Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", "server")
            .with_attr("type", "im")
            .with_attr("name", "Starling"),
    );
    for f in ctx.modules.features(ctx) {
        q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
    }
    // XEP-0157 §2: only when some address is set.
    let fields = ctx.config.contact.fields();
    if fields.iter().any(|(_, a)| !a.is_empty()) {
        let mut x = Element::new("x", DATA)
            .with_attr("type", "result")
            .with_child(
                Element::new("field", DATA)
                    .with_attr("var", "FORM_TYPE")
                    .with_attr("type", "hidden")
                    .with_child(Element::new("value", DATA).with_text(SERVERINFO)),
            );
        for (var, addresses) in fields.into_iter().filter(|(_, a)| !a.is_empty()) {
            let mut field = Element::new("field", DATA)
                .with_attr("var", var)
                .with_attr("type", "list-multi");
            for a in addresses {
                field.push_child(Element::new("value", DATA).with_text(a));
            }
            x.push_child(field);
        }
        q.push_child(x);
    }
    q
}

/// The verification string's hash of [`server_info`] (XEP-0115 §5.1,
/// SHA-1), made once: what the modules declare does not change while the
/// server runs.
pub fn server_caps(ctx: &ImCtx) -> &str {
    ctx.server_caps
        .get_or_init(|| super::caps::hash(&server_info(ctx)))
}

/// The account a query to an account is about: the one addressed, or
/// the sender's own.
fn account_asked(req: &IqRequest) -> jid::BareJid {
    match (&req.addressee, &req.target) {
        (Addressee::OtherAccount, Some(t)) => t.clone(),
        _ => req.from.to_bare(),
    }
}

/// An account's PEP nodes that `req`'s sender may read (XEP-0060 §5.2:
/// a service lists only what the requester may see), by name; none for
/// a temporary account (no PEP service there).
fn readable_pep_nodes(req: &IqRequest, only: Option<&str>) -> Vec<String> {
    let owner = account_asked(req);
    let ctx = req.server;
    if owner.domain().as_str() != ctx.config.domain {
        return Vec::new();
    }
    let Some(user) = owner.node().map(|n| n.as_str()) else {
        return Vec::new();
    };
    let requester = req.from.to_bare();
    let mine = requester == owner;
    let names = match only {
        Some(n) => vec![n.to_string()],
        None => ctx.state.pubsub_nodes(user),
    };
    names
        .into_iter()
        .filter(|name| {
            let Some(meta) = ctx.state.pubsub_node(user, name) else {
                return false;
            };
            mine || crate::im::pubsub::may_read(
                &ctx.state,
                &ctx.config.domain,
                crate::im::pubsub::Kind::Pep,
                user,
                &meta,
                requester.as_str(),
                meta.affiliation(requester.as_str()),
            )
            .is_ok()
        })
        .collect()
}

/// The `<c/>` of stream features that names the server's capabilities
/// (XEP-0115 §6.3).
pub fn caps_feature(ctx: &ImCtx) -> Element {
    Element::new("c", super::caps::NS)
        .with_attr("hash", "sha-1")
        .with_attr("node", CAPS_NODE)
        .with_attr("ver", server_caps(ctx))
}

impl Module for Disco {
    fn features(&self, _: &ImCtx) -> Vec<&'static str> {
        vec![ns::DISCO_INFO, ns::DISCO_ITEMS]
    }

    fn handles(&self) -> Vec<(IqKind, Addressee, &'static str)> {
        vec![
            (IqKind::Get, Addressee::Host, ns::DISCO_INFO),
            (IqKind::Get, Addressee::Host, ns::DISCO_ITEMS),
            (IqKind::Get, Addressee::Account, ns::DISCO_INFO),
            (IqKind::Get, Addressee::Account, ns::DISCO_ITEMS),
            (IqKind::Get, Addressee::OtherAccount, ns::DISCO_INFO),
            (IqKind::Get, Addressee::OtherAccount, ns::DISCO_ITEMS),
        ]
    }

    fn handle_iq(&self, req: &IqRequest) -> IqResponse {
        // The server's nodes are its ad-hoc commands (XEP-0050 §2), and
        // its capabilities (XEP-0115 §6.2).
        if let Some(node) = req.payload.attr("node") {
            let caps = node
                .strip_prefix(CAPS_NODE)
                .and_then(|n| n.strip_prefix('#'))
                .is_some_and(|ver| ver == server_caps(req.server));
            let found = match (req.addressee, req.payload.ns.as_str()) {
                (Addressee::Host, ns::DISCO_INFO) if caps => {
                    Some(server_info(req.server).with_attr("node", node))
                }
                (Addressee::Host, ns::DISCO_ITEMS) if node == super::admin_commands::NS => Some(
                    super::admin_commands::items(req.server, &req.from.to_bare()),
                ),
                (Addressee::Host, ns::DISCO_INFO) => super::admin_commands::info(node),
                // XEP-0060 §5.3 on a PEP node (XEP-0163 §6).
                (Addressee::Account | Addressee::OtherAccount, ns::DISCO_INFO)
                    if !readable_pep_nodes(req, Some(node)).is_empty() =>
                {
                    Some(
                        Element::new("query", ns::DISCO_INFO)
                            .with_attr("node", node)
                            .with_child(
                                Element::new("identity", ns::DISCO_INFO)
                                    .with_attr("category", "pubsub")
                                    .with_attr("type", "leaf"),
                            )
                            .with_child(
                                Element::new("feature", ns::DISCO_INFO)
                                    .with_attr("var", crate::im::pubsub::NS),
                            ),
                    )
                }
                _ => None,
            };
            return found
                .map(|q| Ok(Some(q)))
                .unwrap_or_else(|| Err(StanzaError::new(StanzaCondition::ItemNotFound)))
                .into();
        }
        if req.payload.ns == ns::DISCO_ITEMS {
            let mut q = Element::new("query", ns::DISCO_ITEMS);
            if req.addressee == Addressee::Host {
                let mut domains: Vec<&str> = req
                    .server
                    .config
                    .component
                    .secrets
                    .keys()
                    .map(String::as_str)
                    .chain(req.server.services.domains())
                    .collect();
                domains.sort_unstable();
                for domain in domains {
                    q.push_child(Element::new("item", ns::DISCO_ITEMS).with_attr("jid", domain));
                }
            } else {
                // An account's items are its PEP nodes (XEP-0060 §5.2).
                let owner = account_asked(req).to_string();
                for name in readable_pep_nodes(req, None) {
                    q.push_child(
                        Element::new("item", ns::DISCO_ITEMS)
                            .with_attr("jid", owner.clone())
                            .with_attr("node", name),
                    );
                }
            }
            return Ok(Some(q)).into();
        }
        if req.addressee == Addressee::Host {
            return Ok(Some(server_info(req.server))).into();
        }
        let mut q = Element::new("query", ns::DISCO_INFO);
        match req.addressee {
            Addressee::Host => {}
            Addressee::Account | Addressee::OtherAccount => {
                q.push_child(
                    Element::new("identity", ns::DISCO_INFO)
                        .with_attr("category", "account")
                        .with_attr("type", "registered"),
                );
                // XEP-0163 §6: the account is a PEP service.
                if req
                    .server
                    .modules
                    .account_features(req.server)
                    .contains(&super::pep::NS)
                {
                    q.push_child(
                        Element::new("identity", ns::DISCO_INFO)
                            .with_attr("category", "pubsub")
                            .with_attr("type", "pep"),
                    );
                }
                q.push_child(
                    Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_INFO),
                );
                for f in req.server.modules.account_features(req.server) {
                    q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
                }
            }
        }
        Ok(Some(q)).into()
    }
}
