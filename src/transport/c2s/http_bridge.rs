//! What the HTTP transports (WebSocket, RFC 7395; later BOSH) share: a
//! client stream on an in-process pipe, run by a worker arbiter like a TCP
//! connection's (`MaybeTls::Bridged`), and the URLs clients know us by.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};
use tokio::io::{DuplexStream, ReadHalf};

use crate::base::xml::element::escape;
use crate::base::xml::{ns, Element, XmlLimits, XmlStream};
use crate::transport::context::TransportCtx;
use crate::transport::stream::lazy_reader::LazyBufReader;

/// What the pipe between an HTTP transport and its stream holds at most.
const PIPE_BYTES: usize = 16 * 1024;

/// Arbiters are given bridged streams in turn.
static NEXT_ARBITER: AtomicUsize = AtomicUsize::new(0);

/// Start a client stream for an HTTP transport: the stream's end of the
/// pipe goes to a worker arbiter (negotiation, then the session); the
/// transport's end is returned. `None` before the workers run.
pub fn open_stream(
    ctx: &Arc<TransportCtx>,
    secure: bool,
    peer: SocketAddr,
    transport: &'static str,
) -> Option<DuplexStream> {
    let arbiter = ctx.arbiters.get().and_then(|a| {
        let i = NEXT_ARBITER.fetch_add(1, Ordering::Relaxed);
        a.get(i % a.len().max(1)).cloned()
    })?;
    let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
    let ctx = ctx.clone();
    arbiter.spawn(async move {
        crate::transport::c2s::listener::handle_bridged(ctx, theirs, secure, peer, transport).await
    });
    Some(ours)
}

/// A client's stream header as a TCP client opens it (RFC 6120 §4.7),
/// carrying `attrs` (escaped).
pub fn stream_header<'a>(attrs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut h = format!(
        "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}'",
        ns::CLIENT,
        ns::STREAM
    );
    for (key, value) in attrs {
        h.push_str(&format!(" {key}='{}'", escape(value)));
    }
    h.push('>');
    h
}

/// What the server writes on a bridged stream, parsed back into elements.
pub type ServerOutput = XmlStream<LazyBufReader<ReadHalf<DuplexStream>>>;

/// The parser of what the server writes: its own output, so bounded
/// generously (a MAM page, a vCard with a photo); the read buffer is held
/// only while bytes are being parsed.
pub fn server_output(pipe: ReadHalf<DuplexStream>) -> ServerOutput {
    XmlStream::new(
        LazyBufReader::with_capacity(4096, pipe),
        XmlLimits {
            max_stanza_bytes: 16 * 1024 * 1024,
            max_depth: 256,
            max_attributes: 256,
        },
    )
}

/// Whether `el`, written by the server, restarts the stream (SASL
/// success): its output parser then expects a new header.
pub fn restarts_stream(el: &Element) -> bool {
    el.name == "success" && el.ns == ns::SASL
}

/// The client's address (the socket's; proxies are not trusted for it).
pub fn peer(req: &HttpRequest) -> SocketAddr {
    req.peer_addr()
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// Whether the HTTP connection is protected: TLS here, loopback, or a
/// TLS-terminating proxy in front (`http.behind_tls_proxy`).
pub fn secure(req: &HttpRequest, config: &crate::model::config::Config) -> bool {
    req.app_config().secure() || peer(req).ip().is_loopback() || config.http.behind_tls_proxy
}

/// The base URL clients reach this service at: `http.public_url`, else the
/// request's own scheme and Host.
pub fn public_base(req: &HttpRequest, config: &crate::model::config::Config) -> String {
    if !config.http.public_url.is_empty() {
        return config.http.public_url.trim_end_matches('/').to_string();
    }
    let scheme = if req.app_config().secure() {
        "https"
    } else {
        "http"
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| req.app_config().host().to_string());
    format!("{scheme}://{host}")
}

/// A top-level element standing alone (a WebSocket frame, RFC 7395 §3.3.3;
/// a BOSH payload, XEP-0206): fully namespaced, stream elements with their
/// prefix bound.
pub fn standalone(el: &Element) -> String {
    let xml = el.to_xml(ns::CLIENT);
    if el.ns == ns::STREAM {
        let at = "<stream:".len() + el.name.len();
        format!("{} xmlns:stream='{}'{}", &xml[..at], ns::STREAM, &xml[at..])
    } else {
        el.to_xml("")
    }
}

/// CORS: the request's Origin, if allowed (`http.cors_origins`).
fn allowed_origin(req: &HttpRequest, config: &crate::model::config::Config) -> Option<String> {
    let origins = &config.http.cors_origins;
    if origins.iter().any(|o| o == "*") {
        return Some("*".into());
    }
    let origin = req.headers().get(header::ORIGIN)?.to_str().ok()?;
    origins
        .iter()
        .any(|o| o.eq_ignore_ascii_case(origin))
        .then(|| origin.to_string())
}

/// A response builder with the CORS headers this request earns.
pub fn cors(
    req: &HttpRequest,
    config: &crate::model::config::Config,
    status: StatusCode,
) -> HttpResponseBuilder {
    let mut b = HttpResponse::build(status);
    if let Some(origin) = allowed_origin(req, config) {
        b.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin));
        b.insert_header((
            header::ACCESS_CONTROL_ALLOW_METHODS,
            "GET, POST, PUT, OPTIONS",
        ));
        b.insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, "Content-Type"));
        b.insert_header((header::ACCESS_CONTROL_MAX_AGE, "86400"));
        b.insert_header((header::VARY, "Origin"));
    }
    b
}
