//! Incremental parser for the endless XMPP stream document (RFC 6120 §4, §11).
//!
//! quick-xml reads events from an async buffered reader; we build one
//! [`Element`] per top-level child of `<stream:stream>` and enforce what
//! quick-xml does not: a byte budget per stanza (so a 4 MiB text node is cut
//! off while it arrives, not after), a depth cap, an attribute cap, and the
//! RFC 6120 §11.1 bans on DTDs, comments, processing instructions and
//! entities beyond the predefined five.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use quick_xml::escape::{resolve_predefined_entity, EscapeError};
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::{NsReader, XmlVersion};
use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};

use super::element::{Element, Node};

/// Parser limits (RFC 6120 §13.12 asks servers to bound stanza size).
#[derive(Debug, Clone, Copy)]
pub struct XmlLimits {
    /// Maximum bytes of one stanza, including whitespace before it.
    pub max_stanza_bytes: usize,
    /// Maximum element nesting inside one stanza.
    pub max_depth: usize,
    /// Maximum attributes on one element.
    pub max_attributes: usize,
}

impl Default for XmlLimits {
    fn default() -> Self {
        XmlLimits {
            max_stanza_bytes: 256 * 1024,
            max_depth: 32,
            max_attributes: 32,
        }
    }
}

/// What the stream produced.
#[derive(Debug)]
pub enum StreamEvent {
    /// The opening `<stream:stream>` tag.
    Header(StreamHeader),
    /// A complete top-level element.
    Stanza(Element),
    /// Whitespace between stanzas (RFC 6120 §4.6.1 keepalive).
    Keepalive,
    /// `</stream:stream>`.
    End,
}

/// The stream's opening tag, resolved.
#[derive(Debug, Clone)]
pub struct StreamHeader {
    pub name: String,
    pub ns: String,
    /// The default namespace declared on the header (`xmlns`), if any.
    pub default_ns: Option<String>,
    pub attrs: Vec<(String, String)>,
    /// Attributes in other namespaces (namespace, local name, value), such
    /// as BOSH's `xmpp:restart` (XEP-0206).
    pub ns_attrs: Vec<(String, String, String)>,
}

impl StreamHeader {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The attribute `name` in namespace `ns`.
    pub fn ns_attr(&self, ns: &str, name: &str) -> Option<&str> {
        self.ns_attrs
            .iter()
            .find(|(n, k, _)| n == ns && k == name)
            .map(|(_, _, v)| v.as_str())
    }
}

/// Why the stream cannot go on; each maps to one RFC 6120 §4.9.3 condition.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("connection closed")]
    Closed,
    #[error("i/o error: {0}")]
    Io(io::Error),
    #[error("not well-formed: {0}")]
    NotWellFormed(String),
    #[error("restricted XML: {0}")]
    RestrictedXml(&'static str),
    #[error("stanza exceeds {0} bytes")]
    TooLarge(usize),
    #[error("element nesting or attribute count over the limit")]
    TooComplex,
    #[error("unbound namespace prefix {0}")]
    BadNamespacePrefix(String),
    #[error("unsupported encoding {0}")]
    UnsupportedEncoding(String),
    #[error("bad format: {0}")]
    BadFormat(&'static str),
}

/// Marker carried inside an io::Error when the byte budget runs out.
#[derive(Debug, thiserror::Error)]
#[error("stanza byte budget exceeded")]
struct BudgetExceeded;

/// Counts bytes consumed since the last reset and fails reads past the limit.
pub struct Budget<R> {
    inner: R,
    used: usize,
    limit: usize,
}

impl<R: AsyncBufRead + Unpin> AsyncRead for Budget<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.used += buf.filled().len() - before;
        res
    }
}

impl<R: AsyncBufRead + Unpin> AsyncBufRead for Budget<R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.used > this.limit {
            return Poll::Ready(Err(io::Error::other(BudgetExceeded)));
        }
        Pin::new(&mut this.inner).poll_fill_buf(cx)
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.used += amt;
        Pin::new(&mut this.inner).consume(amt);
    }
}

/// The stream parser. `R` is normally a `BufReader` over the socket.
pub struct XmlStream<R> {
    /// Always `Some` between calls; taken only inside [`XmlStream::restart`].
    reader: Option<NsReader<Budget<R>>>,
    buf: Vec<u8>,
    limits: XmlLimits,
    /// Elements under construction; the stream root is not on it.
    stack: Vec<Element>,
    header_seen: bool,
    pending_end: bool,
    /// Bytes the last complete event took (for rate limiting).
    last_event_bytes: usize,
}

impl<R: AsyncBufRead + Unpin> XmlStream<R> {
    pub fn new(inner: R, limits: XmlLimits) -> Self {
        let budget = Budget {
            inner,
            used: 0,
            limit: limits.max_stanza_bytes,
        };
        Self::with_budget(budget, limits)
    }

    fn with_budget(budget: Budget<R>, limits: XmlLimits) -> Self {
        let mut reader = NsReader::from_reader(budget);
        configure(&mut reader);
        XmlStream {
            reader: Some(reader),
            buf: Vec::new(),
            limits,
            stack: Vec::new(),
            header_seen: false,
            pending_end: false,
            last_event_bytes: 0,
        }
    }

    /// A stream restart (RFC 6120 §4.3.3): a new document on the same
    /// transport. Bytes already buffered are kept.
    pub fn restart(&mut self) {
        if let Some(reader) = self.reader.take() {
            let mut budget = reader.into_inner();
            budget.used = 0;
            *self = Self::with_budget(budget, self.limits);
        }
    }

    /// Give back the transport. Buffered, unparsed bytes are dropped with the
    /// buffer by the caller (RFC 6120 §5.4.3.3 wants exactly that after STARTTLS).
    pub fn into_inner(self) -> R {
        self.reader
            .expect("reader present outside restart")
            .into_inner()
            .inner
    }

    /// Resolves when there is something to parse (bytes, the end of the
    /// input, or an error), without starting a parse. A caller that waits
    /// here between stanzas keeps no parse state while the peer is quiet.
    /// The event buffer is given back when the wait begins, so it is not
    /// reallocated per stanza while bytes keep coming.
    pub async fn ready(&mut self) -> io::Result<()> {
        if self.pending_end {
            return Ok(());
        }
        let reader = self
            .reader
            .as_mut()
            .expect("reader present outside restart")
            .get_mut();
        let buf = &mut self.buf;
        std::future::poll_fn(|cx| match Pin::new(&mut *reader).poll_fill_buf(cx) {
            Poll::Pending => {
                if buf.capacity() > 0 {
                    *buf = Vec::new();
                }
                Poll::Pending
            }
            Poll::Ready(r) => Poll::Ready(r.map(|_| ())),
        })
        .await
    }

    /// Bytes the last returned event consumed.
    pub fn last_event_bytes(&self) -> usize {
        self.last_event_bytes
    }

    fn finish_event(&mut self) {
        let budget = self
            .reader
            .as_mut()
            .expect("reader present outside restart")
            .get_mut();
        self.last_event_bytes = budget.used;
        budget.used = 0;
    }

    /// Read until the next header, stanza, keepalive or stream end.
    pub async fn next(&mut self) -> Result<StreamEvent, ParseError> {
        if self.pending_end {
            self.pending_end = false;
            return Ok(StreamEvent::End);
        }
        loop {
            self.buf.clear();
            let reader = self
                .reader
                .as_mut()
                .expect("reader present outside restart");
            let event = reader
                .read_event_into_async(&mut self.buf)
                .await
                .map_err(map_xml_error)?;
            if !self.header_seen {
                if let Event::Start(start) | Event::Empty(start) = &event {
                    let empty = matches!(event, Event::Empty(_));
                    let header = header(reader, &self.limits, start)?;
                    self.header_seen = true;
                    self.pending_end = empty;
                    self.finish_event();
                    return Ok(StreamEvent::Header(header));
                }
            }
            let done = step(
                &mut self.stack,
                &self.limits,
                self.header_seen,
                reader,
                event,
            )?;
            if let Some(done) = done {
                self.finish_event();
                return Ok(done);
            }
        }
    }
}

/// One event inside the stream document, past its opening: the stanza
/// being built grows, or something complete comes out (a stanza, a
/// keepalive, the stream's end). Shared by the stream parser and
/// [`parse_fragment`].
fn step<X>(
    stack: &mut Vec<Element>,
    limits: &XmlLimits,
    header_seen: bool,
    reader: &NsReader<X>,
    event: Event<'_>,
) -> Result<Option<StreamEvent>, ParseError> {
    // Attach a finished element to its parent, or give it back when it is
    // a top-level stanza.
    fn close(stack: &mut [Element], el: Element) -> Option<StreamEvent> {
        match stack.last_mut() {
            Some(parent) => {
                parent.children.push(Node::Element(el));
                None
            }
            None => Some(StreamEvent::Stanza(el)),
        }
    }
    match event {
        Event::Decl(d) => {
            if header_seen {
                return Err(ParseError::RestrictedXml(
                    "XML declaration inside the stream",
                ));
            }
            if let Some(Ok(enc)) = d.encoding() {
                if !enc.eq_ignore_ascii_case("utf-8") {
                    return Err(ParseError::UnsupportedEncoding(enc.into_owned()));
                }
            }
            Ok(None)
        }
        Event::DocType(_) => Err(ParseError::RestrictedXml("DTD")),
        Event::Comment(_) => Err(ParseError::RestrictedXml("comment")),
        Event::PI(_) => Err(ParseError::RestrictedXml("processing instruction")),
        Event::Eof => Err(ParseError::Closed),
        Event::Start(start) => {
            let el = element(reader, limits, &start)?;
            if stack.len() >= limits.max_depth {
                return Err(ParseError::TooComplex);
            }
            stack.push(el);
            Ok(None)
        }
        Event::Empty(start) => {
            let el = element(reader, limits, &start)?;
            Ok(close(stack, el))
        }
        Event::End(_) => match stack.pop() {
            None => Ok(Some(StreamEvent::End)),
            Some(el) => Ok(close(stack, el)),
        },
        Event::Text(t) => {
            let text = t.xml10_content();
            xml_chars(&text)?;
            match stack.last_mut() {
                Some(parent) => push_text(parent, &text),
                None if text.chars().all(is_xml_space) => {
                    if header_seen {
                        return Ok(Some(StreamEvent::Keepalive));
                    }
                }
                None => return Err(ParseError::BadFormat("text outside stanzas")),
            }
            Ok(None)
        }
        Event::CData(c) => match stack.last_mut() {
            Some(parent) => {
                let text = c.xml10_content();
                xml_chars(&text)?;
                push_text(parent, &text);
                Ok(None)
            }
            None => Err(ParseError::BadFormat("CDATA outside stanzas")),
        },
        Event::GeneralRef(r) => {
            let Some(parent) = stack.last_mut() else {
                return Err(ParseError::BadFormat("entity outside stanzas"));
            };
            if r.is_char_ref() {
                match r.resolve_char_ref() {
                    Ok(Some(c)) if is_xml_char(c) => push_text(parent, c.encode_utf8(&mut [0; 4])),
                    _ => return Err(ParseError::NotWellFormed("bad character reference".into())),
                }
            } else {
                let name = r.xml10_content();
                match resolve_predefined_entity(&name) {
                    Some(s) => push_text(parent, s),
                    None => return Err(ParseError::RestrictedXml("undeclared entity")),
                }
            }
            Ok(None)
        }
    }
}

/// Parse the first complete element after the stream opening tag that
/// `doc` starts with (it binds the default namespace and prefixes), all in
/// memory: the same rules as the stream parser, without its reader. (The
/// stanza byte limit is the reader's; `doc` is already whole.)
pub(super) fn parse_fragment(doc: &str) -> Result<Element, ParseError> {
    let mut reader = NsReader::from_str(doc);
    configure(&mut reader);
    let limits = XmlLimits::default();
    let mut stack = Vec::new();
    let mut header_seen = false;
    loop {
        let event = reader.read_event().map_err(map_xml_error)?;
        if !header_seen {
            if let Event::Start(_) = event {
                header_seen = true;
                continue;
            }
            if let Event::Empty(_) = event {
                // An opening that closes itself: no element follows.
                return Err(ParseError::Closed);
            }
        }
        match step(&mut stack, &limits, header_seen, &reader, event)? {
            Some(StreamEvent::Stanza(el)) => return Ok(el),
            Some(StreamEvent::End) => return Err(ParseError::Closed),
            _ => {}
        }
    }
}

fn configure<X>(reader: &mut NsReader<X>) {
    let cfg = reader.config_mut();
    cfg.trim_text(false);
    cfg.expand_empty_elements = false;
    cfg.check_end_names = true;
}

fn resolve_ns<X>(reader: &NsReader<X>, start: &BytesStart) -> Result<String, ParseError> {
    let (res, _) = reader.resolver().resolve_element(start.name());
    match res {
        ResolveResult::Bound(ns) => Ok(ns.into_inner().to_string()),
        ResolveResult::Unbound => Ok(String::new()),
        ResolveResult::Unknown(p) => Err(ParseError::BadNamespacePrefix(p)),
    }
}

fn attributes<X>(
    reader: &NsReader<X>,
    limits: &XmlLimits,
    start: &BytesStart,
) -> Result<Vec<(String, String)>, ParseError> {
    let mut attrs = Vec::new();
    for attr in start.attributes() {
        let attr = attr.map_err(|e| ParseError::NotWellFormed(e.to_string()))?;
        let key = attr.key.into_inner();
        if key == "xmlns" || key.starts_with("xmlns:") {
            continue;
        }
        if attrs.len() >= limits.max_attributes {
            return Err(ParseError::TooComplex);
        }
        if let Some((prefix, _)) = key.split_once(':') {
            if prefix != "xml" {
                let (res, _) = reader.resolver().resolve_attribute(attr.key);
                if let ResolveResult::Unknown(p) = res {
                    return Err(ParseError::BadNamespacePrefix(p));
                }
                // Attributes in foreign namespaces are dropped: we could
                // not write their binding back out faithfully.
                continue;
            }
        }
        let value = attr
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(map_xml_error)?;
        xml_chars(&value)?;
        attrs.push((key.to_string(), value.into_owned()));
    }
    Ok(attrs)
}

fn element<X>(
    reader: &NsReader<X>,
    limits: &XmlLimits,
    start: &BytesStart,
) -> Result<Element, ParseError> {
    Ok(Element {
        name: start.local_name().into_inner().to_string(),
        ns: resolve_ns(reader, start)?,
        attrs: attributes(reader, limits, start)?,
        children: Vec::new(),
    })
}

fn header<X>(
    reader: &NsReader<X>,
    limits: &XmlLimits,
    start: &BytesStart,
) -> Result<StreamHeader, ParseError> {
    let mut default_ns = None;
    let mut ns_attrs = Vec::new();
    for attr in start.attributes().flatten() {
        let key = attr.key.into_inner();
        if key == "xmlns" {
            default_ns = Some(attr.value.to_string());
        }
        if key.starts_with("xmlns:") || key.starts_with("xml:") || !key.contains(':') {
            continue;
        }
        let (res, local) = reader.resolver().resolve_attribute(attr.key);
        if let ResolveResult::Bound(ns) = res {
            if ns_attrs.len() < limits.max_attributes {
                ns_attrs.push((
                    ns.into_inner().to_string(),
                    local.into_inner().to_string(),
                    attr.value.to_string(),
                ));
            }
        }
    }
    Ok(StreamHeader {
        name: start.local_name().into_inner().to_string(),
        ns: resolve_ns(reader, start)?,
        default_ns,
        attrs: attributes(reader, limits, start)?,
        ns_attrs,
    })
}

/// XML 1.0 §2.2 `Char`: what may appear in a document at all, literally or
/// as a character reference. `&#1;` or a raw control character would be
/// written back out unescaped and break the recipient's stream.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
}

fn xml_chars(text: &str) -> Result<(), ParseError> {
    // Bytes first: C0 controls are single bytes; U+FFFE/U+FFFF start EF BF.
    let suspicious = text
        .bytes()
        .any(|b| (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')) || b == 0xEF);
    if suspicious && !text.chars().all(is_xml_char) {
        return Err(ParseError::NotWellFormed(
            "character not allowed in XML (XML 1.0 section 2.2)".into(),
        ));
    }
    Ok(())
}

fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn push_text(parent: &mut Element, text: &str) {
    if let Some(Node::Text(t)) = parent.children.last_mut() {
        t.push_str(text);
    } else {
        parent.children.push(Node::Text(text.to_string()));
    }
}

fn map_xml_error(e: quick_xml::Error) -> ParseError {
    match e {
        quick_xml::Error::Io(io) => {
            if io.get_ref().is_some_and(|i| i.is::<BudgetExceeded>()) {
                ParseError::TooLarge(0)
            } else if io.kind() == io::ErrorKind::UnexpectedEof {
                ParseError::Closed
            } else {
                ParseError::Io(io::Error::new(io.kind(), io.to_string()))
            }
        }
        quick_xml::Error::Escape(EscapeError::UnrecognizedEntity(..)) => {
            ParseError::RestrictedXml("undeclared entity")
        }
        quick_xml::Error::Namespace(n) => ParseError::BadNamespacePrefix(n.to_string()),
        other => ParseError::NotWellFormed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse_all(input: &[u8]) -> Vec<Result<StreamEvent, ParseError>> {
        let mut p = XmlStream::new(input, XmlLimits::default());
        let mut out = Vec::new();
        loop {
            let ev = p.next().await;
            let stop = !matches!(
                ev,
                Ok(StreamEvent::Header(_))
                    | Ok(StreamEvent::Stanza(_))
                    | Ok(StreamEvent::Keepalive)
            );
            out.push(ev);
            if stop {
                return out;
            }
        }
    }

    const HDR: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

    #[tokio::test]
    async fn parses_header_and_stanzas() {
        let input = format!("{HDR}<message to='a@b'><body>hi &amp; &#x263A;</body></message> <iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq></stream:stream>");
        let evs = parse_all(input.as_bytes()).await;
        let Ok(StreamEvent::Header(h)) = &evs[0] else {
            panic!("{evs:?}")
        };
        assert_eq!(h.name, "stream");
        assert_eq!(h.ns, "http://etherx.jabber.org/streams");
        assert_eq!(h.default_ns.as_deref(), Some("jabber:client"));
        assert_eq!(h.attr("to"), Some("localhost"));
        let Ok(StreamEvent::Stanza(m)) = &evs[1] else {
            panic!()
        };
        assert!(m.is("message", "jabber:client"));
        assert_eq!(
            m.get_child("body", "jabber:client").unwrap().text(),
            "hi & \u{263A}"
        );
        assert!(matches!(evs[2], Ok(StreamEvent::Keepalive)));
        let Ok(StreamEvent::Stanza(iq)) = &evs[3] else {
            panic!()
        };
        assert!(iq.get_child("ping", "urn:xmpp:ping").is_some());
        assert!(matches!(evs[4], Ok(StreamEvent::End)));
    }

    #[tokio::test]
    async fn rejects_restricted_xml() {
        for bad in [
            "<!-- c --><message/>",
            "<?pi x?><message/>",
            "<message><body>&ent;</body></message>",
        ] {
            let input = format!("{HDR}{bad}");
            let evs = parse_all(input.as_bytes()).await;
            assert!(
                matches!(evs.last(), Some(Err(ParseError::RestrictedXml(_)))),
                "{bad}: {evs:?}"
            );
        }
        let evs = parse_all(b"<!DOCTYPE x [<!ENTITY a 'b'>]><stream:stream/>").await;
        assert!(
            matches!(evs.last(), Some(Err(ParseError::RestrictedXml("DTD")))),
            "{evs:?}"
        );
    }

    #[tokio::test]
    async fn cuts_off_oversized_stanza_while_reading() {
        let big = "x".repeat(300 * 1024);
        let input = format!("{HDR}<message><body>{big}</body></message>");
        let evs = parse_all(input.as_bytes()).await;
        assert!(
            matches!(evs.last(), Some(Err(ParseError::TooLarge(_)))),
            "{:?}",
            evs.last()
        );
    }

    /// Issue 13: `&#1;` and raw C0 controls were accepted and written back
    /// unescaped, breaking the recipient's stream or a federation link.
    #[tokio::test]
    async fn rejects_characters_outside_the_xml_char_production() {
        for bad in [
            "<message><body>a&#1;b</body></message>",
            "<message><body>a&#x1F;b</body></message>",
            "<message><body>a\u{1}b</body></message>",
            "<message><body>a\u{FFFE}b</body></message>",
            "<message to='a&#0;b'/>",
            "<message to='a\u{7}b'/>",
            "<message><body><![CDATA[a\u{2}b]]></body></message>",
        ] {
            let input = format!("{HDR}{bad}");
            let evs = parse_all(input.as_bytes()).await;
            assert!(
                matches!(evs.last(), Some(Err(ParseError::NotWellFormed(_)))),
                "{bad:?}: {evs:?}"
            );
        }
        // Tabs, newlines and the rest of Unicode are fine.
        let ok =
            format!("{HDR}<message><body>a\tb\nc\r&#9;\u{263A}\u{10000}&#xFFFD;</body></message>");
        let evs = parse_all(ok.as_bytes()).await;
        assert!(matches!(evs[1], Ok(StreamEvent::Stanza(_))), "{evs:?}");
    }

    #[tokio::test]
    async fn rejects_malformed_and_unbound_prefix() {
        let evs = parse_all(format!("{HDR}<message><body></message>").as_bytes()).await;
        assert!(
            matches!(evs.last(), Some(Err(ParseError::NotWellFormed(_)))),
            "{evs:?}"
        );
        let evs = parse_all(format!("{HDR}<foo:message/>").as_bytes()).await;
        assert!(
            matches!(evs.last(), Some(Err(ParseError::BadNamespacePrefix(_)))),
            "{evs:?}"
        );
    }

    #[tokio::test]
    async fn depth_is_capped() {
        let deep = "<a>".repeat(100);
        let evs = parse_all(format!("{HDR}<message>{deep}").as_bytes()).await;
        assert!(
            matches!(evs.last(), Some(Err(ParseError::TooComplex))),
            "{evs:?}"
        );
    }
}
