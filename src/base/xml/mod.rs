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

/// Parse one complete XML element from a string (relayed stanzas, stored
/// vCards, private XML), inside a stream opening that binds `jabber:client`
/// as the default namespace and the `stream` prefix; no async reader: a
/// relayed stanza is parsed here on every delivery (copying it behind the
/// opening costs far less than running the stream parser over it did).
pub fn parse_fragment(xml: &str) -> Result<Element, ParseError> {
    static OPENING: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "<stream:stream xmlns:stream='{}' xmlns='{}'>",
            ns::STREAM,
            ns::CLIENT
        )
    });
    let mut doc = String::with_capacity(OPENING.len() + xml.len());
    doc.push_str(&OPENING);
    doc.push_str(xml);
    parser::parse_fragment(&doc)
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

    /// A relayed stanza reads as the stream parser would read it: the
    /// default namespace is jabber:client, `stream:` is bound, and the
    /// RFC 6120 §11.1 bans hold.
    #[test]
    fn a_fragment_reads_as_inside_a_client_stream() {
        use super::{ns, parse_fragment, ParseError};
        let el = parse_fragment(
            "<message to='a@b/c' type='chat'><body>x &lt; y &#x263A;</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' id='1'/><stream:error/></message>",
        )
        .unwrap();
        assert_eq!((el.name.as_str(), el.ns.as_str()), ("message", ns::CLIENT));
        assert_eq!(el.attr("to"), Some("a@b/c"));
        let kids: Vec<_> = el
            .elements()
            .map(|e| (e.name.clone(), e.ns.clone()))
            .collect();
        assert_eq!(
            kids,
            [
                ("body".to_string(), ns::CLIENT.to_string()),
                ("stanza-id".to_string(), "urn:xmpp:sid:0".to_string()),
                ("error".to_string(), ns::STREAM.to_string()),
            ]
        );
        assert_eq!(el.elements().next().unwrap().text(), "x < y \u{263A}");
        // What is past the first element is not read.
        assert_eq!(parse_fragment("<a/><b>").unwrap().name, "a");
        for (bad, what) in [
            ("<a><!-- c --></a>", "comment"),
            ("<a><?pi x?></a>", "processing instruction"),
            ("<a>&foo;</a>", "undeclared entity"),
            ("<a><x:b/></a>", "unbound prefix"),
            ("<a>&#1;</a>", "control character"),
            ("<a>", "cut short"),
            ("", "empty"),
            ("</stream:stream>", "the stream's end"),
        ] {
            assert!(parse_fragment(bad).is_err(), "{what} accepted");
        }
        assert!(matches!(parse_fragment("<a>"), Err(ParseError::Closed)));
        let deep = "<a>".repeat(40) + &"</a>".repeat(40);
        assert!(matches!(parse_fragment(&deep), Err(ParseError::TooComplex)));
    }
}
