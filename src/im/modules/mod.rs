//! Server feature modules, one file per protocol feature. A module declares
//! the features it offers and the iqs it answers, keyed like Prosody's
//! events: (iq type, addressee, payload namespace). Service discovery is
//! built from these declarations, so it cannot advertise what is not here.

pub mod admin_commands;
pub mod archive;
pub mod avatar_conversion;
pub mod blocking;
pub mod bookmarks_compat;
pub mod caps;
pub mod carbons;
pub mod disco;
pub mod entity_time;
pub mod external_services;
pub mod hooks;
pub mod last;
pub mod mam;
pub mod pep;
pub mod ping;
pub mod private;
pub mod push;
pub mod register;
pub mod roster;
pub mod session;
pub mod subscription;
pub mod vcard;
pub mod version;

use std::collections::HashMap;
use std::sync::Arc;

use jid::FullJid;

use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::stream_error::StreamError;
use crate::base::xml::{ns, Element};
use crate::im::context::ImCtx;
use crate::im::delivery::Outcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IqKind {
    Get,
    Set,
}

/// Who an iq is addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Addressee {
    /// The server's domain.
    Host,
    /// The sender's own account (no 'to', or its bare JID).
    Account,
    /// Another local account's bare JID: the server answers on its behalf
    /// (RFC 6121 §8.5.3).
    OtherAccount,
}

/// One iq request as a module sees it.
pub struct IqRequest<'a> {
    pub server: &'a ImCtx,
    pub from: &'a FullJid,
    pub iq: &'a Element,
    pub payload: &'a Element,
    pub kind: IqKind,
    pub addressee: Addressee,
    /// The addressed account, for `OtherAccount`.
    pub target: Option<jid::BareJid>,
    /// The sending session (modules that set per-session flags use it).
    pub session_id: u64,
}

impl IqRequest<'_> {
    /// The sender's account key (see `Config::account_jid`).
    pub fn user(&self) -> String {
        self.server.config.account_of(self.from).unwrap_or_default()
    }
}

/// Work that finishes later, awaited by the session that asked for it.
pub use crate::routing::route::Later;

/// A module's answer: the result payload (or an error), and optionally an
/// instruction to end the sender's stream afterwards; or, for a module
/// that writes through the cluster, the answer to come once the write is
/// committed (no thread waits for it).
pub struct IqResponse {
    pub result: Result<Option<Element>, StanzaError>,
    /// Stanzas for the asking session, written before the result (the
    /// messages of an archive query, XEP-0313 §4.1).
    pub before: Vec<Element>,
    pub close: Option<StreamError>,
    pub later: Option<Later<IqResponse>>,
}

impl From<Result<Option<Element>, StanzaError>> for IqResponse {
    fn from(result: Result<Option<Element>, StanzaError>) -> Self {
        IqResponse {
            result,
            before: Vec::new(),
            close: None,
            later: None,
        }
    }
}

impl IqResponse {
    /// Answer once `f` is done.
    pub fn later(f: impl std::future::Future<Output = IqResponse> + Send + 'static) -> Self {
        IqResponse {
            result: Ok(None),
            before: Vec::new(),
            close: None,
            later: Some(Box::pin(f)),
        }
    }
}

/// Commit `cmd` through the cluster, then answer with `then` (run with the
/// server and what the command applied); a failed commit answers
/// `<internal-server-error/>` and logs `what`.
pub fn commit_then(
    ctx: &ImCtx,
    cmd: crate::model::state::Command,
    what: &'static str,
    then: impl FnOnce(&ImCtx, crate::model::state::Applied) -> IqResponse + Send + 'static,
) -> IqResponse {
    let Some(c) = ctx.arc() else {
        return Err(StanzaError::new(StanzaCondition::InternalServerError)).into();
    };
    IqResponse::later(async move {
        match c.replicator.commit_async(&cmd).await {
            Ok(applied) => then(&c, applied),
            Err(e) => {
                tracing::warn!(error = %e, "{what} failed");
                Err(StanzaError::with_text(
                    StanzaCondition::InternalServerError,
                    e.to_string(),
                ))
                .into()
            }
        }
    })
}

pub trait Module: Send + Sync {
    /// The module's name, for messages (its type name by default).
    fn name(&self) -> &'static str {
        let full = std::any::type_name::<Self>();
        full.rsplit("::").next().unwrap_or(full)
    }
    /// disco#info features this module provides on the server.
    fn features(&self, _server: &ImCtx) -> Vec<&'static str> {
        Vec::new()
    }
    /// disco#info features of each account's bare JID (XEP-0313 §7).
    fn account_features(&self, _server: &ImCtx) -> Vec<&'static str> {
        Vec::new()
    }
    /// The iqs this module answers.
    fn handles(&self) -> Vec<(IqKind, Addressee, &'static str)>;
    fn handle_iq(&self, req: &IqRequest) -> IqResponse;
}

type Key = (IqKind, Addressee, &'static str);

/// XEP-0160: offline storage has no iq of its own; this declares it.
struct OfflineFeature;

impl Module for OfflineFeature {
    fn features(&self, _: &ImCtx) -> Vec<&'static str> {
        vec!["msgoffline"]
    }
    fn handles(&self) -> Vec<(IqKind, Addressee, &'static str)> {
        Vec::new()
    }
    fn handle_iq(&self, _: &IqRequest) -> IqResponse {
        Err(StanzaError::new(StanzaCondition::ServiceUnavailable)).into()
    }
}

pub struct Modules {
    list: Vec<Arc<dyn Module>>,
    handlers: HashMap<Key, Arc<dyn Module>>,
    /// The message pipeline (`hooks.rs`).
    pub hooks: hooks::Hooks,
    /// Push notifications (XEP-0357), told of messages devices miss.
    pub push: Arc<push::Push>,
}

/// What stops the server at start: modules whose declarations collide.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    #[error(transparent)]
    DuplicateHandler(#[from] DuplicateHandler),
    #[error(transparent)]
    SamePlace(#[from] hooks::SamePlace),
}

/// Two modules declared the same iq key: which one answers would depend on
/// the order of the list, so the server refuses to start.
#[derive(Debug, thiserror::Error)]
#[error("iq {kind:?} to {addressee:?} with payload {ns} is declared by two modules ({first} and {second})")]
pub struct DuplicateHandler {
    pub kind: IqKind,
    pub addressee: Addressee,
    pub ns: &'static str,
    pub first: &'static str,
    pub second: &'static str,
}

impl Modules {
    pub fn new(
        list: Vec<Arc<dyn Module>>,
        message_hooks: Vec<Arc<dyn hooks::MessageHook>>,
    ) -> Result<Self, ModulesError> {
        let mut handlers: HashMap<Key, Arc<dyn Module>> = HashMap::new();
        for m in &list {
            for key in m.handles() {
                if let Some(first) = handlers.get(&key) {
                    return Err(ModulesError::DuplicateHandler(DuplicateHandler {
                        kind: key.0,
                        addressee: key.1,
                        ns: key.2,
                        first: first.name(),
                        second: m.name(),
                    }));
                }
                handlers.insert(key, m.clone());
            }
        }
        let hooks = hooks::Hooks::new(message_hooks)?;
        Ok(Modules {
            list,
            handlers,
            hooks,
            push: push::new(),
        })
    }

    /// The standard set for a single node.
    pub fn standard() -> Result<Self, ModulesError> {
        let blocking = Arc::new(blocking::Blocking);
        let carbons = Arc::new(carbons::Carbons);
        let archive = Arc::new(archive::Archive::default());
        let message_hooks: Vec<Arc<dyn hooks::MessageHook>> =
            vec![blocking.clone(), archive.clone(), carbons.clone()];
        let push = push::new();
        let mut modules = Modules::new(
            vec![
                Arc::new(disco::Disco),
                Arc::new(admin_commands::AdminCommands),
                Arc::new(ping::Ping),
                Arc::new(version::Version),
                Arc::new(register::Register),
                Arc::new(session::Session),
                Arc::new(roster::Roster),
                blocking,
                carbons,
                Arc::new(vcard::Vcard),
                Arc::new(private::Private),
                Arc::new(pep::Pep),
                Arc::new(last::LastActivity),
                Arc::new(entity_time::EntityTime),
                Arc::new(mam::Mam { archive }),
                Arc::new(OfflineFeature),
                Arc::new(external_services::ExternalServices),
                push.clone(),
            ],
            message_hooks,
        )?;
        modules.push = push;
        Ok(modules)
    }

    /// The features of an account's bare JID, for disco#info.
    pub fn account_features(&self, server: &ImCtx) -> Vec<&'static str> {
        let mut f: Vec<&'static str> = self
            .list
            .iter()
            .flat_map(|m| m.account_features(server))
            .collect();
        f.sort_unstable();
        f.dedup();
        f
    }

    /// All features the server offers, for disco#info.
    pub fn features(&self, server: &ImCtx) -> Vec<&'static str> {
        let mut f: Vec<&'static str> = self.list.iter().flat_map(|m| m.features(server)).collect();
        f.sort_unstable();
        f.dedup();
        f
    }
}

/// Answer an iq get/set addressed to the server or to the sender's account.
pub fn dispatch(
    ctx: &ImCtx,
    from: &FullJid,
    session_id: u64,
    iq: &Element,
    kind: IqKind,
    addressee: Addressee,
    target: Option<jid::BareJid>,
) -> Outcome {
    let Some(payload) = iq.elements().next() else {
        return Outcome {
            reply: Some(StanzaError::new(StanzaCondition::BadRequest).reply_to(iq)),
            ..Outcome::default()
        };
    };
    let Some(module) = ctx
        .modules
        .handlers
        .get(&(kind, addressee, payload.ns.as_str()))
    else {
        return Outcome {
            reply: Some(StanzaError::new(StanzaCondition::ServiceUnavailable).reply_to(iq)),
            ..Outcome::default()
        };
    };
    let req = IqRequest {
        server: ctx,
        from,
        iq,
        payload,
        kind,
        addressee,
        target,
        session_id,
    };
    outcome(iq, module.handle_iq(&req))
}

fn outcome(iq: &Element, resp: IqResponse) -> Outcome {
    if let Some(later) = resp.later {
        let iq = iq.clone();
        return Outcome {
            later: Some(Box::pin(async move { outcome(&iq, later.await) })),
            ..Outcome::default()
        };
    }
    let reply = match resp.result {
        Ok(payload) => result(iq, payload),
        Err(e) => e.reply_to(iq),
    };
    Outcome {
        before: resp.before,
        reply: Some(reply),
        close: resp.close,
        later: None,
    }
}

/// An iq result answering `iq`, addressed back to its sender.
pub fn result(iq: &Element, payload: Option<Element>) -> Element {
    let mut r = Element::new("iq", ns::CLIENT).with_attr("type", "result");
    if let Some(id) = iq.attr("id") {
        r.set_attr("id", id);
    }
    if let Some(from) = iq.attr("from") {
        r.set_attr("to", from);
    }
    if let Some(to) = iq.attr("to") {
        r.set_attr("from", to);
    }
    if let Some(p) = payload {
        r.push_child(p);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_set_has_one_handler_per_key() {
        assert!(Modules::standard().is_ok());
    }

    #[test]
    fn a_key_declared_twice_is_refused_with_both_names() {
        let err = Modules::new(vec![Arc::new(ping::Ping), Arc::new(ping::Ping)], Vec::new())
            .err()
            .expect("a duplicate must be refused");
        let text = err.to_string();
        assert!(text.contains(ns::PING), "{text}");
        assert!(text.contains("Ping and Ping"), "{text}");
    }

    #[test]
    fn two_hooks_in_one_place_are_refused() {
        let err = Modules::new(
            Vec::new(),
            vec![Arc::new(blocking::Blocking), Arc::new(blocking::Blocking)],
        )
        .err()
        .expect("the same place twice must be refused");
        assert!(err.to_string().contains("place 10"), "{err}");
    }
}
