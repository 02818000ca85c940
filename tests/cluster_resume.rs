//! Resumption on another node (XEP-0198 across the cluster): the session's
//! state moves over the mesh and the routing table follows through Raft.
mod common;
use common::*;
use std::time::Duration;

const SECRET: &str = "cluster-resume-secret-0123456789";
const SM: &str = "urn:xmpp:sm:3";

fn node(id: u64, join: Option<&Server>) -> Server {
    cluster_node(id, join, SECRET, &[])
}

async fn authed(s: &Server, user: &str) -> Client {
    authed_retry(s, user, "pw").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumes_on_another_node_with_nothing_lost() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = node(1, None);
    let n2 = node(2, Some(&n1));
    wait_members(&n1, SECRET, 2).await;
    n1.add_user("alice", "pw");
    n1.add_user("bob", "pw");

    let mut a = authed(&n1, "alice").await;
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
    let mut b = authed(&n2, "bob").await;
    b.bind(Some("r")).await.unwrap();
    b.send("<presence/>").await;
    b.stanza("presence").await;

    for i in 1..=2 {
        b.send(&format!(
            "<message to='alice@localhost/phone' type='chat' id='x{i}'><body>{i}</body></message>"
        ))
        .await;
        assert_eq!(
            a.wait_for(|e| e.name == "message").await.attr("id"),
            Some(format!("x{i}").as_str())
        );
    }
    // Acknowledge the presence echo and x1 only; then the connection dies.
    a.send(&format!("<a xmlns='{SM}' h='2'/>")).await;
    a.iq(iq_get(
        Some("localhost"),
        starling::base::xml::Element::new("ping", "urn:xmpp:ping"),
    ))
    .await;
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.send("<message to='alice@localhost/phone' type='chat' id='x3'><body>3</body></message>")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // She comes back through the other node.
    let mut a2 = authed(&n2, "alice").await;
    a2.send(&format!("<resume xmlns='{SM}' previd='{id}' h='2'/>"))
        .await;
    let r = a2
        .wait_for(|e| e.name == "resumed" || e.name == "failed")
        .await;
    assert_eq!(r.name, "resumed", "{r:?}\nnode 1 log:\n{}", n1.log());
    let mut ids = Vec::new();
    while ids.len() < 2 {
        ids.push(
            a2.wait_for(|e| e.name == "message")
                .await
                .attr("id")
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(ids, vec!["x2", "x3"], "unacknowledged, in order");
    assert!(
        a2.collect_for(Duration::from_millis(300))
            .await
            .iter()
            .all(|e| e.name != "message"),
        "exactly once"
    );
    // The route followed: messages reach her on node 2.
    b.send("<message to='alice@localhost/phone' type='chat' id='x4'><body>4</body></message>")
        .await;
    assert_eq!(
        a2.wait_for(|e| e.name == "message").await.attr("id"),
        Some("x4")
    );
    let status = n1.cluster_status(SECRET);
    assert!(status.contains("sessions: node 2: 2"), "{status}");
}

/// Resume `previd` (acknowledging `h`) through `s`; the new client.
async fn resume_on(s: &Server, previd: &str, h: u32) -> Client {
    let mut c = authed(s, "alice").await;
    c.send(&format!("<resume xmlns='{SM}' previd='{previd}' h='{h}'/>"))
        .await;
    let r = c
        .wait_for(|e| e.name == "resumed" || e.name == "failed")
        .await;
    assert_eq!(r.name, "resumed", "{r:?}");
    c
}

/// A node remembers where it handed a session (for stanzas still on their
/// way); once the session has moved on again and that node is gone, the
/// routing table is the newer word. Alice resumes from node 1 to node 2,
/// then to node 3, and node 2 stops: a message from node 1 must reach her
/// on node 3, live. (Before, node 1 kept relaying to node 2, then gave the
/// message to her bare JID; with no available resource it went offline
/// while she was connected.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_hand_off_record_gives_way_to_the_table() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = node(1, None);
    let mut n2 = node(2, Some(&n1));
    let n3 = node(3, Some(&n1));
    wait_members(&n1, SECRET, 3).await;
    n1.add_user("alice", "pw");
    n1.add_user("bob", "pw");

    // Alice has no available presence: a message to her bare JID would
    // be stored offline, so only the full-JID route reaches her live.
    let mut a = authed(&n1, "alice").await;
    a.bind(Some("phone")).await.unwrap();
    a.send(&format!("<enable xmlns='{SM}' resume='true'/>"))
        .await;
    let id = a
        .wait_for(|e| e.name == "enabled")
        .await
        .attr("id")
        .unwrap()
        .to_string();
    drop(a);
    let a2 = resume_on(&n2, &id, 0).await;
    drop(a2);
    let mut a3 = resume_on(&n3, &id, 0).await;
    // The route followed (a round trip through the table on node 1).
    let mut b = authed(&n1, "bob").await;
    b.bind(Some("r")).await.unwrap();
    b.send("<message to='alice@localhost/phone' type='chat' id='s1'><body>1</body></message>")
        .await;
    assert_eq!(
        a3.wait_for(|e| e.name == "message").await.attr("id"),
        Some("s1")
    );
    // Node 2 goes away; node 1 still remembers handing her to node 2.
    let status = n2.terminate();
    assert!(status.success(), "node 2 exit: {status:?}");
    let sent = std::time::Instant::now();
    b.send("<message to='alice@localhost/phone' type='chat' id='s2'><body>2</body></message>")
        .await;
    let got = a3.wait_for(|e| e.name == "message").await;
    assert_eq!(got.attr("id"), Some("s2"), "node 1 log:\n{}", n1.log());
    assert!(
        got.get_child("delay", "urn:xmpp:delay").is_none(),
        "delivered live, not from offline storage: {got:?}"
    );
    // Straight by the table, not after giving up on node 2.
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "took {:?}; node 1 log:\n{}",
        sent.elapsed(),
        n1.log()
    );
}
