//! Resource binding (RFC 6120 §7) and the conflict policy.
mod common;
use common::*;

async fn authed(s: &Server, user: &str, pw: &str) -> Client {
    let mut c = Client::connect(s.c2s).await;
    c.open().await;
    let mut c = c.starttls().await;
    c.open().await;
    c.auth_scram("SCRAM-SHA-256", user, pw).await.expect("auth");
    let f = c.open().await;
    assert!(f
        .get_child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
        .is_some());
    c
}

#[tokio::test]
async fn generated_and_requested_resources() {
    let s = Server::start();
    s.add_user("alice", "pw");
    let mut a = authed(&s, "alice", "pw").await;
    let jid = a.bind(None).await.expect("bind");
    let res = jid.strip_prefix("alice@localhost/").expect("full jid");
    assert!(res.len() >= 8, "generated resource {res:?}");
    let mut b = authed(&s, "alice", "pw").await;
    assert_eq!(
        b.bind(Some("phone")).await.unwrap(),
        "alice@localhost/phone"
    );
    // The legacy session request still gets a result.
    let r = b
        .iq(starling::base::xml::Element::new("iq", "jabber:client")
            .with_attr("type", "set")
            .with_child(starling::base::xml::Element::new(
                "session",
                "urn:ietf:params:xml:ns:xmpp-session",
            )))
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    // An invalid resourcepart (a C1 control: valid XML, not a valid
    // resource) is refused with bad-request, and binding can be retried.
    let mut c = authed(&s, "alice", "pw").await;
    assert_eq!(
        c.bind(Some("bad\u{0085}res")).await,
        Err("bad-request".into())
    );
    assert!(c.bind(Some("ok")).await.is_ok());
    // A C0 control is not XML at all (XML 1.0 §2.2): the stream ends.
    let mut d = authed(&s, "alice", "pw").await;
    d.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>bad\u{0007}res</resource></bind></iq>").await;
    assert_eq!(d.stream_error().await, "not-well-formed");
}

#[tokio::test]
async fn second_login_with_same_resource_replaces_the_first() {
    let s = Server::start();
    s.add_user("alice", "pw");
    let mut first = Client::login(s.c2s, "alice", "pw", "desk").await;
    let mut second = Client::login(s.c2s, "alice", "pw", "desk").await;
    assert_eq!(first.stream_error().await, "conflict");
    // The new session is the one that gets messages.
    s.add_user("bob", "pw");
    let mut bob = Client::login(s.c2s, "bob", "pw", "r").await;
    bob.send("<message to='alice@localhost/desk' id='m1'><body>for the new one</body></message>")
        .await;
    let m = second.stanza("message").await;
    assert_eq!(m.attr("from"), Some("bob@localhost/r"));
}

#[tokio::test]
async fn reject_policy_refuses_the_second_bind() {
    let s = Server::start_with(&[("STARLING_C2S_RESOURCE_CONFLICT", "reject")]);
    s.add_user("alice", "pw");
    let mut first = Client::login(s.c2s, "alice", "pw", "desk").await;
    let mut c = authed(&s, "alice", "pw").await;
    assert_eq!(c.bind(Some("desk")).await, Err("conflict".into()));
    // The first session is untouched.
    let r = first
        .iq(iq_get(
            Some("localhost"),
            starling::base::xml::Element::new("ping", "urn:xmpp:ping"),
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"));
}
