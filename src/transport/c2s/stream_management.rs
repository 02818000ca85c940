//! XEP-0198 Stream Management: the counters and the queue of stanzas the
//! client has not acknowledged. Counts are 32-bit and wrap (§5).

use std::collections::VecDeque;

use crate::base::xml::Element;

pub const NS: &str = "urn:xmpp:sm:3";

/// Per-session stream management state.
#[derive(Debug)]
pub struct SmState {
    /// The resumption id (`previd`), if the client asked for resumption.
    pub id: Option<String>,
    /// Stanzas received from the client.
    pub inbound: u32,
    /// Stanzas received and owned by the server (the `h` an `<a/>`
    /// reports): a message counts once a session has written it (see
    /// `router::deliver_owned`), the node holding its session has, or it
    /// is stored offline.
    pub handled: u32,
    /// The stanzas after `handled`, oldest first: still waiting (`None`),
    /// owned, or not owned (`Some(false)`, which stops `handled` there).
    pending: VecDeque<Option<bool>>,
    /// A stanza could not be owned: nothing after it counts as handled.
    pub failed: bool,
    /// The client asked (`<r/>`) and is answered once `handled` reaches this.
    pub wanted: Option<u32>,
    /// Stanzas sent to the client.
    pub outbound: u32,
    /// The last `h` the client acknowledged.
    pub acked: u32,
    /// Sent but not acknowledged, oldest first.
    pub unacked: VecDeque<Element>,
    /// The serialized size of each of `unacked`, and their sum.
    sizes: VecDeque<usize>,
    unacked_bytes: usize,
}

/// The client acknowledged more than we sent (§4, handled-count-too-high).
#[derive(Debug, PartialEq, Eq)]
pub struct TooHigh {
    pub h: u32,
    pub sent: u32,
}

impl SmState {
    pub fn new(id: Option<String>) -> Self {
        SmState {
            id,
            inbound: 0,
            handled: 0,
            pending: VecDeque::new(),
            failed: false,
            wanted: None,
            outbound: 0,
            acked: 0,
            unacked: VecDeque::new(),
            sizes: VecDeque::new(),
            unacked_bytes: 0,
        }
    }

    /// Unacknowledged stanzas taken over from an earlier session (a resume).
    pub fn set_unacked(&mut self, unacked: VecDeque<Element>) {
        self.sizes = unacked
            .iter()
            .map(|e| e.to_xml(crate::base::xml::ns::CLIENT).len())
            .collect();
        self.unacked_bytes = self.sizes.iter().sum();
        self.unacked = unacked;
    }

    /// Everything unacknowledged, oldest first, leaving none.
    pub fn take_unacked(&mut self) -> Vec<Element> {
        self.sizes.clear();
        self.unacked_bytes = 0;
        self.unacked.drain(..).collect()
    }

    /// More unacknowledged than `count` stanzas or `bytes` bytes.
    pub fn over(&self, count: usize, bytes: usize) -> bool {
        self.unacked.len() > count || self.unacked_bytes > bytes
    }

    /// A stanza handled at once.
    pub fn received(&mut self) {
        self.inbound = self.inbound.wrapping_add(1);
        if self.pending.is_empty() && !self.failed {
            self.handled = self.inbound;
        } else {
            self.pending.push_back(Some(true));
        }
    }

    /// A stanza owned only later: its number, for [`SmState::settle`].
    pub fn received_pending(&mut self) -> u32 {
        self.inbound = self.inbound.wrapping_add(1);
        self.pending.push_back(None);
        self.inbound
    }

    /// Stanza `seq` is owned (or not); `handled` advances over every
    /// leading owned stanza.
    pub fn settle(&mut self, seq: u32, owned: bool) {
        let i = seq.wrapping_sub(self.handled).wrapping_sub(1) as usize;
        if let Some(slot) = self.pending.get_mut(i) {
            *slot = Some(owned);
        }
        self.failed |= !owned;
        while let Some(Some(true)) = self.pending.front() {
            self.pending.pop_front();
            self.handled = self.handled.wrapping_add(1);
        }
    }

    /// Whether an outstanding `<r/>` can be answered now.
    pub fn answer_due(&self) -> bool {
        self.wanted
            .is_some_and(|w| (self.handled.wrapping_sub(w) as i32) >= 0)
    }

    /// The `h` a resume reports: what is in flight here will be owned by
    /// this node, which is alive (it is handing over), unless something
    /// already could not be.
    pub fn resume_h(&self) -> u32 {
        if self.failed {
            self.handled
        } else {
            self.inbound
        }
    }

    /// Taken over with count `h` (a resume): all of it is handled.
    pub fn set_inbound(&mut self, h: u32) {
        self.inbound = h;
        self.handled = h;
        self.pending.clear();
    }

    /// A stanza went to the client; `bytes` is its serialized size.
    pub fn sent(&mut self, stanza: &Element, bytes: usize) {
        self.outbound = self.outbound.wrapping_add(1);
        self.unacked.push_back(stanza.clone());
        self.sizes.push_back(bytes);
        self.unacked_bytes += bytes;
    }

    /// Apply an `<a h/>` (or a resume's `h`): drop what it acknowledges.
    pub fn ack(&mut self, h: u32) -> Result<(), TooHigh> {
        let newly = h.wrapping_sub(self.acked) as usize;
        if newly > self.unacked.len() {
            return Err(TooHigh {
                h,
                sent: self.outbound,
            });
        }
        self.unacked.drain(..newly);
        let freed: usize = self.sizes.drain(..newly.min(self.sizes.len())).sum();
        self.unacked_bytes = self.unacked_bytes.saturating_sub(freed);
        self.acked = h;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: u32) -> Element {
        Element::new("message", "jabber:client").with_attr("id", i.to_string())
    }

    #[test]
    fn acks_drop_what_they_cover() {
        let mut s = SmState::new(None);
        for i in 0..5 {
            s.sent(&msg(i), 10);
        }
        s.ack(3).unwrap();
        assert_eq!(s.unacked.len(), 2);
        assert_eq!(s.unacked[0].attr("id"), Some("3"));
        s.ack(3).unwrap(); // repeated ack: nothing new
        assert_eq!(s.unacked.len(), 2);
        assert_eq!(s.ack(9), Err(TooHigh { h: 9, sent: 5 }));
    }

    #[test]
    fn counters_wrap_at_32_bits() {
        let mut s = SmState::new(None);
        s.outbound = u32::MAX - 1;
        s.acked = u32::MAX - 1;
        for i in 0..4 {
            s.sent(&msg(i), 10);
        }
        assert_eq!(s.outbound, 2, "wrapped");
        // h wraps past 2^32 - 1 to 1: three stanzas acknowledged.
        s.ack(1).unwrap();
        assert_eq!(s.unacked.len(), 1);
        assert_eq!(s.unacked[0].attr("id"), Some("3"));
        s.set_inbound(u32::MAX);
        s.received();
        assert_eq!(s.inbound, 0);
        assert_eq!(s.handled, 0);
    }

    #[test]
    fn h_counts_only_what_is_owned_in_order() {
        let mut s = SmState::new(None);
        s.received();
        let a = s.received_pending();
        let b = s.received_pending();
        s.received();
        assert_eq!((s.inbound, s.handled), (4, 1));
        s.settle(b, true);
        assert_eq!(s.handled, 1, "b waits for a");
        s.wanted = Some(s.inbound);
        assert!(!s.answer_due());
        s.settle(a, true);
        assert_eq!(s.handled, 4);
        assert!(s.answer_due());
        // One that cannot be owned stops h for good.
        let c = s.received_pending();
        s.received();
        s.settle(c, false);
        assert_eq!((s.inbound, s.handled, s.resume_h()), (6, 4, 4));
    }
}

/// Resumable sessions on this node, by resumption id.
#[derive(Default)]
pub struct SmRegistry {
    map: std::sync::Mutex<
        std::collections::HashMap<String, (actix::Addr<super::session::C2sSession>, jid::FullJid)>,
    >,
}

impl SmRegistry {
    /// The resumption id of the session bound to `jid`, if it has one.
    pub fn id_of(&self, jid: &jid::FullJid) -> Option<String> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(_, (_, j))| j == jid)
            .map(|(id, _)| id.clone())
    }

    pub fn insert(
        &self,
        id: &str,
        addr: actix::Addr<super::session::C2sSession>,
        jid: jid::FullJid,
    ) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), (addr, jid));
    }

    pub fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    pub fn all(&self) -> Vec<(String, actix::Addr<super::session::C2sSession>)> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|(id, (a, _))| (id.clone(), a.clone()))
            .collect()
    }

    /// The session `id` if it belongs to the account `bare` (a client may
    /// only resume its own).
    pub fn get(
        &self,
        id: &str,
        bare: &str,
    ) -> Option<(actix::Addr<super::session::C2sSession>, jid::FullJid)> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id)
            .filter(|(a, j)| a.connected() && j.to_bare().as_str().eq_ignore_ascii_case(bare))
            .cloned()
    }
}
