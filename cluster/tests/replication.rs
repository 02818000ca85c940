//! Several real nodes (own sled dirs, real sockets on loopback) replicating
//! through Raft: commit, failure, restart, snapshot catch-up, partition,
//! authentication, removal.

use std::sync::Arc;
use std::time::Duration;

use starling_cluster::{Cluster, ClusterConfig, ClusterError, StateMachine};

const SECRET: &str = "test-cluster-secret";
const WAIT: Duration = Duration::from_secs(15);

/// A log of applied commands in its own sled tree.
struct Log {
    tree: sled::Tree,
}

impl StateMachine for Log {
    fn apply(&self, index: u64, command: &[u8]) -> Vec<u8> {
        self.tree
            .insert(index.to_be_bytes(), command)
            .expect("sm write");
        format!("applied at {index}").into_bytes()
    }
    fn snapshot(&self) -> Result<Vec<u8>, String> {
        let all: Vec<(Vec<u8>, Vec<u8>)> = self
            .tree
            .iter()
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        serde_json::to_vec(&all).map_err(|e| e.to_string())
    }
    fn restore(&self, data: &[u8]) -> Result<(), String> {
        let all: Vec<(Vec<u8>, Vec<u8>)> =
            serde_json::from_slice(data).map_err(|e| e.to_string())?;
        self.tree.clear().map_err(|e| e.to_string())?;
        for (k, v) in all {
            self.tree.insert(k, v).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

struct Node {
    cluster: Cluster,
    tree: sled::Tree,
    dir: tempfile::TempDir,
    id: u64,
}

impl Node {
    fn commands(&self) -> Vec<String> {
        self.tree
            .iter()
            .values()
            .map(|v| String::from_utf8(v.unwrap().to_vec()).unwrap())
            .collect()
    }

    async fn stop(self) -> (tempfile::TempDir, u64, std::net::SocketAddr) {
        let addr = self.cluster.local_addr();
        self.cluster.shutdown();
        drop(self.cluster);
        drop(self.tree);
        // Let the driver and server tasks drop their handles on the db.
        tokio::time::sleep(Duration::from_millis(500)).await;
        (self.dir, self.id, addr)
    }
}

fn config(id: u64, join: Option<String>, compact_after: u64) -> ClusterConfig {
    let mut c = ClusterConfig::new(id, "127.0.0.1:0".parse().unwrap(), SECRET);
    c.join = join;
    // The production tick: shorter election timeouts flap on a loaded 2-core machine.
    c.tick = Duration::from_millis(100);
    c.compact_after = compact_after;
    c
}

async fn start_in(dir: tempfile::TempDir, cfg: ClusterConfig) -> Node {
    let mut db = None;
    for _ in 0..50 {
        match sled::open(dir.path().join("db")) {
            Ok(d) => {
                db = Some(d);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let db = db.expect("reopen db");
    let tree = db.open_tree("sm").unwrap();
    let id = cfg.id;
    let cluster = Cluster::start(db, Arc::new(Log { tree: tree.clone() }), cfg)
        .await
        .expect("start node");
    Node {
        cluster,
        tree,
        dir,
        id,
    }
}

async fn start(id: u64, join: Option<String>, compact_after: u64) -> Node {
    start_in(
        tempfile::tempdir().unwrap(),
        config(id, join, compact_after),
    )
    .await
}

async fn three(compact_after: u64) -> Vec<Node> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let n1 = start(1, None, compact_after).await;
    n1.cluster
        .wait_for(WAIT, |s| s.role == "leader")
        .await
        .expect("n1 leads");
    let seed = n1.cluster.local_addr().to_string();
    let n2 = start(2, Some(seed.clone()), compact_after).await;
    let n3 = start(3, Some(seed), compact_after).await;
    for n in [&n1, &n2, &n3] {
        n.cluster
            .wait_for(WAIT, |s| s.peers.len() == 3 && s.leader != 0)
            .await
            .expect("3 members and a leader");
    }
    // Caught up with the leader (a joiner's first state comes by snapshot).
    let commit = n1.cluster.status().commit;
    for n in [&n1, &n2, &n3] {
        n.cluster
            .wait_for(WAIT, |s| s.applied >= commit)
            .await
            .expect("caught up");
    }
    vec![n1, n2, n3]
}

async fn converge(nodes: &[&Node], count: usize) {
    for n in nodes {
        let deadline = tokio::time::Instant::now() + WAIT;
        while n.commands().len() < count {
            if tokio::time::Instant::now() >= deadline {
                let all: Vec<_> = nodes.iter().map(|n| n.cluster.status()).collect();
                panic!(
                    "node {} has {} of {count}; status: {all:#?}",
                    n.id,
                    n.commands().len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let first = nodes[0].commands();
    for n in nodes {
        assert_eq!(n.commands(), first, "node {} differs", n.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_and_survive_a_restart() {
    let nodes = three(1000).await;
    // Proposals from every node, followers included.
    for i in 0..9 {
        let n = &nodes[i % 3];
        let out = n
            .cluster
            .propose(format!("cmd-{i}").into_bytes(), WAIT)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "commit {i} via node {}: {e}; {:?}",
                    n.id,
                    n.cluster.status()
                )
            });
        assert!(String::from_utf8(out).unwrap().starts_with("applied at "));
    }
    converge(&nodes.iter().collect::<Vec<_>>(), 9).await;
    let status = nodes[0].cluster.status();
    assert!(status.commit >= 9 && status.term >= 1, "{status:?}");

    // Node 3 dies; the other two still commit.
    let mut nodes = nodes;
    let n3 = nodes.pop().unwrap();
    let (dir3, id3, addr3) = n3.stop().await;
    for i in 9..14 {
        nodes[i % 2]
            .cluster
            .propose(format!("cmd-{i}").into_bytes(), WAIT)
            .await
            .expect("commit with 2 of 3");
    }
    // It comes back with its data and catches up.
    // Same data dir, same address (a node's mesh address is fixed config).
    let mut cfg = config(id3, None, 1000);
    cfg.listen = addr3;
    let n3 = start_in(dir3, cfg).await;
    nodes.push(n3);
    converge(&nodes.iter().collect::<Vec<_>>(), 14).await;
    // Its first proposals in its new life are new proposals, not taken for
    // repeats of the ones it made before the restart (the dedup window
    // outlives the process).
    for i in 14..17 {
        nodes[2]
            .cluster
            .propose(format!("cmd-{i}").into_bytes(), WAIT)
            .await
            .expect("commit from the restarted node");
    }
    converge(&nodes.iter().collect::<Vec<_>>(), 17).await;
    for n in &nodes {
        assert!(n.commands().contains(&"cmd-16".to_string()));
    }
    for n in &nodes {
        n.cluster.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_catches_up_by_snapshot() {
    let nodes = three(5).await;
    for i in 0..30 {
        nodes[0]
            .cluster
            .propose(format!("cmd-{i}").into_bytes(), WAIT)
            .await
            .expect("commit");
    }
    converge(&nodes.iter().collect::<Vec<_>>(), 30).await;
    // The log was compacted, so node 4 can only get there by snapshot.
    let seed = nodes[1].cluster.local_addr().to_string();
    let n4 = start(4, Some(seed), 5).await;
    let mut all: Vec<&Node> = nodes.iter().collect();
    all.push(&n4);
    converge(&all, 30).await;
    n4.cluster
        .wait_for(WAIT, |s| s.peers.len() == 4)
        .await
        .expect("n4 knows all peers");
    // And it takes part: a proposal through it commits everywhere.
    n4.cluster
        .propose(b"from-4".to_vec(), WAIT)
        .await
        .expect("commit via n4");
    converge(&all, 31).await;
    for n in all {
        n.cluster.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_cannot_commit_and_heals() {
    let nodes = three(1000).await;
    nodes[0]
        .cluster
        .propose(b"before".to_vec(), WAIT)
        .await
        .unwrap();
    // Cut off whichever node is not the leader... or the leader itself: the
    // isolated node is always in the minority.
    let cut = &nodes[2];
    cut.cluster.set_isolated(true);
    let r = cut
        .cluster
        .propose(b"from-minority".to_vec(), Duration::from_secs(3))
        .await;
    assert_eq!(r, Err(ClusterError::NoQuorum), "a minority must not commit");
    // The majority elects (if needed) and keeps going.
    let mut ok = false;
    for _ in 0..30 {
        if nodes[0]
            .cluster
            .propose(b"majority".to_vec(), Duration::from_secs(2))
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
    }
    assert!(ok, "the majority kept committing");
    assert!(!cut.commands().contains(&"majority".to_string()));
    // Healed: everyone holds the same state. The minority's proposal was
    // never acknowledged; whether raft later commits it does not matter
    // to the check, only that all nodes agree.
    cut.cluster.set_isolated(false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let target = nodes.iter().map(|n| n.commands().len()).max().unwrap();
    converge(&nodes.iter().collect::<Vec<_>>(), target).await;
    assert!(cut.commands().contains(&"majority".to_string()));
    for n in &nodes {
        n.cluster.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_cannot_join_and_nodes_can_be_removed() {
    let nodes = three(1000).await;
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path().join("db")).unwrap();
    let tree = db.open_tree("sm").unwrap();
    let mut cfg = config(9, Some(nodes[0].cluster.local_addr().to_string()), 1000);
    cfg.secret = "not-the-secret".into();
    let r = Cluster::start(db, Arc::new(Log { tree }), cfg).await;
    assert!(
        matches!(r, Err(ClusterError::Join(ref e)) if e.contains("secret")),
        "{:?}",
        r.err()
    );
    assert_eq!(nodes[0].cluster.status().peers.len(), 3);

    let peers = nodes[0].cluster.remove_node(3, WAIT).await.expect("remove");
    assert_eq!(peers.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 2]);
    nodes[1]
        .cluster
        .wait_for(WAIT, |s| s.peers.len() == 2)
        .await
        .expect("n2 sees the removal");
    nodes[0]
        .cluster
        .propose(b"after-removal".to_vec(), WAIT)
        .await
        .expect("two members commit");
    for n in &nodes {
        n.cluster.shutdown();
    }
}

/// A relayed payload reaches the application only once the receiving node
/// has applied what its sender had applied when it sent it: a stanza never
/// overtakes the replicated change made before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_does_not_overtake_the_log() {
    let nodes = three(1000).await;
    let (n1, n3) = (&nodes[0], &nodes[2]);
    let mut incoming = n3.cluster.take_relay_receiver().expect("relay receiver");
    // Node 3 falls behind: it misses this commit while cut off.
    n3.cluster.set_isolated(true);
    n1.cluster
        .propose(b"made-before-the-relay".to_vec(), WAIT)
        .await
        .expect("the majority commits");
    assert!(!n3.commands().contains(&"made-before-the-relay".to_string()));
    // Healed, and at once a payload from node 1, which has applied it.
    n3.cluster.set_isolated(false);
    let (receipt, answered) = tokio::sync::oneshot::channel();
    assert!(n1
        .cluster
        .relay(
            3,
            starling_cluster::Lane::Stanzas,
            b"hello".to_vec(),
            Some(receipt)
        )
        .is_ok());
    let got = tokio::time::timeout(WAIT, incoming.recv())
        .await
        .expect("the relay arrives")
        .expect("relay stream open");
    assert_eq!((got.from, got.payload.as_slice()), (1, &b"hello"[..]));
    assert!(
        n3.commands().contains(&"made-before-the-relay".to_string()),
        "the relay was handed on before the change that preceded it was applied"
    );
    let _ = got.receipt.send(true);
    assert_eq!(
        tokio::time::timeout(WAIT, answered)
            .await
            .ok()
            .and_then(|r| r.ok()),
        Some(true)
    );
    for n in &nodes {
        n.cluster.shutdown();
    }
}

/// Two nodes each pass a received payload straight back to its sender,
/// and answer for it only once the sender owns the copy (a stanza following
/// its session back). The copies travel in the `Forward` lane, so neither
/// waits behind the other's unanswered batch: both are owned, none is
/// refused after the answer timeout (which would send it twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_passed_back_to_their_senders_do_not_wait_on_each_other() {
    use starling_cluster::Lane;
    let nodes = three(1000).await;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let mut in1 = n1.cluster.take_relay_receiver().expect("relay receiver 1");
    let mut in2 = n2.cluster.take_relay_receiver().expect("relay receiver 2");
    let (r_a, answered_a) = tokio::sync::oneshot::channel();
    let (r_b, answered_b) = tokio::sync::oneshot::channel();
    assert!(n1
        .cluster
        .relay(2, Lane::Stanzas, b"a".to_vec(), Some(r_a))
        .is_ok());
    assert!(n2
        .cluster
        .relay(1, Lane::Stanzas, b"b".to_vec(), Some(r_b))
        .is_ok());
    // Both batches are in flight once both have arrived.
    let got_a = tokio::time::timeout(WAIT, in2.recv())
        .await
        .expect("a arrives")
        .expect("stream open");
    let got_b = tokio::time::timeout(WAIT, in1.recv())
        .await
        .expect("b arrives")
        .expect("stream open");
    assert_eq!((got_a.from, got_b.from), (1, 2));
    // Each passes its payload back to the sender, answering when it is owned.
    let (f_a, owned_a) = tokio::sync::oneshot::channel();
    let (f_b, owned_b) = tokio::sync::oneshot::channel();
    assert!(n2
        .cluster
        .relay(1, Lane::Forward(1), b"a again".to_vec(), Some(f_a))
        .is_ok());
    assert!(n1
        .cluster
        .relay(2, Lane::Forward(1), b"b again".to_vec(), Some(f_b))
        .is_ok());
    tokio::spawn(async move {
        let _ = got_a.receipt.send(owned_a.await.unwrap_or(false));
    });
    tokio::spawn(async move {
        let _ = got_b.receipt.send(owned_b.await.unwrap_or(false));
    });
    // The copies arrive and are taken.
    for (rx, want) in [(&mut in1, &b"a again"[..]), (&mut in2, &b"b again"[..])] {
        let got = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("the copy arrives")
            .expect("stream open");
        assert_eq!(got.payload.as_slice(), want);
        let _ = got.receipt.send(true);
    }
    for answered in [answered_a, answered_b] {
        assert_eq!(
            tokio::time::timeout(WAIT, answered)
                .await
                .ok()
                .and_then(|r| r.ok()),
            Some(true),
            "a payload passed back was refused (its answer timed out)"
        );
    }
    for n in &nodes {
        n.cluster.shutdown();
    }
}

/// A node stopped while it installed a snapshot has half a state: it does
/// not start on it, and says what to do.
#[test]
fn a_node_stopped_mid_install_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path().join("db")).unwrap();
    db.open_tree("raft_meta")
        .unwrap()
        .insert("restoring_snapshot", &42u64.to_be_bytes())
        .unwrap();
    let sm = Arc::new(Log {
        tree: db.open_tree("sm").unwrap(),
    });
    let err =
        match starling_cluster::storage::SledStorage::open(db, sm, dir.path().join("snapshots")) {
            Ok(_) => panic!("opened a half-installed store"),
            Err(e) => e.to_string(),
        };
    assert!(
        err.contains("index 42") && err.contains("join again"),
        "{err}"
    );
}

/// The mesh fault switch cuts the relay stream into a node every 97
/// payloads, right after handing them on and before their answers go out
/// (a connection broken mid-traffic). The sender opens new streams and
/// sends again what had no answer; the receiver answers what it already
/// owns without handing it on again. Counted by id: every payload is
/// acknowledged, arrives exactly once, and in the order it was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_stream_broken_mid_traffic_loses_and_duplicates_nothing() {
    relay_counted(3000, |n2| n2.set_relay_cut_every(97), 10).await;
}

/// Answers gather: a stream's answer messages go at most one per
/// `ANSWER_GATHER`, each with every answer ready by then (one write and
/// one wake-up on each node instead of one per payload). 300 payloads
/// sent about one a millisecond, each owned as it arrives: every one is
/// acknowledged and arrives once, in order, and the receiver sends at most
/// one answer message per `ANSWER_GATHER` of the time the run took, and
/// two more (answering each payload on its own would take one per
/// payload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_to_payloads_owned_close_together_go_in_one_message() {
    use starling_cluster::ANSWER_GATHER;
    let nodes = three(1000).await;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let mut incoming = n2.cluster.take_relay_receiver().expect("relay receiver");
    let arrivals = Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let seen = arrivals.clone();
    let app = tokio::spawn(async move {
        while let Some(inc) = incoming.recv().await {
            let id = payload_id(&inc.payload);
            seen.lock().unwrap().push(id);
            let _ = inc.receipt.send(true);
        }
    });
    let count = 300;
    let before = n2.cluster.relay_answer_messages();
    let start = std::time::Instant::now();
    let mut answers = Vec::with_capacity(count);
    for i in 0..count {
        answers.push(relay_numbered(&n1.cluster, i));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let acked = owned_count(answers).await;
    let elapsed = start.elapsed();
    let messages = n2.cluster.relay_answer_messages() - before;
    let got = arrivals.lock().unwrap().clone();
    eprintln!(
        "{count} payloads over {} ms: {messages} answer messages",
        elapsed.as_millis()
    );
    assert_eq!(acked, count, "acknowledged payloads missing");
    assert_eq!(
        got,
        (0..count).collect::<Vec<_>>(),
        "payloads lost, handed on twice, or out of order"
    );
    // The first message may go at once, each later one at least
    // ANSWER_GATHER after the one before. Sooner only: 256 answers ready
    // at once (300 payloads a millisecond apart never are), and the
    // answers ready when a frame must wait for its node to apply what its
    // sender had applied (once per stream at most here: nothing is
    // written meanwhile), hence one more.
    let windows = (elapsed.as_millis() / ANSWER_GATHER.as_millis()) as u64 + 2;
    assert!(messages >= 1, "no answer message counted");
    assert!(
        messages <= windows,
        "{messages} answer messages in {} ms: answers were not gathered",
        elapsed.as_millis()
    );
    app.abort();
    for n in &nodes {
        n.cluster.shutdown();
    }
}

/// A node of a version from before relay streams (the switch makes node 2
/// answer them Unimplemented, as such a node does) still gets every
/// payload, once and in order, in `Relay` batches: a rolling upgrade's
/// mixed cluster keeps relaying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_relay_streams_gets_batches() {
    relay_counted(1000, |n2| n2.set_relay_streams_refused(true), 0).await;
}

/// Raft streams cut on every node mid-traffic (forwarded proposals and
/// append answers to the leader, appends to the followers travel on
/// them), answers not sent: the senders open new streams and send again
/// what had no answer. Counted by id: every proposal from the followers
/// is answered, and applied exactly once on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_stream_broken_mid_traffic_loses_and_duplicates_no_proposal() {
    proposals_counted(|n| n.set_raft_stream_cut_every(13), 5).await;
}

/// A node of a version from before Raft streams (the switch makes the
/// leader refuse them, and end those open, as Unimplemented) gets `Send`
/// batches: the followers' proposals still commit, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_raft_streams_gets_send_batches() {
    proposals_counted(
        |n| {
            if n.id() == 1 {
                n.set_raft_streams_refused(true)
            }
        },
        0,
    )
    .await;
}

/// Propose numbered commands from nodes 2 and 3 (48 at a time) with
/// `fault` set on every node, and count by id what was answered against
/// what every node applied.
async fn proposals_counted(fault: impl Fn(&Cluster), min_cuts: u64) {
    const COUNT: usize = 1200;
    const PROPOSERS: usize = 48;
    let nodes = three(1000).await;
    for n in &nodes {
        fault(&n.cluster);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..PROPOSERS {
        let c = nodes[1 + w % 2].cluster.clone();
        tasks.spawn(async move {
            let mut answered = 0;
            for k in 0..COUNT / PROPOSERS {
                let id = w * (COUNT / PROPOSERS) + k;
                if c.propose(format!("c{id}").into_bytes(), WAIT).await.is_ok() {
                    answered += 1;
                }
            }
            answered
        });
    }
    let mut answered = 0;
    while let Some(r) = tasks.join_next().await {
        answered += r.expect("proposer");
    }
    let cuts: u64 = nodes.iter().map(|n| n.cluster.raft_streams_cut()).sum();
    eprintln!("proposed {COUNT}, answered {answered}, raft streams cut {cuts}");
    assert_eq!(answered, COUNT, "proposals not answered");
    assert!(cuts >= min_cuts, "the fault switch cut only {cuts} streams");
    converge(&nodes.iter().collect::<Vec<_>>(), COUNT).await;
    for n in &nodes {
        let mut ids: Vec<usize> = n
            .commands()
            .iter()
            .filter_map(|c| c.strip_prefix('c')?.parse().ok())
            .collect();
        let applied = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(
            applied,
            ids.len(),
            "node {}: a proposal applied twice",
            n.id
        );
        assert_eq!(
            ids,
            (0..COUNT).collect::<Vec<_>>(),
            "node {}: proposals lost",
            n.id
        );
    }
    for n in &nodes {
        n.cluster.shutdown();
    }
}

/// A numbered payload's id (`p17`: 17).
fn payload_id(payload: &[u8]) -> usize {
    String::from_utf8_lossy(payload)
        .trim_start_matches('p')
        .parse()
        .expect("payload id")
}

/// Relay payload `p{i}` from `from` to node 2 on the stanza lane; the
/// receiver fires once node 2 answers for it.
fn relay_numbered(from: &Cluster, i: usize) -> tokio::sync::oneshot::Receiver<bool> {
    let (r, answered) = tokio::sync::oneshot::channel();
    assert!(from
        .relay(
            2,
            starling_cluster::Lane::Stanzas,
            format!("p{i}").into_bytes(),
            Some(r)
        )
        .is_ok());
    answered
}

/// How many of `answers` say "owned" within `WAIT` each.
async fn owned_count(answers: Vec<tokio::sync::oneshot::Receiver<bool>>) -> usize {
    let mut owned = 0;
    for answered in answers {
        if tokio::time::timeout(WAIT, answered)
            .await
            .ok()
            .and_then(|r| r.ok())
            == Some(true)
        {
            owned += 1;
        }
    }
    owned
}

/// Relay `count` numbered payloads from node 1 to node 2 (set up by
/// `fault`) and count by id what was acknowledged against what arrived.
async fn relay_counted(count: usize, fault: impl Fn(&Cluster), min_cuts: u64) {
    let nodes = three(1000).await;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let mut incoming = n2.cluster.take_relay_receiver().expect("relay receiver");
    let mut returned = n1.cluster.take_returned().expect("returned");
    fault(&n2.cluster);

    // The application on node 2: records what arrives, owns it a little
    // later (some answers are ready when the stream is cut, some not).
    let arrivals = Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let seen = arrivals.clone();
    let app = tokio::spawn(async move {
        while let Some(inc) = incoming.recv().await {
            let id = payload_id(&inc.payload);
            seen.lock().unwrap().push(id);
            tokio::spawn(async move {
                if id.is_multiple_of(3) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = inc.receipt.send(true);
            });
        }
    });
    let mut answers = Vec::with_capacity(count);
    for i in 0..count {
        answers.push(relay_numbered(&n1.cluster, i));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let acked = owned_count(answers).await;
    let mut given_back = 0;
    while returned.try_recv().is_ok() {
        given_back += 1;
    }
    let cuts = n2.cluster.relay_streams_cut();
    let got = arrivals.lock().unwrap().clone();
    let mut once = got.clone();
    once.sort_unstable();
    once.dedup();
    eprintln!(
        "relayed {count}, acknowledged {acked}, given back {given_back}, arrived {} ({} distinct), streams cut {cuts}",
        got.len(),
        once.len()
    );
    assert!(cuts >= min_cuts, "the fault switch cut only {cuts} streams");
    assert_eq!(given_back, 0, "payloads were given back");
    assert_eq!(acked, count, "acknowledged payloads missing");
    assert_eq!(got.len(), once.len(), "payloads handed on twice");
    assert_eq!(once, (0..count).collect::<Vec<_>>(), "payloads lost");
    assert_eq!(
        got,
        (0..count).collect::<Vec<_>>(),
        "order per sender not kept"
    );
    app.abort();
    for n in &nodes {
        n.cluster.shutdown();
    }
}

/// A node cut off while payloads it already handed on wait for their
/// answers: it still answers those (owned), then ends the stream; the
/// sender gives up on it (`take_back`) and gets back only what the node
/// never took, once it is too old for the node to take. Counted by id:
/// each payload is acknowledged and arrived once, or was given back and
/// never arrived; none both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_answers_what_it_owns_and_the_rest_comes_back() {
    let nodes = three(1000).await;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let mut incoming = n2.cluster.take_relay_receiver().expect("relay receiver");
    let mut returned = n1.cluster.take_returned().expect("returned");
    let arrivals = Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let seen = arrivals.clone();
    // The application on node 2 owns each payload 300 ms after it arrives.
    let app = tokio::spawn(async move {
        while let Some(inc) = incoming.recv().await {
            let id = payload_id(&inc.payload);
            seen.lock().unwrap().push(id);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = inc.receipt.send(true);
            });
        }
    });
    let mut answers = Vec::new();
    let send = |i: usize, answers: &mut Vec<_>| {
        answers.push((i, relay_numbered(&n1.cluster, i)));
    };
    for i in 0..300 {
        send(i, &mut answers);
    }
    let deadline = std::time::Instant::now() + WAIT;
    while arrivals.lock().unwrap().len() < 50 {
        assert!(std::time::Instant::now() < deadline, "nothing arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Cut off with answers still owed; more is sent meanwhile.
    n2.cluster.set_isolated(true);
    for i in 300..350 {
        send(i, &mut answers);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    n1.cluster.take_back(2);
    let mut acked = std::collections::BTreeSet::new();
    let mut back = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut open = answers;
    while acked.len() + back.len() < 350 {
        assert!(
            std::time::Instant::now() < deadline,
            "unsettled: {} acknowledged, {} given back",
            acked.len(),
            back.len()
        );
        while let Ok(r) = returned.try_recv() {
            let id = payload_id(&r.payload);
            back.insert(id);
        }
        open.retain_mut(|(i, rx)| match rx.try_recv() {
            Ok(true) => {
                acked.insert(*i);
                false
            }
            Ok(false) | Err(tokio::sync::oneshot::error::TryRecvError::Closed) => false,
            Err(_) => true,
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = arrivals.lock().unwrap().clone();
    let mut count = std::collections::HashMap::<usize, usize>::new();
    for id in &got {
        *count.entry(*id).or_default() += 1;
    }
    eprintln!(
        "acknowledged {}, given back {}, arrived {}",
        acked.len(),
        back.len(),
        got.len()
    );
    assert!(acked.is_disjoint(&back), "acknowledged and given back");
    for id in 0..350 {
        let n = count.get(&id).copied().unwrap_or(0);
        if acked.contains(&id) {
            assert_eq!(n, 1, "p{id} acknowledged but arrived {n} times");
        } else {
            assert!(
                back.contains(&id),
                "p{id} neither acknowledged nor given back"
            );
            assert_eq!(n, 0, "p{id} given back (to be routed again) but it arrived");
        }
    }
    assert!(
        !back.is_empty() && !acked.is_empty(),
        "the cut fell outside the traffic"
    );
    n2.cluster.set_isolated(false);
    app.abort();
    for n in &nodes {
        n.cluster.shutdown();
    }
}

/// Mutual TLS on the mesh: members with certificates of the cluster CA
/// replicate and relay; a node whose certificate another CA signed, a node
/// whose certificate names another node id, and a plain connection are
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_refuses_a_node_the_cluster_ca_did_not_sign() {
    use starling_cluster::proto::{RaftBatch, RelayBatch, RemoveRequest};
    use starling_cluster::{CertAuthority, MeshAuth, MeshTls};
    let ca = CertAuthority::generate().expect("cluster CA");
    let with_tls = |id: u64, join: Option<String>| {
        let mut c = config(id, join, 1000);
        c.tls = Some(ca.node_tls(id).expect("node certificate"));
        c
    };
    let n1 = start_in(tempfile::tempdir().unwrap(), with_tls(1, None)).await;
    n1.cluster
        .wait_for(WAIT, |s| s.role == "leader")
        .await
        .expect("n1 leads");
    let seed = n1.cluster.local_addr().to_string();
    let n2 = start_in(
        tempfile::tempdir().unwrap(),
        with_tls(2, Some(seed.clone())),
    )
    .await;
    for n in [&n1, &n2] {
        n.cluster
            .wait_for(WAIT, |s| s.peers.len() == 2 && s.leader != 0)
            .await
            .expect("2 members and a leader");
    }
    n1.cluster
        .propose(b"over-tls".to_vec(), WAIT)
        .await
        .expect("commit over TLS");
    converge(&[&n1, &n2], 1).await;
    assert!(n2.commands().contains(&"over-tls".to_string()));

    // Relays go over TLS too, each answered.
    let mut incoming = n2.cluster.take_relay_receiver().expect("relay receiver");
    let app = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(inc) = incoming.recv().await {
            got.push(String::from_utf8_lossy(&inc.payload).to_string());
            let _ = inc.receipt.send(true);
            if got.len() == 50 {
                break;
            }
        }
        got
    });
    let mut answers = Vec::new();
    for i in 0..50 {
        answers.push(relay_numbered(&n1.cluster, i));
    }
    for answered in answers {
        let owned = tokio::time::timeout(WAIT, answered).await;
        assert!(
            matches!(owned, Ok(Ok(true))),
            "a relay over TLS was not owned"
        );
    }
    let got = tokio::time::timeout(WAIT, app)
        .await
        .expect("arrived")
        .unwrap();
    assert_eq!(got, (0..50).map(|i| format!("p{i}")).collect::<Vec<_>>());

    let try_join = |id: u64, tls: MeshTls| {
        let seed = seed.clone();
        async move {
            let dir = tempfile::tempdir().unwrap();
            let db = sled::open(dir.path().join("db")).unwrap();
            let tree = db.open_tree("sm").unwrap();
            let mut cfg = config(id, Some(seed), 1000);
            cfg.tls = Some(tls);
            let started = tokio::time::Instant::now();
            let r = Cluster::start(db, Arc::new(Log { tree }), cfg).await;
            (r.err(), started.elapsed())
        }
    };

    // Another CA: the intruder trusts our CA (so it could talk to us) but
    // its own certificate is signed by its CA, which we do not trust.
    let other = CertAuthority::generate().expect("another CA");
    let (cert, key) = other.issue(9).expect("intruder certificate");
    let both = format!("{}{}", ca.cert_pem(), other.cert_pem());
    let intruder = MeshTls::from_pem(both.into_bytes(), cert.into_bytes(), key.into_bytes())
        .expect("signed by one of its CAs");
    let (err, took) = try_join(9, intruder.clone()).await;
    eprintln!("another CA: {err:?} after {took:?}");
    assert!(
        matches!(err, Some(ClusterError::Join(ref e)) if e.contains("alert")),
        "{err:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "refused at once, not retried"
    );
    assert!(
        remote_status_fails(&seed, MeshAuth::new(SECRET, Some(intruder))).await,
        "an admin call with a certificate of another CA was answered"
    );

    // Our CA, but the certificate names node 5 while it is node 9: the
    // node does not start, and the seed refuses such a join.
    let (err, _) = try_join(9, ca.node_tls(5).expect("node 5 certificate")).await;
    eprintln!("certificate of another node: {err:?}");
    assert!(
        matches!(err, Some(ClusterError::Tls(ref e)) if e.contains("does not name node-9")),
        "{err:?}"
    );

    // No TLS at all, right secret: refused.
    assert!(
        remote_status_fails(&seed, MeshAuth::new(SECRET, None)).await,
        "a plain connection was answered"
    );
    // A certificate of the cluster cannot speak for another node: raft
    // messages claiming another sender, calls as an admin tool (from 0),
    // removing a member. The admin certificate can do the last two.
    let node5 = ca.issue(5).expect("node 5 certificate");
    let admin = ca.issue_admin().expect("admin certificate");
    let mut as5 = raw_client(&seed, &ca.cert_pem(), &node5).await;
    let mut as_admin = raw_client(&seed, &ca.cert_pem(), &admin).await;
    let forged = {
        use protobuf::Message as _;
        let mut m = raft::prelude::Message::default();
        m.set_msg_type(raft::prelude::MessageType::MsgHeartbeat);
        m.from = 2;
        m.to = 1;
        m.term = 1_000;
        m.write_to_bytes().expect("encode")
    };
    let send = |from: u64| {
        raw_request(RaftBatch {
            from,
            messages: vec![forged.clone()],
            log_format: 2,
            cluster_log_format: 0,
            seq: 0,
        })
    };
    let refused = as5
        .join(raw_request(starling_cluster::proto::JoinRequest {
            node_id: 9,
            address: "127.0.0.1:9".into(),
        }))
        .await
        .expect_err("node 5's certificate joined as node 9");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let refused = as5
        .send(send(5))
        .await
        .expect_err("node 5 spoke for node 2");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(as5.send(send(0)).await.is_err(), "raft messages from 0");
    assert!(
        as5.send(send(2)).await.is_err(),
        "node 5's certificate as node 2"
    );
    // The same over a Raft stream: the stream ends with the refusal and
    // the batch is never answered.
    let mut answers = as5
        .raft_stream(raw_request(tokio_stream::iter(vec![send(2).into_inner()])))
        .await
        .expect("a raft stream opens")
        .into_inner();
    let refused = answers
        .message()
        .await
        .expect_err("node 5's certificate as node 2 on a raft stream");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let from_zero = || {
        raw_request(RelayBatch {
            from: 0,
            payloads: vec![b"not a relay".to_vec()],
            sent_at_ms: 0,
            applied: 0,
        })
    };
    let refused = as5
        .relay(from_zero())
        .await
        .expect_err("a node certificate as an admin tool");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let refused = as5
        .remove(raw_request(RemoveRequest { node_id: 2 }))
        .await
        .expect_err("a node certificate removed a member");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    // (No payload: nothing on node 1 takes relays any more.)
    as_admin
        .relay(raw_request(RelayBatch {
            from: 0,
            payloads: Vec::new(),
            sent_at_ms: 0,
            applied: 0,
        }))
        .await
        .expect("the admin certificate may relay from 0");
    assert!(
        as_admin.send(send(0)).await.is_err(),
        "the admin certificate sent raft messages"
    );
    // A relay stream opened with node 5's certificate carrying frames from
    // node 2: the stream is cut, nothing is handed on.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(starling_cluster::proto::RelayFrames {
        from: 2,
        epoch: 7,
        lane: 0,
        sent_at_ms: 0,
        applied: 0,
        below: 0,
        payloads: vec![starling_cluster::proto::RelayPayload {
            seq: 1,
            payload: b"forged".to_vec(),
            marks: Vec::new(),
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let answers = as5
        .relay_stream(raw_request(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await;
    let refused = match answers {
        Err(e) => e,
        Ok(stream) => {
            let mut stream = stream.into_inner();
            tokio::time::timeout(WAIT, stream.message())
                .await
                .expect("the stream answers")
                .expect_err("frames from node 2 on node 5's stream were answered")
        }
    };
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    drop(tx);
    assert_eq!(
        n1.cluster.status().term,
        n2.cluster.status().term,
        "no forged term took"
    );

    // A member's own certificate and the secret: answered.
    let member = MeshAuth::new(SECRET, Some(ca.node_tls(1).expect("cert")));
    let status = starling_cluster::remote_status(&seed, &member)
        .await
        .expect("a member's certificate is answered");
    assert_eq!(status.peers.len(), 2, "nothing joined but the two members");
    for n in [&n1, &n2] {
        n.cluster.shutdown();
    }
}

/// A client of the mesh with the certificate `(cert, key)`, dialing any
/// node of the cluster.
async fn raw_client(
    addr: &str,
    ca: &str,
    (cert, key): &(String, String),
) -> starling_cluster::proto::raft_client::RaftClient<tonic::transport::Channel> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .domain_name("starling-mesh");
    let ch = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("a TLS connection with a certificate of the cluster");
    starling_cluster::proto::raft_client::RaftClient::new(ch)
}

fn raw_request<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("x-starling-cluster-secret", SECRET.parse().unwrap());
    req
}

async fn remote_status_fails(addr: &str, auth: starling_cluster::MeshAuth) -> bool {
    let r = tokio::time::timeout(WAIT, starling_cluster::remote_status(addr, &auth)).await;
    eprintln!("remote status: {:?}", r.as_ref().map(|r| r.as_ref().err()));
    matches!(r, Ok(Err(_)))
}
/// Group commit: once every voter says it reads batch entries, commands go
/// in batches (each applied under `index << 16 | position`, so the test
/// state machine's keys show it); while one voter says it reads single
/// commands only (an older version during a rolling upgrade), none does,
/// and every node applies every command once either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_go_in_batches_only_once_every_voter_reads_them() {
    let nodes = three(100_000).await;
    let keys = |n: &Node| -> Vec<u64> {
        n.tree
            .iter()
            .keys()
            .map(|k| u64::from_be_bytes(k.unwrap().as_ref().try_into().unwrap()))
            .collect()
    };
    let propose_all = |tag: &'static str| {
        let clusters: Vec<Cluster> = nodes.iter().map(|n| n.cluster.clone()).collect();
        async move {
            let mut tasks = Vec::new();
            for (i, c) in clusters.into_iter().enumerate() {
                for j in 0..20 {
                    let c = c.clone();
                    tasks.push(tokio::spawn(async move {
                        c.propose(format!("{tag}-{i}-{j}").into_bytes(), WAIT).await
                    }));
                }
            }
            for t in tasks {
                t.await.expect("task").expect("committed");
            }
        }
    };
    // One voter of an "older version": single commands.
    nodes[2].cluster.set_claimed_log_format(1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    propose_all("single").await;
    converge(&nodes.iter().collect::<Vec<_>>(), 60).await;
    for n in &nodes {
        assert!(
            keys(n).iter().all(|k| *k < 1 << 16),
            "a batch entry while a voter reads single commands only"
        );
    }
    // All voters read batches: batch entries from every node.
    nodes[2].cluster.set_claimed_log_format(0);
    tokio::time::sleep(Duration::from_millis(600)).await;
    propose_all("batched").await;
    converge(&nodes.iter().collect::<Vec<_>>(), 120).await;
    for n in &nodes {
        let batched = keys(n).iter().filter(|k| **k >= 1 << 16).count();
        assert_eq!(batched, 60, "every later command in a batch entry");
        let mut cmds = n.commands();
        cmds.sort();
        cmds.dedup();
        assert_eq!(cmds.len(), 120, "each command applied once");
    }
    // The log has batches now: a node that says again it reads single
    // commands only (an older version started on it) is fenced: no Raft
    // traffic either way, and the others go on without it.
    nodes[2].cluster.set_claimed_log_format(1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let two: Vec<Cluster> = nodes[..2].iter().map(|n| n.cluster.clone()).collect();
    let mut tasks = Vec::new();
    for (i, c) in two.into_iter().enumerate() {
        for j in 0..20 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                c.propose(format!("fenced-{i}-{j}").into_bytes(), WAIT)
                    .await
            }));
        }
    }
    for t in tasks {
        t.await
            .expect("task")
            .expect("committed without the fenced node");
    }
    converge(&[&nodes[0], &nodes[1]], 160).await;
    assert_eq!(
        nodes[2].commands().len(),
        120,
        "the fenced node got nothing new"
    );
    for n in &nodes[..2] {
        let low = keys(n).iter().filter(|k| **k < 1 << 16).count();
        assert_eq!(
            low, 60,
            "after the first batch, numbers never go back to plain indexes"
        );
    }
    // Upgraded again: it catches up, and every node holds the same.
    nodes[2].cluster.set_claimed_log_format(0);
    converge(&nodes.iter().collect::<Vec<_>>(), 160).await;
    for n in &nodes {
        n.cluster.shutdown();
    }
}

/// Reads (Raft ReadIndex) asked at once share requests to the leader
/// (`driver.rs`, `issue_reads`); each must still see every write that was
/// acknowledged before it was asked, and a read whose request the leader
/// never got (the node cut off) must fail in time, and work once healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_asked_together_each_see_what_was_acknowledged_before_them() {
    let nodes = three(1000).await;
    let leader = nodes
        .iter()
        .find(|n| n.cluster.status().role == "leader")
        .expect("a leader");
    let follower = nodes
        .iter()
        .find(|n| n.cluster.status().role != "leader")
        .expect("a follower");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (l, f, tree) = (
            leader.cluster.clone(),
            follower.cluster.clone(),
            follower.tree.clone(),
        );
        tasks.spawn(async move {
            let write = format!("w{i}");
            l.propose(write.clone().into_bytes(), WAIT)
                .await
                .expect("write acknowledged");
            f.caught_up(WAIT).await.expect("read index");
            let seen = tree
                .iter()
                .values()
                .any(|v| v.is_ok_and(|v| v.as_ref() == write.as_bytes()));
            assert!(seen, "{write} acknowledged before the read, not seen by it");
        });
    }
    let mut done = 0;
    while let Some(r) = tasks.join_next().await {
        r.expect("reader");
        done += 1;
    }
    assert_eq!(done, 200);

    // Fifty reads asked at once: while one request is out, the others
    // wait for its answer and then go out as one.
    let before = follower.cluster.status().read_requests;
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let f = follower.cluster.clone();
        reads.spawn(async move { f.caught_up(WAIT).await });
    }
    while let Some(r) = reads.join_next().await {
        r.expect("reader").expect("read index");
    }
    let sent = follower.cluster.status().read_requests - before;
    eprintln!("50 reads asked at once: {sent} read-index requests");
    assert!(
        (1..=25).contains(&sent),
        "50 reads asked at once took {sent} requests"
    );

    // Cut off: no answer, an error in time; healed: answered again.
    follower.cluster.set_isolated(true);
    let cut = follower.cluster.caught_up(Duration::from_secs(1)).await;
    assert_eq!(cut, Err(ClusterError::NoQuorum));
    follower.cluster.set_isolated(false);
    leader
        .cluster
        .propose(b"after-heal".to_vec(), WAIT)
        .await
        .expect("write after the heal");
    follower
        .cluster
        .caught_up(WAIT)
        .await
        .expect("a read after the heal");
    assert!(follower.commands().contains(&"after-heal".to_string()));
    for n in &nodes {
        n.cluster.shutdown();
    }
}
