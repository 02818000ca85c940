//! A small owned XML element tree for stanzas, with a serializer.
//!
//! Namespaces are resolved at parse time: `ns` is the element's namespace
//! name, and the writer emits `xmlns` only where it differs from the parent's.

use std::fmt::Write as _;

/// A child of an element: another element or character data (unescaped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

/// One XML element with its resolved namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// Local name, without prefix.
    pub name: String,
    /// Namespace name ("" when unbound).
    pub ns: String,
    /// Attributes as (qualified name, unescaped value); `xmlns` declarations
    /// are not kept here.
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
}

impl Element {
    pub fn new(name: impl Into<String>, ns: impl Into<String>) -> Self {
        Element {
            name: name.into(),
            ns: ns.into(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// True when this element has the given local name and namespace.
    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn set_attr(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((name.to_string(), value)),
        }
    }

    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let pos = self.attrs.iter().position(|(k, _)| k == name)?;
        Some(self.attrs.remove(pos).1)
    }

    /// Builder form of [`Element::set_attr`].
    pub fn with_attr(mut self, name: &str, value: impl Into<String>) -> Self {
        self.set_attr(name, value);
        self
    }

    pub fn with_child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.children.push(Node::Text(text.into()));
        self
    }

    pub fn push_child(&mut self, child: Element) {
        self.children.push(Node::Element(child));
    }

    /// Child elements, skipping text.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    pub fn get_child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.elements().find(|e| e.is(name, ns))
    }

    /// Concatenated direct text content.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                s.push_str(t);
            }
        }
        s
    }

    /// Serialize; `parent_ns` is the namespace in scope (for stanzas on a
    /// client stream, `jabber:client`), so `xmlns` is written only when needed.
    pub fn write_to(&self, out: &mut String, parent_ns: &str) {
        // RFC 6120 §4.8.5: stream-namespace elements (features, error) go
        // with the `stream` prefix our stream headers bind; peers such as
        // ejabberd match the prefixed name.
        let prefixed = self.ns == super::ns::STREAM;
        out.push('<');
        if prefixed {
            out.push_str("stream:");
        }
        out.push_str(&self.name);
        if self.ns != parent_ns && !prefixed {
            out.push_str(" xmlns='");
            escape_into(out, &self.ns);
            out.push('\'');
        }
        for (k, v) in &self.attrs {
            let _ = write!(out, " {k}='");
            escape_into(out, v);
            out.push('\'');
        }
        if self.children.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        for child in &self.children {
            match child {
                Node::Element(e) => e.write_to(out, &self.ns),
                Node::Text(t) => escape_into(out, t),
            }
        }
        out.push_str("</");
        if prefixed {
            out.push_str("stream:");
        }
        out.push_str(&self.name);
        out.push('>');
    }

    /// Serialize as a top-level element of a stream whose default namespace is `stream_ns`.
    pub fn to_xml(&self, stream_ns: &str) -> String {
        let mut s = String::with_capacity(128);
        self.write_to(&mut s, stream_ns);
        s
    }
}

/// `s` escaped for text or an attribute value.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(&mut out, s);
    out
}

/// Escape text or an attribute value (single-quoted) for XML output.
pub fn escape_into(out: &mut String, s: &str) {
    let mut last = 0;
    for (i, b) in s.bytes().enumerate() {
        let rep = match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'\'' => "&apos;",
            b'"' => "&quot;",
            _ => continue,
        };
        out.push_str(&s[last..i]);
        out.push_str(rep);
        last = i + 1;
    }
    out.push_str(&s[last..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_elements_carry_the_stream_prefix() {
        let f = Element::new("features", crate::base::xml::ns::STREAM)
            .with_child(Element::new("bind", "urn:ietf:params:xml:ns:xmpp-bind"));
        assert_eq!(
            f.to_xml("jabber:client"),
            "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
        );
        assert_eq!(
            Element::new("features", crate::base::xml::ns::STREAM).to_xml("jabber:server"),
            "<stream:features/>"
        );
    }

    #[test]
    fn writes_namespaces_only_where_they_change() {
        let el = Element::new("iq", "jabber:client")
            .with_attr("type", "get")
            .with_attr("id", "a'<")
            .with_child(Element::new("ping", "urn:xmpp:ping"));
        assert_eq!(
            el.to_xml("jabber:client"),
            "<iq type='get' id='a&apos;&lt;'><ping xmlns='urn:xmpp:ping'/></iq>"
        );
    }

    #[test]
    fn escapes_text() {
        let el = Element::new("body", "jabber:client").with_text("a & b < c");
        assert_eq!(el.to_xml("jabber:client"), "<body>a &amp; b &lt; c</body>");
    }
}
