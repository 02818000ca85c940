//! XMPP on the web: WebSocket (RFC 7395) on the HTTP listener, ws and
//! wss, with clients we did not write (@xmpp/client and ws, npm, in
//! tests/web); connection discovery (XEP-0156).
mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::time::Duration;

const SECRET: &str = "web-transports-secret-0123456789";
const SM: &str = "urn:xmpp:sm:3";
const HTTPS: (&str, &str) = ("STARLING_HTTP_TLS_LISTEN", "127.0.0.1:0");

fn ws_url(s: &Server) -> String {
    format!("ws://{}/xmpp-websocket", s.http)
}

fn wss_url(s: &Server) -> String {
    format!(
        "wss://{}/xmpp-websocket",
        s.https.expect("https on the ready line")
    )
}

/// @xmpp/client logs in over ws and over wss, messages go both ways, and
/// after alice's socket drops she resumes her session (XEP-0198) with
/// what was sent meanwhile, each message once.
#[test]
fn xmpp_client_over_ws_and_wss_resumes_after_the_socket_drops() {
    let s = Server::start_with(&[HTTPS]);
    s.add_user("alice", "secret");
    s.add_user("bob", "secret");
    run_web(
        "xmpp_client.mjs",
        &[ws_url(&s), wss_url(&s), "localhost".into(), "secret".into()],
        &[&s],
        Duration::from_secs(90),
        &[
            "STEP alice online over ws as alice@localhost/web",
            "STEP bob online over wss as bob@localhost/web",
            "STEP stream management enabled",
            "STEP messages both ways",
            "STEP resumed the same session",
            "STEP all 6 messages once each",
            "STEP sending after the resume",
            "STEP done",
        ],
    );
}

/// A session begun over WebSocket on node 1 is resumed over TCP on node
/// 2: what was sent while it was detached arrives there, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_session_resumes_over_tcp_on_another_node() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = cluster_node(1, None, SECRET, &[HTTPS]);
    let n2 = cluster_node(2, Some(&n1), SECRET, &[HTTPS]);
    wait_members(&n1, SECRET, 2).await;
    n1.add_user("alice", "pw");
    n1.add_user("bob", "pw");
    // Both accounts have reached node 2.
    drop(authed_retry(&n2, "alice", "pw").await);
    drop(authed_retry(&n2, "bob", "pw").await);
    let out = run_web(
        "ws_detach.mjs",
        &[ws_url(&n1), wss_url(&n2), "localhost".into(), "pw".into()],
        &[&n1, &n2],
        Duration::from_secs(90),
        &["STEP both online", "DETACHED "],
    );
    let detached = out
        .lines()
        .find_map(|l| l.strip_prefix("DETACHED "))
        .expect("the detached session");
    let (id, h) = detached.split_once(' ').expect("id and h");
    let mut a = authed_retry(&n2, "alice", "pw").await;
    a.send(&format!("<resume xmlns='{SM}' previd='{id}' h='{h}'/>"))
        .await;
    let r = a
        .wait_for(|e| e.name == "resumed" || e.name == "failed")
        .await;
    assert_eq!(r.name, "resumed", "{r:?}\nnode 1 log:\n{}", n1.log());
    let mut ids = Vec::new();
    while ids.len() < 2 {
        let m = a.wait_for(|e| e.name == "message").await;
        ids.push(m.attr("id").unwrap_or_default().to_string());
    }
    assert_eq!(
        ids,
        ["x2", "x3"],
        "what alice had not handled, in order ({out})\nnode 1 log:\n{}",
        n1.log()
    );
    let more = a.collect_for(Duration::from_millis(500)).await;
    assert!(
        more.iter().all(|e| e.name != "message"),
        "nothing twice: {more:?}\nnode 1 log:\n{}\nnode 2 log:\n{}",
        n1.log(),
        n2.log()
    );
}

/// Bad frames and bad requests get a stream error (RFC 7395 §3.6) or an
/// HTTP error, and slow request heads are cut off.
#[test]
fn hostile_websocket_input_gets_clear_errors() {
    let s = Server::start();
    run_web(
        "ws_hostile.mjs",
        &[ws_url(&s), "localhost".into()],
        &[&s],
        Duration::from_secs(100),
        &[
            "STEP wrong subprotocol: HTTP 400",
            "STEP not well-formed: not-well-formed, <close/>, closed",
            "STEP two elements in a frame: not-well-formed, <close/>, closed",
            "STEP binary frame: unsupported-encoding, <close/>, closed",
            "STEP oversized frame: policy-violation, <close/>, closed",
            "STEP unknown framing element: unsupported-stanza-type, <close/>, closed",
            "STEP stanza before open: invalid-namespace, <close/>, closed",
            "STEP wrong domain: host-unknown, <close/>, closed",
            "STEP stanza before authenticating: not-authorized, <close/>, closed",
            "STEP clean close: 1 <close/>, closed 1000",
            "STEP slowloris: cut off after",
            "STEP done",
        ],
    );
    // The node is still fine.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    assert_eq!(rt.block_on(http_get(s.http, "/health/live")).0, 200);
}

/// A draining node tells its WebSocket clients where to go instead
/// (RFC 7395 §3.6.1): the public URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_closes_websockets_with_see_other_uri() {
    let _turn = CLUSTER_TURN.lock().await;
    let public = ("STARLING_HTTP_PUBLIC_URL", "https://chat.example.org");
    let n1 = cluster_node(1, None, SECRET, &[public]);
    let n2 = cluster_node(2, Some(&n1), SECRET, &[public]);
    wait_members(&n1, SECRET, 2).await;
    n1.add_user("carol", "pw");
    let mut child = std::process::Command::new("node")
        .current_dir(web_dir())
        .arg("ws_drain.mjs")
        .args([ws_url(&n1), "localhost".into(), "carol".into(), "pw".into()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run node");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(first, "STEP bound", "node 1 log:\n{}", n1.log());
    let out = n1.cluster_cmd(&["drain"], None);
    assert!(out.status.success(), "{out:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        rest.iter().any(|l| l.starts_with("STEP told: <close")
            && l.contains("see-other-uri='wss://chat.example.org/xmpp-websocket'")),
        "{rest:?}\nnode 1 log:\n{}",
        n1.log()
    );
    drop(n2);
}

/// A raw HTTP/1.0 request; the whole response.
async fn http(addr: std::net::SocketAddr, request: &str) -> String {
    let (_, head, body) = http_exchange(addr, request.as_bytes(), Duration::from_secs(10)).await;
    format!("{head}\r\n\r\n{}", String::from_utf8_lossy(&body))
}

/// XEP-0156: host-meta and host-meta.json name the WebSocket endpoint,
/// from the public URL when one is set, with CORS for allowed origins.
#[tokio::test]
async fn host_meta_lists_the_websocket_endpoint() {
    let s = Server::start();
    let xrd = http(
        s.http,
        "GET /.well-known/host-meta HTTP/1.0\r\nHost: chat.test:5280\r\n\r\n",
    )
    .await;
    assert!(xrd.starts_with("HTTP/1.0 200"), "{xrd}");
    assert!(
        xrd.contains("<Link rel='urn:xmpp:alt-connections:websocket' href='ws://chat.test:5280/xmpp-websocket'/>"),
        "{xrd}"
    );
    assert!(
        xrd.to_ascii_lowercase()
            .contains("access-control-allow-origin: *"),
        "{xrd}"
    );

    let s = Server::start_with(&[
        ("STARLING_HTTP_PUBLIC_URL", "https://chat.example.org/"),
        ("STARLING_HTTP_CORS_ORIGINS", "https://app.example.org"),
    ]);
    let jrd = http(
        s.http,
        "GET /.well-known/host-meta.json HTTP/1.0\r\nHost: x\r\nOrigin: https://app.example.org\r\n\r\n",
    )
    .await;
    let (head, body) = jrd.split_once("\r\n\r\n").expect("head and body");
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(
        v["links"][0]["href"], "wss://chat.example.org/xmpp-websocket",
        "{jrd}"
    );
    assert_eq!(v["links"][0]["rel"], "urn:xmpp:alt-connections:websocket");
    assert!(
        head.to_ascii_lowercase()
            .contains("access-control-allow-origin: https://app.example.org"),
        "{head}"
    );
    // An origin not on the list gets no CORS headers; a preflight is answered.
    let other = http(
        s.http,
        "OPTIONS /.well-known/host-meta HTTP/1.0\r\nHost: x\r\nOrigin: https://evil.example\r\n\r\n",
    )
    .await;
    assert!(other.starts_with("HTTP/1.0 204"), "{other}");
    assert!(
        !other
            .to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "{other}"
    );
}
