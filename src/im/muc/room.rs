//! One group-chat room (XEP-0045): an actix actor that holds its
//! occupants, affiliations, subject, history and configuration, and
//! answers every stanza addressed to the room or to an occupant's nick.
//!
//! Sections: entering (§7.2, with history §7.2.15 and the subject
//! §7.2.16), presence updates and nick changes (§7.6), leaving (§7.14),
//! messages to all (§7.4, reflected with a `<stanza-id by=room/>` and the
//! sender's XEP-0421 occupant id), the subject (§8.1), private messages
//! (§7.5), mediated invitations (§7.8.2), self-ping (XEP-0410) and iqs
//! passed to occupants (§7.7), disco#info with `muc#roominfo` (§6.4),
//! moderation by role (§8: kick, voice) and administration by
//! affiliation (§9: ban, members, admins, owners), configuration (§10.2)
//! and destruction (§10.9).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use actix::prelude::*;
use jid::{BareJid, Jid};

use super::room_config::{AllowPm, RoomConfig, Whois};
use super::{
    refuse, text_el, x_user, Directory, Limits, CLIENT, CONFERENCE, DATA, DELAY, MAM, MUC,
    MUC_ADMIN, MUC_OWNER, MUC_USER, OCCUPANT_ID, STANZA_ID,
};
mod moderation;
mod registration;
mod voice_request;

use crate::base::stanza_error::StanzaCondition;
use crate::base::xml::{ns, Element};
use crate::im::services::Host;

/// A stanza for the room or one of its occupants.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stanza(pub Element);

/// Drop occupants whose sessions the cluster no longer has (their node
/// died): the others see them leave with status 333.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Sweep;

/// This node drains: the room moves to node `to` (it starts there from
/// its records on its next stanza) and this copy retires.
#[derive(Message)]
#[rtype(result = "()")]
pub struct HandOver {
    pub to: u64,
}

/// Affiliations, lowest first (§5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Affiliation {
    Outcast,
    None,
    Member,
    Admin,
    Owner,
}

impl Affiliation {
    pub fn name(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Affiliation> {
        Some(match s {
            "outcast" => Affiliation::Outcast,
            "none" => Affiliation::None,
            "member" => Affiliation::Member,
            "admin" => Affiliation::Admin,
            "owner" => Affiliation::Owner,
            _ => return None,
        })
    }
}

/// Roles, lowest first (§5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    None,
    Visitor,
    Participant,
    Moderator,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "none" => Role::None,
            "visitor" => Role::Visitor,
            "participant" => Role::Participant,
            "moderator" => Role::Moderator,
            _ => return None,
        })
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Occupant {
    /// The real full JID.
    real: String,
    #[serde(with = "role_name")]
    role: Role,
    /// The client's last presence to the room, without the MUC payload.
    #[serde(with = "xml_text")]
    presence: Element,
    /// XEP-0421: stable for one real bare JID in this room.
    occupant_id: String,
    /// Other sessions of the same account under the same nick (a phone
    /// and a desktop): each gets a copy of what the room sends `real`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    mirrors: Vec<String>,
}

pub struct Room {
    jid: BareJid,
    host: Arc<dyn Host>,
    directory: Arc<Directory>,

    limits: Limits,
    config: RoomConfig,
    /// By nick.
    occupants: BTreeMap<String, Occupant>,
    /// Real full JID -> nick.
    by_real: HashMap<String, String>,
    /// Real bare JID -> affiliation (none is not kept).
    affiliations: HashMap<String, Affiliation>,
    /// Real bare JID -> the nick it registered (§7.10).
    reserved: BTreeMap<String, String>,
    /// Real bare JIDs that became members by registering (§7.10).
    registered_members: BTreeSet<String>,
    /// (who set it, as room/nick; the text).
    subject: Option<(String, String)>,
    /// (sequence number, message, when).
    history: VecDeque<(u64, Element, SystemTime)>,
    next_seq: u64,
    /// No occupant has entered yet: the first one creates the room (201).
    fresh: bool,
    /// Out of the directory: stanzas go back to the service.
    retired: bool,
    /// Emptied: out of the directory once its records are removed.
    retiring: bool,
    /// Its last occupant left while handling this stanza.
    emptied: bool,
    salt: u64,
    /// Stanzas to send once this stanza's changes are committed.
    out: RefCell<Vec<Element>>,
    /// What changed since the last commit: occupants by nick, the room's
    /// own record, history entries added and dropped.
    dirty_nicks: BTreeSet<String>,
    meta_dirty: bool,
    history_added: Vec<u64>,
    history_dropped: Vec<u64>,
    /// The room is gone: its own record goes too.
    deleted: bool,
    /// Messages for the room's archive, written with the records.
    archive_pending: Vec<crate::model::state::ArchiveEntry>,
    /// Archived messages to put tombstones in place of (XEP-0425).
    archive_replace: Vec<crate::model::state::ArchiveEntry>,
    /// The last archive id this room made.
    last_id: u64,
    /// Each occupant's message allowance (by real bare JID).
    rates: HashMap<String, crate::base::rate_limit::RateLimit>,
}

/// The room's own record (configuration, affiliations, subject).
#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    config: RoomConfig,
    affiliations: Vec<(String, String)>,
    subject: Option<(String, String)>,
    salt: u64,
    /// Registered nicks (§7.10), by real bare JID.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    nicks: Vec<(String, String)>,
    /// Who became a member by registering (`<remove/>` takes it back).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    registered_members: Vec<String>,
}

/// A room's name if its record says it is listed (public), for the
/// service's disco#items (XEP-0045 §6.3).
pub(crate) fn listed(meta: &str) -> Option<String> {
    let m: Meta = serde_json::from_str(meta).ok()?;
    m.config.public.then_some(m.config.name)
}

/// A history entry's record.
#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    xml: String,
    micros: u64,
}

mod role_name {
    use super::Role;
    pub fn serialize<S: serde::Serializer>(r: &Role, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(r.name())
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
        let n: String = serde::Deserialize::deserialize(d)?;
        Ok(Role::parse(&n).unwrap_or(Role::Participant))
    }
}

mod xml_text {
    use crate::base::xml::Element;
    pub fn serialize<S: serde::Serializer>(e: &Element, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&e.to_xml(crate::base::xml::ns::CLIENT))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Element, D::Error> {
        let x: String = serde::Deserialize::deserialize(d)?;
        crate::base::xml::parse_fragment(&x).map_err(serde::de::Error::custom)
    }
}

const META: &str = "meta";

/// Sessions of one account under one nick.
const MAX_SESSIONS: usize = 8;

fn occupant_key(nick: &str) -> String {
    format!("o/{nick}")
}

fn history_key(seq: u64) -> String {
    format!("h/{seq:020}")
}

impl Actor for Room {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Context<Self>) {
        tracing::info!(room = %self.jid, "room started");
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        tracing::info!(room = %self.jid, "room stopped");
    }
}

impl Handler<Stanza> for Room {
    type Result = ();

    fn handle(&mut self, msg: Stanza, ctx: &mut Context<Self>) {
        // Another node took the room over (this one was cut off and
        // found dead): stanzas go to the room where it lives now.
        if !self.retired
            && self
                .host
                .owner(self.jid.as_str())
                .is_some_and(|n| n != self.host.node())
        {
            tracing::warn!(room = %self.jid, "room owned elsewhere now; this copy retires");
            self.retired = true;
            self.directory.remove(self.jid.as_str(), &ctx.address());
        }
        if self.retired {
            // Queued before the room left the directory (or moved): it
            // goes where the room lives now, or starts it again.
            self.host.send(msg.0);
            return;
        }
        let el = msg.0;
        let span =
            tracing::info_span!("room", room = %self.jid, from = el.attr("from").unwrap_or(""));
        let _g = span.enter();
        let trigger = el.clone();
        match el.name.as_str() {
            "presence" => self.presence(el),
            "message" => self.message(el),
            "iq" => self.iq(el),
            _ => {}
        }
        self.publish(ctx, true);
        self.commit_then_send(Some(trigger), ctx);
    }
}

impl Handler<HandOver> for Room {
    type Result = ();

    fn handle(&mut self, msg: HandOver, ctx: &mut Context<Self>) {
        if self.retired {
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.host.hand_over(
            self.jid.as_str(),
            msg.to,
            Box::new(move |ok| {
                let _ = tx.send(ok);
            }),
        );
        // Stanzas wait in the mailbox until the move is committed; then
        // they follow the room (see `retired`).
        ctx.wait(
            async move { rx.await.unwrap_or(false) }
                .into_actor(self)
                .map(move |ok, act, ctx| {
                    if ok {
                        tracing::info!(room = %act.jid, to = msg.to, "room handed over");
                    } else {
                        tracing::warn!(room = %act.jid, "room not handed over; it starts again from its records where it is next needed");
                    }
                    act.retired = true;
                    act.directory.remove(act.jid.as_str(), &ctx.address());
                }),
        );
    }
}

impl Handler<Sweep> for Room {
    type Result = ();

    fn handle(&mut self, _: Sweep, ctx: &mut Context<Self>) {
        if self.retired {
            return;
        }
        // Sessions of multi-session occupants first, then occupants.
        let sessions: Vec<String> = self
            .occupants
            .values()
            .filter(|o| !o.mirrors.is_empty())
            .flat_map(|o| std::iter::once(&o.real).chain(o.mirrors.iter()))
            .filter(|s| self.host.session_gone(s))
            .cloned()
            .collect();
        for s in sessions {
            self.drop_session(&s, &[333]);
        }
        let gone: Vec<String> = self
            .occupants
            .iter()
            .filter(|(_, o)| self.host.session_gone(&o.real))
            .map(|(n, _)| n.clone())
            .collect();
        for nick in gone {
            tracing::info!(room = %self.jid, %nick, "occupant's session is gone; removed");
            self.remove_occupant(&nick, &[333], Vec::new(), None);
        }
        self.publish(ctx, false);
        self.commit_then_send(None, ctx);
    }
}

impl Room {
    /// The changes the last stanza made, written through the cluster;
    /// what it sends goes out only once they are committed (a message
    /// reflected to its sender is in the room's history on a majority).
    fn commit_then_send(&mut self, trigger: Option<Element>, ctx: &mut Context<Self>) {
        let out = std::mem::take(self.out.get_mut());
        let writes = self.take_writes();
        let archive = std::mem::take(&mut self.archive_pending);
        let replace = std::mem::take(&mut self.archive_replace);
        if writes.is_empty() && archive.is_empty() && replace.is_empty() {
            for o in out {
                self.host.send(o);
            }
            if self.retiring {
                self.retired = true;
                self.directory.remove(self.jid.as_str(), &ctx.address());
            }
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.host.store(
            self.jid.as_str(),
            writes,
            archive,
            replace,
            Box::new(move |ok| {
                let _ = tx.send(ok);
            }),
        );
        let host = self.host.clone();
        let room = self.jid.to_string();
        // The room takes its next stanza once this one's changes are in.
        ctx.wait(
            async move { rx.await.unwrap_or(false) }
                .into_actor(self)
                                .map(move |ok, act, ctx| {
                    if ok {
                        for o in out {
                            host.send(o);
                        }
                        // An emptied temporary room leaves the directory
                        // only once its records are gone: a join meanwhile
                        // waits, then finds no old state.
                        if act.retiring {
                            act.retired = true;
                            act.directory.remove(&room, &ctx.address());
                        }
                        return;
                    }
                                        tracing::warn!(%room, dropped = out.len(), "room change not committed (no quorum, or the room is owned elsewhere now); its stanzas dropped, this copy retires");
                    if let Some(e) = trigger.and_then(|t| {
                        refuse(&t, StanzaCondition::InternalServerError, Some("not stored; try again"))
                    }) {
                        host.send(e);
                    }
                    // What is in memory is ahead of the records: the next
                    // stanza starts the room again from them.
                    act.retired = true;
                    act.directory.remove(&room, &ctx.address());
                }),
        );
    }

    /// The records to write for what changed since the last call.
    fn take_writes(&mut self) -> Vec<(String, Option<String>)> {
        let mut w = Vec::new();
        for nick in std::mem::take(&mut self.dirty_nicks) {
            let v = self
                .occupants
                .get(&nick)
                .and_then(|o| serde_json::to_string(o).ok());
            w.push((occupant_key(&nick), v));
        }
        let added = std::mem::take(&mut self.history_added);
        for seq in added {
            if let Some((_, m, t)) = self.history.iter().find(|(s, _, _)| *s == seq) {
                let kept = Kept {
                    xml: m.to_xml(CLIENT),
                    micros: t
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_micros() as u64)
                        .unwrap_or(0),
                };
                w.push((history_key(seq), serde_json::to_string(&kept).ok()));
            }
        }
        for seq in std::mem::take(&mut self.history_dropped) {
            w.push((history_key(seq), None));
        }
        if self.deleted {
            self.deleted = false;
            self.meta_dirty = false;
            w.push((META.to_string(), None));
        } else if std::mem::take(&mut self.meta_dirty) {
            let meta = Meta {
                config: self.config.clone(),
                affiliations: self
                    .affiliations
                    .iter()
                    .map(|(j, a)| (j.clone(), a.name().to_string()))
                    .collect(),
                subject: self.subject.clone(),
                salt: self.salt,
                nicks: self
                    .reserved
                    .iter()
                    .map(|(j, n)| (j.clone(), n.clone()))
                    .collect(),
                registered_members: self.registered_members.iter().cloned().collect(),
            };
            w.push((META.to_string(), serde_json::to_string(&meta).ok()));
        }
        w
    }

    /// A room from its records (its owner died, or it was out of memory):
    /// everything but what sessions that are gone held.
    pub(crate) fn restore(mut self, records: Vec<(String, String)>) -> Room {
        if records.is_empty() {
            return self;
        }

        for (key, value) in records {
            if key == META {
                if let Ok(m) = serde_json::from_str::<Meta>(&value) {
                    self.config = m.config;
                    self.affiliations = m
                        .affiliations
                        .into_iter()
                        .filter_map(|(j, a)| Affiliation::parse(&a).map(|a| (j, a)))
                        .collect();
                    self.subject = m.subject;
                    self.salt = m.salt;
                    self.reserved = m.nicks.into_iter().collect();
                    self.registered_members = m.registered_members.into_iter().collect();
                    self.fresh = false;
                }
            } else if let Some(nick) = key.strip_prefix("o/") {
                if let Ok(o) = serde_json::from_str::<Occupant>(&value) {
                    self.by_real.insert(o.real.clone(), nick.to_string());
                    for m in &o.mirrors {
                        self.by_real.insert(m.clone(), nick.to_string());
                    }
                    self.occupants.insert(nick.to_string(), o);
                }
            } else if let Some(seq) = key.strip_prefix("h/").and_then(|s| s.parse::<u64>().ok()) {
                if let Ok(k) = serde_json::from_str::<Kept>(&value) {
                    if let Ok(m) = crate::base::xml::parse_fragment(&k.xml) {
                        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(k.micros);
                        self.history.push_back((seq, m, t));
                        self.next_seq = self.next_seq.max(seq + 1);
                    }
                }
            }
        }
        self.history.make_contiguous().sort_by_key(|(s, _, _)| *s);
        tracing::info!(room = %self.jid, occupants = self.occupants.len(), history = self.history.len(), "room restored from its records");
        self
    }

    /// An archive id after every one this room made (time-ordered, this
    /// node's bits low, as `modules/archive.rs` makes them).
    fn next_archive_id(&mut self) -> u64 {
        use crate::model::state::archive::ArchiveId;
        let bits = (1u64 << ArchiveId::NODE_BITS) - 1;
        let node = self.host.node() & bits;
        let now = ArchiveId::at(crate::base::time::unix_now().as_micros() as u64) | node;
        let id = if now > self.last_id {
            now
        } else {
            (((self.last_id >> ArchiveId::NODE_BITS) + 1) << ArchiveId::NODE_BITS) | node
        };
        self.last_id = id;
        id
    }

    fn push_history(&mut self, m: Element) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.history.push_back((seq, m, SystemTime::now()));
        self.history_added.push(seq);
        self.trim_history();
    }

    fn trim_history(&mut self) {
        while self.history.len() > self.config.history_length {
            if let Some((seq, _, _)) = self.history.pop_front() {
                self.history_dropped.push(seq);
            }
        }
    }

    pub(crate) fn new(
        jid: BareJid,
        host: Arc<dyn Host>,
        directory: Arc<Directory>,
        limits: Limits,
    ) -> Room {
        Room {
            jid,
            host,
            directory,
            limits,
            config: RoomConfig::instant(limits.max_occupants, limits.history, limits.archive),
            occupants: BTreeMap::new(),
            by_real: HashMap::new(),
            affiliations: HashMap::new(),
            reserved: BTreeMap::new(),
            registered_members: BTreeSet::new(),
            subject: None,
            history: VecDeque::new(),
            next_seq: 0,
            fresh: true,
            retired: false,
            retiring: false,
            emptied: false,
            salt: rand::random(),
            out: RefCell::new(Vec::new()),
            dirty_nicks: BTreeSet::new(),
            meta_dirty: false,
            history_added: Vec::new(),
            history_dropped: Vec::new(),
            deleted: false,
            archive_pending: Vec::new(),
            archive_replace: Vec::new(),
            last_id: 0,
            rates: HashMap::new(),
        }
    }

    /// Tell the directory what it shows of the room; an empty temporary
    /// room retires (its address dropped, the actor ends when its
    /// mailbox is empty).
    fn publish(&mut self, _ctx: &mut Context<Self>, after_stanza: bool) {
        let room = self.jid.to_string();
        if self.occupants.is_empty() && !self.config.persistent && !self.fresh {
            // A temporary room ends with its last occupant, records too
            // (it leaves the directory once they are gone).
            self.retiring = true;
            self.history_dropped
                .extend(self.history.drain(..).map(|(s, _, _)| s));
            self.deleted = true;
            return;
        }
        if (std::mem::take(&mut self.emptied) || after_stanza)
            && self.occupants.is_empty()
            && self.config.persistent
            && !self.fresh
        {
            // A persistent room its last occupant left leaves memory; its
            // records stay, and its next stanza starts it from them.
            self.retiring = true;
            return;
        }
        let mut users: Vec<String> = self.occupants.values().map(|o| bare_of(&o.real)).collect();
        users.sort();
        users.dedup();
        self.directory
            .update(&room, &self.config.name, self.config.public, users);
    }

    /// Queue a stanza: it goes out once the changes made with it are
    /// committed.
    fn send(&self, el: Element) {
        let mirrors = el
            .attr("to")
            .and_then(|to| {
                let nick = self.by_real.get(to)?;
                self.occupants.get(nick).filter(|o| o.real == to)
            })
            .map(|o| o.mirrors.clone())
            .unwrap_or_default();
        let mut out = self.out.borrow_mut();
        for m in mirrors {
            let mut copy = el.clone();
            copy.set_attr("to", m);
            out.push(copy);
        }
        out.push(el);
    }

    /// Another session of an occupant's account enters under its nick
    /// (multi-session nicks): only that session gets the join sequence.
    fn add_session(&mut self, from: &str, nick: &str, p: Element) {
        if let Some(o) = self.occupants.get_mut(nick) {
            o.mirrors.push(from.to_string());
        }
        self.by_real.insert(from.to_string(), nick.to_string());
        self.dirty_nicks.insert(nick.to_string());
        tracing::info!(%nick, "another session entered under the same nick");
        for other in self.occupants.keys().filter(|n| n.as_str() != nick) {
            if let Some(mut pr) = self.presence_of(other, nick, &[]) {
                pr.set_attr("to", from);
                self.out.borrow_mut().push(pr);
            }
        }
        let mut codes = vec![110];
        if self.config.whois == Whois::Anyone {
            codes.push(100);
        }
        if let Some(mut own) = self.presence_of(nick, nick, &codes) {
            own.set_attr("to", from);
            if let Some(id) = p.attr("id") {
                own.set_attr("id", id);
            }
            self.out.borrow_mut().push(own);
        }
        let history = p
            .get_child("x", MUC)
            .and_then(|x| x.get_child("history", MUC))
            .cloned();
        // Sent straight to this session (not mirrored to the others).
        let before = self.out.borrow().len();
        self.send_history(from, history.as_ref());
        self.send_subject(from);
        let mut out = self.out.borrow_mut();
        let added: Vec<Element> = out
            .drain(before..)
            .filter(|e| e.attr("to") == Some(from))
            .collect();
        out.extend(added);
    }

    /// One session of a multi-session occupant leaves; true if it was one
    /// of several (the occupant stays).
    fn drop_session(&mut self, from: &str, codes: &[u16]) -> bool {
        let Some(nick) = self.by_real.get(from).cloned() else {
            return false;
        };
        let Some(o) = self.occupants.get_mut(&nick) else {
            return false;
        };
        if o.mirrors.is_empty() {
            return false;
        }
        if o.real == from {
            o.real = o.mirrors.remove(0);
        } else {
            o.mirrors.retain(|m| m != from);
        }
        self.by_real.remove(from);
        self.dirty_nicks.insert(nick.clone());
        let mut to_self = codes.to_vec();
        to_self.push(110);
        if let Some(o) = self.occupants.get(&nick) {
            let p = self.gone_presence(&nick, o, from, true, &to_self, Vec::new());
            self.out.borrow_mut().push(p);
        }
        true
    }

    /// Queue a stanza for one session only (an answer, a query's results,
    /// history and subject for the session that entered): never copied to
    /// the occupant's other sessions.
    fn reply(&self, el: Element) {
        self.out.borrow_mut().push(el);
    }

    fn reply_error(&self, stanza: &Element, condition: StanzaCondition, text: Option<&str>) {
        tracing::info!(condition = condition.name(), "room refused a stanza");
        if let Some(e) = refuse(stanza, condition, text) {
            self.reply(e);
        }
    }

    fn nick_jid(&self, nick: &str) -> String {
        format!("{}/{}", self.jid, nick)
    }

    fn affiliation(&self, real: &str) -> Affiliation {
        self.affiliations
            .get(&bare_of(real))
            .copied()
            .unwrap_or(Affiliation::None)
    }

    fn occupant_id(&self, real: &str) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.salt.to_be_bytes());
        h.update(self.jid.as_str().as_bytes());
        h.update(bare_of(real).as_bytes());
        let d = h.finalize();
        d[..12].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The role an entering occupant gets from its affiliation (§5.1.2).
    fn default_role(&self, aff: Affiliation) -> Role {
        match aff {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            Affiliation::Member => Role::Participant,
            _ if self.config.moderated => Role::Visitor,
            _ => Role::Participant,
        }
    }

    /// `nick`'s presence as `viewer` (a nick) sees it, with `codes`.
    fn presence_of(&self, nick: &str, viewer: &str, codes: &[u16]) -> Option<Element> {
        let o = self.occupants.get(nick)?;
        let v = self.occupants.get(viewer)?;
        let mut p = o.presence.clone();
        p.set_attr("from", self.nick_jid(nick));
        p.set_attr("to", v.real.clone());
        if viewer != nick {
            p.remove_attr("id");
        }
        let mut item = Element::new("item", MUC_USER)
            .with_attr("affiliation", self.affiliation(&o.real).name())
            .with_attr("role", o.role.name());
        if self.sees_real_jids(v) {
            item.set_attr("jid", o.real.clone());
        }
        let mut x = x_user().with_child(item);
        for c in codes {
            x.push_child(Element::new("status", MUC_USER).with_attr("code", c.to_string()));
        }
        p.push_child(x);
        p.push_child(
            Element::new("occupant-id", OCCUPANT_ID).with_attr("id", o.occupant_id.clone()),
        );
        Some(p)
    }

    fn sees_real_jids(&self, viewer: &Occupant) -> bool {
        self.config.whois == Whois::Anyone || viewer.role == Role::Moderator
    }

    /// Unavailable presence of an occupant that left (already removed),
    /// to `to` (a real JID).
    fn gone_presence(
        &self,
        nick: &str,
        o: &Occupant,
        to: &str,
        viewer_sees: bool,
        codes: &[u16],
        extra: Vec<Element>,
    ) -> Element {
        let mut p = Element::new("presence", CLIENT)
            .with_attr("from", self.nick_jid(nick))
            .with_attr("to", to)
            .with_attr("type", "unavailable");
        let mut item = Element::new("item", MUC_USER)
            .with_attr("affiliation", self.affiliation(&o.real).name())
            .with_attr("role", "none");
        if viewer_sees {
            item.set_attr("jid", o.real.clone());
        }
        for e in extra {
            item.push_child(e);
        }
        let mut x = x_user().with_child(item);
        for c in codes {
            x.push_child(Element::new("status", MUC_USER).with_attr("code", c.to_string()));
        }
        p.push_child(x);
        p.push_child(
            Element::new("occupant-id", OCCUPANT_ID).with_attr("id", o.occupant_id.clone()),
        );
        p
    }

    /// Send `nick`'s presence to every occupant (110 and `self_codes`
    /// to itself).
    fn broadcast_presence(&self, nick: &str, codes: &[u16], self_codes: &[u16]) {
        for viewer in self.occupants.keys() {
            let mut c: Vec<u16> = codes.to_vec();
            if viewer == nick {
                c.extend_from_slice(self_codes);
                c.push(110);
            }
            if let Some(p) = self.presence_of(nick, viewer, &c) {
                self.send(p);
            }
        }
    }

    /// Remove `nick` and tell everyone, itself too (§7.14, §8.2, §9.1).
    fn remove_occupant(
        &mut self,
        nick: &str,
        codes: &[u16],
        extra: Vec<Element>,
        status: Option<&Element>,
    ) {
        let Some(o) = self.occupants.remove(nick) else {
            return;
        };
        self.dirty_nicks.insert(nick.to_string());
        self.by_real.remove(&o.real);
        for m in &o.mirrors {
            self.by_real.remove(m);
        }
        self.emptied = self.occupants.is_empty();
        let mut to_self = codes.to_vec();
        to_self.push(110);
        let mut p = self.gone_presence(nick, &o, &o.real, true, &to_self, extra.clone());
        if let Some(s) = status {
            p.push_child(s.clone());
        }
        // Out of the table already: its other sessions are told here.
        for m in &o.mirrors {
            let mut copy = p.clone();
            copy.set_attr("to", m.clone());
            self.send(copy);
        }
        self.send(p);
        for v in self.occupants.values() {
            let mut p = self.gone_presence(
                nick,
                &o,
                &v.real,
                self.sees_real_jids(v),
                codes,
                extra.clone(),
            );
            if let Some(s) = status {
                p.push_child(s.clone());
            }
            self.send(p);
        }
    }

    // ---- presence -------------------------------------------------------

    fn presence(&mut self, p: Element) {
        let Some(from) = p.attr("from").map(str::to_string) else {
            return;
        };
        let nick = p
            .attr("to")
            .and_then(|t| Jid::new(t).ok())
            .and_then(|j| j.resource().map(|r| r.as_str().to_string()));
        match p.attr("type") {
            None => {
                let Some(nick) = nick else {
                    // §7.2.1: entering needs a nick.
                    self.reply_error(&p, StanzaCondition::JidMalformed, Some("a nick is needed"));
                    return;
                };
                match self.by_real.get(&from).cloned() {
                    // A client that lost track of the room joins again
                    // (after a failed self-ping): the whole join again.
                    Some(cur) if cur == nick && p.get_child("x", MUC).is_some() => {
                        self.rejoin(&from, &nick, p)
                    }
                    Some(cur) if cur == nick => self.update_presence(&nick, p),
                    Some(cur) => self.change_nick(&cur, &nick, p),
                    None => self.enter(&from, &nick, p),
                }
            }
            Some("unavailable") => {
                if self.drop_session(&from, &[]) {
                    return;
                }
                if let Some(cur) = self.by_real.get(&from).cloned() {
                    let status = p.get_child("status", ns::CLIENT).cloned();
                    self.remove_occupant(&cur, &[], Vec::new(), status.as_ref());
                }
            }
            // An occupant's client answered with an error: it is gone
            // (§7.2, "kicked for an error", status 333).
            Some("error") => {
                if self.drop_session(&from, &[333]) {
                    return;
                }
                if let Some(cur) = self.by_real.get(&from).cloned() {
                    self.remove_occupant(&cur, &[333], Vec::new(), None);
                }
            }
            _ => {}
        }
    }

    /// The client's presence, as the room keeps it: its own children but
    /// the MUC payload.
    fn kept_presence(p: &Element) -> Element {
        let mut kept = Element::new("presence", CLIENT);
        if let Some(id) = p.attr("id") {
            kept.set_attr("id", id);
        }
        for c in p.elements() {
            if c.ns == MUC || c.ns == MUC_USER || c.is("occupant-id", OCCUPANT_ID) {
                continue;
            }
            kept.push_child(c.clone());
        }
        kept
    }

    fn enter(&mut self, from: &str, nick: &str, p: Element) {
        let aff = self.affiliation(from);
        let creating = self.fresh;
        if aff == Affiliation::Outcast {
            return self.reply_error(&p, StanzaCondition::Forbidden, Some("banned"));
        }
        if !creating && self.config.members_only && aff < Affiliation::Member {
            return self.reply_error(
                &p,
                StanzaCondition::RegistrationRequired,
                Some("members only"),
            );
        }
        // The same account again (another device): one occupant.
        let same_account = self
            .occupants
            .get(nick)
            .is_some_and(|o| bare_of(&o.real) == bare_of(from) && o.mirrors.len() < MAX_SESSIONS);
        if self.occupants.contains_key(nick) && !same_account {
            return self.reply_error(&p, StanzaCondition::Conflict, Some("that nick is taken"));
        }
        if self.reserved_by_other(nick, from) {
            return self.reply_error(
                &p,
                StanzaCondition::Conflict,
                Some("that nick is reserved by a member"),
            );
        }
        if !same_account
            && self.occupants.len() >= self.config.max_users
            && aff < Affiliation::Admin
        {
            return self.reply_error(
                &p,
                StanzaCondition::ServiceUnavailable,
                Some("the room is full"),
            );
        }
        let muc = p.get_child("x", MUC);
        if let Some(secret) = &self.config.password {
            let given = muc
                .and_then(|x| x.get_child("password", MUC))
                .map(|e| e.text());
            if given.as_deref() != Some(secret.as_str()) && aff < Affiliation::Owner {
                return self.reply_error(
                    &p,
                    StanzaCondition::NotAuthorized,
                    Some("a password is needed"),
                );
            }
        }
        if same_account {
            return self.add_session(from, nick, p);
        }
        let history = muc.and_then(|x| x.get_child("history", MUC)).cloned();
        let aff = if creating {
            // §10.1.1: whoever creates the room owns it.
            self.affiliations.insert(bare_of(from), Affiliation::Owner);
            self.fresh = false;
            self.meta_dirty = true;
            Affiliation::Owner
        } else {
            aff
        };
        let occupant = Occupant {
            real: from.to_string(),
            role: self.default_role(aff),
            presence: Self::kept_presence(&p),
            occupant_id: self.occupant_id(from),
            mirrors: Vec::new(),
        };
        self.occupants.insert(nick.to_string(), occupant);
        self.dirty_nicks.insert(nick.to_string());
        self.by_real.insert(from.to_string(), nick.to_string());
        tracing::info!(%nick, created = creating, "occupant entered");
        // §7.2.3: the others' presence first, then its own to all.
        for other in self.occupants.keys().filter(|n| n.as_str() != nick) {
            if let Some(pr) = self.presence_of(other, nick, &[]) {
                self.send(pr);
            }
        }
        let mut self_codes = Vec::new();
        if self.config.whois == Whois::Anyone {
            self_codes.push(100);
        }
        if creating {
            self_codes.push(201);
        }
        self.broadcast_presence(nick, &[], &self_codes);
        self.send_history(from, history.as_ref());
        self.send_subject(from);
    }

    /// The join sequence again for an occupant already in (§7.2.3).
    fn rejoin(&mut self, from: &str, nick: &str, p: Element) {
        if let Some(o) = self.occupants.get_mut(nick) {
            o.presence = Self::kept_presence(&p);
        }
        self.dirty_nicks.insert(nick.to_string());
        for other in self.occupants.keys().filter(|n| n.as_str() != nick) {
            if let Some(pr) = self.presence_of(other, nick, &[]) {
                self.send(pr);
            }
        }
        let mut self_codes = Vec::new();
        if self.config.whois == Whois::Anyone {
            self_codes.push(100);
        }
        self.broadcast_presence(nick, &[], &self_codes);
        let history = p
            .get_child("x", MUC)
            .and_then(|x| x.get_child("history", MUC))
            .cloned();
        self.send_history(from, history.as_ref());
        self.send_subject(from);
    }

    /// §7.2.15: history the occupant asked for (all kept, by default).
    fn send_history(&self, to: &str, ask: Option<&Element>) {
        let max_stanzas = ask
            .and_then(|h| h.attr("maxstanzas"))
            .and_then(|v| v.parse::<usize>().ok());
        let max_chars = ask
            .and_then(|h| h.attr("maxchars"))
            .and_then(|v| v.parse::<usize>().ok());
        let seconds = ask
            .and_then(|h| h.attr("seconds"))
            .and_then(|v| v.parse::<u64>().ok());
        let since = ask
            .and_then(|h| h.attr("since"))
            .and_then(crate::base::time::parse_xep82)
            .map(|micros| SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(micros));
        if max_chars == Some(0) || max_stanzas == Some(0) {
            return;
        }
        let now = SystemTime::now();
        let mut chosen: Vec<(&Element, &SystemTime)> = self
            .history
            .iter()
            .map(|(_, m, t)| (m, t))
            .filter(|(_, t)| {
                seconds.is_none_or(|s| {
                    now.duration_since(**t)
                        .map(|d| d.as_secs() <= s)
                        .unwrap_or(true)
                })
            })
            .filter(|(_, t)| since.is_none_or(|s| **t >= s))
            .collect();
        if let Some(n) = max_stanzas {
            let skip = chosen.len().saturating_sub(n);
            chosen.drain(..skip);
        }
        if let Some(limit) = max_chars {
            let mut total = 0;
            let mut keep = chosen.len();
            for (i, (m, _)) in chosen.iter().enumerate().rev() {
                total += m.to_xml(CLIENT).len();
                if total > limit {
                    break;
                }
                keep = i;
            }
            chosen.drain(..keep);
        }
        for (m, t) in chosen {
            let mut m = m.clone();
            m.set_attr("to", to);
            m.push_child(
                Element::new("delay", DELAY)
                    .with_attr("from", self.jid.to_string())
                    .with_attr(
                        "stamp",
                        crate::base::time::xep82(
                            t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default(),
                        ),
                    ),
            );
            self.send(m);
        }
    }

    /// §7.2.16: the subject, empty when none was set.
    fn send_subject(&self, to: &str) {
        let (from, text) = self
            .subject
            .clone()
            .unwrap_or_else(|| (self.jid.to_string(), String::new()));
        self.reply(
            Element::new("message", CLIENT)
                .with_attr("from", from)
                .with_attr("to", to)
                .with_attr("type", "groupchat")
                .with_attr("id", format!("subject-{:x}", rand::random::<u32>()))
                .with_child(text_el("subject", CLIENT, &text)),
        );
    }

    fn update_presence(&mut self, nick: &str, p: Element) {
        if let Some(o) = self.occupants.get_mut(nick) {
            o.presence = Self::kept_presence(&p);
        }
        self.dirty_nicks.insert(nick.to_string());
        self.broadcast_presence(nick, &[], &[]);
    }

    /// §7.6: unavailable with 303 and the new nick, then available.
    fn change_nick(&mut self, old: &str, new: &str, p: Element) {
        if self.occupants.contains_key(new) {
            return self.reply_error(&p, StanzaCondition::Conflict, Some("that nick is taken"));
        }
        let real = self.occupants.get(old).map(|o| o.real.clone());
        if real.is_some_and(|r| self.reserved_by_other(new, &r)) {
            return self.reply_error(
                &p,
                StanzaCondition::Conflict,
                Some("that nick is reserved by a member"),
            );
        }
        let Some(mut o) = self.occupants.remove(old) else {
            return;
        };
        for v in self.occupants.values().chain(std::iter::once(&o)) {
            let sees = v.real == o.real || self.sees_real_jids(v);
            let mut codes = vec![303];
            if v.real == o.real {
                codes.push(110);
            }
            let mut gone = self.gone_presence(old, &o, &v.real, sees, &codes, Vec::new());
            // The item keeps the role and carries the new nick.
            if let Some(x) = gone.children.iter_mut().find_map(|c| match c {
                crate::base::xml::Node::Element(e) if e.is("x", MUC_USER) => Some(e),
                _ => None,
            }) {
                if let Some(item) = x.children.iter_mut().find_map(|c| match c {
                    crate::base::xml::Node::Element(e) if e.name == "item" => Some(e),
                    _ => None,
                }) {
                    item.set_attr("nick", new);
                    item.set_attr("role", o.role.name());
                }
            }
            // Its other sessions (out of the table for the moment).
            if v.real == o.real {
                for m in &o.mirrors {
                    let mut copy = gone.clone();
                    copy.set_attr("to", m.clone());
                    self.send(copy);
                }
            }
            self.send(gone);
        }
        o.presence = Self::kept_presence(&p);
        self.by_real.insert(o.real.clone(), new.to_string());
        for m in &o.mirrors {
            self.by_real.insert(m.clone(), new.to_string());
        }
        self.occupants.insert(new.to_string(), o);
        self.dirty_nicks.insert(old.to_string());
        self.dirty_nicks.insert(new.to_string());
        self.broadcast_presence(new, &[], &[]);
    }

    // ---- messages -------------------------------------------------------

    fn message(&mut self, m: Element) {
        let Some(from) = m.attr("from").map(str::to_string) else {
            return;
        };
        let to_nick = m
            .attr("to")
            .and_then(|t| Jid::new(t).ok())
            .and_then(|j| j.resource().map(|r| r.as_str().to_string()));
        let mtype = m.attr("type").unwrap_or("normal");
        if mtype == "error" {
            match (&to_nick, self.by_real.get(&from).cloned()) {
                // An answer to a private message: to its sender.
                (Some(nick), Some(sender)) => {
                    if let Some(target) = self.occupants.get(nick) {
                        let mut out = m.clone();
                        out.set_attr("from", self.nick_jid(&sender));
                        out.set_attr("to", target.real.clone());
                        self.send(out);
                    }
                }
                // A message the room sent bounced: that session is gone
                // (the occupant, if it was its only one).
                (None, Some(cur)) if !self.drop_session(&from, &[333]) => {
                    self.remove_occupant(&cur, &[333], Vec::new(), None)
                }
                _ => {}
            }
            return;
        }
        match (to_nick, mtype) {
            (None, "groupchat") => self.groupchat(&from, m),
            (None, _) => self.addressed_to_room(&from, m),
            (Some(_), "groupchat") => self.reply_error(
                &m,
                StanzaCondition::BadRequest,
                Some("groupchat goes to the room"),
            ),
            (Some(nick), _) => self.private(&from, &nick, m),
        }
    }

    /// Whether `from` (an occupant) may send one more message now.
    fn within_rate(&mut self, from: &str) -> bool {
        let rate = self.limits.messages_per_sec;
        if rate == 0 {
            return true;
        }
        if self.rates.len() > 4 * self.limits.max_occupants {
            let present: std::collections::HashSet<String> =
                self.occupants.values().map(|o| bare_of(&o.real)).collect();
            self.rates.retain(|k, _| present.contains(k));
        }
        self.rates
            .entry(bare_of(from))
            .or_insert_with(|| crate::base::rate_limit::RateLimit::new(rate, rate * 2))
            .try_take(1.0)
    }

    /// The nick of `from`, an occupant within its message rate; otherwise
    /// the sender is told why (not-acceptable, resource-constraint).
    fn admitted_sender(&mut self, from: &str, m: &Element) -> Option<String> {
        let Some(nick) = self.by_real.get(from).cloned() else {
            self.reply_error(
                m,
                StanzaCondition::NotAcceptable,
                Some("you are not in the room"),
            );
            return None;
        };
        if !self.within_rate(from) {
            self.reply_error(
                m,
                StanzaCondition::ResourceConstraint,
                Some("too many messages; slow down"),
            );
            return None;
        }
        Some(nick)
    }

    /// §7.4: a message to all occupants; §8.1: a subject change.
    fn groupchat(&mut self, from: &str, m: Element) {
        let Some(nick) = self.admitted_sender(from, &m) else {
            return;
        };
        let role = self
            .occupants
            .get(&nick)
            .map(|o| o.role)
            .unwrap_or(Role::None);
        if role < Role::Participant {
            return self.reply_error(
                &m,
                StanzaCondition::Forbidden,
                Some("visitors may not speak"),
            );
        }
        let subject = m.get_child("subject", ns::CLIENT).map(|s| s.text());
        let body = m.get_child("body", ns::CLIENT).is_some();
        if let (Some(text), false) = (&subject, body) {
            if role < Role::Moderator && !self.config.change_subject {
                return self.reply_error(
                    &m,
                    StanzaCondition::Forbidden,
                    Some("only moderators may change the subject"),
                );
            }
            self.subject = Some((self.nick_jid(&nick), text.clone()));
            self.meta_dirty = true;
        }
        let mut out = Element::new("message", CLIENT)
            .with_attr("from", self.nick_jid(&nick))
            .with_attr("type", "groupchat");
        if let Some(id) = m.attr("id") {
            out.set_attr("id", id);
        }
        if let Some(lang) = m.attr("xml:lang") {
            out.set_attr("xml:lang", lang);
        }
        let room = self.jid.to_string();
        for c in m.elements() {
            // A client may not claim the room's ids (XEP-0359 §3.1,
            // XEP-0421 §4), a time (XEP-0203), addresses (XEP-0033) or
            // what the room says of its occupants.
            let claims_room = c.is("stanza-id", STANZA_ID)
                && c.attr("by")
                    .and_then(|b| BareJid::new(b).ok())
                    .is_some_and(|b| b == self.jid);
            // Nor what only the room says of a moderated message
            // (XEP-0425): a forged tombstone or moderation notice.
            let forged = c.is("occupant-id", OCCUPANT_ID)
                || c.is("delay", DELAY)
                || c.is("addresses", "http://jabber.org/protocol/address")
                || c.is("x", MUC_USER)
                || c.is("retracted", moderation::RETRACT)
                || c.is("moderated", moderation::MODERATE)
                || (c.is("retract", moderation::RETRACT)
                    && c.get_child("moderated", moderation::MODERATE).is_some());
            if claims_room || forged {
                continue;
            }
            out.push_child(c.clone());
        }
        // Archived (XEP-0313 on the room): the stanza-id is the archive's
        // id, so clients page from it.
        let archived = body && self.config.archiving;
        let sid = if archived {
            let id = self.next_archive_id();
            crate::model::state::archive::ArchiveId::text(id)
        } else {
            uuid_like()
        };
        out.push_child(
            Element::new("stanza-id", STANZA_ID)
                .with_attr("id", sid.clone())
                .with_attr("by", room.clone()),
        );
        if let Some(o) = self.occupants.get(&nick) {
            out.push_child(
                Element::new("occupant-id", OCCUPANT_ID).with_attr("id", o.occupant_id.clone()),
            );
        }
        for o in self.occupants.values() {
            let mut copy = out.clone();
            copy.set_attr("to", o.real.clone());
            self.send(copy);
        }
        if archived {
            if let Some(id) = crate::model::state::archive::ArchiveId::parse(&sid) {
                self.archive_pending
                    .push(crate::model::state::ArchiveEntry {
                        user: room,
                        id,
                        with: self.nick_jid(&nick),
                        xml: out.to_xml(CLIENT),
                    });
            }
        }
        if body && self.config.history_length > 0 {
            self.push_history(out);
        }
    }

    /// §7.5: a private message to one occupant, from an occupant.
    fn private(&mut self, from: &str, to_nick: &str, m: Element) {
        let Some(nick) = self.admitted_sender(from, &m) else {
            return;
        };
        let Some(target) = self.occupants.get(to_nick) else {
            return self.reply_error(&m, StanzaCondition::ItemNotFound, Some("no such occupant"));
        };
        let role = self
            .occupants
            .get(&nick)
            .map(|o| o.role)
            .unwrap_or(Role::None);
        let allowed = match self.config.allow_pm {
            AllowPm::Anyone => true,
            AllowPm::Participants => role >= Role::Participant,
            AllowPm::Moderators => role >= Role::Moderator,
            AllowPm::Nobody => false,
        };
        if !allowed {
            return self.reply_error(
                &m,
                StanzaCondition::Forbidden,
                Some("private messages are not allowed"),
            );
        }
        let mut out = m.clone();
        out.set_attr("from", self.nick_jid(&nick));
        out.set_attr("to", target.real.clone());
        if out.get_child("x", MUC_USER).is_none() {
            out.push_child(x_user());
        }
        self.send(out);
    }

    /// A message to the room itself: mediated invitations and declines
    /// (§7.8.2, §7.8.3), voice requests and their answers (§7.13, §8.6,
    /// `room/voice_request.rs`); anything else is refused.
    fn addressed_to_room(&mut self, from: &str, m: Element) {
        if self.voice_request(from, &m) {
            return;
        }
        let Some(x) = m.get_child("x", MUC_USER) else {
            return self.reply_error(
                &m,
                StanzaCondition::BadRequest,
                Some("send groupchat messages to the room"),
            );
        };
        // One of each per message: the room is no relay for many.
        let invites: Vec<&Element> = x
            .elements()
            .filter(|e| e.is("invite", MUC_USER))
            .take(1)
            .collect();
        let declines: Vec<&Element> = x
            .elements()
            .filter(|e| e.is("decline", MUC_USER))
            .take(1)
            .collect();
        if invites.is_empty() && declines.is_empty() {
            return self.reply_error(&m, StanzaCondition::BadRequest, None);
        }
        let inside = self.by_real.contains_key(from);
        let aff = self.affiliation(from);
        for inv in invites {
            let Some(to) = inv.attr("to").and_then(|t| Jid::new(t).ok()) else {
                return self.reply_error(&m, StanzaCondition::JidMalformed, None);
            };
            if !inside {
                return self.reply_error(
                    &m,
                    StanzaCondition::NotAcceptable,
                    Some("you are not in the room"),
                );
            }
            if !self.config.allow_invites && aff < Affiliation::Admin {
                return self.reply_error(
                    &m,
                    StanzaCondition::Forbidden,
                    Some("invitations are not allowed"),
                );
            }
            // §9.3: an admin's invitation to a members-only room makes a member.
            if self.config.members_only {
                let bare = to.to_bare().to_string();
                if self.affiliation(&bare) < Affiliation::Member {
                    self.affiliations.insert(bare, Affiliation::Member);
                    self.meta_dirty = true;
                }
            }
            let mut invite = Element::new("invite", MUC_USER).with_attr("from", bare_of(from));
            if let Some(r) = inv.get_child("reason", MUC_USER) {
                invite.push_child(r.clone());
            }
            let mut xo = x_user().with_child(invite);
            if let Some(pw) = &self.config.password {
                xo.push_child(text_el("password", MUC_USER, pw));
            }
            let mut out = Element::new("message", CLIENT)
                .with_attr("from", self.jid.to_string())
                .with_attr("to", to.to_string())
                .with_child(xo);
            // XEP-0249's form too, for clients that read only that.
            out.push_child(Element::new("x", CONFERENCE).with_attr("jid", self.jid.to_string()));
            if let Some(id) = m.attr("id") {
                out.set_attr("id", id);
            }
            self.send(out);
        }
        for dec in declines {
            let Some(to) = dec.attr("to").and_then(|t| Jid::new(t).ok()) else {
                continue;
            };
            let mut decline = Element::new("decline", MUC_USER).with_attr("from", bare_of(from));
            if let Some(r) = dec.get_child("reason", MUC_USER) {
                decline.push_child(r.clone());
            }
            self.send(
                Element::new("message", CLIENT)
                    .with_attr("from", self.jid.to_string())
                    .with_attr("to", to.to_string())
                    .with_child(x_user().with_child(decline)),
            );
        }
    }

    // ---- iq -------------------------------------------------------------

    fn iq(&mut self, iq: Element) {
        let Some(from) = iq.attr("from").map(str::to_string) else {
            return;
        };
        let to_nick = iq
            .attr("to")
            .and_then(|t| Jid::new(t).ok())
            .and_then(|j| j.resource().map(|r| r.as_str().to_string()));
        let kind = iq.attr("type").unwrap_or("");
        if let Some(nick) = to_nick {
            return self.iq_to_occupant(&from, &nick, iq);
        }
        if !matches!(kind, "get" | "set") {
            return;
        }
        let Some(payload) = iq.elements().next().cloned() else {
            return self.reply_error(&iq, StanzaCondition::BadRequest, None);
        };
        let get = kind == "get";
        match (payload.ns.as_str(), payload.name.as_str(), get) {
            (ns::DISCO_INFO, "query", true) if payload.attr("node").is_none() => {
                self.reply(crate::im::modules::result(&iq, Some(self.disco_info())))
            }
            (ns::DISCO_INFO, "query", true) if payload.attr("node") == Some("x-roomuser-item") => {
                self.reserved_nick_query(&from, &iq)
            }
            (ns::DISCO_ITEMS, "query", true) => self.reply(crate::im::modules::result(
                &iq,
                Some(Element::new("query", ns::DISCO_ITEMS)),
            )),
            (ns::PING, "ping", true) => self.reply(crate::im::modules::result(&iq, None)),
            (MUC_OWNER, "query", _) => self.owner_iq(&from, iq, &payload, get),
            (MAM, _, _) => self.archive_iq(&from, iq),
            (MUC_ADMIN, "query", _) => self.admin_iq(&from, iq, &payload, get),
            (moderation::MODERATE, "moderate", false) => self.moderate(&from, iq, &payload),
            (registration::REGISTER, "query", _) => self.register_iq(&from, iq, &payload, get),
            _ => self.reply_error(&iq, StanzaCondition::ServiceUnavailable, None),
        }
    }

    /// XEP-0313 on the room: occupants and members read its archive, and
    /// anyone may read that of a public, open room.
    fn archive_iq(&mut self, from: &str, iq: Element) {
        let open =
            self.config.public && !self.config.members_only && self.config.password.is_none();
        let allowed = self.by_real.contains_key(from)
            || self.affiliation(from) >= Affiliation::Member
            || open;
        if !allowed || self.affiliation(from) == Affiliation::Outcast {
            return self.reply_error(
                &iq,
                StanzaCondition::Forbidden,
                Some("not a member of the room"),
            );
        }
        for el in self.host.archive_query(self.jid.as_str(), &iq) {
            self.reply(el);
        }
    }

    fn disco_info(&self) -> Element {
        let mut q = Element::new("query", ns::DISCO_INFO).with_child(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "conference")
                .with_attr("type", "text")
                .with_attr(
                    "name",
                    if self.config.name.is_empty() {
                        self.jid
                            .node()
                            .map(|n| n.as_str().to_string())
                            .unwrap_or_default()
                    } else {
                        self.config.name.clone()
                    },
                ),
        );
        let mut features = vec![
            MUC,
            ns::DISCO_INFO,
            ns::PING,
            STANZA_ID,
            OCCUPANT_ID,
            "http://jabber.org/protocol/muc#self-ping-optimization",
            "http://jabber.org/protocol/muc#stable_id",
            moderation::MODERATE,
            moderation::RETRACT,
            registration::REGISTER,
            voice_request::REQUEST,
        ];
        features.extend(self.config.features());
        if self.config.archiving {
            // The room's archive answers the same queries as an account's
            // (ids, before-id/after-id, flip-page: XEP-0313 §6.3).
            features.push(MAM);
            features.push(crate::im::modules::mam::NS_EXTENDED);
        }
        for f in features {
            q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
        }
        let subject = self.subject.as_ref().map(|(_, s)| s.as_str()).unwrap_or("");
        q.push_child(self.config.info_form(self.occupants.len(), subject));
        q
    }

    /// XEP-0410 self-ping, and iqs passed between occupants (§7.7): a
    /// request goes to the occupant's real JID from the sender's nick, a
    /// response comes back from the occupant to the asker's nick.
    fn iq_to_occupant(&mut self, from: &str, nick: &str, iq: Element) {
        let request = matches!(iq.attr("type"), Some("get") | Some("set"));
        // An answer to an iq the room passed on: from the occupant (its
        // client, or its account for a vCard) back to the asker.
        if !request {
            let responder = self.by_real.get(from).cloned().or_else(|| {
                self.occupants
                    .iter()
                    .find(|(_, o)| bare_of(&o.real) == from)
                    .map(|(n, _)| n.clone())
            });
            if let (Some(r), Some(target)) = (responder, self.occupants.get(nick)) {
                let mut out = iq.clone();
                out.set_attr("from", self.nick_jid(&r));
                out.set_attr("to", target.real.clone());
                self.send(out);
            }
            return;
        }
        let Some(sender) = self.by_real.get(from).cloned() else {
            // XEP-0410 §3: not joined.
            return self.reply_error(
                &iq,
                StanzaCondition::NotAcceptable,
                Some("you are not in the room"),
            );
        };
        if sender == nick && iq.get_child("ping", ns::PING).is_some() {
            return self.reply(crate::im::modules::result(&iq, None));
        }
        let Some(target) = self.occupants.get(nick) else {
            return self.reply_error(&iq, StanzaCondition::ItemNotFound, None);
        };
        let mut out = iq.clone();
        out.set_attr("from", self.nick_jid(&sender));
        // vCards live on the account, not the client (XEP-0054).
        let vcard = out.get_child("vCard", "vcard-temp").is_some();
        out.set_attr(
            "to",
            if vcard {
                bare_of(&target.real)
            } else {
                target.real.clone()
            },
        );
        // One session answers (not each of a multi-session occupant's).
        self.reply(out);
    }

    /// §10: configuration and destruction, for owners.
    fn owner_iq(&mut self, from: &str, iq: Element, q: &Element, get: bool) {
        if self.affiliation(from) < Affiliation::Owner {
            return self.reply_error(&iq, StanzaCondition::Forbidden, Some("owners only"));
        }
        if get {
            let form = self
                .config
                .form(self.limits.max_occupants, self.limits.history);
            return self.reply(crate::im::modules::result(
                &iq,
                Some(Element::new("query", MUC_OWNER).with_child(form)),
            ));
        }
        if let Some(d) = q.get_child("destroy", MUC_OWNER) {
            return self.destroy(iq.clone(), d.clone());
        }
        let Some(x) = q.get_child("x", DATA) else {
            return self.reply_error(&iq, StanzaCondition::BadRequest, None);
        };
        match x.attr("type") {
            Some("cancel") => self.reply(crate::im::modules::result(&iq, None)),
            Some("submit") => {
                match self
                    .config
                    .apply(x, self.limits.max_occupants, self.limits.history)
                {
                    Ok(c) => {
                        let privacy_changed = c.whois != self.config.whois;
                        let now_members_only = c.members_only && !self.config.members_only;
                        self.config = c;
                        self.meta_dirty = true;
                        self.trim_history();
                        self.reply(crate::im::modules::result(&iq, None));
                        // §9.4: non-members leave a room that became
                        // members-only (322).
                        if now_members_only {
                            let out: Vec<String> = self
                                .occupants
                                .iter()
                                .filter(|(_, o)| self.affiliation(&o.real) < Affiliation::Member)
                                .map(|(n, _)| n.clone())
                                .collect();
                            for nick in out {
                                self.remove_occupant(&nick, &[322], Vec::new(), None);
                            }
                        }
                        // §10.2.1: 104, and 172/173 when real JIDs show or hide.
                        let mut x = x_user()
                            .with_child(Element::new("status", MUC_USER).with_attr("code", "104"));
                        if privacy_changed {
                            let code = if self.config.whois == Whois::Anyone {
                                "172"
                            } else {
                                "173"
                            };
                            x.push_child(Element::new("status", MUC_USER).with_attr("code", code));
                        }
                        for o in self.occupants.values() {
                            self.send(
                                Element::new("message", CLIENT)
                                    .with_attr("from", self.jid.to_string())
                                    .with_attr("to", o.real.clone())
                                    .with_attr("type", "groupchat")
                                    .with_attr("id", uuid_like())
                                    .with_child(x.clone()),
                            );
                        }
                    }
                    Err(why) => self.reply_error(&iq, StanzaCondition::NotAcceptable, Some(&why)),
                }
            }
            _ => self.reply_error(&iq, StanzaCondition::BadRequest, None),
        }
    }

    /// §10.9: everyone leaves with the reason and the alternate venue.
    fn destroy(&mut self, iq: Element, d: Element) {
        let mut destroy = Element::new("destroy", MUC_USER);
        if let Some(j) = d.attr("jid") {
            destroy.set_attr("jid", j);
        }
        if let Some(r) = d.get_child("reason", MUC_OWNER) {
            destroy.push_child(text_el("reason", MUC_USER, &r.text()));
        }
        let nicks: Vec<String> = self.occupants.keys().cloned().collect();
        for n in nicks {
            if let Some(o) = self.occupants.remove(&n) {
                self.dirty_nicks.insert(n.clone());
                self.by_real.remove(&o.real);
                let mut p = Element::new("presence", CLIENT)
                    .with_attr("from", self.nick_jid(&n))
                    .with_attr("to", o.real.clone())
                    .with_attr("type", "unavailable");
                p.push_child(
                    x_user()
                        .with_child(
                            Element::new("item", MUC_USER)
                                .with_attr("affiliation", "none")
                                .with_attr("role", "none"),
                        )
                        .with_child(destroy.clone()),
                );
                for m in &o.mirrors {
                    self.by_real.remove(m);
                    let mut copy = p.clone();
                    copy.set_attr("to", m.clone());
                    self.send(copy);
                }
                self.send(p);
            }
        }
        self.config.persistent = false;
        self.history_dropped
            .extend(self.history.drain(..).map(|(s, _, _)| s));
        self.affiliations.clear();
        self.reserved.clear();
        self.registered_members.clear();
        self.subject = None;
        self.deleted = true;
        self.reply(crate::im::modules::result(&iq, None));
        tracing::info!("room destroyed");
    }

    /// §8 and §9: lists by role or affiliation, and changes to them.
    fn admin_iq(&mut self, from: &str, iq: Element, q: &Element, get: bool) {
        let my_aff = self.affiliation(from);
        let my_role = self
            .by_real
            .get(from)
            .and_then(|n| self.occupants.get(n))
            .map(|o| o.role)
            .unwrap_or(Role::None);
        let items: Vec<Element> = q
            .elements()
            .filter(|e| e.is("item", MUC_ADMIN))
            .cloned()
            .collect();
        if items.is_empty() {
            return self.reply_error(&iq, StanzaCondition::BadRequest, None);
        }
        if get {
            let mut out = Element::new("query", MUC_ADMIN);
            for item in &items {
                if let Some(a) = item.attr("affiliation").and_then(Affiliation::parse) {
                    // Members of a members-only room whose real JIDs
                    // everyone sees read who belongs (not who is banned):
                    // clients encrypt to every member's devices (OMEMO in
                    // a private group needs the list, XEP-0384 §5.6).
                    let member_reads = my_aff >= Affiliation::Member
                        && self.config.members_only
                        && self.config.whois == Whois::Anyone
                        && a != Affiliation::Outcast;
                    if my_aff < Affiliation::Admin
                        && !(a == Affiliation::Member && my_role == Role::Moderator)
                        && !member_reads
                    {
                        return self.reply_error(&iq, StanzaCondition::Forbidden, None);
                    }
                    let mut jids: Vec<(&String, &Affiliation)> =
                        self.affiliations.iter().filter(|(_, v)| **v == a).collect();
                    jids.sort();
                    for (j, _) in jids {
                        out.push_child(
                            Element::new("item", MUC_ADMIN)
                                .with_attr("affiliation", a.name())
                                .with_attr("jid", j.clone()),
                        );
                    }
                } else if let Some(r) = item.attr("role").and_then(Role::parse) {
                    if my_role < Role::Moderator {
                        return self.reply_error(&iq, StanzaCondition::Forbidden, None);
                    }
                    for (n, o) in self.occupants.iter().filter(|(_, o)| o.role == r) {
                        out.push_child(
                            Element::new("item", MUC_ADMIN)
                                .with_attr("role", r.name())
                                .with_attr("nick", n.clone())
                                .with_attr("jid", o.real.clone())
                                .with_attr("affiliation", self.affiliation(&o.real).name()),
                        );
                    }
                } else {
                    return self.reply_error(&iq, StanzaCondition::BadRequest, None);
                }
            }
            return self.reply(crate::im::modules::result(&iq, Some(out)));
        }
        // Check every item first: a set is all or nothing (§9.1 ff).
        enum Change {
            Role(String, Role, Option<String>),
            Aff(String, Affiliation, Option<String>),
        }
        let actor = self.by_real.get(from).cloned();
        let mut changes = Vec::new();
        for item in &items {
            let reason = item.get_child("reason", MUC_ADMIN).map(|r| r.text());
            if let Some(a) = item.attr("affiliation") {
                let Some(a) = Affiliation::parse(a) else {
                    return self.reply_error(
                        &iq,
                        StanzaCondition::BadRequest,
                        Some("unknown affiliation"),
                    );
                };
                let Some(jid) = item
                    .attr("jid")
                    .and_then(|j| BareJid::new(j).ok())
                    .or_else(|| {
                        item.attr("nick")
                            .and_then(|n| self.occupants.get(n))
                            .and_then(|o| BareJid::new(&bare_of(&o.real)).ok())
                    })
                else {
                    return self.reply_error(
                        &iq,
                        StanzaCondition::JidMalformed,
                        Some("a jid is needed"),
                    );
                };
                let target = jid.to_string();
                let current = self.affiliation(&target);
                // §9/§10: admins manage members and outcasts below admin;
                // owners manage everything.
                let allowed = match my_aff {
                    Affiliation::Owner => true,
                    Affiliation::Admin => current < Affiliation::Admin && a < Affiliation::Admin,
                    _ => false,
                };
                if !allowed {
                    return self.reply_error(&iq, StanzaCondition::NotAllowed, None);
                }
                let owners = self
                    .affiliations
                    .values()
                    .filter(|v| **v == Affiliation::Owner)
                    .count();
                if current == Affiliation::Owner && a != Affiliation::Owner && owners <= 1 {
                    return self.reply_error(
                        &iq,
                        StanzaCondition::Conflict,
                        Some("the room needs an owner"),
                    );
                }
                changes.push(Change::Aff(target, a, reason));
            } else if let Some(r) = item.attr("role") {
                let Some(r) = Role::parse(r) else {
                    return self.reply_error(
                        &iq,
                        StanzaCondition::BadRequest,
                        Some("unknown role"),
                    );
                };
                let Some(nick) = item.attr("nick") else {
                    return self.reply_error(
                        &iq,
                        StanzaCondition::BadRequest,
                        Some("a nick is needed"),
                    );
                };
                let Some(o) = self.occupants.get(nick) else {
                    return self.reply_error(&iq, StanzaCondition::ItemNotFound, None);
                };
                if my_role < Role::Moderator {
                    return self.reply_error(&iq, StanzaCondition::Forbidden, None);
                }
                // §8.2: nobody kicks or silences an admin or owner, or
                // someone of a higher affiliation.
                let their_aff = self.affiliation(&o.real);
                if r < Role::Participant && (their_aff >= Affiliation::Admin || their_aff > my_aff)
                {
                    return self.reply_error(&iq, StanzaCondition::NotAllowed, None);
                }
                // §9.7: only admins revoke moderation, never an admin's
                // or an owner's.
                if o.role == Role::Moderator
                    && r < Role::Moderator
                    && (my_aff < Affiliation::Admin || their_aff >= Affiliation::Admin)
                {
                    return self.reply_error(&iq, StanzaCondition::NotAllowed, None);
                }
                if r == Role::Moderator && my_aff < Affiliation::Admin {
                    return self.reply_error(&iq, StanzaCondition::NotAllowed, None);
                }
                changes.push(Change::Role(nick.to_string(), r, reason));
            } else {
                return self.reply_error(&iq, StanzaCondition::BadRequest, None);
            }
        }
        self.reply(crate::im::modules::result(&iq, None));
        for c in changes {
            match c {
                Change::Role(nick, Role::None, reason) => {
                    tracing::info!(%nick, "occupant kicked");
                    let extra = why(actor.as_deref(), reason.as_deref());
                    self.remove_occupant(&nick, &[307], extra, None);
                }
                Change::Role(nick, r, _) => {
                    if let Some(o) = self.occupants.get_mut(&nick) {
                        o.role = r;
                    }
                    self.dirty_nicks.insert(nick.clone());
                    self.broadcast_presence(&nick, &[], &[]);
                }
                Change::Aff(jid, a, reason) => {
                    let extra = why(actor.as_deref(), reason.as_deref());
                    self.set_affiliation(&jid, a, extra);
                }
            }
        }
    }

    /// `jid`'s affiliation becomes `a` (§9, §10), and its occupants feel
    /// it: banned (301, with `ban_why`), out of a members-only room
    /// (321), or shown with their new affiliation and role.
    fn set_affiliation(&mut self, jid: &str, a: Affiliation, ban_why: Vec<Element>) {
        if a == Affiliation::None {
            self.affiliations.remove(jid);
        } else {
            self.affiliations.insert(jid.to_string(), a);
        }
        self.affiliation_changed(jid, a);
        self.meta_dirty = true;
        let present: Vec<String> = self
            .occupants
            .iter()
            .filter(|(_, o)| bare_of(&o.real) == jid)
            .map(|(n, _)| n.clone())
            .collect();
        for nick in present {
            if a == Affiliation::Outcast {
                tracing::info!(%nick, "occupant banned");
                self.remove_occupant(&nick, &[301], ban_why.clone(), None);
            } else if self.config.members_only && a < Affiliation::Member {
                self.remove_occupant(&nick, &[321], Vec::new(), None);
            } else {
                let role = self.default_role(a);
                if let Some(o) = self.occupants.get_mut(&nick) {
                    o.role = role;
                }
                self.dirty_nicks.insert(nick.clone());
                self.broadcast_presence(&nick, &[], &[]);
            }
        }
    }
}

/// The `<actor/>` and `<reason/>` of a kick or ban (§8.2, §9.1).
fn why(actor: Option<&str>, reason: Option<&str>) -> Vec<Element> {
    let mut v = Vec::new();
    if let Some(a) = actor {
        v.push(Element::new("actor", MUC_USER).with_attr("nick", a));
    }
    if let Some(r) = reason.filter(|r| !r.is_empty()) {
        v.push(text_el("reason", MUC_USER, r));
    }
    v
}

fn bare_of(full: &str) -> String {
    Jid::new(full)
        .map(|j| j.to_bare().to_string())
        .unwrap_or_else(|_| full.to_string())
}

/// A random id (XEP-0359 stanza-ids are opaque; 128 random bits).
fn uuid_like() -> String {
    let v: u128 = rand::random();
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affiliations_and_roles_are_ordered_by_power() {
        assert!(Affiliation::Owner > Affiliation::Admin);
        assert!(Affiliation::Member > Affiliation::None);
        assert!(Affiliation::None > Affiliation::Outcast);
        assert!(Role::Moderator > Role::Participant && Role::Participant > Role::Visitor);
        assert_eq!(Affiliation::parse("admin"), Some(Affiliation::Admin));
        assert_eq!(Role::parse("bogus"), None);
    }

    /// A room record written before registration (no `nicks`) still
    /// reads, and one with registered nicks keeps them.
    #[test]
    fn room_records_with_and_without_registered_nicks() {
        let config = serde_json::to_value(RoomConfig::instant(10, 10, true)).expect("config");
        let old = serde_json::json!({
            "config": config, "affiliations": [["a@x", "owner"]], "subject": null, "salt": 7
        });
        let m: Meta = serde_json::from_value(old).expect("an old record reads");
        assert!(m.nicks.is_empty());
        assert!(!serde_json::to_string(&m).expect("json").contains("nicks"));
        let new = Meta {
            nicks: vec![("b@x".into(), "bee".into())],
            ..m
        };
        let back: Meta =
            serde_json::from_str(&serde_json::to_string(&new).expect("json")).expect("reads");
        assert_eq!(back.nicks, vec![("b@x".to_string(), "bee".to_string())]);
    }
}
