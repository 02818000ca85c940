//! External service discovery (XEP-0215): the STUN and TURN servers from
//! `[external_services]`, with time-limited TURN credentials checked here
//! against coturn's REST API scheme (HMAC-SHA1 of "EXPIRY:JID" under the
//! shared secret, base64).
mod common;
use base64::Engine;
use common::*;
use hmac::{Hmac, Mac};
use starling::base::xml::Element;

const NS: &str = "urn:xmpp:extdisco:2";

fn services_iq(kind: Option<&str>) -> Element {
    let mut q = Element::new("services", NS);
    if let Some(k) = kind {
        q.set_attr("type", k);
    }
    iq_get(Some("localhost"), q)
}

#[tokio::test]
async fn stun_and_turn_with_time_limited_credentials() {
    let s = Server::start_with(&[
        ("STARLING_EXTERNAL_SERVICES_STUN", "stun.localhost:3478"),
        (
            "STARLING_EXTERNAL_SERVICES_TURN",
            "turn.localhost:3478,turns:turn.localhost:5349",
        ),
        ("STARLING_EXTERNAL_SERVICES_TURN_SECRET", "north-wind"),
        ("STARLING_EXTERNAL_SERVICES_CREDENTIAL_TTL_SECS", "600"),
    ]);
    s.add_user("alice", "wonderland");
    let mut c = Client::login(s.c2s, "alice", "wonderland", "call").await;
    // Advertised on the server (§2).
    let info = c
        .iq(iq_get(
            Some("localhost"),
            Element::new("query", "http://jabber.org/protocol/disco#info"),
        ))
        .await;
    let q = info
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .expect("disco#info");
    assert!(q.elements().any(|f| f.attr("var") == Some(NS)), "{info:?}");

    let r = c.iq(services_iq(None)).await;
    let list: Vec<Element> = r
        .get_child("services", NS)
        .expect("services")
        .elements()
        .cloned()
        .collect();
    let summary: Vec<(String, String, String)> = list
        .iter()
        .map(|e| {
            (
                e.attr("type").unwrap_or_default().to_string(),
                e.attr("port").unwrap_or_default().to_string(),
                e.attr("transport").unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("stun".into(), "3478".into(), "udp".into()),
            ("turn".into(), "3478".into(), "udp".into()),
            ("turns".into(), "5349".into(), "tcp".into()),
        ]
    );
    // STUN needs no credentials; TURN's are restricted and come with them.
    assert_eq!(list[0].attr("username"), None);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    for t in &list[1..] {
        assert_eq!(t.attr("restricted"), Some("1"));
        let user = t.attr("username").expect("username");
        let (expiry, jid) = user.split_once(':').expect("EXPIRY:JID");
        assert_eq!(jid, "alice@localhost");
        let expiry: u64 = expiry.parse().expect("unix time");
        assert!(
            (now + 590..=now + 610).contains(&expiry),
            "{expiry} vs {now}"
        );
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"north-wind").expect("key");
        mac.update(user.as_bytes());
        let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(t.attr("password"), Some(want.as_str()));
        assert!(t.attr("expires").is_some_and(|e| e.ends_with('Z')));
    }
    // One type only.
    let r = c.iq(services_iq(Some("stun"))).await;
    assert_eq!(
        r.get_child("services", NS)
            .expect("services")
            .elements()
            .count(),
        1
    );
    // §3.3: credentials for one service; an unknown one is item-not-found.
    let ask = |host: &str, kind: &str| {
        iq_get(
            Some("localhost"),
            Element::new("credentials", NS).with_child(
                Element::new("service", NS)
                    .with_attr("host", host)
                    .with_attr("type", kind),
            ),
        )
    };
    let r = c.iq(ask("turn.localhost", "turns")).await;
    let svc = r
        .get_child("credentials", NS)
        .and_then(|x| x.get_child("service", NS))
        .expect("credentials");
    assert!(svc.attr("password").is_some(), "{r:?}");
    let r = c.iq(ask("elsewhere.example", "turn")).await;
    assert_eq!(stanza_condition(&r).as_deref(), Some("item-not-found"));
}

#[tokio::test]
async fn none_configured_and_bad_entries() {
    let s = Server::start();
    s.add_user("alice", "wonderland");
    let mut c = Client::login(s.c2s, "alice", "wonderland", "call").await;
    let r = c.iq(services_iq(None)).await;
    assert_eq!(stanza_condition(&r).as_deref(), Some("service-unavailable"));
    // A bad entry stops the server with a message naming the key.
    let out = std::process::Command::new(bin())
        .arg("serve")
        .env_clear()
        .env("STARLING_DATA_DIR", s.data_dir())
        .env("STARLING_EXTERNAL_SERVICES_TURN", "turn.localhost")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("external_services.turn"),
        "{out:?}"
    );
}
