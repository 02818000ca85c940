//! Roster items and subscription states (RFC 6121 §2, §3), per user.
//! Keys: "user\0contact" -> item (JSON); the per-user version counter
//! (XEP-0237) lives in a second tree.

use serde::{Deserialize, Serialize};

use super::StateError;

/// A subscription state (RFC 6121 Appendix A.1) as four flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Subscription {
    /// The user receives the contact's presence.
    pub to: bool,
    /// The contact receives the user's presence.
    pub from: bool,
    /// The user asked the contact for a subscription ("ask").
    pub pending_out: bool,
    /// The contact asked the user for a subscription.
    pub pending_in: bool,
}

impl Subscription {
    /// The 'subscription' attribute value.
    pub fn attr(&self) -> &'static str {
        match (self.to, self.from) {
            (true, true) => "both",
            (true, false) => "to",
            (false, true) => "from",
            (false, false) => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterItem {
    /// The contact's bare JID.
    pub jid: String,
    pub name: Option<String>,
    pub groups: Vec<String>,
    pub sub: Subscription,
    /// Subscription pre-approved by the user (RFC 6121 §3.4).
    pub approved: bool,
    /// Visible in the roster. False for a contact that only has a pending
    /// inbound request, which RFC 6121 keeps out of the roster.
    pub in_roster: bool,
}

impl RosterItem {
    pub fn new(jid: &str) -> Self {
        RosterItem {
            jid: jid.to_string(),
            name: None,
            groups: Vec::new(),
            sub: Subscription::default(),
            approved: false,
            in_roster: false,
        }
    }

    /// Nothing worth keeping: no roster entry, no state.
    pub fn is_empty(&self) -> bool {
        !self.in_roster && self.sub == Subscription::default() && !self.approved
    }
}

pub fn key(user: &str, contact: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + contact.len() + 1);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k.extend_from_slice(contact.as_bytes());
    k
}

pub fn prefix(user: &str) -> Vec<u8> {
    key(user, "")
}

pub fn get(tree: &sled::Tree, user: &str, contact: &str) -> Result<Option<RosterItem>, StateError> {
    match tree.get(key(user, contact))? {
        Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
        None => Ok(None),
    }
}

pub fn list(tree: &sled::Tree, user: &str) -> Result<Vec<RosterItem>, StateError> {
    tree.scan_prefix(prefix(user))
        .values()
        .map(|v| Ok(serde_json::from_slice(&v?)?))
        .collect()
}

/// Bump and return the user's roster version.
pub fn bump_version(versions: &super::tracked::Tracked, user: &str) -> Result<u64, StateError> {
    let new = versions
        .update_and_fetch(user, |old| {
            let n = old
                .map(|b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
                .unwrap_or(0);
            Some((n + 1).to_be_bytes().to_vec())
        })?
        .map(|b| u64::from_be_bytes(b.as_ref().try_into().unwrap_or([0; 8])))
        .unwrap_or(0);
    Ok(new)
}

pub fn version(versions: &sled::Tree, user: &str) -> Result<u64, StateError> {
    Ok(versions
        .get(user)?
        .map(|b| u64::from_be_bytes(b.as_ref().try_into().unwrap_or([0; 8])))
        .unwrap_or(0))
}
