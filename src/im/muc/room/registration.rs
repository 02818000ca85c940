//! XEP-0045 §7.10 (registering with a room) and §7.12 (discovering one's
//! reserved nick). Registering reserves a nick in the room for the
//! account and makes it a member (§7.10: approval is automatic here);
//! nobody else may enter with, or change to, a reserved nick (§7.2.9's
//! conflict). Membership by registration is no way around the room's
//! gates: a password-protected room takes registrations only from its
//! occupants, and a moderated one only from occupants with voice.
//! `<remove/>` (XEP-0077 §3.2, as §7.10 borrows it) gives the nick back,
//! and the membership if registering gave it (one an admin gave stays).
//! The reservation is kept in the room's record, written through the
//! cluster like its affiliations, and ends when the account's
//! affiliation falls below member.

use super::{bare_of, Affiliation, Role, Room, DATA};
use crate::base::stanza_error::StanzaCondition;
use crate::base::xml::{ns, Element};
use crate::im::modules::result;

pub(super) const REGISTER: &str = "jabber:iq:register";
const FORM_TYPE: &str = "http://jabber.org/protocol/muc#register";
const ROOMNICK: &str = "muc#register_roomnick";

impl Room {
    /// §7.12: `<identity name=nick/>` if the asker has one reserved; an
    /// empty answer otherwise (not an error, as the XEP says).
    pub(super) fn reserved_nick_query(&self, from: &str, iq: &Element) {
        let mut q = Element::new("query", ns::DISCO_INFO).with_attr("node", "x-roomuser-item");
        if let Some(nick) = self.reserved.get(&bare_of(from)) {
            q.push_child(
                Element::new("identity", ns::DISCO_INFO)
                    .with_attr("category", "conference")
                    .with_attr("type", "text")
                    .with_attr("name", nick.clone()),
            );
        }
        self.reply(result(iq, Some(q)));
    }

    /// Whether `nick` is reserved by an account other than `from`'s.
    pub(super) fn reserved_by_other(&self, nick: &str, from: &str) -> bool {
        let bare = bare_of(from);
        self.reserved.iter().any(|(b, n)| n == nick && *b != bare)
    }

    /// An admin or owner changed an account's affiliation to `a`: below
    /// member, its reservation goes; either way the membership is no
    /// longer registration's to take back.
    pub(super) fn affiliation_changed(&mut self, bare: &str, a: Affiliation) {
        let dropped = a < Affiliation::Member && self.reserved.remove(bare).is_some();
        if self.registered_members.remove(bare) || dropped {
            self.meta_dirty = true;
        }
    }

    /// `jabber:iq:register` to the room (§7.10).
    pub(super) fn register_iq(&mut self, from: &str, iq: Element, q: &Element, get: bool) {
        let aff = self.affiliation(from);
        if aff == Affiliation::Outcast {
            return self.reply_error(&iq, StanzaCondition::Forbidden, Some("banned"));
        }
        // A members-only room takes members from its admins, not by
        // registration (Converse.js reads this condition so).
        if self.config.members_only && aff < Affiliation::Member {
            return self.reply_error(
                &iq,
                StanzaCondition::RegistrationRequired,
                Some("members only: an admin grants membership"),
            );
        }
        let bare = bare_of(from);
        if aff < Affiliation::Member {
            let role = self
                .by_real
                .get(from)
                .and_then(|n| self.occupants.get(n))
                .map(|o| o.role);
            if self.config.password.is_some() && role.is_none() {
                return self.reply_error(
                    &iq,
                    StanzaCondition::NotAllowed,
                    Some("enter the room (with its password) first"),
                );
            }
            if self.config.moderated && role.is_none_or(|r| r < Role::Participant) {
                return self.reply_error(
                    &iq,
                    StanzaCondition::NotAllowed,
                    Some("a moderated room: ask a moderator for voice first"),
                );
            }
        }
        if get {
            let answer = match self.reserved.get(&bare) {
                // XEP-0077 §3.1: already registered.
                Some(nick) => Element::new("query", REGISTER)
                    .with_child(Element::new("registered", REGISTER))
                    .with_child(Element::new("username", REGISTER).with_text(nick.clone())),
                None => Element::new("query", REGISTER)
                    .with_child(Element::new("instructions", REGISTER).with_text(
                        "Reserve a nick in this room: you become a member, and nobody else may use it.",
                    ))
                    .with_child(registration_form()),
            };
            return self.reply(result(&iq, Some(answer)));
        }
        if q.get_child("remove", REGISTER).is_some() {
            return self.unregister(&bare, iq);
        }
        let Some(x) = q.get_child("x", DATA) else {
            return self.reply_error(
                &iq,
                StanzaCondition::BadRequest,
                Some("a muc#register form is needed"),
            );
        };
        match x.attr("type") {
            Some("cancel") => return self.reply(result(&iq, None)),
            Some("submit") => {}
            _ => {
                return self.reply_error(
                    &iq,
                    StanzaCondition::BadRequest,
                    Some("the form must be submitted"),
                )
            }
        }
        let Some(wanted) = field_value(x, ROOMNICK).filter(|n| !n.trim().is_empty()) else {
            return self.reply_error(
                &iq,
                StanzaCondition::NotAcceptable,
                Some("muc#register_roomnick is required"),
            );
        };
        // The nick as it would appear in the occupant's JID (RFC 7622 §3.4).
        let Ok(nick) = jid::ResourcePart::new(&wanted) else {
            return self.reply_error(
                &iq,
                StanzaCondition::JidMalformed,
                Some("that nick is not a valid resource"),
            );
        };
        let nick = nick.as_str().to_string();
        if self.reserved_by_other(&nick, from) {
            return self.reply_error(
                &iq,
                StanzaCondition::Conflict,
                Some("that nick is reserved by a member"),
            );
        }
        let taken = self
            .occupants
            .get(&nick)
            .is_some_and(|o| bare_of(&o.real) != bare);
        if taken {
            return self.reply_error(&iq, StanzaCondition::Conflict, Some("that nick is in use"));
        }
        tracing::info!(%nick, "nick reserved in a room");
        self.reserved.insert(bare.clone(), nick);
        self.meta_dirty = true;
        self.reply(result(&iq, None));
        if aff < Affiliation::Member {
            self.affiliations.insert(bare.clone(), Affiliation::Member);
            self.registered_members.insert(bare.clone());
            // Shown with the new affiliation; a role above a member's
            // default (a moderator) is kept.
            let present: Vec<String> = self
                .occupants
                .iter()
                .filter(|(_, o)| bare_of(&o.real) == bare)
                .map(|(n, _)| n.clone())
                .collect();
            let role = self.default_role(Affiliation::Member);
            for n in present {
                if let Some(o) = self.occupants.get_mut(&n) {
                    o.role = o.role.max(role);
                }
                self.dirty_nicks.insert(n.clone());
                self.broadcast_presence(&n, &[], &[]);
            }
        }
    }

    /// `<remove/>`: the nick goes back, and the membership registering gave.
    fn unregister(&mut self, bare: &str, iq: Element) {
        let had = self.reserved.remove(bare).is_some();
        let member =
            self.registered_members.remove(bare) && self.affiliation(bare) == Affiliation::Member;
        if !had && !member {
            return self.reply_error(
                &iq,
                StanzaCondition::ItemNotFound,
                Some("not registered with this room"),
            );
        }
        self.meta_dirty = true;
        self.reply(result(&iq, None));
        if member {
            self.set_affiliation(bare, Affiliation::None, Vec::new());
        }
    }
}

/// The §7.10 registration form: the nick is the one field asked for.
fn registration_form() -> Element {
    Element::new("x", DATA)
        .with_attr("type", "form")
        .with_child(text_child("title", "Register with this room"))
        .with_child(
            Element::new("field", DATA)
                .with_attr("var", "FORM_TYPE")
                .with_attr("type", "hidden")
                .with_child(Element::new("value", DATA).with_text(FORM_TYPE)),
        )
        .with_child(
            Element::new("field", DATA)
                .with_attr("var", ROOMNICK)
                .with_attr("type", "text-single")
                .with_attr("label", "Desired nickname")
                .with_child(Element::new("required", DATA)),
        )
}

fn text_child(name: &str, text: &str) -> Element {
    Element::new(name, DATA).with_text(text)
}

/// The first value of form field `var` (also read by `voice_request.rs`).
pub(super) fn field_value(form: &Element, var: &str) -> Option<String> {
    form.elements()
        .filter(|f| f.is("field", DATA) && f.attr("var") == Some(var))
        .find_map(|f| f.get_child("value", DATA).map(|v| v.text()))
}
