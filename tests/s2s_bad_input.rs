//! Bad input on server-to-server streams (RFC 6120 §4.9.3, XEP-0220):
//! stanzas from a domain the stream did not authenticate, forged dialback
//! keys, verification requests, and plaintext where encryption is
//! required. Each bad stream ends on its own; other links carry on.
mod common;
use common::*;
use std::net::SocketAddr;
use std::time::Duration;

use starling::transport::s2s::dialback::Secret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "s2s-bad-input-secret-0123456789";

/// A hand-driven server-to-server connection (plaintext).
struct Raw {
    tcp: TcpStream,
    seen: String,
}

impl Raw {
    async fn open(addr: SocketAddr, from: &str) -> Raw {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(format!("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='{from}' to='starling.localhost' version='1.0'>").as_bytes()).await.unwrap();
        let mut r = Raw {
            tcp,
            seen: String::new(),
        };
        // RFC 6120 §4.8.5, as ejabberd expects it: the stream prefix.
        r.until("</stream:features>").await;
        r
    }

    async fn send(&mut self, s: &str) {
        self.tcp.write_all(s.as_bytes()).await.unwrap();
    }

    /// Read until `needle` appears (or the stream closes); returns all seen.
    async fn until(&mut self, needle: &str) -> String {
        let mut buf = vec![0u8; 4096];
        while !self.seen.contains(needle) {
            let n = tokio::time::timeout(Duration::from_secs(10), self.tcp.read(&mut buf))
                .await
                .expect("server answers in time")
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        std::mem::take(&mut self.seen)
    }
}

fn server(extra: &[(&str, &str)]) -> Server {
    let mut env = vec![
        ("STARLING_DOMAIN", "starling.localhost"),
        ("STARLING_CLUSTER_SECRET", SECRET),
    ];
    env.extend_from_slice(extra);
    Server::start_with(&env)
}

#[tokio::test]
async fn stanzas_from_unauthenticated_domains_get_invalid_from() {
    let s = server(&[("STARLING_S2S_REQUIRE_ENCRYPTION", "false")]);
    let addr = s.s2s.expect("s2s on");
    // A good link first: it answers verification requests before and after.
    let key = Secret::from_cluster_secret(SECRET).key("good.example", "starling.localhost", "id1");
    let mut good = Raw::open(addr, "good.example").await;
    let verify = format!(
        "<db:verify from='good.example' to='starling.localhost' id='id1'>{key}</db:verify>"
    );
    good.send(&verify).await;
    assert!(good.until("type='valid'").await.contains("type='valid'"));

    let mut bad = Raw::open(addr, "evil.example").await;
    bad.send("<message from='mallory@evil.example' to='alice@starling.localhost' type='chat'><body>hi</body></message>").await;
    let got = bad.until("</stream:stream>").await;
    assert!(got.contains("invalid-from"), "{got}");

    good.send(&verify).await;
    assert!(
        good.until("type='valid'").await.contains("type='valid'"),
        "the good link is undisturbed"
    );
}

#[tokio::test]
async fn a_forged_dialback_key_fails() {
    // liar.example "lives" at a port where nobody answers, so nobody can
    // vouch for the key it presents.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let route = format!("liar.example={}", closed.local_addr().unwrap());
    drop(closed);
    let s = server(&[
        ("STARLING_S2S_REQUIRE_ENCRYPTION", "false"),
        ("STARLING_S2S_STATIC_ROUTES", &route),
        ("STARLING_S2S_CONNECT_TIMEOUT_SECS", "2"),
    ]);
    let mut liar = Raw::open(s.s2s.unwrap(), "liar.example").await;
    liar.send(
        "<db:result from='liar.example' to='starling.localhost'>0123456789abcdef</db:result>",
    )
    .await;
    let got = liar.until("</stream:stream>").await;
    assert!(got.contains("type='invalid'"), "{got}");
    assert!(got.contains("not-authorized"), "{got}");
}

#[tokio::test]
async fn verification_checks_keys_against_the_cluster_secret() {
    let s = server(&[("STARLING_S2S_REQUIRE_ENCRYPTION", "false")]);
    let mut r = Raw::open(s.s2s.unwrap(), "remote.example").await;
    let ours = Secret::from_cluster_secret(SECRET);
    let theirs = Secret::from_cluster_secret("some other cluster");
    for (key, want) in [
        (
            ours.key("remote.example", "starling.localhost", "s1"),
            "valid",
        ),
        (
            theirs.key("remote.example", "starling.localhost", "s1"),
            "invalid",
        ),
        (
            ours.key("remote.example", "starling.localhost", "s2"),
            "invalid",
        ),
    ] {
        r.send(&format!(
            "<db:verify from='remote.example' to='starling.localhost' id='s1'>{key}</db:verify>"
        ))
        .await;
        let got = r.until("/>").await;
        assert!(got.contains(&format!("type='{want}'")), "{want}: {got}");
    }
}

#[tokio::test]
async fn plaintext_dialback_is_refused_by_default() {
    let s = server(&[]);
    let mut r = Raw::open(s.s2s.unwrap(), "remote.example").await;
    r.send("<db:result from='remote.example' to='starling.localhost'>00</db:result>")
        .await;
    let got = r.until("</stream:stream>").await;
    assert!(got.contains("policy-violation"), "{got}");
}

#[tokio::test]
async fn unknown_remote_servers_bounce_remote_server_not_found() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let route = format!("nowhere.example={}", closed.local_addr().unwrap());
    drop(closed);
    // (our test client speaks to the default domain, localhost)
    let s = Server::start_with(&[("STARLING_S2S_STATIC_ROUTES", &route)]);
    s.add_user("alice", "pw");
    let mut a = Client::login(s.c2s, "alice", "pw", "r").await;
    a.send("<message to='bob@nowhere.example' type='chat' id='x1'><body>hello?</body></message>")
        .await;
    let m = a.wait_for(|e| e.name == "message").await;
    assert_eq!(m.attr("type"), Some("error"));
    assert!(
        m.get_child("error", "jabber:client").is_some_and(|e| e
            .get_child(
                "remote-server-not-found",
                "urn:ietf:params:xml:ns:xmpp-stanzas"
            )
            .is_some()),
        "{m:?}"
    );
}

#[tokio::test]
async fn direct_tls_streams_need_no_starttls() {
    let s = server(&[("STARLING_S2S_DIRECT_TLS_LISTEN", "127.0.0.1:0")]);
    let addr = s.s2s_tls.expect("direct TLS s2s on");
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("starling.localhost").unwrap();
    let mut tls = tls_connector().connect(name, tcp).await.expect("TLS");
    tls.write_all(b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='remote.example' to='starling.localhost' version='1.0'>").await.unwrap();
    let key = Secret::from_cluster_secret(SECRET).key("remote.example", "starling.localhost", "d1");
    tls.write_all(
        format!(
            "<db:verify from='remote.example' to='starling.localhost' id='d1'>{key}</db:verify>"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut seen = String::new();
    let mut buf = vec![0u8; 4096];
    while !seen.contains("type='valid'") {
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        !seen.contains("starttls"),
        "no STARTTLS offered inside TLS: {seen}"
    );
}
