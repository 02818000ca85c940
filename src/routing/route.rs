//! Where a stanza goes in the cluster: sessions on this node are in the
//! local router; sessions on other nodes are found in the replicated
//! session table and reached by relaying the stanza over the mesh to the
//! node that holds them (design.md, "The flow of one message").

use jid::{BareJid, FullJid};
use serde::{Deserialize, Serialize};

use starling_cluster::{Incoming, Marker, Receipt, Returned};

use crate::base::xml::{ns, Element};
use crate::routing::context::RoutingCtx;
use crate::routing::router::{deliver, deliver_marked, deliver_owned, SessionEntry};

/// Work that finishes later (a boxed future), for the handles below.
pub type Later<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// What routing asks of the layers above it. The node hands it in at
/// start (`server::Wiring`), so routing names none of them.
pub trait Above: Send + Sync {
    /// Route a message again by bare JID, offline storage last; true
    /// once owned (`exclude`: a node given up on).
    fn store_or_route(
        &self,
        ctx: std::sync::Arc<RoutingCtx>,
        el: Element,
        to: FullJid,
        exclude: Option<u64>,
    ) -> Later<bool>;
    /// A presence probe relayed here: `contact`'s presence answers `from`
    /// (its resource `reply_to`, or the bare JID for a remote prober).
    fn answer_probe(
        &self,
        ctx: &RoutingCtx,
        from: BareJid,
        reply_to: Option<FullJid>,
        contact: &BareJid,
    );
    /// Take the resumable session (`previd`, `user`) from this node for
    /// node `to`: its state, if it was here.
    fn take_over(
        &self,
        ctx: &RoutingCtx,
        previd: &str,
        user: &str,
        to: u64,
    ) -> Later<Option<HandOff>>;
    /// Recreate a handed-over session on this node; true once it is bound.
    fn install_session(
        &self,
        ctx: std::sync::Arc<RoutingCtx>,
        state: HandOff,
        from: u64,
    ) -> Later<bool>;
}

/// Stanzas for other domains: remote servers, external components and
/// hosted services. The transports implement it (`s2s::Transports`) and
/// the node hands it in at start, so the IM layer never names a transport.
pub trait Elsewhere: Send + Sync {
    /// Send a stanza a local entity addressed to another domain.
    fn send(&self, ctx: &RoutingCtx, stanza: Element);
    /// A stanza relayed to this node for a component connected here; if
    /// it is not (any more), the sender gets an error naming it.
    fn to_component_here(&self, ctx: &RoutingCtx, stanza: &Element, domain: &str);
    /// A stanza for an entity of a hosted service (a group-chat room):
    /// relayed to this node as its owner (`hops` nodes so far), or given
    /// back by a dead node (0: served again, wherever the entity lives).
    fn to_hosted(&self, ctx: &RoutingCtx, stanza: Element, domain: &str, hops: u8);
    /// Answer a local sender with an error (never an error for an error).
    fn bounce_local(
        &self,
        ctx: &RoutingCtx,
        stanza: &Element,
        condition: crate::base::stanza_error::StanzaCondition,
    );
}

/// A session that can receive a stanza, wherever it is.
#[derive(Clone)]
pub struct Target {
    pub jid: String,
    pub node: u64,
    pub available: bool,
    pub priority: i8,
    /// Set when the session is on this node.
    pub local: Option<SessionEntry>,
}

impl Target {
    pub fn resource(&self) -> &str {
        self.jid.split_once('/').map(|(_, r)| r).unwrap_or_default()
    }
}

/// A per-session opt-in a delivery depends on (checked where the session is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Require {
    /// Roster pushes: the session asked for the roster.
    Roster,
    /// Blocklist pushes: the session asked for the blocklist.
    Blocklist,
    /// Carbon copies: the session enabled carbons.
    Carbons,
}

fn satisfied(e: &SessionEntry, require: Option<Require>) -> bool {
    match require {
        None => true,
        Some(Require::Roster) => e.interested,
        Some(Require::Blocklist) => e.blocklist_interested,
        Some(Require::Carbons) => e.carbons,
    }
}

/// What travels between nodes.
#[derive(Debug, Serialize, Deserialize)]
pub enum Relay {
    /// Deliver to the session `to` on the receiving node.
    Stanza {
        to: String,
        require: Option<Require>,
        xml: String,
        /// Forwards so far (a session moving between nodes); bounded.
        #[serde(default)]
        hops: u8,
        /// How many relay answers wait, one behind the other, for this
        /// one (0: sent for a local sender). It picks the lane, so a relay
        /// never queues behind a batch that waits for it (see `depth`).
        #[serde(default)]
        depth: u8,
    },
    /// RFC 6121 §4.3: `from` (with resource `reply_to`, or a remote
    /// server's user when empty) probes `contact`.
    Probe {
        from: String,
        reply_to: String,
        contact: String,
    },
    /// XEP-0198 across nodes: `user` resumes session `previd` on node
    /// `reply_to`; the holder hands its state over.
    HandOffRequest {
        previd: String,
        user: String,
        token: u64,
        reply_to: u64,
    },
    HandOffReply {
        token: u64,
        state: Option<HandOff>,
    },
    /// A draining node pushes a session here to wait for its resume.
    HandOffPush {
        state: HandOff,
        /// Answered with `HandOffPushed` once the session is bound here.
        token: u64,
    },
    HandOffPushed {
        token: u64,
        ok: bool,
    },
    /// Drain this node and stop it (`starling cluster drain --node`).
    Drain,
    /// The sender's per-address connection and login counts
    /// (`ip_limits.rs`), every second while it has any worth telling.
    IpCounts(crate::base::ip_limits::Report),
    /// `user`'s client tried to resume `session` here with `h`, and the
    /// session was nowhere (its node died): what that node was about to
    /// write is settled by it (`written_marks.rs`).
    ResumeFailed {
        user: String,
        session: String,
        h: u32,
    },
    /// A stanza for the external component `domain`, connected here.
    Component {
        domain: String,
        xml: String,
    },
    /// A stanza for an entity of the hosted service `domain` (a room)
    /// that this node owns.
    Hosted {
        domain: String,
        xml: String,
        /// Nodes it went through (an owner that moved meanwhile passes it
        /// on); bounded.
        #[serde(default)]
        hops: u8,
    },
}

/// A stream-management session's state, moving between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandOff {
    pub jid: String,
    pub sm_id: String,
    pub inbound: u32,
    pub outbound: u32,
    pub acked: u32,
    /// Sent and not acknowledged, oldest first (XML).
    pub unacked: Vec<String>,
    /// The last available presence the resource broadcast (XML).
    pub presence: Option<String>,
    pub priority: i8,
    pub interested: bool,
    pub blocklist_interested: bool,
    pub carbons: bool,
    /// The session record it leaves, `(node, sid)`: its new bind lands
    /// only in place of that one (see `Command::SessionBind`).
    #[serde(default)]
    pub holder: Option<(u64, u64)>,
}

/// The other nodes where `bare` has sessions (per the session table).
pub fn other_nodes_of(ctx: &RoutingCtx, bare: &str) -> Vec<u64> {
    let me = ctx.node_id();
    let mut nodes: Vec<u64> = ctx
        .state
        .sessions_of(bare)
        .iter()
        .map(|r| r.node)
        .filter(|n| *n != me)
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    nodes
}

/// All sessions of `bare`: this node's from the router, the others' from
/// the session table.
pub fn resources(ctx: &RoutingCtx, bare: &BareJid) -> Vec<Target> {
    resources_except(ctx, bare, &[])
}

/// [`resources`] but the sessions named in `skip` (full JIDs), which get
/// no target made for them: carbons skip the session a message came from
/// or went to, on every message.
pub fn resources_except(ctx: &RoutingCtx, bare: &BareJid, skip: &[&str]) -> Vec<Target> {
    let me = ctx.node_id();
    let skipped = |resource: &str| {
        skip.iter().any(|s| {
            s.strip_prefix(bare.as_str())
                .and_then(|r| r.strip_prefix('/'))
                == Some(resource)
        })
    };
    let mut out: Vec<Target> = ctx
        .router
        .resources(bare)
        .into_iter()
        .filter(|e| !skipped(&e.resource))
        .map(|e| Target {
            jid: format!("{bare}/{}", e.resource),
            node: me,
            available: e.available,
            priority: e.priority,
            local: Some(e),
        })
        .collect();
    for rec in ctx.state.sessions_of_shared(bare.as_str()).iter() {
        if rec.node != me
            && !skip.contains(&rec.jid.as_str())
            && !out.iter().any(|t| t.jid == rec.jid)
        {
            out.push(Target {
                jid: rec.jid.clone(),
                node: rec.node,
                available: rec.available,
                priority: rec.priority,
                local: None,
            });
        }
    }
    out
}

/// The session bound to `full`, here or elsewhere.
pub fn full(ctx: &RoutingCtx, full: &FullJid) -> Option<Target> {
    if let Some(e) = ctx.router.get_full(full) {
        return Some(Target {
            jid: full.to_string(),
            node: ctx.node_id(),
            available: e.available,
            priority: e.priority,
            local: Some(e),
        });
    }
    let rec = ctx.state.session(full.as_str());
    // Handed to another node moments ago (the table may not say so yet),
    // unless the table has named another node since: then the session
    // moved on again and the table is the newer word.
    let moved = ctx
        .moved
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(full.as_str())
        .copied();
    if let Some(m) = moved {
        let moved_on = rec
            .as_ref()
            .is_some_and(|r| r.node != ctx.node_id() && Some((r.node, r.sid)) != m.table_then);
        if m.at.elapsed() < std::time::Duration::from_secs(30)
            && m.node != ctx.node_id()
            && !moved_on
        {
            tracing::trace!(to = %full, node = m.node, "route via moved");
            return Some(Target {
                jid: full.to_string(),
                node: m.node,
                available: true,
                priority: 0,
                local: None,
            });
        }
    }
    let rec = rec?;
    tracing::trace!(to = %full, node = rec.node, sid = rec.sid, "route via table");
    (rec.node != ctx.node_id()).then_some(Target {
        jid: rec.jid,
        node: rec.node,
        available: rec.available,
        priority: rec.priority,
        local: None,
    })
}

/// Session `jid` was handed to `node`: stanzas for it follow it there
/// until the table says where it is.
pub fn note_moved(ctx: &RoutingCtx, jid: &str, node: u64) {
    let table_then = ctx.state.session(jid).map(|r| (r.node, r.sid));
    ctx.moved.lock().unwrap_or_else(|e| e.into_inner()).insert(
        jid.to_string(),
        crate::routing::context::Moved {
            node,
            at: std::time::Instant::now(),
            table_then,
        },
    );
}

/// Send `stanza` to one session.
pub fn send(ctx: &RoutingCtx, target: &Target, stanza: Element, require: Option<Require>) {
    send_owned(ctx, target, stanza, require, None)
}

/// Answer a receipt: the stanza is owned (true) or could not be (false).
pub fn answer(receipt: Option<Receipt>, owned: bool) {
    if let Some(r) = receipt {
        let _ = r.send(owned);
    }
}

/// [`send`], answering `receipt` once the session here owns the stanza
/// (written to its client's socket, or kept for a resume: see
/// [`crate::routing::router::SessionHandle::try_deliver`]), or the node holding the
/// session has taken it.
pub fn send_owned(
    ctx: &RoutingCtx,
    target: &Target,
    stanza: Element,
    require: Option<Require>,
    receipt: Option<Receipt>,
) {
    match &target.local {
        Some(e) => {
            if !satisfied(e, require) {
                return answer(receipt, true);
            }
            match (deliver_owned(e, stanza, receipt), FullJid::new(&target.jid)) {
                (Err((el, receipt)), Ok(to)) => redeliver(ctx, el, &to, receipt),
                (Err((_, receipt)), Err(_)) => answer(receipt, true),
                (Ok(()), _) => {}
            }
        }
        None => relay_owned(
            ctx,
            target.node,
            &Relay::Stanza {
                to: target.jid.clone(),
                require,
                xml: stanza.to_xml(ns::CLIENT),
                hops: 0,
                depth: depth(),
            },
            receipt,
        ),
    }
}

pub fn relay(ctx: &RoutingCtx, node: u64, msg: &Relay) {
    relay_owned(ctx, node, msg, None)
}

/// Queue `msg` for `node`; the relayer keeps it until that node owns it.
/// What cannot be queued is routed again at once.
fn relay_owned(ctx: &RoutingCtx, node: u64, msg: &Relay, receipt: Option<Receipt>) {
    let Ok(bytes) = serde_json::to_vec(msg) else {
        tracing::error!(node, "cannot encode a relay message; dropped");
        return answer(receipt, false);
    };
    // Hand-overs never wait behind a batch of stanzas (see `Lane`).
    let lane = match msg {
        Relay::HandOffRequest { .. }
        | Relay::HandOffReply { .. }
        | Relay::HandOffPush { .. }
        | Relay::HandOffPushed { .. }
        | Relay::ResumeFailed { .. }
        | Relay::Drain
        | Relay::IpCounts(_) => starling_cluster::Lane::Control,
        // Sent while an answer to another node waits for it: in the lane
        // of its depth, never behind a batch that waits for it.
        Relay::Stanza { depth, .. } if *depth > 0 => starling_cluster::Lane::Forward(*depth),
        Relay::Stanza { .. }
        | Relay::Probe { .. }
        | Relay::Component { .. }
        | Relay::Hosted { .. } => starling_cluster::Lane::Stanzas,
    };
    if let Err(back) = ctx.replicator.cluster().relay(node, lane, bytes, receipt) {
        tracing::warn!(
            node,
            "cannot queue a relay to node (unknown or queue full); routing it again"
        );
        match ctx.arc() {
            Some(c) => {
                ctx.replicator.runtime().spawn(reroute(c, back));
            }
            None => tracing::warn!(node, "server stopping: relay dropped"),
        }
    }
}

/// Route again what the relayer gave back: a message goes to where the
/// addressee is now (another node, another resource, or offline storage);
/// anything else is re-sent if its session is now elsewhere, else dropped
/// with a log line.
pub async fn reroute(ctx: std::sync::Arc<RoutingCtx>, back: Returned) {
    let _owning = ctx.replicator.owning();
    let Returned {
        node,
        payload,
        receipt,
        marks,
    } = back;
    let msg = match serde_json::from_slice::<Relay>(&payload) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(node, error = %e, "returned relay does not decode; dropped");
            return answer(receipt, false);
        }
    };
    if let Relay::Hosted { domain, xml, .. } = &msg {
        let Ok(el) = crate::base::xml::parse_fragment(xml) else {
            tracing::warn!(node, "returned hosted relay is not XML; dropped");
            return answer(receipt, true);
        };
        // Still that node's (its queue is full, or it is not known yet):
        // the sender is told to wait rather than sent round again.
        let entity = el
            .attr("to")
            .and_then(|t| jid::Jid::new(t).ok())
            .map(|j| j.to_bare().to_string());
        if entity.is_some_and(|e| ctx.state.hosted_owner(&e) == Some(node)) {
            tracing::info!(node, "hosted stanza refused: its owner cannot take it now");
            ctx.elsewhere.bounce_local(
                &ctx,
                &el,
                crate::base::stanza_error::StanzaCondition::ResourceConstraint,
            );
            return answer(receipt, true);
        }
        // The entity's node died with it queued: the entity lives on.
        ctx.elsewhere.to_hosted(&ctx, el, domain, 0);
        return answer(receipt, true);
    }
    let Relay::Stanza {
        to,
        require,
        xml,
        hops,
        depth: at,
    } = msg
    else {
        tracing::info!(node, "control message for a node given up on; dropped");
        return answer(receipt, true);
    };
    let (Ok(to), Ok(el)) = (FullJid::new(&to), crate::base::xml::parse_fragment(&xml)) else {
        tracing::warn!(node, "returned relay is not a stanza; dropped");
        return answer(receipt, false);
    };
    if !marks.is_empty() && el.name == "message" {
        // The node may have written it before it died: its client's
        // resume attempt says (written_marks.rs).
        let user = ctx.config.account_of(&to).unwrap_or_default();
        let user = user.as_str();
        // A stanza passed on from another node (depth > 0) owes that
        // node an answer within its relay deadline: no waiting then.
        let wait = match at {
            0 => crate::routing::written_marks::VERDICT_WAIT,
            _ => std::time::Duration::ZERO,
        };
        match ctx
            .resume_verdicts
            .reached_within(user, &marks, wait, &ctx.draining)
            .await
        {
            Some(true) => {
                tracing::info!(to = %to, node, "the client's resume says it has this message: not routed again");
                return answer(receipt, true);
            }
            Some(false) => {
                tracing::info!(to = %to, node, "the client's resume says this message never reached it; routing it again")
            }
            None => {
                tracing::warn!(to = %to, node, "written to a client that has not tried to resume; routing it again (it may arrive twice)")
            }
        }
    }
    // A hand-off record pointing at the node that just gave this back is
    // stale (the session moved on, or that node is gone): forget it, so
    // the routing table decides from here.
    {
        let mut moved = ctx.moved.lock().unwrap_or_else(|e| e.into_inner());
        if moved.get(to.as_str()).is_some_and(|m| m.node == node) {
            tracing::debug!(to = %to, node, "hand-off record for a node that gave the stanza back; forgotten");
            moved.remove(to.as_str());
        }
    }
    let usable = |t: &Target| t.node != node || t.local.is_some();
    let mut elsewhere = full(&ctx, &to).filter(usable);
    if elsewhere.is_none() && el.name == "message" {
        // Between a purge and the session's next bind the table may not
        // know it for a moment (a drain, a restart): look again, bounded.
        elsewhere = settle_location(&ctx, &to, Some(node)).await;
    }
    match elsewhere {
        Some(t) if hops < MAX_HOPS => match &t.local {
            Some(_) => DEPTH.sync_scope(at, || send_owned(&ctx, &t, el, require, receipt)),
            None => pass_on(&ctx, t.node, &to, require, xml, hops, at, receipt),
        },
        _ if el.name == "message" => {
            // The session is gone (or keeps moving): the bare JID decides,
            // offline storage last; only a commit counts as owned. What it
            // relays waits where this stanza did (its answer was given).
            let owned = DEPTH
                .scope(
                    at,
                    ctx.above
                        .store_or_route(ctx.clone(), el, to.clone(), Some(node)),
                )
                .await;
            if !owned {
                tracing::warn!(to = %to, node, "message could not be routed again or stored (no quorum?); dropped");
            }
            answer(receipt, owned);
        }
        _ => {
            tracing::info!(to = %to, node, stanza = %el.name, "stanza for a session that is gone; dropped");
            answer(receipt, true);
        }
    }
}

/// XEP-0198 §5: `user`'s client tried to resume `session` with `h` and
/// the session was nowhere (its node died). Every node hears of it: one
/// may hold a message that node was about to write (`written_marks.rs`).
pub fn resume_failed(ctx: &RoutingCtx, user: &str, session: &str, h: u32) {
    ctx.resume_verdicts.record(user, session, h);
    let msg = Relay::ResumeFailed {
        user: user.to_string(),
        session: session.to_string(),
        h,
    };
    for node in ctx.other_nodes() {
        relay(ctx, node, &msg);
    }
}

/// Forwards of one stanza between nodes before it is delivered by bare JID.
const MAX_HOPS: u8 = 3;

tokio::task_local! {
    /// The depth of relays sent from here: set while a relayed stanza is
    /// handled (its depth + 1: the answer to its sender waits for them),
    /// and while a returned one is routed again (its own depth).
    static DEPTH: u8;
}

/// Deeper than this, relays share the last lane (a chain this long of
/// stanzas each waiting on the next is not met in practice).
const MAX_DEPTH: u8 = 12;

/// The depth a relay sent now has (0 outside any relay's handling).
fn depth() -> u8 {
    DEPTH.try_with(|d| *d).unwrap_or(0)
}
/// A stanza relayed with more hops than this is final: the receiver
/// delivers it or routes it by bare JID, it does not look further.
const FINAL_HOPS: u8 = MAX_HOPS + 1;
/// How long a message waits for the table to say where its session is.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(1500);

/// Where `to` is, looking again for a moment while the session table does
/// not know (a session between two nodes, or this node just restarted and
/// catching up); `exclude` is a node given up on.
async fn settle_location(ctx: &RoutingCtx, to: &FullJid, exclude: Option<u64>) -> Option<Target> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        // A local session that has ended is no answer (it gave the stanza back).
        let live = |t: &Target| t.local.as_ref().is_none_or(|e| e.handle.connected());
        if let Some(t) = full(ctx, to)
            .filter(|t| Some(t.node) != exclude || t.local.is_some())
            .filter(live)
        {
            return Some(t);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The environment variable of the fault switch in [`serve_relays`] (not
/// `STARLING_*`: those are settings, and a node refuses unknown ones).
pub const HOLD_ANSWERS: &str = "FAULT_HOLD_RELAY_ANSWERS";

/// Route again everything the relayer gives back, until it stops.
pub async fn serve_returned(
    ctx: std::sync::Arc<RoutingCtx>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Returned>,
) {
    while let Some(back) = rx.recv().await {
        tokio::spawn(reroute(ctx.clone(), back));
    }
}

/// Handle what other nodes relay to us, until the stream ends.
pub async fn serve_relays(
    ctx: std::sync::Arc<RoutingCtx>,
    mut rx: tokio::sync::mpsc::Receiver<Incoming>,
) {
    // Fault switch for tests: relayed stanzas are delivered (and written)
    // but never answered, as if this node died right after writing them.
    let hold = std::env::var_os(HOLD_ANSWERS).is_some_and(|v| v == "1");
    let mut held: Vec<Receipt> = Vec::new();
    while let Some(Incoming {
        from,
        payload,
        receipt,
        mark,
        marks,
    }) = rx.recv().await
    {
        let msg = match serde_json::from_slice::<Relay>(&payload) {
            Ok(m) => m,
            Err(e) => {
                // Owned in the sense that nobody can do better with it.
                tracing::warn!(from, error = %e, "bad relay message; dropped");
                answer(Some(receipt), true);
                continue;
            }
        };
        // Everything but a stanza is answered at once; a stanza once a
        // session here has written it (`router::deliver_owned`), it is
        // buffered for an arriving session, passed on to the node holding
        // the session, or stored offline.
        let receipt = match msg {
            Relay::Stanza { .. } if hold && held.len() < 4096 => {
                held.push(receipt);
                None
            }
            Relay::Stanza { .. } => Some(receipt),
            _ => {
                answer(Some(receipt), true);
                None
            }
        };
        match msg {
            Relay::Stanza {
                to,
                require,
                xml,
                hops,
                depth,
            } => {
                // What it relays waits behind it: one lane deeper.
                let next = depth.saturating_add(1).min(MAX_DEPTH);
                if !marks.is_empty() && xml.starts_with("<message") {
                    // Sent again after this node restarted: its earlier
                    // life may have written it, and the client's resume
                    // attempt decides (written_marks.rs). Not waited for
                    // here (in order, within the sender's deadline): until
                    // it is heard of, the sender keeps the message, marks
                    // and all, and waits for it itself (`reroute`).
                    let user = jid::Jid::new(&to)
                        .ok()
                        .and_then(|j| ctx.config.account_of(&j))
                        .unwrap_or_default();
                    match ctx.resume_verdicts.reached(&user, &marks) {
                        Some(true) => {
                            tracing::info!(to = %to, from, "sent again after a restart; the client's resume says it has it: not delivered again");
                            answer(receipt, true);
                            continue;
                        }
                        Some(false) => {}
                        None => {
                            tracing::info!(to = %to, from, "sent again after a restart, perhaps written before it: back to its sender until the client's resume says");
                            answer(receipt, false);
                            continue;
                        }
                    }
                }
                DEPTH.sync_scope(next, || {
                    take_relayed_stanza(&ctx, from, to, require, xml, hops, receipt, mark)
                });
            }
            Relay::HandOffRequest {
                previd,
                user,
                token,
                reply_to,
            } => {
                let state = ctx.above.take_over(&ctx, &previd, &user, reply_to).await;
                relay(&ctx, reply_to, &Relay::HandOffReply { token, state });
            }
            Relay::HandOffPush { state, token } => {
                expect_arrival(&ctx, &state.jid);
                // Actors live on arbiters: create the session there, and
                // say whether it is bound (the pusher retries elsewhere).
                let c = ctx.clone();
                match ctx.arbiters.get().and_then(|a| a.first().cloned()) {
                    Some(arbiter) if !ctx.draining.load(std::sync::atomic::Ordering::Acquire) => {
                        arbiter.spawn(async move {
                            let ok = c.above.install_session(c.clone(), state, from).await;
                            relay(&c, from, &Relay::HandOffPushed { token, ok });
                        });
                    }
                    _ => {
                        tracing::warn!("cannot take a pushed session now");
                        relay(&ctx, from, &Relay::HandOffPushed { token, ok: false });
                    }
                }
            }
            Relay::HandOffPushed { token, ok } => {
                let waiter = ctx
                    .push_acks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&token);
                if let Some(w) = waiter {
                    let _ = w.send(ok);
                }
            }
            Relay::HandOffReply { token, state } => {
                if let Some(s) = &state {
                    expect_arrival(&ctx, &s.jid);
                }
                let waiter = ctx
                    .handoffs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&token);
                match (waiter, state) {
                    (Some(w), state) => {
                        if let Err(e) = w.try_send(state.map(|s| (s, from))) {
                            // The resume gave up a moment ago: keep the
                            // session here rather than lose it.
                            if let Some((s, from)) = e.into_inner() {
                                install_here(&ctx, s, from);
                            }
                        }
                    }
                    (None, Some(s)) => install_here(&ctx, s, from),
                    (None, None) => {}
                }
            }
            Relay::ResumeFailed { user, session, h } => {
                ctx.resume_verdicts.record(&user, &session, h);
            }
            Relay::Drain => {
                tracing::info!(from, "drain requested over the mesh");
                ctx.drain_requested.notify_one();
            }
            Relay::IpCounts(report) => {
                let now = crate::base::time::unix_now().as_millis() as u64;
                ctx.ip_limits.merge(from, report, now);
            }
            Relay::Component { domain, xml } => {
                if let Ok(el) = crate::base::xml::parse_fragment(&xml) {
                    ctx.elsewhere.to_component_here(&ctx, &el, &domain);
                }
            }
            Relay::Hosted { domain, xml, hops } => match crate::base::xml::parse_fragment(&xml) {
                Ok(el) => ctx.elsewhere.to_hosted(&ctx, el, &domain, hops.max(1)),
                Err(e) => {
                    tracing::warn!(from, error = %e, "relayed hosted stanza dropped: bad XML")
                }
            },
            Relay::Probe {
                from,
                reply_to,
                contact,
            } => {
                let (Ok(from), Ok(contact)) = (BareJid::new(&from), BareJid::new(&contact)) else {
                    continue;
                };
                // An empty reply_to: a remote server probed; answer its bare JID.
                let reply_to = FullJid::new(&reply_to).ok();
                ctx.above.answer_probe(&ctx, from, reply_to, &contact);
            }
        }
    }
}

/// Pass a stanza that followed its session on to `node`, one hop further.
#[allow(clippy::too_many_arguments)]
fn pass_on(
    ctx: &RoutingCtx,
    node: u64,
    to: &FullJid,
    require: Option<Require>,
    xml: String,
    hops: u8,
    depth: u8,
    receipt: Option<Receipt>,
) {
    let msg = Relay::Stanza {
        to: to.to_string(),
        require,
        xml,
        hops: hops + 1,
        depth,
    };
    relay_owned(ctx, node, &msg, receipt);
}

/// A stanza another node relayed (`from`, 0 for an admin tool): delivered
/// here, held for an arriving session, passed on, or refused. Runs inside
/// the [`DEPTH`] of what it relays.
#[allow(clippy::too_many_arguments)]
fn take_relayed_stanza(
    ctx: &std::sync::Arc<RoutingCtx>,
    from: u64,
    to: String,
    require: Option<Require>,
    xml: String,
    hops: u8,
    receipt: Option<Receipt>,
    mark: Option<Marker>,
) {
    let (Ok(to), Ok(el)) = (FullJid::new(&to), crate::base::xml::parse_fragment(&xml)) else {
        tracing::warn!(from, "relayed stanza does not parse; dropped");
        answer(receipt, true);
        return;
    };
    if let Some(e) = ctx.router.get_full(&to) {
        if !satisfied(&e, require) {
            return answer(receipt, true);
        }
        if let Err((el, receipt)) = deliver_marked(&e, el, receipt, mark) {
            redeliver(ctx, el, &to, receipt);
        }
    } else if let Some(buf) = ctx
        .arriving
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_mut(to.as_str())
    {
        // Handed to us and not bound yet: it waits a moment.
        buf.push((el, require));
        answer(receipt, true);
    } else if from != 0 && ctx.draining.load(std::sync::atomic::Ordering::Acquire) {
        // This node is leaving: it does not take on a message
        // it would have to pass on (a node that exits with a
        // message in flight cannot tell whether it arrived, and
        // the sender would send it again). Refused: the sender,
        // which keeps it, routes it itself.
        tracing::info!(to = %to, from, hops, "draining: a relayed stanza for a session not here goes back to its sender");
        answer(receipt, false);
    } else if hops >= FINAL_HOPS {
        redeliver_now(ctx, el, &to, receipt);
    } else if hops < MAX_HOPS {
        // The session moved on: follow it.
        let next = full(ctx, &to).filter(|t| t.local.is_none());
        // Handed to the sender from here: it is there, even if
        // the sender's table did not say so when it sent.
        let handed_to_sender = ctx
            .moved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(to.as_str())
            .is_some_and(|m| m.node == from);
        if let Some(t) = next
            .as_ref()
            .filter(|t| t.node == from && from != 0 && !handed_to_sender)
        {
            // Only the table (perhaps behind) says the sender:
            // not straight back (the sender would pass it on
            // again, here). The session is most likely on its
            // way here (a resume whose hand-over has not landed
            // yet): wait for it a moment.
            tracing::debug!(to = %to, from, node = t.node, hops, "relayed stanza would go back to its sender; settling here");
            redeliver_after(ctx, el, &to, receipt, Settle::Excluding(from), require);
        } else if let Some(t) = next {
            pass_on(ctx, t.node, &to, require, xml, hops, depth(), receipt);
        } else if from != 0 {
            // Not here, and no better idea where: refused, so
            // the sender (which keeps it) routes it again. The
            // batch's answer never waits on this one, so a
            // node dying now cannot leave its other, delivered
            // payloads to be sent twice.
            tracing::info!(to = %to, from, hops, "relayed stanza for a session that is not here; the sender routes it again");
            answer(receipt, false);
        } else {
            redeliver(ctx, el, &to, receipt);
        }
    } else if from != 0 {
        tracing::warn!(to = %to, from, "relayed stanza went round; the sender routes it again");
        answer(receipt, false);
    } else {
        redeliver(ctx, el, &to, receipt);
    }
}

/// Recreate a handed-over session on this node, on a worker arbiter (where
/// actors live), detached until its client resumes.
fn install_here(ctx: &std::sync::Arc<RoutingCtx>, state: HandOff, from: u64) {
    let c = ctx.clone();
    match ctx.arbiters.get().and_then(|a| a.first().cloned()) {
        Some(arbiter) => {
            arbiter.spawn(async move {
                let _ = c.above.install_session(c.clone(), state, from).await;
            });
        }
        None => tracing::warn!("no arbiter yet; dropping a handed-over session"),
    }
}

/// A session is on its way here: hold stanzas for it until it is bound.
fn expect_arrival(ctx: &RoutingCtx, jid: &str) {
    ctx.arriving
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(jid.to_string())
        .or_default();
}

/// The session `jid` is bound here now (`Some`), or will not be (`None`):
/// what waited for it is delivered, or goes through delivery anew.
pub fn arrived(ctx: &RoutingCtx, jid: &FullJid, entry: Option<SessionEntry>) {
    let waiting = ctx
        .arriving
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(jid.as_str())
        .unwrap_or_default();
    for (el, require) in waiting {
        match &entry {
            Some(e) => {
                if satisfied(e, require) {
                    if let Err(el) = deliver(e, el) {
                        redeliver(ctx, el, jid, None);
                    }
                }
            }
            None => redeliver(ctx, el, jid, None),
        }
    }
}

/// A stanza whose session could not be found: a message goes through
/// delivery to the bare JID again (another resource, or offline storage)
/// rather than vanish; anything else is dropped. Never waits here: the
/// offline commit is awaited on a task of its own.
fn redeliver(ctx: &RoutingCtx, el: Element, to: &FullJid, receipt: Option<Receipt>) {
    redeliver_after(ctx, el, to, receipt, Settle::Anywhere, None)
}

/// [`redeliver`] without looking again (a final relay).
fn redeliver_now(ctx: &RoutingCtx, el: Element, to: &FullJid, receipt: Option<Receipt>) {
    redeliver_after(ctx, el, to, receipt, Settle::No, None)
}

/// Whether [`redeliver_after`] first gives the session a moment to appear.
#[derive(Clone, Copy)]
enum Settle {
    No,
    Anywhere,
    /// Anywhere but on the given node (the sender, waiting for the
    /// answer), which gets it back (final) if it shows up nowhere else;
    /// any stanza, not only a message, waits for its session.
    Excluding(u64),
}

fn redeliver_after(
    ctx: &RoutingCtx,
    el: Element,
    to: &FullJid,
    receipt: Option<Receipt>,
    settle: Settle,
    require: Option<Require>,
) {
    let waits = el.name == "message" || matches!(settle, Settle::Excluding(_));
    if !waits {
        tracing::info!(to = %to, stanza = %el.name, "stanza for a session that is not here; dropped");
        return answer(receipt, true);
    }
    let Some(c) = ctx.arc() else {
        tracing::warn!(to = %to, stanza = %el.name, "server stopping: stanza dropped");
        return answer(receipt, false);
    };
    let to = to.clone();
    let owning = ctx.replicator.owning();
    // What it relays or stores keeps the depth of where it was called.
    let at = depth();
    ctx.replicator.runtime().spawn(DEPTH.scope(at, async move {
        let _owning = owning;
        // The session may be between nodes, or this node's replica behind:
        // give the table a moment before falling back to the bare JID.
        let found = match settle {
            Settle::No => None,
            Settle::Anywhere => settle_location(&c, &to, None).await,
            Settle::Excluding(node) => settle_location(&c, &to, Some(node)).await,
        };
        let remote = match found {
            Some(t) if t.local.is_some() => return send_owned(&c, &t, el, require, receipt),
            Some(t) => Some(t.node),
            // It did not come here: the table's word (the sender) stands,
            // and the sender delivers or stores it, not passes it on.
            None => match settle {
                Settle::Excluding(node) => Some(node),
                _ => None,
            },
        };
        if let Some(node) = remote {
            return relay_owned(
                &c,
                node,
                &Relay::Stanza {
                    to: to.to_string(),
                    require,
                    xml: el.to_xml(ns::CLIENT),
                    hops: FINAL_HOPS,
                    depth: at,
                },
                receipt,
            );
        }
        let owned = c
            .above
            .store_or_route(c.clone(), el, to.clone(), None)
            .await;
        if !owned {
            tracing::warn!(to = %to, "message could not be delivered or stored (no quorum?)");
        }
        answer(receipt, owned);
    }));
}
