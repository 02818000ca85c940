//! Per-address connection and login limits counted across a three-node
//! cluster (`[limits] connections_per_ip_per_min`, `logins_per_ip_per_min`;
//! src/base/ip_limits.rs): what one address did on node 1 counts on nodes 2
//! and 3 once node 1 has told them (every second), other addresses are not
//! affected, and a refusal says why.
mod common;
use common::*;
use std::net::IpAddr;
use std::time::Duration;

const SECRET: &str = "ip-limits-secret-0123456789";

fn node(id: u64, join: Option<&Server>) -> Server {
    cluster_node(
        id,
        join,
        SECRET,
        &[
            ("STARLING_LIMITS_CONNECTIONS_PER_IP_PER_MIN", "6"),
            ("STARLING_LIMITS_LOGINS_PER_IP_PER_MIN", "3"),
        ],
    )
}

/// The `<text/>` of an error or failure.
fn text_of(el: &starling::base::xml::Element) -> String {
    el.elements()
        .find(|e| e.name == "text")
        .map(|t| t.text())
        .unwrap_or_default()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A stream from `src`: the features, or the stream error's condition and
/// text.
async fn open_from(s: &Server, src: &str) -> Result<Client, (String, String)> {
    let mut c = Client::connect_from(s.c2s, ip(src)).await;
    c.send("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>").await;
    loop {
        match c.read().await {
            Got::Header => continue,
            Got::Element(el) if el.name == "features" => return Ok(c),
            Got::Element(el) if el.name == "error" => {
                let cond = el
                    .elements()
                    .find(|e| e.name != "text")
                    .map(|e| e.name.clone())
                    .unwrap_or_default();
                let text = text_of(&el);
                return Err((cond, text));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A PLAIN login from `src` (after STARTTLS): Ok, or the SASL failure's
/// condition and text.
async fn login_from(s: &Server, src: &str) -> Result<(), (String, String)> {
    let c = open_from(s, src).await.expect("stream");
    let mut c = c.starttls().await;
    c.open().await;
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        b64(b"\0alice\0pw")
    ))
    .await;
    let r = c.element().await;
    match r.name.as_str() {
        "success" => Ok(()),
        _ => Err((condition(&r), text_of(&r))),
    }
}

/// Reports go out every second; give them time to arrive everywhere.
async fn reports_travel() {
    tokio::time::sleep(Duration::from_secs(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_and_login_limits_hold_across_the_cluster() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = node(1, None);
    let n2 = node(2, Some(&n1));
    let n3 = node(3, Some(&n1));
    wait_members(&n1, SECRET, 3).await;
    n1.add_user("alice", "pw");

    // Connections (6 a minute): 4 on node 1, then node 2 takes 2 more and
    // refuses the next; node 3 refuses at once; another address is fine.
    let mut kept = Vec::new();
    for _ in 0..4 {
        kept.push(open_from(&n1, "127.0.0.61").await.expect("under the limit"));
    }
    reports_travel().await;
    for _ in 0..2 {
        kept.push(
            open_from(&n2, "127.0.0.61")
                .await
                .expect("still under the limit"),
        );
    }
    let (cond, text) = open_from(&n2, "127.0.0.61")
        .await
        .err()
        .expect("over the limit");
    assert_eq!(cond, "policy-violation");
    assert!(text.contains("too many connections"), "{text}");
    reports_travel().await;
    let (cond, _) = open_from(&n3, "127.0.0.61")
        .await
        .err()
        .expect("node 3 heard of them");
    assert_eq!(cond, "policy-violation");
    open_from(&n2, "127.0.0.63").await.expect("another address");
    assert!(n2.log().contains("connection refused"), "logged");

    // Logins (3 a minute): 2 on node 1, 1 on node 2, then a failure that
    // says why, on node 2 and on node 3.
    for _ in 0..2 {
        login_from(&n1, "127.0.0.62")
            .await
            .expect("login under the limit");
    }
    reports_travel().await;
    login_from(&n2, "127.0.0.62")
        .await
        .expect("the third login");
    let (cond, text) = login_from(&n2, "127.0.0.62")
        .await
        .expect_err("over the limit");
    assert_eq!(cond, "temporary-auth-failure");
    assert!(text.contains("too many logins"), "{text}");
    reports_travel().await;
    let (cond, _) = login_from(&n3, "127.0.0.62")
        .await
        .expect_err("node 3 heard");
    assert_eq!(cond, "temporary-auth-failure");
    login_from(&n3, "127.0.0.64")
        .await
        .expect("another address logs in");

    // The metric counts them.
    let (_, metrics) = http_get(n2.http, "/metrics").await;
    assert!(
        metrics.contains("starling_limited_total{limit=\"connections-per-ip\"} 1")
            && metrics.contains("starling_limited_total{limit=\"logins-per-ip\"} 1"),
        "{metrics}"
    );
    drop(kept);
}
