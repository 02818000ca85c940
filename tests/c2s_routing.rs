//! Stanza routing between local sessions: full and bare JIDs, 'from'
//! stamping and checking, and the errors for what cannot be delivered.
mod common;
use common::*;
use starling::base::xml::Element;
use std::time::Duration;

fn users(s: &Server) {
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
}

#[tokio::test]
async fn messages_to_full_and_bare_jids() {
    let s = Server::start();
    users(&s);
    let mut a = Client::online(s.c2s, "alice", "pw", "desk").await;
    let mut b1 = Client::online(s.c2s, "bob", "pw", "one").await;
    // b1 sees its own presence echo only; b2 joins with a higher priority.
    let mut b2 = Client::login(s.c2s, "bob", "pw", "two").await;
    b2.send("<presence><priority>5</priority></presence>").await;
    b2.stanza("presence").await;
    let p = b1.stanza("presence").await;
    assert_eq!(
        p.attr("from"),
        Some("bob@localhost/two"),
        "own resources see each other"
    );

    a.send("<message to='bob@localhost/one' type='chat' id='m1'><body>one</body></message>")
        .await;
    let m = b1.stanza("message").await;
    assert_eq!(
        m.attr("from"),
        Some("alice@localhost/desk"),
        "server stamps from"
    );
    assert_eq!(m.get_child("body", "jabber:client").unwrap().text(), "one");

    // Bare JID: the highest-priority available resource (RFC 6121 §8.5.2.1.1).
    a.send("<message to='bob@localhost' type='chat' id='m2'><body>bare</body></message>")
        .await;
    let m = b2.stanza("message").await;
    assert_eq!(m.attr("id"), Some("m2"));
    assert!(
        b1.quiet_for(Duration::from_millis(300)).await,
        "lower priority must not get it"
    );

    // A full JID that is offline is treated like the bare JID.
    a.send("<message to='bob@localhost/gone' type='chat' id='m3'><body>x</body></message>")
        .await;
    assert_eq!(b2.stanza("message").await.attr("id"), Some("m3"));

    // Only negative priority left: nothing takes it now; it waits offline
    // (RFC 6121 §8.5.2.2, XEP-0160) for a resource with priority >= 0.
    b2.send("<presence><priority>-1</priority></presence>")
        .await;
    // Sessions are served in parallel: only b2's own echo says the server
    // has taken its new priority (b1's presence may overtake it).
    b2.wait_for(|e| {
        e.name == "presence"
            && e.attr("from") == Some("bob@localhost/two")
            && e.get_child("priority", "jabber:client")
                .is_some_and(|p| p.text() == "-1")
    })
    .await;
    b1.send("<presence type='unavailable'/>").await;
    let gone = b2
        .wait_for(|e| e.name == "presence" && e.attr("from") == Some("bob@localhost/one"))
        .await;
    assert_eq!(gone.attr("type"), Some("unavailable"));
    b2.drain();
    a.send("<message to='bob@localhost' type='chat' id='m4'><body>later</body></message>")
        .await;
    assert!(
        a.quiet_for(Duration::from_millis(300)).await,
        "no error: stored"
    );
    assert!(
        b2.quiet_for(Duration::from_millis(300)).await,
        "not given to a negative priority"
    );
    b1.send("<presence/>").await;
    let m = b1.wait_for(|e| e.attr("id") == Some("m4")).await;
    assert!(m.get_child("delay", "urn:xmpp:delay").is_some());
}

#[tokio::test]
async fn spoofed_from_is_a_stream_error() {
    let s = Server::start();
    users(&s);
    let mut a = Client::online(s.c2s, "alice", "pw", "desk").await;
    // Its own bare or full JID is allowed.
    a.send("<message from='alice@localhost' to='alice@localhost/desk' id='ok1'><body>x</body></message>").await;
    assert_eq!(
        a.stanza("message").await.attr("from"),
        Some("alice@localhost/desk")
    );
    a.send("<message from='bob@localhost/one' to='alice@localhost/desk'><body>x</body></message>")
        .await;
    assert_eq!(a.stream_error().await, "invalid-from");
}

#[tokio::test]
async fn iq_errors() {
    let s = Server::start();
    users(&s);
    let mut a = Client::online(s.c2s, "alice", "pw", "desk").await;
    let mut b = Client::online(s.c2s, "bob", "pw", "one").await;

    // Nobody handles this namespace.
    let r = a
        .iq(iq_get(
            Some("localhost"),
            Element::new("query", "urn:example:nothing"),
        ))
        .await;
    assert_eq!(stanza_condition(&r).as_deref(), Some("service-unavailable"));
    assert_eq!(
        r.get_child("error", "jabber:client").unwrap().attr("type"),
        Some("cancel")
    );
    // get/set must have exactly one payload.
    a.send("<iq type='get' id='z0' to='localhost'/>").await;
    let r = a.wait_for(|e| e.attr("id") == Some("z0")).await;
    assert_eq!(stanza_condition(&r).as_deref(), Some("bad-request"));
    a.send("<iq type='get' id='z2' to='localhost'><ping xmlns='urn:xmpp:ping'/><ping xmlns='urn:xmpp:ping'/></iq>").await;
    let r = a.wait_for(|e| e.attr("id") == Some("z2")).await;
    assert_eq!(stanza_condition(&r).as_deref(), Some("bad-request"));
    a.send("<iq type='fetch' id='zt' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let r = a.wait_for(|e| e.attr("id") == Some("zt")).await;
    assert_eq!(stanza_condition(&r).as_deref(), Some("bad-request"));
    // To an offline full JID.
    let r = a
        .iq(iq_get(
            Some("bob@localhost/nowhere"),
            Element::new("ping", "urn:xmpp:ping"),
        ))
        .await;
    assert_eq!(stanza_condition(&r).as_deref(), Some("service-unavailable"));
    // To a remote domain (no federation on this node).
    let r = a
        .iq(iq_get(
            Some("someone@remote.example"),
            Element::new("ping", "urn:xmpp:ping"),
        ))
        .await;
    assert_eq!(
        stanza_condition(&r).as_deref(),
        Some("remote-server-not-found")
    );
    // A malformed 'to'.
    let r = a
        .iq(iq_get(Some("@@bad"), Element::new("ping", "urn:xmpp:ping")))
        .await;
    assert_eq!(stanza_condition(&r).as_deref(), Some("jid-malformed"));

    // An iq between two clients goes there and back.
    a.send(
        "<iq type='get' id='peer1' to='bob@localhost/one'><query xmlns='jabber:iq:version'/></iq>",
    )
    .await;
    let q = b.wait_for(|e| e.attr("id") == Some("peer1")).await;
    assert_eq!(q.attr("from"), Some("alice@localhost/desk"));
    b.send("<iq type='result' id='peer1' to='alice@localhost/desk'><query xmlns='jabber:iq:version'><name>bob</name></query></iq>").await;
    let r = a.wait_for(|e| e.attr("id") == Some("peer1")).await;
    assert_eq!(r.attr("type"), Some("result"));
    assert_eq!(r.attr("from"), Some("bob@localhost/one"));
}

#[tokio::test]
async fn messages_nobody_can_take() {
    let s = Server::start();
    users(&s);
    let mut a = Client::online(s.c2s, "alice", "pw", "desk").await;
    a.send("<message to='nobody@localhost' type='chat' id='n1'><body>x</body></message>")
        .await;
    let e = a.wait_for(|e| e.attr("id") == Some("n1")).await;
    assert_eq!(stanza_condition(&e).as_deref(), Some("service-unavailable"));
    // Bob exists but is offline: the message is stored (see c2s_im tests).
    a.send("<message to='bob@localhost' id='n2'><body>x</body></message>")
        .await;
    assert!(a.quiet_for(Duration::from_millis(300)).await);
    // Errors are never answered with errors; headlines are dropped quietly.
    a.send("<message to='nobody@localhost' type='error' id='n3'/>")
        .await;
    a.send("<message to='nobody@localhost' type='headline' id='n4'><body>x</body></message>")
        .await;
    assert!(a.quiet_for(Duration::from_millis(300)).await);
    a.send("<message to='x@remote.example' id='n5'><body>x</body></message>")
        .await;
    let e = a.wait_for(|e| e.attr("id") == Some("n5")).await;
    assert_eq!(
        stanza_condition(&e).as_deref(),
        Some("remote-server-not-found")
    );
}

#[tokio::test]
async fn directed_presence_and_logout() {
    let s = Server::start();
    users(&s);
    let mut a = Client::online(s.c2s, "alice", "pw", "desk").await;
    let mut b = Client::online(s.c2s, "bob", "pw", "one").await;
    a.send("<presence to='bob@localhost'><status>hi bob</status></presence>")
        .await;
    let p = b.stanza("presence").await;
    assert_eq!(p.attr("from"), Some("alice@localhost/desk"));
    // A second resource of alice sees the first go away when it disconnects.
    let mut a2 = Client::online(s.c2s, "alice", "pw", "phone").await;
    let p = a.stanza("presence").await;
    assert_eq!(p.attr("from"), Some("alice@localhost/phone"));
    drop(a);
    let gone = a2
        .wait_for(|e| e.name == "presence" && e.attr("from") == Some("alice@localhost/desk"))
        .await;
    assert_eq!(gone.attr("type"), Some("unavailable"));
}

#[tokio::test]
async fn unknown_top_level_elements() {
    let s = Server::start();
    users(&s);
    let mut a = Client::online(s.c2s, "alice", "pw", "desk").await;
    a.send("<foo/>").await;
    assert_eq!(a.stream_error().await, "unsupported-stanza-type");
}
