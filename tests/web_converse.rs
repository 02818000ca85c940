//! Converse.js (npm `converse.js`) in headless Chromium (Debian
//! `chromium`, driven by puppeteer-core): alice logs in through a local
//! page over WebSocket, and over BOSH, on node 1 of two; bob is a slixmpp
//! client (tests/interop/slixmpp_chat_peer.py, needs the .venv or
//! STARLING_PYTHON) on node 2's c2s listener. Messages typed into the chat
//! view reach bob, bob's show in it (tests/web/converse.mjs checks the DOM).
//! The screenshots are kept in target/web-results/.
mod common;
use common::*;
use std::time::Duration;

const SECRET: &str = "web-converse-secret-0123456789";

async fn converse(transport: &str, path: &str) {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = cluster_node(1, None, SECRET, &[]);
    let n2 = cluster_node(2, Some(&n1), SECRET, &[]);
    wait_members(&n1, SECRET, 2).await;
    n1.add_user("alice", "secret");
    n1.add_user("bob", "secret");
    // Both accounts have reached node 2.
    drop(authed_retry(&n2, "bob", "secret").await);
    let results = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/web-results");
    std::fs::create_dir_all(&results).expect("results dir");
    let shot = results.join(format!("converse-{transport}.png"));
    let _ = std::fs::remove_file(&shot);
    run_web(
        "converse.mjs",
        &[
            transport.into(),
            format!("http://{}{path}", n1.http).replacen(
                "http://",
                if transport == "websocket" {
                    "ws://"
                } else {
                    "http://"
                },
                1,
            ),
            n2.c2s.to_string(),
            "localhost".into(),
            "secret".into(),
            shot.display().to_string(),
        ],
        &[&n1, &n2],
        Duration::from_secs(150),
        &[
            "STEP bob online with slixmpp as bob@localhost/slixmpp",
            &format!("STEP converse.js page loaded over {transport}"),
            "STEP alice logged in with converse.js as alice@localhost/converse",
            "STEP alice roster fetched and online",
            "STEP chat with bob@localhost open",
            "STEP bob's message shows in alice's chat view",
            "STEP alice's message typed in converse.js reaches bob",
            "STEP messages both ways, in order in the chat view",
            "STEP no request left loopback",
            "STEP done",
        ],
    );
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real PNG"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_js_chats_over_websocket_across_nodes() {
    converse("websocket", "/xmpp-websocket").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_js_chats_over_bosh_across_nodes() {
    converse("bosh", "/http-bind").await;
}
