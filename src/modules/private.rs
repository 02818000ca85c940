//! XEP-0049 Private XML Storage: one fragment per namespace per user.

use super::{Addressee, IqKind, IqRequest, IqResponse, Module};
use crate::server::ServerCtx;
use crate::stanza_error::{StanzaCondition, StanzaError};
use crate::state::Command;
use crate::xml::{parse_fragment, Element};

pub const NS: &str = "jabber:iq:private";

pub struct Private;

impl Module for Private {
    fn features(&self, _: &ServerCtx) -> Vec<&'static str> {
        vec![NS]
    }

    fn handles(&self) -> Vec<(IqKind, Addressee, &'static str)> {
        vec![
            (IqKind::Get, Addressee::Account, NS),
            (IqKind::Set, Addressee::Account, NS),
            (IqKind::Get, Addressee::OtherAccount, NS),
            (IqKind::Set, Addressee::OtherAccount, NS),
        ]
    }

    fn handle_iq(&self, req: &IqRequest) -> IqResponse {
        if req.addressee == Addressee::OtherAccount {
            return Err(StanzaError::with_text(
                StanzaCondition::Forbidden,
                "private storage is private",
            ))
            .into();
        }
        let ctx = req.server;
        let user = req
            .from
            .node()
            .map(|n| n.as_str().to_string())
            .unwrap_or_default();
        // §3: exactly one child, in a namespace of its own (not jabber:*).
        let mut children = req.payload.elements();
        let (Some(frag), None) = (children.next(), children.next()) else {
            return Err(StanzaError::with_text(
                StanzaCondition::NotAcceptable,
                "one element per request",
            ))
            .into();
        };
        if frag.ns.is_empty() || frag.ns.starts_with("jabber:") {
            return Err(StanzaError::with_text(
                StanzaCondition::NotAcceptable,
                "reserved namespace",
            ))
            .into();
        }
        let key = format!("{}\u{1}{}", frag.name, frag.ns);
        match req.kind {
            IqKind::Get => {
                let stored = ctx
                    .state
                    .private(&user, &key)
                    .ok()
                    .flatten()
                    .and_then(|x| parse_fragment(&x).ok())
                    .unwrap_or_else(|| Element::new(frag.name.clone(), frag.ns.clone()));
                Ok(Some(Element::new("query", NS).with_child(stored))).into()
            }
            IqKind::Set => {
                let xml = frag.to_xml("");
                if xml.len() > ctx.config.limits.vcard_size {
                    return Err(StanzaError::with_text(
                        StanzaCondition::NotAcceptable,
                        "too large",
                    ))
                    .into();
                }
                // A new namespace counts against the account's cap.
                let known = ctx.state.private(&user, &key).ok().flatten().is_some();
                let stored = ctx.state.private_count(&user).unwrap_or(0);
                if !known && stored >= ctx.config.limits.private_items {
                    return Err(StanzaError::with_text(
                        StanzaCondition::ResourceConstraint,
                        "too many private XML namespaces stored",
                    ))
                    .into();
                }
                super::commit_then(
                    ctx,
                    Command::SetPrivate {
                        username: user,
                        key,
                        xml,
                    },
                    "private storage write",
                    |_, _| Ok(None).into(),
                )
            }
        }
    }
}
