//! SASL over real sockets: every mechanism, and each failure condition.
mod common;
use common::*;
use std::time::Instant;

async fn tls_stream(s: &Server) -> (Client, starling::base::xml::Element) {
    let mut c = Client::connect(s.c2s).await;
    c.open().await;
    let mut c = c.starttls().await;
    let f = c.open().await;
    (c, f)
}

fn mechanisms(features: &starling::base::xml::Element) -> Vec<String> {
    features
        .get_child("mechanisms", "urn:ietf:params:xml:ns:xmpp-sasl")
        .map(|m| m.elements().map(|e| e.text()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn every_mechanism_logs_in() {
    let s = Server::start();
    s.add_user("alice", "wonderland");
    for mech in [
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1-PLUS",
    ] {
        let (mut c, f) = tls_stream(&s).await;
        assert!(
            mechanisms(&f).contains(&mech.to_string()),
            "{mech} offered: {f:?}"
        );
        c.auth_scram(mech, "alice", "wonderland")
            .await
            .unwrap_or_else(|e| panic!("{mech}: {e}"));
        c.open().await;
        assert!(c
            .bind(None)
            .await
            .expect("bind")
            .starts_with("alice@localhost/"));
    }
    let (mut c, f) = tls_stream(&s).await;
    assert!(mechanisms(&f).contains(&"PLAIN".to_string()));
    // XEP-0440 advertises the channel-binding type.
    assert!(f
        .get_child("sasl-channel-binding", "urn:xmpp:sasl-cb:0")
        .is_some());
    c.auth_plain("alice", "wonderland")
        .await
        .expect("PLAIN under TLS");
}

#[tokio::test]
async fn failures_have_the_right_conditions() {
    let s = Server::start();
    s.add_user("bob", "builder");
    let (mut c, _) = tls_stream(&s).await;
    assert_eq!(
        c.auth_scram("SCRAM-SHA-256", "bob", "wrong").await,
        Err("not-authorized".into())
    );
    assert_eq!(
        c.auth_scram("SCRAM-SHA-1", "nobody", "x").await,
        Err("not-authorized".into())
    );
    assert_eq!(
        c.auth_plain("bob", "wrong").await,
        Err("not-authorized".into())
    );
    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='DIGEST-MD5'/>")
        .await;
    assert_eq!(condition(&c.element().await), "invalid-mechanism");
    // After this many failures the stream is closed (RFC 6120 §6.4.5).
    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>***</auth>")
        .await;
    assert_eq!(condition(&c.element().await), "incorrect-encoding");
    assert_eq!(c.stream_error().await, "policy-violation");

    let (mut c, _) = tls_stream(&s).await;
    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'/>")
        .await;
    let ch = c.element().await;
    assert_eq!(ch.name, "challenge");
    c.send("<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
        .await;
    assert_eq!(condition(&c.element().await), "aborted");
    // A malformed client-first-message.
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
        b64(b"x,,garbage")
    ))
    .await;
    assert_eq!(condition(&c.element().await), "malformed-request");
    // Channel binding data that does not match the connection.
    let mut c2 = tls_stream(&s).await.0;
    c2.exporter = Some(vec![0u8; 32]);
    assert_eq!(
        c2.auth_scram("SCRAM-SHA-256-PLUS", "bob", "builder").await,
        Err("not-authorized".into())
    );
    // The right password still works on a fresh stream.
    let (mut c, _) = tls_stream(&s).await;
    c.auth_scram("SCRAM-SHA-256", "bob", "builder")
        .await
        .expect("login");
}

#[tokio::test]
async fn repeated_failures_from_one_address_are_slowed() {
    let s = Server::start();
    s.add_user("carol", "pw");
    let src: std::net::IpAddr = "127.0.0.77".parse().unwrap();
    let mut c = Client::connect_from(s.c2s, src).await;
    c.open().await;
    let mut c = c.starttls().await;
    c.open().await;
    let mut times = Vec::new();
    for _ in 0..4 {
        let t = Instant::now();
        assert_eq!(
            c.auth_scram("SCRAM-SHA-256", "carol", "bad").await,
            Err("not-authorized".into())
        );
        times.push(t.elapsed());
    }
    // The server waits 250 ms more for each further failure: 0, 250, 500, 750 ms.
    assert!(
        times[3].as_millis() >= 700,
        "fourth failure answered after {:?}",
        times[3]
    );
    assert!(times[3] > times[0]);
}

#[tokio::test]
async fn credentials_are_not_stored_in_plaintext() {
    let s = Server::start();
    s.add_user("dave", "a-very-distinct-password");
    drop(Client::login(s.c2s, "dave", "a-very-distinct-password", "r").await);
    let mut s = s;
    assert!(s.terminate().success());
    let mut found = false;
    for entry in walk(&s.data_dir()) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        if bytes.windows(24).any(|w| w == b"a-very-distinct-password") {
            found = true;
        }
    }
    assert!(!found, "the password appears in the data dir");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
