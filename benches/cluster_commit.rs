//! Commands committed per second on three local Raft nodes (loopback gRPC
//! mesh, sled with fsync on every Ready that must sync). Two figures:
//! one proposal at a time (latency-bound) and many in flight (throughput).
//! Run: cargo bench --bench cluster_commit

use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_cluster::{Cluster, ClusterConfig, StateMachine};

/// The allocator the server runs with (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Counter(sled::Tree);

impl StateMachine for Counter {
    fn apply(&self, index: u64, command: &[u8]) -> Vec<u8> {
        let _ = self.0.insert(index.to_be_bytes(), command);
        Vec::new()
    }
    fn snapshot(&self) -> Result<Vec<u8>, String> {
        Ok(Vec::new())
    }
    fn restore(&self, _: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

async fn node(id: u64, join: Option<String>, dir: &std::path::Path) -> Cluster {
    let db = sled::open(dir.join(format!("n{id}"))).expect("db");
    let tree = db.open_tree("sm").expect("tree");
    let mut cfg = ClusterConfig::new(id, "127.0.0.1:0".parse().expect("addr"), "bench-secret");
    cfg.join = join;
    cfg.compact_after = 10_000;
    Cluster::start(db, Arc::new(Counter(tree)), cfg)
        .await
        .expect("start")
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let n1 = node(1, None, dir.path()).await;
        n1.wait_for(Duration::from_secs(10), |s| s.role == "leader").await.expect("leader");
        let seed = n1.local_addr().to_string();
        let n2 = node(2, Some(seed.clone()), dir.path()).await;
        let n3 = node(3, Some(seed), dir.path()).await;
        for n in [&n1, &n2, &n3] {
            n.wait_for(Duration::from_secs(10), |s| s.peers.len() == 3 && s.leader != 0).await.expect("cluster");
        }
        let payload = vec![7u8; 200]; // about the size of a roster or session command

        // Warm-up.
        for _ in 0..50 {
            n1.propose(payload.clone(), Duration::from_secs(5)).await.expect("commit");
        }

        let count = 500;
        let t = Instant::now();
        for _ in 0..count {
            n1.propose(payload.clone(), Duration::from_secs(5)).await.expect("commit");
        }
        let seq = t.elapsed();
        println!(
            "sequential: {count} commits in {:.2} s = {:.0} commits/s, {:.2} ms per commit",
            seq.as_secs_f64(),
            count as f64 / seq.as_secs_f64(),
            seq.as_secs_f64() * 1000.0 / count as f64
        );

        // Proposers in flight at once, spread over the three nodes (each
        // waits for its commit before the next): 64, then more.
        for in_flight in [64usize, 256, 1024] {
            let total = (in_flight * 80).max(20_000);
            let t = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..in_flight {
                let c = if w % 3 == 0 { n1.clone() } else if w % 3 == 1 { n2.clone() } else { n3.clone() };
                let p = payload.clone();
                tasks.push(tokio::spawn(async move {
                    for _ in 0..total / in_flight {
                        c.propose(p.clone(), Duration::from_secs(30)).await.expect("commit");
                    }
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
            let par = t.elapsed();
            let done = (total / in_flight) * in_flight;
            println!(
                "{in_flight} in flight from all three nodes: {done} commits in {:.2} s = {:.0} commits/s",
                par.as_secs_f64(),
                done as f64 / par.as_secs_f64()
            );
        }
        for n in [&n1, &n2, &n3] {
            n.shutdown();
        }
    });
}
