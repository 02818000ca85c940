//! User avatars in both forms (XEP-0398, `urn:xmpp:pep-vcard-conversion:0`):
//! an avatar published with PEP (XEP-0084) becomes the vCard's PHOTO
//! (XEP-0054, XEP-0153), a PHOTO set in the vCard is published as PEP
//! avatar data and metadata (telling the contacts who want it), and the
//! account's available presence carries the avatar's hash
//! (`vcard-temp:x:update`, §3) so vCard-based clients fetch it.

use base64::Engine;
use sha1::{Digest, Sha1};

use crate::base::xml::{parse_fragment, Element};
use crate::im::context::ImCtx;
use crate::im::pubsub::{self, Kind};
use crate::model::state::pubsub::PubsubOp;
use crate::model::state::{Command, State};

pub const FEATURE: &str = "urn:xmpp:pep-vcard-conversion:0";
pub const DATA: &str = "urn:xmpp:avatar:data";
pub const META: &str = "urn:xmpp:avatar:metadata";
const VCARD: &str = "vcard-temp";
const UPDATE: &str = "vcard-temp:x:update";

/// The current avatar's metadata `<info/>` (the first without a URL,
/// XEP-0084 §4.2.1), or None for no avatar; the outer None: no metadata
/// published.
fn current_info(state: &State, user: &str) -> Option<Option<Element>> {
    let (_, xml) = state.pubsub_items(user, META).pop()?;
    let meta = parse_fragment(&xml).ok()?;
    let info = meta
        .elements()
        .find(|e| e.name == "info" && e.attr("url").is_none())
        .cloned();
    Some(info)
}

/// The hash the account's presence carries, if it published metadata:
/// empty for "no avatar".
pub fn presence_photo(state: &State, user: &str) -> Option<String> {
    let info = current_info(state, user)?;
    Some(
        info.and_then(|i| i.attr("id").map(str::to_string))
            .unwrap_or_default(),
    )
}

/// Add the avatar's hash to an available presence that has none.
pub fn stamp_presence(state: &State, user: &str, presence: &mut Element) {
    let said = presence
        .get_child("x", UPDATE)
        .is_some_and(|x| x.get_child("photo", UPDATE).is_some());
    if presence.attr("type").is_some() || said {
        return;
    }
    let Some(hash) = presence_photo(state, user) else {
        return;
    };
    let mut photo = Element::new("photo", UPDATE);
    if !hash.is_empty() {
        photo = photo.with_text(hash);
    }
    // An empty `<x/>` (the client does not know yet) gets the hash.
    presence.children.retain(|c| match c {
        crate::base::xml::Node::Element(e) => !e.is("x", UPDATE),
        _ => true,
    });
    presence.push_child(Element::new("x", UPDATE).with_child(photo));
}

/// After a client published avatar metadata: the vCard's PHOTO follows.
pub async fn vcard_follows_pep(ctx: &ImCtx, user: &str) {
    let Some(info) = current_info(&ctx.state, user) else {
        return;
    };
    let mut card = ctx
        .state
        .vcard(user)
        .ok()
        .flatten()
        .and_then(|x| parse_fragment(&x).ok())
        .unwrap_or_else(|| Element::new("vCard", VCARD));
    let before = card.to_xml("");
    card.children.retain(|c| match c {
        crate::base::xml::Node::Element(e) => e.name != "PHOTO",
        _ => true,
    });
    if let Some(info) = info {
        let id = info.attr("id").unwrap_or_default();
        let data = ctx
            .state
            .pubsub_items(user, DATA)
            .into_iter()
            .find(|(i, _)| i == id)
            .and_then(|(_, xml)| parse_fragment(&xml).ok())
            .map(|d| d.text());
        let Some(data) = data else {
            return tracing::debug!(%user, %id, "avatar metadata without its data; vCard left as it is");
        };
        card.push_child(
            Element::new("PHOTO", VCARD)
                .with_child(
                    Element::new("TYPE", VCARD).with_text(info.attr("type").unwrap_or("image/png")),
                )
                .with_child(Element::new("BINVAL", VCARD).with_text(data)),
        );
    }
    let xml = card.to_xml("");
    if xml == before {
        return;
    }
    if xml.len() > ctx.config.limits.vcard_size {
        return tracing::info!(%user, "the PEP avatar is larger than a vCard may be; vCard left as it is");
    }
    let cmd = Command::SetVcard {
        username: user.to_string(),
        vcard: xml,
    };
    if let Err(e) = ctx.replicator.commit_async(&cmd).await {
        tracing::warn!(%user, error = %e, "vCard not updated from the PEP avatar");
    }
}

/// After a vCard write: its PHOTO is published as the PEP avatar (data,
/// then metadata, which the account's contacts are told of).
pub async fn pep_follows_vcard(ctx: &ImCtx, user: &str, card: &Element) {
    if crate::model::config::is_anonymous_account(user) {
        return; // no PEP service on the anonymous host
    }
    let photo = card.get_child("PHOTO", VCARD);
    let current = current_info(&ctx.state, user);
    let (meta, data) = match photo.and_then(|p| p.get_child("BINVAL", VCARD)) {
        Some(bin) => {
            let b64: String = bin.text().split_whitespace().collect();
            let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&b64) else {
                return tracing::info!(%user, "vCard PHOTO is not base64; not published");
            };
            let id: String = Sha1::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if current
                .as_ref()
                .and_then(|i| i.as_ref())
                .and_then(|i| i.attr("id"))
                == Some(id.as_str())
            {
                return;
            }
            let kind = photo
                .and_then(|p| p.get_child("TYPE", VCARD))
                .map(|t| t.text())
                .unwrap_or_else(|| "image/png".into());
            let meta = Element::new("metadata", META).with_child(
                Element::new("info", META)
                    .with_attr("id", id.clone())
                    .with_attr("bytes", bytes.len().to_string())
                    .with_attr("type", kind),
            );
            (meta, Some((id, Element::new("data", DATA).with_text(b64))))
        }
        // No photo: "no avatar", if the account had published one.
        None => match current {
            Some(Some(_)) => (Element::new("metadata", META), None),
            _ => return,
        },
    };
    let meta_id = data
        .as_ref()
        .map(|(id, _)| id.clone())
        .unwrap_or_else(|| "current".into());
    let mut writes = Vec::new();
    if let Some((id, d)) = &data {
        writes.push((DATA, id.clone(), d.clone()));
    }
    writes.push((META, meta_id, meta));
    let Some(b) = super::pep::backend(ctx) else {
        return;
    };
    let service = format!("{user}@{}", ctx.config.domain);
    for (node, id, payload) in writes {
        let cmd = Command::Pubsub {
            owner: user.to_string(),
            node: node.to_string(),
            op: PubsubOp::Publish {
                id: id.clone(),
                xml: payload.to_xml(""),
                config: pubsub::default_config(Kind::Pep),
                creator: None,
            },
        };
        if let Err(e) = ctx.replicator.commit_async(&cmd).await {
            return tracing::warn!(%user, error = %e, "vCard avatar not published with PEP");
        }
        let items = Element::new("items", pubsub::EVENT)
            .with_attr("node", node)
            .with_child(
                Element::new("item", pubsub::EVENT)
                    .with_attr("id", id)
                    .with_child(payload),
            );
        pubsub::tell(&b, Kind::Pep, user, &service, node, items);
    }
}
