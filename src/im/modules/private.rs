//! XEP-0049 Private XML Storage: one fragment per namespace per user.

use super::bookmarks_compat as compat;
use super::{Addressee, IqKind, IqRequest, IqResponse, Module};
use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::xml::{parse_fragment, Element};
use crate::im::context::ImCtx;
use crate::model::state::Command;

pub const NS: &str = "jabber:iq:private";

pub struct Private;

impl Module for Private {
    fn features(&self, _: &ImCtx) -> Vec<&'static str> {
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
        let user = req.user();
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
                    .and_then(|x| parse_fragment(&x).ok());
                // Bookmarks: the PEP node's rooms (XEP-0402 §4).
                let view = (key == compat::PRIVATE_KEY)
                    .then(|| compat::private_view(&ctx.state, &user, stored.as_ref()))
                    .flatten();
                let stored = view
                    .or(stored)
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
                let cmd = Command::SetPrivate {
                    username: user.clone(),
                    key: key.clone(),
                    xml,
                };
                if key != compat::PRIVATE_KEY {
                    return super::commit_then(ctx, cmd, "private storage write", |_, _| {
                        Ok(None).into()
                    });
                }
                // Bookmarks: answered once the PEP node follows too.
                let (Some(c), storage) = (ctx.arc(), frag.clone()) else {
                    return Err(StanzaError::new(StanzaCondition::InternalServerError)).into();
                };
                IqResponse::later(async move {
                    if let Err(e) = c.replicator.commit_async(&cmd).await {
                        tracing::warn!(error = %e, "private storage write failed");
                        return Err(StanzaError::with_text(
                            StanzaCondition::InternalServerError,
                            e.to_string(),
                        ))
                        .into();
                    }
                    compat::follow_private(&c, &user, &storage).await;
                    compat::legacy_follows(&c, &user).await;
                    Ok(None).into()
                })
            }
        }
    }
}
