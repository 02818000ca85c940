//! The cluster-wide session table: full JID -> the node holding it, with
//! the presence facts routing needs (available, priority). Replicated so
//! every node routes the same way; presence payloads are not.

use serde::{Deserialize, Serialize};

use super::StateError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub jid: String,
    pub node: u64,
    /// The session's id on its node (distinguishes a reconnect).
    pub sid: u64,
    pub available: bool,
    pub priority: i8,
    /// XEP-0198 resumption id, when the client enabled resumption; any
    /// node can then find where to resume it.
    #[serde(default)]
    pub sm_id: Option<String>,
    /// When the client bound it (unix ms, the proposer's clock): of two
    /// binds for one address, the later one wins whatever the log order.
    #[serde(default)]
    pub bound_at: u64,
    /// The client's capabilities verification string (XEP-0115), from its
    /// last presence: which PEP notifications it wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caps: Option<String>,
}

pub fn get(tree: &sled::Tree, full: &str) -> Result<Option<SessionRecord>, StateError> {
    match tree.get(full)? {
        Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
        None => Ok(None),
    }
}

/// Sessions of a bare JID ("user@domain/..." keys share the prefix).
pub fn of(tree: &sled::Tree, bare: &str) -> Result<Vec<SessionRecord>, StateError> {
    tree.scan_prefix(format!("{bare}/"))
        .values()
        .map(|v| Ok(serde_json::from_slice(&v?)?))
        .collect()
}

pub fn put(
    tree: &super::tracked::Tracked,
    rec: &SessionRecord,
) -> Result<Option<SessionRecord>, StateError> {
    let old = tree.insert(rec.jid.as_bytes(), serde_json::to_vec(rec)?)?;
    Ok(match old {
        Some(v) => serde_json::from_slice(&v).ok(),
        None => None,
    })
}

/// Remove `full` if it is still the given session.
pub fn remove(
    tree: &super::tracked::Tracked,
    full: &str,
    node: u64,
    sid: u64,
) -> Result<(), StateError> {
    if let Some(rec) = get(tree, full)? {
        if rec.node == node && rec.sid == sid {
            tree.remove(full)?;
        }
    }
    Ok(())
}

pub fn purge_node(
    tree: &super::tracked::Tracked,
    node: u64,
    before: Option<u64>,
) -> Result<Vec<SessionRecord>, StateError> {
    let mut gone = Vec::new();
    for item in tree.iter() {
        let (k, v) = item?;
        if let Ok(r) = serde_json::from_slice::<SessionRecord>(&v) {
            if r.node == node && before.is_none_or(|t| r.bound_at < t) {
                tree.remove(k)?;
                gone.push(r);
            }
        }
    }
    Ok(gone)
}
