//! Personal Eventing Protocol (XEP-0163): the account's iqs in the
//! publish-subscribe namespaces go to the engine in `pubsub/`, with the
//! account as the service; and a session coming online (or whose
//! capabilities just became known) gets the last item of each node it
//! wants and may read, of its contacts and its own account (§4.3.2,
//! `send_last_published_item` = `on_sub_and_presence`).

use std::sync::Arc;

use jid::{BareJid, FullJid};

use super::bookmarks_compat as compat;
use super::{Addressee, IqKind, IqRequest, IqResponse, Module};
use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::xml::Element;
use crate::im::context::ImCtx;
use crate::im::pubsub::{self, Backend, Kind, Request};
use crate::model::state::pubsub::SendLast;
use crate::model::state::{Applied, Command, State};

pub use crate::im::pubsub::{NS, OWNER};

pub struct Pep;

/// The engine's view of this node, for accounts.
struct Node(Arc<ImCtx>);

impl Backend for Node {
    fn state(&self) -> &State {
        &self.0.state
    }

    fn domain(&self) -> &str {
        &self.0.config.domain
    }

    fn commit(&self, cmd: Command, then: Box<dyn FnOnce(Result<Applied, String>) + Send>) {
        self.0.replicator.commit_then(cmd, then)
    }

    fn caught_up(&self, then: Box<dyn FnOnce(bool) + Send>) {
        self.0.replicator.caught_up_then(then)
    }

    fn send(&self, stanza: Element) {
        let ctx = &self.0;
        let Some(to) = stanza.attr("to").and_then(|t| jid::Jid::new(t).ok()) else {
            return;
        };
        if !ctx.config.hosts_accounts(to.domain().as_str()) {
            return ctx.elsewhere.send(ctx, stanza);
        }
        match to
            .try_as_full()
            .ok()
            .and_then(|f| crate::routing::route::full(ctx, f))
        {
            Some(t) => crate::routing::route::send(ctx, &t, stanza, None),
            None => tracing::debug!(%to, "PEP notification dropped: the session is gone"),
        }
    }
}

/// The engine's view of this node.
pub fn backend(ctx: &ImCtx) -> Option<Arc<dyn Backend>> {
    Some(Arc::new(Node(ctx.arc()?)))
}

impl Module for Pep {
    fn account_features(&self, _: &ImCtx) -> Vec<&'static str> {
        let mut f = pubsub::FEATURES.to_vec();
        f.extend([
            "http://jabber.org/protocol/pubsub#auto-create",
            "http://jabber.org/protocol/pubsub#auto-subscribe",
            "http://jabber.org/protocol/pubsub#filtered-notifications",
            "http://jabber.org/protocol/pubsub#last-published",
            super::bookmarks_compat::COMPAT,
            super::bookmarks_compat::COMPAT_PEP,
            super::avatar_conversion::FEATURE,
        ]);
        f
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
        let owner_bare: BareJid = match (&req.addressee, &req.target) {
            (Addressee::OtherAccount, Some(t)) => t.clone(),
            _ => req.from.to_bare(),
        };
        // The anonymous host's temporary accounts have no PEP service.
        if owner_bare.domain().as_str() != req.server.config.domain {
            return Err(StanzaError::with_text(
                StanzaCondition::ServiceUnavailable,
                "temporary accounts have no personal eventing service",
            ))
            .into();
        }
        let Some(backend) = backend(req.server) else {
            return Err(StanzaError::new(StanzaCondition::InternalServerError)).into();
        };
        let r = Request {
            backend,
            kind: Kind::Pep,
            owner: owner_bare
                .node()
                .map(|n| n.as_str().to_string())
                .unwrap_or_default(),
            service: owner_bare.to_string(),
            from: req.from.clone().into(),
        };
        // XEP-0398: an avatar published here becomes the vCard's photo.
        let owner_sets = req.kind == IqKind::Set && owner_bare == req.from.to_bare();
        let avatar = owner_sets
            .then(|| req.payload.get_child("publish", NS))
            .flatten()
            .is_some_and(|p| p.attr("node") == Some(super::avatar_conversion::META));
        // XEP-0402 §5.2: the two bookmark nodes follow each other.
        let bookmarks = owner_sets
            .then(|| {
                req.payload
                    .elements()
                    .find(|e| e.name == "publish" || e.name == "retract")
            })
            .flatten()
            .and_then(|p| p.attr("node"))
            .filter(|n| [compat::NODE, compat::LEGACY].contains(n))
            .map(str::to_string);
        let (user, c) = (r.owner.clone(), req.server.arc());
        let (tx, rx) = tokio::sync::oneshot::channel();
        r.handle(
            req.kind == IqKind::Set,
            req.payload,
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        );
        IqResponse::later(async move {
            let r = rx
                .await
                .unwrap_or_else(|_| Err(StanzaError::new(StanzaCondition::InternalServerError)));
            if let (true, Ok(_), Some(c)) = (avatar, &r, &c) {
                super::avatar_conversion::vcard_follows_pep(c, &user).await;
            }
            if let (Some(node), Ok(_), Some(c)) = (bookmarks, &r, &c) {
                if node == compat::LEGACY {
                    compat::follow_legacy_pep(c, &user).await;
                } else {
                    compat::legacy_follows(c, &user).await;
                }
            }
            r.into()
        })
    }
}

/// A session came online (or its capabilities became known): the last
/// item of each node it wants and may read (XEP-0163 §4.3.2).
pub fn send_last_items(ctx: &ImCtx, full: &FullJid, interests: &[String]) {
    if interests.is_empty() {
        return;
    }
    let Some(b) = backend(ctx) else { return };
    let me = full.to_bare();
    let Some(user) = ctx.config.account_of(&me) else {
        return;
    };
    // Temporary accounts have no PEP service (and their local part is not
    // an account's).
    if crate::model::config::is_anonymous_account(&user) {
        return;
    }
    let user = user.as_str();
    let mut owners = vec![me.clone()];
    if let Ok(roster) = ctx.state.roster(user) {
        for item in roster.into_iter().filter(|i| i.sub.to) {
            if let Ok(o) = BareJid::new(&item.jid) {
                if o.domain().as_str() == ctx.config.domain {
                    owners.push(o);
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
            if meta.config.send_last_published_item != SendLast::OnSubAndPresence {
                continue;
            }
            let mine = owner == me;
            if !mine
                && pubsub::may_read(
                    &ctx.state,
                    &ctx.config.domain,
                    Kind::Pep,
                    o,
                    &meta,
                    me.as_str(),
                    None,
                )
                .is_err()
            {
                continue;
            }
            if let Some((id, xml)) = ctx.state.pubsub_items(o, node).pop() {
                pubsub::send_item(&b, owner.as_str(), full.as_str(), node, &id, &xml);
            }
        }
    }
}
