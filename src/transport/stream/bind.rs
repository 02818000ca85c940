//! Resource binding (RFC 6120 §7) and the legacy session request (RFC 3921 §3).

use jid::FullJid;
use rand::distributions::Alphanumeric;
use rand::Rng;

use super::{NegError, Step, Stream};
use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::xml::{ns, Element};
use crate::model::config::ConflictPolicy;
use crate::transport::context::TransportCtx;

/// Handle an iq on an authenticated, unbound stream. Returns the bound JID
/// when binding succeeded.
pub(super) async fn handle(
    ctx: &TransportCtx,
    s: &mut Stream,
    iq: &Element,
) -> Result<Option<Step>, NegError> {
    let user = s.authenticated.clone().unwrap_or_default();
    let id = iq.attr("id").unwrap_or_default().to_string();
    let is_set = iq.attr("type") == Some("set");
    if let Some(bind) = iq.get_child("bind", ns::BIND).filter(|_| is_set) {
        let requested = bind
            .get_child("resource", ns::BIND)
            .map(|r| r.text())
            .filter(|r| !r.trim().is_empty());
        let jid = match requested {
            Some(res) => match FullJid::new(&format!("{}/{res}", ctx.config.account_jid(&user))) {
                Ok(j) => j,
                Err(_) => {
                    let err = StanzaError::with_text(
                        StanzaCondition::BadRequest,
                        "resource is not a valid resourcepart",
                    );
                    s.send_element(&err.reply_to(iq)).await?;
                    return Ok(None);
                }
            },
            None => match generated(ctx, &user) {
                Some(j) => j,
                None => {
                    let err = StanzaError::with_text(
                        StanzaCondition::InternalServerError,
                        "no resource could be made for this account",
                    );
                    s.send_element(&err.reply_to(iq)).await?;
                    return Ok(None);
                }
            },
        };
        if crate::routing::route::full(ctx, &jid).is_some()
            && ctx.config.c2s.resource_conflict == ConflictPolicy::Reject
        {
            let err = StanzaError::with_text(StanzaCondition::Conflict, "resource in use");
            s.send_element(&err.reply_to(iq)).await?;
            return Ok(None);
        }
        return Ok(Some(Step::Bound(jid, id)));
    }
    if iq.get_child("session", ns::SESSION).is_some() && is_set {
        let reply = Element::new("iq", ns::CLIENT)
            .with_attr("type", "result")
            .with_attr("id", id);
        s.send_element(&reply).await?;
        return Ok(None);
    }
    let err = StanzaError::with_text(StanzaCondition::NotAllowed, "bind a resource first");
    s.send_element(&err.reply_to(iq)).await?;
    Ok(None)
}

/// A server-generated resource (RFC 6120 §7.6.2.1), unique among this user's sessions.
fn generated(ctx: &TransportCtx, user: &str) -> Option<FullJid> {
    // Bounded: a JID that cannot be made at all must not spin the thread.
    for _ in 0..16 {
        let res: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(12)
            .map(char::from)
            .collect();
        if let Ok(j) = FullJid::new(&format!("{}/{res}", ctx.config.account_jid(user))) {
            if crate::routing::route::full(ctx, &j).is_none() {
                return Some(j);
            }
        }
    }
    None
}

/// The bind result sent once the session is in place.
pub fn bind_result(id: &str, jid: &FullJid) -> Element {
    Element::new("iq", ns::CLIENT)
        .with_attr("type", "result")
        .with_attr("id", id)
        .with_child(
            Element::new("bind", ns::BIND)
                .with_child(Element::new("jid", ns::BIND).with_text(jid.to_string())),
        )
}
