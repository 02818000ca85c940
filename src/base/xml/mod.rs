//! XML for XMPP streams: an owned element tree and an incremental parser that
//! enforces RFC 6120 §11 restrictions and our size limits.

pub mod element;
pub mod parser;

pub use element::{Element, Node};
pub use parser::{ParseError, StreamEvent, StreamHeader, XmlLimits, XmlStream};

/// Namespaces used across the server.
pub mod ns {
    pub const STREAM: &str = "http://etherx.jabber.org/streams";
    pub const CLIENT: &str = "jabber:client";
    pub const SERVER: &str = "jabber:server";
    pub const COMPONENT: &str = "jabber:component:accept";
    pub const STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
    pub const STANZA_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
    pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
    pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
    pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
    pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
    pub const SASL_CB: &str = "urn:xmpp:sasl-cb:0";
    pub const PING: &str = "urn:xmpp:ping";
    pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
    pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
    pub const VERSION: &str = "jabber:iq:version";
    pub const REGISTER: &str = "jabber:iq:register";
    pub const REGISTER_FEATURE: &str = "http://jabber.org/features/iq-register";
    pub const XML: &str = "http://www.w3.org/XML/1998/namespace";
}

/// Parse one complete XML element from a string (stored vCards, private
/// XML). Runs the stream parser over the in-memory bytes to completion.
pub fn parse_fragment(xml: &str) -> Result<Element, ParseError> {
    use tokio::io::AsyncReadExt;
    // The stream's opening is read ahead of the fragment, not copied in
    // front of it (a relayed stanza is parsed here on every delivery).
    static OPENING: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "<stream:stream xmlns:stream='{}' xmlns='{}'>",
            ns::STREAM,
            ns::CLIENT
        )
    });
    let mut parser = XmlStream::new(
        OPENING.as_bytes().chain(xml.as_bytes()),
        XmlLimits {
            max_stanza_bytes: OPENING.len() + xml.len() + 1,
            ..XmlLimits::default()
        },
    );
    let fut = async {
        loop {
            match parser.next().await? {
                StreamEvent::Stanza(el) => return Ok(el),
                StreamEvent::End => return Err(ParseError::Closed),
                _ => continue,
            }
        }
    };
    in_memory(fut).unwrap_or(Err(ParseError::Closed))
}

/// Run a parse over bytes already in memory to its end: such a future
/// never waits on I/O, so one poll finishes it (`None` if it would wait).
pub fn in_memory<T>(fut: impl std::future::Future<Output = T>) -> Option<T> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::future::Future::poll(fut.as_mut(), &mut cx) {
        std::task::Poll::Ready(r) => Some(r),
        std::task::Poll::Pending => None,
    }
}

#[cfg(test)]
mod fragment_tests {
    #[test]
    fn round_trips() {
        let el =
            super::parse_fragment("<vCard xmlns='vcard-temp'><FN>A &amp; B</FN></vCard>").unwrap();
        assert_eq!(el.ns, "vcard-temp");
        assert_eq!(super::parse_fragment(&el.to_xml("")).unwrap(), el);
    }
}
