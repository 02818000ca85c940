//! Draining a node (SIGTERM or `starling cluster drain`): its stream
//! management clients get <system-shutdown/>, resume on another node with
//! nothing lost, and the node exits 0 in bounded time.
mod common;
use common::*;
use std::time::{Duration, Instant};

const SECRET: &str = "cluster-drain-secret-0123456789";
const SM: &str = "urn:xmpp:sm:3";

fn node(id: u64, join: Option<&Server>) -> Server {
    cluster_node(id, join, SECRET, &[])
}

async fn authed(s: &Server, user: &str) -> Client {
    authed_retry(s, user, "pw").await
}

async fn three() -> (Server, Server, Server) {
    let n1 = node(1, None);
    let n2 = node(2, Some(&n1));
    let n3 = node(3, Some(&n1));
    wait_members(&n1, SECRET, 3).await;
    n1.add_user("alice", "pw");
    n1.add_user("bob", "pw");
    (n1, n2, n3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_sessions_resume_elsewhere() {
    let _turn = CLUSTER_TURN.lock().await;
    let (mut n1, n2, n3) = three().await;
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
    b.send("<message to='alice@localhost/phone' type='chat' id='d1'><body>before</body></message>")
        .await;
    assert_eq!(
        a.wait_for(|e| e.name == "message").await.attr("id"),
        Some("d1")
    );
    // Not acknowledged: d1 must come again after the resume.

    // SIGTERM node 1: not ready, sessions handed over, streams ended.
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let st = n1.terminate();
        (st, n1)
    });
    assert_eq!(a.stream_error().await, "system-shutdown");
    let (status, _n1) = status.await.unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "bounded drain: {:?}",
        started.elapsed()
    );
    b.send("<message to='alice@localhost/phone' type='chat' id='d2'><body>during</body></message>")
        .await;

    // Alice comes back through node 3 and resumes.
    let mut a2 = authed(&n3, "alice").await;
    a2.send(&format!("<resume xmlns='{SM}' previd='{id}' h='1'/>"))
        .await;
    let r = a2
        .wait_for(|e| e.name == "resumed" || e.name == "failed")
        .await;
    assert_eq!(r.name, "resumed", "{r:?}");
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
    assert_eq!(ids, vec!["d1", "d2"]);
    assert!(
        a2.collect_for(Duration::from_millis(300))
            .await
            .iter()
            .all(|e| e.name != "message"),
        "exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_drain_command() {
    let _turn = CLUSTER_TURN.lock().await;
    let (n1, _n2, _n3) = three().await;
    let out = n1.cluster_cmd(&["drain"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The node stops on its own, cleanly.
    stops_serving(&n1, "node 1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_drain_of_another_node_by_mesh_address() {
    let _turn = CLUSTER_TURN.lock().await;
    let (n1, _n2, n3) = three().await;
    // From node 1's machine, naming node 3 by its mesh address.
    let node3 = n3.mesh.to_string();
    let wrong = n1.cluster_cmd(&["drain", "--node", &node3], Some("not-the-cluster-secret"));
    assert!(!wrong.status.success(), "a wrong secret cannot drain");
    let out = n1.cluster_cmd(&["drain", "--node", &node3], Some(SECRET));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stops_serving(&n3, "node 3").await;
    // Node 1 was not drained.
    assert!(std::net::TcpStream::connect(n1.c2s).is_ok());
}

/// Wait (at most 12 s) until a drained node no longer takes connections.
async fn stops_serving(n: &Server, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(12);
    while std::net::TcpStream::connect(n.c2s).is_ok() {
        assert!(
            Instant::now() < deadline,
            "{name} still serving after drain"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
