//! Subscriptions and presence (RFC 6121 §3, §4) between real clients.
mod common;
use common::*;
use starling::base::xml::Element;
use std::time::Duration;

const R: &str = "jabber:iq:roster";

async fn with_roster(s: &Server, user: &str, res: &str) -> Client {
    let mut c = Client::online(s.c2s, user, "pw", res).await;
    let r = c.iq(iq_get(None, Element::new("query", R))).await;
    assert_eq!(r.attr("type"), Some("result"));
    c
}

/// The next roster push's item: (subscription, ask).
async fn push(c: &mut Client, jid: &str) -> (String, Option<String>) {
    let iq = c
        .wait_for(|e| {
            e.name == "iq"
                && e.attr("type") == Some("set")
                && e.get_child("query", R)
                    .and_then(|q| q.get_child("item", R))
                    .and_then(|i| i.attr("jid"))
                    == Some(jid)
        })
        .await;
    let it = iq
        .get_child("query", R)
        .unwrap()
        .get_child("item", R)
        .unwrap();
    (
        it.attr("subscription").unwrap().to_string(),
        it.attr("ask").map(str::to_string),
    )
}

async fn presence_from(c: &mut Client, from: &str) -> Element {
    c.wait_for(|e| e.name == "presence" && e.attr("from") == Some(from))
        .await
}

/// alice <-> bob both ways, both online.
async fn befriend(a: &mut Client, b: &mut Client) {
    a.send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    assert_eq!(
        push(a, "bob@localhost").await,
        ("none".into(), Some("subscribe".into()))
    );
    let req = presence_from(b, "alice@localhost").await;
    assert_eq!(req.attr("type"), Some("subscribe"));
    b.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    assert_eq!(push(b, "alice@localhost").await.0, "from");
    assert_eq!(push(a, "bob@localhost").await, ("to".into(), None));
    let ok = presence_from(a, "bob@localhost").await;
    assert_eq!(ok.attr("type"), Some("subscribed"));
    // §3.1.5: alice now gets bob's current presence.
    let cur = presence_from(a, "bob@localhost/r").await;
    assert_eq!(cur.attr("type"), None);
    // And the other way.
    b.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    assert_eq!(
        push(b, "alice@localhost").await,
        ("from".into(), Some("subscribe".into()))
    );
    presence_from(a, "bob@localhost").await;
    a.send("<presence to='bob@localhost' type='subscribed'/>")
        .await;
    assert_eq!(push(a, "bob@localhost").await.0, "both");
    assert_eq!(push(b, "alice@localhost").await.0, "both");
    presence_from(b, "alice@localhost/r").await;
    a.drain();
    b.drain();
}

fn two_users() -> Server {
    let s = Server::start();
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    s.add_user("carol", "pw");
    s
}

#[tokio::test]
async fn subscription_handshake_and_presence_broadcast() {
    let s = two_users();
    let mut a = with_roster(&s, "alice", "r").await;
    let mut b = with_roster(&s, "bob", "r").await;
    befriend(&mut a, &mut b).await;
    // Broadcast: a status change reaches the contact.
    a.send("<presence><show>away</show><status>lunch</status></presence>")
        .await;
    let p = presence_from(&mut b, "alice@localhost/r").await;
    assert_eq!(
        p.get_child("status", "jabber:client").unwrap().text(),
        "lunch"
    );
    // A second resource of bob gets alice's presence from the probe at login.
    let mut b2 = Client::login(s.c2s, "bob", "pw", "second").await;
    b2.send("<presence/>").await;
    let probed = presence_from(&mut b2, "alice@localhost/r").await;
    assert_eq!(
        probed.get_child("status", "jabber:client").unwrap().text(),
        "lunch",
        "probe answered from the last presence"
    );
    // Logging out (a dropped connection) sends unavailable to contacts.
    drop(a);
    let gone = presence_from(&mut b, "alice@localhost/r").await;
    assert_eq!(gone.attr("type"), Some("unavailable"));
}

#[tokio::test]
async fn pending_requests_are_redelivered_at_login() {
    let s = two_users();
    let mut a = with_roster(&s, "alice", "r").await;
    a.send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    assert_eq!(
        push(&mut a, "bob@localhost").await,
        ("none".into(), Some("subscribe".into()))
    );
    // Bob was offline; he logs in later and gets the request.
    let mut b = Client::login(s.c2s, "bob", "pw", "r").await;
    b.send("<presence/>").await;
    let req = presence_from(&mut b, "alice@localhost").await;
    assert_eq!(req.attr("type"), Some("subscribe"));
    // Pending-in is not a roster item (RFC 6121 §3.1.3).
    let r = b.iq(iq_get(None, Element::new("query", R))).await;
    assert!(r.get_child("query", R).unwrap().elements().next().is_none());
    // Denying clears alice's ask.
    b.send("<presence to='alice@localhost' type='unsubscribed'/>")
        .await;
    assert_eq!(push(&mut a, "bob@localhost").await, ("none".into(), None));
    assert_eq!(
        presence_from(&mut a, "bob@localhost").await.attr("type"),
        Some("unsubscribed")
    );
}

#[tokio::test]
async fn pre_approval_and_refusals() {
    let s = two_users();
    let mut a = with_roster(&s, "alice", "r").await;
    let mut b = with_roster(&s, "bob", "r").await;
    // Bob pre-approves alice (RFC 6121 §3.4).
    b.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    b.wait_for(|e| e.name == "iq" && e.attr("type") == Some("set"))
        .await;
    a.send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    assert_eq!(
        presence_from(&mut a, "bob@localhost").await.attr("type"),
        Some("subscribed")
    );
    // Approved without asking bob again: his item now shows subscription 'from'.
    assert_eq!(push(&mut b, "alice@localhost").await.0, "from");
    let seen = b.collect_for(Duration::from_millis(300)).await;
    assert!(
        !seen
            .iter()
            .any(|e| e.name == "presence" && e.attr("type") == Some("subscribe")),
        "a pre-approved request is not shown to bob: {seen:?}"
    );
    // Subscribing to yourself is an error.
    a.send("<presence to='alice@localhost' type='subscribe' id='self'/>")
        .await;
    let e = a.wait_for(|e| e.attr("id") == Some("self")).await;
    assert_eq!(e.attr("type"), Some("error"));
    assert_eq!(stanza_condition(&e).as_deref(), Some("bad-request"));
    // A user that does not exist answers "unsubscribed" (RFC 6121 §3.1.3).
    a.send("<presence to='ghost@localhost' type='subscribe'/>")
        .await;
    assert_eq!(
        presence_from(&mut a, "ghost@localhost").await.attr("type"),
        Some("unsubscribed")
    );
    // Subscription stanzas without a contact are bad requests.
    a.send("<presence type='subscribe' id='noto'/>").await;
    let e = a.wait_for(|e| e.attr("id") == Some("noto")).await;
    assert_eq!(stanza_condition(&e).as_deref(), Some("bad-request"));
}

#[tokio::test]
async fn unsubscribe_and_roster_removal_stop_presence() {
    let s = two_users();
    let mut a = with_roster(&s, "alice", "r").await;
    let mut b = with_roster(&s, "bob", "r").await;
    befriend(&mut a, &mut b).await;
    // Alice stops wanting bob's presence: bob sees 'unsubscribe', alice sees bob go.
    a.send("<presence to='bob@localhost' type='unsubscribe'/>")
        .await;
    assert_eq!(push(&mut a, "bob@localhost").await.0, "from");
    assert_eq!(
        presence_from(&mut b, "alice@localhost").await.attr("type"),
        Some("unsubscribe")
    );
    assert_eq!(push(&mut b, "alice@localhost").await.0, "to");
    let gone = presence_from(&mut a, "bob@localhost/r").await;
    assert_eq!(gone.attr("type"), Some("unavailable"));
    // Removing the item cancels what is left.
    let rm = Element::new("iq", "jabber:client")
        .with_attr("type", "set")
        .with_child(
            Element::new("query", R).with_child(
                Element::new("item", R)
                    .with_attr("jid", "bob@localhost")
                    .with_attr("subscription", "remove"),
            ),
        );
    assert_eq!(a.iq(rm).await.attr("type"), Some("result"));
    assert_eq!(push(&mut b, "alice@localhost").await.0, "none");
    assert_eq!(
        presence_from(&mut b, "alice@localhost").await.attr("type"),
        Some("unsubscribed")
    );
    // §3.2.2: and, since bob was subscribed to alice, her unavailable.
    let gone = presence_from(&mut b, "alice@localhost/r").await;
    assert_eq!(gone.attr("type"), Some("unavailable"));
    // No more presence flows.
    a.send("<presence><status>hello?</status></presence>").await;
    b.drain();
    assert!(b.quiet_for(Duration::from_millis(300)).await);
}

#[tokio::test]
async fn directed_presence_gets_its_unavailable() {
    let s = two_users();
    let mut a = with_roster(&s, "alice", "r").await;
    let mut c = with_roster(&s, "carol", "r").await;
    a.send("<presence to='carol@localhost/r'><status>just for you</status></presence>")
        .await;
    let p = presence_from(&mut c, "alice@localhost/r").await;
    assert_eq!(
        p.get_child("status", "jabber:client").unwrap().text(),
        "just for you"
    );
    // Carol is no contact, so broadcasts do not reach her...
    a.send("<presence><status>everyone</status></presence>")
        .await;
    assert!(c.quiet_for(Duration::from_millis(300)).await);
    // ...but the logout does (RFC 6121 §4.6.3).
    drop(a);
    let gone = presence_from(&mut c, "alice@localhost/r").await;
    assert_eq!(gone.attr("type"), Some("unavailable"));
}

/// Directed presence is tracked per resource (to send unavailable later,
/// RFC 6121 §4.6) and bounded: past 1,000 targets a new one is refused
/// with <resource-constraint/> instead of remembered without end.
#[tokio::test]
async fn directed_presence_targets_are_bounded() {
    let s = Server::start();
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let mut a = Client::online(s.c2s, "alice", "pw", "r").await;
    let mut b = Client::online(s.c2s, "bob", "pw", "r").await;
    for i in 0..1000 {
        a.send(&format!("<presence to='nobody{i}@localhost'/>"))
            .await;
    }
    a.send("<presence to='bob@localhost/r' id='one-too-many'/>")
        .await;
    let err = a
        .wait_for(|e| e.name == "presence" && e.attr("type") == Some("error"))
        .await;
    assert_eq!(err.attr("id"), Some("one-too-many"));
    assert_eq!(
        stanza_condition(&err).as_deref(),
        Some("resource-constraint")
    );
    let seen = b.collect_for(std::time::Duration::from_millis(300)).await;
    assert!(
        !seen.iter().any(|e| e.attr("id") == Some("one-too-many")),
        "not delivered: {seen:?}"
    );
    // A target already tracked still gets presence.
    a.send("<presence to='nobody3@localhost' id='known'/>")
        .await;
    a.send("<presence type='unavailable' to='nobody3@localhost'/>")
        .await;
    a.send("<presence to='bob@localhost/r' id='room-again'/>")
        .await;
    let p = b.wait_for(|e| e.name == "presence").await;
    assert_eq!(p.attr("id"), Some("room-again"));
}
