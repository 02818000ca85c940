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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use actix::prelude::*;
use jid::{BareJid, Jid};

use super::room_config::{AllowPm, RoomConfig, Whois};
use super::{
    refuse, text_el, x_user, Directory, Limits, Muc, CLIENT, CONFERENCE, DATA, DELAY, MUC,
    MUC_ADMIN, MUC_OWNER, MUC_USER, OCCUPANT_ID, STANZA_ID,
};
use crate::services::Host;
use crate::stanza_error::StanzaCondition;
use crate::xml::{ns, Element};

/// A stanza for the room or one of its occupants.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stanza(pub Element);

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
    fn name(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }

    fn parse(s: &str) -> Option<Affiliation> {
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

struct Occupant {
    /// The real full JID.
    real: String,
    role: Role,
    /// The client's last presence to the room, without the MUC payload.
    presence: Element,
    /// XEP-0421: stable for one real bare JID in this room.
    occupant_id: String,
}

pub struct Room {
    jid: BareJid,
    host: Arc<dyn Host>,
    directory: Arc<Directory>,
    service: Weak<Muc>,
    limits: Limits,
    config: RoomConfig,
    /// By nick.
    occupants: BTreeMap<String, Occupant>,
    /// Real full JID -> nick.
    by_real: HashMap<String, String>,
    /// Real bare JID -> affiliation (none is not kept).
    affiliations: HashMap<String, Affiliation>,
    /// (who set it, as room/nick; the text).
    subject: Option<(String, String)>,
    history: VecDeque<(Element, SystemTime)>,
    /// No occupant has entered yet: the first one creates the room (201).
    fresh: bool,
    /// Out of the directory: stanzas go back to the service.
    retired: bool,
    salt: u64,
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
        if self.retired {
            // Queued before the room left the directory: the service
            // starts a new room for it if it is a join.
            match self.service.upgrade() {
                Some(s) => s.dispatch(msg.0, &self.host),
                None => tracing::info!(room = %self.jid, "stanza dropped: service gone"),
            }
            return;
        }
        let el = msg.0;
        let span =
            tracing::info_span!("room", room = %self.jid, from = el.attr("from").unwrap_or(""));
        let _g = span.enter();
        match el.name.as_str() {
            "presence" => self.presence(el),
            "message" => self.message(el),
            "iq" => self.iq(el),
            _ => {}
        }
        self.publish(ctx);
    }
}

impl Room {
    pub(crate) fn new(
        jid: BareJid,
        host: Arc<dyn Host>,
        directory: Arc<Directory>,
        service: Weak<Muc>,
        limits: Limits,
    ) -> Room {
        Room {
            jid,
            host,
            directory,
            service,
            limits,
            config: RoomConfig::instant(limits.max_occupants, limits.history),
            occupants: BTreeMap::new(),
            by_real: HashMap::new(),
            affiliations: HashMap::new(),
            subject: None,
            history: VecDeque::new(),
            fresh: true,
            retired: false,
            salt: rand::random(),
        }
    }

    /// Tell the directory what it shows of the room; an empty temporary
    /// room retires (its address dropped, the actor ends when its
    /// mailbox is empty).
    fn publish(&mut self, ctx: &mut Context<Self>) {
        let room = self.jid.to_string();
        if self.occupants.is_empty() && !self.config.persistent && !self.fresh {
            self.retired = true;
            self.directory.remove(&room, &ctx.address());
            return;
        }
        let mut users: Vec<String> = self.occupants.values().map(|o| bare_of(&o.real)).collect();
        users.sort();
        users.dedup();
        self.directory
            .update(&room, &self.config.name, self.config.public, users);
    }

    fn send(&self, el: Element) {
        self.host.send(el);
    }

    fn reply_error(&self, stanza: &Element, condition: StanzaCondition, text: Option<&str>) {
        tracing::info!(condition = condition.name(), "room refused a stanza");
        if let Some(e) = refuse(stanza, condition, text) {
            self.send(e);
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
        extra: Option<Element>,
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
        if let Some(e) = extra {
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
        extra: Option<Element>,
        status: Option<&Element>,
    ) {
        let Some(o) = self.occupants.remove(nick) else {
            return;
        };
        self.by_real.remove(&o.real);
        let mut to_self = codes.to_vec();
        to_self.push(110);
        let mut p = self.gone_presence(nick, &o, &o.real, true, &to_self, extra.clone());
        if let Some(s) = status {
            p.push_child(s.clone());
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
                    Some(cur) if cur == nick => self.update_presence(&nick, p),
                    Some(cur) => self.change_nick(&cur, &nick, p),
                    None => self.enter(&from, &nick, p),
                }
            }
            Some("unavailable") => {
                if let Some(cur) = self.by_real.get(&from).cloned() {
                    let status = p.get_child("status", ns::CLIENT).cloned();
                    self.remove_occupant(&cur, &[], None, status.as_ref());
                }
            }
            // An occupant's client answered with an error: it is gone
            // (§7.2, "kicked for an error", status 333).
            Some("error") => {
                if let Some(cur) = self.by_real.get(&from).cloned() {
                    self.remove_occupant(&cur, &[333], None, None);
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
        if self.occupants.contains_key(nick) {
            return self.reply_error(&p, StanzaCondition::Conflict, Some("that nick is taken"));
        }
        if self.occupants.len() >= self.config.max_users && aff < Affiliation::Admin {
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
        let history = muc.and_then(|x| x.get_child("history", MUC)).cloned();
        let aff = if creating {
            // §10.1.1: whoever creates the room owns it.
            self.affiliations.insert(bare_of(from), Affiliation::Owner);
            self.fresh = false;
            Affiliation::Owner
        } else {
            aff
        };
        let occupant = Occupant {
            real: from.to_string(),
            role: self.default_role(aff),
            presence: Self::kept_presence(&p),
            occupant_id: self.occupant_id(from),
        };
        self.occupants.insert(nick.to_string(), occupant);
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
            .and_then(crate::time::parse_xep82)
            .map(|micros| SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(micros));
        if max_chars == Some(0) || max_stanzas == Some(0) {
            return;
        }
        let now = SystemTime::now();
        let mut chosen: Vec<&(Element, SystemTime)> = self
            .history
            .iter()
            .filter(|(_, t)| {
                seconds.is_none_or(|s| {
                    now.duration_since(*t)
                        .map(|d| d.as_secs() <= s)
                        .unwrap_or(true)
                })
            })
            .filter(|(_, t)| since.is_none_or(|s| *t >= s))
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
                        crate::time::xep82(
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
        self.send(
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
        self.broadcast_presence(nick, &[], &[]);
    }

    /// §7.6: unavailable with 303 and the new nick, then available.
    fn change_nick(&mut self, old: &str, new: &str, p: Element) {
        if self.occupants.contains_key(new) {
            return self.reply_error(&p, StanzaCondition::Conflict, Some("that nick is taken"));
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
            let mut gone = self.gone_presence(old, &o, &v.real, sees, &codes, None);
            // The item keeps the role and carries the new nick.
            if let Some(x) = gone.children.iter_mut().find_map(|c| match c {
                crate::xml::Node::Element(e) if e.is("x", MUC_USER) => Some(e),
                _ => None,
            }) {
                if let Some(item) = x.children.iter_mut().find_map(|c| match c {
                    crate::xml::Node::Element(e) if e.name == "item" => Some(e),
                    _ => None,
                }) {
                    item.set_attr("nick", new);
                    item.set_attr("role", o.role.name());
                }
            }
            self.send(gone);
        }
        o.presence = Self::kept_presence(&p);
        self.by_real.insert(o.real.clone(), new.to_string());
        self.occupants.insert(new.to_string(), o);
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
            // A message the room sent bounced: the occupant is gone.
            if let Some(cur) = self.by_real.get(&from).cloned() {
                self.remove_occupant(&cur, &[333], None, None);
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

    /// §7.4: a message to all occupants; §8.1: a subject change.
    fn groupchat(&mut self, from: &str, m: Element) {
        let Some(nick) = self.by_real.get(from).cloned() else {
            return self.reply_error(
                &m,
                StanzaCondition::NotAcceptable,
                Some("you are not in the room"),
            );
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
            // A client may not claim the room's ids (XEP-0359 §3.1, XEP-0421 §4).
            let claims_room = c.is("stanza-id", STANZA_ID) && c.attr("by") == Some(room.as_str());
            if claims_room || c.is("occupant-id", OCCUPANT_ID) {
                continue;
            }
            out.push_child(c.clone());
        }
        let sid = uuid_like();
        out.push_child(
            Element::new("stanza-id", STANZA_ID)
                .with_attr("id", sid)
                .with_attr("by", room),
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
        if body && self.config.history_length > 0 {
            self.history.push_back((out, SystemTime::now()));
            while self.history.len() > self.config.history_length {
                self.history.pop_front();
            }
        }
    }

    /// §7.5: a private message to one occupant, from an occupant.
    fn private(&mut self, from: &str, to_nick: &str, m: Element) {
        let Some(nick) = self.by_real.get(from).cloned() else {
            return self.reply_error(
                &m,
                StanzaCondition::NotAcceptable,
                Some("you are not in the room"),
            );
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
    /// (§7.8.2, §7.8.3); anything else is refused.
    fn addressed_to_room(&mut self, from: &str, m: Element) {
        let Some(x) = m.get_child("x", MUC_USER) else {
            return self.reply_error(
                &m,
                StanzaCondition::BadRequest,
                Some("send groupchat messages to the room"),
            );
        };
        let invites: Vec<&Element> = x.elements().filter(|e| e.is("invite", MUC_USER)).collect();
        let declines: Vec<&Element> = x.elements().filter(|e| e.is("decline", MUC_USER)).collect();
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
                if aff < Affiliation::Admin {
                    return self.reply_error(
                        &m,
                        StanzaCondition::Forbidden,
                        Some("only admins invite to a members-only room"),
                    );
                }
                let bare = to.to_bare().to_string();
                if self.affiliation(&bare) < Affiliation::Member {
                    self.affiliations.insert(bare, Affiliation::Member);
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
                self.send(crate::modules::result(&iq, Some(self.disco_info())))
            }
            (ns::DISCO_ITEMS, "query", true) => self.send(crate::modules::result(
                &iq,
                Some(Element::new("query", ns::DISCO_ITEMS)),
            )),
            (ns::PING, "ping", true) => self.send(crate::modules::result(&iq, None)),
            (MUC_OWNER, "query", _) => self.owner_iq(&from, iq, &payload, get),
            (MUC_ADMIN, "query", _) => self.admin_iq(&from, iq, &payload, get),
            _ => self.reply_error(&iq, StanzaCondition::ServiceUnavailable, None),
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
        ];
        features.extend(self.config.features());
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
        let Some(sender) = self.by_real.get(from).cloned() else {
            // XEP-0410 §3: not joined.
            return self.reply_error(
                &iq,
                StanzaCondition::NotAcceptable,
                Some("you are not in the room"),
            );
        };
        let request = matches!(iq.attr("type"), Some("get") | Some("set"));
        if sender == nick && request && iq.get_child("ping", ns::PING).is_some() {
            return self.send(crate::modules::result(&iq, None));
        }
        let Some(target) = self.occupants.get(nick) else {
            return self.reply_error(&iq, StanzaCondition::ItemNotFound, None);
        };
        let mut out = iq.clone();
        out.set_attr("from", self.nick_jid(&sender));
        out.set_attr("to", target.real.clone());
        self.send(out);
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
            return self.send(crate::modules::result(
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
            Some("cancel") => self.send(crate::modules::result(&iq, None)),
            Some("submit") => {
                match self
                    .config
                    .apply(x, self.limits.max_occupants, self.limits.history)
                {
                    Ok(c) => {
                        let privacy_changed = c.whois != self.config.whois;
                        self.config = c;
                        while self.history.len() > self.config.history_length {
                            self.history.pop_front();
                        }
                        self.send(crate::modules::result(&iq, None));
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
                self.send(p);
            }
        }
        self.config.persistent = false;
        self.history.clear();
        self.affiliations.clear();
        self.subject = None;
        self.send(crate::modules::result(&iq, None));
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
                    if my_aff < Affiliation::Admin
                        && !(a == Affiliation::Member && my_role == Role::Moderator)
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
            return self.send(crate::modules::result(&iq, Some(out)));
        }
        // Check every item first: a set is all or nothing (§9.1 ff).
        enum Change {
            Role(String, Role),
            Aff(String, Affiliation),
        }
        let mut changes = Vec::new();
        for item in &items {
            let reason = item.get_child("reason", MUC_ADMIN).map(|r| r.text());
            let _ = reason;
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
                changes.push(Change::Aff(target, a));
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
                if r == Role::Moderator && my_aff < Affiliation::Admin {
                    return self.reply_error(&iq, StanzaCondition::NotAllowed, None);
                }
                changes.push(Change::Role(nick.to_string(), r));
            } else {
                return self.reply_error(&iq, StanzaCondition::BadRequest, None);
            }
        }
        self.send(crate::modules::result(&iq, None));
        for c in changes {
            match c {
                Change::Role(nick, Role::None) => {
                    tracing::info!(%nick, "occupant kicked");
                    self.remove_occupant(&nick, &[307], None, None);
                }
                Change::Role(nick, r) => {
                    if let Some(o) = self.occupants.get_mut(&nick) {
                        o.role = r;
                    }
                    self.broadcast_presence(&nick, &[], &[]);
                }
                Change::Aff(jid, a) => {
                    if a == Affiliation::None {
                        self.affiliations.remove(&jid);
                    } else {
                        self.affiliations.insert(jid.clone(), a);
                    }
                    let present: Vec<String> = self
                        .occupants
                        .iter()
                        .filter(|(_, o)| bare_of(&o.real) == jid)
                        .map(|(n, _)| n.clone())
                        .collect();
                    for nick in present {
                        if a == Affiliation::Outcast {
                            tracing::info!(%nick, "occupant banned");
                            self.remove_occupant(&nick, &[301], None, None);
                        } else if self.config.members_only && a < Affiliation::Member {
                            self.remove_occupant(&nick, &[321], None, None);
                        } else {
                            let role = self.default_role(a);
                            if let Some(o) = self.occupants.get_mut(&nick) {
                                o.role = role;
                            }
                            self.broadcast_presence(&nick, &[], &[]);
                        }
                    }
                }
            }
        }
    }
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
}
