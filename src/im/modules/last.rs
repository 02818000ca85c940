//! XEP-0012 Last Activity: server uptime, and when a contact was last seen
//! (only for those subscribed to the contact's presence).

use super::{Addressee, IqKind, IqRequest, IqResponse, Module};
use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::xml::Element;
use crate::im::context::ImCtx;

pub const NS: &str = "jabber:iq:last";

pub struct LastActivity;

fn answer(seconds: u64, status: &str) -> IqResponse {
    let mut q = Element::new("query", NS).with_attr("seconds", seconds.to_string());
    if !status.is_empty() {
        q = q.with_text(status);
    }
    Ok(Some(q)).into()
}

impl Module for LastActivity {
    fn features(&self, _: &ImCtx) -> Vec<&'static str> {
        vec![NS]
    }

    fn handles(&self) -> Vec<(IqKind, Addressee, &'static str)> {
        vec![
            (IqKind::Get, Addressee::Host, NS),
            (IqKind::Get, Addressee::Account, NS),
            (IqKind::Get, Addressee::OtherAccount, NS),
        ]
    }

    fn handle_iq(&self, req: &IqRequest) -> IqResponse {
        let ctx = req.server;
        match req.addressee {
            // §5: for a server, the time since it started.
            Addressee::Host => answer(ctx.started.elapsed().as_secs(), ""),
            Addressee::Account => answer(0, ""),
            Addressee::OtherAccount => {
                let Some(target) = &req.target else {
                    return Err(StanzaError::new(StanzaCondition::ServiceUnavailable)).into();
                };
                let owner = ctx.config.account_of(target).unwrap_or_default();
                let asker = req.from.to_bare();
                let allowed = ctx
                    .state
                    .roster_item(&owner, asker.as_str())
                    .ok()
                    .flatten()
                    .is_some_and(|i| i.sub.from);
                if !allowed {
                    return Err(StanzaError::new(StanzaCondition::Forbidden)).into();
                }
                if crate::routing::route::resources(ctx, target)
                    .iter()
                    .any(|t| t.available)
                {
                    return answer(0, "");
                }
                match ctx.state.last_activity(&owner).ok().flatten() {
                    Some((when, status)) => answer(
                        crate::base::time::unix_now().as_secs().saturating_sub(when),
                        &status,
                    ),
                    None => Err(StanzaError::new(StanzaCondition::ServiceUnavailable)).into(),
                }
            }
        }
    }
}
