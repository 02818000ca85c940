//! Publish-subscribe nodes (XEP-0060) as replicated state: each account's
//! personal eventing nodes (XEP-0163), owned by the username. A node is a
//! record of its configuration and explicit subscribers, and one record per
//! item in publish order, so a publish writes one item, never the node
//! whole, and the oldest items beyond `max_items` go (XEP-0060 §12.12).

use serde::{Deserialize, Serialize};

use super::tracked::Tracked;
use super::{data_key, StateError};

/// Who may read a node and be told of its items (XEP-0060 §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessModel {
    Open,
    Presence,
    Roster,
    Whitelist,
}

impl AccessModel {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessModel::Open => "open",
            AccessModel::Presence => "presence",
            AccessModel::Roster => "roster",
            AccessModel::Whitelist => "whitelist",
        }
    }

    pub fn parse(s: &str) -> Option<AccessModel> {
        Some(match s {
            "open" => AccessModel::Open,
            "presence" => AccessModel::Presence,
            "roster" => AccessModel::Roster,
            "whitelist" => AccessModel::Whitelist,
            _ => return None,
        })
    }
}

/// When a node's last item goes to a new subscriber (XEP-0060 §12.15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SendLast {
    Never,
    OnSub,
    OnSubAndPresence,
}

impl SendLast {
    pub fn as_str(self) -> &'static str {
        match self {
            SendLast::Never => "never",
            SendLast::OnSub => "on_sub",
            SendLast::OnSubAndPresence => "on_sub_and_presence",
        }
    }

    pub fn parse(s: &str) -> Option<SendLast> {
        Some(match s {
            "never" => SendLast::Never,
            "on_sub" => SendLast::OnSub,
            "on_sub_and_presence" => SendLast::OnSubAndPresence,
            _ => return None,
        })
    }
}

/// An entity's standing on a node (XEP-0060 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Affiliation {
    Owner,
    Publisher,
    Member,
    Outcast,
}

impl Affiliation {
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Owner => "owner",
            Affiliation::Publisher => "publisher",
            Affiliation::Member => "member",
            Affiliation::Outcast => "outcast",
        }
    }

    /// `none` is no affiliation (`Some(None)`); unknown is `None`.
    pub fn parse(s: &str) -> Option<Option<Affiliation>> {
        Some(Some(match s {
            "owner" => Affiliation::Owner,
            "publisher" => Affiliation::Publisher,
            "member" => Affiliation::Member,
            "outcast" => Affiliation::Outcast,
            "none" => return Some(None),
            _ => return None,
        }))
    }
}

/// A node's configuration (`pubsub#node_config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    pub access_model: AccessModel,
    pub max_items: u32,
    pub persist_items: bool,
    pub notify_retract: bool,
    pub notify_delete: bool,
    pub send_last_published_item: SendLast,
    pub title: Option<String>,
}

impl Default for NodeConfig {
    /// XEP-0163 §4.1: a PEP node defaults to the presence access model,
    /// and sends its last item to contacts coming online.
    fn default() -> Self {
        NodeConfig {
            access_model: AccessModel::Presence,
            max_items: 1,
            persist_items: true,
            notify_retract: true,
            notify_delete: true,
            send_last_published_item: SendLast::OnSubAndPresence,
            title: None,
        }
    }
}

/// A node's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    pub config: NodeConfig,
    /// Explicit subscriptions (XEP-0060 §6.1), by the JID subscribed.
    pub subscribers: Vec<String>,
    /// The next item's place in publish order.
    pub next: u64,
    /// Affiliations by bare JID (a service's nodes; an account's PEP nodes
    /// have their account as the one owner and keep none here).
    #[serde(default)]
    pub affiliations: Vec<(String, Affiliation)>,
}

impl NodeMeta {
    fn new(config: &NodeConfig, creator: &Option<String>) -> NodeMeta {
        NodeMeta {
            config: config.clone(),
            subscribers: Vec::new(),
            next: 0,
            affiliations: creator
                .iter()
                .map(|c| (c.clone(), Affiliation::Owner))
                .collect(),
        }
    }

    /// `bare`'s affiliation, if any.
    pub fn affiliation(&self, bare: &str) -> Option<Affiliation> {
        self.affiliations
            .iter()
            .find(|(j, _)| j == bare)
            .map(|(_, a)| *a)
    }
}

/// A change to one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PubsubOp {
    /// Create the node with `config` unless it exists; then store the item
    /// (replacing one with the same id, which becomes the newest).
    Publish {
        id: String,
        xml: String,
        config: NodeConfig,
        /// Who becomes the owner of a node this creates (a service's).
        #[serde(default)]
        creator: Option<String>,
    },
    Create {
        config: NodeConfig,
        #[serde(default)]
        creator: Option<String>,
    },
    /// Set (or with None, remove) a bare JID's affiliation.
    Affiliate {
        jid: String,
        affiliation: Option<Affiliation>,
    },
    Configure {
        config: NodeConfig,
    },
    Retract {
        id: String,
    },
    /// Make the node (with `config` if new) hold exactly `items`, in
    /// order (a client's whole bookmarks written through private storage,
    /// XEP-0402 §4).
    Replace {
        items: Vec<(String, String)>,
        config: NodeConfig,
    },
    Purge,
    Delete,
    Subscribe {
        jid: String,
    },
    Unsubscribe {
        jid: String,
    },
}

/// What a change did (for the answer and the notifications).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PubsubApplied {
    /// The node existed before the change.
    pub existed: bool,
    /// The item a retraction named existed.
    pub found: bool,
}

fn meta_key(owner: &str, node: &str) -> Vec<u8> {
    data_key(owner, "ps", node)
}

fn items_prefix(owner: &str, node: &str) -> Vec<u8> {
    data_key(owner, "psi", &format!("{node}\0"))
}

fn item_key(owner: &str, node: &str, seq: u64) -> Vec<u8> {
    data_key(owner, "psi", &format!("{node}\0{seq:020}"))
}

/// A node's record, if it exists.
pub fn node(tree: &sled::Tree, owner: &str, node: &str) -> Result<Option<NodeMeta>, StateError> {
    match tree.get(meta_key(owner, node))? {
        Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
        None => Ok(None),
    }
}

/// The names of an owner's nodes.
pub fn nodes(tree: &sled::Tree, owner: &str) -> Result<Vec<String>, StateError> {
    let prefix = data_key(owner, "ps", "");
    let mut out = Vec::new();
    for k in tree.scan_prefix(&prefix).keys() {
        let k = k?;
        out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
    }
    Ok(out)
}

/// A node's items, oldest first: (item id, payload XML).
pub fn items(
    tree: &sled::Tree,
    owner: &str,
    node: &str,
) -> Result<Vec<(String, String)>, StateError> {
    let mut out = Vec::new();
    for v in tree.scan_prefix(items_prefix(owner, node)).values() {
        out.push(serde_json::from_slice(&v?)?);
    }
    Ok(out)
}

fn item_keys(
    tree: &sled::Tree,
    owner: &str,
    node: &str,
) -> Result<Vec<(sled::IVec, String)>, StateError> {
    let mut out = Vec::new();
    for kv in tree.scan_prefix(items_prefix(owner, node)) {
        let (k, v) = kv?;
        let (id, _): (String, String) = serde_json::from_slice(&v)?;
        out.push((k, id));
    }
    Ok(out)
}

/// Apply one change to `owner`'s `node`.
pub fn apply(
    tree: &Tracked,
    owner: &str,
    name: &str,
    op: &PubsubOp,
) -> Result<PubsubApplied, StateError> {
    let old = node(tree, owner, name)?;
    let mut done = PubsubApplied {
        existed: old.is_some(),
        found: false,
    };
    let put = |meta: &NodeMeta| -> Result<(), StateError> {
        tree.insert(meta_key(owner, name), serde_json::to_vec(meta)?)?;
        Ok(())
    };
    let clear = || -> Result<(), StateError> {
        for (k, _) in item_keys(tree, owner, name)? {
            tree.remove(k)?;
        }
        Ok(())
    };
    match op {
        PubsubOp::Publish {
            id,
            xml,
            config,
            creator,
        } => {
            // A service's node made by someone else between the request's
            // check and this commit: only its owners and publishers write.
            if let (Some(meta), Some(c)) = (&old, creator) {
                if !matches!(
                    meta.affiliation(c),
                    Some(Affiliation::Owner | Affiliation::Publisher)
                ) {
                    return Err(StateError::Superseded(format!("{owner} {name}")));
                }
            }
            let mut meta = old.unwrap_or_else(|| NodeMeta::new(config, creator));
            let mut held = Vec::new();
            for (k, old_id) in item_keys(tree, owner, name)? {
                if &old_id == id {
                    tree.remove(k)?;
                } else {
                    held.push(k);
                }
            }
            tree.insert(
                item_key(owner, name, meta.next),
                serde_json::to_vec(&(id, xml))?,
            )?;
            meta.next += 1;
            // A node that does not persist items keeps the last one only
            // (for the last-item delivery).
            let keep = if meta.config.persist_items {
                meta.config.max_items.max(1) as usize
            } else {
                1
            };
            let over = (held.len() + 1).saturating_sub(keep);
            for k in held.into_iter().take(over) {
                tree.remove(k)?;
            }
            put(&meta)?;
        }
        PubsubOp::Replace { items, config } => {
            let mut meta = old.unwrap_or_else(|| NodeMeta::new(config, &None));
            clear()?;
            // The node holds them all (within the node's cap).
            let keep = items.len().min(config.max_items.max(1) as usize);
            meta.config.max_items = meta.config.max_items.max(keep as u32);
            let from = items.len().saturating_sub(keep);
            for (id, xml) in &items[from..] {
                tree.insert(
                    item_key(owner, name, meta.next),
                    serde_json::to_vec(&(id, xml))?,
                )?;
                meta.next += 1;
            }
            put(&meta)?;
        }
        PubsubOp::Create { config, creator } => {
            if old.is_none() {
                put(&NodeMeta::new(config, creator))?;
            }
        }
        PubsubOp::Affiliate { jid, affiliation } => {
            if let Some(mut meta) = old {
                meta.affiliations.retain(|(j, _)| j != jid);
                if let Some(a) = affiliation {
                    meta.affiliations.push((jid.clone(), *a));
                }
                // An outcast's subscriptions end (§8.8.2.4).
                if *affiliation == Some(Affiliation::Outcast) {
                    meta.subscribers
                        .retain(|s| crate::base::jid_text::bare(s) != jid);
                }
                put(&meta)?;
            }
        }
        PubsubOp::Configure { config } => {
            if let Some(mut meta) = old {
                meta.config = config.clone();
                let held = item_keys(tree, owner, name)?;
                let keep = if config.persist_items {
                    config.max_items.max(1) as usize
                } else {
                    1
                };
                let over = held.len().saturating_sub(keep);
                for (k, _) in held.into_iter().take(over) {
                    tree.remove(k)?;
                }
                put(&meta)?;
            }
        }
        PubsubOp::Retract { id } => {
            for (k, held) in item_keys(tree, owner, name)? {
                if &held == id {
                    tree.remove(k)?;
                    done.found = true;
                }
            }
        }
        PubsubOp::Purge => clear()?,
        PubsubOp::Delete => {
            clear()?;
            tree.remove(meta_key(owner, name))?;
        }
        PubsubOp::Subscribe { jid } => {
            if let Some(mut meta) = old {
                if !meta.subscribers.contains(jid) {
                    meta.subscribers.push(jid.clone());
                    put(&meta)?;
                }
            }
        }
        PubsubOp::Unsubscribe { jid } => {
            if let Some(mut meta) = old {
                let before = meta.subscribers.len();
                meta.subscribers.retain(|s| s != jid);
                done.found = meta.subscribers.len() != before;
                put(&meta)?;
            }
        }
    }
    Ok(done)
}
