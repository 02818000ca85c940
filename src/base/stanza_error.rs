//! Stanza errors (RFC 6120 §8.3): conditions with their default types.

use crate::base::xml::{ns, Element};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StanzaCondition {
    BadRequest,
    Conflict,
    FeatureNotImplemented,
    Forbidden,
    Gone,
    InternalServerError,
    ItemNotFound,
    JidMalformed,
    NotAcceptable,
    NotAllowed,
    NotAuthorized,
    PolicyViolation,
    RecipientUnavailable,
    Redirect,
    RegistrationRequired,
    RemoteServerNotFound,
    RemoteServerTimeout,
    ResourceConstraint,
    ServiceUnavailable,
    SubscriptionRequired,
    UndefinedCondition,
    UnexpectedRequest,
}

impl StanzaCondition {
    pub fn name(self) -> &'static str {
        use StanzaCondition::*;
        match self {
            BadRequest => "bad-request",
            Conflict => "conflict",
            FeatureNotImplemented => "feature-not-implemented",
            Forbidden => "forbidden",
            Gone => "gone",
            InternalServerError => "internal-server-error",
            ItemNotFound => "item-not-found",
            JidMalformed => "jid-malformed",
            NotAcceptable => "not-acceptable",
            NotAllowed => "not-allowed",
            NotAuthorized => "not-authorized",
            PolicyViolation => "policy-violation",
            RecipientUnavailable => "recipient-unavailable",
            Redirect => "redirect",
            RegistrationRequired => "registration-required",
            RemoteServerNotFound => "remote-server-not-found",
            RemoteServerTimeout => "remote-server-timeout",
            ResourceConstraint => "resource-constraint",
            ServiceUnavailable => "service-unavailable",
            SubscriptionRequired => "subscription-required",
            UndefinedCondition => "undefined-condition",
            UnexpectedRequest => "unexpected-request",
        }
    }

    /// The error type RFC 6120 §8.3.3 gives for each condition.
    pub fn default_type(self) -> &'static str {
        use StanzaCondition::*;
        match self {
            BadRequest | JidMalformed | NotAcceptable | PolicyViolation | UnexpectedRequest
            | Redirect | Gone => "modify",
            Conflict
            | FeatureNotImplemented
            | ItemNotFound
            | NotAllowed
            | ServiceUnavailable
            | RemoteServerNotFound
            | UndefinedCondition => "cancel",
            Forbidden | NotAuthorized | RegistrationRequired | SubscriptionRequired => "auth",
            InternalServerError | RecipientUnavailable | RemoteServerTimeout
            | ResourceConstraint => "wait",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stanza error {}", .condition.name())]
pub struct StanzaError {
    pub condition: StanzaCondition,
    pub text: Option<String>,
    /// An application-specific condition (RFC 6120 §8.3.2), such as
    /// XEP-0060's `<precondition-not-met/>`.
    pub app: Option<Box<Element>>,
}

impl StanzaError {
    pub fn new(condition: StanzaCondition) -> Self {
        StanzaError {
            condition,
            text: None,
            app: None,
        }
    }

    pub fn with_text(condition: StanzaCondition, text: impl Into<String>) -> Self {
        StanzaError {
            condition,
            text: Some(text.into()),
            app: None,
        }
    }

    /// This error with an application-specific condition element.
    pub fn with_app(mut self, app: Element) -> Self {
        self.app = Some(Box::new(app));
        self
    }

    fn element(&self) -> Element {
        let mut err = Element::new("error", ns::CLIENT)
            .with_attr("type", self.condition.default_type())
            .with_child(Element::new(self.condition.name(), ns::STANZA_ERRORS));
        if let Some(t) = &self.text {
            err.push_child(Element::new("text", ns::STANZA_ERRORS).with_text(t.clone()));
        }
        if let Some(app) = &self.app {
            err.push_child((**app).clone());
        }
        err
    }

    /// The error reply to `stanza` (RFC 6120 §8.3.1): same kind and id,
    /// addresses swapped, the original payload kept, an `<error/>` added.
    pub fn reply_to(&self, stanza: &Element) -> Element {
        let mut reply = Element::new(stanza.name.clone(), stanza.ns.clone());
        reply.set_attr("type", "error");
        if let Some(id) = stanza.attr("id") {
            reply.set_attr("id", id);
        }
        if let Some(from) = stanza.attr("from") {
            reply.set_attr("to", from);
        }
        if let Some(to) = stanza.attr("to") {
            reply.set_attr("from", to);
        }
        reply.children = stanza.children.clone();
        reply.push_child(self.element());
        crate::base::metrics::get()
            .stanza_errors
            .get_or_create(&vec![("condition", self.condition.name())])
            .inc();
        reply
    }
}

/// The defined condition of an error stanza (RFC 6120 §8.3.2), if any.
pub fn condition_of(stanza: &Element) -> Option<String> {
    stanza
        .elements()
        .find(|e| e.name == "error")?
        .elements()
        .find(|c| c.ns == crate::base::xml::ns::STANZA_ERRORS && c.name != "text")
        .map(|c| c.name.clone())
}

/// An error reply for a stanza the server could not process, unless it is
/// itself an error (RFC 6120 §8.3.1: never answer an error with an error)
/// or an iq result (§8.2.3: results and errors are never answered; RFC
/// 6121 §8.5.3.1: the server ignores one it cannot deliver).
pub fn bounce(stanza: &Element, condition: StanzaCondition) -> Option<Element> {
    match (stanza.name.as_str(), stanza.attr("type")) {
        (_, Some("error")) => None,
        ("iq", Some("result")) => {
            tracing::debug!(
                id = stanza.attr("id").unwrap_or(""),
                to = stanza.attr("to").unwrap_or(""),
                condition = condition.name(),
                "an iq result that could not be delivered is dropped (never answered with an error)"
            );
            None
        }
        _ => Some(StanzaError::new(condition).reply_to(stanza)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_iq_results_are_never_answered_with_an_error() {
        let el = |xml: &str| crate::base::xml::parse_fragment(xml).expect("parses");
        let c = StanzaCondition::ServiceUnavailable;
        assert!(bounce(&el("<iq type='result' id='1'/>"), c).is_none());
        assert!(bounce(&el("<iq type='error' id='1'/>"), c).is_none());
        assert!(bounce(&el("<message type='error'/>"), c).is_none());
        let e =
            bounce(&el("<iq type='get' id='2' from='a@x/r' to='b@x/r'/>"), c).expect("answered");
        assert_eq!(e.attr("type"), Some("error"));
        assert_eq!(condition_of(&e).as_deref(), Some("service-unavailable"));
        assert!(bounce(&el("<message from='a@x/r' to='b@x'/>"), c).is_some());
    }
}
