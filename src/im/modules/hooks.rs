//! The message pipeline: features that act on messages as they pass
//! (RFC 6121 §8) register a [`MessageHook`] instead of being called from
//! `delivery.rs` by name. Hooks run in their stated [`order`]
//! (lower first; two hooks may not share a place, checked at start):
//!
//! | order | hook | on |
//! |---|---|---|
//! | 10 | blocking (XEP-0191) | outbound, inbound |
//! | 15 | archive (XEP-0313, XEP-0359) | outbound, inbound |
//! | 20 | carbons (XEP-0280) | outbound, delivering |
//!
//! The archive comes before carbons so that copies carry the stanza-id the
//! archive gave the message. A hook may change the message (the archive
//! stamps it) and may add to [`Waits`]: what the sender's acknowledgement
//! (XEP-0198) waits for besides routing. Offline storage
//! (XEP-0160) is the last step of routing itself, not a hook: it runs when
//! no hook stopped the message and no resource can take it.
//!
//! [`order`]: MessageHook::order

use jid::{BareJid, FullJid, Jid};

use crate::base::xml::Element;
use crate::im::context::ImCtx;
use crate::routing::route::Target;

/// Writes a hook started that must be done before the server owns the
/// message (the sender's and recipient's archive commits): each answers
/// true once done, false if it failed.
#[derive(Default)]
pub struct Waits(Vec<tokio::sync::oneshot::Receiver<bool>>);

impl Waits {
    pub fn push(&mut self, done: tokio::sync::oneshot::Receiver<bool>) {
        self.0.push(done);
    }

    /// `receipt`, answered only once routing answered it and every wait is
    /// done (with routing's answer: a failed write is not a reason to have
    /// the message sent again). With nothing to wait for, it is
    /// `receipt` itself; with no receipt, nothing waits.
    pub fn wrap(
        &mut self,
        receipt: Option<starling_cluster::Receipt>,
        rt: &tokio::runtime::Handle,
    ) -> Option<starling_cluster::Receipt> {
        let outer = receipt?;
        if self.0.is_empty() {
            return Some(outer);
        }
        let waits = std::mem::take(&mut self.0);
        let (tx, rx) = tokio::sync::oneshot::channel::<bool>();
        rt.spawn(async move {
            // A receipt dropped by routing means owned (as the session reads it).
            let owned = rx.await.unwrap_or(true);
            // A write that failed (no quorum) does not un-own a message
            // routing took: refusing it would make the client send again
            // what was already delivered (a duplicate). It is logged where
            // it failed.
            for w in waits {
                let _ = w.await;
            }
            let _ = outer.send(owned);
        });
        Some(tx)
    }
}

/// What a hook decides about a message.
pub enum Verdict {
    /// Go on to the next hook, then routing.
    Continue,
    /// Stop here; answer the sender with this stanza, if any.
    Stop(Option<Element>),
}

pub trait MessageHook: Send + Sync {
    /// Its place in the chain; see the module table.
    fn order(&self) -> u16;

    /// A message a local user (`from`) sent to `to`, before it is routed.
    fn outbound(
        &self,
        _ctx: &ImCtx,
        _from: &FullJid,
        _to: &Jid,
        _msg: &mut Element,
        _waits: &mut Waits,
    ) -> Verdict {
        Verdict::Continue
    }

    /// A message for the local account `user` (from anyone), before it is
    /// routed to the account's resources or stored. `from` is the
    /// message's sender.
    fn inbound(
        &self,
        _ctx: &ImCtx,
        _user: &str,
        _from: &Jid,
        _msg: &mut Element,
        _waits: &mut Waits,
    ) -> Verdict {
        Verdict::Continue
    }

    /// The message for `user` is about to be handed to these resources.
    fn delivering(&self, _ctx: &ImCtx, _user: &BareJid, _msg: &Element, _to: &[Target]) {}
}

/// The hooks in order.
#[derive(Default)]
pub struct Hooks(Vec<std::sync::Arc<dyn MessageHook>>);

/// Two hooks declared the same place: their order would be an accident.
#[derive(Debug, thiserror::Error)]
#[error("two message hooks take place {0} in the pipeline")]
pub struct SamePlace(pub u16);

impl Hooks {
    pub fn new(mut hooks: Vec<std::sync::Arc<dyn MessageHook>>) -> Result<Hooks, SamePlace> {
        hooks.sort_by_key(|h| h.order());
        if let Some(w) = hooks.windows(2).find(|w| w[0].order() == w[1].order()) {
            return Err(SamePlace(w[0].order()));
        }
        Ok(Hooks(hooks))
    }

    pub fn outbound(
        &self,
        ctx: &ImCtx,
        from: &FullJid,
        to: &Jid,
        msg: &mut Element,
        waits: &mut Waits,
    ) -> Verdict {
        for h in &self.0 {
            if let Verdict::Stop(reply) = h.outbound(ctx, from, to, msg, waits) {
                return Verdict::Stop(reply);
            }
        }
        Verdict::Continue
    }

    pub fn inbound(
        &self,
        ctx: &ImCtx,
        user: &str,
        from: &Jid,
        msg: &mut Element,
        waits: &mut Waits,
    ) -> Verdict {
        for h in &self.0 {
            if let Verdict::Stop(reply) = h.inbound(ctx, user, from, msg, waits) {
                return Verdict::Stop(reply);
            }
        }
        Verdict::Continue
    }

    pub fn delivering(&self, ctx: &ImCtx, user: &BareJid, msg: &Element, to: &[Target]) {
        for h in &self.0 {
            h.delivering(ctx, user, msg, to);
        }
    }
}
