//! XEP-0077 In-Band Registration: creating accounts before authentication
//! (only when `[registration] allow` is set), and changing the password or
//! cancelling the account once authenticated.

use super::{Addressee, IqKind, IqRequest, IqResponse, Module};
use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::stream_error::{StreamCondition, StreamError};
use crate::base::xml::{ns, Element};
use crate::im::context::ImCtx;
use crate::model::sasl::{normalize_username, Credentials};
use crate::model::state::{Command, StateError};

pub struct Register;

fn field(q: &Element, name: &str) -> Option<String> {
    q.get_child(name, ns::REGISTER).map(|e| e.text())
}

fn storage_error(e: StateError) -> StanzaError {
    match e {
        StateError::AccountExists(_) => {
            StanzaError::with_text(StanzaCondition::Conflict, "username taken")
        }
        StateError::NoSuchAccount(_) => StanzaError::new(StanzaCondition::ItemNotFound),
        // RFC 6120 §8.3.3.5: internal-server-error is of type "wait": try later.
        StateError::Cluster(e) => StanzaError::with_text(StanzaCondition::InternalServerError, e),
        other => {
            tracing::error!(error = %other, "registration storage error");
            StanzaError::new(StanzaCondition::InternalServerError)
        }
    }
}

/// Handle an iq on an unauthenticated stream. `None` when it is not a
/// registration request (the stream is then refused). `secure` says whether
/// the transport satisfies the TLS policy.
pub async fn pre_auth(
    ctx: &ImCtx,
    iq: &Element,
    secure: bool,
    peer: std::net::IpAddr,
) -> Option<Element> {
    let q = iq.get_child("query", ns::REGISTER)?;
    if !ctx.config.registration.allow {
        return Some(
            StanzaError::with_text(
                StanzaCondition::ServiceUnavailable,
                "registration is closed",
            )
            .reply_to(iq),
        );
    }
    if !secure {
        return Some(
            StanzaError::with_text(StanzaCondition::NotAllowed, "use TLS first").reply_to(iq),
        );
    }
    let reply = match iq.attr("type") {
        Some("get") => Ok(Some(
            Element::new("query", ns::REGISTER)
                .with_child(
                    Element::new("instructions", ns::REGISTER)
                        .with_text("Choose a username and password."),
                )
                .with_child(Element::new("username", ns::REGISTER))
                .with_child(Element::new("password", ns::REGISTER)),
        )),
        Some("set") if q.get_child("remove", ns::REGISTER).is_some() => {
            Err(StanzaError::with_text(
                StanzaCondition::NotAuthorized,
                "log in to cancel an account",
            ))
        }
        // One address cannot mint accounts without end (spam, squatting).
        Some("set")
            if !ctx
                .throttle
                .may_register(peer, ctx.config.registration.per_address_per_hour) =>
        {
            tracing::info!(%peer, "in-band registration refused: per-address limit");
            Err(StanzaError::with_text(
                StanzaCondition::ResourceConstraint,
                "too many accounts registered from this address; try again later",
            ))
        }
        Some("set") => {
            let made = create(ctx, q).await;
            if made.is_ok() {
                ctx.throttle.registered(peer);
            }
            made
        }
        _ => Err(StanzaError::new(StanzaCondition::BadRequest)),
    };
    Some(match reply {
        Ok(p) => super::result(iq, p),
        Err(e) => e.reply_to(iq),
    })
}

async fn create(ctx: &ImCtx, q: &Element) -> Result<Option<Element>, StanzaError> {
    let (Some(user), Some(password)) = (field(q, "username"), field(q, "password")) else {
        return Err(StanzaError::with_text(
            StanzaCondition::NotAcceptable,
            "username and password are required",
        ));
    };
    let username = normalize_username(&user, &ctx.config.domain).ok_or_else(|| {
        StanzaError::with_text(
            StanzaCondition::JidMalformed,
            "username is not a valid localpart",
        )
    })?;
    let credentials = Credentials::new(&password)
        .map_err(|e| StanzaError::with_text(StanzaCondition::NotAcceptable, e.to_string()))?;
    ctx.replicator
        .commit_async(&Command::CreateAccount {
            username: username.clone(),
            credentials,
        })
        .await
        .map_err(storage_error)?;
    tracing::info!(user = %username, "account registered in-band");
    Ok(None)
}

impl Module for Register {
    fn features(&self, _: &ImCtx) -> Vec<&'static str> {
        vec![ns::REGISTER]
    }

    fn handles(&self) -> Vec<(IqKind, Addressee, &'static str)> {
        let mut v = Vec::new();
        for kind in [IqKind::Get, IqKind::Set] {
            for who in [Addressee::Host, Addressee::Account] {
                v.push((kind, who, ns::REGISTER));
            }
        }
        v
    }

    fn handle_iq(&self, req: &IqRequest) -> IqResponse {
        let user = req.user();
        let ctx = req.server;
        if req.kind == IqKind::Get {
            let q = Element::new("query", ns::REGISTER)
                .with_child(Element::new("registered", ns::REGISTER))
                .with_child(Element::new("username", ns::REGISTER).with_text(user))
                .with_child(Element::new("password", ns::REGISTER));
            return Ok(Some(q)).into();
        }
        let q = req.payload;
        if q.get_child("remove", ns::REGISTER).is_some() {
            let cmd = Command::DeleteAccount {
                username: user.clone(),
            };
            let Some(c) = ctx.arc() else {
                return Err(StanzaError::new(StanzaCondition::InternalServerError)).into();
            };
            return IqResponse::later(async move {
                if let Err(e) = c.replicator.commit_async(&cmd).await {
                    return Err(storage_error(e)).into();
                }
                tracing::info!(user = %user, "account cancelled in-band");
                // The user's other sessions, on every node, end when the
                // deletion is applied (session_events.rs); this one ends
                // after the result (XEP-0077 §3.2).
                let gone =
                    StreamError::with_text(StreamCondition::NotAuthorized, "account removed");
                IqResponse {
                    result: Ok(None),
                    before: Vec::new(),
                    close: Some(gone),
                    later: None,
                }
            });
        }
        let (Some(name), Some(password)) = (field(q, "username"), field(q, "password")) else {
            return Err(StanzaError::with_text(
                StanzaCondition::BadRequest,
                "username and password are required",
            ))
            .into();
        };
        if normalize_username(&name, &ctx.config.domain).as_deref() != Some(user.as_str()) {
            return Err(StanzaError::with_text(
                StanzaCondition::NotAllowed,
                "you can change only your own password",
            ))
            .into();
        }
        let credentials = match Credentials::new(&password) {
            Ok(c) => c,
            Err(e) => {
                return Err(StanzaError::with_text(
                    StanzaCondition::NotAcceptable,
                    e.to_string(),
                ))
                .into()
            }
        };
        let cmd = Command::SetPassword {
            username: user.clone(),
            credentials,
        };
        super::commit_then(ctx, cmd, "password change", move |_, _| {
            tracing::info!(user = %user, "password changed in-band");
            Ok(None).into()
        })
    }
}
