//! Users on different nodes of a three-process cluster reach each other:
//! messages, presence and subscriptions, roster pushes to a resource on
//! another node, and a resource conflict resolved across nodes.
mod common;
use common::*;
use starling::base::xml::Element;
use std::time::Duration;

const SECRET: &str = "cluster-routing-secret-0123456789";

fn node(id: u64, join: Option<&Server>) -> Server {
    cluster_node(id, join, SECRET, &[])
}

async fn cluster() -> (Server, Server, Server) {
    let n1 = node(1, None);
    let n2 = node(2, Some(&n1));
    let n3 = node(3, Some(&n1));
    wait_members(&n1, SECRET, 3).await;
    n1.add_user("alice", "pw");
    n1.add_user("bob", "pw");
    (n1, n2, n3)
}

/// Log in, retrying while the account replicates to this node.
async fn online(s: &Server, user: &str, res: &str) -> Client {
    let mut c = authed_retry(s, user, "pw").await;
    c.bind(Some(res)).await.expect("bind");
    c.send("<presence/>").await;
    c.stanza("presence").await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_different_nodes_talk() {
    let _turn = CLUSTER_TURN.lock().await;
    let (n1, n2, n3) = cluster().await;
    let mut a = online(&n1, "alice", "one").await;
    let mut b = online(&n3, "bob", "three").await;
    // `cluster status` counts sessions per node from the replicated table.
    let status = n2.cluster_status(SECRET);
    assert!(
        status.contains("sessions: node 1: 1, node 3: 1"),
        "{status}"
    );
    // Full JID, both ways.
    a.send("<message to='bob@localhost/three' type='chat' id='m1'><body>hi from node 1</body></message>").await;
    let m = b.wait_for(|e| e.name == "message").await;
    assert_eq!(
        (m.attr("id"), m.attr("from")),
        (Some("m1"), Some("alice@localhost/one"))
    );
    b.send("<message to='alice@localhost/one' type='chat' id='m2'><body>hi from node 3</body></message>").await;
    assert_eq!(
        a.wait_for(|e| e.name == "message").await.attr("id"),
        Some("m2")
    );
    // Bare JID: the available resource on the other node gets it (not offline storage).
    let mut got = None;
    for i in 0..30 {
        let id = format!("b{i}");
        a.send(&format!(
            "<message to='bob@localhost' type='chat' id='{id}'><body>bare</body></message>"
        ))
        .await;
        let seen = b.collect_for(Duration::from_millis(200)).await;
        if seen.iter().any(|e| e.attr("id") == Some(id.as_str())) {
            got = Some(id);
            break;
        }
    }
    assert!(got.is_some(), "bare-JID message reached bob on node 3");

    // An iq across nodes, and its answer back.
    a.send(
        "<iq type='get' id='v1' to='bob@localhost/three'><query xmlns='jabber:iq:version'/></iq>",
    )
    .await;
    let q = b.wait_for(|e| e.attr("id") == Some("v1")).await;
    assert_eq!(q.attr("from"), Some("alice@localhost/one"));
    b.send("<iq type='result' id='v1' to='alice@localhost/one'/>")
        .await;
    assert_eq!(
        a.wait_for(|e| e.attr("id") == Some("v1"))
            .await
            .attr("type"),
        Some("result")
    );

    // Subscription handshake across nodes, then presence flows.
    a.iq(iq_get(None, Element::new("query", "jabber:iq:roster")))
        .await;
    b.iq(iq_get(None, Element::new("query", "jabber:iq:roster")))
        .await;
    a.send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    let req = b
        .wait_for(|e| e.name == "presence" && e.attr("type") == Some("subscribe"))
        .await;
    assert_eq!(req.attr("from"), Some("alice@localhost"));
    b.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    a.wait_for(|e| e.name == "presence" && e.attr("type") == Some("subscribed"))
        .await;
    let cur = a
        .wait_for(|e| e.name == "presence" && e.attr("from") == Some("bob@localhost/three"))
        .await;
    assert_eq!(
        cur.attr("type"),
        None,
        "bob's current presence after approval"
    );
    b.send("<presence><status>busy on node 3</status></presence>")
        .await;
    let p = a
        .wait_for(|e| {
            e.name == "presence"
                && e.get_child("status", "jabber:client")
                    .is_some_and(|s| s.text() == "busy on node 3")
        })
        .await;
    assert_eq!(p.attr("from"), Some("bob@localhost/three"));

    // A roster change made on node 1 reaches alice's other resource on node 2.
    let mut a2 = online(&n2, "alice", "two").await;
    a2.iq(iq_get(None, Element::new("query", "jabber:iq:roster")))
        .await;
    let set = Element::new("iq", "jabber:client")
        .with_attr("type", "set")
        .with_child(
            Element::new("query", "jabber:iq:roster").with_child(
                Element::new("item", "jabber:iq:roster")
                    .with_attr("jid", "carol@localhost")
                    .with_attr("name", "Carol"),
            ),
        );
    assert_eq!(a.iq(set).await.attr("type"), Some("result"));
    let push = a2
        .wait_for(|e| {
            e.name == "iq"
                && e.attr("type") == Some("set")
                && e.get_child("query", "jabber:iq:roster").is_some()
        })
        .await;
    let item = push
        .get_child("query", "jabber:iq:roster")
        .unwrap()
        .get_child("item", "jabber:iq:roster")
        .unwrap();
    assert_eq!(item.attr("jid"), Some("carol@localhost"));

    // Logging out on node 3: alice on node 1 sees bob go.
    drop(b);
    let gone = a
        .wait_for(|e| {
            e.name == "presence"
                && e.attr("from") == Some("bob@localhost/three")
                && e.attr("type") == Some("unavailable")
        })
        .await;
    assert_eq!(gone.attr("type"), Some("unavailable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_conflict_across_nodes_replaces_the_old_session() {
    let _turn = CLUSTER_TURN.lock().await;
    let (n1, n2, _n3) = cluster().await;
    let mut first = online(&n1, "alice", "desk").await;
    let mut second = online(&n2, "alice", "desk").await;
    assert_eq!(first.stream_error().await, "conflict");
    // The new session on node 2 is the one reachable.
    let mut b = online(&n1, "bob", "r").await;
    b.send(
        "<message to='alice@localhost/desk' type='chat' id='c1'><body>which one?</body></message>",
    )
    .await;
    assert_eq!(
        second.wait_for(|e| e.name == "message").await.attr("id"),
        Some("c1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_noticed_and_its_users_go_offline() {
    let _turn = CLUSTER_TURN.lock().await;
    let (n1, n2, mut n3) = cluster().await;
    let mut a = online(&n1, "alice", "one").await;
    let mut b = online(&n3, "bob", "three").await;
    a.send("<presence to='bob@localhost' type='subscribe'/>")
        .await;
    b.wait_for(|e| e.name == "presence" && e.attr("type") == Some("subscribe"))
        .await;
    b.send("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    a.wait_for(|e| {
        e.name == "presence"
            && e.attr("from") == Some("bob@localhost/three")
            && e.attr("type").is_none()
    })
    .await;

    // SIGKILL: no goodbye from node 3.
    let killed = std::time::Instant::now();
    n3.kill9();
    drop(b);
    let gone = a
        .wait_for(|e| {
            e.name == "presence"
                && e.attr("from") == Some("bob@localhost/three")
                && e.attr("type") == Some("unavailable")
        })
        .await;
    assert_eq!(gone.attr("type"), Some("unavailable"));
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "noticed within a few seconds: {:?}",
        killed.elapsed()
    );

    // Bob is offline now: a message waits for him and reaches him on node 2.
    a.send("<message to='bob@localhost' type='chat' id='after'><body>you were cut off</body></message>").await;
    let seen = a.collect_for(Duration::from_millis(500)).await;
    assert!(
        !seen.iter().any(|e| e.attr("id") == Some("after")),
        "stored, not bounced: {seen:?}"
    );
    let mut b2 = online(&n2, "bob", "two").await;
    let m = b2.wait_for(|e| e.name == "message").await;
    assert_eq!(m.attr("id"), Some("after"));
    assert!(m.get_child("delay", "urn:xmpp:delay").is_some());
    assert!(n1.cluster_status(SECRET).contains("leader"));
}
