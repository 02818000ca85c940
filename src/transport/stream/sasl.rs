//! SASL negotiation on the stream (RFC 6120 §6.4).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::{NegError, Stream, StreamCondition, StreamError};
use crate::base::xml::{ns, Element};
use crate::model::sasl::credentials::ScramHash;
use crate::model::sasl::scram::ScramServer;
use crate::model::sasl::{normalize_username, plain, SaslFailure};
use crate::transport::context::TransportCtx;

/// Mechanisms offered on this stream: -PLUS only with channel-binding data,
/// PLAIN only under TLS; on the anonymous host, ANONYMOUS alone.
pub fn offered(ctx: &TransportCtx, s: &Stream) -> Vec<&'static str> {
    if s.anonymous_host(ctx) {
        return vec!["ANONYMOUS"];
    }
    let mut m = Vec::new();
    if s.channel_binding.is_some() {
        m.extend(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"]);
    }
    m.extend(["SCRAM-SHA-256", "SCRAM-SHA-1"]);
    if s.secure {
        m.push("PLAIN");
    }
    m
}

/// Run one SASL exchange starting at `auth`. `Ok(true)` on success (the
/// stream then restarts); `Ok(false)` after a failure was sent.
pub async fn authenticate(
    ctx: &TransportCtx,
    s: &mut Stream,
    auth: Element,
) -> Result<bool, NegError> {
    let mechanism = auth.attr("mechanism").unwrap_or_default().to_string();
    s.sasl2 = false;
    if !login_admitted(ctx, s, &mechanism).await? {
        return Ok(false);
    }
    match exchange(ctx, s, &mechanism, &auth).await? {
        Ok((username, additional)) => {
            let mut success = Element::new("success", ns::SASL);
            if let Some(data) = additional {
                success = success.with_text(B64.encode(data));
            }
            s.send(&success.to_xml("")).await?;
            succeeded(ctx, s, &mechanism, username);
            Ok(true)
        }
        Err(failure) => {
            failed(ctx, s, &mechanism, failure).await?;
            Ok(false)
        }
    }
}

/// After a success was sent: the throttle, metrics and log, and the
/// stream is authenticated as `username`.
pub(super) fn succeeded(ctx: &TransportCtx, s: &mut Stream, mechanism: &str, username: String) {
    ctx.throttle.succeed(s.peer.ip());
    tracing::info!(user = %username, mechanism, sasl2 = s.sasl2, "authenticated");
    let mech = offered(ctx, s)
        .into_iter()
        .chain([
            crate::model::sasl::ht::MECHANISM,
            crate::model::sasl::ht::EXPR,
            crate::model::sasl::ht::ENDP,
        ])
        .find(|m| *m == mechanism)
        .unwrap_or("other");
    crate::base::metrics::get()
        .logins
        .get_or_create(&vec![("mechanism", mech)])
        .inc();
    s.authenticated = Some(username);
}

/// Logins per address and minute, counted across the cluster
/// (`ip_limits.rs`): false, with a `<temporary-auth-failure/>` sent, past
/// `[limits] logins_per_ip_per_min`.
pub(super) async fn login_admitted(
    ctx: &TransportCtx,
    s: &mut Stream,
    mechanism: &str,
) -> Result<bool, NegError> {
    let limit = ctx.config.limits.logins_per_ip_per_min;
    let now = crate::base::time::unix_now().as_millis() as u64;
    let admitted = s.limited_ip.is_none_or(|ip| {
        ctx.ip_limits
            .admit(ip, crate::base::ip_limits::Kind::Login, limit, now)
    });
    if admitted {
        return Ok(true);
    }
    tracing::info!(peer = %s.peer, limit, reason = "logins per address", "login refused");
    crate::base::metrics::get()
        .limited
        .get_or_create(&vec![("limit", "logins-per-ip")])
        .inc();
    failed_with_text(
        ctx,
        s,
        mechanism,
        SaslFailure::TemporaryAuthFailure,
        Some("too many logins from your address; try again in a minute"),
    )
    .await?;
    Ok(false)
}

/// Answer a failure (in the stream's SASL framing), slowed down for the
/// address, and end the stream after too many (RFC 6120 §6.4.5).
pub(super) async fn failed(
    ctx: &TransportCtx,
    s: &mut Stream,
    mechanism: &str,
    failure: SaslFailure,
) -> Result<(), NegError> {
    failed_with_text(ctx, s, mechanism, failure, None).await
}

/// [`failed`] with a `<text/>` for the user.
pub(super) async fn failed_with_text(
    ctx: &TransportCtx,
    s: &mut Stream,
    mechanism: &str,
    failure: SaslFailure,
    text: Option<&str>,
) -> Result<(), NegError> {
    s.auth_attempts += 1;
    if failure != SaslFailure::Aborted && failure != SaslFailure::TemporaryAuthFailure {
        let delay = ctx.throttle.fail(s.peer.ip());
        tokio::time::sleep(delay).await;
    }
    tracing::info!(%failure, mechanism, peer = %s.peer, "authentication failed");
    crate::base::metrics::get()
        .login_failures
        .get_or_create(&vec![("condition", failure.to_string())])
        .inc();
    // XEP-0388 §2.6.2: the RFC 6120 condition inside SASL2's <failure/>.
    let framing = if s.sasl2 { super::sasl2::NS } else { ns::SASL };
    let mut f =
        Element::new("failure", framing).with_child(Element::new(failure.to_string(), ns::SASL));
    if let Some(t) = text {
        // RFC 6120 §6.5: <text/> in the SASL namespace (SASL2 too, §2.6.2).
        f.push_child(Element::new("text", ns::SASL).with_text(t));
    }
    s.send(&f.to_xml("")).await?;
    if s.auth_attempts >= ctx.config.limits.max_auth_attempts {
        return Err(StreamError::with_text(
            StreamCondition::PolicyViolation,
            "too many failed authentication attempts",
        )
        .into());
    }
    Ok(())
}

pub(super) type Outcome = Result<(String, Option<Vec<u8>>), SaslFailure>;

/// How long a login waits to read current credentials (Raft ReadIndex).
pub(super) const CURRENT_STATE: std::time::Duration = std::time::Duration::from_secs(3);

pub(super) async fn exchange(
    ctx: &TransportCtx,
    s: &mut Stream,
    mechanism: &str,
    auth: &Element,
) -> Result<Outcome, NegError> {
    if !offered(ctx, s).contains(&mechanism) {
        let failure = if mechanism == "PLAIN" {
            SaslFailure::EncryptionRequired
        } else {
            SaslFailure::InvalidMechanism
        };
        return Ok(Err(failure));
    }
    if mechanism == "ANONYMOUS" {
        // RFC 4505: no challenge; the trace, if any, is the initial response.
        let trace = match decode(auth) {
            Ok(data) => crate::model::sasl::anonymous::parse_trace(data.as_deref()),
            Err(f) => Err(f),
        };
        return Ok(match trace {
            Ok(trace) => temporary_account(ctx, &s.host, &trace).await,
            Err(f) => Err(f),
        });
    }
    let initial = match decode(auth) {
        Ok(Some(data)) => data,
        Ok(None) => match challenge(s, &[]).await? {
            Ok(data) => data,
            Err(f) => return Ok(Err(f)),
        },
        Err(f) => return Ok(Err(f)),
    };
    // Credentials are read from state at least as new as the cluster's
    // commit: an account made or deleted on another node a moment ago is
    // seen here as it is now.
    if let Err(e) = ctx.replicator.cluster().caught_up(CURRENT_STATE).await {
        tracing::warn!(error = %e, "cannot confirm current credentials with the cluster");
        return Ok(Err(SaslFailure::TemporaryAuthFailure));
    }
    if mechanism == "PLAIN" {
        return Ok(check_plain(ctx, &initial));
    }
    let (hash, plus) = match mechanism {
        "SCRAM-SHA-256" => (ScramHash::Sha256, false),
        "SCRAM-SHA-256-PLUS" => (ScramHash::Sha256, true),
        "SCRAM-SHA-1" => (ScramHash::Sha1, false),
        _ => (ScramHash::Sha1, true),
    };
    let mut scram = ScramServer::new(hash, plus, s.channel_binding.clone())
        .with_fake_salt_key(&ctx.scram_fake_key);
    let domain = &ctx.config.domain;
    let server_first = scram.client_first(&initial, |raw| {
        let user = normalize_username(raw, domain)?;
        let keys = ctx
            .state
            .credentials(&user)
            .ok()
            .flatten()
            .map(|c| c.keys(hash).clone());
        Some((user, keys))
    });
    let server_first = match server_first {
        Ok(m) => m,
        Err(f) => return Ok(Err(f)),
    };
    let client_final = match challenge(s, &server_first).await? {
        Ok(m) => m,
        Err(f) => return Ok(Err(f)),
    };
    Ok(scram
        .client_final(&client_final)
        .map(|ok| (ok.username, Some(ok.server_final))))
}

/// XEP-0175: a temporary account at the anonymous host `host`, made for
/// this login (committed before success is sent) and removed when its
/// session ends (c2s/session.rs).
async fn temporary_account(ctx: &TransportCtx, host: &str, trace: &str) -> Outcome {
    let local = crate::model::sasl::anonymous::new_local_part();
    let username = format!("{local}@{host}");
    // Nobody can log in with a password to an account keyed `x@host`
    // (no username normalizes to it), so one set of random credentials,
    // derived once per process, serves every temporary account.
    static UNUSABLE: std::sync::OnceLock<Option<crate::model::sasl::Credentials>> =
        std::sync::OnceLock::new();
    let credentials = UNUSABLE
        .get_or_init(|| {
            let password = crate::model::sasl::anonymous::new_local_part()
                + &crate::model::sasl::anonymous::new_local_part();
            crate::model::sasl::Credentials::new(&password).ok()
        })
        .clone()
        .ok_or(SaslFailure::TemporaryAuthFailure)?;
    let cmd = crate::model::state::Command::CreateAccount {
        username: username.clone(),
        credentials,
    };
    if let Err(e) = ctx.replicator.commit_async(&cmd).await {
        tracing::warn!(error = %e, "temporary account not committed");
        return Err(SaslFailure::TemporaryAuthFailure);
    }
    tracing::info!(user = %username, trace, "temporary account made (SASL ANONYMOUS)");
    Ok((username, None))
}

fn check_plain(ctx: &TransportCtx, message: &[u8]) -> Outcome {
    let msg = plain::parse(message)?;
    let user =
        normalize_username(&msg.username, &ctx.config.domain).ok_or(SaslFailure::NotAuthorized)?;
    if !msg.authzid.is_empty()
        && msg.authzid != format!("{user}@{}", ctx.config.domain)
        && msg.authzid != user
    {
        return Err(SaslFailure::InvalidAuthzid);
    }
    let creds = ctx
        .state
        .credentials(&user)
        .ok()
        .flatten()
        .ok_or(SaslFailure::NotAuthorized)?;
    if creds.verify_password(&msg.password) {
        Ok((user, None))
    } else {
        Err(SaslFailure::NotAuthorized)
    }
}

/// Send a challenge and wait for the client's response (or abort).
async fn challenge(s: &mut Stream, data: &[u8]) -> Result<Result<Vec<u8>, SaslFailure>, NegError> {
    // The same exchange framed by SASL2 (XEP-0388 §2.4) or RFC 6120.
    let sasl_ns = if s.sasl2 { super::sasl2::NS } else { ns::SASL };
    let mut c = Element::new("challenge", sasl_ns);
    if !data.is_empty() {
        c = c.with_text(B64.encode(data));
    }
    s.send(&c.to_xml("")).await?;
    let el = s.read_element().await?;
    match (el.name.as_str(), el.ns.as_str()) {
        ("response", n) if n == sasl_ns => Ok(decode(&el).map(Option::unwrap_or_default)),
        ("abort", n) if n == sasl_ns => Ok(Err(SaslFailure::Aborted)),
        _ => Err(StreamError::with_text(
            StreamCondition::NotAuthorized,
            "expected a SASL response",
        )
        .into()),
    }
}

/// Base64 payload of `<auth/>` or `<response/>`: none, empty ("="), or data.
pub(super) fn decode(el: &Element) -> Result<Option<Vec<u8>>, SaslFailure> {
    let text = el.text();
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if text == "=" {
        return Ok(Some(Vec::new()));
    }
    B64.decode(text)
        .map(Some)
        .map_err(|_| SaslFailure::IncorrectEncoding)
}
