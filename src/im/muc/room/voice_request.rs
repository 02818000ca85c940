//! XEP-0045 §7.13 (an occupant without voice asks for it) and §8.6 (a
//! moderator answers). In a moderated room a visitor sends the room a
//! `muc#request` form; the room passes it on to every moderator as a form
//! to approve (naming the occupant by nick and real JID), and a moderator
//! who sends it back with `muc#request_allow` true gives that occupant
//! voice, as a role change to participant would (§8.3). Requests count
//! against the sender's message rate, so a visitor cannot flood the
//! moderators with them.

use super::registration::field_value as value;
use super::{Role, Room, DATA};
use crate::base::stanza_error::StanzaCondition;
use crate::base::xml::{ns, Element};

pub(super) const REQUEST: &str = "http://jabber.org/protocol/muc#request";

fn field(var: &str, kind: &str, label: &str, v: &str) -> Element {
    let mut f = Element::new("field", DATA)
        .with_attr("var", var)
        .with_attr("type", kind);
    if !label.is_empty() {
        f.set_attr("label", label);
    }
    f.with_child(Element::new("value", DATA).with_text(v))
}

impl Room {
    /// A `muc#request` form sent to the room: handled here (true), or `m`
    /// carries none (false).
    pub(super) fn voice_request(&mut self, from: &str, m: &Element) -> bool {
        let Some(x) = m
            .elements()
            .find(|e| e.is("x", DATA) && value(e, "FORM_TYPE").as_deref() == Some(REQUEST))
            .cloned()
        else {
            return false;
        };
        let Some(nick) = self.admitted_sender(from, m) else {
            return true; // not an occupant, or over its rate: told why
        };
        let role = self.occupants.get(&nick).map_or(Role::None, |o| o.role);
        if role == Role::Moderator && value(&x, "muc#request_allow").is_some() {
            self.voice_answer(&nick, &x);
        } else if role == Role::Visitor {
            self.ask_moderators(&nick, from);
        } else {
            // Voice already (or a moderator's request without an answer).
            self.reply_error(
                m,
                StanzaCondition::NotAcceptable,
                Some("you may speak already"),
            );
        }
        true
    }

    /// §8.6: the form every moderator's sessions get.
    fn ask_moderators(&mut self, nick: &str, from: &str) {
        let form = Element::new("x", DATA)
            .with_attr("type", "form")
            .with_child(Element::new("title", DATA).with_text("Voice request"))
            .with_child(Element::new("instructions", DATA).with_text(
                "To give this occupant voice, set \"Grant voice?\" and send the form back.",
            ))
            .with_child(field("FORM_TYPE", "hidden", "", REQUEST))
            .with_child(field(
                "muc#role",
                "list-single",
                "Requested role",
                "participant",
            ))
            .with_child(field("muc#jid", "jid-single", "User ID", from))
            .with_child(field("muc#roomnick", "text-single", "Room nickname", nick))
            .with_child(field(
                "muc#request_allow",
                "boolean",
                "Grant voice?",
                "false",
            ));
        let moderators: Vec<String> = self
            .occupants
            .values()
            .filter(|o| o.role == Role::Moderator)
            .map(|o| o.real.clone())
            .collect();
        tracing::info!(%nick, moderators = moderators.len(), "voice requested");
        for to in moderators {
            self.send(
                Element::new("message", ns::CLIENT)
                    .with_attr("from", self.jid.to_string())
                    .with_attr("to", to)
                    .with_child(form.clone()),
            );
        }
    }

    /// A moderator (`by`) sent the form back: voice if it says so and
    /// the occupant named is still a visitor.
    fn voice_answer(&mut self, by: &str, x: &Element) {
        let allow = matches!(
            value(x, "muc#request_allow").as_deref(),
            Some("true") | Some("1")
        );
        let nick = value(x, "muc#roomnick")
            .filter(|n| self.occupants.contains_key(n))
            .or_else(|| value(x, "muc#jid").and_then(|j| self.by_real.get(&j).cloned()));
        let Some(nick) = nick else {
            return; // gone meanwhile: nothing to do
        };
        match self.occupants.get_mut(&nick) {
            Some(o) if allow && o.role == Role::Visitor => o.role = Role::Participant,
            _ => return,
        }
        tracing::info!(%nick, moderator = %by, "voice granted on request");
        self.dirty_nicks.insert(nick.clone());
        self.broadcast_presence(&nick, &[], &[]);
    }
}
