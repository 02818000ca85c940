//! Stream headers (RFC 6120 §4.7): validate the client's, send ours.

use rand::distributions::Alphanumeric;
use rand::Rng;

use super::{NegError, Stream, StreamCondition, StreamError};
use crate::base::xml::{ns, StreamEvent};
use crate::transport::context::TransportCtx;

pub fn new_stream_id() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(16)
        .map(char::from)
        .collect()
}

pub fn response_header(domain: &str, id: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' id='{id}' from='{domain}' version='1.0' xml:lang='en'>",
        ns::CLIENT,
        ns::STREAM
    )
}

/// Read and check the initiating header, then answer with ours.
pub async fn open(ctx: &TransportCtx, s: &mut Stream) -> Result<(), NegError> {
    let header = match s.read().await? {
        StreamEvent::Header(h) => h,
        _ => return Err(StreamError::new(StreamCondition::NotWellFormed).into()),
    };
    s.stream_id = new_stream_id();
    // RFC 6120 §4.9.1.3: errors found while opening are still sent inside a stream.
    let check = || -> Result<(), StreamError> {
        if header.name != "stream" || header.ns != ns::STREAM {
            return Err(StreamError::with_text(
                StreamCondition::InvalidNamespace,
                "expected <stream:stream>",
            ));
        }
        if header.default_ns.as_deref() != Some(ns::CLIENT) {
            return Err(StreamError::with_text(
                StreamCondition::InvalidNamespace,
                "content namespace must be jabber:client",
            ));
        }
        // RFC 6120 §4.7.5: we speak 1.0; a missing version means pre-1.0.
        let major = header
            .attr("version")
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse::<u32>().ok());
        if major != Some(1) {
            return Err(StreamError::with_text(
                StreamCondition::UnsupportedVersion,
                "version 1.0 required",
            ));
        }
        match header.attr("to") {
            // A restart after authentication keeps the host it
            // authenticated at.
            Some(to)
                if to.eq_ignore_ascii_case(&ctx.config.domain)
                    && (s.authenticated.is_none() || !s.anonymous_host(ctx)) =>
            {
                Ok(())
            }
            // The anonymous host (XEP-0175).
            Some(to)
                if ctx
                    .config
                    .anonymous()
                    .is_some_and(|a| a.eq_ignore_ascii_case(to))
                    && (s.authenticated.is_none() || s.anonymous_host(ctx)) =>
            {
                Ok(())
            }
            Some(_) => Err(StreamError::with_text(
                StreamCondition::HostUnknown,
                "this server does not serve that domain",
            )),
            None => Err(StreamError::with_text(
                StreamCondition::HostUnknown,
                "the stream header has no 'to'",
            )),
        }
    };
    let result = check();
    if result.is_ok() {
        if let Some(to) = header.attr("to").filter(|_| s.authenticated.is_none()) {
            s.host = to.to_ascii_lowercase();
        }
    }
    s.send(&response_header(&s.host, &s.stream_id)).await?;
    s.header_sent = true;
    result.map_err(NegError::from)
}
