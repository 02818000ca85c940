//! XEP-0115 Entity Capabilities, as the server uses them: a client's
//! presence names its features by a hash; the server asks the client once
//! per hash what it means (§6.2), checks the answer against the hash (§5.4,
//! SHA-1), and keeps the `+notify` interests it declares (XEP-0163 §4.2)
//! in replicated state, so every node knows which sessions want which
//! personal-eventing notifications.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use jid::{FullJid, Jid};
use sha1::{Digest, Sha1};

use crate::base::xml::{ns, Element};
use crate::im::context::ImCtx;
use crate::model::state::{Command, State};

pub const NS: &str = "http://jabber.org/protocol/caps";
const ID_PREFIX: &str = "starling-caps-";
/// How long an unanswered question for one hash stops another.
const ASK_AGAIN: Duration = Duration::from_secs(60);
const ASKED_MAX: usize = 10_000;

/// The verification string a presence carries, if it uses SHA-1 (the only
/// hash this server checks).
pub fn ver_of(presence: &Element) -> Option<String> {
    let c = presence.get_child("c", NS)?;
    if c.attr("hash") != Some("sha-1") {
        return None;
    }
    c.attr("ver").filter(|v| !v.is_empty()).map(str::to_string)
}

/// A form field's name and values.
type Field = (String, Vec<String>);

/// The verification string of a disco#info answer (§5.1): identities,
/// features and extended forms, each sorted, each item ended by `<`.
pub fn verification_string(query: &Element) -> String {
    let mut ids: Vec<[String; 4]> = query
        .elements()
        .filter(|e| e.name == "identity")
        .map(|e| {
            let a = |n: &str| e.attr(n).unwrap_or_default().to_string();
            [a("category"), a("type"), a("xml:lang"), a("name")]
        })
        .collect();
    ids.sort();
    let mut features: Vec<String> = query
        .elements()
        .filter(|e| e.name == "feature")
        .filter_map(|e| e.attr("var").map(str::to_string))
        .collect();
    features.sort();
    let mut s = String::new();
    for [c, t, l, n] in ids {
        s.push_str(&format!("{c}/{t}/{l}/{n}<"));
    }
    for f in features {
        s.push_str(&f);
        s.push('<');
    }
    let mut forms: Vec<(String, Vec<Field>)> = query
        .elements()
        .filter(|e| e.is("x", "jabber:x:data"))
        .filter_map(|x| {
            let mut form_type = None;
            let mut fields = Vec::new();
            for f in x.elements().filter(|f| f.name == "field") {
                let var = f.attr("var").unwrap_or_default().to_string();
                let mut values: Vec<String> = f
                    .elements()
                    .filter(|v| v.name == "value")
                    .map(|v| v.text())
                    .collect();
                if var == "FORM_TYPE" {
                    form_type = values.pop();
                } else {
                    values.sort();
                    fields.push((var, values));
                }
            }
            fields.sort();
            form_type.map(|t| (t, fields))
        })
        .collect();
    forms.sort();
    for (t, fields) in forms {
        s.push_str(&t);
        s.push('<');
        for (var, values) in fields {
            s.push_str(&var);
            s.push('<');
            for v in values {
                s.push_str(&v);
                s.push('<');
            }
        }
    }
    s
}

/// Base64 of the SHA-1 of the verification string (§5.1 step 8).
pub fn hash(query: &Element) -> String {
    let digest = Sha1::digest(verification_string(query).as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// The nodes a disco#info answer asks to be notified of (XEP-0163 §4.2).
pub fn notify_of(query: &Element) -> Vec<String> {
    let mut out: Vec<String> = query
        .elements()
        .filter(|e| e.name == "feature")
        .filter_map(|e| e.attr("var")?.strip_suffix("+notify").map(str::to_string))
        .collect();
    out.sort();
    out.dedup();
    out
}

fn asked() -> &'static Mutex<HashMap<String, Instant>> {
    static ASKED: OnceLock<Mutex<HashMap<String, Instant>>> = OnceLock::new();
    ASKED.get_or_init(Default::default)
}

/// Questions out: id -> (the full JID asked, the hash asked about).
type Pending = HashMap<String, (String, String, Instant)>;

fn pending() -> &'static Mutex<Pending> {
    static PENDING: OnceLock<Mutex<Pending>> = OnceLock::new();
    PENDING.get_or_init(Default::default)
}

/// §5.4 step 3: an answer with two identical identities or features, or
/// a `<` in a value (which would make two answers hash alike), is
/// ill-formed and not used.
fn well_formed(query: &Element) -> bool {
    let mut seen = std::collections::HashSet::new();
    for e in query.elements() {
        let key = match e.name.as_str() {
            "identity" => format!(
                "i {} {} {} {}",
                e.attr("category").unwrap_or_default(),
                e.attr("type").unwrap_or_default(),
                e.attr("xml:lang").unwrap_or_default(),
                e.attr("name").unwrap_or_default()
            ),
            "feature" => format!("f {}", e.attr("var").unwrap_or_default()),
            _ => continue,
        };
        if key.contains('<') || !seen.insert(key) {
            return false;
        }
    }
    !query
        .elements()
        .filter(|x| x.is("x", "jabber:x:data"))
        .flat_map(|x| x.elements())
        .any(|f| {
            f.attr("var").is_some_and(|v| v.contains('<'))
                || f.elements()
                    .any(|v| v.name == "value" && v.text().contains('<'))
        })
}

/// A local client's available presence: if its hash is new to the
/// cluster, ask the client what it means (§6.2). True if the hash is
/// already known (its interests can be used now).
pub fn learn(ctx: &ImCtx, from: &FullJid, presence: &Element) -> bool {
    let Some(c) = presence.get_child("c", NS) else {
        return false;
    };
    let Some(ver) = ver_of(presence) else {
        return false;
    };
    if interests_of(&ctx.state, from.as_str(), &ver).is_some() {
        return true;
    }
    {
        let mut asked = asked().lock().unwrap_or_else(|e| e.into_inner());
        // By account: an answer that does not match its hash is kept for
        // its account only, so another account with it asks again.
        let key = unverified_key(from.to_bare().as_str(), &ver);
        if asked.get(&key).is_some_and(|t| t.elapsed() < ASK_AGAIN) {
            return false;
        }
        if asked.len() >= ASKED_MAX {
            asked.retain(|_, t| t.elapsed() < ASK_AGAIN);
        }
        asked.insert(key, Instant::now());
    }
    let node = c.attr("node").unwrap_or_default();
    let id = format!("{ID_PREFIX}{}", rand::random::<u64>());
    {
        let mut p = pending().lock().unwrap_or_else(|e| e.into_inner());
        if p.len() >= ASKED_MAX {
            p.retain(|_, (_, _, t)| t.elapsed() < ASK_AGAIN);
        }
        if p.len() >= ASKED_MAX {
            return false; // too many questions out: ask later
        }
        p.insert(id.clone(), (from.to_string(), ver.clone(), Instant::now()));
    }
    let iq = Element::new("iq", ns::CLIENT)
        .with_attr("type", "get")
        .with_attr("id", id)
        .with_attr("from", ctx.config.domain.clone())
        .with_attr("to", from.to_string())
        .with_child(
            Element::new("query", ns::DISCO_INFO).with_attr("node", format!("{node}#{ver}")),
        );
    match crate::routing::route::full(ctx, from) {
        Some(t) => crate::routing::route::send(ctx, &t, iq, None),
        None => tracing::debug!(jid = %from, "caps query not sent: the session is gone"),
    }
    false
}

/// An iq result or error addressed to the server: if it answers a caps
/// query, check it and keep what it declares. True if it was one.
pub fn answered(ctx: &ImCtx, iq: &Element) -> bool {
    let Some(id) = iq.attr("id").filter(|id| id.starts_with(ID_PREFIX)) else {
        return false;
    };
    // Only an answer to a question asked, from whom it was asked.
    let asked = pending()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(id);
    let Some((asked_jid, asked_ver, _)) = asked else {
        tracing::debug!(%id, "caps answer to no question; ignored");
        return true;
    };
    if iq.attr("from") != Some(asked_jid.as_str()) {
        tracing::debug!(%id, "caps answer from another JID than asked; ignored");
        return true;
    }
    let Some(query) = iq.get_child("query", ns::DISCO_INFO) else {
        return true; // an error: the client will not say; nothing is kept
    };
    let Some(ver) = query
        .attr("node")
        .and_then(|n| n.rsplit_once('#'))
        .map(|(_, v)| v.to_string())
    else {
        return true;
    };
    if ver != asked_ver || !well_formed(query) {
        tracing::debug!(%id, "caps answer for another hash, or ill-formed; ignored");
        return true;
    }
    let Some(from) = iq.attr("from").and_then(|f| Jid::new(f).ok()) else {
        return true;
    };
    // A client whose answer does not match its hash (some compute it over
    // an older feature set) is still taken at its word, for its own
    // account only: the answer is not kept for that hash cluster-wide.
    let key = if hash(query) == ver {
        ver
    } else {
        tracing::debug!(%from, %ver, got = %hash(query), "caps answer does not match its hash; kept for this account only");
        unverified_key(from.to_bare().as_str(), &ver)
    };
    let notify = notify_of(query);
    let Some(c) = ctx.arc() else { return true };
    let full = from.try_into_full().ok();
    ctx.replicator.runtime().spawn(async move {
        match c
            .replicator
            .commit_async(&Command::CapsNotify {
                ver: key,
                notify: notify.clone(),
            })
            .await
        {
            Ok(_) => {
                // The session that prompted the question gets the last
                // items it now turns out to want (XEP-0163 §4.3.2).
                if let Some(full) = full {
                    crate::im::modules::pep::send_last_items(&c, &full, &notify);
                }
            }
            Err(e) => tracing::warn!(error = %e, "keeping a client's capabilities failed"),
        }
    });
    true
}

/// Where an answer that did not match its hash is kept: by account.
fn unverified_key(bare: &str, ver: &str) -> String {
    format!("{bare}#{ver}")
}

/// The `+notify` interests of a session `full` with capabilities `ver`,
/// if known.
pub fn interests_of(state: &State, full: &str, ver: &str) -> Option<Vec<String>> {
    state
        .caps_notify(ver)
        .or_else(|| state.caps_notify(&unverified_key(crate::base::jid_text::bare(full), ver)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::xml::parse_fragment;

    /// The worked example of XEP-0115 §5.2.
    #[test]
    fn the_simple_example_hashes_as_the_xep_says() {
        let q = parse_fragment(
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity category='client' name='Exodus 0.9.1' type='pc'/>\
             <feature var='http://jabber.org/protocol/caps'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='http://jabber.org/protocol/muc'/></query>",
        )
        .expect("parses");
        assert_eq!(hash(&q), "QgayPKawpkPSDYmwT/WM94uAlu0=");
    }

    /// The complex example of §5.3, with an extended form.
    #[test]
    fn the_complex_example_hashes_as_the_xep_says() {
        let q = parse_fragment(
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>\
             <identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>\
             <feature var='http://jabber.org/protocol/caps'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='http://jabber.org/protocol/muc'/>\
             <x xmlns='jabber:x:data' type='result'>\
             <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>\
             <field var='ip_version'><value>ipv4</value><value>ipv6</value></field>\
             <field var='os'><value>Mac</value></field>\
             <field var='os_version'><value>10.5.1</value></field>\
             <field var='software'><value>Psi</value></field>\
             <field var='software_version'><value>0.11</value></field>\
             </x></query>",
        )
        .expect("parses");
        assert_eq!(hash(&q), "q07IKJEyjvHSyhy//CH0CxmKi8w=");
    }

    /// §5.4: answers that would hash like another are not used.
    #[test]
    fn ill_formed_answers_are_refused() {
        let q = |body: &str| {
            parse_fragment(&format!(
                "<query xmlns='http://jabber.org/protocol/disco#info'>{body}</query>"
            ))
            .expect("parses")
        };
        assert!(well_formed(&q("<feature var='a'/><feature var='b'/>")));
        assert!(!well_formed(&q("<feature var='a'/><feature var='a'/>")));
        assert!(!well_formed(&q("<feature var='a&lt;b+notify'/>")));
        assert!(!well_formed(&q(
            "<x xmlns='jabber:x:data' type='result'><field var='f'><value>x&lt;y</value></field></x>"
        )));
    }

    #[test]
    fn notify_features_name_their_nodes() {
        let q = parse_fragment(
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <feature var='urn:xmpp:avatar:metadata+notify'/>\
             <feature var='urn:xmpp:avatar:metadata'/></query>",
        )
        .expect("parses");
        assert_eq!(notify_of(&q), vec!["urn:xmpp:avatar:metadata".to_string()]);
    }
}
