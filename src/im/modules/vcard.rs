//! XEP-0054 vcard-temp: each user's vCard, readable by anyone, writable by
//! its owner, bounded in size.

use super::{Addressee, IqKind, IqRequest, IqResponse, Module};
use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::xml::{parse_fragment, Element};
use crate::im::context::ImCtx;
use crate::model::state::Command;

pub const NS: &str = "vcard-temp";

pub struct Vcard;

impl Module for Vcard {
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
        let ctx = req.server;
        let owner = match (&req.addressee, &req.target) {
            (Addressee::OtherAccount, Some(t)) => ctx.config.account_of(t).unwrap_or_default(),
            _ => req.user(),
        };
        if req.payload.name != "vCard" {
            return Err(StanzaError::new(StanzaCondition::BadRequest)).into();
        }
        match req.kind {
            IqKind::Get => {
                if !ctx.state.account_exists(&owner) {
                    return Err(StanzaError::new(StanzaCondition::ServiceUnavailable)).into();
                }
                let card = ctx
                    .state
                    .vcard(&owner)
                    .ok()
                    .flatten()
                    .and_then(|x| parse_fragment(&x).ok())
                    .unwrap_or_else(|| Element::new("vCard", NS));
                Ok(Some(card)).into()
            }
            IqKind::Set => {
                if req.addressee == Addressee::OtherAccount {
                    return Err(StanzaError::with_text(
                        StanzaCondition::Forbidden,
                        "not your vCard",
                    ))
                    .into();
                }
                let xml = req.payload.to_xml("");
                let limit = ctx.config.limits.vcard_size;
                if xml.len() > limit {
                    return Err(StanzaError::with_text(
                        StanzaCondition::NotAcceptable,
                        format!("vCard larger than {limit} bytes"),
                    ))
                    .into();
                }
                let Some(c) = ctx.arc() else {
                    return Err(StanzaError::new(StanzaCondition::InternalServerError)).into();
                };
                let card = req.payload.clone();
                let cmd = Command::SetVcard {
                    username: owner.clone(),
                    vcard: xml,
                };
                IqResponse::later(async move {
                    if let Err(e) = c.replicator.commit_async(&cmd).await {
                        tracing::warn!(error = %e, "vCard write failed");
                        return Err(StanzaError::with_text(
                            StanzaCondition::InternalServerError,
                            e.to_string(),
                        ))
                        .into();
                    }
                    // XEP-0398: its photo becomes the PEP avatar.
                    super::avatar_conversion::pep_follows_vcard(&c, &owner, &card).await;
                    Ok(None).into()
                })
            }
        }
    }
}
