//! Three real `starling` processes (one data dir each) joined into one
//! Raft cluster: accounts, rosters and offline messages written through one
//! node are there on the others; a killed node does not stop the rest; a
//! node without a majority refuses writes with a clear error.
mod common;
use common::*;
use starling::base::xml::Element;
use std::time::{Duration, Instant};

const SECRET: &str = "cluster-test-secret-0123456789";

fn node(id: u64, join: Option<&Server>) -> Server {
    cluster_node(id, join, SECRET, &[("STARLING_REGISTRATION_ALLOW", "true")])
}

/// Poll `f` until it holds (bounded).
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn can_login(s: &Server, user: &str, pw: &str) -> bool {
    let mut c = Client::connect(s.c2s).await;
    c.open().await;
    let mut c = c.starttls().await;
    c.open().await;
    c.auth_scram("SCRAM-SHA-256", user, pw).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_state() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = node(1, None);
    let n2 = node(2, Some(&n1));
    let mut n3 = node(3, Some(&n1));
    eventually("three members in cluster status", || {
        n1.cluster_status(SECRET).matches("127.0.0.1:").count() >= 3
    })
    .await;
    let status = n2.cluster_status(SECRET);
    assert!(
        status.contains("members:") && status.contains("leader"),
        "{status}"
    );
    // Load balancers see all three as ready.
    for n in [&n1, &n2, &n3] {
        let (code, body) = http_get(n.http, "/health/ready").await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(http_get(n.http, "/health/live").await.0, 200);
    }

    // An account made through node 1's admin socket logs in on node 3.
    n1.add_user("alice", "pw-a");
    let mut ok = false;
    for _ in 0..50 {
        if can_login(&n3, "alice", "pw-a").await {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "alice can log in on node 3");
    // In-band registration on node 2, login on node 1.
    let mut c = Client::connect(n2.c2s).await;
    c.open().await;
    let mut c = c.starttls().await;
    c.open().await;
    let reg = Element::new("iq", "jabber:client")
        .with_attr("type", "set")
        .with_child(
            Element::new("query", "jabber:iq:register")
                .with_child(Element::new("username", "jabber:iq:register").with_text("bob"))
                .with_child(Element::new("password", "jabber:iq:register").with_text("pw-b")),
        );
    assert_eq!(c.iq(reg).await.attr("type"), Some("result"));
    assert!(
        can_login(&n1, "bob", "pw-b").await,
        "bob registered on node 2 logs in on node 1"
    );
    // The same username cannot be taken twice, whichever node is asked.
    let dup = n3.user_cmd(&["add", "bob", "-p", "x"]);
    assert!(!dup.status.success());

    // A roster change on node 1 is there when alice logs in on node 2.
    let mut a1 = Client::online(n1.c2s, "alice", "pw-a", "one").await;
    let set = Element::new("iq", "jabber:client")
        .with_attr("type", "set")
        .with_child(
            Element::new("query", "jabber:iq:roster").with_child(
                Element::new("item", "jabber:iq:roster")
                    .with_attr("jid", "carol@localhost")
                    .with_attr("name", "Carol"),
            ),
        );
    assert_eq!(a1.iq(set).await.attr("type"), Some("result"));
    let mut a2 = Client::online(n2.c2s, "alice", "pw-a", "two").await;
    let r = a2
        .iq(iq_get(None, Element::new("query", "jabber:iq:roster")))
        .await;
    let items: Vec<_> = r
        .get_child("query", "jabber:iq:roster")
        .unwrap()
        .elements()
        .filter_map(|i| i.attr("jid"))
        .map(str::to_string)
        .collect();
    assert_eq!(items, vec!["carol@localhost".to_string()]);

    // A message to bob while he is offline is stored through the cluster
    // and delivered when he logs in on another node.
    a1.send("<message to='bob@localhost' type='chat' id='x1'><body>stored cluster-wide</body></message>").await;
    a1.iq(iq_get(
        Some("localhost"),
        Element::new("ping", "urn:xmpp:ping"),
    ))
    .await;
    let mut b3 = Client::login(n3.c2s, "bob", "pw-b", "r").await;
    b3.send("<presence/>").await;
    let m = b3.wait_for(|e| e.name == "message").await;
    assert_eq!(m.attr("id"), Some("x1"));

    // kill -9 node 3: the other two still commit.
    n3.kill9();
    n1.add_user("dave", "pw-d");
    assert!(can_login(&n2, "dave", "pw-d").await);
    let status = n1.cluster_status(SECRET);
    assert!(status.contains("leader"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_majority_refuses_writes() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = node(1, None);
    let mut n2 = node(2, Some(&n1));
    let mut n3 = node(3, Some(&n1));
    eventually("three members", || {
        n1.cluster_status(SECRET).matches("127.0.0.1:").count() >= 3
    })
    .await;
    n1.add_user("alice", "pw");
    // Two of three gone: node 1 alone is a minority.
    n2.kill9();
    n3.kill9();
    let started = Instant::now();
    let out = n1.user_cmd(&["add", "eve", "-p", "pw"]);
    assert!(
        !out.status.success(),
        "a write without a majority must fail"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("quorum") || err.contains("majority"),
        "clear error: {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(15), "bounded wait");
    // Registration in-band gets a stanza error, not a silent success.
    let mut c = Client::connect(n1.c2s).await;
    c.open().await;
    let mut c = c.starttls().await;
    c.open().await;
    let reg = Element::new("iq", "jabber:client")
        .with_attr("type", "set")
        .with_child(
            Element::new("query", "jabber:iq:register")
                .with_child(Element::new("username", "jabber:iq:register").with_text("mallory"))
                .with_child(Element::new("password", "jabber:iq:register").with_text("pw")),
        );
    let r = c.iq(reg).await;
    assert_eq!(r.attr("type"), Some("error"), "{r:?}");
    // A login cannot confirm current credentials without a majority: it
    // gets a retryable failure (its client tries again, through the load
    // balancer, on a node that can)...
    let mut c = Client::connect(n1.c2s).await;
    c.open().await;
    let mut c = c.starttls().await;
    c.open().await;
    assert_eq!(
        c.auth_scram("SCRAM-SHA-256", "alice", "pw").await,
        Err("temporary-auth-failure".into())
    );
    // ...and the node tells load balancers it is not ready, while alive.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = http_get(n1.http, "/health/ready").await;
        if code == 503 {
            assert!(body.contains("not ready"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still ready without a majority: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(http_get(n1.http, "/health/live").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_by_snapshot_and_a_node_is_removed() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = node(1, None);
    let n2 = node(2, Some(&n1));
    let n3 = node(3, Some(&n1));
    eventually("three members", || {
        n1.cluster_status(SECRET).matches("127.0.0.1:").count() >= 3
    })
    .await;
    for i in 0..20 {
        n1.add_user(&format!("user{i}"), "pw");
    }
    // Node 4 starts empty; the leader's log starts after its bootstrap
    // snapshot, so node 4 can only catch up by snapshot.
    let n4 = node(4, Some(&n2));
    eventually("four members", || {
        n1.cluster_status(SECRET).matches("127.0.0.1:").count() >= 4
    })
    .await;
    for i in [0, 19] {
        let mut ok = false;
        for _ in 0..50 {
            if can_login(&n4, &format!("user{i}"), "pw").await {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "user{i} replicated to node 4");
    }
    // Remove node 3 through node 2.
    let out = n2.cluster_cmd(
        &["remove", "3", "--node", &n2.mesh.to_string()],
        Some(SECRET),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("node 3 gone from the members", || {
        !n1.cluster_status(SECRET).contains(&n3.mesh.to_string())
    })
    .await;
    n4.add_user("after", "pw");
    assert!(can_login(&n1, "after", "pw").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_roster_edits_survive_a_restart_consistently() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = node(1, None);
    let n2 = node(2, Some(&n1));
    let mut n3 = node(3, Some(&n1));
    eventually("three members", || {
        n1.cluster_status(SECRET).matches("127.0.0.1:").count() >= 3
    })
    .await;
    let users = ["ann", "ben", "cat"];
    for u in users {
        n1.add_user(u, "pw");
    }
    let addrs = [n1.c2s, n2.c2s, n3.c2s];
    // One client per node edits its own roster; node 3 restarts midway.
    let mut tasks = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let addr = addrs[i];
        let u = u.to_string();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut c: Option<Client> = None;
            for k in 0..15 {
                if c.is_none() {
                    for _ in 0..100 {
                        // The node may be down or restarting: an attempt
                        // that fails anywhere (the helpers panic) is retried.
                        let user = u.clone();
                        let attempt = tokio::spawn(async move {
                            let mut t = Client::connect(addr).await;
                            t.open().await;
                            let mut t = t.starttls().await;
                            t.open().await;
                            t.auth_scram("SCRAM-SHA-256", &user, "pw").await.ok()?;
                            t.open().await;
                            t.bind(Some("r")).await.ok()?;
                            Some(t)
                        })
                        .await;
                        if let Ok(Some(t)) = attempt {
                            c = Some(t);
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                let Some(cl) = c.as_mut() else { break };
                let jid = format!("contact{k}@localhost");
                let set = Element::new("iq", "jabber:client")
                    .with_attr("type", "set")
                    .with_child(Element::new("query", "jabber:iq:roster").with_child(
                        Element::new("item", "jabber:iq:roster").with_attr("jid", jid.clone()),
                    ));
                let id = cl.new_id();
                let mut set = set;
                set.set_attr("id", id.clone());
                if !cl.try_send(&set.to_xml("jabber:client")).await {
                    c = None;
                    continue;
                }
                // The node may be killed while we wait: a closed stream is
                // an unacknowledged change, not a test failure.
                let r = tokio::time::timeout(Duration::from_secs(8), async {
                    loop {
                        match cl.try_element().await {
                            Some(e) if e.attr("id") == Some(id.as_str()) => break Some(e),
                            Some(_) => continue,
                            None => break None,
                        }
                    }
                })
                .await;
                match r {
                    Ok(Some(r)) if r.attr("type") == Some("result") => acked.push(jid),
                    _ => c = None,
                }
            }
            (u, acked)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // kill -9 node 3 and bring it back on the same addresses with its data.
    let mesh3 = n3.mesh;
    let c2s3 = n3.c2s;
    n3.kill9();
    let dir3 = std::mem::replace(&mut n3.dir, tempfile::tempdir().unwrap());
    drop(n3);
    let tls = common::mesh_tls_env(Some(3));
    let (mesh3, c2s3) = (mesh3.to_string(), c2s3.to_string());
    let mut env: Vec<(&str, &str)> = vec![
        ("STARLING_CLUSTER_NODE_ID", "3"),
        ("STARLING_CLUSTER_SECRET", SECRET),
        ("STARLING_CLUSTER_LISTEN", &mesh3),
        ("STARLING_C2S_LISTEN", &c2s3),
        ("STARLING_REGISTRATION_ALLOW", "true"),
    ];
    env.extend(tls.iter().map(|(k, v)| (*k, v.as_str())));
    let n3 = Server::start_in(dir3, &env);
    let mut acked = Vec::new();
    for t in tasks {
        acked.push(t.await.unwrap());
    }
    // Every node ends with the same roster for each user, holding every
    // acknowledged change.
    for (u, ok) in &acked {
        let mut seen: Vec<Vec<String>> = Vec::new();
        for n in [&n1, &n2, &n3] {
            let mut items: Vec<String>;
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let mut c = Client::login(n.c2s, u, "pw", "check").await;
                let r = c
                    .iq(iq_get(None, Element::new("query", "jabber:iq:roster")))
                    .await;
                items = r
                    .get_child("query", "jabber:iq:roster")
                    .unwrap()
                    .elements()
                    .filter_map(|i| i.attr("jid"))
                    .map(str::to_string)
                    .collect();
                items.sort();
                if ok.iter().all(|j| items.contains(j)) || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            for j in ok {
                assert!(items.contains(j), "{u}: acknowledged {j} missing");
            }
            seen.push(items);
        }
        assert!(
            seen.windows(2).all(|w| w[0] == w[1]),
            "{u}: nodes differ: {seen:?}"
        );
        assert!(!ok.is_empty(), "{u}: some edits were acknowledged");
    }
}

/// Logins read current credentials on every node (Raft ReadIndex before
/// the lookup), a deleted account's sessions end on every node, and the
/// offline `user` command refuses to change a multi-node member's data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_current_on_every_node() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = node(1, None);
    let n2 = node(2, Some(&n1));
    let mut n3 = node(3, Some(&n1));
    wait_members(&n1, SECRET, 3).await;
    // Made on node 1: logs in on nodes 2 and 3 at the first try.
    n1.add_user("alice", "pw-a");
    assert!(can_login(&n2, "alice", "pw-a").await, "node 2, no retry");
    assert!(can_login(&n3, "alice", "pw-a").await, "node 3, no retry");

    // Deleted through node 1: bob's sessions on nodes 2 and 3 end, and
    // his password stops working everywhere at once.
    n1.add_user("bob", "pw-b");
    let mut b2 = Client::online(n2.c2s, "bob", "pw-b", "two").await;
    let mut b3 = Client::online(n3.c2s, "bob", "pw-b", "three").await;
    let out = n1.user_cmd(&["del", "bob"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(b2.stream_error().await, "not-authorized");
    assert_eq!(b3.stream_error().await, "not-authorized");
    assert!(!can_login(&n3, "bob", "pw-b").await);
    assert!(!can_login(&n2, "bob", "pw-b").await);

    // Node 3 stopped: its data dir belongs to a 3-node cluster, so a
    // change made on it offline is refused with what to do instead.
    assert!(n3.terminate().success());
    let out = n3.user_cmd(&["add", "eve", "--password", "pw-e"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused: {err}");
    assert!(
        err.contains("3-node cluster") && err.contains("Start this node"),
        "{err}"
    );
    // Reading is fine.
    let out = n3.user_cmd(&["list"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("alice"));
    drop(n2);
}
