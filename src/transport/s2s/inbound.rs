//! Inbound server-to-server streams (RFC 6120 §4, §5; XEP-0220): offer
//! STARTTLS and dialback, verify the remote's dialback key by asking its
//! authoritative server, answer verification requests for keys any node of
//! this cluster issued, and deliver stanzas only from domains this stream
//! authenticated (anything else: `<invalid-from/>`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tracing::Instrument;

use super::stream::fail;
use super::{dialback, stream, S2sError};
use crate::base::xml::{ns, Element, StreamEvent};
use crate::transport::context::TransportCtx;
use crate::transport::stream::StreamCondition;

/// The domains a stream authenticated, each counted against its domain's
/// link limit while the stream lasts (`domain_limits.rs`).
#[derive(Default)]
struct Authenticated {
    domains: HashSet<String>,
    links: Vec<super::domain_limits::LinkGuard>,
}

impl Authenticated {
    fn contains(&self, domain: &str) -> bool {
        self.domains.contains(domain)
    }

    /// Take `domain` as authenticated on this stream, if its limit of
    /// links allows one more; false if not.
    fn admit(&mut self, ctx: &TransportCtx, domain: String) -> bool {
        if self.domains.contains(&domain) {
            return true;
        }
        let max = ctx.config.s2s.max_links_per_domain;
        match ctx.s2s.domain_limits.link(&domain, max) {
            Some(guard) => {
                self.links.push(guard);
                self.domains.insert(domain);
                true
            }
            None => {
                tracing::info!(remote = %domain, max, reason = "links per domain", "server link refused");
                crate::base::metrics::get()
                    .limited
                    .get_or_create(&vec![("limit", "s2s-links-per-domain")])
                    .inc();
                false
            }
        }
    }
}

/// One inbound connection, until it ends.
pub async fn handle(ctx: Arc<TransportCtx>, tcp: TcpStream, peer: SocketAddr) {
    let span = tracing::info_span!("s2s_in", %peer, remote = tracing::field::Empty);
    async move {
        let _live = crate::base::metrics::Live::new("s2s_in");
        let _ = tcp.set_nodelay(true);
        let conn = stream::Conn::new(Box::new(tcp), &ctx, false);
        match serve(&ctx, conn, None).await {
            Ok(()) => tracing::debug!("inbound stream ended"),
            Err(e) => tracing::info!(error = %e, "inbound stream ended"),
        }
    }
    .instrument(span)
    .await
}

/// One inbound connection on the direct TLS port (XEP-0368): TLS from the
/// first byte, then the same stream as after STARTTLS.
pub async fn handle_direct_tls(ctx: Arc<TransportCtx>, tcp: TcpStream, peer: SocketAddr) {
    let span = tracing::info_span!("s2s_in", %peer, tls = "direct", remote = tracing::field::Empty);
    async move {
        let _live = crate::base::metrics::Live::new("s2s_in");
        let _ = tcp.set_nodelay(true);
        let wait = Duration::from_secs(ctx.config.limits.auth_timeout_secs);
        let tls = match tokio::time::timeout(wait, ctx.s2s.acceptor.accept(tcp)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
            Err(_) => return,
        };
        let cert = peer_certificate(&tls);
        let conn = stream::Conn::new(Box::new(tls), &ctx, true);
        match serve(&ctx, conn, cert).await {
            Ok(()) => tracing::debug!("inbound stream ended"),
            Err(e) => tracing::info!(error = %e, "inbound stream ended"),
        }
    }
    .instrument(span)
    .await
}

type PeerCert = Option<rustls_pki_types::CertificateDer<'static>>;

/// The certificate the peer presented in the TLS handshake, if any.
fn peer_certificate<IO>(tls: &tokio_rustls::server::TlsStream<IO>) -> PeerCert {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
}

async fn serve(
    ctx: &Arc<TransportCtx>,
    mut conn: stream::Conn,
    mut peer_cert: PeerCert,
) -> Result<(), S2sError> {
    let ours = ctx.config.domain.clone();
    let s2s = &ctx.config.s2s;
    conn.limit_rate(crate::base::rate_limit::RateLimit::new(
        s2s.rate_bytes_per_sec,
        s2s.rate_burst_bytes,
    ));
    let idle = Duration::from_secs(s2s.idle_timeout_secs);
    // Domains this stream has authenticated with dialback.
    let mut authenticated = Authenticated::default();
    let auth_deadline =
        tokio::time::Instant::now() + Duration::from_secs(ctx.config.limits.auth_timeout_secs);
    let mut id;
    'stream: loop {
        let header = match tokio::time::timeout_at(auth_deadline, conn.header()).await {
            Ok(h) => h?,
            Err(_) => return Err(S2sError::Timeout),
        };
        id = crate::transport::stream::header::new_stream_id();
        let to = header.attr("to").map(str::to_string);
        let claimed = header
            .attr("from")
            .map(str::to_ascii_lowercase)
            .filter(|d| !super::is_local_domain(ctx, d));
        // We answer as the domain asked for (ours, or a hosted component's).
        let answering = to
            .as_deref()
            .filter(|t| super::is_local_domain(ctx, t))
            .unwrap_or(&ours);
        conn.send(&stream::response_header(
            answering,
            header.attr("from"),
            &id,
        ))
        .await?;
        if header.default_ns.as_deref() != Some(ns::SERVER) {
            return fail(
                &mut conn,
                StreamCondition::InvalidNamespace,
                "expected jabber:server",
            )
            .await;
        }
        if let Some(to) = &to {
            if !super::is_local_domain(ctx, to) {
                return fail(&mut conn, StreamCondition::HostUnknown, "not served here").await;
            }
        }
        let mut features = Element::new("features", ns::STREAM);
        let require_tls = ctx.config.s2s.require_encryption;
        if !conn.tls {
            let mut starttls = Element::new("starttls", ns::TLS);
            if require_tls {
                starttls.push_child(Element::new("required", ns::TLS));
            }
            features.push_child(starttls);
        }
        // RFC 6120 §6.4, XEP-0178: EXTERNAL where the peer's verified
        // certificate names the domain it claims.
        let external = external_domain(ctx, &peer_cert, claimed.as_deref())
            .filter(|d| !authenticated.contains(d));
        if conn.tls && external.is_some() {
            features.push_child(
                Element::new("mechanisms", ns::SASL)
                    .with_child(Element::new("mechanism", ns::SASL).with_text("EXTERNAL")),
            );
        }
        features.push_child(
            Element::new("dialback", dialback::FEATURE_NS)
                .with_child(Element::new("errors", dialback::FEATURE_NS)),
        );
        conn.send(&features.to_xml(ns::SERVER)).await?;
        loop {
            let ev = if authenticated.domains.is_empty() {
                match tokio::time::timeout_at(auth_deadline, conn.next()).await {
                    Ok(ev) => ev?,
                    Err(_) => return Err(S2sError::Timeout),
                }
            } else {
                // An authenticated link silent this long is closed; the
                // peer connects again when it has something to send.
                match tokio::time::timeout(idle, conn.next()).await {
                    Ok(ev) => ev?,
                    Err(_) => {
                        tracing::info!(peer = ?authenticated.domains, "closing an idle incoming link");
                        return fail(
                            &mut conn,
                            StreamCondition::ConnectionTimeout,
                            "idle link closed",
                        )
                        .await;
                    }
                }
            };
            let el = match ev {
                StreamEvent::Stanza(el) => el,
                StreamEvent::Keepalive => continue,
                StreamEvent::End => {
                    let _ = conn.send("</stream:stream>").await;
                    return Ok(());
                }
                StreamEvent::Header(_) => {
                    return fail(
                        &mut conn,
                        StreamCondition::NotWellFormed,
                        "unexpected header",
                    )
                    .await
                }
            };
            if el.is("starttls", ns::TLS) && !conn.tls {
                conn.send(&format!("<proceed xmlns='{}'/>", ns::TLS))
                    .await?;
                let io = conn.into_io();
                let tls = ctx
                    .s2s
                    .acceptor
                    .accept(io)
                    .await
                    .map_err(|e| S2sError::Tls(e.to_string()))?;
                peer_cert = peer_certificate(&tls);
                conn = stream::Conn::new(Box::new(tls), ctx, true);
                // The limit holds on the encrypted stream too (once per
                // link: STARTTLS cannot be repeated to refill the bucket).
                conn.limit_rate(crate::base::rate_limit::RateLimit::new(
                    s2s.rate_bytes_per_sec,
                    s2s.rate_burst_bytes,
                ));
                continue 'stream;
            }
            if el.is("auth", ns::SASL) && conn.tls {
                let wanted = el.text();
                // The authorization identity, if given, must be the claimed domain.
                let authzid = match wanted.trim() {
                    "" | "=" => None,
                    b64 => {
                        use base64::Engine;
                        base64::engine::general_purpose::STANDARD
                            .decode(b64)
                            .ok()
                            .and_then(|v| String::from_utf8(v).ok())
                            .map(|d| d.to_ascii_lowercase())
                    }
                };
                let ok = el.attr("mechanism") == Some("EXTERNAL")
                    && external.is_some()
                    && (authzid.is_none() || authzid == external);
                if let (true, Some(domain)) = (ok, external.clone()) {
                    if !authenticated.admit(ctx, domain.clone()) {
                        return fail(
                            &mut conn,
                            StreamCondition::PolicyViolation,
                            &format!("too many links from {domain}"),
                        )
                        .await;
                    }
                    conn.send(&format!("<success xmlns='{}'/>", ns::SASL))
                        .await?;
                    tracing::info!(remote = %domain, "authenticated with SASL EXTERNAL");
                    tracing::Span::current().record("remote", tracing::field::display(&domain));
                    conn.restart();
                    continue 'stream;
                }
                conn.send(&format!(
                    "<failure xmlns='{}'><not-authorized/></failure>",
                    ns::SASL
                ))
                .await?;
                continue;
            }
            if require_tls && !conn.tls {
                return fail(
                    &mut conn,
                    StreamCondition::PolicyViolation,
                    "encryption required: STARTTLS first",
                )
                .await;
            }
            if el.is("result", dialback::NS) {
                authenticate(ctx, &mut conn, &el, &id, &mut authenticated).await?;
                continue;
            }
            if el.is("verify", dialback::NS) {
                answer_verify(ctx, &mut conn, &el).await?;
                continue;
            }
            if el.is("error", ns::STREAM) {
                return Ok(());
            }
            if el.ns != ns::SERVER || !matches!(el.name.as_str(), "message" | "presence" | "iq") {
                return fail(
                    &mut conn,
                    StreamCondition::UnsupportedStanzaType,
                    "not a stanza",
                )
                .await;
            }
            // RFC 6120 §4.9.3.9/§13.7.1.3: the sender must be a domain this
            // stream authenticated, the recipient one we serve.
            let from_domain = el
                .attr("from")
                .and_then(|f| jid::Jid::new(f).ok())
                .map(|j| j.domain().as_str().to_ascii_lowercase());
            let Some(from_domain) = from_domain.filter(|d| authenticated.contains(d)) else {
                return fail(
                    &mut conn,
                    StreamCondition::InvalidFrom,
                    "sender's domain not authenticated on this stream",
                )
                .await;
            };
            let to_local = el
                .attr("to")
                .and_then(|t| jid::Jid::new(t).ok())
                .is_some_and(|j| super::is_local_domain(ctx, j.domain().as_str()));
            if !to_local {
                return fail(
                    &mut conn,
                    StreamCondition::HostUnknown,
                    "recipient not served here",
                )
                .await;
            }
            // The domain's stanza budget, shared by all its links here.
            let per_sec = ctx.config.s2s.stanzas_per_sec_per_domain;
            if let Some(wait) = ctx.s2s.domain_limits.pace(&from_domain, per_sec) {
                crate::base::metrics::get()
                    .limited
                    .get_or_create(&vec![("limit", "s2s-stanzas-per-domain")])
                    .inc();
                tokio::time::sleep(wait).await;
            }
            crate::base::metrics::get().s2s_stanza(true);
            let mut el = el;
            super::retag(&mut el, ns::SERVER, ns::CLIENT);
            tracing::trace!(from = %from_domain, stanza = %el.to_xml(ns::CLIENT), "inbound stanza");
            super::deliver_local(ctx, el);
        }
    }
}

/// XEP-0220 §2.2: the remote claims `from` with a key; ask that domain's
/// authoritative server whether it issued the key for this stream.
async fn authenticate(
    ctx: &Arc<TransportCtx>,
    conn: &mut stream::Conn,
    el: &Element,
    stream_id: &str,
    authenticated: &mut Authenticated,
) -> Result<(), S2sError> {
    // The domain of ours the remote wants to reach (ours, or a hosted
    // component's); anything else is answered as the cluster's domain.
    let ours = el
        .attr("to")
        .filter(|t| super::is_local_domain(ctx, t))
        .unwrap_or(&ctx.config.domain)
        .to_ascii_lowercase();
    let Some(from) = el
        .attr("from")
        .and_then(|f| jid::BareJid::new(f).ok())
        .filter(|j| j.node().is_none())
        .map(|j| j.domain().as_str().to_ascii_lowercase())
    else {
        return fail(
            conn,
            StreamCondition::InvalidFrom,
            "dialback needs a domain in 'from'",
        )
        .await;
    };
    if !el
        .attr("to")
        .is_some_and(|t| super::is_local_domain(ctx, t))
    {
        let reply = format!(
            "<db:result from='{ours}' to='{from}' type='error'><error type='cancel'><item-not-found xmlns='{}'/></error></db:result>",
            ns::STANZA_ERRORS
        );
        return conn.send(&reply).await;
    }
    if super::is_local_domain(ctx, &from) {
        return fail(conn, StreamCondition::InvalidFrom, "that is our own domain").await;
    }
    let key = el.text();
    let valid = verify_with(ctx, &ours, &from, stream_id, &key).await;
    tracing::info!(remote = %from, valid, "dialback");
    if valid && !authenticated.admit(ctx, from.clone()) {
        return fail(
            conn,
            StreamCondition::PolicyViolation,
            &format!("too many links from {from}"),
        )
        .await;
    }
    let verdict = if valid { "valid" } else { "invalid" };
    conn.send(&format!(
        "<db:result from='{ours}' to='{from}' type='{verdict}'/>"
    ))
    .await?;
    if valid {
        tracing::Span::current().record("remote", tracing::field::display(&from));
        Ok(())
    } else {
        // XEP-0220 §2.4: an invalid key ends the stream.
        fail(
            conn,
            StreamCondition::NotAuthorized,
            "dialback key not valid",
        )
        .await
    }
}

/// Ask `remote`'s authoritative server (a new stream to it) to verify
/// `key` for our stream `stream_id` (XEP-0220 §2.3).
async fn verify_with(
    ctx: &Arc<TransportCtx>,
    ours: &str,
    remote: &str,
    stream_id: &str,
    key: &str,
) -> bool {
    let attempt = async {
        let (mut conn, _, _) = stream::open(ctx, ours, remote).await?;
        conn.send(&format!(
            "<db:verify from='{ours}' to='{remote}' id='{stream_id}'>{}</db:verify>",
            crate::base::xml::element::escape(key)
        ))
        .await?;
        loop {
            let el = conn.element().await?;
            if el.is("verify", dialback::NS) && el.attr("id") == Some(stream_id) {
                let _ = conn.send("</stream:stream>").await;
                return Ok::<bool, S2sError>(el.attr("type") == Some("valid"));
            }
        }
    };
    let wait = Duration::from_secs(ctx.config.s2s.connect_timeout_secs);
    match tokio::time::timeout(wait, attempt).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            tracing::info!(remote, error = %e, "cannot verify a dialback key");
            false
        }
        Err(_) => false,
    }
}

/// XEP-0220 §2.3: we are the authoritative server; was this key ours?
/// Any node can answer: the key derives from the cluster-wide secret.
async fn answer_verify(
    ctx: &Arc<TransportCtx>,
    conn: &mut stream::Conn,
    el: &Element,
) -> Result<(), S2sError> {
    // The key was made for the domain of ours the verify is addressed to.
    let ours = &el
        .attr("to")
        .filter(|t| super::is_local_domain(ctx, t))
        .unwrap_or(&ctx.config.domain)
        .to_ascii_lowercase();
    let from = el.attr("from").unwrap_or_default();
    let id = el.attr("id").unwrap_or_default();
    let for_us = el
        .attr("to")
        .is_some_and(|t| super::is_local_domain(ctx, t));
    let valid = for_us
        && jid::BareJid::new(from).is_ok()
        && ctx.s2s.secret.verify(from, ours, id, &el.text());
    tracing::info!(remote = %from, valid, "dialback verification asked");
    conn.send(&format!(
        "<db:verify from='{ours}' to='{}' id='{}' type='{}'/>",
        crate::base::xml::element::escape(from),
        crate::base::xml::element::escape(id),
        if valid { "valid" } else { "invalid" }
    ))
    .await
}

/// The domain SASL EXTERNAL may authenticate on this stream: the one the
/// peer claims, if its certificate (verified against our trusted roots by
/// the TLS layer) names it and peers are verified at all.
fn external_domain(ctx: &TransportCtx, cert: &PeerCert, claimed: Option<&str>) -> Option<String> {
    let (cert, claimed) = (cert.as_ref()?, claimed?);
    (ctx.s2s.verify && stream::certificate_names(cert, claimed)).then(|| claimed.to_string())
}
