//! Push registrations (XEP-0357 §5) as replicated state: which app servers
//! (a JID and a node) an account asked to be told of messages it misses,
//! with the publish options to send them. Kept with the account's data, so
//! every node can notify (the user's own node may be gone) and a deleted
//! account's registrations go with it.

use serde::{Deserialize, Serialize};

/// One device's registration with an app server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRegistration {
    /// The app server's JID.
    pub jid: String,
    /// The node on it that stands for the device.
    pub node: String,
    /// The `publish-options` form's fields (var, values), FORM_TYPE left
    /// out, sent with each notification (§5: the app server's secrets).
    pub options: Vec<(String, Vec<String>)>,
}

/// The `user_data` key suffix of a registration.
pub fn key(jid: &str, node: &str) -> String {
    format!("{jid}\0{node}")
}
