//! SASL2 (XEP-0388), Bind 2 (XEP-0386) and FAST (XEP-0484):
//! - @xmpp/client (npm) logs in with SASL2 and Bind 2, gets a FAST token,
//!   logs in again with the token alone, and resumes inline after its
//!   socket drops (tests/web/xmpp_sasl2.mjs);
//! - on raw streams: the feature, a SASL2 login without Bind 2 (features
//!   follow, legacy bind), FAST tokens checked here with an independent
//!   HMAC, refused when wrong, revoked by a password change, expired, or
//!   invalidated by the client;
//! - slixmpp, which has no SASL2, still logs in with RFC 6120 SASL.
mod common;
use base64::Engine;
use common::*;
use hmac::{Hmac, Mac};
use starling::base::xml::Element;
use std::time::Duration;

const SASL2: &str = "urn:xmpp:sasl:2";
const FAST: &str = "urn:xmpp:fast:0";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[test]
fn xmpp_client_logs_in_with_sasl2_bind2_then_fast_and_resumes_inline() {
    let s = Server::start();
    s.add_user("alice", "secret");
    s.add_user("bob", "secret");
    run_web(
        "xmpp_sasl2.mjs",
        &[
            format!("ws://{}/xmpp-websocket", s.http),
            "localhost".into(),
            "secret".into(),
        ],
        &[&s],
        Duration::from_secs(90),
        &[
            "STEP SASL2 SCRAM-SHA-1 with Bind 2 as alice@localhost/phone",
            "stream management enabled inline",
            "STEP FAST token for HT-SHA-256-NONE",
            "STEP FAST login (HT-SHA-256-NONE) as alice@localhost/phone",
            "STEP messages both ways after the FAST login",
            "STEP resumed inline with HT-SHA-256-NONE: the same session",
            "STEP all 4 messages once each",
            "STEP done",
        ],
    );
}

/// A TLS stream to `s`, opened: its features.
async fn tls_stream(s: &Server) -> (Client, Element) {
    let mut c = Client::connect(s.c2s).await;
    c.open().await;
    let mut c = c.starttls().await;
    let f = c.open().await;
    (c, f)
}

fn authenticate(mechanism: &str, initial: &[u8], agent: &str, extra: Vec<Element>) -> String {
    let mut a = Element::new("authenticate", SASL2)
        .with_attr("mechanism", mechanism)
        .with_child(Element::new("initial-response", SASL2).with_text(B64.encode(initial)))
        .with_child(Element::new("user-agent", SASL2).with_attr("id", agent));
    for e in extra {
        a.push_child(e);
    }
    a.to_xml("jabber:client")
}

fn request_token() -> Element {
    request_token_for("HT-SHA-256-NONE")
}

fn request_token_for(mechanism: &str) -> Element {
    Element::new("request-token", FAST).with_attr("mechanism", mechanism)
}

fn ht_initial(user: &str, token: &str) -> Vec<u8> {
    ht_initial_cb(user, token, b"")
}

/// The initiator's message with channel-binding data `cb` (the draft's
/// "Initiator" || cb-data), computed here independently of the server.
fn ht_initial_cb(user: &str, token: &str, cb: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes()).expect("key");
    mac.update(b"Initiator");
    mac.update(cb);
    let mut m = format!("{user}\0").into_bytes();
    m.extend_from_slice(&mac.finalize().into_bytes());
    m
}

/// A PLAIN login over SASL2 that asks for a token: the token.
async fn token_by_password(s: &Server, agent: &str) -> String {
    let (mut c, _) = tls_stream(s).await;
    c.send(&authenticate(
        "PLAIN",
        b"\0alice\0wonderland",
        agent,
        vec![request_token()],
    ))
    .await;
    let ok = c.element().await;
    assert_eq!(
        (ok.name.as_str(), ok.ns.as_str()),
        ("success", SASL2),
        "{ok:?}"
    );
    ok.get_child("token", FAST)
        .and_then(|t| t.attr("token"))
        .expect("a token")
        .to_string()
}

/// A FAST login: the success, or the failure's condition.
async fn fast_login(
    s: &Server,
    agent: &str,
    token: &str,
    fast: Element,
) -> Result<Element, String> {
    let (mut c, _) = tls_stream(s).await;
    c.send(&authenticate(
        "HT-SHA-256-NONE",
        &ht_initial("alice", token),
        agent,
        vec![fast],
    ))
    .await;
    let r = c.element().await;
    match r.name.as_str() {
        "success" => Ok(r),
        _ => Err(r
            .elements()
            .next()
            .map(|e| e.name.clone())
            .unwrap_or_default()),
    }
}

#[tokio::test]
async fn sasl2_and_fast_on_raw_streams() {
    let s = Server::start_with(&[("STARLING_C2S_FAST_TOKEN_TTL_SECS", "4")]);
    s.add_user("alice", "wonderland");

    // The feature, beside RFC 6120's mechanisms.
    let (mut c, f) = tls_stream(&s).await;
    let auth = f.get_child("authentication", SASL2).expect("SASL2 offered");
    let mechs: Vec<String> = auth
        .elements()
        .filter(|e| e.name == "mechanism")
        .map(|e| e.text())
        .collect();
    assert!(mechs.contains(&"SCRAM-SHA-256".to_string()) && mechs.contains(&"PLAIN".to_string()));
    let inline = auth.get_child("inline", SASL2).expect("inline");
    assert!(inline.get_child("bind", "urn:xmpp:bind:0").is_some());
    assert!(inline.get_child("sm", "urn:xmpp:sm:3").is_some());
    let fast: Vec<String> = inline
        .get_child("fast", FAST)
        .map(|f| f.elements().map(|m| m.text()).collect())
        .unwrap_or_default();
    assert_eq!(
        fast,
        ["HT-SHA-256-EXPR", "HT-SHA-256-ENDP", "HT-SHA-256-NONE"],
        "channel-bound first (TLS 1.3, an ECDSA P-256 certificate)"
    );
    assert!(f
        .get_child("mechanisms", "urn:ietf:params:xml:ns:xmpp-sasl")
        .is_some());

    // A wrong password: a SASL2 failure with the RFC 6120 condition; the
    // client may try again on the same stream.
    c.send(&authenticate("PLAIN", b"\0alice\0wrong", "agent-1", vec![]))
        .await;
    let r = c.element().await;
    assert_eq!((r.name.as_str(), r.ns.as_str()), ("failure", SASL2));
    assert_eq!(
        r.get_child("not-authorized", "urn:ietf:params:xml:ns:xmpp-sasl")
            .map(|_| ()),
        Some(())
    );
    // Without Bind 2: success with the bare JID, then features (no
    // restart), then a legacy bind.
    c.send(&authenticate(
        "PLAIN",
        b"\0alice\0wonderland",
        "agent-1",
        vec![],
    ))
    .await;
    let ok = c.element().await;
    assert_eq!(ok.name, "success");
    assert_eq!(
        ok.get_child("authorization-identifier", SASL2)
            .map(|a| a.text())
            .as_deref(),
        Some("alice@localhost")
    );
    let features = c.element().await;
    assert_eq!(features.name, "features", "{features:?}");
    assert!(features
        .get_child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
        .is_some());
    assert!(c
        .bind(Some("legacy"))
        .await
        .expect("bind")
        .ends_with("/legacy"));

    // FAST: a token by password, then a login with it; the server's proof
    // checks out here.
    let token = token_by_password(&s, "agent-2").await;
    let ok = fast_login(&s, "agent-2", &token, Element::new("fast", FAST))
        .await
        .expect("FAST login");
    let data = B64
        .decode(
            ok.get_child("additional-data", SASL2)
                .expect("proof")
                .text(),
        )
        .expect("base64");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes()).expect("key");
    mac.update(b"Responder");
    assert_eq!(data, mac.finalize().into_bytes().to_vec());
    // Another client's id, or a made-up token: refused.
    assert_eq!(
        fast_login(&s, "agent-3", &token, Element::new("fast", FAST))
            .await
            .err()
            .as_deref(),
        Some("not-authorized")
    );
    assert_eq!(
        fast_login(&s, "agent-2", "made-up", Element::new("fast", FAST))
            .await
            .err()
            .as_deref(),
        Some("not-authorized")
    );
    // Invalidated by the client: usable that once, then not.
    let t = token_by_password(&s, "agent-4").await;
    let invalidate = Element::new("fast", FAST).with_attr("invalidate", "true");
    assert!(fast_login(&s, "agent-4", &t, invalidate).await.is_ok());
    assert_eq!(
        fast_login(&s, "agent-4", &t, Element::new("fast", FAST))
            .await
            .err()
            .as_deref(),
        Some("not-authorized")
    );
    // Past half its life a token is renewed in the success; once expired it
    // is refused as such.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let ok = fast_login(&s, "agent-2", &token, Element::new("fast", FAST))
        .await
        .expect("still valid");
    let renewed = ok
        .get_child("token", FAST)
        .and_then(|t| t.attr("token"))
        .expect("a renewed token")
        .to_string();
    assert_ne!(renewed, token);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        fast_login(&s, "agent-2", &token, Element::new("fast", FAST))
            .await
            .err()
            .as_deref(),
        Some("credentials-expired")
    );
    assert!(
        fast_login(&s, "agent-2", &renewed, Element::new("fast", FAST))
            .await
            .is_ok()
    );
    // A new password ends every token.
    let out = s.user_cmd(&["passwd", "alice", "--password", "looking-glass"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        fast_login(&s, "agent-2", &renewed, Element::new("fast", FAST))
            .await
            .err()
            .as_deref(),
        Some("not-authorized")
    );
}

/// slixmpp has no SASL2: it still logs in with RFC 6120 SASL (SCRAM).
/// FAST tokens are replicated: one issued by node 1 logs in on node 2;
/// a password change made on node 2 revokes it on node 1 too, and a
/// deleted account's token is refused everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_tokens_work_on_every_node_and_are_revoked_everywhere() {
    const SECRET: &str = "fast-cluster-secret-0123456789";
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = cluster_node(1, None, SECRET, &[]);
    let n2 = cluster_node(2, Some(&n1), SECRET, &[]);
    wait_members(&n1, SECRET, 2).await;
    n1.add_user("alice", "wonderland");
    let token = token_by_password(&n1, "agent-c").await;
    let ok = fast_login(&n2, "agent-c", &token, Element::new("fast", FAST))
        .await
        .expect("node 1's token on node 2");
    assert_eq!(ok.name, "success");
    let out = n2.user_cmd(&["passwd", "alice", "--password", "changed"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        fast_login(&n1, "agent-c", &token, Element::new("fast", FAST))
            .await
            .err()
            .as_deref(),
        Some("not-authorized"),
        "revoked on node 1 by a password change on node 2"
    );
    let out = n1.user_cmd(&["passwd", "alice", "--password", "wonderland"]);
    assert!(out.status.success(), "{out:?}");
    let token = token_by_password(&n2, "agent-d").await;
    let out = n2.user_cmd(&["del", "alice"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        fast_login(&n1, "agent-d", &token, Element::new("fast", FAST))
            .await
            .err()
            .as_deref(),
        Some("not-authorized"),
        "a deleted account's token"
    );
}

/// Bind 2 with carbons enabled inline (XEP-0386 §3.2 with XEP-0280): the
/// session is ready after the success, and a message to the user's other
/// resource reaches it as a carbon without any <enable/> of its own; one
/// bound with <inactive/> (XEP-0352) gets no presence until it is active.
#[tokio::test]
async fn bind2_enables_carbons_and_csi_inline() {
    let s = Server::start();
    s.add_user("alice", "wonderland");
    s.add_user("bob", "builder");
    let (mut a, _) = tls_stream(&s).await;
    let bind = Element::new("bind", "urn:xmpp:bind:0")
        .with_child(Element::new("tag", "urn:xmpp:bind:0").with_text("phone"))
        .with_child(Element::new("enable", "urn:xmpp:carbons:2"))
        .with_child(Element::new("inactive", "urn:xmpp:csi:0"));
    a.send(&authenticate(
        "PLAIN",
        b"\0alice\0wonderland",
        "agent-b2",
        vec![bind],
    ))
    .await;
    let ok = a.element().await;
    assert_eq!(ok.name, "success", "{ok:?}");
    assert!(ok.get_child("bound", "urn:xmpp:bind:0").is_some(), "{ok:?}");
    let jid = ok
        .get_child("authorization-identifier", SASL2)
        .map(|j| j.text())
        .expect("the full JID");
    assert!(jid.starts_with("alice@localhost/phone"), "{jid}");
    a.send("<presence/>").await;

    let mut other = Client::login(s.c2s, "alice", "wonderland", "desk").await;
    other.send("<presence/>").await;
    let mut bob = Client::login(s.c2s, "bob", "builder", "r").await;
    bob.send(
        "<message to='alice@localhost/desk' type='chat' id='c1'><body>to the desk</body></message>",
    )
    .await;
    let m = other.wait_for(|e| e.name == "message").await;
    assert_eq!(m.attr("id"), Some("c1"));
    let carbon = a.wait_for(|e| e.name == "message").await;
    assert!(
        carbon.get_child("received", "urn:xmpp:carbons:2").is_some(),
        "a carbon for the phone: {carbon:?}"
    );
    // Inactive: alice's own other resource's presence is held back.
    a.drain();
    other.send("<presence><show>away</show></presence>").await;
    assert!(
        a.quiet_for(Duration::from_millis(800)).await,
        "presence reached an inactive session"
    );
    a.send("<active xmlns='urn:xmpp:csi:0'/>").await;
    // Held presence is flushed once active (its own echo too).
    let p = a
        .wait_for(|e| e.name == "presence" && e.attr("from") == Some("alice@localhost/desk"))
        .await;
    assert!(p.get_child("show", "jabber:client").is_some(), "{p:?}");
}

/// HT-SHA-256-EXPR and -ENDP (XEP-0484 with the HT draft's channel
/// bindings): a token is issued for the mechanism asked for, proves itself
/// only over the channel it names (this connection's tls-exporter, or the
/// hash of the server's certificate), and is refused under another
/// mechanism.
#[tokio::test]
async fn fast_tokens_bound_to_the_tls_channel() {
    let s = Server::start();
    s.add_user("alice", "wonderland");
    for mechanism in ["HT-SHA-256-EXPR", "HT-SHA-256-ENDP"] {
        let agent = format!("agent-{mechanism}");
        let (mut c, _) = tls_stream(&s).await;
        c.send(&authenticate(
            "PLAIN",
            b"\0alice\0wonderland",
            &agent,
            vec![request_token_for(mechanism)],
        ))
        .await;
        let ok = c.element().await;
        let old_exporter = c.exporter.clone().expect("TLS 1.3 exporter");
        let token = ok
            .get_child("token", FAST)
            .and_then(|t| t.attr("token"))
            .unwrap_or_else(|| panic!("a token for {mechanism}: {ok:?}"))
            .to_string();

        // A new connection: its own channel-binding data.
        let (mut c, _) = tls_stream(&s).await;
        let cb = match mechanism {
            "HT-SHA-256-EXPR" => c.exporter.clone().expect("exporter"),
            _ => {
                use sha2::Digest;
                sha2::Sha256::digest(c.peer_cert.as_ref().expect("server certificate")).to_vec()
            }
        };
        c.send(&authenticate(
            mechanism,
            &ht_initial_cb("alice", &token, &cb),
            &agent,
            vec![Element::new("fast", FAST)],
        ))
        .await;
        let ok = c.element().await;
        assert_eq!(ok.name, "success", "{mechanism}: {ok:?}");
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes()).expect("key");
        mac.update(b"Responder");
        mac.update(&cb);
        let data = ok
            .get_child("additional-data", SASL2)
            .map(|d| B64.decode(d.text()).expect("base64"))
            .expect("the server's proof");
        assert_eq!(data, mac.finalize().into_bytes().to_vec(), "{mechanism}");

        // The same token proved over other channel data, or under -NONE,
        // is refused.
        let wrong_cb = if mechanism == "HT-SHA-256-EXPR" {
            old_exporter
        } else {
            vec![0u8; 32]
        };
        for (mech, initial) in [
            (mechanism, ht_initial_cb("alice", &token, &wrong_cb)),
            ("HT-SHA-256-NONE", ht_initial("alice", &token)),
        ] {
            let (mut c, _) = tls_stream(&s).await;
            c.send(&authenticate(
                mech,
                &initial,
                &agent,
                vec![Element::new("fast", FAST)],
            ))
            .await;
            let r = c.element().await;
            assert_eq!(r.name, "failure", "{mechanism} token under {mech}: {r:?}");
            assert!(
                r.get_child("not-authorized", "urn:ietf:params:xml:ns:xmpp-sasl")
                    .is_some(),
                "{r:?}"
            );
        }
    }
}

#[test]
fn a_client_without_sasl2_still_logs_in() {
    let s = Server::start();
    s.add_user("alice", "secret1");
    s.add_user("bob", "secret2");
    let args: Vec<String> = [
        "127.0.0.1".to_string(),
        s.c2s.port().to_string(),
        "localhost".into(),
        "alice".into(),
        "secret1".into(),
        "bob".into(),
        "secret2".into(),
    ]
    .into();
    run_interop(
        "slixmpp_basic.py",
        &args,
        &[&s],
        Duration::from_secs(60),
        &[
            "OK login",
            "mech=SCRAM-SHA-256",
            "OK messages both ways",
            "ALL OK",
        ],
    );
}
