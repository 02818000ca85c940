//! XEP-0030 Service Discovery: info and items for the server, info for the
//! user's own account. Features come from what the modules declared; the
//! server's items are the services it hosts (the external components of
//! `[component] secrets`, cluster-wide, and the `[services]` domains), so
//! clients find them (§4).

use super::{Addressee, IqKind, IqRequest, IqResponse, Module};
use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::xml::{ns, Element};
use crate::im::context::ImCtx;

pub struct Disco;

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
        // The server's nodes are its ad-hoc commands (XEP-0050 §2).
        if let Some(node) = req.payload.attr("node") {
            let found = match (req.addressee, req.payload.ns.as_str()) {
                (Addressee::Host, ns::DISCO_ITEMS) if node == super::admin_commands::NS => Some(
                    super::admin_commands::items(req.server, &req.from.to_bare()),
                ),
                (Addressee::Host, ns::DISCO_INFO) => super::admin_commands::info(node),
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
            }
            return Ok(Some(q)).into();
        }
        let mut q = Element::new("query", ns::DISCO_INFO);
        match req.addressee {
            Addressee::Host => {
                q.push_child(
                    Element::new("identity", ns::DISCO_INFO)
                        .with_attr("category", "server")
                        .with_attr("type", "im")
                        .with_attr("name", "Starling"),
                );
                for f in req.server.modules.features(req.server) {
                    q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
                }
            }
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
