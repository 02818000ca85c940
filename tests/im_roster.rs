//! Rosters (RFC 6121 §2) and roster versioning (XEP-0237) over real sockets.
mod common;
use common::*;
use starling::base::xml::Element;

const R: &str = "jabber:iq:roster";

fn roster_get(ver: Option<&str>) -> Element {
    let mut q = Element::new("query", R);
    if let Some(v) = ver {
        q.set_attr("ver", v);
    }
    iq_get(None, q)
}

fn roster_set(item: Element) -> Element {
    Element::new("iq", "jabber:client")
        .with_attr("type", "set")
        .with_child(Element::new("query", R).with_child(item))
}

fn item(jid: &str, name: &str, groups: &[&str]) -> Element {
    let mut i = Element::new("item", R)
        .with_attr("jid", jid)
        .with_attr("name", name);
    for g in groups {
        i.push_child(Element::new("group", R).with_text(*g));
    }
    i
}

fn items(q: &Element) -> Vec<(String, String)> {
    q.get_child("query", R)
        .map(|q| {
            q.elements()
                .map(|i| {
                    (
                        i.attr("jid").unwrap_or("").to_string(),
                        i.attr("subscription").unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn pushes_reach_every_interested_resource() {
    let s = Server::start();
    s.add_user("alice", "pw");
    let mut desk = Client::online(s.c2s, "alice", "pw", "desk").await;
    let mut phone = Client::online(s.c2s, "alice", "pw", "phone").await;
    let mut quiet = Client::online(s.c2s, "alice", "pw", "quiet").await; // never asks for the roster
    for c in [&mut desk, &mut phone] {
        let r = c.iq(roster_get(None)).await;
        assert_eq!(r.attr("type"), Some("result"));
        assert!(items(&r).is_empty());
    }
    let r = desk
        .iq(roster_set(item(
            "bob@localhost",
            "Bob",
            &["Friends", "Work"],
        )))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    for c in [&mut desk, &mut phone] {
        let push = c
            .wait_for(|e| e.name == "iq" && e.attr("type") == Some("set"))
            .await;
        let q = push.get_child("query", R).expect("push query");
        assert!(q.attr("ver").is_some(), "pushes carry a version");
        let it = q.get_child("item", R).unwrap();
        assert_eq!(it.attr("jid"), Some("bob@localhost"));
        assert_eq!(it.attr("name"), Some("Bob"));
        assert_eq!(it.attr("subscription"), Some("none"));
        assert_eq!(it.elements().filter(|g| g.name == "group").count(), 2);
        // Acknowledge the push (RFC 6121 §2.1.6).
        c.send(&format!(
            "<iq type='result' id='{}'/>",
            push.attr("id").unwrap()
        ))
        .await;
    }
    assert!(
        quiet.quiet_for(std::time::Duration::from_millis(300)).await,
        "no pushes to uninterested resources"
    );
    // Removal is pushed too.
    let r = phone
        .iq(roster_set(
            Element::new("item", R)
                .with_attr("jid", "bob@localhost")
                .with_attr("subscription", "remove"),
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    let push = desk
        .wait_for(|e| e.name == "iq" && e.attr("type") == Some("set"))
        .await;
    assert_eq!(
        push.get_child("query", R)
            .unwrap()
            .get_child("item", R)
            .unwrap()
            .attr("subscription"),
        Some("remove")
    );
    let r = desk.iq(roster_get(None)).await;
    assert!(items(&r).is_empty());
}

#[tokio::test]
async fn versioned_roster_fetch() {
    let s = Server::start();
    s.add_user("alice", "pw");
    let mut a = Client::online(s.c2s, "alice", "pw", "desk").await;
    a.iq(roster_set(item("bob@localhost", "Bob", &[]))).await;
    let full = a.iq(roster_get(Some(""))).await;
    let ver = full
        .get_child("query", R)
        .unwrap()
        .attr("ver")
        .expect("ver")
        .to_string();
    assert_eq!(items(&full).len(), 1);
    // Up to date: an empty result (XEP-0237 §2.3).
    let same = a.iq(roster_get(Some(&ver))).await;
    assert_eq!(same.attr("type"), Some("result"));
    assert!(same.get_child("query", R).is_none(), "{same:?}");
    // Stale: the current roster with the new version.
    a.iq(roster_set(item("carol@localhost", "Carol", &[])))
        .await;
    let newer = a.iq(roster_get(Some(&ver))).await;
    let q = newer.get_child("query", R).expect("full roster");
    assert_ne!(q.attr("ver"), Some(ver.as_str()));
    assert_eq!(items(&newer).len(), 2);
    // Stream features announce versioning.
    let mut c = Client::connect(s.c2s).await;
    c.open().await;
    let mut c = c.starttls().await;
    c.open().await;
    c.auth_scram("SCRAM-SHA-256", "alice", "pw").await.unwrap();
    let f = c.open().await;
    assert!(f.get_child("ver", "urn:xmpp:features:rosterver").is_some());
    assert!(f
        .get_child("sub", "urn:xmpp:features:pre-approval")
        .is_some());
}

#[tokio::test]
async fn bad_roster_sets_get_the_rfc_errors() {
    let s = Server::start();
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let mut a = Client::online(s.c2s, "alice", "pw", "desk").await;
    let mut b = Client::online(s.c2s, "bob", "pw", "r").await;
    let two = Element::new("iq", "jabber:client")
        .with_attr("type", "set")
        .with_child(
            Element::new("query", R)
                .with_child(item("x@localhost", "x", &[]))
                .with_child(item("y@localhost", "y", &[])),
        );
    assert_eq!(
        stanza_condition(&a.iq(two).await).as_deref(),
        Some("bad-request")
    );
    assert_eq!(
        stanza_condition(&a.iq(roster_set(item("x@localhost", "x", &[""]))).await).as_deref(),
        Some("not-acceptable")
    );
    assert_eq!(
        stanza_condition(
            &a.iq(roster_set(item("x@localhost", "x", &["g", "g"])))
                .await
        )
        .as_deref(),
        Some("bad-request")
    );
    assert_eq!(
        stanza_condition(&a.iq(roster_set(item("@@", "x", &[]))).await).as_deref(),
        Some("jid-malformed")
    );
    let long = "n".repeat(2000);
    assert_eq!(
        stanza_condition(&a.iq(roster_set(item("x@localhost", &long, &[]))).await).as_deref(),
        Some("not-acceptable")
    );
    let rm = roster_set(
        Element::new("item", R)
            .with_attr("jid", "nobody@localhost")
            .with_attr("subscription", "remove"),
    );
    assert_eq!(
        stanza_condition(&a.iq(rm).await).as_deref(),
        Some("item-not-found")
    );
    // Someone else's roster: forbidden.
    let mut other = roster_get(None);
    other.set_attr("to", "bob@localhost");
    assert_eq!(
        stanza_condition(&a.iq(other).await).as_deref(),
        Some("forbidden")
    );
    // A "roster push" from a client to another user's resource is refused,
    // never delivered (RFC 6121 §2.1.6).
    let mut fake = roster_set(item("evil@localhost", "Evil", &[]));
    fake.set_attr("to", "bob@localhost/r");
    assert_eq!(
        stanza_condition(&a.iq(fake).await).as_deref(),
        Some("forbidden")
    );
    assert!(b.quiet_for(std::time::Duration::from_millis(300)).await);
}
