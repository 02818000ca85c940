//! Everyday XEPs: carbons (0280), blocking (0191), vcard-temp (0054),
//! private storage (0049), last activity (0012), entity time (0202).
mod common;
use common::*;
use starling::base::xml::Element;
use std::time::Duration;

fn set(payload: Element) -> Element {
    Element::new("iq", "jabber:client")
        .with_attr("type", "set")
        .with_child(payload)
}

fn users(s: &Server) {
    for u in ["alice", "bob", "carol"] {
        s.add_user(u, "pw");
    }
}

const CARBONS: &str = "urn:xmpp:carbons:2";

#[tokio::test]
async fn carbons_between_two_resources() {
    let s = Server::start();
    users(&s);
    let mut desk = Client::online(s.c2s, "alice", "pw", "desk").await;
    let mut phone = Client::online(s.c2s, "alice", "pw", "phone").await;
    let mut plain = Client::online(s.c2s, "alice", "pw", "plain").await; // no carbons
    let mut bob = Client::online(s.c2s, "bob", "pw", "r").await;
    for c in [&mut desk, &mut phone] {
        assert_eq!(
            c.iq(set(Element::new("enable", CARBONS)))
                .await
                .attr("type"),
            Some("result")
        );
    }
    desk.drain();
    phone.drain();
    plain.drain();
    // Received: bob writes to alice/desk; phone gets a copy.
    bob.send(
        "<message to='alice@localhost/desk' type='chat' id='c1'><body>hi desk</body></message>",
    )
    .await;
    assert_eq!(desk.stanza("message").await.attr("id"), Some("c1"));
    let copy = phone.stanza("message").await;
    assert_eq!(copy.attr("from"), Some("alice@localhost"));
    let fwd = copy
        .get_child("received", CARBONS)
        .and_then(|r| r.get_child("forwarded", "urn:xmpp:forward:0"))
        .expect("received carbon");
    let inner = fwd.get_child("message", "jabber:client").unwrap();
    assert_eq!(inner.attr("id"), Some("c1"));
    assert_eq!(inner.attr("from"), Some("bob@localhost/r"));
    // Sent: desk writes to bob; phone gets a 'sent' copy.
    desk.send("<message to='bob@localhost/r' type='chat' id='c2'><body>hi bob</body></message>")
        .await;
    assert_eq!(bob.stanza("message").await.attr("id"), Some("c2"));
    let copy = phone.stanza("message").await;
    let inner = copy
        .get_child("sent", CARBONS)
        .and_then(|r| r.get_child("forwarded", "urn:xmpp:forward:0"))
        .and_then(|f| f.get_child("message", "jabber:client"))
        .expect("sent carbon");
    assert_eq!(inner.attr("id"), Some("c2"));
    // Marked private: no copies.
    bob.send("<message to='alice@localhost/desk' type='chat' id='c3'><body>secret</body><private xmlns='urn:xmpp:carbons:2'/></message>").await;
    assert_eq!(desk.stanza("message").await.attr("id"), Some("c3"));
    assert!(phone.quiet_for(Duration::from_millis(300)).await);
    assert!(
        plain.quiet_for(Duration::from_millis(100)).await,
        "carbons only for resources that enabled them"
    );
    // Disabled: no more copies.
    phone.iq(set(Element::new("disable", CARBONS))).await;
    bob.send("<message to='alice@localhost/desk' type='chat' id='c4'><body>x</body></message>")
        .await;
    desk.stanza("message").await;
    assert!(phone.quiet_for(Duration::from_millis(300)).await);
}

const BLOCK: &str = "urn:xmpp:blocking";

#[tokio::test]
async fn blocking_command() {
    let s = Server::start();
    users(&s);
    let mut a = Client::online(s.c2s, "alice", "pw", "r").await;
    let mut a2 = Client::online(s.c2s, "alice", "pw", "r2").await;
    let mut b = Client::online(s.c2s, "bob", "pw", "r").await;
    let list = a2.iq(iq_get(None, Element::new("blocklist", BLOCK))).await;
    assert!(list
        .get_child("blocklist", BLOCK)
        .unwrap()
        .elements()
        .next()
        .is_none());
    let r = a
        .iq(set(Element::new("block", BLOCK).with_child(
            Element::new("item", BLOCK).with_attr("jid", "bob@localhost"),
        )))
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    // The resource that asked for the list gets a push.
    let push = a2
        .wait_for(|e| e.name == "iq" && e.attr("type") == Some("set"))
        .await;
    assert!(push.get_child("block", BLOCK).is_some());
    // Bob cannot reach alice; alice cannot write to bob.
    b.send("<message to='alice@localhost/r' type='chat' id='x1'><body>hello?</body></message>")
        .await;
    let e = b.wait_for(|e| e.attr("id") == Some("x1")).await;
    assert_eq!(stanza_condition(&e).as_deref(), Some("service-unavailable"));
    a.drain();
    assert!(a
        .collect_for(Duration::from_millis(200))
        .await
        .iter()
        .all(|e| e.name != "message"));
    a.send("<message to='bob@localhost' type='chat' id='x2'><body>hi</body></message>")
        .await;
    let e = a.wait_for(|e| e.attr("id") == Some("x2")).await;
    assert_eq!(stanza_condition(&e).as_deref(), Some("not-acceptable"));
    assert!(e
        .get_child("error", "jabber:client")
        .unwrap()
        .get_child("blocked", "urn:xmpp:blocking:errors")
        .is_some());
    let list = a.iq(iq_get(None, Element::new("blocklist", BLOCK))).await;
    let items: Vec<_> = list
        .get_child("blocklist", BLOCK)
        .unwrap()
        .elements()
        .filter_map(|i| i.attr("jid"))
        .map(str::to_string)
        .collect();
    assert_eq!(items, vec!["bob@localhost".to_string()]);
    // Bad input.
    let e = a.iq(set(Element::new("block", BLOCK))).await;
    assert_eq!(stanza_condition(&e).as_deref(), Some("bad-request"));
    let e = a
        .iq(set(Element::new("block", BLOCK).with_child(
            Element::new("item", BLOCK).with_attr("jid", "@@"),
        )))
        .await;
    assert_eq!(stanza_condition(&e).as_deref(), Some("jid-malformed"));
    // Unblock all: messages flow again.
    assert_eq!(
        a.iq(set(Element::new("unblock", BLOCK))).await.attr("type"),
        Some("result")
    );
    b.send("<message to='alice@localhost/r' type='chat' id='x3'><body>again</body></message>")
        .await;
    assert_eq!(
        a.wait_for(|e| e.attr("id") == Some("x3")).await.name,
        "message"
    );
}

#[tokio::test]
async fn vcard_private_last_time() {
    let s = Server::start();
    users(&s);
    let mut a = Client::online(s.c2s, "alice", "pw", "r").await;
    let mut b = Client::online(s.c2s, "bob", "pw", "r").await;
    // vcard-temp: set own, read own and another's.
    let card = Element::new("vCard", "vcard-temp")
        .with_child(Element::new("FN", "vcard-temp").with_text("Alice A. & Co"));
    assert_eq!(a.iq(set(card.clone())).await.attr("type"), Some("result"));
    let mine = a
        .iq(iq_get(None, Element::new("vCard", "vcard-temp")))
        .await;
    assert_eq!(mine.get_child("vCard", "vcard-temp"), Some(&card));
    let theirs = b
        .iq(iq_get(
            Some("alice@localhost"),
            Element::new("vCard", "vcard-temp"),
        ))
        .await;
    assert_eq!(theirs.get_child("vCard", "vcard-temp"), Some(&card));
    let empty = a
        .iq(iq_get(
            Some("bob@localhost"),
            Element::new("vCard", "vcard-temp"),
        ))
        .await;
    assert!(empty
        .get_child("vCard", "vcard-temp")
        .unwrap()
        .elements()
        .next()
        .is_none());
    let mut other = set(card.clone());
    other.set_attr("to", "bob@localhost");
    assert_eq!(
        stanza_condition(&a.iq(other).await).as_deref(),
        Some("forbidden")
    );
    let huge = Element::new("vCard", "vcard-temp")
        .with_child(Element::new("DESC", "vcard-temp").with_text("z".repeat(70_000)));
    assert_eq!(
        stanza_condition(&a.iq(set(huge)).await).as_deref(),
        Some("not-acceptable")
    );

    // Private XML storage.
    let prefs = Element::new("prefs", "urn:example:prefs").with_attr("theme", "dark");
    let q = Element::new("query", "jabber:iq:private").with_child(prefs.clone());
    assert_eq!(a.iq(set(q)).await.attr("type"), Some("result"));
    let got = a
        .iq(iq_get(
            None,
            Element::new("query", "jabber:iq:private")
                .with_child(Element::new("prefs", "urn:example:prefs")),
        ))
        .await;
    assert_eq!(
        got.get_child("query", "jabber:iq:private")
            .unwrap()
            .get_child("prefs", "urn:example:prefs"),
        Some(&prefs)
    );
    let bad = Element::new("query", "jabber:iq:private")
        .with_child(Element::new("x", "jabber:iq:roster"));
    assert_eq!(
        stanza_condition(&a.iq(set(bad)).await).as_deref(),
        Some("not-acceptable")
    );
    let mut peek = iq_get(
        Some("alice@localhost"),
        Element::new("query", "jabber:iq:private")
            .with_child(Element::new("prefs", "urn:example:prefs")),
    );
    peek.set_attr("to", "alice@localhost");
    assert_eq!(
        stanza_condition(&b.iq(peek).await).as_deref(),
        Some("forbidden")
    );

    // Entity time.
    let t = a
        .iq(iq_get(
            Some("localhost"),
            Element::new("time", "urn:xmpp:time"),
        ))
        .await;
    let time = t.get_child("time", "urn:xmpp:time").unwrap();
    assert_eq!(
        time.get_child("tzo", "urn:xmpp:time").unwrap().text(),
        "+00:00"
    );
    assert!(time
        .get_child("utc", "urn:xmpp:time")
        .unwrap()
        .text()
        .ends_with('Z'));

    // Last activity: server uptime; a contact's only for subscribers.
    let up = a
        .iq(iq_get(
            Some("localhost"),
            Element::new("query", "jabber:iq:last"),
        ))
        .await;
    assert!(up
        .get_child("query", "jabber:iq:last")
        .unwrap()
        .attr("seconds")
        .is_some());
    let no = b
        .iq(iq_get(
            Some("alice@localhost"),
            Element::new("query", "jabber:iq:last"),
        ))
        .await;
    assert_eq!(stanza_condition(&no).as_deref(), Some("forbidden"));
    // bob subscribes to alice, who approves; alice logs out; bob asks.
    b.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    a.wait_for(|e| e.attr("type") == Some("subscribe")).await;
    a.send("<presence to='bob@localhost' type='subscribed'/>")
        .await;
    b.wait_for(|e| e.name == "presence" && e.attr("type") == Some("subscribed"))
        .await;
    drop(a);
    b.wait_for(|e| e.name == "presence" && e.attr("type") == Some("unavailable"))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let last = b
        .iq(iq_get(
            Some("alice@localhost"),
            Element::new("query", "jabber:iq:last"),
        ))
        .await;
    assert_eq!(last.attr("type"), Some("result"), "{last:?}");
    let secs: u64 = last
        .get_child("query", "jabber:iq:last")
        .unwrap()
        .attr("seconds")
        .unwrap()
        .parse()
        .unwrap();
    assert!(secs < 60);
}

/// XEP-0049 storage is capped per account: past `[limits] private_items`
/// namespaces a new one gets <resource-constraint/>; stored ones still
/// change.
#[tokio::test]
async fn private_storage_is_capped() {
    let s = Server::start_with(&[("STARLING_LIMITS_PRIVATE_ITEMS", "2")]);
    users(&s);
    let mut a = Client::online(s.c2s, "alice", "pw", "r").await;
    let store = |ns: &str, v: &str| {
        set(Element::new("query", "jabber:iq:private")
            .with_child(Element::new("prefs", ns).with_attr("v", v)))
    };
    for ns in ["urn:example:one", "urn:example:two"] {
        assert_eq!(a.iq(store(ns, "1")).await.attr("type"), Some("result"));
    }
    let r = a.iq(store("urn:example:three", "1")).await;
    assert_eq!(stanza_condition(&r).as_deref(), Some("resource-constraint"));
    assert_eq!(
        a.iq(store("urn:example:one", "2")).await.attr("type"),
        Some("result"),
        "a stored namespace still changes"
    );
}
