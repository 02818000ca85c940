//! Group chat (XEP-0045, Multi-User Chat) as a hosted service domain
//! (`conference.DOMAIN` by default, `[services] muc`). Each room is one
//! actix actor ([`room::Room`]) on the node that owns it: the first node a
//! join reached claims the room through Raft (`services.rs`), and stanzas
//! for it from any node or server are passed there. Occupants may be on any
//! node or server; the room reaches them through the [`Host`].
//!
//! This file is the service: the room directory of this node, the
//! service's disco#info/#items (XEP-0045 §6.1–6.3, the public rooms of this
//! node), unique room names (§10.1.4), and starting a room on first join
//! (§10.1.1, an instant room). `room.rs` is one room; `room_config.rs` its
//! configuration form (§10.2).

pub mod room;
pub mod room_config;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix::Actor;

use crate::base::stanza_error::{bounce, StanzaCondition};
use crate::base::xml::{ns, Element};
use crate::im::services::{Host, HostedService};

pub const MUC: &str = "http://jabber.org/protocol/muc";
pub const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
pub const MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
pub const MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub const MUC_UNIQUE: &str = "http://jabber.org/protocol/muc#unique";
pub const OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
pub const STANZA_ID: &str = "urn:xmpp:sid:0";
pub const DELAY: &str = "urn:xmpp:delay";
pub const DATA: &str = "jabber:x:data";
pub const CONFERENCE: &str = "jabber:x:conference";
pub const MAM: &str = "urn:xmpp:mam:2";

/// What one room and one user may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_occupants: usize,
    pub history: usize,
    pub rooms_per_user: usize,
    /// Rooms archive their messages by default (XEP-0313 on).
    pub archive: bool,
    /// Messages per second per occupant (0: no limit).
    pub messages_per_sec: u64,
}

impl Limits {
    pub fn from_config(c: &crate::model::config::ServicesSection, archive: bool) -> Limits {
        Limits {
            max_occupants: c.muc_max_occupants.max(1),
            history: c.muc_history,
            rooms_per_user: c.muc_max_rooms_per_user.max(1),
            archive,
            messages_per_sec: c.muc_messages_per_sec,
        }
    }
}

/// A room as the directory knows it.
pub(crate) struct Entry {
    pub addr: actix::Addr<room::Room>,
    /// Its name and whether it is public, for disco#items.
    pub name: String,
    pub public: bool,
    /// Real bare JIDs of its occupants (the per-user room limit).
    pub occupants: Vec<String>,
}

/// This node's rooms, by bare JID.
#[derive(Default)]
pub(crate) struct Directory {
    rooms: Mutex<HashMap<String, Entry>>,
}

impl Directory {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A room changed what the directory shows of it.
    pub fn update(&self, room: &str, name: &str, public: bool, occupants: Vec<String>) {
        if let Some(e) = self.lock().get_mut(room) {
            e.name = name.to_string();
            e.public = public;
            e.occupants = occupants;
        }
    }

    /// The room `room` (at `addr`) retires: stanzas for it start a new one.
    pub fn remove(&self, room: &str, addr: &actix::Addr<room::Room>) {
        let mut rooms = self.lock();
        if rooms.get(room).is_some_and(|e| &e.addr == addr) {
            rooms.remove(room);
        }
    }

    /// Rooms `user` (a bare JID) is in.
    fn rooms_of(&self, user: &str) -> usize {
        self.lock()
            .values()
            .filter(|e| e.occupants.iter().any(|o| o == user))
            .count()
    }
}

/// The group-chat service of one domain.
pub struct Muc {
    domain: String,
    limits: Limits,
    directory: Arc<Directory>,
}

impl Muc {
    pub fn new(domain: &str, limits: Limits) -> Arc<Muc> {
        Arc::new(Muc {
            domain: domain.to_ascii_lowercase(),
            limits,
            directory: Arc::new(Directory::default()),
        })
    }

    /// Hand a stanza to its room on this node, starting the room if the
    /// stanza is a join; a stanza for a room that is not here is answered
    /// as XEP-0045 says for a room that does not exist.
    pub(crate) fn dispatch(&self, stanza: Element, host: &Arc<dyn Host>) {
        let Some(room) = stanza
            .attr("to")
            .and_then(|t| jid::Jid::new(t).ok())
            .map(|j| j.to_bare().to_string())
        else {
            return;
        };
        let mut rooms = self.directory.lock();
        if let Some(e) = rooms.get(&room) {
            if e.addr.connected() {
                e.addr.do_send(room::Stanza(stanza));
                return;
            }
            rooms.remove(&room);
        }
        drop(rooms);
        // Kept in the cluster (its node died, or it is persistent): it
        // comes back from its records.
        let mut records = host.load(&room);
        // Records without the room's own record are leftovers, not a room.
        if !records.iter().any(|(k, _)| k == "meta") {
            records.clear();
        }
        if !self.creates(&stanza) && records.is_empty() {
            not_here(stanza, host);
            return;
        }
        // The per-user room limit, before a room is made for it.
        let user = stanza
            .attr("from")
            .and_then(|f| jid::Jid::new(f).ok())
            .map(|j| j.to_bare().to_string())
            .unwrap_or_default();
        if records.is_empty() && self.directory.rooms_of(&user) >= self.limits.rooms_per_user {
            tracing::info!(%user, %room, "join refused: rooms per user");
            if let Some(e) = refuse(
                &stanza,
                StanzaCondition::ResourceConstraint,
                Some("too many rooms"),
            ) {
                host.send(e);
            }
            return;
        }
        match self.start_room(&room, records, host) {
            Some(addr) => addr.do_send(room::Stanza(stanza)),
            None => tracing::warn!(%room, "stanza dropped: the room cannot start"),
        }
    }

    /// The room's actor on this node: the running one, or one started
    /// from `records` (empty: a new room).
    fn start_room(
        &self,
        room: &str,
        records: Vec<(String, String)>,
        host: &Arc<dyn Host>,
    ) -> Option<actix::Addr<room::Room>> {
        let arbiter = host.arbiter()?;
        let mut rooms = self.directory.lock();
        // Another thread may have started it meanwhile.
        if let Some(e) = rooms.get(room).filter(|e| e.addr.connected()) {
            return Some(e.addr.clone());
        }
        let jid = jid::BareJid::new(room).ok()?;
        let restored = !records.is_empty();
        let r = room::Room::new(jid, host.clone(), self.directory.clone(), self.limits)
            .restore(records);
        let addr = room::Room::start_in_arbiter(&arbiter, move |_| r);
        if restored {
            // Occupants whose sessions died with the old owner leave.
            addr.do_send(room::Sweep);
        }
        rooms.insert(
            room.to_string(),
            Entry {
                addr: addr.clone(),
                name: String::new(),
                public: true,
                occupants: Vec::new(),
            },
        );
        Some(addr)
    }
}

/// A stanza for a room that does not exist (XEP-0045 §7.2 and §6.4: the
/// room is unknown), unless it needs no answer. An iq to an occupant of
/// it (a self-ping, XEP-0410 §3.2) says the sender is not joined: with
/// item-not-found a client would take itself for still joined under
/// another nick, and never join again (after the room went away with a
/// restart, say).
fn not_here(stanza: Element, host: &Arc<dyn Host>) {
    if stanza.name == "presence" {
        return; // unavailable or an error: nothing to leave
    }
    let to_occupant = stanza
        .attr("to")
        .and_then(|to| to.parse::<jid::Jid>().ok())
        .is_some_and(|to| to.resource().is_some());
    let condition = if stanza.name == "iq" && to_occupant {
        StanzaCondition::NotAcceptable
    } else {
        StanzaCondition::ItemNotFound
    };
    if let Some(e) = bounce(&stanza, condition) {
        host.send(e);
    }
}

impl HostedService for Muc {
    fn identity(&self) -> (&'static str, &'static str, &'static str) {
        ("conference", "text", "Chatrooms")
    }

    fn features(&self) -> Vec<&'static str> {
        vec![MUC, MUC_UNIQUE, OCCUPANT_ID, STANZA_ID]
    }

    fn items(&self) -> Vec<(String, String)> {
        let mut items: Vec<(String, String)> = self
            .directory
            .lock()
            .iter()
            .filter(|(_, e)| e.public)
            .map(|(jid, e)| (jid.clone(), e.name.clone()))
            .collect();
        items.sort();
        items
    }

    /// Stanzas to the service's own domain that the generic part left.
    fn handle(&self, stanza: &Element) -> Vec<Element> {
        // §10.1.4: a unique room name.
        let unique = stanza.name == "iq"
            && stanza.attr("type") == Some("get")
            && stanza.get_child("unique", MUC_UNIQUE).is_some();
        if unique {
            let name = format!("{:016x}", rand::random::<u64>());
            return vec![crate::im::modules::result(
                stanza,
                Some(Element::new("unique", MUC_UNIQUE).with_text(name)),
            )];
        }
        Vec::new()
    }

    fn owns_entities(&self) -> bool {
        true
    }

    /// §6.3: the public rooms of every node (from their records).
    fn cluster_items(&self, domain: &str, host: &Arc<dyn Host>) -> Option<Vec<(String, String)>> {
        let mut items: Vec<(String, String)> = host
            .entities(domain)
            .into_iter()
            .filter_map(|room| {
                let name = room::listed(&host.load_one(&room, "meta")?)?;
                Some((room, name))
            })
            .collect();
        items.sort();
        Some(items)
    }

    /// A join: available presence to `room@service/nick`.
    fn creates(&self, stanza: &Element) -> bool {
        stanza.name == "presence"
            && stanza.attr("type").is_none()
            && stanza
                .attr("to")
                .and_then(|t| jid::Jid::new(t).ok())
                .is_some_and(|j| j.resource().is_some())
    }

    fn take(&self, stanza: Element, host: &Arc<dyn Host>) {
        let _ = &self.domain;
        self.dispatch(stanza, host)
    }

    fn stored(&self, entity: &str, host: &Arc<dyn Host>) -> bool {
        host.load_one(entity, "meta").is_some()
    }

    fn revive(&self, entity: &str, host: &Arc<dyn Host>) {
        let records = host.load(entity);
        if self.start_room(entity, records, host).is_none() {
            tracing::warn!(room = %entity, "room not revived: it cannot start");
        }
    }

    fn hand_over(&self, others: &[u64]) {
        for (i, e) in self.directory.lock().values().enumerate() {
            e.addr.do_send(room::HandOver {
                to: others[i % others.len()],
            });
        }
    }

    fn running(&self) -> usize {
        self.directory.lock().len()
    }

    fn node_gone(&self, _host: &Arc<dyn Host>) {
        for e in self.directory.lock().values() {
            e.addr.do_send(room::Sweep);
        }
    }
}

/// The error reply to `stanza`, unless it is an error itself (RFC 6120
/// §8.3.1).
pub(crate) fn refuse(
    stanza: &Element,
    condition: StanzaCondition,
    text: Option<&str>,
) -> Option<Element> {
    if stanza.attr("type") == Some("error") {
        return None;
    }
    let e = match text {
        Some(t) => crate::base::stanza_error::StanzaError::with_text(condition, t),
        None => crate::base::stanza_error::StanzaError::new(condition),
    };
    Some(e.reply_to(stanza))
}

/// Shared helpers for the room's elements.
pub(crate) fn x_user() -> Element {
    Element::new("x", MUC_USER)
}

/// An element `<name xmlns=ns>text</name>`.
pub(crate) fn text_el(name: &str, namespace: &str, text: &str) -> Element {
    Element::new(name, namespace).with_text(text)
}

/// The namespace of the client stream, for stanzas the room makes.
pub(crate) const CLIENT: &str = ns::CLIENT;
