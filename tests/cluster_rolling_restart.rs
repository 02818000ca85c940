//! Rolling restart with nothing lost: three nodes behind HAProxy, 20
//! stream-management clients exchanging messages continuously while every
//! node in turn gets SIGTERM (drain) and starts again. Each client resumes
//! wherever HAProxy sends it; every message is delivered exactly once,
//! counted by id. Our 16 clients also sit in one group-chat room
//! (XEP-0045) and talk there: the room moves with each drain, nobody
//! leaves it, and every occupant gets every message to the room once.
mod common;
use common::*;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use starling::base::xml::{Element, StreamEvent};
use tokio::sync::mpsc;

const SECRET: &str = "rolling-restart-secret-0123456789";
const SM: &str = "urn:xmpp:sm:3";
const FRONT: &str = "127.0.0.1:9300";
const C2S_PORT: u16 = 9222;
const HTTP_PORT: u16 = 9280;
const MESH_PORT: u16 = 11222;
/// Users taking part: u0..u15 are our own test clients, u16..u19 slixmpp's.
const CLIENTS: usize = 20;
const OURS: usize = 16;
/// The room our clients share.
const ROOM: &str = "rolling@conference.localhost";

fn start_node(i: u64, dir: tempfile::TempDir) -> Server {
    // ROLLING_LOG_LEVEL="info,stanza=trace,starling::routing::route=trace"
    // follows each message through the nodes' logs (kept on failure).
    let level = std::env::var("ROLLING_LOG_LEVEL").unwrap_or_else(|_| "info".into());
    let ports = FixedPorts {
        c2s: C2S_PORT,
        http: HTTP_PORT,
        mesh: MESH_PORT,
    };
    fixed_node(i, dir, SECRET, &ports, &[("STARLING_LOG_LEVEL", &level)])
}

/// Events from a connection's reader task.
enum Ev {
    El(Element),
    /// Read before stream management was enabled.
    Early(Element),
    Gone,
}

/// A stream-management client that survives its server going away.
struct SmClient {
    user: String,
    writer: Option<ClientWriter>,
    events: mpsc::UnboundedReceiver<(u64, Ev)>,
    tx: mpsc::UnboundedSender<(u64, Ev)>,
    conn_gen: u64,
    sm_id: String,
    /// Stanzas received (our `h`).
    h: u32,
    /// Our messages the server has not acknowledged, with their XML.
    unacked: VecDeque<String>,
    acked: u32,
    sent: u32,
}

async fn authed(front: SocketAddr, user: &str) -> Option<Client> {
    let mut c = tokio::time::timeout(Duration::from_secs(3), Client::connect_raw(front))
        .await
        .ok()??;
    if !c.try_send(HEADER).await {
        return None;
    }
    if !matches!(
        tokio::time::timeout(Duration::from_secs(3), c.read()).await,
        Ok(Got::Header)
    ) {
        return None;
    }
    let _features = c.try_element().await?;
    let mut c = c.try_starttls().await?;
    if !c.try_send(HEADER).await {
        return None;
    }
    if !matches!(
        tokio::time::timeout(Duration::from_secs(3), c.read()).await,
        Ok(Got::Header)
    ) {
        return None;
    }
    c.try_element().await?;
    if !c.try_auth(user, "pw").await {
        return None;
    }
    if !c.try_send(HEADER).await {
        return None;
    }
    if !matches!(
        tokio::time::timeout(Duration::from_secs(3), c.read()).await,
        Ok(Got::Header)
    ) {
        return None;
    }
    c.try_element().await?;
    Some(c)
}

impl SmClient {
    async fn connect(user: &str) -> SmClient {
        let front: SocketAddr = FRONT.parse().unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        for _ in 0..100 {
            if let Some(mut c) = authed(front, user).await {
                c.bind(Some("r")).await.expect("bind");
                c.send(&format!("<enable xmlns='{SM}' resume='true'/>"))
                    .await;
                let en = c.wait_for(|e| e.name == "enabled").await;
                let sm_id = en.attr("id").unwrap().to_string();
                let mut me = SmClient {
                    user: user.into(),
                    writer: None,
                    events,
                    tx,
                    conn_gen: 0,
                    sm_id,
                    h: 0,
                    unacked: VecDeque::new(),
                    acked: 0,
                    sent: 0,
                };
                // What arrived before <enabled/> is not counted in h
                // (XEP-0198 §4), though a message is still a delivery.
                let early: Vec<Element> = c.take_pending();
                me.attach(c);
                for el in early {
                    let _ = me.tx.send((me.conn_gen, Ev::Early(el)));
                }
                return me;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{user} cannot log in through haproxy");
    }

    /// Give the read side to a task; keep the write side.
    fn attach(&mut self, c: Client) {
        self.conn_gen += 1;
        let gen = self.conn_gen;
        let (reader, writer, pending) = c.split_reader();
        self.writer = Some(writer);
        let tx = self.tx.clone();
        for el in pending {
            let _ = tx.send((gen, Ev::El(el)));
        }
        tokio::spawn(async move {
            let mut reader = reader;
            loop {
                match reader.next().await {
                    Ok(StreamEvent::Stanza(el)) => {
                        if tx.send((gen, Ev::El(el))).is_err() {
                            return;
                        }
                    }
                    Ok(StreamEvent::Keepalive) | Ok(StreamEvent::Header(_)) => {}
                    _ => {
                        let _ = tx.send((gen, Ev::Gone));
                        return;
                    }
                }
            }
        });
    }

    async fn write(&mut self, xml: &str) -> bool {
        match self.writer.as_mut() {
            Some(w) => w.try_send(xml).await,
            None => false,
        }
    }

    /// Enter the room (no history: every message is counted live).
    async fn join_room(&mut self) {
        let xml = format!(
            "<presence to='{ROOM}/{}'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x></presence>",
            self.user
        );
        self.unacked.push_back(xml.clone());
        self.write(&xml).await;
    }

    /// A message to everyone in the room.
    async fn send_groupchat(&mut self, id: &str) {
        let xml =
            format!("<message to='{ROOM}' type='groupchat' id='{id}'><body>{id}</body></message>");
        self.unacked.push_back(xml.clone());
        self.sent = self.sent.wrapping_add(1);
        self.write(&xml).await;
    }

    async fn send_message(&mut self, to: &str, id: &str) {
        let xml = format!(
            "<message to='{to}@localhost/r' type='chat' id='{id}'><body>{id}</body></message>"
        );
        self.unacked.push_back(xml.clone());
        self.sent = self.sent.wrapping_add(1);
        if self.write(&xml).await && self.unacked.len().is_multiple_of(5) {
            self.write(&format!("<r xmlns='{SM}'/>")).await;
        }
    }

    fn server_acked(&mut self, h: u32) {
        let n = h.wrapping_sub(self.acked) as usize;
        for _ in 0..n.min(self.unacked.len()) {
            self.unacked.pop_front();
        }
        self.acked = h;
    }

    /// The connection died: resume through HAProxy, resend what the server
    /// did not acknowledge.
    async fn resume(&mut self) {
        self.writer = None;
        let front: SocketAddr = FRONT.parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(mut c) = authed(front, &self.user).await {
                c.send(&format!(
                    "<resume xmlns='{SM}' previd='{}' h='{}'/>",
                    self.sm_id, self.h
                ))
                .await;
                match tokio::time::timeout(
                    Duration::from_secs(8),
                    c.wait_for(|e| e.name == "resumed" || e.name == "failed"),
                )
                .await
                {
                    Ok(r) if r.name == "resumed" => {
                        let h: u32 = r
                            .attr("h")
                            .and_then(|h| h.parse().ok())
                            .unwrap_or(self.acked);
                        self.server_acked(h);
                        let again: Vec<String> = self.unacked.iter().cloned().collect();
                        self.attach(c);
                        for x in again {
                            self.write(&x).await;
                        }
                        return;
                    }
                    Ok(r) => panic!("{}: resume failed: {r:?}", self.user),
                    Err(_) => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{}: could not resume within 60 s", self.user);
    }

    /// Handle what arrived; returns received message ids.
    async fn pump(&mut self, until: Instant, got: &mut Vec<String>) {
        loop {
            let Ok(ev) = tokio::time::timeout_at(until.into(), self.events.recv()).await else {
                return;
            };
            let Some((gen, ev)) = ev else { return };
            if gen != self.conn_gen {
                continue;
            }
            match ev {
                Ev::El(el) if el.ns == SM && el.name == "r" => {
                    let h = self.h;
                    self.write(&format!("<a xmlns='{SM}' h='{h}'/>")).await;
                }
                Ev::El(el) if el.ns == SM && el.name == "a" => {
                    if let Some(h) = el.attr("h").and_then(|h| h.parse().ok()) {
                        self.server_acked(h);
                    }
                }
                Ev::El(el) if el.ns == "jabber:client" => {
                    self.h = self.h.wrapping_add(1);
                    if el.name == "message" {
                        if let Some(id) = el.attr("id") {
                            got.push(id.to_string());
                        }
                    }
                }
                Ev::El(_) => {}
                Ev::Early(el) => {
                    if el.name == "message" {
                        if let Some(id) = el.attr("id") {
                            got.push(id.to_string());
                        }
                    }
                }
                Ev::Gone => self.resume().await,
            }
        }
    }
}

/// A child process killed when the test ends, however it ends (a panic
/// must not leave slixmpp clients chatting into the next test's cluster).
struct Reaped(Child);
impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_loses_nothing() {
    let _turn = CLUSTER_TURN.lock().await;
    assert!(
        Command::new("haproxy").arg("-v").output().is_ok(),
        "haproxy is not installed: run `bash .ci/run`"
    );
    let mut nodes: Vec<Option<Server>> = Vec::new();
    for i in 1..=3u64 {
        nodes.push(Some(start_node(i, tempfile::tempdir().unwrap())));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let n1 = nodes[0].as_ref().unwrap();
    wait_members(n1, SECRET, 3).await;
    for u in 0..CLIENTS {
        n1.add_user(&format!("u{u}"), "pw");
    }
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/deploy/haproxy.cfg");
    let _haproxy = Reaped(
        Command::new("haproxy")
            .args(["-f", cfg, "-db"])
            .env("BIND", FRONT)
            .env("NODE1", "127.0.0.1")
            .env("NODE2", "127.0.0.2")
            .env("NODE3", "127.0.0.3")
            .env("C2S_PORT", C2S_PORT.to_string())
            .env("HTTP_PORT", HTTP_PORT.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy"),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Every client sends to others in turn while the nodes restart.
    let sent: Arc<Mutex<HashMap<String, String>>> = Arc::new(Mutex::new(HashMap::new()));
    let received: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::new(Mutex::new(HashMap::new()));
    let traffic_until = Instant::now() + Duration::from_secs(30);
    let mut tasks = Vec::new();
    // Everyone is connected before anyone writes (a message to a client
    // not yet online would wait in offline storage, which is not this test).
    let barrier = Arc::new(tokio::sync::Barrier::new(OURS + 1));
    // slixmpp's clients (its XEP-0198 plugin) in one Python process.
    let mut slix = Reaped(
        Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/interop/slixmpp_sm_load.py"
            ))
            .args(["127.0.0.1", "9300", "localhost", "pw", "24"])
            .arg(CLIENTS.to_string())
            .args((OURS..CLIENTS).map(|u| format!("u{u}")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run slixmpp clients"),
    );
    let slix_out = {
        use std::io::{BufRead, Write};
        let mut stdin = slix.0.stdin.take().unwrap();
        let stdout = slix.0.stdout.take().unwrap();
        let barrier = barrier.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<Option<String>>();
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(stdout).lines();
            let online = lines.next().and_then(|l| l.ok());
            if online.as_deref() != Some("ONLINE") {
                let _ = tx.send(None);
                return;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(barrier.wait());
            let _ = writeln!(stdin, "GO");
            let _ = stdin.flush();
            let _ = tx.send(lines.next().and_then(|l| l.ok()));
        });
        rx
    };
    for u in 0..OURS {
        let sent = sent.clone();
        let received = received.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let me = format!("u{u}");
            let mut c = SmClient::connect(&me).await;
            c.join_room().await;
            barrier.wait().await;
            let mut got = Vec::new();
            let mut k = 0u32;
            while Instant::now() < traffic_until {
                if k % 4 == 3 {
                    let id = format!("{me}-g{k}");
                    sent.lock().unwrap().insert(id.clone(), ROOM.to_string());
                    c.send_groupchat(&id).await;
                } else {
                    let to = format!("u{}", (u + 1 + (k as usize % (CLIENTS - 1))) % CLIENTS);
                    let id = format!("{me}-{k}");
                    sent.lock().unwrap().insert(id.clone(), to.clone());
                    c.send_message(&to, &id).await;
                }
                k += 1;
                c.pump(Instant::now() + Duration::from_millis(250), &mut got)
                    .await;
            }
            // Let the last messages arrive and be acknowledged.
            c.write(&format!("<r xmlns='{SM}'/>")).await;
            c.pump(Instant::now() + Duration::from_secs(8), &mut got)
                .await;
            received.lock().unwrap().insert(me, got);
        }));
    }
    // Restart each node in turn with SIGTERM (drain), a few seconds apart.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (i, slot) in nodes.iter_mut().enumerate() {
        let mut node = slot.take().unwrap();
        let status = tokio::task::spawn_blocking(move || {
            let st = node.terminate();
            (st, node)
        })
        .await
        .unwrap();
        let (st, mut old) = status;
        assert!(st.success(), "node {} exit: {st:?}", i + 1);
        // Same data dir and addresses: the node rejoins and catches up.
        let dir = std::mem::replace(&mut old.dir, tempfile::tempdir().unwrap());
        drop(old);
        *slot = Some(start_node(i as u64 + 1, dir));
        tokio::time::sleep(Duration::from_secs(4)).await;
    }
    let mut failures = Vec::new();
    for t in tasks {
        if let Err(e) = t.await {
            failures.push(format!("{e:?}"));
        }
    }
    // slixmpp's report: what its clients sent and received, and whether
    // each kept or resumed its session.
    let report = tokio::time::timeout(Duration::from_secs(60), slix_out).await;
    let _ = slix.0.kill();
    let stderr = {
        use std::io::Read;
        let mut e = String::new();
        if let Some(mut s) = slix.0.stderr.take() {
            let _ = s.read_to_string(&mut e);
        }
        e
    };
    let _ = slix.0.wait();
    let report: serde_json::Value = match report {
        Ok(Ok(Some(line))) => serde_json::from_str(&line).expect("slixmpp report is JSON"),
        other => panic!("no report from the slixmpp clients ({other:?}): {stderr}"),
    };
    for f in report["failures"].as_array().into_iter().flatten() {
        failures.push(format!("slixmpp: {f}"));
    }
    // slixmpp's messages count once the server acknowledged them: slixmpp
    // itself drops one it was writing as its connection closed (see the
    // script), which the server never read.
    let slix_acked: std::collections::HashSet<&str> = report["acked"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i.as_str())
        .collect();
    let mut slix_unacked = 0;
    if let Some(m) = report["sent"].as_object() {
        let mut sent = sent.lock().unwrap();
        for (id, to) in m {
            if slix_acked.contains(id.as_str()) {
                sent.insert(id.clone(), to.as_str().unwrap_or_default().to_string());
            } else {
                slix_unacked += 1;
            }
        }
    }
    if let Some(m) = report["received"].as_object() {
        let mut received = received.lock().unwrap();
        for (user, ids) in m {
            let ids = ids.as_array().into_iter().flatten();
            received.insert(
                user.clone(),
                ids.filter_map(|i| i.as_str().map(str::to_string)).collect(),
            );
        }
    }
    let slix_resumed = report["resumed"].as_u64().unwrap_or(0);
    // Node logs stay behind for a look when something fails.
    for (i, n) in nodes.iter().enumerate() {
        if let Some(n) = n {
            let _ = std::fs::write(
                std::env::temp_dir().join(format!("rolling-node{}.log", i + 1)),
                n.log(),
            );
        }
    }
    if !failures.is_empty() {
        for (i, n) in nodes.iter().enumerate() {
            if let Some(n) = n {
                let log = n.log();
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| {
                        l.contains("hand")
                            || l.contains("resum")
                            || l.contains("drain")
                            || l.contains("WARN")
                            || l.contains("ERROR")
                    })
                    .collect();
                eprintln!(
                    "--- node {} ({} lines of interest)\n{}",
                    i + 1,
                    lines.len(),
                    lines[lines.len().saturating_sub(40)..].join("\n")
                );
            }
        }
        panic!("{} clients failed: {}", failures.len(), failures[0]);
    }
    let sent = sent.lock().unwrap();
    let received = received.lock().unwrap();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for ids in received.values() {
        for id in ids {
            *count.entry(id.as_str()).or_default() += 1;
        }
    }
    // A message to the room reaches each of our 16 occupants once.
    let to_room = |id: &str| sent.get(id).is_some_and(|to| to == ROOM);
    let missing: Vec<_> = sent
        .keys()
        .filter(|id| !count.contains_key(id.as_str()))
        .collect();
    let dup: Vec<_> = count
        .iter()
        .filter(|(id, n)| **n > 1 && !to_room(id))
        .collect();
    let room_sent = sent.values().filter(|to| *to == ROOM).count();
    let room_wrong: Vec<_> = sent
        .keys()
        .filter(|id| to_room(id))
        .map(|id| (id, count.get(id.as_str()).copied().unwrap_or(0)))
        .filter(|(_, n)| *n != OURS)
        .collect();
    eprintln!(
        "rolling restart, group chat: {room_sent} messages to the room, {} not delivered to all {OURS} occupants exactly once",
        room_wrong.len()
    );
    eprintln!(
        "rolling restart: {} messages sent (and {slix_unacked} by slixmpp never acknowledged), {} delivered, {} missing, {} duplicated; slixmpp resumed {} times",
        sent.len(),
        count.len(),
        missing.len(),
        dup.len(),
        slix_resumed
    );
    assert!(sent.len() > CLIENTS * 50, "enough traffic: {}", sent.len());
    // Each slixmpp client had its node restarted under it at least once.
    assert!(
        slix_resumed >= (CLIENTS - OURS) as u64,
        "slixmpp resumed {slix_resumed} times"
    );
    assert!(
        missing.is_empty(),
        "{} of {} messages lost: {:?}",
        missing.len(),
        sent.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        dup.is_empty(),
        "duplicates: {:?}",
        &dup[..dup.len().min(10)]
    );
    assert!(room_sent > 50, "enough group chat: {room_sent}");
    assert!(
        room_wrong.is_empty(),
        "{} of {room_sent} messages to the room not delivered to every occupant exactly once (id, deliveries): {:?}",
        room_wrong.len(),
        &room_wrong[..room_wrong.len().min(10)]
    );
}
