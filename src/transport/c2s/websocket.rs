//! XMPP over WebSocket (RFC 7395) at `/xmpp-websocket` on the HTTP listener.
//!
//! A WebSocket connection is bridged to the same stream negotiation and
//! session as a TCP connection: its frames are translated to the classic
//! stream's bytes on an in-process pipe (`MaybeTls::Bridged`), and what
//! the server writes is parsed back into one element per frame. So SASL,
//! bind, stream management (resumable across WebSocket, TCP and nodes),
//! CSI, carbons and every limit are the TCP ones.
//!
//! - §3.3.1: the `xmpp` subprotocol is echoed; one that offers others only
//!   is refused.
//! - §3.3.3: every frame is one complete element; `<open/>` and `<close/>`
//!   (urn:ietf:params:xml:ns:xmpp-framing) stand for the stream header and
//!   its end.
//! - §3.6.1: a draining node closes with `see-other-uri` (the public URL, or
//!   the URL the client came in on, which a load balancer sends elsewhere).
//!
//! Ownership: a stanza counts as written once it is in the pipe; it then
//! reaches the WebSocket's send queue without waiting on the client. A kill
//! -9 in between loses what stream management has not been acked for, as
//! on TCP before the kernel has it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix_web::http::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Session};
use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};

use super::http_bridge;
use crate::base::xml::{ns, Element, ParseError, StreamEvent, XmlLimits, XmlStream};
use crate::transport::context::TransportCtx;
use crate::transport::stream::{StreamCondition, StreamError};

/// RFC 7395 §3.3.2.
pub const FRAMING_NS: &str = "urn:ietf:params:xml:ns:xmpp-framing";

/// GET /xmpp-websocket: upgrade, and bridge the connection to a stream.
pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    ctx: web::Data<Arc<TransportCtx>>,
) -> Result<HttpResponse, actix_web::Error> {
    let ctx = ctx.get_ref().clone();
    if !ctx.config.http.websocket {
        return Ok(HttpResponse::NotFound().finish());
    }
    let asked: Vec<String> = req
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .collect();
    let xmpp = asked.iter().any(|p| p == "xmpp");
    if !asked.is_empty() && !xmpp {
        return Ok(HttpResponse::BadRequest()
            .content_type("text/plain")
            .body("the WebSocket subprotocol must be \"xmpp\" (RFC 7395 §3.3.1)\n"));
    }
    if ctx.draining.load(Ordering::Acquire) {
        return Ok(HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("node draining\n"));
    }
    let (mut response, session, messages) = actix_ws::handle(&req, body)?;
    if xmpp {
        response
            .headers_mut()
            .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("xmpp"));
    }
    let peer = http_bridge::peer(&req);
    let secure = http_bridge::secure(&req, &ctx.config);
    let see_other =
        http_bridge::public_base(&req, &ctx.config).replacen("http", "ws", 1) + "/xmpp-websocket";
    let Some(ours) = http_bridge::open_stream(&ctx, secure, peer, "websocket") else {
        return Ok(HttpResponse::ServiceUnavailable().finish());
    };
    // A frame holds one stanza: the stanza limit, plus room for framing.
    let limit = ctx.config.limits.max_stanza_size + 1024;
    let messages = messages
        .max_frame_size(limit)
        .aggregate_continuations()
        .max_continuation_size(limit);
    let (r, w) = tokio::io::split(ours);
    let live = crate::base::metrics::Live::new("websocket");
    let inbound = actix_web::rt::spawn({
        let (ctx, session) = (ctx.clone(), session.clone());
        async move {
            let _live = live;
            inbound(ctx, messages, w, session, peer).await
        }
    });
    actix_web::rt::spawn(outbound(ctx, r, session, see_other, inbound));
    Ok(response)
}

/// Frames from the client, translated onto the pipe. Ends with the
/// connection; the pipe's end then reads as a dropped connection.
async fn inbound(
    ctx: Arc<TransportCtx>,
    mut messages: AggregatedMessageStream,
    mut pipe: WriteHalf<DuplexStream>,
    mut session: Session,
    peer: SocketAddr,
) {
    let limits = ctx.xml_limits();
    loop {
        let msg = match messages.recv().await {
            None => break,
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::debug!(%peer, error = %e, "WebSocket protocol error");
                let err = match e {
                    actix_ws::ProtocolError::Overflow => StreamError::with_text(
                        StreamCondition::PolicyViolation,
                        "frame larger than the stanza size limit",
                    ),
                    _ => StreamError::with_text(StreamCondition::BadFormat, e.to_string()),
                };
                fail(session, err).await;
                break;
            }
        };
        match msg {
            AggregatedMessage::Text(text) => match translate(&text, limits) {
                Ok(bytes) => {
                    if pipe.write_all(bytes.as_bytes()).await.is_err() {
                        break;
                    }
                }
                Err(err) => {
                    tracing::debug!(%peer, %err, "bad WebSocket frame");
                    fail(session, err).await;
                    break;
                }
            },
            AggregatedMessage::Binary(_) => {
                fail(
                    session,
                    StreamError::with_text(
                        StreamCondition::UnsupportedEncoding,
                        "XMPP frames are text frames (RFC 7395 §3.2)",
                    ),
                )
                .await;
                break;
            }
            AggregatedMessage::Ping(b) => {
                if session.pong(&b).await.is_err() {
                    break;
                }
            }
            AggregatedMessage::Pong(_) => {}
            AggregatedMessage::Close(_) => break,
        }
    }
    let _ = pipe.shutdown().await;
}

/// One client frame as the classic stream's bytes.
fn translate(text: &str, limits: XmlLimits) -> Result<String, StreamError> {
    if text.trim().is_empty() {
        return Ok(String::new());
    }
    let el = parse_frame(text, limits).map_err(|e| StreamError::from(&e))?;
    if el.ns != FRAMING_NS {
        return Ok(el.to_xml(ns::CLIENT));
    }
    match el.name.as_str() {
        "open" => Ok(http_bridge::stream_header(
            ["to", "from", "version", "xml:lang", "id"]
                .into_iter()
                .filter_map(|k| el.attr(k).map(|v| (k, v))),
        )),
        "close" => Ok("</stream:stream>".into()),
        other => Err(StreamError::with_text(
            StreamCondition::UnsupportedStanzaType,
            format!("<{other}/> is not a framing element"),
        )),
    }
}

/// Parse a frame: exactly one complete element (RFC 7395 §3.3.3).
fn parse_frame(text: &str, limits: XmlLimits) -> Result<Element, ParseError> {
    let doc = format!(
        "<stream:stream xmlns:stream='{}' xmlns='{}'>{text}</stream:stream>",
        ns::STREAM,
        ns::CLIENT
    );
    let mut parser = XmlStream::new(doc.as_bytes(), limits);
    let parse = async {
        let mut first = None;
        loop {
            match parser.next().await? {
                StreamEvent::Header(_) | StreamEvent::Keepalive => continue,
                StreamEvent::Stanza(el) if first.is_none() => first = Some(el),
                StreamEvent::Stanza(_) => {
                    return Err(ParseError::NotWellFormed(
                        "one element per WebSocket frame".into(),
                    ))
                }
                StreamEvent::End => {
                    return first.ok_or(ParseError::NotWellFormed("an empty frame".into()))
                }
            }
        }
    };
    crate::base::xml::in_memory(parse)
        .unwrap_or_else(|| Err(ParseError::NotWellFormed("incomplete frame".into())))
}

/// End the WebSocket with a stream error (one the bridge itself found).
async fn fail(mut session: Session, err: StreamError) {
    let error = err.to_xml().replacen(
        "<stream:error>",
        &format!("<stream:error xmlns:stream='{}'>", ns::STREAM),
        1,
    );
    let _ = session.text(error).await;
    let _ = session.text(close_frame(None)).await;
    let _ = session.close(Some(CloseCode::Policy.into())).await;
}

fn close_frame(see_other_uri: Option<&str>) -> String {
    let mut c = Element::new("close", FRAMING_NS);
    if let Some(uri) = see_other_uri {
        c.set_attr("see-other-uri", uri);
    }
    c.to_xml("")
}

/// What the server writes, parsed and sent one element per frame.
async fn outbound(
    ctx: Arc<TransportCtx>,
    pipe: ReadHalf<DuplexStream>,
    mut session: Session,
    see_other: String,
    inbound: actix_web::rt::task::JoinHandle<()>,
) {
    let mut parser = http_bridge::server_output(pipe);
    let mut reason = None;
    loop {
        let frame = match parser.next().await {
            Ok(StreamEvent::Header(h)) => {
                let mut open = Element::new("open", FRAMING_NS);
                for key in ["from", "id", "version", "xml:lang"] {
                    if let Some(v) = h.attr(key) {
                        open.set_attr(key, v);
                    }
                }
                open.to_xml("")
            }
            Ok(StreamEvent::Stanza(el)) => {
                // A draining node's goodbye: go to another node (§3.6.1).
                if el.ns == ns::STREAM
                    && el.name == "error"
                    && el.get_child("system-shutdown", ns::STREAM_ERRORS).is_some()
                    && ctx.draining.load(Ordering::Acquire)
                {
                    let _ = session.text(close_frame(Some(&see_other))).await;
                    reason = Some(CloseReason::from(CloseCode::Restart));
                    break;
                }
                let frame = http_bridge::standalone(&el);
                // SASL success: the stream restarts with a new header.
                if http_bridge::restarts_stream(&el) {
                    parser.restart();
                }
                frame
            }
            Ok(StreamEvent::Keepalive) => continue,
            Ok(StreamEvent::End) => {
                let _ = session.text(close_frame(None)).await;
                reason = Some(CloseCode::Normal.into());
                break;
            }
            Err(ParseError::Closed) => break,
            Err(e) => {
                tracing::warn!(error = %e, "cannot frame what the server wrote");
                break;
            }
        };
        if session.text(frame).await.is_err() {
            break;
        }
    }
    let _ = session.close(reason).await;
    inbound.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_and_close_stand_for_the_stream_header_and_end() {
        let l = XmlLimits::default();
        let h = translate(
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.com' version='1.0'/>",
            l,
        )
        .unwrap();
        assert!(h.starts_with("<?xml version='1.0'?><stream:stream xmlns='jabber:client'"));
        assert!(h.contains(" to='example.com' version='1.0'>"));
        assert_eq!(
            translate("<close xmlns=\"urn:ietf:params:xml:ns:xmpp-framing\"/>", l).unwrap(),
            "</stream:stream>"
        );
        // A stanza keeps its namespace; whitespace frames carry nothing.
        assert_eq!(
            translate(
                "<message xmlns='jabber:client' to='a@b'><body>hi</body></message>",
                l
            )
            .unwrap(),
            "<message to='a@b'><body>hi</body></message>"
        );
        assert_eq!(translate("  \n", l).unwrap(), "");
    }

    #[test]
    fn a_frame_is_exactly_one_complete_element() {
        let l = XmlLimits::default();
        for bad in [
            "<message xmlns='jabber:client'>",
            "<a xmlns='x'/><b xmlns='x'/>",
            "</stream:stream><stream:stream>",
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing'",
            "text",
            "<x:y xmlns='jabber:client'/>",
        ] {
            assert!(translate(bad, l).is_err(), "{bad} accepted");
        }
        let too_big = format!(
            "<message xmlns='jabber:client'>{}</message>",
            "x".repeat(300_000)
        );
        assert!(translate(&too_big, l).is_err());
        assert!(translate("<bogus xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>", l).is_err());
    }

    #[test]
    fn stream_elements_go_out_with_their_prefix_bound() {
        let f = Element::new("features", ns::STREAM)
            .with_child(Element::new("bind", "urn:ietf:params:xml:ns:xmpp-bind"));
        assert_eq!(
            http_bridge::standalone(&f),
            "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
        );
        let m = Element::new("message", ns::CLIENT).with_attr("to", "a@b");
        assert_eq!(
            http_bridge::standalone(&m),
            "<message xmlns='jabber:client' to='a@b'/>"
        );
        assert_eq!(
            close_frame(Some("wss://x/xmpp-websocket")),
            "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing' see-other-uri='wss://x/xmpp-websocket'/>"
        );
    }
}
