//! Limits per remote domain on inbound server-to-server streams
//! (`[s2s] max_links_per_domain`, `stanzas_per_sec_per_domain`;
//! src/s2s/domain_limits.rs). The remote domain is played by hand-driven
//! streams whose dialback keys a second Starling server (the remote
//! domain's authoritative server, with its own cluster secret) vouches for.
mod common;
use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use starling::transport::s2s::dialback::Secret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REMOTE_SECRET: &str = "remote-domain-secret-0123456789";

/// A hand-driven inbound link from remote.example (plaintext).
struct Link {
    tcp: TcpStream,
    seen: String,
}

impl Link {
    /// Open a stream and authenticate remote.example with a dialback key
    /// the remote server will confirm: the verdict, or how the stream
    /// ended.
    async fn dial(addr: SocketAddr) -> (Link, String) {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='remote.example' to='starling.localhost' version='1.0'>").await.unwrap();
        let mut l = Link {
            tcp,
            seen: String::new(),
        };
        let head = l.until("</stream:features>").await;
        let id = head
            .split("id='")
            .nth(1)
            .and_then(|r| r.split('\'').next())
            .expect("stream id")
            .to_string();
        let key = Secret::from_cluster_secret(REMOTE_SECRET).key(
            "starling.localhost",
            "remote.example",
            &id,
        );
        l.send(&format!(
            "<db:result from='remote.example' to='starling.localhost'>{key}</db:result>"
        ))
        .await;
        let verdict = l.until("/>").await;
        (l, verdict)
    }

    async fn send(&mut self, s: &str) {
        self.tcp.write_all(s.as_bytes()).await.unwrap();
    }

    /// Read until `needle` appears (or the stream closes); all seen.
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

#[tokio::test]
async fn links_and_stanzas_are_limited_per_remote_domain() {
    // remote.example's authoritative server answers the verify requests.
    let remote = Server::start_with(&[
        ("STARLING_DOMAIN", "remote.example"),
        ("STARLING_CLUSTER_SECRET", REMOTE_SECRET),
        ("STARLING_S2S_REQUIRE_ENCRYPTION", "false"),
        ("STARLING_S2S_VERIFY_CERTIFICATES", "false"),
    ]);
    let route = format!("remote.example={}", remote.s2s.expect("remote s2s"));
    let s = Server::start_with(&[
        ("STARLING_DOMAIN", "starling.localhost"),
        ("STARLING_S2S_REQUIRE_ENCRYPTION", "false"),
        ("STARLING_S2S_STATIC_ROUTES", &route),
        ("STARLING_S2S_VERIFY_CERTIFICATES", "false"),
        ("STARLING_S2S_MAX_LINKS_PER_DOMAIN", "2"),
        ("STARLING_S2S_STANZAS_PER_SEC_PER_DOMAIN", "20"),
    ]);
    let addr = s.s2s.expect("s2s on");
    s.add_user("alice", "pw");
    let mut alice = Client::login_at(s.c2s, "starling.localhost", "alice", "pw", "r").await;

    // Two links of remote.example are fine; a third is refused, saying why.
    let (mut one, v) = Link::dial(addr).await;
    assert!(v.contains("type='valid'"), "{v}\n{}", s.log());
    let (mut two, v) = Link::dial(addr).await;
    assert!(v.contains("type='valid'"), "{v}");
    let (mut three, v) = Link::dial(addr).await;
    let end = v + &three.until("</stream:stream>").await;
    assert!(
        end.contains("policy-violation") && end.contains("too many links from remote.example"),
        "{end}"
    );
    assert!(!end.contains("type='valid'"), "{end}");
    // One closes: its place is free again.
    two.send("</stream:stream>").await;
    drop(two);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut two = loop {
        let (l, v) = Link::dial(addr).await;
        if v.contains("type='valid'") {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "the closed link's place never freed: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // 100 messages over both links at 20/s (bursts of 40) take at least
    // 3 s, and every one arrives.
    let started = Instant::now();
    for i in 0..100 {
        let link = if i % 2 == 0 { &mut one } else { &mut two };
        link.send(&format!(
            "<message from='bob@remote.example/x' to='alice@starling.localhost/r' type='chat' id='m{i}'><body>{i}</body></message>"
        ))
        .await;
    }
    let mut got = std::collections::BTreeSet::new();
    while got.len() < 100 {
        let m = alice.wait_for(|e| e.name == "message").await;
        got.insert(m.attr("id").unwrap_or_default().to_string());
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2800),
        "100 stanzas at 20/s with a burst of 40 took only {took:?}"
    );
    let (_, metrics) = http_get(s.http, "/metrics").await;
    assert!(
        metrics.contains("starling_limited_total{limit=\"s2s-links-per-domain\"} 1")
            && metrics.contains("starling_limited_total{limit=\"s2s-stanzas-per-domain\"}"),
        "{metrics}"
    );
    drop(three);
}
