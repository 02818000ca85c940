//! Federation (RFC 6120 server-to-server): the cluster is one domain to
//! the rest of the XMPP network. Any node accepts inbound links and opens
//! its own outbound links; a stanza that arrives on node 2 for a user on
//! node 3 crosses the mesh like any other (route.rs).

pub mod dialback;
pub mod domain_limits;
pub mod hosted;
pub mod inbound;
pub mod outbound;
pub mod resolve;
pub mod stream;

use std::collections::HashMap;
use std::sync::Mutex;

use actix::Addr;
use jid::{BareJid, Jid};

use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::xml::{ns, Element};
use crate::routing::context::RoutingCtx;
use crate::transport::context::TransportCtx;

pub use outbound::OutboundLink;

/// What can go wrong on a server-to-server stream.
#[derive(Debug, thiserror::Error)]
pub enum S2sError {
    #[error("no address found for {0}")]
    NotFound(String),
    #[error("timed out")]
    Timeout,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("xml: {0}")]
    Xml(#[from] crate::base::xml::ParseError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("remote stream error: {0}")]
    Remote(String),
    #[error("dialback refused by {0}")]
    Refused(String),
}

impl S2sError {
    /// The stanza error a sender gets for stanzas that could not go out.
    pub fn condition(&self) -> StanzaCondition {
        match self {
            S2sError::Timeout => StanzaCondition::RemoteServerTimeout,
            _ => StanzaCondition::RemoteServerNotFound,
        }
    }
}

/// Federation state of this node.
pub struct S2s {
    /// TLS for inbound server streams (ALPN "xmpp-server", XEP-0368); asks
    /// peers for a certificate, for SASL EXTERNAL (RFC 6120 §6.4, XEP-0178).
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub secret: dialback::Secret,
    pub resolver: resolve::Resolver,
    /// TLS for outbound links: verifies the peer, presents our certificate.
    pub tls: tokio_rustls::TlsConnector,
    /// Whether peers' certificates are verified (SASL EXTERNAL needs it).
    pub verify: bool,
    /// One outbound link per (local domain, remote domain): a component's
    /// stanzas leave on a link authenticated as the component's domain.
    pub links: Mutex<HashMap<(String, String), Addr<OutboundLink>>>,
    /// Inbound links and stanza rates per remote domain.
    pub domain_limits: domain_limits::DomainLimits,
}

impl S2s {
    pub fn new(
        identity: &crate::base::tls::Identity,
        config: &crate::model::config::S2sSection,
        cluster_secret: &str,
    ) -> Result<S2s, crate::base::tls::TlsError> {
        let roots = stream::trust_roots(&config.ca_file)?;
        Ok(S2s {
            acceptor: stream::server_tls(identity, config.verify_certificates, roots.clone())?,
            secret: dialback::Secret::from_cluster_secret(cluster_secret),
            resolver: resolve::Resolver::new(),
            tls: stream::client_tls_with(Some(identity), config.verify_certificates, roots)?,
            verify: config.verify_certificates,
            links: Mutex::new(HashMap::new()),
            domain_limits: Default::default(),
        })
    }
}

/// Whether `domain` is served here: the cluster's domain, or a component
/// domain hosted cluster-wide (reachable over federation, XEP-0114 §1).
pub fn is_local_domain(ctx: &TransportCtx, domain: &str) -> bool {
    ctx.config.hosts_accounts(domain)
        || crate::transport::component::is_component(ctx, domain)
        || ctx.services.hosts(domain)
}

/// The local domain a stanza leaves from: a hosted component's own domain
/// (its links authenticate as that domain), else the cluster's domain.
fn sending_domain(ctx: &TransportCtx, stanza: &Element) -> String {
    stanza
        .attr("from")
        .and_then(|f| Jid::new(f).ok())
        .map(|j| j.domain().as_str().to_ascii_lowercase())
        .filter(|d| crate::transport::component::is_component(ctx, d) || ctx.services.hosts(d))
        .unwrap_or_else(|| ctx.config.domain.to_ascii_lowercase())
}

/// Send a stanza (from a local entity, `from` stamped) to a remote domain
/// over this node's outbound link for it, set up on first use.
pub fn send(ctx: &TransportCtx, stanza: Element) {
    let Some(domain) = stanza
        .attr("to")
        .and_then(|t| Jid::new(t).ok())
        .map(|j| j.domain().as_str().to_ascii_lowercase())
    else {
        return;
    };
    if ctx.services.hosts(&domain) {
        serve_hosted(ctx, &domain, stanza);
        return;
    }
    if crate::transport::component::is_component(ctx, &domain) {
        crate::transport::component::route(ctx, stanza, &domain);
        return;
    }
    // The anonymous host's temporary accounts stay on this server (as
    // Prosody's `disallow_s2s` for anonymous hosts): other servers cannot
    // hold them to account.
    let anonymous = stanza
        .attr("from")
        .and_then(|f| Jid::new(f).ok())
        .is_some_and(|j| {
            ctx.config
                .anonymous()
                .is_some_and(|a| a.eq_ignore_ascii_case(j.domain().as_str()))
        });
    if anonymous {
        tracing::info!(to = %domain, reason = "temporary account", "stanza to another server refused");
        bounce_local(ctx, &stanza, StanzaCondition::NotAllowed);
        return;
    }
    if ctx.config.s2s.listen.is_empty() {
        bounce_local(ctx, &stanza, StanzaCondition::RemoteServerNotFound);
        return;
    }
    let local = sending_domain(ctx, &stanza);
    let key = (local, domain);
    let mut links = ctx.s2s.links.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(addr) = links.get(&key).filter(|a| a.connected()) {
        addr.do_send(outbound::SendStanza(stanza));
        return;
    }
    let Some(arbiter) = ctx.arbiters.get().and_then(|a| a.first().cloned()) else {
        bounce_local(ctx, &stanza, StanzaCondition::RemoteServerNotFound);
        return;
    };
    let Some(me) = ctx.arc() else {
        return;
    };
    let link = OutboundLink::new(me, key.0.clone(), key.1.clone());
    let addr = actix::Actor::start_in_arbiter(&arbiter, |_| link);
    addr.do_send(outbound::SendStanza(stanza));
    links.insert(key, addr);
}

/// The transports that reach other domains, as the routing layer sees them.
/// The node sets the transports' context once it is made (it holds
/// routing's, which holds this: so weakly).
#[derive(Default)]
pub struct Transports {
    pub ctx: crate::transport::context::LateTransport,
}

impl Transports {
    fn ctx(&self, stanza: &Element) -> Option<std::sync::Arc<TransportCtx>> {
        let ctx = self.ctx.get();
        if ctx.is_none() {
            tracing::warn!(
                to = stanza.attr("to").unwrap_or_default(),
                "stanza dropped: the node is stopping (its transports are gone)"
            );
        }
        ctx
    }
}

impl crate::routing::route::Elsewhere for Transports {
    fn send(&self, _: &RoutingCtx, stanza: Element) {
        if let Some(ctx) = self.ctx(&stanza) {
            send(&ctx, stanza)
        }
    }

    fn to_component_here(&self, _: &RoutingCtx, stanza: &Element, domain: &str) {
        use crate::transport::component::Here;
        let Some(ctx) = self.ctx(stanza) else { return };
        match crate::transport::component::deliver_here(&ctx, stanza, domain) {
            Here::Delivered => {}
            Here::Full => crate::transport::component::bounce_busy(&ctx, stanza, domain),
            Here::No => crate::transport::component::bounce_away(&ctx, stanza, domain),
        }
    }

    fn to_hosted(&self, _: &RoutingCtx, stanza: Element, domain: &str, hops: u8) {
        let Some(ctx) = self.ctx(&stanza) else { return };
        if let Some(host) = hosted::host(&ctx) {
            ctx.services.serve(domain, stanza, &host, hops);
        }
    }

    fn bounce_local(&self, _: &RoutingCtx, stanza: &Element, condition: StanzaCondition) {
        if let Some(ctx) = self.ctx(stanza) {
            bounce_local(&ctx, stanza, condition)
        }
    }
}

/// A stanza for a hosted service domain (from a local user, a component
/// or a remote server): the service answers on this node, or on the node
/// that owns the entity it is for, and each answer goes where it is
/// addressed, like a component's stanzas.
fn serve_hosted(ctx: &TransportCtx, domain: &str, stanza: Element) {
    if let Some(host) = hosted::host(ctx) {
        ctx.services.serve(domain, stanza, &host, 0);
    }
}

/// A stanza from a hosted service's entity, to wherever it is addressed.
/// To a session of ours it goes straight to that session, whatever its
/// kind, so a room's stanzas to one occupant arrive in the order the room
/// sent them (XEP-0045 §7.2.3: presences, history, then the subject); a
/// session that is gone answers with an error (a room then drops the
/// occupant).
pub(crate) fn from_hosted(ctx: &TransportCtx, out: Element) {
    let to = out.attr("to").and_then(|t| Jid::new(t).ok());
    if let Some(full) = to
        .as_ref()
        .filter(|j| ctx.config.hosts_accounts(j.domain().as_str()))
        .and_then(|j| j.try_as_full().ok())
    {
        let blocked = match (ctx.config.account_of(full), out.attr("from")) {
            (Some(user), Some(from)) => crate::im::modules::blocking::blocks(ctx, &user, from),
            _ => false,
        };
        if blocked {
            tracing::info!(to = %full, "stanza from a hosted entity dropped: blocked");
            return;
        }
        match crate::routing::route::full(ctx, full) {
            Some(t) => crate::routing::route::send(ctx, &t, out, None),
            None if out.name == "presence" => {
                tracing::debug!(to = %full, "presence from a hosted entity dropped: session gone")
            }
            None => bounce_local(ctx, &out, StanzaCondition::ServiceUnavailable),
        }
        return;
    }
    let local = out
        .attr("to")
        .and_then(|t| Jid::new(t).ok())
        .is_some_and(|j| is_local_domain(ctx, j.domain().as_str()));
    if local {
        deliver_local(ctx, out);
    } else {
        send(ctx, out);
    }
}

/// Send `stanza` back to a local sender as an error, if it may have one
/// (RFC 6120 §8.3.1: never an error for an error).
pub fn bounce_local(ctx: &TransportCtx, stanza: &Element, condition: StanzaCondition) {
    if let Some(err) = crate::base::stanza_error::bounce(stanza, condition) {
        deliver_local(ctx, err);
    }
}

/// Deliver a stanza addressed to a local entity from a remote one (its
/// origin already checked), or an error made here for a local sender.
pub fn deliver_local(ctx: &TransportCtx, el: Element) {
    let Some(to) = el.attr("to").and_then(|t| Jid::new(t).ok()) else {
        return;
    };
    let Some(from) = el.attr("from").and_then(|f| Jid::new(f).ok()) else {
        return;
    };
    if !is_local_domain(ctx, to.domain().as_str()) {
        return;
    }
    if ctx.services.hosts(to.domain().as_str()) {
        let domain = to.domain().as_str().to_ascii_lowercase();
        serve_hosted(ctx, &domain, el);
        return;
    }
    if crate::transport::component::is_component(ctx, to.domain().as_str()) {
        let domain = to.domain().as_str().to_ascii_lowercase();
        crate::transport::component::route(ctx, el, &domain);
        return;
    }
    // (Errors pass: those made here for a temporary account's own
    // stanzas come this way.)
    if !is_local_domain(ctx, from.domain().as_str())
        && el.attr("type") != Some("error")
        && ctx
            .config
            .anonymous()
            .is_some_and(|a| a.eq_ignore_ascii_case(to.domain().as_str()))
    {
        // Temporary accounts stay on this server, both ways (see `send`).
        tracing::info!(%to, %from, reason = "temporary account", "stanza from another server refused");
        return reply_remote_error(ctx, &el, StanzaCondition::NotAllowed);
    }
    let recipient = ctx.config.account_of(&to);
    let blocked = recipient
        .as_deref()
        .is_some_and(|r| crate::im::modules::blocking::blocks(ctx, r, from.as_str()));
    match el.name.as_str() {
        "message" => {
            if blocked {
                return;
            }
            if let Some(err) = crate::im::delivery::message(ctx, el, to) {
                reply_remote(ctx, err);
            }
        }
        "presence" => {
            let ptype = el.attr("type").unwrap_or("available").to_string();
            if let Some(kind) = crate::im::modules::subscription::SubKind::parse(&ptype) {
                // Roster writes are awaited on a task, never here; one at a
                // time, in arrival order (each reads what the last wrote).
                if let Some(c) = ctx.arc() {
                    let (from, to) = (from.to_bare(), to.to_bare());
                    in_order(
                        ctx,
                        Box::pin(async move {
                            crate::im::presence::subscription_inbound(&c, el, kind, &from, &to)
                                .await;
                        }),
                    );
                }
            } else if ptype == "probe" {
                // RFC 6121 §4.3.2: answered from the user's presence, on
                // whichever nodes the user is online.
                let bare = to.to_bare();
                if let Some(a) = ctx.presence.get(&bare) {
                    a.do_send(crate::im::presence::SendCurrent {
                        to: from.to_bare(),
                        resource: None,
                        check_subscription: true,
                    });
                }
                for node in crate::routing::route::other_nodes_of(ctx, bare.as_str()) {
                    crate::routing::route::relay(
                        ctx,
                        node,
                        &crate::routing::route::Relay::Probe {
                            from: from.to_bare().to_string(),
                            reply_to: String::new(),
                            contact: bare.to_string(),
                        },
                    );
                }
            } else {
                crate::im::presence::deliver_presence(ctx, el, &to);
            }
        }
        "iq" => iq(ctx, el, &to, blocked),
        _ => {}
    }
}

fn iq(ctx: &TransportCtx, el: Element, to: &Jid, blocked: bool) {
    let request = matches!(el.attr("type"), Some("get") | Some("set"));
    if let Ok(full) = to.try_as_full() {
        match crate::routing::route::full(ctx, full).filter(|_| !blocked) {
            Some(t) => crate::routing::route::send(ctx, &t, el, None),
            None if request => reply_remote_error(ctx, &el, StanzaCondition::ServiceUnavailable),
            None => {}
        }
        return;
    }
    if !request {
        // An app server's answer to a push notification (XEP-0357).
        ctx.modules.push.answered(ctx, &el);
        return;
    }
    // A request to a local account's bare JID from a remote user (its
    // vCard, its PEP nodes, disco): answered by the modules as for a
    // local user of another account (RFC 6121 §8.5.1).
    let from = el.attr("from").and_then(|f| jid::FullJid::new(f).ok());
    if let (Some(user), Some(from), false) = (ctx.config.account_of(to), from, blocked) {
        if !ctx.state.account_exists(&user) || el.elements().count() != 1 {
            return reply_remote_error(ctx, &el, StanzaCondition::ServiceUnavailable);
        }
        let kind = match el.attr("type") {
            Some("set") => crate::im::modules::IqKind::Set,
            _ => crate::im::modules::IqKind::Get,
        };
        let out = crate::im::modules::dispatch(
            ctx,
            &from,
            0,
            &el,
            kind,
            crate::im::modules::Addressee::OtherAccount,
            Some(to.to_bare()),
        );
        return answer_remote(ctx, out);
    }
    // XEP-0199: the server answers pings; other requests to the server
    // from a remote entity are not offered yet.
    let ping = el.elements().any(|c| c.is("ping", "urn:xmpp:ping"));
    if ping && to.node().is_none() {
        let mut r = Element::new("iq", ns::CLIENT).with_attr("type", "result");
        if let Some(id) = el.attr("id") {
            r.set_attr("id", id);
        }
        r.set_attr("from", to.to_string());
        if let Some(f) = el.attr("from") {
            r.set_attr("to", f);
        }
        reply_remote(ctx, r);
    } else {
        reply_remote_error(ctx, &el, StanzaCondition::ServiceUnavailable);
    }
}

/// Send a module's answer (now, or once its write is committed) back to
/// the remote requester.
fn answer_remote(ctx: &TransportCtx, out: crate::im::delivery::Outcome) {
    if let Some(reply) = out.reply {
        reply_remote(ctx, reply);
    }
    if let (Some(later), Some(c)) = (out.later, ctx.arc()) {
        ctx.replicator.runtime().spawn(async move {
            let out = later.await;
            answer_remote(&c, out);
        });
    }
}

fn reply_remote_error(ctx: &TransportCtx, el: &Element, condition: StanzaCondition) {
    let mut err = StanzaError::new(condition).reply_to(el);
    if let Some(to) = el.attr("to") {
        err.set_attr("from", to);
    }
    reply_remote(ctx, err);
}

/// A reply to a remote entity (an error, a result).
fn reply_remote(ctx: &TransportCtx, el: Element) {
    let remote = el
        .attr("to")
        .and_then(|t| Jid::new(t).ok())
        .is_some_and(|j| !is_local_domain(ctx, j.domain().as_str()));
    if remote {
        send(ctx, el);
    } else {
        deliver_local(ctx, el);
    }
}

/// A remote bare JID, if `jid` is one.
pub fn remote_bare(ctx: &TransportCtx, jid: &str) -> Option<BareJid> {
    BareJid::new(jid)
        .ok()
        .filter(|j| !is_local_domain(ctx, j.domain().as_str()))
}

/// Rewrite stanza namespaces between streams: `jabber:client` inside the
/// server, `jabber:server` on the wire between servers.
pub fn retag(el: &mut Element, from_ns: &str, to_ns: &str) {
    if el.ns == from_ns {
        el.ns = to_ns.to_string();
    }
    for child in el.children.iter_mut() {
        if let crate::base::xml::Node::Element(c) = child {
            retag(c, from_ns, to_ns);
        }
    }
}

/// Run `work` after all work queued before it, on the Raft runtime (remote
/// subscription changes: each reads the roster the previous one wrote).
fn in_order(ctx: &TransportCtx, work: crate::im::modules::Later<()>) {
    static QUEUE: std::sync::OnceLock<
        tokio::sync::mpsc::UnboundedSender<crate::im::modules::Later<()>>,
    > = std::sync::OnceLock::new();
    let tx = QUEUE.get_or_init(|| {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<crate::im::modules::Later<()>>();
        ctx.replicator.runtime().spawn(async move {
            while let Some(w) = rx.recv().await {
                w.await;
            }
        });
        tx
    });
    if tx.send(work).is_err() {
        tracing::warn!("subscription queue stopped; remote subscription change dropped");
    }
}
