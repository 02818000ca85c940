//! Bookmarks kept in both places (XEP-0402 §4,
//! `urn:xmpp:bookmarks:1#compat`; the conversion XEP-0411 describes): a
//! client that reads `storage:bookmarks` from private XML storage
//! (XEP-0049, XEP-0048) sees the rooms of the account's PEP bookmarks
//! node, and one that writes it there has the node follow, so old and new
//! clients of one account share their rooms. URL bookmarks, which PEP
//! bookmarks do not have, stay in private storage only.
//!
//! The same for clients that keep `storage:bookmarks` as a PEP node
//! (XEP-0048 §3.3 over XEP-0163; `urn:xmpp:bookmarks:1#compat-pep`): one
//! publishing there has the bookmarks node follow, and a change to the
//! bookmarks node (or to private storage) is published there as one
//! `current` item.

use jid::BareJid;

use crate::base::xml::{parse_fragment, Element};
use crate::im::context::ImCtx;
use crate::im::pubsub::{self, Kind};
use crate::model::state::pubsub::{AccessModel, NodeConfig, PubsubOp, SendLast};
use crate::model::state::{Command, State};

pub const NODE: &str = "urn:xmpp:bookmarks:1";
pub const LEGACY: &str = "storage:bookmarks";
pub const COMPAT: &str = "urn:xmpp:bookmarks:1#compat";
/// The legacy PEP node and the bookmarks node follow each other (XEP-0402 §5.2).
pub const COMPAT_PEP: &str = "urn:xmpp:bookmarks:1#compat-pep";
/// The private-storage key of `<storage xmlns='storage:bookmarks'/>`.
pub const PRIVATE_KEY: &str = "storage\u{1}storage:bookmarks";

/// The node's configuration XEP-0402 §3 asks clients to publish with.
fn config() -> NodeConfig {
    NodeConfig {
        access_model: AccessModel::Whitelist,
        max_items: pubsub::MAX_ITEMS,
        persist_items: true,
        send_last_published_item: SendLast::Never,
        ..NodeConfig::default()
    }
}

fn autojoin(v: Option<&str>) -> &'static str {
    if matches!(v, Some("true") | Some("1")) {
        "true"
    } else {
        "false"
    }
}

/// One bookmark moved between namespaces: its name and autojoin
/// attributes and its nick and password children.
fn convert(from: &Element, ns: &str) -> Element {
    let mut c =
        Element::new("conference", ns).with_attr("autojoin", autojoin(from.attr("autojoin")));
    if let Some(n) = from.attr("name") {
        c.set_attr("name", n);
    }
    for child in from
        .elements()
        .filter(|e| e.name == "nick" || e.name == "password")
    {
        c.push_child(Element::new(child.name.clone(), ns).with_text(child.text()));
    }
    c
}

/// What a private-storage read of `storage:bookmarks` answers: the PEP
/// node's rooms and the stored URL bookmarks, if the node exists.
pub fn private_view(state: &State, user: &str, stored: Option<&Element>) -> Option<Element> {
    state.pubsub_node(user, NODE)?;
    let mut storage = Element::new("storage", LEGACY);
    for (id, xml) in state.pubsub_items(user, NODE) {
        let Ok(c) = parse_fragment(&xml) else {
            continue;
        };
        storage.push_child(convert(&c, LEGACY).with_attr("jid", id));
    }
    for url in stored
        .into_iter()
        .flat_map(|s| s.elements())
        .filter(|e| e.name == "url")
    {
        storage.push_child(url.clone());
    }
    Some(storage)
}

/// The PEP items for a private-storage write of `storage`.
/// One per room (the last one written wins); a room's `<extensions/>`
/// from `held` (the node's items now), which private XML cannot carry,
/// are kept.
pub fn items_of(storage: &Element, held: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for c in storage.elements().filter(|e| e.name == "conference") {
        let Some(jid) = c.attr("jid").and_then(|j| BareJid::new(j).ok()) else {
            continue;
        };
        let id = jid.to_string();
        let mut item = convert(c, NODE);
        let kept = held
            .iter()
            .find(|(i, _)| *i == id)
            .and_then(|(_, xml)| parse_fragment(xml).ok())
            .and_then(|old| old.get_child("extensions", NODE).cloned());
        if let Some(ext) = kept {
            item.push_child(ext);
        }
        out.retain(|(i, _)| *i != id);
        out.push((id, item.to_xml("")));
    }
    out
}

/// Whether bookmarks may be copied into `user`'s PEP node `node`: it does
/// not exist yet (it is made owner-only), or only its owner reads it.
/// Bookmarks carry room passwords: a node a client made readable by
/// contacts (an old client publishing without options gets the PEP
/// default, presence access) is not written to; the copy is skipped.
fn private_node(state: &State, user: &str, node: &str) -> bool {
    let private = state
        .pubsub_node(user, node)
        .is_none_or(|m| m.config.access_model == AccessModel::Whitelist);
    if !private {
        tracing::info!(%user, node, "bookmarks not copied: that node is readable by others than its owner");
    }
    private
}

/// After a private-storage write of `storage`: the PEP node holds the
/// same rooms, and the account's interested resources hear of each.
pub async fn follow_private(ctx: &ImCtx, user: &str, storage: &Element) {
    if crate::model::config::is_anonymous_account(user) {
        return; // no PEP service on the anonymous host
    }
    if !private_node(&ctx.state, user, NODE) {
        return;
    }
    let Some(b) = super::pep::backend(ctx) else {
        return;
    };
    let held = ctx.state.pubsub_items(user, NODE);
    let items = items_of(storage, &held);
    // Rooms no longer there are retracted (clients drop them).
    let gone: Vec<String> = held
        .iter()
        .map(|(id, _)| id.clone())
        .filter(|id| !items.iter().any(|(i, _)| i == id))
        .collect();
    let cmd = Command::Pubsub {
        owner: user.to_string(),
        node: NODE.to_string(),
        op: PubsubOp::Replace {
            items: items.clone(),
            config: config(),
        },
    };
    let (user, service) = (user.to_string(), format!("{user}@{}", ctx.config.domain));
    match ctx.replicator.commit_async(&cmd).await {
        Ok(_) => {
            let mut all = Element::new("items", pubsub::EVENT).with_attr("node", NODE);
            for (id, xml) in items {
                if let Ok(p) = parse_fragment(&xml) {
                    all.push_child(
                        Element::new("item", pubsub::EVENT)
                            .with_attr("id", id)
                            .with_child(p),
                    );
                }
            }
            pubsub::tell(&b, Kind::Pep, &user, &service, NODE, all);
            for id in gone {
                let retract = Element::new("items", pubsub::EVENT)
                    .with_attr("node", NODE)
                    .with_child(Element::new("retract", pubsub::EVENT).with_attr("id", id));
                pubsub::tell(&b, Kind::Pep, &user, &service, NODE, retract);
            }
        }
        Err(e) => tracing::warn!(%user, error = %e, "bookmarks not copied to PEP"),
    }
}

/// The legacy PEP node (XEP-0048 §3.3 over PEP, XEP-0402 §5.2
/// `#compat-pep`): one item, `current`, holding the whole list.
const LEGACY_ITEM: &str = "current";

/// After the bookmarks node changed (a client published or retracted
/// there, or wrote private storage): the legacy PEP node holds the same
/// rooms, and the account's resources that want it hear of it.
pub async fn legacy_follows(ctx: &ImCtx, user: &str) {
    if crate::model::config::is_anonymous_account(user) || !private_node(&ctx.state, user, LEGACY) {
        return;
    }
    let Some(b) = super::pep::backend(ctx) else {
        return;
    };
    let old = ctx
        .state
        .pubsub_items(user, LEGACY)
        .pop()
        .and_then(|(_, xml)| parse_fragment(&xml).ok());
    // URL bookmarks live only in the legacy forms: they stay.
    let Some(storage) = private_view(&ctx.state, user, old.as_ref()) else {
        return;
    };
    let xml = storage.to_xml("");
    if old.map(|o| o.to_xml("")) == Some(xml.clone()) {
        return;
    }
    let cmd = Command::Pubsub {
        owner: user.to_string(),
        node: LEGACY.to_string(),
        op: PubsubOp::Replace {
            items: vec![(LEGACY_ITEM.to_string(), xml)],
            config: config(),
        },
    };
    match ctx.replicator.commit_async(&cmd).await {
        Ok(_) => {
            let service = format!("{user}@{}", ctx.config.domain);
            let items = Element::new("items", pubsub::EVENT)
                .with_attr("node", LEGACY)
                .with_child(
                    Element::new("item", pubsub::EVENT)
                        .with_attr("id", LEGACY_ITEM)
                        .with_child(storage),
                );
            pubsub::tell(&b, Kind::Pep, user, &service, LEGACY, items);
        }
        Err(e) => tracing::warn!(%user, error = %e, "bookmarks not copied to the legacy PEP node"),
    }
}

/// After a client published the legacy PEP node: the bookmarks node
/// follows, as it does a private-storage write.
pub async fn follow_legacy_pep(ctx: &ImCtx, user: &str) {
    let Some(storage) = ctx
        .state
        .pubsub_items(user, LEGACY)
        .pop()
        .and_then(|(_, xml)| parse_fragment(&xml).ok())
        .filter(|s| s.is("storage", LEGACY))
    else {
        return;
    };
    follow_private(ctx, user, &storage).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_bookmark_becomes_a_pep_item_and_back() {
        let storage = parse_fragment(
            "<storage xmlns='storage:bookmarks'>\
             <conference jid='lobby@conference.localhost' name='Lobby' autojoin='1'>\
             <nick>al</nick></conference>\
             <conference jid='not a jid@@' name='bad'/>\
             <url name='site' url='https://example.org/'/></storage>",
        )
        .expect("parses");
        let items = items_of(&storage, &[]);
        assert_eq!(items.len(), 1, "{items:?}");
        assert_eq!(items[0].0, "lobby@conference.localhost");
        let pep = parse_fragment(&items[0].1).expect("item parses");
        assert_eq!(pep.ns, NODE);
        assert_eq!(pep.attr("autojoin"), Some("true"));
        assert_eq!(pep.attr("name"), Some("Lobby"));
        assert_eq!(
            pep.get_child("nick", NODE).map(|n| n.text()),
            Some("al".into())
        );
        let back = convert(&pep, LEGACY);
        assert_eq!(
            back.get_child("nick", LEGACY).map(|n| n.text()),
            Some("al".into())
        );
    }
}
