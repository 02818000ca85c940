//! The admin HTTP API (bearer token, loopback only by default) and the
//! status page at /admin, opened in headless Chromium against a three-node
//! cluster (tests/web/status_page.mjs; the screenshot is kept in
//! target/web-results/).
mod common;
use common::*;
use serde_json::Value;
use std::time::Duration;

fn token(s: &Server) -> String {
    std::fs::read_to_string(s.data_dir().join("admin.token"))
        .expect("the admin token")
        .trim()
        .to_string()
}

/// One API call: status and JSON body.
async fn api(
    s: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, _, body) = http_exchange(s.http, req.as_bytes(), Duration::from_secs(20)).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_api_manages_users_and_sessions_with_its_token() {
    let s = Server::start();
    let t = token(&s);
    // No token, a wrong one: refused.
    assert_eq!(api(&s, "GET", "/admin/api/users", None, "").await.0, 401);
    assert_eq!(
        api(&s, "GET", "/admin/api/users", Some("nope"), "").await.0,
        401
    );

    let (code, v) = api(
        &s,
        "POST",
        "/admin/api/users",
        Some(&t),
        r#"{"user":"alice","password":"wonderland"}"#,
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let (code, _) = api(
        &s,
        "POST",
        "/admin/api/users",
        Some(&t),
        r#"{"user":"bob","password":"builder"}"#,
    )
    .await;
    assert_eq!(code, 200);
    let (code, v) = api(
        &s,
        "POST",
        "/admin/api/users",
        Some(&t),
        r#"{"user":"alice"}"#,
    )
    .await;
    assert_eq!(code, 400, "{v}");
    let (_, v) = api(&s, "GET", "/admin/api/users", Some(&t), "").await;
    assert_eq!(v["users"], serde_json::json!(["alice", "bob"]));
    let (code, _) = api(
        &s,
        "PUT",
        "/admin/api/users/bob/password",
        Some(&t),
        r#"{"password":"rebuilt"}"#,
    )
    .await;
    assert_eq!(code, 200);
    let mut bob = Client::online(s.c2s, "bob", "rebuilt", "desk").await;
    let mut alice = Client::online(s.c2s, "alice", "wonderland", "home").await;

    // Sessions, a broadcast, a kick.
    let (_, v) = api(&s, "GET", "/admin/api/sessions", Some(&t), "").await;
    let jids: Vec<&str> = v["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter_map(|x| x["jid"].as_str())
        .collect();
    assert!(
        jids.contains(&"alice@localhost/home") && jids.contains(&"bob@localhost/desk"),
        "{v}"
    );
    let (code, v) = api(
        &s,
        "POST",
        "/admin/api/broadcast",
        Some(&t),
        r#"{"body":"maintenance at noon"}"#,
    )
    .await;
    assert_eq!((code, v["sent"].as_u64()), (200, Some(2)), "{v}");
    for c in [&mut alice, &mut bob] {
        let m = c.stanza("message").await;
        assert_eq!(m.attr("type"), Some("headline"));
        assert_eq!(
            m.get_child("body", "jabber:client")
                .map(|b| b.text())
                .as_deref(),
            Some("maintenance at noon")
        );
    }
    let (code, _) = api(
        &s,
        "DELETE",
        "/admin/api/sessions/bob@localhost%2Fdesk",
        Some(&t),
        "",
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(bob.stream_error().await, "policy-violation");
    let (code, _) = api(
        &s,
        "DELETE",
        "/admin/api/sessions/nobody@localhost%2Fx",
        Some(&t),
        "",
    )
    .await;
    assert_eq!(code, 404);

    // XEP-0377: a block with a report reaches the operators.
    let report = "<iq type='set' id='rep'><block xmlns='urn:xmpp:blocking'><item jid='spammer@elsewhere.example'><report xmlns='urn:xmpp:reporting:1' reason='urn:xmpp:reporting:spam'><text>buy now</text></report></item></block></iq>";
    alice.send(report).await;
    let r = alice.wait_for(|e| e.attr("id") == Some("rep")).await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let v = loop {
        let (_, v) = api(&s, "GET", "/admin/api/reports", Some(&t), "").await;
        if v["reports"].as_array().is_some_and(|r| !r.is_empty()) {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rep = &v["reports"][0];
    assert_eq!(rep["reporter"], "alice@localhost");
    assert_eq!(rep["jid"], "spammer@elsewhere.example");
    assert_eq!(rep["reason"], "urn:xmpp:reporting:spam");
    assert_eq!(rep["text"], "buy now");

    // Status, rooms; deleting an account ends its session.
    // (The kicked session leaves the table once its unbind is applied.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let v = loop {
        let (_, v) = api(&s, "GET", "/admin/api/status", Some(&t), "").await;
        if v["sessions"].as_u64() == Some(1) {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(v["nodes"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["leader"], v["node"]);
    let (code, v) = api(&s, "GET", "/admin/api/rooms", Some(&t), "").await;
    assert_eq!((code, v["rooms"].as_array().map(Vec::len)), (200, Some(0)));
    // A node of pubsub.localhost, with one item, is listed.
    alice
        .send("<iq type='set' to='pubsub.localhost' id='ps1'><pubsub xmlns='http://jabber.org/protocol/pubsub'><create node='news'/></pubsub></iq>")
        .await;
    let r = alice.wait_for(|e| e.attr("id") == Some("ps1")).await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    alice
        .send("<iq type='set' to='pubsub.localhost' id='ps2'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='news'><item id='i1'><entry xmlns='http://www.w3.org/2005/Atom'>hi</entry></item></publish></pubsub></iq>")
        .await;
    let r = alice.wait_for(|e| e.attr("id") == Some("ps2")).await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let (code, v) = api(&s, "GET", "/admin/api/pubsub", Some(&t), "").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["service"], "pubsub.localhost");
    assert_eq!(v["nodes"][0]["node"], "news", "{v}");
    assert_eq!(v["nodes"][0]["items"], 1, "{v}");
    let (code, _) = api(&s, "DELETE", "/admin/api/users/alice", Some(&t), "").await;
    assert_eq!(code, 200);
    assert_eq!(alice.stream_error().await, "not-authorized");
    let (_, v) = api(&s, "GET", "/admin/api/users", Some(&t), "").await;
    assert_eq!(v["users"], serde_json::json!(["bob"]));
}

#[tokio::test]
async fn off_means_not_there() {
    let s = Server::start_with(&[("STARLING_HTTP_ADMIN", "off")]);
    let t = token(&s);
    assert_eq!(
        api(&s, "GET", "/admin/api/users", Some(&t), "").await.0,
        404
    );
    assert_eq!(http_get(s.http, "/admin").await.0, 404);
}

/// Run `starling ARGS` against `s`'s data dir: exit status, stdout, stderr.
fn cli(s: &Server, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(bin())
        .args(args)
        .env_clear()
        .env("STARLING_DATA_DIR", s.data_dir())
        .output()
        .expect("run starling");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `starling` command goes through the admin HTTP API: with the admin
/// socket gone, accounts, sessions, a broadcast and a kick still work
/// (the node wrote its API address to the data dir); `--url` and
/// `--token` name another node or token, and a wrong one is an error that
/// says so. With the HTTP admin off, the socket still serves.
#[tokio::test]
async fn the_cli_uses_the_http_api() {
    let s = Server::start();
    let url = std::fs::read_to_string(s.data_dir().join("admin.url")).expect("admin.url");
    assert_eq!(
        url.lines().next(),
        Some(format!("http://{}", s.http).as_str()),
        "{url}"
    );
    std::fs::remove_file(s.data_dir().join("admin.sock")).expect("remove the socket");

    let (ok, out, err) = cli(&s, &["user", "add", "carol", "--password", "pw1"]);
    assert!(ok && out.contains("added carol@localhost"), "{out}{err}");
    let (ok, out, _) = cli(&s, &["user", "passwd", "carol", "--password", "pw2"]);
    assert!(ok && out.contains("changed the password"), "{out}");
    let (ok, out, _) = cli(&s, &["user", "list"]);
    assert!(ok && out.lines().any(|l| l == "carol"), "{out}");
    let (ok, _, err) = cli(&s, &["user", "add", "carol", "--password", "x"]);
    assert!(!ok && !err.is_empty(), "a second add fails: {err}");

    let mut carol = Client::login(s.c2s, "carol", "pw2", "desk").await;
    let (ok, out, err) = cli(&s, &["session", "list"]);
    assert!(
        ok && out.contains("carol@localhost/desk node=1"),
        "{out}{err}"
    );
    let (ok, out, err) = cli(&s, &["broadcast", "maintenance at noon"]);
    assert!(ok && out.contains("sent to 1 sessions"), "{out}{err}");
    let m = carol.wait_for(|e| e.name == "message").await;
    assert_eq!(m.attr("type"), Some("headline"));
    let (ok, out, _) = cli(&s, &["user", "purge-archive", "carol"]);
    assert!(ok && out.contains("emptied the archive"), "{out}");
    let (ok, out, err) = cli(&s, &["session", "kick", "carol@localhost/desk"]);
    assert!(
        ok && out.contains("ended carol@localhost/desk"),
        "{out}{err}"
    );
    carol.stream_error().await;
    // Once the session has unbound, there is nothing to kick.
    let mut gone = false;
    for _ in 0..50 {
        let (ok, out, _) = cli(&s, &["session", "list"]);
        if ok && !out.contains("carol@") {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the kicked session is still listed");
    let (ok, _, err) = cli(&s, &["session", "kick", "carol@localhost/desk"]);
    assert!(!ok && err.contains("no session"), "{err}");

    // Another address, another token: said clearly.
    let (ok, _, err) = cli(&s, &["--url", "http://127.0.0.1:1", "user", "list"]);
    assert!(!ok && err.contains("cannot reach the admin API"), "{err}");
    let http = format!("http://{}", s.http);
    let (ok, _, err) = cli(&s, &["--url", &http, "--token", "wrong", "user", "list"]);
    assert!(!ok && err.contains("did not accept the token"), "{err}");
    let (ok, _, err) = cli(&s, &["--url", "https://x:1", "user", "list"]);
    assert!(!ok && err.contains("bad admin URL"), "{err}");
    // This machine's token is never sent to another machine.
    let (ok, _, err) = cli(&s, &["--url", "http://192.0.2.1:5280", "user", "list"]);
    assert!(!ok && err.contains("--token is needed"), "{err}");
    let (ok, out, _) = cli(&s, &["user", "del", "carol"]);
    assert!(ok && out.contains("deleted carol@localhost"), "{out}");

    // HTTP admin off: no address file; the socket serves the CLI.
    let off = Server::start_with(&[("STARLING_HTTP_ADMIN", "off")]);
    assert!(!off.data_dir().join("admin.url").exists());
    let (ok, out, _) = cli(&off, &["user", "add", "dave", "--password", "pw"]);
    assert!(ok && out.contains("added dave@localhost"), "{out}");
    let (ok, _, err) = cli(&off, &["session", "list"]);
    assert!(!ok && err.contains("no node is running"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_three_node_cluster() {
    const SECRET: &str = "admin-status-secret-0123456789";
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = cluster_node(1, None, SECRET, &[]);
    let n2 = cluster_node(2, Some(&n1), SECRET, &[]);
    let n3 = cluster_node(3, Some(&n1), SECRET, &[]);
    wait_members(&n1, SECRET, 3).await;
    n1.add_user("alice", "pw");
    n1.add_user("bob", "pw");
    let mut a = authed_retry(&n1, "alice", "pw").await;
    a.bind(Some("one")).await.expect("bind");
    let mut b = authed_retry(&n3, "bob", "pw").await;
    b.bind(Some("three")).await.expect("bind");
    let mut b2 = authed_retry(&n3, "bob", "pw").await;
    b2.bind(Some("three-b")).await.expect("bind");
    let results = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/web-results");
    std::fs::create_dir_all(&results).expect("results dir");
    let shot = results.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = run_web(
        "status_page.mjs",
        &[
            format!("http://{}/admin", n2.http),
            token(&n2),
            "3".into(),
            shot.display().to_string(),
        ],
        &[&n1, &n2, &n3],
        Duration::from_secs(90),
        &[
            "STEP status page loaded",
            "STEP 3 nodes shown, one leader, refreshed",
            "STEP screenshot saved",
            "STEP done",
        ],
    );
    let rows: Vec<(String, String, String)> = out
        .lines()
        .filter_map(|l| l.strip_prefix("ROW "))
        .map(|l| {
            let p: Vec<&str> = l.split_whitespace().collect();
            (p[0].to_string(), p[1].to_string(), p[2].to_string())
        })
        .collect();
    assert_eq!(rows.len(), 3, "{out}");
    let sessions = |id: &str| rows.iter().find(|r| r.0 == id).map(|r| r.2.clone());
    assert_eq!(sessions("1").as_deref(), Some("1"), "{out}");
    assert_eq!(sessions("2").as_deref(), Some("0"), "{out}");
    assert_eq!(sessions("3").as_deref(), Some("2"), "{out}");
    assert_eq!(rows.iter().filter(|r| r.1 == "leader").count(), 1, "{out}");
    assert!(out.contains("SUMMARY 3 nodes, leader node"), "{out}");
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 5_000);
    drop((a, b, b2));

    // `starling cluster drain` and `cluster remove` through the API: node 3
    // drains and exits, then node 1 removes it; the API's status lists two.
    let mut n3 = n3;
    let out = n3.cluster_cmd(&["drain"], None);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("draining"),
        "{out:?}"
    );
    let mut exited = false;
    for _ in 0..200 {
        if n3.exited() {
            exited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(exited, "node 3 did not stop after the drain");
    let out = n1.cluster_cmd(&["remove", "3"], None);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("removed node 3"),
        "{out:?}"
    );
    // The membership change is committed; node 1 lists it once applied.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, v) = api(&n1, "GET", "/admin/api/status", Some(&token(&n1)), "").await;
        assert_eq!(code, 200);
        if v["nodes"].as_array().map(|n| n.len()) == Some(2) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still listed: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
