//! What is guaranteed when a node dies without draining (kill -9), stated
//! as a test. Stream-management state lives in the memory of the node
//! holding the session, so:
//! - sessions on the dead node cannot be resumed: `<failed/>`, then bind;
//! - stanzas the client had not acknowledged go with the node, except one
//!   whose relay the node had not yet confirmed: its sender routes that
//!   one again (offline storage), unless the client's failed resume says
//!   (its `h`) that it had it;
//! - once the leader notices (about 3-4 s), the user is offline and new
//!   messages wait in offline storage; nothing sent after that is lost.
mod common;
use common::*;
use starling::base::xml::Element;
use std::time::{Duration, Instant};

const SECRET: &str = "cluster-kill-secret-0123456789";
const SM: &str = "urn:xmpp:sm:3";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_the_session_but_not_later_messages() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = cluster_node(1, None, SECRET, &[]);
    let n2 = cluster_node(2, Some(&n1), SECRET, &[]);
    let mut n3 = cluster_node(3, Some(&n1), SECRET, &[]);
    wait_members(&n1, SECRET, 3).await;
    n1.add_user("alice", "pw");
    n1.add_user("bob", "pw");

    let mut a = authed_retry(&n3, "alice", "pw").await;
    a.bind(Some("phone")).await.unwrap();
    a.send(&format!("<enable xmlns='{SM}' resume='true'/>"))
        .await;
    let id = a
        .wait_for(|e| e.name == "enabled")
        .await
        .attr("id")
        .unwrap()
        .to_string();
    a.send("<presence/>").await;
    a.stanza("presence").await;
    let mut b = authed_retry(&n1, "bob", "pw").await;
    b.bind(Some("r")).await.unwrap();
    b.send(
        "<message to='alice@localhost/phone' type='chat' id='k1'><body>unacked</body></message>",
    )
    .await;
    assert_eq!(
        a.wait_for(|e| e.name == "message").await.attr("id"),
        Some("k1")
    );

    // Node 3 dies without a word; alice's connection dies with it.
    n3.kill9();
    drop(a);
    // Wait until the leader has noticed (bob's node sees her gone).
    let deadline = Instant::now() + Duration::from_secs(15);
    while n1.cluster_status(SECRET).contains("node 3:") {
        assert!(
            Instant::now() < deadline,
            "node 3's sessions were never purged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // From now on nothing is lost: this waits offline.
    b.send("<message to='alice@localhost/phone' type='chat' id='k2'><body>after</body></message>")
        .await;
    let seen = b.collect_for(Duration::from_millis(500)).await;
    assert!(
        !seen.iter().any(|e| e.attr("id") == Some("k2")),
        "stored, not bounced: {seen:?}"
    );

    // The session cannot be resumed: its state died with node 3.
    let mut a2 = authed_retry(&n2, "alice", "pw").await;
    a2.send(&format!("<resume xmlns='{SM}' previd='{id}' h='1'/>"))
        .await;
    let f = a2
        .wait_for(|e| e.name == "failed" || e.name == "resumed")
        .await;
    assert_eq!(f.name, "failed");
    assert!(f
        .get_child("item-not-found", "urn:ietf:params:xml:ns:xmpp-stanzas")
        .is_some());
    // A fresh session gets what was sent after the failure was noticed.
    // k1 reached alice's old connection but she never acknowledged it; if
    // node 3 died before confirming to node 1 that it took k1, node 1 still
    // holds it and routes it again (offline storage): at most once more.
    a2.bind(Some("phone")).await.unwrap();
    a2.send("<presence/>").await;
    let mut got = vec![a2.wait_for(|e| e.name == "message").await];
    got.extend(a2.collect_for(Duration::from_millis(500)).await);
    let ids: Vec<&str> = got
        .iter()
        .filter(|e| e.name == "message")
        .filter_map(|e| e.attr("id"))
        .collect();
    assert_eq!(ids.iter().filter(|i| **i == "k2").count(), 1, "{ids:?}");
    assert!(ids.iter().filter(|i| **i == "k1").count() <= 1, "{ids:?}");
}

/// The stanzas (message, presence, iq) among `els`: what `h` counts.
fn counted(els: Vec<Element>) -> impl Iterator<Item = Element> {
    els.into_iter().filter(|e| {
        e.ns == "jabber:client" && matches!(e.name.as_str(), "message" | "presence" | "iq")
    })
}

/// Alice on node 3 with resumption on, bob (stream management) on node 1;
/// bob sends m1 and m2 to alice's full JID and alice reads both. Alice's
/// client, bob's client, her resumption id, and the `h` that covers m1 but
/// not m2 (everything counted since `<enabled/>`).
async fn m1_m2_written_on_node_3(n1: &Server, n3: &Server) -> (Client, Client, String, usize) {
    let mut a = authed_retry(n3, "alice", "pw").await;
    a.bind(Some("phone")).await.unwrap();
    a.send(&format!("<enable xmlns='{SM}' resume='true'/>"))
        .await;
    let id = a
        .wait_for(|e| e.name == "enabled")
        .await
        .attr("id")
        .unwrap()
        .to_string();
    // What came before <enabled/> is not counted by h.
    a.drain();
    a.send("<presence/>").await;
    let mut b = sm_bound(n1, "bob", "pw", "r").await;
    for k in ["m1", "m2"] {
        b.send(&format!(
            "<message to='alice@localhost/phone' type='chat' id='{k}'><body>{k}</body></message>"
        ))
        .await;
    }
    // Everything alice's session sent her, in order, until both arrived.
    let mut got: Vec<Element> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let at = |got: &[Element], k: &str| got.iter().position(|e| e.attr("id") == Some(k));
    while at(&got, "m1").is_none() || at(&got, "m2").is_none() {
        assert!(
            Instant::now() < deadline,
            "m1 and m2 never reached alice: {got:?}"
        );
        got.extend(counted(a.collect_for(Duration::from_millis(200)).await));
    }
    let (p1, p2) = (at(&got, "m1").unwrap(), at(&got, "m2").unwrap());
    assert!(p1 < p2, "in order: {got:?}");
    (a, b, id, p1 + 1)
}

/// Alice resumes session `id` through `n2` with `h`: it fails (its node
/// died), she binds again and says she is available. What reaches her until
/// m2 has come again, and 2 s more; `logs` goes into a failure message.
async fn resume_fails_then_m2_arrives(
    n2: &Server,
    id: &str,
    h: usize,
    logs: impl Fn() -> String,
) -> Vec<Element> {
    let mut a2 = authed_retry(n2, "alice", "pw").await;
    a2.send(&format!("<resume xmlns='{SM}' previd='{id}' h='{h}'/>"))
        .await;
    let f = a2
        .wait_for(|e| e.name == "failed" || e.name == "resumed")
        .await;
    assert_eq!(f.name, "failed", "the session died with node 3");
    a2.bind(Some("phone")).await.unwrap();
    a2.send("<presence/>").await;
    let mut again: Vec<Element> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(45);
    while !again.iter().any(|e| e.attr("id") == Some("m2")) {
        assert!(
            Instant::now() < deadline,
            "m2 was not routed again: {again:?}\n{}",
            logs()
        );
        again.extend(a2.collect_for(Duration::from_millis(300)).await);
    }
    again.extend(a2.collect_for(Duration::from_secs(2)).await);
    again
}

/// A node that dies after writing a relayed message to its client and
/// before telling the sender leaves the sender unsure: routed again, the
/// message may arrive twice; taken as delivered, it may be lost. The
/// writing node first told the sender which stanza of the session it was
/// (a mark); the client's failed resume elsewhere says, with its `h`,
/// which it handled. What `h` covers is not routed again; what it does not
/// cover is, once. Node 3 holds its relay answers (a fault switch), so the
/// kill always falls in that window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_written_just_before_a_kill_9_arrives_once() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = cluster_node(1, None, SECRET, &[]);
    let n2 = cluster_node(2, Some(&n1), SECRET, &[]);
    let mut n3 = cluster_node(
        3,
        Some(&n1),
        SECRET,
        &[(starling::routing::route::HOLD_ANSWERS, "1")],
    );
    wait_members(&n1, SECRET, 3).await;
    n1.add_user("alice", "pw");
    n1.add_user("bob", "pw");

    let (a, mut b, id, h) = m1_m2_written_on_node_3(&n1, &n3).await;
    // Node 3 wrote both and answered neither; it dies now.
    n3.kill9();
    drop(a);

    // Alice's client says it handled everything up to m1, not m2.
    // Node 1 gets both back once node 3 is found dead: m2 comes again,
    // m1 does not.
    let again = resume_fails_then_m2_arrives(&n2, &id, h, || n1.log()).await;
    let ids: Vec<&str> = again
        .iter()
        .filter(|e| e.name == "message")
        .filter_map(|e| e.attr("id"))
        .collect();
    assert_eq!(ids.iter().filter(|i| **i == "m2").count(), 1, "{ids:?}");
    assert_eq!(
        ids.iter().filter(|i| **i == "m1").count(),
        0,
        "m1 twice: {ids:?}"
    );
    let log = n1.log();
    assert!(
        log.contains("the client's resume says it has this message"),
        "node 1 settled m1 by the resume:\n{log}"
    );
    // Both are acknowledged to bob: each is owned, one way or the other.
    assert_eq!(
        acked_up_to(&mut b, 2, None, Duration::from_secs(10)).await,
        Some(2)
    );
}

/// Ports of the restart test below (nodes on 127.0.0.1-3).
const PORTS: FixedPorts = FixedPorts {
    c2s: 9522,
    http: 9580,
    mesh: 11522,
};

/// The same window, but node 3 restarts at once, before it is found dead:
/// node 1 sends m1 and m2 again to node 3's new life with the marks the
/// old one recorded (or, if node 3 purged its old sessions before node 1
/// reconnected, routes them again itself). Node 3 hands back what no
/// resume has settled yet, node 1 keeps the marks and waits for the
/// client's resume. m1, which the client said it handled, never arrives
/// again; m2 arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_written_just_before_a_crash_and_restart_arrives_once() {
    let _turn = CLUSTER_TURN.lock().await;
    let hold = [(starling::routing::route::HOLD_ANSWERS, "1")];
    let dir = || tempfile::tempdir().unwrap();
    let n1 = fixed_node(1, dir(), SECRET, &PORTS, &[]);
    let n2 = fixed_node(2, dir(), SECRET, &PORTS, &[]);
    let mut n3 = fixed_node(3, dir(), SECRET, &PORTS, &hold);
    wait_members(&n1, SECRET, 3).await;
    n1.add_user("alice", "pw");
    n1.add_user("bob", "pw");

    let (a, mut b, id, h) = m1_m2_written_on_node_3(&n1, &n3).await;
    // Node 3 wrote both and answered neither; it crashes and is back at
    // once (this time answering its relays).
    n3.kill9();
    drop(a);
    let old = std::mem::replace(&mut n3.dir, dir());
    let n3 = fixed_node(3, old, SECRET, &PORTS, &[]);

    let logs = || format!("--- node 1 ---\n{}\n--- node 3 ---\n{}", n1.log(), n3.log());
    let again = resume_fails_then_m2_arrives(&n2, &id, h, logs).await;
    let ids: Vec<&str> = again
        .iter()
        .filter(|e| e.name == "message")
        .filter_map(|e| e.attr("id"))
        .collect();
    assert_eq!(ids.iter().filter(|i| **i == "m2").count(), 1, "{ids:?}");
    assert_eq!(
        ids.iter().filter(|i| **i == "m1").count(),
        0,
        "m1 twice: {ids:?}\n--- node 1 ---\n{}\n--- node 3 ---\n{}",
        n1.log(),
        n3.log()
    );
    // Settled by the resume, on whichever node held m1 when it was heard of.
    let (l1, l3) = (n1.log(), n3.log());
    assert!(
        l1.contains("the client's resume says it has this message")
            || l3.contains("sent again after a restart; the client's resume says it has it"),
        "m1 settled by the resume\n--- node 1 ---\n{l1}\n--- node 3 ---\n{l3}"
    );
    assert_eq!(
        acked_up_to(&mut b, 2, None, Duration::from_secs(15)).await,
        Some(2),
        "both acknowledged to bob"
    );
}
