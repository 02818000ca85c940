//! Presence (RFC 6121 §3, §4). One `UserPresence` actor per online user
//! holds each resource's last presence and its directed-presence targets; it
//! broadcasts to subscribers, probes contacts at initial presence, answers
//! probes, sends unavailable at logout, and hands over offline messages and
//! pending subscription requests when a resource becomes available.
//!
//! Subscription stanzas run through the state machine in
//! `modules::subscription`: outbound on the sender's roster item, then
//! inbound on the contact's.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use jid::{BareJid, FullJid, Jid};

use crate::base::stanza_error::bounce;
use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::xml::{ns, Element};
use crate::im::context::ImCtx;
use crate::im::modules::roster;
use crate::im::modules::subscription::{self, SubKind};
use crate::model::state::{Command, RosterItem};
use crate::routing::router::{deliver, SessionEntry};

/// Which user actors run on this node.
#[derive(Default)]
pub struct PresenceRegistry {
    map: Mutex<HashMap<BareJid, Addr<UserPresence>>>,
    /// Offline messages this node queued for a commit not yet applied, by
    /// username (see [`PresenceRegistry::offline_pending`]).
    offline_in_flight: Arc<Mutex<HashMap<String, u32>>>,
    /// Who may queue offline messages for a user now (see
    /// [`PresenceRegistry::offline_order`]).
    order: OfflineOrder,
}

/// Locks, by a hash of the username, that keep offline messages for one
/// user in the order their sender sent them: a session that ends gives
/// back what its client never acknowledged under the lock, so a newer
/// message to the same user (routed once the session is unbound) is queued
/// after them, not between them.
struct OfflineOrder {
    stripes: Vec<Mutex<()>>,
}

impl Default for OfflineOrder {
    fn default() -> Self {
        OfflineOrder {
            stripes: (0..64).map(|_| Mutex::new(())).collect(),
        }
    }
}

thread_local! {
    /// The stripes of [`OfflineOrder`] this thread holds (a give-back that
    /// queues offline messages takes the lock it already has).
    static HELD: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Held while offline messages for a user are queued in order.
pub struct OrderGuard<'a> {
    guard: Option<std::sync::MutexGuard<'a, ()>>,
    stripe: usize,
}

impl Drop for OrderGuard<'_> {
    fn drop(&mut self) {
        if self.guard.is_some() {
            HELD.with(|h| h.borrow_mut().retain(|s| *s != self.stripe));
        }
    }
}

/// Held while an offline message's commit is on its way; dropping it
/// (applied, refused or failed) ends the wait.
pub struct OfflineInFlight {
    user: String,
    counts: Arc<Mutex<HashMap<String, u32>>>,
}

impl Drop for OfflineInFlight {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

impl PresenceRegistry {
    /// Hold the order of offline messages for `user`: while the guard
    /// lives, only this thread queues them (re-entrant on this thread).
    pub fn offline_order(&self, user: &str) -> OrderGuard<'_> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        user.hash(&mut h);
        let stripe = (h.finish() % self.order.stripes.len() as u64) as usize;
        if HELD.with(|held| held.borrow().contains(&stripe)) {
            return OrderGuard {
                guard: None,
                stripe,
            };
        }
        let guard = self.order.stripes[stripe]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        HELD.with(|held| held.borrow_mut().push(stripe));
        OrderGuard {
            guard: Some(guard),
            stripe,
        }
    }

    /// An offline message for `user` is being committed.
    pub fn offline_queued(&self, user: &str) -> OfflineInFlight {
        let mut counts = self
            .offline_in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *counts.entry(user.to_string()).or_insert(0) += 1;
        OfflineInFlight {
            user: user.to_string(),
            counts: self.offline_in_flight.clone(),
        }
    }

    /// XEP-0160 keeps offline messages in order: while `user` has messages
    /// stored (or queued here and not yet stored), a newer one must not
    /// overtake them live. It is stored too, and the flush that follows
    /// its commit delivers all of them in the order they were stored.
    pub fn offline_pending(&self, ctx: &ImCtx, user: &str) -> bool {
        let queued = self
            .offline_in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(user);
        queued || ctx.state.has_offline(user)
    }

    /// The user's actor, started if it is not running.
    pub fn get_or_start(&self, ctx: &Arc<ImCtx>, bare: &BareJid) -> Addr<UserPresence> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = map.get(bare).filter(|a| a.connected()) {
            return a.clone();
        }
        let addr = UserPresence {
            bare: bare.clone(),
            ctx: ctx.clone(),
            resources: Resources::default(),
            delivered_offline: HashSet::new(),
        }
        .start();
        map.insert(bare.clone(), addr.clone());
        addr
    }

    pub fn get(&self, bare: &BareJid) -> Option<Addr<UserPresence>> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(bare).filter(|a| a.connected()).cloned()
    }

    /// Forget the actor once the user has no session left. Checked under the
    /// registry lock, so a session binding at the same time gets a live actor.
    fn retire_if_idle(&self, ctx: &ImCtx, bare: &BareJid) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if ctx.router.resources(bare).is_empty() {
            map.remove(bare);
            true
        } else {
            false
        }
    }
}

struct Resource {
    session_id: u64,
    /// The last available presence it sent, if it is available.
    last: Option<Element>,
    /// Entities it sent directed available presence to (RFC 6121 §4.6).
    directed: HashSet<String>,
}

pub struct UserPresence {
    bare: BareJid,
    ctx: Arc<ImCtx>,
    resources: Resources,
    /// Offline messages delivered from here whose drop is not applied yet
    /// (their keys): never delivered twice by this node.
    delivered_offline: HashSet<u64>,
}

/// A user's resources on this node: nearly always one or two, so a small
/// vector (one allocation, sized to fit) rather than a hash map.
#[derive(Default)]
struct Resources(Vec<(String, Resource)>);

impl Resources {
    fn get(&self, name: &str) -> Option<&Resource> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, r)| r)
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut Resource> {
        self.0.iter_mut().find(|(n, _)| n == name).map(|(_, r)| r)
    }

    fn get_or_insert_with(
        &mut self,
        name: String,
        new: impl FnOnce() -> Resource,
    ) -> &mut Resource {
        match self.0.iter().position(|(n, _)| *n == name) {
            Some(i) => &mut self.0[i].1,
            None => {
                self.insert(name, new());
                let last = self.0.len() - 1;
                &mut self.0[last].1
            }
        }
    }

    fn insert(&mut self, name: String, r: Resource) {
        if let Some(slot) = self.get_mut(&name) {
            *slot = r;
            return;
        }
        self.0.reserve_exact(1);
        self.0.push((name, r));
    }

    fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| n != name);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
    }

    fn values(&self) -> impl Iterator<Item = &Resource> {
        self.0.iter().map(|(_, r)| r)
    }
}

impl Actor for UserPresence {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
    }
}

/// A presence stanza a resource sent with no 'to' (broadcast).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Broadcast {
    pub from: FullJid,
    pub session_id: u64,
    pub stanza: Element,
}

/// Messages wait offline while a resource here should have them
/// (replication.rs decides which node): deliver them to the best one.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FlushOffline;

impl Handler<FlushOffline> for UserPresence {
    type Result = ();

    fn handle(&mut self, _: FlushOffline, _: &mut Context<Self>) {
        let best = self
            .ctx
            .router
            .resources(&self.bare)
            .into_iter()
            .filter(|e| e.available && e.priority >= 0)
            .max_by_key(|e| e.priority);
        if let Some(e) = best {
            self.flush_offline(&e);
        }
    }
}

/// Say again, to contacts and the user's other resources, each available
/// resource's last presence (after this node's sessions were purged by
/// mistake and registered again: contacts were told they left).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Rebroadcast;

impl Handler<Rebroadcast> for UserPresence {
    type Result = ();

    fn handle(&mut self, _: Rebroadcast, _: &mut Context<Self>) {
        let last: Vec<Element> = self
            .resources
            .values()
            .filter_map(|r| r.last.clone())
            .collect();
        for p in last {
            self.broadcast(&p, None);
        }
    }
}

/// A resource sent directed presence to `to`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Directed {
    pub resource: String,
    pub to: String,
    pub available: bool,
    /// Available presence to a local user: delivered here once tracked
    /// (or refused past the cap).
    pub deliver: Option<Element>,
}

/// Entities one resource may send directed presence to (RFC 6121 §4.6)
/// and be tracked for its later unavailable presence.
pub const MAX_DIRECTED: usize = 1000;

/// A session ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Gone {
    pub from: FullJid,
    pub session_id: u64,
}

/// A session moved to another node: forget the resource without telling
/// anyone it left (it did not).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Moved {
    pub from: FullJid,
    pub session_id: u64,
}

/// A session arrived from another node with its last presence: record it
/// without broadcasting (contacts already have it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Restore {
    pub from: FullJid,
    pub session_id: u64,
    pub last: Option<Element>,
    pub priority: i8,
}

/// Send the current presence of each available resource to `to`
/// (a probe answer, or after approving a subscription).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendCurrent {
    pub to: BareJid,
    /// Deliver to this resource of `to` only (a local probe's answer).
    pub resource: Option<FullJid>,
    /// Only if `to` is subscribed to this user (probes).
    pub check_subscription: bool,
}

/// Send unavailable from each available resource to `to`
/// (the subscription ended, or `to` was blocked).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendUnavailable {
    pub to: BareJid,
}

impl UserPresence {
    fn user(&self) -> String {
        self.ctx.config.account_of(&self.bare).unwrap_or_default()
    }

    fn roster(&self) -> Vec<RosterItem> {
        self.ctx.state.roster(&self.user()).unwrap_or_default()
    }

    /// Presence from `from` to the user's own available resources and to
    /// every contact with a 'from' subscription (not blocked).
    fn broadcast(&self, stanza: &Element, extra: impl IntoIterator<Item = String>) {
        let user = self.user();
        for t in crate::routing::route::resources(&self.ctx, &self.bare) {
            if t.available {
                crate::routing::route::send(&self.ctx, &t, stanza.clone(), None);
            }
        }
        let mut sent = HashSet::new();
        for item in self.roster().into_iter().filter(|i| i.sub.from) {
            if self.ctx.state.is_blocked(&user, &item.jid) {
                continue;
            }
            if let Ok(to) = Jid::new(&item.jid) {
                let mut p = stanza.clone();
                p.set_attr("to", item.jid.clone());
                deliver_presence(&self.ctx, p, &to);
                sent.insert(item.jid);
            }
        }
        for target in extra {
            if sent.contains(&target) {
                continue;
            }
            if let Ok(to) = Jid::new(&target) {
                let mut p = stanza.clone();
                p.set_attr("to", target);
                deliver_presence(&self.ctx, p, &to);
            }
        }
    }

    fn went_unavailable(&mut self, from: &FullJid, status: Option<Element>) {
        let Some(res) = self.resources.get_mut(from.resource().as_str()) else {
            return;
        };
        if res.last.take().is_none() {
            return;
        }
        let directed: Vec<String> = res.directed.drain().collect();
        let mut p = status.unwrap_or_else(|| Element::new("presence", ns::CLIENT));
        p.set_attr("type", "unavailable");
        p.set_attr("from", from.to_string());
        p.remove_attr("to");
        self.broadcast(&p, directed);
    }

    /// RFC 6121 §4.2: initial presence. Probe contacts we are subscribed
    /// to and deliver offline messages (pending subscription requests
    /// follow once the availability is applied: `DeliverPending`).
    fn initial(&mut self, from: &FullJid, priority: i8) {
        for item in self.roster().into_iter().filter(|i| i.sub.to) {
            let Ok(contact) = BareJid::new(&item.jid) else {
                continue;
            };
            if !self.ctx.config.hosts_accounts(contact.domain().as_str()) {
                // RFC 6121 §4.3.1: the contact's server answers the probe.
                let probe = Element::new("presence", ns::CLIENT)
                    .with_attr("type", "probe")
                    .with_attr("from", self.bare.to_string())
                    .with_attr("to", contact.to_string());
                self.ctx.elsewhere.send(&self.ctx, probe);
                continue;
            }
            if let Some(addr) = self.ctx.presence.get(&contact) {
                addr.do_send(SendCurrent {
                    to: self.bare.clone(),
                    resource: Some(from.clone()),
                    check_subscription: true,
                });
            }
            // The contact's resources on other nodes answer from there.
            for node in crate::routing::route::other_nodes_of(&self.ctx, contact.as_str()) {
                crate::routing::route::relay(
                    &self.ctx,
                    node,
                    &crate::routing::route::Relay::Probe {
                        from: self.bare.to_string(),
                        reply_to: from.to_string(),
                        contact: contact.to_string(),
                    },
                );
            }
        }
        let Some(me) = self.ctx.router.get_full(from) else {
            return;
        };
        // XEP-0160: offline messages go to the first resource with non-negative priority.
        if priority >= 0 {
            self.flush_offline(&me);
        }
    }

    /// Deliver what waits offline to `to` (a local session), then drop it
    /// from the store by key (committed in the background: the actor never
    /// waits on the cluster). Keys delivered and not yet dropped are
    /// skipped, so a second flush never repeats a message.
    fn flush_offline(&mut self, to: &SessionEntry) {
        let user = self.user();
        let stored = match self.ctx.state.offline_keyed(&user) {
            Ok(s) => s,
            Err(e) => return tracing::error!(error = %e, "cannot read offline messages"),
        };
        // What the store no longer has was dropped: forget it.
        self.delivered_offline
            .retain(|k| stored.iter().any(|(s, _)| s == k));
        let mut keys = Vec::new();
        for (key, xml) in stored {
            if !self.delivered_offline.insert(key) {
                continue;
            }
            match crate::base::xml::parse_fragment(&xml) {
                Ok(el) => {
                    if deliver(to, el).is_err() {
                        // The session ended: the message stays stored.
                        self.delivered_offline.remove(&key);
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(key, error = %e, "stored offline message does not parse; dropped")
                }
            }
            keys.push(key);
        }
        if !keys.is_empty() {
            self.ctx.replicator.submit(&Command::OfflineDrop {
                username: user,
                count: 0,
                keys,
            });
        }
    }

    /// Each available resource's last presence, addressed to `to`.
    fn current(&self, to: &BareJid) -> Vec<Element> {
        self.resources
            .values()
            .filter_map(|r| r.last.clone())
            .map(|mut p| {
                p.set_attr("to", to.to_string());
                p
            })
            .collect()
    }
}

impl Handler<Broadcast> for UserPresence {
    type Result = ();

    fn handle(&mut self, mut msg: Broadcast, ctx: &mut Context<Self>) {
        // XEP-0398 §3: the avatar's hash, for vCard-based contacts.
        crate::im::modules::avatar_conversion::stamp_presence(
            &self.ctx.state,
            &self.user(),
            &mut msg.stanza,
        );
        let resource = msg.from.resource().as_str().to_string();
        let available = msg.stanza.attr("type").is_none();
        let priority = msg
            .stanza
            .get_child("priority", ns::CLIENT)
            .and_then(|p| p.text().trim().parse::<i8>().ok())
            .unwrap_or(0);
        self.ctx.router.update(&msg.from, msg.session_id, |e| {
            e.available = available;
            e.priority = priority;
        });
        // Other nodes route to the bare JID by these facts (RFC 6121 §8.5).
        let cmd = Command::SessionPresence {
            record: crate::model::state::SessionRecord {
                jid: msg.from.to_string(),
                node: self.ctx.node_id(),
                sid: msg.session_id,
                available,
                priority,
                sm_id: None,
                bound_at: 0,
                caps: crate::im::modules::caps::ver_of(&msg.stanza),
            },
        };
        let first = available
            && self
                .resources
                .get(&resource)
                .is_none_or(|r| r.last.is_none());
        if first {
            // Pending subscription requests are read once this node has
            // applied the availability: a request stored before it is seen
            // here, one stored after it finds the resource available where
            // it is handled (and is routed there).
            let me = ctx.address();
            let from = msg.from.clone();
            self.ctx
                .replicator
                .commit_then(cmd, Box::new(move |_| me.do_send(DeliverPending { from })));
        } else {
            self.ctx.replicator.submit(&cmd);
        }
        let res = self.resources.get_or_insert_with(resource, || Resource {
            session_id: msg.session_id,
            last: None,
            directed: HashSet::new(),
        });
        res.session_id = msg.session_id;
        if !available {
            self.went_unavailable(&msg.from, Some(msg.stanza));
            return;
        }
        let was_available = res.last.replace(msg.stanza.clone()).is_some();
        self.broadcast(&msg.stanza, None);
        if !was_available {
            self.initial(&msg.from, priority);
        }
        // XEP-0115: what the client's capabilities mean; once known, a
        // session coming online gets the last PEP items it wants
        // (XEP-0163 §4.3.2; an unknown hash gets them when answered).
        if crate::im::modules::caps::learn(&self.ctx, &msg.from, &msg.stanza) && !was_available {
            if let Some(ver) = crate::im::modules::caps::ver_of(&msg.stanza) {
                let interests = crate::im::modules::caps::interests_of(
                    &self.ctx.state,
                    msg.from.as_str(),
                    &ver,
                )
                .unwrap_or_default();
                crate::im::modules::pep::send_last_items(&self.ctx, &msg.from, &interests);
            }
        }
    }
}

impl Handler<Directed> for UserPresence {
    type Result = ();

    fn handle(&mut self, msg: Directed, _: &mut Context<Self>) {
        let Directed {
            resource,
            to,
            available,
            deliver,
        } = msg;
        if let Some(r) = self.resources.get_mut(&resource) {
            if available {
                // Bounded: each target is remembered until the resource
                // goes unavailable.
                if r.directed.len() >= MAX_DIRECTED && !r.directed.contains(&to) {
                    if let Some(p) = deliver {
                        tracing::info!(user = %self.bare, %resource, "directed presence refused: too many targets");
                        let mut err = StanzaError::with_text(
                            StanzaCondition::ResourceConstraint,
                            "directed presence to too many entities",
                        )
                        .reply_to(&p);
                        if let Ok(me) = self.bare.with_resource_str(&resource) {
                            err.set_attr("to", me.to_string());
                            deliver_presence(&self.ctx, err, &Jid::from(me));
                        }
                    }
                    return;
                }
                r.directed.insert(to.clone());
            } else {
                r.directed.remove(&to);
            }
        }
        if let Some(p) = deliver {
            if let Ok(to) = Jid::new(&to) {
                deliver_presence(&self.ctx, p, &to);
            }
        }
    }
}

impl Handler<Gone> for UserPresence {
    type Result = ();

    fn handle(&mut self, msg: Gone, ctx: &mut Context<Self>) {
        let resource = msg.from.resource().as_str();
        if self
            .resources
            .get(resource)
            .is_some_and(|r| r.session_id == msg.session_id)
        {
            self.went_unavailable(&msg.from, None);
            self.resources.remove(resource);
        }
        if self.ctx.presence.retire_if_idle(&self.ctx, &self.bare) {
            // XEP-0012: remember when the user was last seen.
            let cmd = Command::SetLastActivity {
                username: self.user(),
                unix_secs: crate::base::time::unix_now().as_secs(),
                status: String::new(),
            };
            if self.ctx.state.account_exists(&self.user()) {
                self.ctx.replicator.submit(&cmd);
            }
            ctx.stop();
        }
    }
}

impl Handler<Moved> for UserPresence {
    type Result = ();

    fn handle(&mut self, msg: Moved, ctx: &mut Context<Self>) {
        let resource = msg.from.resource().as_str();
        if self
            .resources
            .get(resource)
            .is_some_and(|r| r.session_id == msg.session_id)
        {
            self.resources.remove(resource);
        }
        if self.ctx.presence.retire_if_idle(&self.ctx, &self.bare) {
            ctx.stop();
        }
    }
}

impl Handler<Restore> for UserPresence {
    type Result = ();

    fn handle(&mut self, msg: Restore, _: &mut Context<Self>) {
        let available = msg.last.is_some();
        self.ctx.router.update(&msg.from, msg.session_id, |e| {
            e.available = available;
            e.priority = msg.priority;
        });
        self.ctx.replicator.submit(&Command::SessionPresence {
            record: crate::model::state::SessionRecord {
                jid: msg.from.to_string(),
                node: self.ctx.node_id(),
                sid: msg.session_id,
                available,
                priority: msg.priority,
                sm_id: None,
                bound_at: 0,
                caps: msg.last.as_ref().and_then(crate::im::modules::caps::ver_of),
            },
        });
        self.resources.insert(
            msg.from.resource().as_str().to_string(),
            Resource {
                session_id: msg.session_id,
                last: msg.last,
                directed: HashSet::new(),
            },
        );
    }
}

/// RFC 6121 §3.1.3: deliver the subscription requests that wait for the
/// user to `from`, once its availability is applied (see `Broadcast`).
#[derive(Message)]
#[rtype(result = "()")]
struct DeliverPending {
    from: FullJid,
}

impl Handler<DeliverPending> for UserPresence {
    type Result = ();

    fn handle(&mut self, msg: DeliverPending, _: &mut Context<Self>) {
        // A session that ended meanwhile has no use for them.
        let Some(me) = self.ctx.router.get_full(&msg.from) else {
            return;
        };
        for item in self.roster().into_iter().filter(|i| i.sub.pending_in) {
            let req = Element::new("presence", ns::CLIENT)
                .with_attr("type", "subscribe")
                .with_attr("from", item.jid.clone())
                .with_attr("to", self.bare.to_string());
            let _ = deliver(&me, req);
        }
    }
}

impl Handler<SendCurrent> for UserPresence {
    type Result = ();

    fn handle(&mut self, msg: SendCurrent, _: &mut Context<Self>) {
        if msg.check_subscription {
            let item = self
                .ctx
                .state
                .roster_item(&self.user(), msg.to.as_str())
                .ok()
                .flatten();
            if !item.is_some_and(|i| i.sub.from)
                || self.ctx.state.is_blocked(&self.user(), msg.to.as_str())
            {
                return;
            }
        }
        let to = match msg.resource {
            Some(full) => Jid::from(full),
            None => Jid::from(msg.to.clone()),
        };
        for mut p in self.current(&msg.to) {
            p.set_attr("to", to.to_string());
            deliver_presence(&self.ctx, p, &to);
        }
    }
}

impl Handler<SendUnavailable> for UserPresence {
    type Result = ();

    fn handle(&mut self, msg: SendUnavailable, _: &mut Context<Self>) {
        let to = Jid::from(msg.to.clone());
        for p in self.current(&msg.to) {
            let mut u = Element::new("presence", ns::CLIENT).with_attr("type", "unavailable");
            if let Some(f) = p.attr("from") {
                u.set_attr("from", f);
            }
            u.set_attr("to", msg.to.to_string());
            deliver_presence(&self.ctx, u, &to);
        }
    }
}

/// Deliver presence to a local entity: a full JID's session, or every
/// available resource of a bare JID (RFC 6121 §8.5.2.1.2). Dropped when the
/// recipient blocked the sender (XEP-0191) or does not exist.
pub fn deliver_presence(ctx: &ImCtx, stanza: Element, to: &Jid) {
    if !ctx.config.hosts_accounts(to.domain().as_str()) {
        // A contact on a remote server, or a component.
        ctx.elsewhere.send(ctx, stanza);
        return;
    }
    let Some(node) = ctx.config.account_of(to) else {
        return;
    };
    if let Some(from) = stanza.attr("from") {
        if crate::im::modules::blocking::blocks(ctx, node.as_str(), from) {
            return;
        }
    }
    match to.try_as_full() {
        Ok(full) => {
            if let Some(t) = crate::routing::route::full(ctx, full) {
                crate::routing::route::send(ctx, &t, stanza, None);
            }
        }
        Err(bare) => {
            let targets = crate::routing::route::resources(ctx, bare);
            tracing::trace!(to = %bare, targets = ?targets.iter().map(|t| (t.jid.clone(), t.node, t.available)).collect::<Vec<_>>(), "presence to bare JID");
            for t in targets.into_iter().filter(|t| t.available) {
                crate::routing::route::send(ctx, &t, stanza.clone(), None);
            }
        }
    }
}

/// Presence a local client sent. Returns an error reply for the sender.
pub fn from_client(
    ctx: &ImCtx,
    from: &FullJid,
    session_id: u64,
    actor: &Addr<UserPresence>,
    stanza: Element,
    to: Option<Jid>,
) -> Option<Element> {
    let ptype = stanza.attr("type").unwrap_or("available").to_string();
    let Some(to) = to else {
        return match ptype.as_str() {
            "available" | "unavailable" => {
                let msg = Broadcast {
                    from: from.clone(),
                    session_id,
                    stanza,
                };
                if actor.try_send(msg).is_err() {
                    tracing::warn!("presence actor overloaded; presence dropped");
                }
                None
            }
            // Subscription stanzas need a contact; probes are the server's business.
            _ => bounce(&stanza, StanzaCondition::BadRequest),
        };
    };
    if SubKind::parse(&ptype).is_some() {
        // delivery.rs sends subscription stanzas to subscription_outbound.
        return None;
    }
    match ptype.as_str() {
        "available" | "unavailable" | "error" => {
            if !ctx.config.hosts_accounts(to.domain().as_str()) {
                if ptype != "error" {
                    let _ = actor.try_send(Directed {
                        resource: from.resource().as_str().to_string(),
                        to: to.to_string(),
                        available: ptype == "available",
                        deliver: None,
                    });
                }
                ctx.elsewhere.send(ctx, stanza);
                return None;
            }
            if let Some(node) = ctx.config.account_of(&to) {
                if crate::im::modules::blocking::blocks(
                    ctx,
                    &ctx.config.account_of(from).unwrap_or_default(),
                    to.as_str(),
                ) && ptype != "error"
                {
                    return Some(crate::im::modules::blocking::blocked_error(&stanza));
                }
                let _ = node;
                if ptype == "available" {
                    // Tracked, then delivered, by the user's presence actor.
                    let sent = actor.try_send(Directed {
                        resource: from.resource().as_str().to_string(),
                        to: to.to_string(),
                        available: true,
                        deliver: Some(stanza),
                    });
                    if let Err(e) = sent {
                        tracing::warn!("presence actor overloaded; directed presence dropped");
                        let stanza = match e {
                            actix::prelude::SendError::Full(d)
                            | actix::prelude::SendError::Closed(d) => d.deliver,
                        };
                        return stanza
                            .and_then(|s| bounce(&s, StanzaCondition::ResourceConstraint));
                    }
                    return None;
                }
                if ptype != "error" {
                    let _ = actor.try_send(Directed {
                        resource: from.resource().as_str().to_string(),
                        to: to.to_string(),
                        available: false,
                        deliver: None,
                    });
                }
                deliver_presence(ctx, stanza, &to);
            }
            None
        }
        // RFC 6121 §4.3: clients do not send probes; ignore them.
        "probe" => None,
        _ => bounce(&stanza, StanzaCondition::BadRequest),
    }
}

/// RFC 6121 §3 on the user's server: apply A.2 to the user's item for the
/// contact, then (if it is routed) hand the stanza to the contact's server.
pub async fn subscription_outbound(
    ctx: &ImCtx,
    from: &FullJid,
    mut stanza: Element,
    kind: SubKind,
    contact: BareJid,
) -> Option<Element> {
    let user_bare = from.to_bare();
    let user = ctx.config.account_of(&user_bare).unwrap_or_default();
    if contact == user_bare {
        return Some(
            crate::base::stanza_error::StanzaError::with_text(
                StanzaCondition::BadRequest,
                "cannot subscribe to yourself",
            )
            .reply_to(&stanza),
        );
    }
    // Computed again if the item changed meanwhile (the contact's own
    // change to it, on any node), a few times at most.
    let mut tries = 0;
    let t = loop {
        let (old, mut item) = current_item(ctx, &user, contact.as_str());
        let t = subscription::outbound(item.sub, item.approved, kind);
        item.sub = t.sub;
        item.approved = t.approved;
        // §3.1.2: asking creates a roster item; §3.1.5: approving shows the contact.
        // §3.4.1: a pre-approval also creates the item (approved='true').
        if kind == SubKind::Subscribe || (kind == SubKind::Subscribed && (t.forward || t.approved))
        {
            item.in_roster = true;
        }
        tries += 1;
        if old.as_ref() == Some(&item)
            || roster::store(ctx, &user_bare, old.as_ref(), item).await
            || tries >= STORE_TRIES
        {
            break t;
        }
    };
    if !t.forward {
        return None;
    }
    // §3.1.2: subscription stanzas travel between bare JIDs.
    stanza.set_attr("from", user_bare.to_string());
    stanza.set_attr("to", contact.to_string());
    if ctx.config.hosts_accounts(contact.domain().as_str()) {
        subscription_inbound(ctx, stanza, kind, &user_bare, &contact).await;
    } else {
        // RFC 6121 §3.1.2: the contact's server applies A.3 there.
        ctx.elsewhere.send(ctx, stanza);
    }
    match kind {
        // §3.1.5: after approving, the contact gets the user's current presence.
        SubKind::Subscribed => {
            if let Some(a) = ctx.presence.get(&user_bare) {
                a.do_send(SendCurrent {
                    to: contact,
                    resource: None,
                    check_subscription: false,
                });
            }
        }
        // §3.2.2: after cancelling, the contact sees the user go unavailable.
        SubKind::Unsubscribed => {
            if let Some(a) = ctx.presence.get(&user_bare) {
                a.do_send(SendUnavailable { to: contact });
            }
        }
        _ => {}
    }
    None
}

/// How often a subscription change is computed again when its roster item
/// changed under it.
const STORE_TRIES: u32 = 5;

/// `user`'s stored item for `jid` (if any) and the item to update.
fn current_item(ctx: &ImCtx, user: &str, jid: &str) -> (Option<RosterItem>, RosterItem) {
    let old = ctx.state.roster_item(user, jid).ok().flatten();
    let item = old.clone().unwrap_or_else(|| RosterItem::new(jid));
    (old, item)
}

/// RFC 6121 §3 on the contact's server: apply A.3 to the contact's item for
/// the sender, deliver or answer.
/// Boxed: the answers it makes on the contact's behalf come back through it.
pub fn subscription_inbound<'a>(
    ctx: &'a ImCtx,
    stanza: Element,
    kind: SubKind,
    sender: &'a BareJid,
    contact: &'a BareJid,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
    Box::pin(subscription_inbound_now(ctx, stanza, kind, sender, contact))
}

async fn subscription_inbound_now(
    ctx: &ImCtx,
    stanza: Element,
    kind: SubKind,
    sender: &BareJid,
    contact: &BareJid,
) {
    if !ctx.config.hosts_accounts(contact.domain().as_str()) {
        // An answer made here for a remote user: their server applies it.
        ctx.elsewhere.send(ctx, stanza);
        return;
    }
    let Some(contact_user) = ctx.config.account_of(contact) else {
        return;
    };
    if !ctx.state.account_exists(&contact_user) {
        // §3.1.3: no such user: a subscribe is refused on its behalf.
        if kind == SubKind::Subscribe {
            let reply = Element::new("presence", ns::CLIENT)
                .with_attr("type", "unsubscribed")
                .with_attr("from", contact.to_string())
                .with_attr("to", sender.to_string());
            subscription_inbound(ctx, reply, SubKind::Unsubscribed, contact, sender).await;
        }
        return;
    }
    if crate::im::modules::blocking::blocks(ctx, &contact_user, sender.as_str()) {
        return;
    }
    let mut tries = 0;
    let t = loop {
        let (old, mut item) = current_item(ctx, &contact_user, sender.as_str());
        let t = subscription::inbound(item.sub, item.approved, kind);
        item.sub = t.sub;
        item.approved = t.approved;
        if t.reply == Some(SubKind::Subscribed) {
            item.in_roster = item.in_roster || old.is_some();
        }
        tries += 1;
        if old.as_ref() == Some(&item)
            || roster::store(ctx, contact, old.as_ref(), item).await
            || tries >= STORE_TRIES
        {
            break t;
        }
    };
    if t.forward {
        let to = Jid::from(contact.clone());
        deliver_presence(ctx, stanza, &to);
        // §3.3.3: a cancelled subscription stops presence at once.
        if kind == SubKind::Unsubscribe {
            if let Some(a) = ctx.presence.get(contact) {
                a.do_send(SendUnavailable { to: sender.clone() });
            }
        }
    }
    if let Some(reply) = t.reply {
        let r = Element::new("presence", ns::CLIENT)
            .with_attr("type", reply.as_str())
            .with_attr("from", contact.to_string())
            .with_attr("to", sender.to_string());
        subscription_inbound(ctx, r, reply, contact, sender).await;
        if reply == SubKind::Subscribed {
            if let Some(a) = ctx.presence.get(contact) {
                a.do_send(SendCurrent {
                    to: sender.clone(),
                    resource: None,
                    check_subscription: false,
                });
            }
        }
    }
}
