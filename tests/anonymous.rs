//! SASL ANONYMOUS on the anonymous host (XEP-0175, RFC 4505): off by
//! default; on `anon.localhost` it is the only mechanism, it makes a
//! temporary account that chats with ordinary accounts (on the same node
//! and on another), stays on this server, and is removed with its data when
//! its session ends. slixmpp logs in anonymously as a real client would.
mod common;
use common::*;
use starling::base::xml::Element;
use std::time::{Duration, Instant};

const ANON: &str = "anon.localhost";
const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";

fn mechanisms(features: &Element) -> Vec<String> {
    features
        .get_child("mechanisms", SASL)
        .map(|m| m.elements().map(|e| e.text()).collect())
        .unwrap_or_default()
}

/// Open a TLS stream to `domain`; returns the client and its features.
async fn tls_stream(addr: std::net::SocketAddr, domain: &str) -> (Client, Element) {
    let mut c = Client::connect(addr).await;
    c.open_to(domain).await;
    let mut c = c.starttls().await;
    let f = c.open_to(domain).await;
    (c, f)
}

/// Log in anonymously (with `initial` as the SASL initial response) and
/// bind; returns the client and its full JID.
async fn anonymous(addr: std::net::SocketAddr, initial: &str) -> (Client, String) {
    let (mut c, f) = tls_stream(addr, ANON).await;
    assert_eq!(mechanisms(&f), vec!["ANONYMOUS".to_string()], "{f:?}");
    assert!(
        f.get_child("register", "http://jabber.org/features/iq-register")
            .is_none(),
        "no registration on the anonymous host: {f:?}"
    );
    c.auth_anonymous(initial).await.expect("ANONYMOUS");
    c.open_to(ANON).await;
    let jid = c.bind(None).await.expect("bind");
    (c, jid)
}

fn accounts(s: &Server) -> Vec<String> {
    let out = s.user_cmd(&["list"]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn chat(to: &str, body: &str) -> String {
    format!("<message type='chat' to='{to}' id='{body}'><body>{body}</body></message>")
}

#[tokio::test]
async fn off_by_default() {
    let s = Server::start();
    let mut c = Client::connect(s.c2s).await;
    c.send(&HEADER.replace("to='localhost'", &format!("to='{ANON}'")))
        .await;
    assert_eq!(c.stream_error().await, "host-unknown");
    // And the server's own domain never offers ANONYMOUS.
    let (mut c, f) = tls_stream(s.c2s, "localhost").await;
    assert!(!mechanisms(&f).contains(&"ANONYMOUS".to_string()), "{f:?}");
    let r = c.auth_anonymous("=").await;
    assert_eq!(r, Err("invalid-mechanism".to_string()));
}

#[tokio::test]
async fn a_temporary_account_chats_and_is_gone_with_its_session() {
    let s = Server::start_with(&[("STARLING_ANONYMOUS_DOMAIN", ANON)]);
    s.add_user("alice", "wonderland");
    let mut alice = Client::online(s.c2s, "alice", "wonderland", "home").await;

    // Binding before authenticating ends the stream (it must not make a JID
    // of no account, on either host).
    for host in [ANON, "localhost"] {
        let mut pre = Client::connect(s.c2s).await;
        pre.open_to(host).await;
        pre.send("<iq type='set' id='a'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
            .await;
        assert_eq!(pre.stream_error().await, "not-authorized", "{host}");
    }

    // The main domain still logs in as before, without ANONYMOUS.
    let (_, f) = tls_stream(s.c2s, "localhost").await;
    assert!(!mechanisms(&f).contains(&"ANONYMOUS".to_string()), "{f:?}");

    // Trace information is accepted (RFC 4505 §2); too long a trace is not.
    let (mut bad, _) = tls_stream(s.c2s, ANON).await;
    let r = bad.auth_anonymous(&b64("x".repeat(300).as_bytes())).await;
    assert_eq!(r, Err("malformed-request".to_string()));
    // A restart after authentication cannot move to the other domain.
    let (mut hop, _) = tls_stream(s.c2s, ANON).await;
    hop.auth_anonymous("").await.expect("ANONYMOUS");
    hop.send(HEADER).await;
    assert_eq!(hop.stream_error().await, "host-unknown");

    let (mut anon, jid) = anonymous(s.c2s, &b64(b"visitor@example.org")).await;
    let (bare, _) = jid.split_once('/').expect("full JID");
    assert!(bare.ends_with("@anon.localhost"), "{jid}");
    assert!(
        accounts(&s).contains(&bare.to_string()),
        "{:?}",
        accounts(&s)
    );
    // A second anonymous login is another account.
    let (mut other, jid2) = anonymous(s.c2s, "=").await;
    assert_ne!(jid2.split_once('/').map(|p| p.0), Some(bare));

    anon.send("<presence/>").await;
    anon.stanza("presence").await;
    // Both ways with an ordinary account.
    anon.send(&chat("alice@localhost", "hello-from-anon")).await;
    let m = alice.stanza("message").await;
    assert_eq!(m.attr("from"), Some(jid.as_str()));
    assert_eq!(
        m.get_child("body", "jabber:client")
            .map(|b| b.text())
            .as_deref(),
        Some("hello-from-anon")
    );
    alice.send(&chat(bare, "hello-anon")).await;
    let m = anon.stanza("message").await;
    assert_eq!(m.attr("from"), alice.jid.as_deref());
    assert_eq!(
        m.get_child("body", "jabber:client")
            .map(|b| b.text())
            .as_deref(),
        Some("hello-anon")
    );
    // Directed presence reaches alice, with the temporary JID.
    anon.send("<presence to='alice@localhost'/>").await;
    let p = alice.stanza("presence").await;
    assert_eq!(p.attr("from"), Some(jid.as_str()));

    // Data of its own while it lasts: a roster item and private XML.
    let mut set = Element::new("iq", "jabber:client").with_attr("type", "set");
    set.push_child(
        Element::new("query", "jabber:iq:roster").with_child(
            Element::new("item", "jabber:iq:roster").with_attr("jid", "alice@localhost"),
        ),
    );
    assert_eq!(anon.iq(set).await.attr("type"), Some("result"));
    let mut get = Element::new("iq", "jabber:client").with_attr("type", "get");
    get.push_child(Element::new("query", "jabber:iq:roster"));
    let roster = anon.iq(get).await;
    let items = roster
        .get_child("query", "jabber:iq:roster")
        .map(|q| q.elements().count())
        .unwrap_or(0);
    assert_eq!(items, 1, "{roster:?}");
    // No personal eventing for temporary accounts: a clear error.
    let mut pep = Element::new("iq", "jabber:client").with_attr("type", "get");
    pep.push_child(
        Element::new("pubsub", "http://jabber.org/protocol/pubsub").with_child(
            Element::new("items", "http://jabber.org/protocol/pubsub")
                .with_attr("node", "urn:xmpp:avatar:metadata"),
        ),
    );
    let r = anon.iq(pep).await;
    assert_eq!(
        stanza_condition(&r).as_deref(),
        Some("service-unavailable"),
        "{r:?}"
    );

    // Temporary accounts stay on this server.
    anon.send(&chat("someone@elsewhere.example", "out")).await;
    let e = anon.stanza("message").await;
    assert_eq!(e.attr("type"), Some("error"), "{e:?}");
    assert_eq!(
        stanza_condition(&e).as_deref(),
        Some("not-allowed"),
        "{e:?}"
    );

    // The session ends: the account and its data go with it.
    anon.send("</stream:stream>").await;
    drop(anon);
    let deadline = Instant::now() + Duration::from_secs(10);
    while accounts(&s).contains(&bare.to_string()) {
        assert!(Instant::now() < deadline, "temporary account still there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Alice sees it go, and a message to it now bounces.
    alice.drain();
    alice.send(&chat(bare, "anyone-there")).await;
    let e = alice
        .wait_for(|el| el.name == "message" && el.attr("type") == Some("error"))
        .await;
    assert_eq!(
        stanza_condition(&e).as_deref(),
        Some("service-unavailable"),
        "{e:?}"
    );
    // The other temporary account is untouched until its own session ends.
    let bare2 = jid2
        .split_once('/')
        .map(|p| p.0.to_string())
        .unwrap_or_default();
    assert!(accounts(&s).contains(&bare2));
    other.send("</stream:stream>").await;
    drop(other);
    let deadline = Instant::now() + Duration::from_secs(10);
    while accounts(&s).iter().any(|a| a.ends_with("@anon.localhost")) {
        assert!(
            Instant::now() < deadline,
            "temporary accounts still there: {:?}",
            accounts(&s)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(accounts(&s), vec!["alice".to_string()]);
}

/// A temporary account on node 2 chats with an account on node 1, and a
/// real client library (slixmpp) logs in anonymously.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_nodes_and_with_slixmpp() {
    const SECRET: &str = "anonymous-tests-secret-0123456789";
    let _turn = CLUSTER_TURN.lock().await;
    let anon_env = [("STARLING_ANONYMOUS_DOMAIN", ANON)];
    let n1 = cluster_node(1, None, SECRET, &anon_env);
    let n2 = cluster_node(2, Some(&n1), SECRET, &anon_env);
    wait_members(&n1, SECRET, 2).await;
    n1.add_user("alice", "wonderland");
    let mut alice = authed_retry(&n1, "alice", "wonderland").await;
    alice.bind(Some("home")).await.expect("bind");
    alice.send("<presence/>").await;
    alice.stanza("presence").await;

    let (mut anon, jid) = anonymous(n2.c2s, "=").await;
    anon.send("<presence/>").await;
    anon.stanza("presence").await;
    anon.send(&chat("alice@localhost", "across")).await;
    let m = alice.stanza("message").await;
    assert_eq!(m.attr("from"), Some(jid.as_str()));
    let bare = jid
        .split_once('/')
        .map(|p| p.0.to_string())
        .unwrap_or_default();
    alice.send(&chat(&bare, "back")).await;
    let m = anon.stanza("message").await;
    assert_eq!(
        m.get_child("body", "jabber:client")
            .map(|b| b.text())
            .as_deref(),
        Some("back")
    );

    // slixmpp (SASL ANONYMOUS, its own choice of mechanism) on node 1
    // talks with alice; its account is gone once it disconnects.
    let out = run_interop(
        "slixmpp_anonymous.py",
        &[
            ANON.to_string(),
            n1.c2s.to_string(),
            "alice@localhost".to_string(),
        ],
        &[&n1, &n2],
        Duration::from_secs(60),
        &["STEP anonymous", "STEP sent"],
    );
    let slix = out
        .lines()
        .find_map(|l| l.strip_prefix("STEP anonymous "))
        .map(|j| j.trim().to_string())
        .unwrap_or_default();
    assert!(slix.contains("@anon.localhost/"), "{out}");
    let m = alice
        .wait_for(|el| el.name == "message" && el.attr("from") == Some(slix.as_str()))
        .await;
    assert_eq!(
        m.get_child("body", "jabber:client")
            .map(|b| b.text())
            .as_deref(),
        Some("hello from slixmpp")
    );
    let slix_bare = slix
        .split_once('/')
        .map(|p| p.0.to_string())
        .unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while accounts(&n1).contains(&slix_bare) || accounts(&n2).contains(&slix_bare) {
        assert!(
            Instant::now() < deadline,
            "slixmpp's temporary account still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
