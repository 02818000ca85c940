//! XEP-0425 (Moderated Message Retraction, v0.3 namespaces): a moderator
//! retracts an occupant's message by its stanza-id. The room tells every
//! occupant (a `<retract/>` with `<moderated/>`, XEP-0424 §4 as XEP-0425
//! §4 extends it), archives that notice, and puts a tombstone in place of
//! the message in its history and its archive (XEP-0424 §5.1), all written
//! through the cluster before anyone hears of it.

use super::{uuid_like, Room, CLIENT, OCCUPANT_ID, STANZA_ID};
use crate::base::stanza_error::StanzaCondition;
use crate::base::xml::Element;
use crate::im::modules::result;
use crate::model::state::archive::ArchiveId;

pub(super) const MODERATE: &str = "urn:xmpp:message-moderate:1";
pub(super) const RETRACT: &str = "urn:xmpp:message-retract:1";

impl Room {
    /// `<moderate id='...'><retract/><reason/></moderate>` from `from`.
    pub(super) fn moderate(&mut self, from: &str, iq: Element, m: &Element) {
        let Some(nick) = self.by_real.get(from).cloned() else {
            return self.reply_error(
                &iq,
                StanzaCondition::Forbidden,
                Some("you are not in the room"),
            );
        };
        let moderator = self
            .occupants
            .get(&nick)
            .is_some_and(|o| o.role == super::Role::Moderator);
        if !moderator {
            return self.reply_error(
                &iq,
                StanzaCondition::Forbidden,
                Some("only moderators may retract messages"),
            );
        }
        let (Some(id), true) = (m.attr("id"), m.get_child("retract", RETRACT).is_some()) else {
            return self.reply_error(
                &iq,
                StanzaCondition::BadRequest,
                Some("a <moderate/> needs an id and a <retract/>"),
            );
        };
        let id = id.to_string();
        let reason = m.get_child("reason", MODERATE).map(|r| r.text());
        // The message: in the history kept for joins, or in the archive.
        let in_history = self
            .history
            .iter()
            .position(|(_, h, _)| stanza_id(h, self.jid.as_str()) == Some(id.as_str()));
        let archived = ArchiveId::parse(&id)
            .filter(|_| self.config.archiving)
            .and_then(|n| {
                let state = self.host.state()?;
                state
                    .archived(self.jid.as_str(), n)
                    .map(|(with, xml)| (n, with, xml))
            });
        let original = match (in_history, &archived) {
            (Some(i), _) => self.history[i].1.clone(),
            (None, Some((_, _, xml))) => match crate::base::xml::parse_fragment(xml) {
                Ok(el) => el,
                Err(_) => return self.reply_error(&iq, StanzaCondition::ItemNotFound, None),
            },
            (None, None) => {
                return self.reply_error(
                    &iq,
                    StanzaCondition::ItemNotFound,
                    Some("no such message in this room"),
                )
            }
        };
        // (Occupants cannot send a <retracted/> of their own: the room
        // drops it, so one here is the room's tombstone.)
        if original.get_child("retracted", RETRACT).is_some() {
            return self.reply_error(
                &iq,
                StanzaCondition::ItemNotFound,
                Some("already retracted"),
            );
        }
        // The room's own notices are not an occupant's message.
        if original.attr("from") == Some(self.jid.as_str()) {
            return self.reply_error(
                &iq,
                StanzaCondition::NotAllowed,
                Some("the room's own notices cannot be retracted"),
            );
        }
        let by = self.nick_jid(&nick);
        let occupant_id = self.occupants.get(&nick).map(|o| o.occupant_id.clone());
        let moderated = || {
            let mut el = Element::new("moderated", MODERATE).with_attr("by", by.clone());
            if let Some(o) = &occupant_id {
                el.push_child(Element::new("occupant-id", OCCUPANT_ID).with_attr("id", o.clone()));
            }
            el
        };
        let with_reason = |mut el: Element| {
            if let Some(r) = &reason {
                el.push_child(Element::new("reason", RETRACT).with_text(r.clone()));
            }
            el
        };
        // What everyone is told, from the room itself.
        let notice_id = if self.config.archiving {
            ArchiveId::text(self.next_archive_id())
        } else {
            uuid_like()
        };
        let room = self.jid.to_string();
        let notice = Element::new("message", CLIENT)
            .with_attr("from", room.clone())
            .with_attr("type", "groupchat")
            .with_attr("id", uuid_like())
            .with_child(with_reason(
                Element::new("retract", RETRACT)
                    .with_attr("id", id.clone())
                    .with_child(moderated()),
            ))
            .with_child(
                Element::new("stanza-id", STANZA_ID)
                    .with_attr("id", notice_id.clone())
                    .with_attr("by", room.clone()),
            );
        // The tombstone in the message's place: its sender, ids and
        // occupant id stay; its content goes.
        let stamp = crate::base::time::xep82(crate::base::time::unix_now());
        let mut tombstone = Element::new("message", CLIENT).with_attr("type", "groupchat");
        for a in ["from", "id"] {
            if let Some(v) = original.attr(a) {
                tombstone.set_attr(a, v);
            }
        }
        tombstone.push_child(with_reason(
            Element::new("retracted", RETRACT)
                .with_attr("stamp", stamp)
                .with_child(moderated()),
        ));
        for c in original.elements() {
            if c.is("stanza-id", STANZA_ID) || c.is("occupant-id", OCCUPANT_ID) {
                tombstone.push_child(c.clone());
            }
        }
        if let Some(i) = in_history {
            let seq = self.history[i].0;
            self.history[i].1 = tombstone.clone();
            self.history_added.push(seq);
        }
        if let Some((n, with, _)) = archived {
            self.archive_replace
                .push(crate::model::state::ArchiveEntry {
                    user: room.clone(),
                    id: n,
                    with,
                    xml: tombstone.to_xml(CLIENT),
                });
        }
        if let Some(n) = ArchiveId::parse(&notice_id).filter(|_| self.config.archiving) {
            self.archive_pending
                .push(crate::model::state::ArchiveEntry {
                    user: room.clone(),
                    id: n,
                    with: room.clone(),
                    xml: notice.to_xml(CLIENT),
                });
        }
        tracing::info!(room = %self.jid, by = %by, message = %id, "message retracted by a moderator");
        for o in self.occupants.values() {
            let mut copy = notice.clone();
            copy.set_attr("to", o.real.clone());
            self.send(copy);
        }
        self.reply(result(&iq, None));
    }
}

/// The room's stanza-id on a message it reflected.
fn stanza_id<'a>(m: &'a Element, room: &str) -> Option<&'a str> {
    m.elements()
        .find(|c| c.is("stanza-id", STANZA_ID) && c.attr("by") == Some(room))
        .and_then(|c| c.attr("id"))
}
