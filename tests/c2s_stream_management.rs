//! Stream management (XEP-0198) on one node, each edge the issue names, and
//! client state indication (XEP-0352).
mod common;
use common::*;
use std::time::Duration;

const SM: &str = "urn:xmpp:sm:3";

/// Authenticated, features read, not bound.
async fn authed(s: &Server, user: &str) -> (Client, starling::base::xml::Element) {
    let mut c = Client::connect(s.c2s).await;
    c.open().await;
    let mut c = c.starttls().await;
    c.open().await;
    c.auth_scram("SCRAM-SHA-256", user, "pw")
        .await
        .expect("auth");
    let f = c.open().await;
    (c, f)
}

/// Logged in with stream management enabled for resumption; returns the id.
async fn sm_login(s: &Server, user: &str, res: &str) -> (Client, String) {
    let (mut c, f) = authed(s, user).await;
    assert!(f.get_child("sm", SM).is_some(), "sm advertised");
    c.bind(Some(res)).await.expect("bind");
    c.send(&format!("<enable xmlns='{SM}' resume='true'/>"))
        .await;
    let en = c.wait_for(|e| e.name == "enabled").await;
    assert_eq!(en.attr("resume"), Some("true"));
    assert!(en.attr("max").is_some());
    let id = en.attr("id").expect("id").to_string();
    c.send("<presence/>").await;
    c.stanza("presence").await;
    (c, id)
}

fn users(s: &Server) {
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
}

async fn msg_ids(c: &mut Client, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    while ids.len() < n {
        let m = c.wait_for(|e| e.name == "message").await;
        ids.push(m.attr("id").unwrap_or_default().to_string());
    }
    ids
}

#[tokio::test]
async fn enable_and_acknowledge() {
    let s = Server::start();
    users(&s);
    let (mut a, _) = sm_login(&s, "alice", "r").await;
    // Three stanzas in; <r/> answers h=3 (the initial presence counts: 4).
    for _ in 0..3 {
        a.iq(iq_get(
            Some("localhost"),
            starling::base::xml::Element::new("ping", "urn:xmpp:ping"),
        ))
        .await;
    }
    a.send(&format!("<r xmlns='{SM}'/>")).await;
    let ack = a.wait_for(|e| e.name == "a").await;
    assert_eq!(ack.attr("h"), Some("4"));
    // The server asks for acks once enough stanzas are outstanding.
    let mut b = Client::online(s.c2s, "bob", "pw", "r").await;
    for i in 0..6 {
        b.send(&format!(
            "<message to='alice@localhost/r' id='m{i}'><body>{i}</body></message>"
        ))
        .await;
    }
    let r = a.wait_for(|e| e.name == "r" && e.ns == SM).await;
    assert_eq!(r.name, "r");
    a.send(&format!("<a xmlns='{SM}' h='9'/>")).await;
    // Acknowledging more than was sent is an error (handled-count-too-high).
    a.send(&format!("<a xmlns='{SM}' h='500'/>")).await;
    assert_eq!(a.stream_error().await, "undefined-condition");
}

#[tokio::test]
async fn resume_on_the_same_node_loses_nothing() {
    let s = Server::start();
    users(&s);
    let (mut a, id) = sm_login(&s, "alice", "phone").await;
    let mut b = Client::online(s.c2s, "bob", "pw", "r").await;
    b.send("<message to='alice@localhost/phone' type='chat' id='x1'><body>1</body></message>")
        .await;
    b.send("<message to='alice@localhost/phone' type='chat' id='x2'><body>2</body></message>")
        .await;
    assert_eq!(msg_ids(&mut a, 2).await, vec!["x1", "x2"]);
    // Alice acknowledges the presence echo and x1 only (h=2), then her
    // connection dies without a goodbye.
    a.send(&format!("<a xmlns='{SM}' h='2'/>")).await;
    a.iq(iq_get(
        Some("localhost"),
        starling::base::xml::Element::new("ping", "urn:xmpp:ping"),
    ))
    .await;
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Sent while she is away: queued for her session.
    b.send("<message to='alice@localhost/phone' type='chat' id='x3'><body>3</body></message>")
        .await;
    b.send("<message to='alice@localhost' type='chat' id='x4'><body>4</body></message>")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut a2, _) = authed(&s, "alice").await;
    a2.send(&format!("<resume xmlns='{SM}' previd='{id}' h='2'/>"))
        .await;
    let resumed = a2.wait_for(|e| e.name == "resumed").await;
    assert_eq!(resumed.attr("previd"), Some(id.as_str()));
    assert_eq!(
        resumed.attr("h"),
        Some("2"),
        "presence and the ping arrived before the drop"
    );
    // Everything not acknowledged, once, in order.
    assert_eq!(msg_ids(&mut a2, 3).await, vec!["x2", "x3", "x4"]);
    assert!(
        a2.collect_for(Duration::from_millis(300))
            .await
            .iter()
            .all(|e| e.name != "message"),
        "exactly once"
    );
    // Same JID, still reachable.
    b.send("<message to='alice@localhost/phone' type='chat' id='x5'><body>5</body></message>")
        .await;
    assert_eq!(msg_ids(&mut a2, 1).await, vec!["x5"]);
}

#[tokio::test]
async fn unknown_previd_fails_and_binding_still_works() {
    let s = Server::start();
    users(&s);
    let (mut c, _) = authed(&s, "alice").await;
    c.send(&format!(
        "<resume xmlns='{SM}' previd='no-such-session' h='0'/>"
    ))
    .await;
    let f = c.wait_for(|e| e.name == "failed").await;
    assert!(f
        .get_child("item-not-found", "urn:ietf:params:xml:ns:xmpp-stanzas")
        .is_some());
    assert!(c.bind(Some("r")).await.is_ok());
    // A session of another user cannot be resumed either.
    let (_a, id) = sm_login(&s, "bob", "r").await;
    let (mut c, _) = authed(&s, "alice").await;
    c.send(&format!("<resume xmlns='{SM}' previd='{id}' h='0'/>"))
        .await;
    assert!(c
        .wait_for(|e| e.name == "failed")
        .await
        .get_child("item-not-found", "urn:ietf:params:xml:ns:xmpp-stanzas")
        .is_some());
}

#[tokio::test]
async fn after_the_timeout_unacknowledged_messages_go_offline() {
    let s = Server::start_with(&[("STARLING_LIMITS_RESUME_TIMEOUT_SECS", "1")]);
    users(&s);
    let (mut a, id) = sm_login(&s, "alice", "phone").await;
    let mut b = Client::online(s.c2s, "bob", "pw", "r").await;
    b.send("<message to='alice@localhost/phone' type='chat' id='t1'><body>never acked</body></message>").await;
    assert_eq!(msg_ids(&mut a, 1).await, vec!["t1"]);
    drop(a);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (mut c, _) = authed(&s, "alice").await;
    c.send(&format!("<resume xmlns='{SM}' previd='{id}' h='1'/>"))
        .await;
    assert!(c
        .wait_for(|e| e.name == "failed")
        .await
        .get_child("item-not-found", "urn:ietf:params:xml:ns:xmpp-stanzas")
        .is_some());
    c.bind(Some("phone")).await.expect("bind");
    c.send("<presence/>").await;
    let m = c.wait_for(|e| e.name == "message").await;
    assert_eq!(
        m.attr("id"),
        Some("t1"),
        "the unacknowledged message was kept offline"
    );
    assert!(m.get_child("delay", "urn:xmpp:delay").is_some());
}

#[tokio::test]
async fn wrong_h_on_resume_fails() {
    let s = Server::start();
    users(&s);
    let (a, id) = sm_login(&s, "alice", "r").await;
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut c, _) = authed(&s, "alice").await;
    c.send(&format!("<resume xmlns='{SM}' previd='{id}' h='1000'/>"))
        .await;
    let f = c.wait_for(|e| e.name == "failed").await;
    let text = f
        .elements()
        .find(|e| e.name == "text")
        .map(|t| t.text())
        .unwrap_or_default();
    assert!(text.contains("handled-count-too-high"), "{f:?}");
}

#[tokio::test]
async fn a_second_resume_takes_over_the_first() {
    let s = Server::start();
    users(&s);
    let (a, id) = sm_login(&s, "alice", "r").await;
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut c1, _) = authed(&s, "alice").await;
    c1.send(&format!("<resume xmlns='{SM}' previd='{id}' h='1'/>"))
        .await;
    c1.wait_for(|e| e.name == "resumed").await;
    // Same session resumed again while c1 is still connected.
    let (mut c2, _) = authed(&s, "alice").await;
    c2.send(&format!("<resume xmlns='{SM}' previd='{id}' h='1'/>"))
        .await;
    c2.wait_for(|e| e.name == "resumed").await;
    assert_eq!(c1.stream_error().await, "conflict");
    let mut b = Client::online(s.c2s, "bob", "pw", "r").await;
    b.send("<message to='alice@localhost/r' type='chat' id='s1'><body>hi</body></message>")
        .await;
    assert_eq!(msg_ids(&mut c2, 1).await, vec!["s1"]);
}

#[tokio::test]
async fn client_state_indication_holds_presence_not_messages() {
    let s = Server::start();
    users(&s);
    let mut a = Client::online(s.c2s, "alice", "pw", "r").await;
    let mut b = Client::online(s.c2s, "bob", "pw", "r").await;
    // Subscribed both ways is not needed: directed presence is enough.
    a.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.send("<presence to='alice@localhost/r'><status>one</status></presence>")
        .await;
    b.send("<presence to='alice@localhost/r'><status>two</status></presence>")
        .await;
    b.send("<message to='alice@localhost/r' type='chat' id='now'><body>urgent</body></message>")
        .await;
    let seen = a.collect_for(Duration::from_millis(500)).await;
    assert!(
        seen.iter().any(|e| e.attr("id") == Some("now")),
        "messages at once"
    );
    assert!(
        seen.iter().all(|e| e.name != "presence"),
        "presence held: {seen:?}"
    );
    a.send("<active xmlns='urn:xmpp:csi:0'/>").await;
    let p = a.stanza("presence").await;
    assert_eq!(
        p.get_child("status", "jabber:client").unwrap().text(),
        "two",
        "coalesced to the latest"
    );
    assert!(a
        .collect_for(Duration::from_millis(300))
        .await
        .iter()
        .all(|e| e.name != "presence"));
}

/// A client that never acknowledges cannot make the server hold without
/// bound: past `[limits] sm_unacked` the session ends with
/// <resource-constraint/>, and what it had not acknowledged waits offline.
#[tokio::test]
async fn unacknowledged_stanzas_are_capped_and_kept() {
    let s = Server::start_with(&[("STARLING_LIMITS_SM_UNACKED", "5")]);
    users(&s);
    let (mut a, _) = sm_login(&s, "alice", "r").await;
    let mut b = Client::online(s.c2s, "bob", "pw", "r").await;
    for i in 1..=6 {
        b.send(&format!(
            "<message to='alice@localhost' type='chat' id='u{i}'><body>{i}</body></message>"
        ))
        .await;
    }
    assert_eq!(a.stream_error().await, "resource-constraint");
    drop(a);
    // Everything alice never acknowledged reaches her next session.
    let mut again = Client::login(s.c2s, "alice", "pw", "r2").await;
    again.send("<presence/>").await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        let m = again.stanza("message").await;
        ids.push(m.attr("id").unwrap_or_default().to_string());
    }
    assert_eq!(ids, vec!["u1", "u2", "u3", "u4", "u5", "u6"]);
    let after = again.collect_for(Duration::from_millis(500)).await;
    assert!(
        after.iter().all(|e| e.name != "message"),
        "a message twice: {after:?}"
    );
}

/// The CSI buffer is bounded: past `[limits] csi_held` senders, what is
/// held goes out at once.
#[tokio::test]
async fn client_state_indication_buffer_is_bounded() {
    let s = Server::start_with(&[("STARLING_LIMITS_CSI_HELD", "3")]);
    s.add_user("alice", "pw");
    let mut a = Client::online(s.c2s, "alice", "pw", "r").await;
    a.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut senders = Vec::new();
    for i in 1..=4 {
        let user = format!("u{i}");
        s.add_user(&user, "pw");
        let mut c = Client::online(s.c2s, &user, "pw", "r").await;
        c.send("<presence to='alice@localhost/r'/>").await;
        senders.push(c);
        if i == 3 {
            let seen = a.collect_for(Duration::from_millis(300)).await;
            assert!(seen.iter().all(|e| e.name != "presence"), "held: {seen:?}");
        }
    }
    let mut from = Vec::new();
    while from.len() < 4 {
        let p = a.stanza("presence").await;
        from.push(p.attr("from").unwrap_or_default().to_string());
    }
    from.sort();
    assert_eq!(
        from,
        vec![
            "u1@localhost/r",
            "u2@localhost/r",
            "u3@localhost/r",
            "u4@localhost/r"
        ]
    );
}
