//! SASL2 (XEP-0388) on the client stream, with what rides inside it: Bind 2
//! (XEP-0386: the resource, and stream management, carbons and CSI at bind
//! time), stream management resumption (XEP-0198 inline in SASL2), and FAST
//! tokens (XEP-0484: HT-SHA-256-NONE, and -EXPR / -ENDP bound to the TLS
//! channel where it allows). A client logs in, binds and enables
//! stream management in one round trip after TLS; with a FAST token, without
//! SCRAM's key derivation either. The RFC 6120 `<auth/>` keeps working side
//! by side.
//!
//! After `<success/>` there is no stream restart (§2.6.1). With Bind 2 (or a
//! resumption) the session is ready at once; without either, the server
//! sends its post-authentication features and the client binds as usual.

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine;
use rand::RngCore;

use super::sasl::{decode, exchange, failed, offered, succeeded, CURRENT_STATE};
use super::{NegError, Stream};
use crate::base::xml::{ns, Element};
use crate::model::sasl::{ht, normalize_username, SaslFailure};
use crate::model::state::fast::FastToken;
use crate::model::state::Command;
use crate::transport::context::TransportCtx;

pub const NS: &str = "urn:xmpp:sasl:2";
pub const BIND2: &str = "urn:xmpp:bind:0";
pub const FAST: &str = "urn:xmpp:fast:0";
const SM: &str = "urn:xmpp:sm:3";
const CARBONS: &str = "urn:xmpp:carbons:2";
const CSI: &str = "urn:xmpp:csi:0";

/// The `<authentication/>` stream feature (§2.1) and what may be inlined.
pub fn feature(ctx: &TransportCtx, s: &Stream) -> Element {
    let mut a = Element::new("authentication", NS);
    for m in offered(ctx, s) {
        a.push_child(Element::new("mechanism", NS).with_text(m));
    }
    let feature = |var: &str| Element::new("feature", BIND2).with_attr("var", var);
    let mut inline = Element::new("inline", NS).with_child(
        Element::new("bind", BIND2).with_child(
            Element::new("inline", BIND2)
                .with_child(feature(CARBONS))
                .with_child(feature(CSI))
                .with_child(feature(SM)),
        ),
    );
    if !s.anonymous_host(ctx) {
        let mut fast = Element::new("fast", FAST);
        for m in fast_mechanisms(s) {
            fast.push_child(Element::new("mechanism", FAST).with_text(m));
        }
        inline.push_child(fast);
    }
    inline.push_child(Element::new("sm", SM));
    a.push_child(inline);
    a
}

/// The HT mechanisms this stream can run (XEP-0484 §2): the channel-bound
/// ones first, where its TLS gives their data.
fn fast_mechanisms(s: &Stream) -> Vec<&'static str> {
    [ht::EXPR, ht::ENDP, ht::MECHANISM]
        .into_iter()
        .filter(|m| ht::cb_data(m, s.channel_binding.as_deref(), s.end_point.as_deref()).is_some())
        .collect()
}

/// A successful SASL2 authentication, and what the client asked to go
/// with it.
pub struct Authenticated {
    pub username: String,
    /// The client's `<bind/>` (XEP-0386), if any.
    pub bind: Option<Element>,
    /// The client's inline `<resume/>` (previd, h), if any.
    pub resume: Option<(String, u32)>,
    /// `<success/>` so far: additional data and a new FAST token; the
    /// authorization identifier and the inline results are added by
    /// [`Authenticated::success`].
    children: Vec<Element>,
}

impl Authenticated {
    /// The `<success/>` (§2.6.1) for the identity `aid` (the bare JID, or
    /// the full JID once bound or resumed) with the inline results.
    pub fn success(&self, aid: &str, inline: Vec<Element>) -> Element {
        let mut s = Element::new("success", NS);
        let mut children = self.children.clone();
        // additional-data first, then the identifier (the schema's order).
        let extra = children.split_off(
            children
                .iter()
                .take_while(|c| c.name == "additional-data")
                .count(),
        );
        for c in children {
            s.push_child(c);
        }
        s.push_child(Element::new("authorization-identifier", NS).with_text(aid));
        for c in extra.into_iter().chain(inline) {
            s.push_child(c);
        }
        s
    }
}

/// The user-agent id (§2.3), which FAST binds tokens to.
fn agent_id(auth: &Element) -> Option<String> {
    auth.get_child("user-agent", NS)
        .and_then(|u| u.attr("id"))
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_string)
}

/// Run one SASL2 exchange starting at `<authenticate/>`. `Some` on
/// success (nothing is sent yet: the success carries what binding or
/// resuming gives); `None` after a failure was sent.
pub async fn authenticate(
    ctx: &TransportCtx,
    s: &mut Stream,
    auth: Element,
) -> Result<Option<Authenticated>, NegError> {
    s.sasl2 = true;
    let mechanism = auth.attr("mechanism").unwrap_or_default().to_string();
    if !super::sasl::login_admitted(ctx, s, &mechanism).await? {
        return Ok(None);
    }
    let agent = agent_id(&auth);
    let fast = auth.get_child("fast", FAST);
    let outcome = if ht::is_ht(&mechanism) && fast.is_some() && !s.anonymous_host(ctx) {
        match ht::cb_data(
            &mechanism,
            s.channel_binding.as_deref(),
            s.end_point.as_deref(),
        ) {
            Some(cb) => fast_login(ctx, &auth, agent.as_deref(), &mechanism, cb).await,
            // A channel-bound mechanism this stream cannot bind.
            None => Err(SaslFailure::InvalidMechanism),
        }
    } else {
        // The classic mechanisms, framed by SASL2 (challenge() follows
        // `s.sasl2`); the initial response is a child here.
        let mut classic = Element::new("auth", ns::SASL).with_attr("mechanism", mechanism.clone());
        if let Some(ir) = auth.get_child("initial-response", NS) {
            let text = ir.text();
            classic = classic.with_text(if text.trim().is_empty() {
                "=".to_string()
            } else {
                text
            });
        }
        exchange(ctx, s, &mechanism, &classic)
            .await?
            .map(|(u, data)| (u, data, None))
    };
    let (username, additional, used) = match outcome {
        Ok(o) => o,
        Err(failure) => {
            failed(ctx, s, &mechanism, failure).await?;
            return Ok(None);
        }
    };
    let mut children = Vec::new();
    if let Some(data) = additional {
        children.push(Element::new("additional-data", NS).with_text(B64.encode(data)));
    }
    // XEP-0484: a token asked for, or the one used renewed past half its
    // life (or ended, if the client asked so).
    let offered = fast_mechanisms(s);
    let asked = auth
        .get_child("request-token", FAST)
        .and_then(|r| r.attr("mechanism"))
        .and_then(|m| offered.iter().find(|o| **o == m).copied());
    let invalidate = fast
        .and_then(|f| f.attr("invalidate"))
        .is_some_and(|v| v == "true" || v == "1");
    let now = crate::base::time::unix_now().as_millis() as u64;
    if let (Some(agent), false) = (agent.as_deref(), s.anonymous_host(ctx)) {
        if invalidate && used.is_some() {
            let cmd = Command::FastRevoke {
                username: username.clone(),
                agent: Some(agent.to_string()),
            };
            if let Err(e) = ctx.replicator.commit_async(&cmd).await {
                tracing::warn!(error = %e, "FAST token not revoked");
            }
        } else {
            let renew = used.as_ref().is_some_and(|t: &FastToken| {
                now > t.issued_ms + (t.expiry_ms.saturating_sub(t.issued_ms)) / 2
            });
            // A renewed token keeps the mechanism of the one it replaces.
            let mech = asked.or_else(|| {
                used.as_ref()
                    .filter(|_| renew)
                    .and_then(|t| offered.iter().find(|o| **o == t.mechanism).copied())
            });
            if let Some(mech) = mech {
                match issue(ctx, &username, agent, now, mech).await {
                    Some(t) => children.push(
                        Element::new("token", FAST)
                            .with_attr("token", t.token)
                            .with_attr(
                                "expiry",
                                crate::base::time::xep82(std::time::Duration::from_millis(
                                    t.expiry_ms,
                                )),
                            ),
                    ),
                    None => tracing::warn!(user = %username, "FAST token not issued"),
                }
            }
        }
    }
    let bind = auth.get_child("bind", BIND2).cloned();
    let resume = auth.get_child("resume", SM).and_then(|r| {
        let h = r.attr("h")?.parse::<u32>().ok()?;
        Some((r.attr("previd")?.to_string(), h))
    });
    succeeded(ctx, s, &mechanism, username.clone());
    Ok(Some(Authenticated {
        username,
        bind,
        resume,
        children,
    }))
}

/// A new token for `username`'s client `agent`, committed before the
/// success that carries it.
async fn issue(
    ctx: &TransportCtx,
    username: &str,
    agent: &str,
    now: u64,
    mechanism: &str,
) -> Option<FastToken> {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    let token = FastToken {
        token: B64URL.encode(raw),
        mechanism: mechanism.to_string(),
        issued_ms: now,
        expiry_ms: now + ctx.config.c2s.fast_token_ttl_secs * 1000,
    };
    let cmd = Command::FastIssue {
        username: username.to_string(),
        agent: agent.to_string(),
        token: token.clone(),
    };
    ctx.replicator.commit_async(&cmd).await.ok()?;
    Some(token)
}

type FastOutcome = Result<(String, Option<Vec<u8>>, Option<FastToken>), SaslFailure>;

/// An HT-SHA-256 login with a FAST token (XEP-0484 §3.3): the token must
/// be this client's (its user-agent id), issued for this mechanism
/// (§3.2), unexpired, and prove itself over this stream's channel
/// binding `cb`.
async fn fast_login(
    ctx: &TransportCtx,
    auth: &Element,
    agent: Option<&str>,
    mechanism: &str,
    cb: &[u8],
) -> FastOutcome {
    // XEP-0484 §3.3: tokens belong to a client, named by its user-agent id.
    let Some(agent) = agent else {
        return Err(SaslFailure::MalformedRequest);
    };
    let initial = match auth.get_child("initial-response", NS).map(decode) {
        Some(Ok(Some(data))) => data,
        Some(Err(f)) => return Err(f),
        _ => return Err(SaslFailure::MalformedRequest),
    };
    let (raw_user, proof) = match ht::parse(&initial) {
        Ok(p) => p,
        Err(f) => return Err(f),
    };
    let Some(username) = normalize_username(&raw_user, &ctx.config.domain) else {
        return Err(SaslFailure::NotAuthorized);
    };
    // A token issued or revoked on another node a moment ago is seen.
    if let Err(e) = ctx.replicator.cluster().caught_up(CURRENT_STATE).await {
        tracing::warn!(error = %e, "cannot confirm FAST tokens with the cluster");
        return Err(SaslFailure::TemporaryAuthFailure);
    }
    let tokens = ctx.state.fast_tokens(&username, agent).ok().flatten();
    let Some(used) = tokens
        .as_ref()
        .and_then(|t| t.find(|t| t.mechanism == mechanism && ht::verify(&t.token, &proof, cb)))
        .cloned()
    else {
        return Err(SaslFailure::NotAuthorized);
    };
    let now = crate::base::time::unix_now().as_millis() as u64;
    if used.expiry_ms <= now {
        return Err(SaslFailure::CredentialsExpired);
    }
    if !ctx.state.account_exists(&username) {
        return Err(SaslFailure::NotAuthorized);
    }
    let answer = ht::responder(&used.token, cb);
    Ok((username, Some(answer), Some(used)))
}

/// Bind 2 (XEP-0386 §3): the resource is the client's tag (if it makes a
/// valid resource) and a random part, unique among the user's sessions.
pub fn resource(bind: &Element) -> String {
    let mut suffix = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut suffix);
    let random = B64URL.encode(suffix);
    let tag: String = bind
        .get_child("tag", BIND2)
        .map(|t| t.text())
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control() && *c != '/')
        .take(32)
        .collect();
    match tag.trim() {
        "" => random,
        t => format!("{t}.{random}"),
    }
}

/// What the client asked to have at bind time (XEP-0386 §3.3).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BindInline {
    /// Stream management, and whether resumable.
    pub sm: Option<bool>,
    pub carbons: bool,
    /// CSI: starts inactive.
    pub inactive: bool,
}

pub fn bind_inline(bind: &Element) -> BindInline {
    let mut i = BindInline::default();
    for c in bind.elements() {
        match (c.name.as_str(), c.ns.as_str()) {
            ("enable", SM) => {
                i.sm = Some(matches!(c.attr("resume"), Some("true") | Some("1")));
            }
            ("enable", CARBONS) => i.carbons = true,
            ("inactive", CSI) => i.inactive = true,
            _ => {}
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_come_from_the_tag() {
        let bind = Element::new("bind", BIND2)
            .with_child(Element::new("tag", BIND2).with_text("Conversations"));
        let r = resource(&bind);
        assert!(r.starts_with("Conversations.") && r.len() > 14, "{r}");
        assert_ne!(r, resource(&bind));
        assert!(!resource(&Element::new("bind", BIND2)).is_empty());
        let inline = bind_inline(
            &Element::new("bind", BIND2)
                .with_child(Element::new("enable", SM).with_attr("resume", "true"))
                .with_child(Element::new("enable", CARBONS)),
        );
        assert_eq!(inline.sm, Some(true));
        assert!(inline.carbons && !inline.inactive);
    }
}
