//! External components (XEP-0114): slixmpp's ComponentXMPP as an echo
//! gateway on node 1 of a three-node cluster, reached by clients on nodes
//! 2 and 3; a component with the wrong secret is refused without
//! disturbing the connected one.
mod common;
use common::*;
use std::time::Duration;

use starling::base::xml::Element;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "component-test-secret-0123456789";
const ECHO_SECRET: &str = "echo-gateway-secret";

fn node(id: u64, join: Option<&Server>) -> Server {
    cluster_node(
        id,
        join,
        SECRET,
        &[(
            "STARLING_COMPONENT_SECRETS",
            &format!("echo.localhost={ECHO_SECRET}"),
        )],
    )
}

/// Send a message to the gateway and wait for its echo; the component's
/// binding may take a moment to reach this node's replica.
async fn echo_via(c: &mut Client, body: &str) -> Element {
    for attempt in 0..10 {
        c.send(&format!(
            "<message to='bot@echo.localhost' type='chat' id='m{attempt}'><body>{body}</body></message>"
        ))
        .await;
        let m = c.wait_for(|e| e.name == "message").await;
        if m.attr("type") != Some("error") {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no echo for {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_gateway_reached_from_two_nodes() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = node(1, None);
    let n2 = node(2, Some(&n1));
    let n3 = node(3, Some(&n1));
    wait_members(&n1, SECRET, 3).await;
    n1.add_user("alice", "pw");
    n1.add_user("bob", "pw");
    let comp = n1.component.expect("component listener");
    let _gateway = EchoComponent::start(comp, "echo.localhost", ECHO_SECRET, || n1.log()).await;

    let mut a = authed_retry(&n2, "alice", "pw").await;
    a.bind(Some("r")).await.unwrap();
    let mut b = authed_retry(&n3, "bob", "pw").await;
    b.bind(Some("r")).await.unwrap();
    let m = echo_via(&mut a, "hello from node 2").await;
    assert_eq!(m.attr("from"), Some("bot@echo.localhost"));
    assert_eq!(
        m.get_child("body", "jabber:client").unwrap().text(),
        "echo: hello from node 2"
    );
    let m = echo_via(&mut b, "hello from node 3").await;
    assert_eq!(
        m.get_child("body", "jabber:client").unwrap().text(),
        "echo: hello from node 3"
    );

    // A component with the wrong secret is refused ...
    let mut bad = tokio::net::TcpStream::connect(comp).await.unwrap();
    bad.write_all(b"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='echo.localhost'>").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = String::new();
    let n = tokio::time::timeout(Duration::from_secs(5), bad.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    got.push_str(&String::from_utf8_lossy(&buf[..n]));
    bad.write_all(b"<handshake>0000000000000000000000000000000000000000</handshake>")
        .await
        .unwrap();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), bad.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.contains("not-authorized"), "{got}");
    // ... and one for a domain we do not have is unknown.
    let mut unknown = tokio::net::TcpStream::connect(comp).await.unwrap();
    unknown.write_all(b"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='nope.localhost'>").await.unwrap();
    let mut got = String::new();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), unknown.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.contains("host-unknown"), "{got}");

    // The real gateway still answers.
    let m = echo_via(&mut a, "still there?").await;
    assert_eq!(
        m.get_child("body", "jabber:client").unwrap().text(),
        "echo: still there?"
    );
}
