//! Message latency, same-node vs cross-node, on a two-node cluster of real
//! `starling` processes. alice and bob are on node 1, carol on node 2;
//! alice sends at a fixed rate and the receivers timestamp arrivals in the
//! same process, so one-way latency is exact. Reports p50/p99/p99.9.
//! A third run sends to dave on node 2, whose session has XEP-0198
//! resumption on: node 2 then marks each relayed message with its sender
//! before writing it (one more mesh round trip; ARCHITECTURE.md, "The
//! path of one message").
//! Run: cargo bench --bench cross_node_latency

use std::io::{BufRead, BufReader as StdBufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use starling::base::xml::{Element, StreamEvent, XmlLimits, XmlStream};
use starling::model::sasl::credentials::ScramHash;
use starling::model::sasl::scram::client::ScramClient;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";
const SECRET: &str = "latency-bench-secret-0123456789";

struct Node {
    child: Child,
    c2s: SocketAddr,
    mesh: String,
    data: std::path::PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &std::path::Path, id: u64, join: &str) -> Node {
    let data = dir.join(format!("node{id}"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_starling"))
        .arg("serve")
        .env_clear()
        .env("STARLING_DATA_DIR", &data)
        .env("STARLING_C2S_LISTEN", "127.0.0.1:0")
        .env("STARLING_C2S_DIRECT_TLS_LISTEN", "")
        .env("STARLING_C2S_REQUIRE_TLS", "false")
        .env("STARLING_HTTP_LISTEN", "")
        .env("STARLING_S2S_LISTEN", "")
        .env("STARLING_COMPONENT_LISTEN", "")
        .env("STARLING_CLUSTER_LISTEN", "127.0.0.1:0")
        .env("STARLING_CLUSTER_NODE_ID", id.to_string())
        .env("STARLING_CLUSTER_SECRET", SECRET)
        .env("STARLING_CLUSTER_JOIN", join)
        .env("STARLING_LOG_LEVEL", "warn")
        .env("STARLING_LIMITS_RATE_BYTES_PER_SEC", "100000000")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start starling");
    let line = StdBufReader::new(child.stdout.take().expect("stdout"))
        .lines()
        .next()
        .expect("ready line")
        .expect("read");
    let field = |n: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{n}=")))
            .map(str::to_string)
            .expect("field")
    };
    Node {
        c2s: field("c2s").parse().expect("addr"),
        mesh: field("cluster"),
        child,
        data,
    }
}

struct Conn {
    r: XmlStream<BufReader<OwnedReadHalf>>,
    w: OwnedWriteHalf,
    /// Stanzas handled since stream management was enabled (answers `<r/>`).
    handled: Option<u32>,
}

impl Conn {
    async fn send(&mut self, s: &str) {
        self.w.write_all(s.as_bytes()).await.expect("write");
    }
    async fn element(&mut self) -> Element {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.r.next())
                .await
                .expect("timeout")
                .expect("stream")
            {
                StreamEvent::Stanza(e) => return e,
                StreamEvent::End => panic!("stream ended"),
                _ => continue,
            }
        }
    }
    async fn login(addr: SocketAddr, user: &str, res: &str) -> Conn {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let (r, w) = tcp.into_split();
        let mut c = Conn {
            r: XmlStream::new(BufReader::new(r), XmlLimits::default()),
            w,
            handled: None,
        };
        c.send(HEADER).await;
        c.element().await; // features
        let scram = ScramClient::new(ScramHash::Sha256, user, "pw", None);
        c.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
            B64.encode(scram.first())
        ))
        .await;
        let ch = c.element().await;
        let (fin, _) = scram
            .final_message(&B64.decode(ch.text().trim()).expect("b64"))
            .expect("server-first");
        c.send(&format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            B64.encode(fin)
        ))
        .await;
        assert_eq!(c.element().await.name, "success");
        c.r.restart();
        c.send(HEADER).await;
        c.element().await;
        c.send(&format!("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{res}</resource></bind></iq>")).await;
        c.element().await;
        c.send("<presence/>").await;
        c.element().await;
        c
    }
}

impl Conn {
    /// [`Conn::login`] with stream management and resumption on.
    async fn login_resumable(addr: SocketAddr, user: &str, res: &str) -> Conn {
        let mut c = Conn::login(addr, user, res).await;
        c.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
            .await;
        while c.element().await.name != "enabled" {}
        c.handled = Some(0);
        c
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn measure(
    sender: &mut Conn,
    receiver: &mut Conn,
    to: &str,
    n: usize,
    rate: u32,
    epoch: Instant,
) -> Vec<f64> {
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let send = async {
        let mut tick = tokio::time::interval(interval);
        for i in 0..n {
            tick.tick().await;
            let t = epoch.elapsed().as_nanos();
            sender
                .send(&format!(
                    "<message to='{to}' type='chat' id='{i}'><body>{t}</body></message>"
                ))
                .await;
        }
    };
    let recv = async {
        let mut lat = Vec::with_capacity(n);
        while lat.len() < n {
            let m = receiver.element().await;
            if let Some(h) = receiver.handled.as_mut() {
                if matches!(m.name.as_str(), "message" | "presence" | "iq") {
                    *h += 1;
                } else if m.name == "r" {
                    let a = format!("<a xmlns='urn:xmpp:sm:3' h='{h}'/>");
                    receiver.send(&a).await;
                }
            }
            if m.name != "message" {
                continue;
            }
            if let Some(Ok(t)) = m
                .get_child("body", "jabber:client")
                .map(|b| b.text().parse::<u128>())
            {
                lat.push((epoch.elapsed().as_nanos() - t) as f64 / 1e6);
            }
        }
        lat
    };
    let ((), mut lat) = tokio::join!(send, recv);
    lat.sort_by(|a, b| a.total_cmp(b));
    lat
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n1 = start(dir.path(), 1, "");
    let n2 = start(dir.path(), 2, &n1.mesh);
    for u in ["alice", "bob", "carol", "dave"] {
        let ok = Command::new(env!("CARGO_BIN_EXE_starling"))
            .args(["user", "add", u, "-p", "pw"])
            .env_clear()
            .env("STARLING_DATA_DIR", &n1.data)
            .status()
            .expect("user add");
        assert!(ok.success());
    }
    std::thread::sleep(Duration::from_millis(500));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let epoch = Instant::now();
        let mut alice = Conn::login(n1.c2s, "alice", "a").await;
        let mut bob = Conn::login(n1.c2s, "bob", "b").await;
        let mut carol = Conn::login(n2.c2s, "carol", "c").await;
        let mut dave = Conn::login_resumable(n2.c2s, "dave", "d").await;
        let (n, rate) = (3000, 500);
        measure(&mut alice, &mut bob, "bob@localhost/b", 200, rate, epoch).await; // warm-up
        measure(&mut alice, &mut carol, "carol@localhost/c", 200, rate, epoch).await;
        measure(&mut alice, &mut dave, "dave@localhost/d", 200, rate, epoch).await;
        let same = measure(&mut alice, &mut bob, "bob@localhost/b", n, rate, epoch).await;
        let cross = measure(&mut alice, &mut carol, "carol@localhost/c", n, rate, epoch).await;
        let marked = measure(&mut alice, &mut dave, "dave@localhost/d", n, rate, epoch).await;
        for (name, l) in [
            ("same-node", &same),
            ("cross-node", &cross),
            ("cross-node, resumable (marked)", &marked),
        ] {
            println!(
                "{name}: {n} messages at {rate}/s: p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
                pct(l, 0.5),
                pct(l, 0.99),
                pct(l, 0.999),
                l[l.len() - 1]
            );
        }
        println!("cross-node adds {:.3} ms at p50", pct(&cross, 0.5) - pct(&same, 0.5));
        println!(
            "the mark adds {:.3} ms at p50, {:.3} ms at p99",
            pct(&marked, 0.5) - pct(&cross, 0.5),
            pct(&marked, 0.99) - pct(&cross, 0.99)
        );
    });
    drop(n2);
    drop(n1);
}
