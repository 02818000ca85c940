//! Regression tests for "nothing acknowledged is lost" (one per cause the
//! outside fault checker found). Each counts by id what was sent or
//! acknowledged against what arrived.
mod common;
use common::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const SECRET: &str = "nothing-lost-secret-0123456789";
const SM: &str = "urn:xmpp:sm:3";

fn ids(stanzas: &[starling::base::xml::Element], prefix: &str) -> BTreeSet<String> {
    stanzas
        .iter()
        .filter(|e| e.name == "message")
        .filter_map(|e| e.attr("id"))
        .filter(|id| id.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

fn expected(prefix: &str, n: usize) -> BTreeSet<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Collect `prefix` message ids until all `n` are in or `limit` passes.
async fn collect_ids(c: &mut Client, prefix: &str, n: usize, limit: Duration) -> BTreeSet<String> {
    let deadline = Instant::now() + limit;
    let mut got = BTreeSet::new();
    while got.len() < n && Instant::now() < deadline {
        got.extend(ids(
            &c.collect_for(Duration::from_millis(200)).await,
            prefix,
        ));
    }
    got
}

/// Bound and available on `s` (retrying while the account replicates).
async fn online_on(s: &Server, user: &str, resource: &str) -> Client {
    let mut c = authed_retry(s, user, "pw").await;
    c.bind(Some(resource)).await.expect("bind");
    c.send("<presence/>").await;
    c.stanza("presence").await;
    c
}

async fn wait_purged(n: &Server, node: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while n.cluster_status(SECRET).contains(&format!("node {node}:")) {
        assert!(
            Instant::now() < deadline,
            "node {node}'s sessions were never purged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Cause: a node relaying to a peer that died dropped the batch after five
/// tries, and the sender had already acknowledged it. Now the relay stays
/// with the sender, unacknowledged, until the dead node is purged, then
/// goes where the addressee is (here: offline storage), and only then is
/// it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_to_a_dead_node_are_kept_and_routed_again() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = cluster_node(1, None, SECRET, &[]);
    let n2 = cluster_node(2, Some(&n1), SECRET, &[]);
    let mut n3 = cluster_node(3, Some(&n1), SECRET, &[]);
    wait_members(&n1, SECRET, 3).await;
    n1.add_user("alice", "pw");
    n1.add_user("bob", "pw");

    let b = online_on(&n3, "bob", "phone").await;
    let mut a = sm_bound(&n1, "alice", "pw", "r").await;
    // Bob's node is in alice's node's table: relays go there.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !n1.cluster_status(SECRET).contains("node 3: 1") {
        assert!(Instant::now() < deadline, "bob's session never replicated");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    n3.kill9();
    drop(b);
    const N: usize = 20;
    for i in 0..N {
        a.send(&format!(
            "<message to='bob@localhost/phone' type='chat' id='dead{i}'><body>{i}</body></message>"
        ))
        .await;
    }
    a.send(&format!("<r xmlns='{SM}'/>")).await;
    // Not acknowledged while nobody owns them (the relay cannot land).
    let early = a.collect_for(Duration::from_millis(1500)).await;
    assert!(
        acked_h(&early).is_none_or(|h| h < N as u32),
        "acknowledged before any node owned them: {early:?}"
    );
    wait_purged(&n1, 3).await;
    // Once the node is given up on, they are stored offline and acknowledged.
    let acked = acked_up_to(&mut a, N as u32, acked_h(&early), Duration::from_secs(15)).await;
    assert_eq!(acked, Some(N as u32), "all {N} acknowledged once owned");
    let mut b = authed_retry(&n2, "bob", "pw").await;
    b.bind(Some("laptop")).await.unwrap();
    b.send("<presence/>").await;
    let got = collect_ids(&mut b, "dead", N, Duration::from_secs(10)).await;
    assert_eq!(
        got,
        expected("dead", N),
        "every acknowledged message arrived"
    );
}

/// Cause: a node answered a relayed message "owned" as soon as it was in
/// its addressee's session queue; killed before the session wrote it to
/// the client, the message died with the queue although its sender had
/// been acknowledged (fault checker, kill-leader: 1 of ~1,900). Now a
/// session owns a message once its bytes are written to the socket (or,
/// behind a client that stopped reading, after a second): until then the
/// sending node keeps it (for `[limits] write_wait_ms`, here raised to
/// 5 s so the test does not race it). Here bob's client stops reading, so
/// the node holding his session cannot write alice's messages; that node
/// is killed; they reach bob from offline storage, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_its_session_has_not_written_yet_is_not_lost_with_the_node() {
    let _turn = CLUSTER_TURN.lock().await;
    let fast = [
        ("STARLING_LIMITS_RATE_BYTES_PER_SEC", "100000000"),
        ("STARLING_LIMITS_RATE_BURST_BYTES", "100000000"),
        ("STARLING_LIMITS_WRITE_WAIT_MS", "5000"),
    ];
    let n1 = cluster_node(1, None, SECRET, &fast);
    let n2 = cluster_node(2, Some(&n1), SECRET, &fast);
    let mut n3 = cluster_node(3, Some(&n1), SECRET, &fast);
    wait_members(&n1, SECRET, 3).await;
    for u in ["alice", "bob", "carol"] {
        n1.add_user(u, "pw");
    }
    // Bob is online on node 3, then reads nothing more.
    let bob = online_on(&n3, "bob", "phone").await;
    let mut carol = authed_retry(&n3, "carol", "pw").await;
    carol.bind(Some("c")).await.unwrap();
    let mut a = sm_bound(&n1, "alice", "pw", "r").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !n1.cluster_status(SECRET).contains("node 3: 2") {
        assert!(
            Instant::now() < deadline,
            "node 3's sessions never replicated"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ~6 MB of headlines at bob: more than the socket buffers hold, fewer
    // stanzas than his queue takes, so node 3's writer to him blocks.
    let body = "y".repeat(60_000);
    for i in 0..100 {
        assert!(
            carol
                .try_send(&format!(
                    "<message type='headline' to='bob@localhost/phone' id='flood{i}'><body>{body}</body></message>"
                ))
                .await,
            "carol was cut off at {i}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    const N: usize = 5;
    for i in 0..N {
        a.send(&format!(
            "<message to='bob@localhost/phone' type='chat' id='unwritten{i}'><body>{i}</body></message>"
        ))
        .await;
    }
    a.send(&format!("<r xmlns='{SM}'/>")).await;
    // In bob's queue on node 3, not written: not acknowledged (before, all
    // of them were at once).
    let early = a.collect_for(Duration::from_millis(400)).await;
    assert!(
        acked_h(&early).unwrap_or(0) == 0,
        "acknowledged while only in a queue on node 3: {early:?}"
    );
    n3.kill9();
    drop(bob);
    wait_purged(&n1, 3).await;
    // Node 1 kept them: with node 3 given up on, they go to offline
    // storage, and only then are they acknowledged.
    let acked = acked_up_to(&mut a, N as u32, acked_h(&early), Duration::from_secs(20)).await;
    assert_eq!(acked, Some(N as u32), "all {N} acknowledged once owned");
    let mut b = authed_retry(&n2, "bob", "pw").await;
    b.bind(Some("laptop")).await.unwrap();
    b.send("<presence/>").await;
    // Every copy counts (a set would hide a second one).
    let unwritten = |got: Vec<starling::base::xml::Element>| {
        got.into_iter()
            .filter(|e| e.name == "message")
            .filter_map(|e| {
                e.attr("id")
                    .filter(|id| id.starts_with("unwritten"))
                    .map(str::to_string)
            })
            .collect::<Vec<_>>()
    };
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < N && Instant::now() < deadline {
        seen.extend(unwritten(b.collect_for(Duration::from_millis(300)).await));
    }
    // And no second copy behind them.
    seen.extend(unwritten(b.collect_for(Duration::from_secs(1)).await));
    seen.sort();
    let want: Vec<String> = expected("unwritten", N).into_iter().collect();
    assert_eq!(seen, want, "every acknowledged message, once");
}

/// Cause: a relayed message whose session was gone went to offline storage
/// through a blocking commit on the Raft runtime's only thread, which
/// waited for a proposal that needed that thread: the node froze 6 s per
/// message and dropped it. Now the commit is awaited on a task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_message_for_a_gone_session_is_stored_without_a_stall() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = cluster_node(1, None, SECRET, &[]);
    n1.add_user("bob", "pw");
    let started = Instant::now();
    for i in 0..3 {
        let relay = starling::routing::route::Relay::Stanza {
            to: "bob@localhost/gone".into(),
            require: None,
            xml: format!(
                "<message xmlns='jabber:client' from='carol@localhost/x' to='bob@localhost/gone' type='chat' id='ghost{i}'><body>{i}</body></message>"
            ),
            hops: 0,
            depth: 0,
        };
        let payload = serde_json::to_vec(&relay).unwrap();
        starling_cluster::remote_relay(&n1.mesh.to_string(), &mesh_auth(SECRET), payload)
            .await
            .expect("relay accepted");
    }
    // Each relay is answered once the message is stored: after at most
    // 1.5 s looking for the session in the table, then one commit (before:
    // a 6 s freeze each, and the message dropped).
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "relays took {:?}",
        started.elapsed()
    );
    let mut b = authed_retry(&n1, "bob", "pw").await;
    b.bind(Some("r")).await.unwrap();
    b.send("<presence/>").await;
    let got = collect_ids(&mut b, "ghost", 3, Duration::from_secs(5)).await;
    assert_eq!(got, expected("ghost", 3));
}

/// Cause: after a pause (or a partition) the leader purged the node's
/// sessions, and when it came back they stayed out of the table while the
/// clients stayed connected: everything to them went offline. Now a node
/// purged while alive registers its sessions again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_registers_its_sessions_again() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = cluster_node(1, None, SECRET, &[]);
    let _n2 = cluster_node(2, Some(&n1), SECRET, &[]);
    let n3 = cluster_node(3, Some(&n1), SECRET, &[]);
    wait_members(&n1, SECRET, 3).await;
    n1.add_user("alice", "pw");
    n1.add_user("bob", "pw");
    let mut b = online_on(&n3, "bob", "phone").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !n1.cluster_status(SECRET).contains("node 3: 1") {
        assert!(Instant::now() < deadline, "bob's session never replicated");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    n3.pause(true);
    wait_purged(&n1, 3).await;
    n3.pause(false);
    let back = Instant::now();
    while !n1.cluster_status(SECRET).contains("node 3: 1") {
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "bob's live session was not registered again within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.drain();
    let mut a = Client::online(n1.c2s, "alice", "pw", "r").await;
    for i in 0..5 {
        a.send(&format!(
            "<message to='bob@localhost' type='chat' id='back{i}'><body>{i}</body></message>"
        ))
        .await;
    }
    // Live, on the same connection, without logging in again.
    let got = collect_ids(&mut b, "back", 5, Duration::from_secs(5)).await;
    assert_eq!(got, expected("back", 5));
}

/// Cause: a message to a user the moment they came online on another node
/// was stored offline (the sender's replica had not seen their presence)
/// and stayed there until their next login. Now the node that holds the
/// resource which should get it delivers it as soon as it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_as_its_addressee_comes_online_is_delivered() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = cluster_node(1, None, SECRET, &[]);
    let n2 = cluster_node(2, Some(&n1), SECRET, &[]);
    wait_members(&n1, SECRET, 2).await;
    n1.add_user("alice", "pw");
    n1.add_user("bob", "pw");
    let a = Client::online(n1.c2s, "alice", "pw", "r").await;
    let mut b = authed_retry(&n2, "bob", "pw").await;
    b.bind(Some("phone")).await.unwrap();
    // Bob comes online; alice writes the moment he has (her node's replica
    // may not know yet).
    const N: usize = 10;
    let (_reader, mut aw, _) = a.split_reader();
    b.send("<presence/>").await;
    b.stanza("presence").await;
    for i in 0..N {
        aw.try_send(&format!(
            "<message to='bob@localhost' type='chat' id='race{i}'><body>{i}</body></message>"
        ))
        .await;
    }
    let got = collect_ids(&mut b, "race", N, Duration::from_secs(5)).await;
    assert_eq!(
        got,
        expected("race", N),
        "all delivered to the live session, none left offline"
    );
}
