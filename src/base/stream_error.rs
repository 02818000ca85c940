//! Stream errors (RFC 6120 §4.9): each condition of §4.9.3 as a variant.

use crate::base::xml::{ns, Element, ParseError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamCondition {
    BadFormat,
    BadNamespacePrefix,
    Conflict,
    ConnectionTimeout,
    HostGone,
    HostUnknown,
    ImproperAddressing,
    InternalServerError,
    InvalidFrom,
    InvalidNamespace,
    InvalidXml,
    NotAuthorized,
    NotWellFormed,
    PolicyViolation,
    RemoteConnectionFailed,
    Reset,
    ResourceConstraint,
    RestrictedXml,
    SeeOtherHost,
    SystemShutdown,
    UndefinedCondition,
    UnsupportedEncoding,
    UnsupportedFeature,
    UnsupportedStanzaType,
    UnsupportedVersion,
}

impl StreamCondition {
    pub fn name(self) -> &'static str {
        use StreamCondition::*;
        match self {
            BadFormat => "bad-format",
            BadNamespacePrefix => "bad-namespace-prefix",
            Conflict => "conflict",
            ConnectionTimeout => "connection-timeout",
            HostGone => "host-gone",
            HostUnknown => "host-unknown",
            ImproperAddressing => "improper-addressing",
            InternalServerError => "internal-server-error",
            InvalidFrom => "invalid-from",
            InvalidNamespace => "invalid-namespace",
            InvalidXml => "invalid-xml",
            NotAuthorized => "not-authorized",
            NotWellFormed => "not-well-formed",
            PolicyViolation => "policy-violation",
            RemoteConnectionFailed => "remote-connection-failed",
            Reset => "reset",
            ResourceConstraint => "resource-constraint",
            RestrictedXml => "restricted-xml",
            SeeOtherHost => "see-other-host",
            SystemShutdown => "system-shutdown",
            UndefinedCondition => "undefined-condition",
            UnsupportedEncoding => "unsupported-encoding",
            UnsupportedFeature => "unsupported-feature",
            UnsupportedStanzaType => "unsupported-stanza-type",
            UnsupportedVersion => "unsupported-version",
        }
    }
}

/// A stream error to send before closing: condition plus optional text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stream error {}{}", .condition.name(), .text.as_deref().map(|t| format!(": {t}")).unwrap_or_default())]
pub struct StreamError {
    pub condition: StreamCondition,
    pub text: Option<String>,
}

impl StreamError {
    pub fn new(condition: StreamCondition) -> Self {
        StreamError {
            condition,
            text: None,
        }
    }

    pub fn with_text(condition: StreamCondition, text: impl Into<String>) -> Self {
        StreamError {
            condition,
            text: Some(text.into()),
        }
    }

    /// `<stream:error>` as it goes on the wire (the `stream` prefix is bound
    /// by our header).
    pub fn to_xml(&self) -> String {
        crate::base::metrics::get()
            .stream_errors
            .get_or_create(&vec![("condition", self.condition.name())])
            .inc();
        let mut el = Element::new(self.condition.name(), ns::STREAM_ERRORS);
        let mut s = String::from("<stream:error>");
        el.write_to(&mut s, "");
        if let Some(text) = &self.text {
            el = Element::new("text", ns::STREAM_ERRORS).with_text(text.clone());
            el.write_to(&mut s, "");
        }
        s.push_str("</stream:error>");
        s
    }
}

impl From<&ParseError> for StreamError {
    fn from(e: &ParseError) -> Self {
        use StreamCondition::*;
        let cond = match e {
            ParseError::Closed | ParseError::Io(_) => UndefinedCondition,
            ParseError::NotWellFormed(_) => NotWellFormed,
            ParseError::RestrictedXml(_) => RestrictedXml,
            ParseError::TooLarge(_) => PolicyViolation,
            ParseError::TooComplex => PolicyViolation,
            ParseError::BadNamespacePrefix(_) => BadNamespacePrefix,
            ParseError::UnsupportedEncoding(_) => UnsupportedEncoding,
            ParseError::BadFormat(_) => BadFormat,
        };
        let text = match e {
            ParseError::TooLarge(_) => "stanza too large".to_string(),
            other => other.to_string(),
        };
        StreamError::with_text(cond, text)
    }
}
