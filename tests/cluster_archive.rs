//! The archive's promise across the cluster (XEP-0313 with XEP-0198): a
//! message the server acknowledged is in the sender's and the recipient's
//! archives on a majority, so kill -9 of the sender's node right after its
//! `<a/>` loses none of them; every node's archive is the same, also on
//! the killed node once it is back.
mod common;
use common::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const SECRET: &str = "cluster-archive-secret-0123456789";
const SM: &str = "urn:xmpp:sm:3";
const PORTS: FixedPorts = FixedPorts {
    c2s: 9322,
    http: 9380,
    mesh: 11322,
};
const SENT: usize = 300;

fn start_node(i: u64, dir: tempfile::TempDir) -> Server {
    fixed_node(i, dir, SECRET, &PORTS, &[])
}

/// `user`'s whole archive as read on `node`: (id, body) oldest first.
async fn whole_archive(node: &Server, user: &str) -> Vec<(String, String)> {
    let mut c = authed_retry(node, user, "pw").await;
    c.bind(None).await.unwrap();
    let mut all = Vec::new();
    let mut after = String::new();
    for page in 0..100 {
        let rsm = if after.is_empty() {
            "<set xmlns='http://jabber.org/protocol/rsm'><max>250</max></set>".to_string()
        } else {
            format!("<set xmlns='http://jabber.org/protocol/rsm'><max>250</max><after>{after}</after></set>")
        };
        let (items, fin) = mam_query(&mut c, &format!("p{page}"), &rsm).await;
        assert_eq!(fin.attr("type"), Some("result"), "{fin:?}");
        let Some(last) = items.last() else { break };
        after = last.0.clone();
        all.extend(items);
        let complete = fin
            .get_child("fin", MAM_NS)
            .and_then(|f| f.attr("complete"))
            == Some("true");
        if complete {
            break;
        }
    }
    all
}

/// The archive is in commit order: a message committed after another
/// whose id is later (made on a node whose clock is behind) comes after
/// it, under its own stanza-id, so a client paging `after` the last id it
/// saw misses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_from_a_node_whose_clock_is_behind_is_not_skipped_by_paging() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = start_node(1, tempfile::tempdir().unwrap());
    // Node 2 makes its ids a minute in the past (a fault switch).
    let n2 = fixed_node(
        2,
        tempfile::tempdir().unwrap(),
        SECRET,
        &PORTS,
        &[("FAULT_ARCHIVE_CLOCK_BEHIND_SECS", "60")],
    );
    wait_members(&n1, SECRET, 2).await;
    n1.add_user("alice", "pw");
    n1.add_user("bob", "pw");
    let mut a = authed_retry(&n1, "alice", "pw").await;
    a.bind(Some("r")).await.unwrap();
    let mut b = authed_retry(&n2, "bob", "pw").await;
    b.bind(Some("r")).await.unwrap();
    let sid = |m: &starling::base::xml::Element| {
        m.elements()
            .find(|c| c.name == "stanza-id" && c.attr("by") == Some("alice@localhost"))
            .and_then(|c| c.attr("id"))
            .map(str::to_string)
    };

    // alice's own copy is made on node 1 (now); the copy of bob's answer
    // in alice's archive is made on node 2 (a minute ago), committed later.
    a.send("<message to='bob@localhost/r' type='chat' id='a1'><body>first</body></message>")
        .await;
    b.wait_for(|e| e.name == "message" && e.attr("id") == Some("a1"))
        .await;
    let (seen, _) = mam_query(&mut a, "q0", "").await;
    let first = seen
        .last()
        .expect("alice's own message is archived")
        .0
        .clone();
    b.send("<message to='alice@localhost/r' type='chat' id='b1'><body>second</body></message>")
        .await;
    let answer = a
        .wait_for(|e| e.name == "message" && e.attr("id") == Some("b1"))
        .await;
    let answer_id = sid(&answer).expect("the answer carries alice's stanza-id");
    assert!(
        answer_id < first,
        "the switch took: {answer_id} was made before {first}"
    );

    // A client that saw `first` last pages on from it.
    let rsm = format!("<set xmlns='http://jabber.org/protocol/rsm'><after>{first}</after></set>");
    let (after, fin) = mam_query(&mut a, "q1", &rsm).await;
    assert_eq!(fin.attr("type"), Some("result"), "{fin:?}");
    assert_eq!(
        after,
        vec![(answer_id.clone(), "second".to_string())],
        "the answer, under the id it arrived with"
    );
    // The whole archive, in the order it was committed, on both nodes.
    for node in [&n1, &n2] {
        let all = whole_archive(node, "alice").await;
        let bodies: Vec<&str> = all.iter().map(|(_, b)| b.as_str()).collect();
        assert_eq!(bodies, ["first", "second"]);
        assert_eq!(all[1].0, answer_id);
    }
    // And its own id finds it (after-id of XEP-0313 §4.1.1 too).
    let form = format!(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>{MAM_NS}</value></field><field var='after-id'><value>{answer_id}</value></field></x>"
    );
    let (rest, fin) = mam_query(&mut a, "q2", &form).await;
    assert_eq!(fin.attr("type"), Some("result"), "{fin:?}");
    assert!(rest.is_empty(), "nothing after the last: {rest:?}");
    // A query that ends before `first` was made keeps the answer (made a
    // minute earlier), though it sits after `first` in the archive.
    let micros = u64::from_str_radix(&first, 16).expect("hex id") >> 12;
    let end = starling::base::time::xep82(Duration::from_micros(micros - 1_000_000));
    let form = format!(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>{MAM_NS}</value></field><field var='end'><value>{end}</value></field></x>"
    );
    let (ended, fin) = mam_query(&mut a, "q3", &form).await;
    assert_eq!(fin.attr("type"), Some("result"), "{fin:?}");
    assert_eq!(
        ended,
        vec![(answer_id, "second".to_string())],
        "ending at {end}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_an_ack_loses_nothing_from_any_archive() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = start_node(1, tempfile::tempdir().unwrap());
    let n2 = start_node(2, tempfile::tempdir().unwrap());
    let mut n3 = start_node(3, tempfile::tempdir().unwrap());
    wait_members(&n1, SECRET, 3).await;
    n1.add_user("alice", "pw");
    n1.add_user("bob", "pw");

    // Both on node 3: delivery there is immediate, so only the archive
    // writes stand between a message and its ack.
    let mut b = authed_retry(&n3, "bob", "pw").await;
    b.bind(Some("r")).await.unwrap();
    let mut a = authed_retry(&n3, "alice", "pw").await;
    a.bind(Some("phone")).await.unwrap();
    a.send(&format!("<enable xmlns='{SM}'/>")).await;
    a.wait_for(|e| e.name == "enabled").await;

    // Rounds of ten messages, each followed by a request for an ack; a
    // round goes out before the last one's ack is read, so messages are
    // in flight when the node dies, the moment an ack covers half.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut acked = 0;
    for round in 0..SENT / 10 {
        for i in round * 10..round * 10 + 10 {
            a.send(&format!(
                "<message to='bob@localhost/r' type='chat' id='m{i}'><body>{i}</body></message>"
            ))
            .await;
        }
        a.send(&format!("<r xmlns='{SM}'/>")).await;
        if round == 0 {
            continue;
        }
        while acked < (round - 1) * 10 + 10 {
            assert!(Instant::now() < deadline, "acks stopped at {acked}");
            let ack = a.wait_for(|e| e.name == "a").await;
            acked = ack.attr("h").unwrap().parse().unwrap();
        }
        if acked >= SENT / 2 {
            break;
        }
    }
    n3.kill9();
    drop(a);
    eprintln!("node 3 killed after an ack for {acked} of {SENT} messages");

    let want: Vec<String> = (0..acked).map(|i| i.to_string()).collect();
    let mut seen: HashMap<&str, Vec<(String, String)>> = HashMap::new();
    for (node, name) in [(&n1, "node 1"), (&n2, "node 2")] {
        for user in ["alice", "bob"] {
            let all = whole_archive(node, user).await;
            let bodies: Vec<&str> = all.iter().map(|(_, b)| b.as_str()).collect();
            for w in &want {
                assert_eq!(
                    bodies.iter().filter(|b| *b == w).count(),
                    1,
                    "acknowledged message {w} in {user}'s archive on {name}: {} of {acked} acked there",
                    want.iter().filter(|w| bodies.contains(&w.as_str())).count()
                );
            }
            let mut unique = bodies.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(
                unique.len(),
                bodies.len(),
                "no duplicates in {user}'s archive on {name}"
            );
            eprintln!("{user}'s archive on {name}: {} messages", all.len());
            if let Some(other) = seen.get(user) {
                assert_eq!(
                    other, &all,
                    "{user}'s archive is the same on node 1 and node 2"
                );
            }
            seen.insert(user, all);
        }
    }

    // The killed node comes back with its data and catches up.
    let dir = std::mem::replace(&mut n3.dir, tempfile::tempdir().unwrap());
    drop(n3);
    let n3 = start_node(3, dir);
    let deadline = Instant::now() + Duration::from_secs(20);
    for user in ["alice", "bob"] {
        loop {
            let all = whole_archive(&n3, user).await;
            if &all == seen.get(user).unwrap() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{user}'s archive on the restarted node 3 differs: {} entries, {} on node 1",
                all.len(),
                seen[user].len()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// An acknowledged message is in its sender's archive, so a message that
/// cannot be queued for the archive (the node's backlog of writes waiting
/// for the cluster is full) is refused with `<resource-constraint/>`
/// (type wait) instead of being delivered unarchived, as it was. Here the
/// cluster cannot commit (its other node is paused) and the backlog holds
/// two writes: the first message's two copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_archive_backlog_refuses_messages_instead_of_losing_their_archive() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = cluster_node(1, None, SECRET, &[("STARLING_MAM_BACKLOG", "2")]);
    let n2 = cluster_node(2, Some(&n1), SECRET, &[]);
    wait_members(&n1, SECRET, 2).await;
    n1.add_user("alice", "pw");
    n1.add_user("bob", "pw");
    let mut bob = authed_retry(&n1, "bob", "pw").await;
    bob.bind(Some("b")).await.unwrap();
    let mut alice = sm_bound(&n1, "alice", "pw", "a").await;

    n2.pause(true);
    for id in ["kept", "refused"] {
        alice
            .send(&format!(
                "<message to='bob@localhost/b' type='chat' id='{id}'><body>{id}</body></message>"
            ))
            .await;
    }
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        alice.wait_for(|e| e.name == "message" && e.attr("type") == Some("error")),
    )
    .await
    .expect("the second message is refused at once");
    assert_eq!(err.attr("id"), Some("refused"), "{err:?}");
    let error = err
        .get_child("error", "jabber:client")
        .expect("error child");
    assert_eq!(error.attr("type"), Some("wait"), "{err:?}");
    assert_eq!(
        stanza_condition(&err).as_deref(),
        Some("resource-constraint")
    );
    n2.pause(false);

    // Bob gets the first and never the second.
    let got: Vec<String> = bob
        .collect_for(Duration::from_secs(2))
        .await
        .iter()
        .filter(|e| e.name == "message")
        .filter_map(|e| e.attr("id").map(str::to_string))
        .collect();
    assert_eq!(got, vec!["kept".to_string()]);
    // Both are acknowledged once the cluster commits again: the first as
    // archived, the second as handled (refused).
    let acked = acked_up_to(&mut alice, 2, None, Duration::from_secs(20)).await;
    assert_eq!(acked, Some(2), "both acknowledged once the cluster commits");
    drop(alice);
    let bodies: Vec<String> = whole_archive(&n1, "alice")
        .await
        .into_iter()
        .map(|(_, body)| body)
        .collect();
    assert_eq!(
        bodies,
        vec!["kept".to_string()],
        "the archive has the acknowledged message only"
    );
}
