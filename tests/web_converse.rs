//! Converse.js (npm `converse.js`) in headless Chromium (Debian
//! `chromium`, driven by puppeteer-core): alice logs in through a local
//! page over WebSocket, and over BOSH, on node 1 of two; bob is a slixmpp
//! client (tests/interop/slixmpp_chat_peer.py, needs the .venv or
//! STARLING_PYTHON) on node 2's c2s listener. Messages typed into the chat
//! view reach bob, bob's show in it (tests/web/converse.mjs checks the DOM).
//! Over WebSocket alice also logs in anonymously (SASL ANONYMOUS at
//! anon.localhost, XEP-0175) and chats with bob the same way; and, logged
//! in, she enters a room bob made and made her an owner of (XEP-0045, the
//! room on node 2, which she reaches over the mesh): Converse.js registers her nick with the
//! room (§7.10) and bob is refused it; messages go both ways through the
//! room's view with occupant and stanza ids; she retracts bob's message
//! (XEP-0425); closing the room gives the nick back; and back in the room
//! she sees what bob said meanwhile.
//! The screenshots are kept in target/web-results/.
mod common;
use common::*;
use std::time::Duration;

const SECRET: &str = "web-converse-secret-0123456789";

async fn converse(transport: &str, path: &str, anonymous: bool, room: bool) {
    let _turn = CLUSTER_TURN.lock().await;
    let env = [("STARLING_ANONYMOUS_DOMAIN", "anon.localhost")];
    let env: &[(&str, &str)] = if anonymous { &env } else { &[] };
    let n1 = cluster_node(1, None, SECRET, env);
    let n2 = cluster_node(2, Some(&n1), SECRET, env);
    wait_members(&n1, SECRET, 2).await;
    n1.add_user("alice", "secret");
    n1.add_user("bob", "secret");
    // Both accounts have reached node 2.
    drop(authed_retry(&n2, "bob", "secret").await);
    let results = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/web-results");
    std::fs::create_dir_all(&results).expect("results dir");
    let name = if anonymous { "-anonymous" } else { "" };
    let shot = results.join(format!("converse-{transport}{name}.png"));
    let _ = std::fs::remove_file(&shot);
    let login = if anonymous {
        "STEP alice logged in with converse.js as "
    } else {
        "STEP alice logged in with converse.js as alice@localhost/converse"
    };
    let mut args = vec![
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
    ];
    if anonymous {
        args.push("anon=anon.localhost".into());
    }
    let room_shot = results.join(format!("converse-{transport}{name}-room.png"));
    let _ = std::fs::remove_file(&room_shot);
    let loaded = format!("STEP converse.js page loaded over {transport}");
    let mut steps = vec![];
    if room {
        args.push("room=lobby@conference.localhost".into());
        steps.extend([
            "STEP bob made lobby@conference.localhost and alice, an owner, entered it with converse.js",
            "STEP converse.js registered alice's nick; bob is refused it",
            "STEP room messages both ways, with occupant and stanza ids",
            "STEP converse.js retracted bob's message; bob was told",
            "STEP alice closed the room and her nick is free again",
            "STEP back in the room, alice sees what was said while she was away",
        ]);
    }
    steps.extend([
        "STEP bob online with slixmpp as bob@localhost/slixmpp",
        loaded.as_str(),
        login,
        "STEP alice roster fetched and online",
        "STEP chat with bob@localhost open",
        "STEP bob's message shows in alice's chat view",
        "STEP alice's message typed in converse.js reaches bob",
        "STEP messages both ways, in order in the chat view",
        "STEP no request left loopback",
        "STEP done",
    ]);
    let out = run_web(
        "converse.mjs",
        &args,
        &[&n1, &n2],
        Duration::from_secs(150),
        &steps,
    );
    if anonymous {
        let me = out
            .lines()
            .find_map(|l| l.strip_prefix(login))
            .unwrap_or_default();
        assert!(me.contains("@anon.localhost/"), "{out}");
        // Logged out: the temporary account is gone, on both nodes.
        let bare = me.split('/').next().unwrap_or_default().to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let listed = [&n1, &n2].iter().any(|n| {
                let o = n.user_cmd(&["list"]);
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.trim() == bare)
            });
            if !listed {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{bare} still listed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut shots = vec![&shot];
    if room {
        shots.push(&room_shot);
    }
    for shot in shots {
        let png = std::fs::read(shot).expect("the screenshot");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "a real PNG"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_js_chats_and_uses_a_room_over_websocket_across_nodes() {
    converse("websocket", "/xmpp-websocket", false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_js_logs_in_anonymously_and_chats() {
    converse("websocket", "/xmpp-websocket", true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_js_chats_over_bosh_across_nodes() {
    converse("bosh", "/http-bind", false, false).await;
}

/// A room that outlives its node, as a Converse.js user sees it: carol
/// (a hand-driven client on node 1) makes the room there; alice
/// (Converse.js over WebSocket on node 2) and bob (slixmpp on node 3)
/// enter and talk; node 1 is killed with SIGKILL; the room comes back on
/// a surviving node, carol leaves with her node, and alice, still in the
/// room as Converse.js sees it, and bob go on talking (tests/web/converse.mjs
/// with `kill=`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_js_stays_in_a_room_when_its_node_dies() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = cluster_node(1, None, SECRET, &[]);
    let n2 = cluster_node(2, Some(&n1), SECRET, &[]);
    let n3 = cluster_node(3, Some(&n1), SECRET, &[]);
    wait_members(&n1, SECRET, 3).await;
    for u in ["alice", "bob", "carol"] {
        n1.add_user(u, "secret");
    }
    drop(authed_retry(&n2, "alice", "secret").await);
    drop(authed_retry(&n3, "bob", "secret").await);
    let room = "failover@conference.localhost";
    let mut carol = authed_retry(&n1, "carol", "secret").await;
    carol.bind(Some("r")).await.expect("bind");
    carol.send("<presence/>").await;
    carol
        .send(&format!(
            "<presence to='{room}/carol'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
        ))
        .await;
    let own = format!("{room}/carol");
    carol
        .wait_for(|e| e.name == "presence" && e.attr("from") == Some(own.as_str()))
        .await;
    let results = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/web-results");
    std::fs::create_dir_all(&results).expect("results dir");
    let shot = results.join("converse-websocket-failover.png");
    let args = vec![
        "websocket".to_string(),
        format!("ws://{}/xmpp-websocket", n2.http),
        n3.c2s.to_string(),
        "localhost".into(),
        "secret".into(),
        shot.display().to_string(),
        format!("room={room}"),
        format!("kill={}", n1.pid()),
    ];
    run_web(
        "converse.mjs",
        &args,
        &[&n2, &n3],
        Duration::from_secs(150),
        &[
            "STEP alice logged in with converse.js as alice@localhost/converse",
            "STEP alice and bob talk in a room that lives on another node",
            "STEP the room's node was killed: the room came back and alice and bob, still in it, go on talking",
            "STEP done",
        ],
    );
    // The room came back on a surviving node, from its records.
    assert!(
        [&n2, &n3]
            .iter()
            .any(|n| n.log().contains("room restored from its records")),
        "no surviving node restored the room"
    );
    drop(carol);
}
