//! PROXY protocol v2 on the c2s listener (for nodes behind HAProxy).
mod common;
use common::*;
use starling::transport::c2s::proxy_protocol::encode_v4;

#[tokio::test]
async fn the_proxied_client_address_is_used() {
    let s = Server::start_with(&[("STARLING_C2S_PROXY_PROTOCOL", "true")]);
    s.add_user("alice", "pw");
    let mut c = Client::connect(s.c2s).await;
    let dst = match s.c2s {
        std::net::SocketAddr::V4(a) => a,
        _ => unreachable!("listening on 127.0.0.1"),
    };
    c.send_raw(&encode_v4("10.1.2.3:4444".parse().unwrap(), dst))
        .await;
    c.open().await;
    let mut c = c.starttls().await;
    c.open().await;
    c.auth_scram("SCRAM-SHA-256", "alice", "pw")
        .await
        .expect("login behind the proxy");
    c.open().await;
    c.bind(Some("r")).await.expect("bind");
    assert!(
        s.log().contains("10.1.2.3:4444"),
        "the log names the real client"
    );

    // Without the header, the connection is dropped before any XMPP.
    let mut direct = Client::connect(s.c2s).await;
    direct.send(HEADER).await;
    assert!(matches!(direct.read().await, Got::Closed | Got::End));
}
