//! Stream negotiation as plain async functions (RFC 6120 §4–§7): open the
//! stream, STARTTLS, SASL, restart, bind. Only a bound stream reaches the
//! session actor, so nothing is routed from an unauthenticated stream.

pub mod bind;
pub mod header;
pub mod lazy_reader;
pub mod sasl;
pub mod sasl2;
pub mod starttls;
pub mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;

pub use crate::base::stream_error::{StreamCondition, StreamError};
use crate::base::xml::{ns, Element, ParseError, StreamEvent, XmlStream};
use crate::transport::context::TransportCtx;
use lazy_reader::LazyBufReader;
use transport::MaybeTls;

pub type StreamReader = XmlStream<LazyBufReader<ReadHalf<MaybeTls>>>;
pub type StreamWriter = WriteHalf<MaybeTls>;

/// Why negotiation stopped.
#[derive(Debug, thiserror::Error)]
pub enum NegError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("peer closed the connection")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl From<ParseError> for NegError {
    fn from(e: ParseError) -> Self {
        match e {
            ParseError::Closed => NegError::Closed,
            ParseError::Io(io) => NegError::Io(io),
            other => NegError::Stream(StreamError::from(&other)),
        }
    }
}

/// A connection being negotiated.
pub struct Stream {
    pub parser: StreamReader,
    pub writer: StreamWriter,
    pub peer: SocketAddr,
    pub secure: bool,
    /// STARTTLS is possible (a plain TCP connection).
    pub can_starttls: bool,
    /// tls-exporter data when the TLS session offers it.
    pub channel_binding: Option<Vec<u8>>,
    /// tls-server-end-point data (RFC 5929) on a TLS stream to our listener.
    pub end_point: Option<Vec<u8>>,
    /// The address the per-address limits count (`ip_limits.rs`): none for
    /// a stream bridged from HTTP behind a TLS proxy, whose peer is the
    /// proxy for every client.
    pub limited_ip: Option<std::net::IpAddr>,
    /// Our stream header has gone out (a stream error needs one first).
    pub header_sent: bool,
    pub stream_id: String,
    /// The domain the client addressed: the server's, or the anonymous
    /// host (XEP-0175).
    pub host: String,
    /// SASL runs framed by SASL2 (XEP-0388).
    pub sasl2: bool,
    /// Set once SASL succeeds.
    pub authenticated: Option<String>,
    pub auth_attempts: u32,
    deadline: Instant,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

/// A stream that finished negotiation: ready for a session actor.
pub struct Bound {
    pub stream: Stream,
    pub jid: jid::FullJid,
    /// The bind request, answered once the session is registered.
    pub bind_iq_id: String,
    /// Bound by SASL2's Bind 2 instead: the success to send then.
    pub sasl2: Option<Sasl2Bind>,
}

/// A Bind 2 bind (XEP-0386): what its `<success/>` needs once the session
/// is in place.
pub struct Sasl2Bind {
    pub auth: sasl2::Authenticated,
    pub inline: sasl2::BindInline,
    /// Inline results from before the bind (a failed inline resume).
    pub before: Vec<Element>,
}

enum Step {
    StartTls,
    Bound(jid::FullJid, String),
    Bound2(jid::FullJid, Sasl2Bind),
    Resume(
        actix::Addr<crate::transport::c2s::session::C2sSession>,
        String,
        u32,
        String,
        Option<sasl2::Authenticated>,
    ),
}

/// A stream resuming a detached session (XEP-0198 §5).
pub struct Resuming {
    pub stream: Stream,
    pub previd: String,
    /// The session, found here or fetched from another node.
    pub session: actix::Addr<crate::transport::c2s::session::C2sSession>,
    /// The authenticated user (localpart).
    pub user: String,
    pub h: u32,
    /// Resumed inside SASL2: the success to wrap `<resumed/>` in.
    pub sasl2: Option<sasl2::Authenticated>,
}

/// What negotiation produced.
pub enum Negotiated {
    Bound(Bound),
    Resume(Resuming),
}

impl Stream {
    pub fn new(conn: MaybeTls, ctx: &TransportCtx, peer: SocketAddr, deadline: Instant) -> Stream {
        let secure = conn.is_tls();
        let can_starttls = conn.can_starttls();
        let channel_binding = conn.channel_binding();
        // Our own certificate is the one on a TLS stream to our listener
        // (not on one bridged from HTTP, whose TLS may be a proxy's).
        let end_point = matches!(conn, MaybeTls::Tls(_))
            .then(|| ctx.tls_end_point.clone())
            .flatten();
        let proxied = matches!(conn, MaybeTls::Bridged { .. }) && ctx.config.http.behind_tls_proxy;
        let limited_ip = (!proxied).then(|| peer.ip());
        let (r, w) = tokio::io::split(conn);
        Stream {
            // Held only while bytes are being parsed, not while idle.
            parser: XmlStream::new(LazyBufReader::with_capacity(4096, r), ctx.xml_limits()),
            writer: w,
            peer,
            secure,
            can_starttls,
            channel_binding,
            end_point,
            limited_ip,
            header_sent: false,
            stream_id: header::new_stream_id(),
            host: ctx.config.domain.clone(),
            sasl2: false,
            authenticated: None,
            auth_attempts: 0,
            deadline,
            shutdown: ctx.shutdown_rx(),
        }
    }

    /// Whether the client addressed the anonymous host.
    pub fn anonymous_host(&self, ctx: &TransportCtx) -> bool {
        !self.host.eq_ignore_ascii_case(&ctx.config.domain)
    }

    pub async fn send(&mut self, data: &str) -> Result<(), NegError> {
        self.writer.write_all(data.as_bytes()).await?;
        self.writer.flush().await?;
        Ok(())
    }

    pub async fn send_element(&mut self, el: &Element) -> Result<(), NegError> {
        self.send(&el.to_xml(ns::CLIENT)).await
    }

    /// Next event, bounded by the negotiation deadline and server shutdown.
    pub async fn read(&mut self) -> Result<StreamEvent, NegError> {
        if *self.shutdown.borrow() {
            return Err(StreamError::new(StreamCondition::SystemShutdown).into());
        }
        tokio::select! {
            ev = self.parser.next() => Ok(ev?),
            _ = tokio::time::sleep_until(self.deadline) => Err(StreamError::with_text(
                StreamCondition::ConnectionTimeout, "negotiation took too long").into()),
            _ = self.shutdown.changed() => Err(StreamError::new(StreamCondition::SystemShutdown).into()),
        }
    }

    /// Next top-level element; keepalives are skipped, a stream end is a close.
    pub async fn read_element(&mut self) -> Result<Element, NegError> {
        loop {
            match self.read().await? {
                StreamEvent::Stanza(el) => return Ok(el),
                StreamEvent::Keepalive => continue,
                StreamEvent::End => {
                    let _ = self.send("</stream:stream>").await;
                    return Err(NegError::Closed);
                }
                StreamEvent::Header(_) => {
                    return Err(StreamError::new(StreamCondition::NotWellFormed).into())
                }
            }
        }
    }

    /// Send a stream error (with our header first if need be) and close.
    pub async fn fail(mut self, _ctx: &TransportCtx, err: StreamError) {
        tracing::debug!(%err, "closing stream during negotiation");
        let mut out = String::new();
        if !self.header_sent {
            out.push_str(&header::response_header(&self.host, &self.stream_id));
        }
        out.push_str(&err.to_xml());
        out.push_str("</stream:stream>");
        let write = async {
            self.writer.write_all(out.as_bytes()).await?;
            self.writer.shutdown().await
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
    }
}

/// Negotiate a fresh connection up to a bound resource. `None` when the
/// stream ended (an error was sent where one applies).
pub async fn negotiate(
    ctx: &Arc<TransportCtx>,
    conn: MaybeTls,
    peer: SocketAddr,
) -> Option<Negotiated> {
    let deadline = Instant::now() + Duration::from_secs(ctx.config.limits.auth_timeout_secs);
    let mut stream = Stream::new(conn, ctx, peer, deadline);
    // Connections per address and minute, cluster-wide (ip_limits.rs).
    let now = crate::base::time::unix_now().as_millis() as u64;
    let limit = ctx.config.limits.connections_per_ip_per_min;
    let admitted = stream.limited_ip.is_none_or(|ip| {
        ctx.ip_limits
            .admit(ip, crate::base::ip_limits::Kind::Connection, limit, now)
    });
    if !admitted {
        tracing::info!(%peer, limit, reason = "connections per address", "connection refused");
        crate::base::metrics::get()
            .limited
            .get_or_create(&vec![("limit", "connections-per-ip")])
            .inc();
        let err = StreamError::with_text(
            StreamCondition::PolicyViolation,
            "too many connections from your address; try again in a minute",
        );
        stream.fail(ctx, err).await;
        return None;
    }
    loop {
        match run(ctx, &mut stream).await {
            Ok(Step::StartTls) => match starttls::upgrade(ctx, stream).await {
                Some(s) => stream = s,
                None => return None,
            },
            Ok(Step::Bound(jid, bind_iq_id)) => {
                return Some(Negotiated::Bound(Bound {
                    stream,
                    jid,
                    bind_iq_id,
                    sasl2: None,
                }))
            }
            Ok(Step::Bound2(jid, bind)) => {
                return Some(Negotiated::Bound(Bound {
                    stream,
                    jid,
                    bind_iq_id: String::new(),
                    sasl2: Some(bind),
                }))
            }
            Ok(Step::Resume(session, user, h, previd, sasl2)) => {
                return Some(Negotiated::Resume(Resuming {
                    stream,
                    previd,
                    session,
                    user,
                    h,
                    sasl2,
                }))
            }
            Err(NegError::Stream(e)) => {
                forget_temporary_account(ctx, &stream);
                stream.fail(ctx, e).await;
                return None;
            }
            Err(e) => {
                forget_temporary_account(ctx, &stream);
                tracing::debug!(error = %e, "connection ended during negotiation");
                return None;
            }
        }
    }
}

/// A temporary account (XEP-0175) made by this stream's login goes when the
/// stream ends before a session took it over.
fn forget_temporary_account(ctx: &TransportCtx, s: &Stream) {
    if let Some(username) = s
        .authenticated
        .clone()
        .filter(|u| crate::model::config::is_anonymous_account(u))
    {
        tracing::info!(%username, "temporary account removed: its login ended before binding");
        ctx.replicator
            .submit(&crate::model::state::Command::DeleteAccount { username });
    }
}

/// Open the stream and run it until STARTTLS or bind.
async fn run(ctx: &Arc<TransportCtx>, s: &mut Stream) -> Result<Step, NegError> {
    // A failed resume is told to every node once per connection: a client
    // repeating <resume/> cannot make the cluster broadcast at its pace.
    let mut resume_told = false;
    'stream: loop {
        header::open(ctx, s).await?;
        s.send(&features(ctx, s).to_xml("")).await?;
        loop {
            let el = s.read_element().await?;
            match (el.name.as_str(), el.ns.as_str()) {
                ("starttls", ns::TLS)
                    if !s.secure && s.can_starttls && s.authenticated.is_none() =>
                {
                    return Ok(Step::StartTls);
                }
                ("auth", ns::SASL) if s.authenticated.is_none() => {
                    if !s.secure && ctx.config.c2s.require_tls {
                        return Err(StreamError::with_text(
                            StreamCondition::PolicyViolation,
                            "STARTTLS is required before authentication",
                        )
                        .into());
                    }
                    if sasl::authenticate(ctx, s, el).await? {
                        s.parser.restart();
                        continue 'stream;
                    }
                }
                // No registration on the anonymous host (XEP-0175).
                // XEP-0388: SASL2, with Bind 2, inline resumption and FAST.
                ("authenticate", sasl2::NS) if s.authenticated.is_none() => {
                    if !s.secure && ctx.config.c2s.require_tls {
                        return Err(StreamError::with_text(
                            StreamCondition::PolicyViolation,
                            "STARTTLS is required before authentication",
                        )
                        .into());
                    }
                    let Some(auth) = sasl2::authenticate(ctx, s, el).await? else {
                        continue;
                    };
                    let user = auth.username.clone();
                    let mut before = Vec::new();
                    if let Some((previd, h)) = auth.resume.clone() {
                        if ctx.draining.load(std::sync::atomic::Ordering::Acquire) {
                            return Err(StreamError::with_text(
                                StreamCondition::SystemShutdown,
                                "node draining; resume elsewhere",
                            )
                            .into());
                        }
                        match crate::transport::c2s::listener::locate_session(ctx, &previd, &user)
                            .await
                        {
                            Some(session) => {
                                return Ok(Step::Resume(session, user, h, previd, Some(auth)))
                            }
                            None => {
                                if !resume_told {
                                    resume_told = true;
                                    crate::routing::route::resume_failed(ctx, &user, &previd, h);
                                }
                                before.push(
                                    Element::new(
                                        "failed",
                                        crate::transport::c2s::stream_management::NS,
                                    )
                                    .with_child(Element::new("item-not-found", ns::STANZA_ERRORS)),
                                );
                            }
                        }
                    }
                    if let Some(bind) = auth.bind.clone() {
                        let bare = ctx.config.account_jid(&user);
                        // A tag that makes no valid resource: a random one.
                        let jid = jid::FullJid::new(&format!("{bare}/{}", sasl2::resource(&bind)))
                            .or_else(|_| {
                                let untagged = Element::new("bind", sasl2::BIND2);
                                jid::FullJid::new(&format!("{bare}/{}", sasl2::resource(&untagged)))
                            })
                            .map_err(|_| {
                                StreamError::with_text(
                                    StreamCondition::InternalServerError,
                                    "no valid resource for this account",
                                )
                            })?;
                        let inline = sasl2::bind_inline(&bind);
                        return Ok(Step::Bound2(
                            jid,
                            Sasl2Bind {
                                auth,
                                inline,
                                before,
                            },
                        ));
                    }
                    // No Bind 2: success, then the features for binding on
                    // the same stream (no restart, §2.6.1).
                    let bare = ctx.config.account_jid(&user);
                    s.send(&auth.success(&bare, before).to_xml("")).await?;
                    s.send(&features(ctx, s).to_xml("")).await?;
                }
                ("iq", ns::CLIENT) if s.authenticated.is_none() && !s.anonymous_host(ctx) => {
                    let allowed = s.secure || !ctx.config.c2s.require_tls;
                    match crate::im::modules::register::pre_auth(ctx, &el, allowed, s.peer.ip())
                        .await
                    {
                        Some(reply) => s.send_element(&reply).await?,
                        None => return Err(not_authorized()),
                    }
                }
                // Bind (and the legacy session) only once authenticated.
                ("iq", ns::CLIENT) if s.authenticated.is_some() => {
                    if let Some(step) = bind::handle(ctx, s, &el).await? {
                        return Ok(step);
                    }
                }
                // XEP-0198 §5: resume instead of binding.
                ("resume", crate::transport::c2s::stream_management::NS)
                    if s.authenticated.is_some() =>
                {
                    let user = s.authenticated.clone().unwrap_or_default();
                    let h = el.attr("h").and_then(|h| h.parse::<u32>().ok());
                    let previd = el.attr("previd").unwrap_or_default().to_string();
                    if h.is_some() && ctx.draining.load(std::sync::atomic::Ordering::Acquire) {
                        // This node is going away: resume somewhere else.
                        return Err(StreamError::with_text(
                            StreamCondition::SystemShutdown,
                            "node draining; resume elsewhere",
                        )
                        .into());
                    }
                    let found = match h {
                        Some(_) => {
                            crate::transport::c2s::listener::locate_session(ctx, &previd, &user)
                                .await
                        }
                        None => None,
                    };
                    match (found, h) {
                        (Some(session), Some(h)) => {
                            return Ok(Step::Resume(session, user, h, previd, None))
                        }
                        (_, h) => {
                            if let Some(h) = h.filter(|_| !previd.is_empty() && !resume_told) {
                                resume_told = true;
                                // Its node may have died holding messages
                                // it was writing: h says which arrived.
                                crate::routing::route::resume_failed(ctx, &user, &previd, h);
                            }
                            let mut f = Element::new(
                                "failed",
                                crate::transport::c2s::stream_management::NS,
                            )
                            .with_child(Element::new(
                                if h.is_some() {
                                    "item-not-found"
                                } else {
                                    "bad-request"
                                },
                                ns::STANZA_ERRORS,
                            ));
                            if h.is_none() {
                                f.remove_attr("h");
                            }
                            s.send(&f.to_xml("")).await?;
                        }
                    }
                }
                _ => return Err(not_authorized()),
            }
        }
    }
}

fn not_authorized() -> NegError {
    StreamError::with_text(
        StreamCondition::NotAuthorized,
        "authenticate and bind a resource first",
    )
    .into()
}

/// Stream features for the stream's current state (RFC 6120 §4.3.2).
fn features(ctx: &TransportCtx, s: &Stream) -> Element {
    let mut f = Element::new("features", ns::STREAM);
    if s.authenticated.is_some() {
        f.push_child(Element::new("bind", ns::BIND));
        f.push_child(
            Element::new("session", ns::SESSION).with_child(Element::new("optional", ns::SESSION)),
        );
        // XEP-0237 roster versioning.
        f.push_child(Element::new("ver", "urn:xmpp:features:rosterver"));
        // RFC 6121 §3.4 subscription pre-approval.
        f.push_child(Element::new("sub", "urn:xmpp:features:pre-approval"));
        // XEP-0198 stream management and XEP-0352 client state indication.
        f.push_child(Element::new(
            "sm",
            crate::transport::c2s::stream_management::NS,
        ));
        f.push_child(Element::new("csi", crate::transport::c2s::session::CSI_NS));
        // XEP-0115 §6.3: the server's own capabilities.
        f.push_child(crate::im::modules::disco::caps_feature(ctx));
        return f;
    }
    let require_tls = ctx.config.c2s.require_tls;
    if !s.secure && s.can_starttls {
        let mut tls = Element::new("starttls", ns::TLS);
        if require_tls {
            tls.push_child(Element::new("required", ns::TLS));
        }
        f.push_child(tls);
        if require_tls {
            return f;
        }
    }
    let mut mechs = Element::new("mechanisms", ns::SASL);
    for m in sasl::offered(ctx, s) {
        mechs.push_child(Element::new("mechanism", ns::SASL).with_text(m));
    }
    f.push_child(mechs);
    f.push_child(sasl2::feature(ctx, s));
    if s.channel_binding.is_some() {
        // XEP-0440: which channel-binding types we support.
        f.push_child(
            Element::new("sasl-channel-binding", ns::SASL_CB).with_child(
                Element::new("channel-binding", ns::SASL_CB).with_attr("type", "tls-exporter"),
            ),
        );
    }
    if ctx.config.registration.allow && !s.anonymous_host(ctx) {
        f.push_child(Element::new("register", ns::REGISTER_FEATURE));
    }
    f.push_child(crate::im::modules::disco::caps_feature(ctx));
    f
}
