//! Load driver: standard XMPP over TLS, so it drives any server (Starling,
//! Prosody, ejabberd). It creates accounts by in-band registration
//! (XEP-0077) or uses existing ones, logs N users in at a set rate
//! (STARTTLS, SASL SCRAM-SHA-256 or -SHA-1, bind, presence), then runs one
//! scenario and prints a report, with a JSON line for scripts:
//!
//! - `idle`: resident memory per connected, authenticated session;
//! - `login`: logins per second (many in flight);
//! - `messages`: chat messages between random pairs (or ping-pong) at a
//!   fixed offered rate; throughput, latency p50/p99/p99.9 (HDR histogram),
//!   errors. With `--mode room`, every user enters one group-chat room
//!   (XEP-0045, `--room`) and random occupants send to it at the offered
//!   rate: the report counts deliveries to occupants (fan-out) per second
//!   and their latency.
//! - `rooms`: each user creates a group-chat room of its own and stays in
//!   it (one occupant per room); rooms entered per second and resident
//!   memory per idle room, less what the sessions alone cost.
//!
//! Server CPU seconds and resident memory come from /proc of the PIDs given
//! with `--pid` (several for a cluster); the driver reports its own CPU too,
//! so a saturated driver is visible. Client sockets are spread over
//! 127.0.0.x source addresses so tens of thousands fit. Only loopback.
//!
//! `cargo build --release -p starling-load && target/release/starling-load
//!   --server 127.0.0.1:5222 --domain localhost --users 1000 --register
//!   --scenario messages --rate 5000 --duration 10 --pid $(pgrep -n starling)`
//!
//! Its own package (benches/load), so building it leaves the server binary
//! as it was. `cargo test` runs a small self-contained run against a
//! Starling it starts (the `starling` binary beside this one).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clap::Parser;
use hdrhistogram::Histogram;
use starling::base::xml::{Element, StreamEvent, XmlLimits, XmlStream};
use starling::model::sasl::credentials::ScramHash;
use starling::model::sasl::scram::client::ScramClient;
use tokio::io::{AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;

#[derive(Parser, Debug, Clone)]
#[command(about = "XMPP load driver")]
struct Args {
    /// c2s address (STARTTLS).
    #[arg(long)]
    server: Option<SocketAddr>,
    #[arg(long, default_value = "localhost")]
    domain: String,
    #[arg(long, default_value_t = 100)]
    users: usize,
    #[arg(long, default_value = "load")]
    prefix: String,
    #[arg(long, default_value = "load-pw-1")]
    password: String,
    /// Create the accounts first with in-band registration (XEP-0077).
    #[arg(long)]
    register: bool,
    /// idle | login | messages | rooms | register (accounts only)
    #[arg(long, default_value = "messages")]
    scenario: String,
    /// Logins started per second (idle, messages); 0 = as fast as possible.
    #[arg(long, default_value_t = 500)]
    connect_rate: u64,
    /// Logins in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Offered messages per second (all clients together).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// pairs (random sender and recipient) | pingpong (each reply triggers
    /// the next) | room (everyone in one group-chat room) | pep (the first
    /// `--publishers` users publish to a PEP node; every other user is a
    /// contact of each, interested in it by its capabilities)
    #[arg(long, default_value = "pairs")]
    mode: String,
    /// Publishers for `--mode pep`.
    #[arg(long, default_value_t = 10)]
    publishers: usize,
    /// The room for `--mode room` (default: bench@conference.DOMAIN).
    #[arg(long)]
    room: Option<String>,
    /// Server process ids for CPU and memory (several for a cluster).
    #[arg(long)]
    pid: Vec<u32>,
    /// Spread client sockets over 127.0.0.1 .. 127.0.0.N.
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// For a cluster: more c2s addresses; users are spread over all.
    #[arg(long)]
    also: Vec<SocketAddr>,
    /// A label for the report.
    #[arg(long, default_value = "server")]
    label: String,
    /// Several drivers measuring one cluster together (one per node, as
    /// one process cannot hold more sockets than its file limit): each
    /// waits here for the others before it reads memory, and keeps its
    /// sessions until all have read it.
    #[arg(long)]
    sync_dir: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 1)]
    sync_parties: usize,
    #[arg(long, hide = true)]
    bench: bool,
    /// idle: after the sessions log out, wait this many seconds and read
    /// the server's resident memory again (0: do not).
    #[arg(long, default_value_t = 0)]
    logout_wait: u64,
    /// messages: also print (to stderr), for each this many milliseconds
    /// of send time, the messages measured, how many took over 10 ms and
    /// the slowest: whether a p99 comes from a steady delay or from a few
    /// stalls (0: do not).
    #[arg(long, default_value_t = 0)]
    series_ms: u64,
    /// Enable stream management with resumption (XEP-0198) on every
    /// session, as mobile clients do, and answer the server's `<r/>`s. On a
    /// cluster the receiving node then marks each relayed message with its
    /// sender before writing it.
    #[arg(long)]
    resume: bool,
    /// How sessions log in: scram (RFC 6120 SASL, stream restart, bind) |
    /// sasl2 (XEP-0388 SCRAM with Bind 2, one round trip fewer) | fast
    /// (XEP-0484: a token from a first SASL2 login, then HT-SHA-256-NONE).
    #[arg(long, default_value = "scram")]
    auth: String,
}

type Tls = TlsStream<TcpStream>;

/// Wait until `--sync-parties` drivers reached `stage` (a file each in
/// `--sync-dir`); bounded at ten minutes.
async fn barrier(args: &Args, stage: &str) {
    let Some(dir) = &args.sync_dir else { return };
    let mine = dir.join(format!("{stage}.{}", std::process::id()));
    if let Err(e) = std::fs::write(&mine, b"") {
        eprintln!("  cannot write {}: {e}", mine.display());
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let arrived = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with(&format!("{stage}."))
                    })
                    .count()
            })
            .unwrap_or(0);
        if arrived >= args.sync_parties || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One client connection: parser on the read half, raw write half.
struct Conn {
    r: XmlStream<BufReader<ReadHalf<Tls>>>,
    w: WriteHalf<Tls>,
}

#[derive(Debug)]
struct LoadError(String);

fn err(s: impl Into<String>) -> LoadError {
    LoadError(s.into())
}

impl Conn {
    async fn send(&mut self, s: &str) -> Result<(), LoadError> {
        self.w
            .write_all(s.as_bytes())
            .await
            .map_err(|e| err(format!("write: {e}")))
    }

    async fn element(&mut self) -> Result<Element, LoadError> {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), self.r.next()).await {
                Err(_) => return Err(err("timeout")),
                Ok(Err(e)) => return Err(err(format!("stream: {e}"))),
                Ok(Ok(StreamEvent::Stanza(e))) => return Ok(e),
                Ok(Ok(StreamEvent::End)) => return Err(err("stream ended")),
                Ok(Ok(_)) => continue,
            }
        }
    }

    async fn restart(&mut self, domain: &str) -> Result<Element, LoadError> {
        self.r.restart();
        self.send(&header(domain)).await?;
        self.element().await
    }
}

fn header(domain: &str) -> String {
    format!("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>")
}

struct Ctx {
    args: Args,
    tls: tokio_rustls::TlsConnector,
    next_source: AtomicU64,
    errors: AtomicU64,
    /// SaltedPassword by (salt, iterations).
    #[allow(clippy::type_complexity)]
    salted: Mutex<std::collections::HashMap<(Vec<u8>, u32), Vec<u8>>>,
    /// FAST tokens by user index (`--auth fast`).
    tokens: Mutex<std::collections::HashMap<usize, String>>,
}

impl Ctx {
    fn server_for(&self, i: usize) -> SocketAddr {
        let all: Vec<SocketAddr> = self
            .args
            .server
            .into_iter()
            .chain(self.args.also.iter().copied())
            .collect();
        all[i % all.len()]
    }
}

/// TCP from a 127.0.0.x source address, STARTTLS, stream restart.
async fn connect(ctx: &Ctx, addr: SocketAddr) -> Result<(Conn, Element), LoadError> {
    let n = ctx.next_source.fetch_add(1, Ordering::Relaxed);
    let sock = TcpSocket::new_v4().map_err(|e| err(format!("socket: {e}")))?;
    if addr.ip().is_loopback() {
        let src = Ipv4Addr::new(127, 0, 0, 1 + (n % ctx.args.sources.max(1) as u64) as u8);
        sock.bind(SocketAddr::new(IpAddr::V4(src), 0))
            .map_err(|e| err(format!("bind: {e}")))?;
    }
    let mut tcp = sock
        .connect(addr)
        .await
        .map_err(|e| err(format!("connect: {e}")))?;
    let _ = tcp.set_nodelay(true);
    // Plain-text part by hand: header, features, <starttls/>, <proceed/>.
    tcp.write_all(header(&ctx.args.domain).as_bytes())
        .await
        .map_err(|e| err(format!("write: {e}")))?;
    {
        let mut plain = XmlStream::new(BufReader::new(&mut tcp), XmlLimits::default());
        loop {
            match plain.next().await.map_err(|e| err(format!("plain: {e}")))? {
                StreamEvent::Stanza(e) if e.name == "features" => break,
                StreamEvent::Stanza(e) => return Err(err(format!("unexpected {}", e.name))),
                _ => {}
            }
        }
    }
    tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await
        .map_err(|e| err(format!("write: {e}")))?;
    // Read <proceed/> byte by byte so nothing of the TLS handshake is eaten.
    let mut seen = Vec::new();
    let mut b = [0u8; 1];
    while !seen.ends_with(b"/>") || !String::from_utf8_lossy(&seen).contains("proceed") {
        use tokio::io::AsyncReadExt;
        let n = tcp
            .read(&mut b)
            .await
            .map_err(|e| err(format!("read: {e}")))?;
        if n == 0 || seen.len() > 512 {
            return Err(err("no <proceed/>"));
        }
        seen.push(b[0]);
    }
    let name = rustls_pki_types::ServerName::try_from(ctx.args.domain.clone())
        .map_err(|e| err(format!("name: {e}")))?;
    let tls = ctx
        .tls
        .connect(name, tcp)
        .await
        .map_err(|e| err(format!("tls: {e}")))?;
    let (r, w) = tokio::io::split(tls);
    let mut c = Conn {
        r: XmlStream::new(BufReader::new(r), XmlLimits::default()),
        w,
    };
    c.send(&header(&ctx.args.domain)).await?;
    let features = c.element().await?;
    Ok((c, features))
}

fn best_scram(features: &Element) -> Option<(ScramHash, &'static str)> {
    let mechs: Vec<String> = features
        .get_child("mechanisms", "urn:ietf:params:xml:ns:xmpp-sasl")?
        .elements()
        .map(|m| m.text())
        .collect();
    if mechs.iter().any(|m| m == "SCRAM-SHA-256") {
        Some((ScramHash::Sha256, "SCRAM-SHA-256"))
    } else if mechs.iter().any(|m| m == "SCRAM-SHA-1") {
        Some((ScramHash::Sha1, "SCRAM-SHA-1"))
    } else {
        None
    }
}

/// In-band registration (XEP-0077); an existing account is fine.
async fn register(ctx: &Ctx, i: usize) -> Result<(), LoadError> {
    let (mut c, _) = connect(ctx, ctx.server_for(i)).await?;
    let user = format!("{}{i}", ctx.args.prefix);
    c.send(&format!(
        "<iq type='set' id='reg'><query xmlns='jabber:iq:register'><username>{user}</username><password>{}</password></query></iq>",
        ctx.args.password
    ))
    .await?;
    let r = c.element().await?;
    let conflict = r.get_child("error", "jabber:client").is_some_and(|e| {
        e.get_child("conflict", "urn:ietf:params:xml:ns:xmpp-stanzas")
            .is_some()
    });
    let _ = c.send("</stream:stream>").await;
    if r.attr("type") == Some("result") || conflict {
        Ok(())
    } else {
        Err(err(format!(
            "register {user}: {}",
            r.to_xml("jabber:client")
        )))
    }
}

/// The SCRAM client-final for `server_first`, with the driver's cache of
/// SaltedPassword (RFC 5802 §5.1 lets clients keep it; so the driver
/// measures the server, not its own PBKDF2).
fn scram_final(
    ctx: &Ctx,
    scram: &ScramClient,
    hash: ScramHash,
    server_first: &[u8],
) -> Result<Vec<u8>, LoadError> {
    scram
        .final_message_with(server_first, |salt, iter| {
            let key = (salt.to_vec(), iter);
            if let Some(v) = ctx.salted.lock().expect("cache").get(&key) {
                return v.clone();
            }
            let v = hash.hi(ctx.args.password.as_bytes(), salt, iter);
            ctx.salted.lock().expect("cache").insert(key, v.clone());
            v
        })
        .map(|(fin, _)| fin)
        .ok_or_else(|| err("server-first"))
}

/// A SASL2 login (XEP-0388) with Bind 2 (and stream management inline
/// with `--resume`), or the same with FAST (XEP-0484) when a token is
/// known for user `i` (asked for otherwise with `--auth fast`); inline
/// `resume` (previd, h) instead resumes that session. The success, and the
/// server round trips it took from the authenticate.
async fn sasl2_login(
    ctx: &Ctx,
    c: &mut Conn,
    i: usize,
    resume: Option<(&str, u32)>,
) -> Result<(Element, u32), LoadError> {
    const NS: &str = "urn:xmpp:sasl:2";
    let user = format!("{}{i}", ctx.args.prefix);
    let fast = ctx.args.auth == "fast";
    let token = fast
        .then(|| ctx.tokens.lock().expect("tokens").get(&i).cloned())
        .flatten();
    let sm = if ctx.args.resume {
        "<enable xmlns='urn:xmpp:sm:3' resume='true'/>"
    } else {
        ""
    };
    let inline = match resume {
        Some((previd, h)) => format!("<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='{h}'/>"),
        None => String::new(),
    };
    let bind = format!("<bind xmlns='urn:xmpp:bind:0'><tag>load</tag>{sm}</bind>");
    let agent = format!("<user-agent id='load-{i}'/>");
    let mut trips = 1;
    let ok = if let Some(token) = &token {
        use hmac::{Hmac, Mac};
        let mut mac =
            Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes()).map_err(|_| err("key"))?;
        mac.update(b"Initiator");
        let mut initial = format!("{user}\0").into_bytes();
        initial.extend_from_slice(&mac.finalize().into_bytes());
        c.send(&format!(
            "<authenticate xmlns='{NS}' mechanism='HT-SHA-256-NONE'><initial-response>{}</initial-response>{agent}{inline}{bind}<fast xmlns='urn:xmpp:fast:0'/></authenticate>",
            B64.encode(initial)
        ))
        .await?;
        c.element().await?
    } else {
        let (hash, mech) = (ScramHash::Sha256, "SCRAM-SHA-256");
        let scram = ScramClient::new(hash, &user, &ctx.args.password, None);
        let ask = if fast {
            "<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>"
        } else {
            ""
        };
        c.send(&format!(
            "<authenticate xmlns='{NS}' mechanism='{mech}'><initial-response>{}</initial-response>{agent}{inline}{bind}{ask}</authenticate>",
            B64.encode(scram.first())
        ))
        .await?;
        let ch = c.element().await?;
        if ch.name != "challenge" {
            return Err(err(format!("{user}: authenticate: {}", ch.name)));
        }
        let server_first = B64.decode(ch.text().trim()).map_err(|_| err("b64"))?;
        let fin = scram_final(ctx, &scram, hash, &server_first)?;
        c.send(&format!(
            "<response xmlns='{NS}'>{}</response>",
            B64.encode(fin)
        ))
        .await?;
        trips += 1;
        c.element().await?
    };
    if ok.name != "success" {
        return Err(err(format!("{user}: {}", ok.to_xml("jabber:client"))));
    }
    if let Some(t) = ok
        .get_child("token", "urn:xmpp:fast:0")
        .and_then(|t| t.attr("token"))
    {
        ctx.tokens.lock().expect("tokens").insert(i, t.to_string());
    }
    Ok((ok, trips))
}

/// Round trips of `connect`: TCP, stream header, STARTTLS, the TLS 1.3
/// handshake, the stream header again.
const CONNECT_TRIPS: u32 = 5;

/// One reconnection of user `i` after its connection dropped, resuming its
/// stream-management session: the classic way (SCRAM, stream restart,
/// `<resume/>`) or with SASL2 (FAST token, resume inline). Returns how
/// long it took and its round trips.
async fn reconnect_once(ctx: &Ctx, i: usize, sasl2: bool) -> Result<(Duration, u32), LoadError> {
    let user = format!("{}{i}", ctx.args.prefix);
    // A resumable session, dropped without a goodbye.
    let previd = if sasl2 {
        let (mut c, _) = connect(ctx, ctx.server_for(i)).await?;
        let (ok, _) = sasl2_login(ctx, &mut c, i, None).await?;
        ok.get_child("bound", "urn:xmpp:bind:0")
            .and_then(|b| b.get_child("enabled", "urn:xmpp:sm:3"))
            .and_then(|e| e.attr("id"))
            .ok_or_else(|| err("no inline <enabled/>"))?
            .to_string()
    } else {
        let (mut c, features) = connect(ctx, ctx.server_for(i)).await?;
        classic_auth(ctx, &mut c, &user, &features).await?;
        c.restart(&ctx.args.domain).await?;
        c.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>load</resource></bind></iq><enable xmlns='urn:xmpp:sm:3' resume='true'/>").await?;
        loop {
            let e = c.element().await?;
            if e.name == "enabled" {
                break e.attr("id").ok_or_else(|| err("no id"))?.to_string();
            }
        }
    };
    // The server sees the connection gone and keeps the session detached.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let t0 = Instant::now();
    let (mut c, features) = connect(ctx, ctx.server_for(i)).await?;
    let trips = if sasl2 {
        let (ok, t) = sasl2_login(ctx, &mut c, i, Some((&previd, 0))).await?;
        if ok.get_child("resumed", "urn:xmpp:sm:3").is_none() {
            return Err(err(format!("not resumed: {}", ok.to_xml("jabber:client"))));
        }
        CONNECT_TRIPS + t
    } else {
        classic_auth(ctx, &mut c, &user, &features).await?;
        c.restart(&ctx.args.domain).await?;
        c.send(&format!(
            "<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='0'/>"
        ))
        .await?;
        let r = c.element().await?;
        if r.name != "resumed" {
            return Err(err(format!("not resumed: {}", r.name)));
        }
        CONNECT_TRIPS + 4
    };
    let took = t0.elapsed();
    let _ = c.send("</stream:stream>").await;
    Ok((took, trips))
}

/// RFC 6120 SCRAM (two round trips), with the driver's SaltedPassword cache.
async fn classic_auth(
    ctx: &Ctx,
    c: &mut Conn,
    user: &str,
    features: &Element,
) -> Result<(), LoadError> {
    let (hash, mech) = best_scram(features).ok_or_else(|| err("no SCRAM offered"))?;
    let scram = ScramClient::new(hash, user, &ctx.args.password, None);
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mech}'>{}</auth>",
        B64.encode(scram.first())
    ))
    .await?;
    let ch = c.element().await?;
    let server_first = B64.decode(ch.text().trim()).map_err(|_| err("b64"))?;
    let fin = scram_final(ctx, &scram, hash, &server_first)?;
    c.send(&format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
        B64.encode(fin)
    ))
    .await?;
    let ok = c.element().await?;
    if ok.name != "success" {
        return Err(err(format!("{user}: {}", ok.name)));
    }
    Ok(())
}

/// A full login: TLS, SCRAM, bind, initial presence.
async fn login(ctx: &Ctx, i: usize) -> Result<Conn, LoadError> {
    if ctx.args.auth != "scram" {
        let (mut c, _) = connect(ctx, ctx.server_for(i)).await?;
        sasl2_login(ctx, &mut c, i, None).await?;
        // The features after the success (nothing left to negotiate).
        let f = c.element().await?;
        if f.name != "features" {
            return Err(err(format!("after success: {}", f.name)));
        }
        c.send("<presence/>").await?;
        return Ok(c);
    }
    let t0 = Instant::now();
    let trace = std::env::var_os("LOAD_TRACE").is_some();
    let (mut c, features) = connect(ctx, ctx.server_for(i)).await?;
    if trace {
        eprintln!("  tls+features {:?}", t0.elapsed());
    }
    let user = format!("{}{i}", ctx.args.prefix);
    let (hash, mech) = best_scram(&features).ok_or_else(|| err("no SCRAM offered"))?;
    let scram = ScramClient::new(hash, &user, &ctx.args.password, None);
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mech}'>{}</auth>",
        B64.encode(scram.first())
    ))
    .await?;
    let ch = c.element().await?;
    if ch.name != "challenge" {
        return Err(err(format!("{user}: auth: {}", ch.name)));
    }
    // Clients may cache SaltedPassword (RFC 5802 §5.1); so does the driver,
    // so that repeated logins measure the server, not the driver's PBKDF2.
    let server_first = B64.decode(ch.text().trim()).map_err(|_| err("b64"))?;
    let fin = scram_final(ctx, &scram, hash, &server_first)?;
    c.send(&format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
        B64.encode(fin)
    ))
    .await?;
    let ok = c.element().await?;
    if ok.name != "success" {
        return Err(err(format!("{user}: {}", ok.name)));
    }
    if trace {
        eprintln!("  sasl {:?}", t0.elapsed());
    }
    c.restart(&ctx.args.domain).await?;
    if trace {
        eprintln!("  restart {:?}", t0.elapsed());
    }
    c.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>load</resource></bind></iq>").await?;
    loop {
        let e = c.element().await?;
        if e.name == "iq" && e.attr("id") == Some("b") {
            if e.attr("type") != Some("result") {
                return Err(err("bind failed"));
            }
            break;
        }
    }
    // Legacy session (RFC 3921) where a server still wants it; harmless otherwise.
    c.send("<iq type='set' id='s'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
        .await?;
    c.send("<presence/>").await?;
    if ctx.args.resume {
        c.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
            .await?;
    }
    Ok(c)
}

/// /proc figures for a process: (cpu seconds, resident bytes).
fn proc_stats(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks / 100.0, rss_kb * 1024))
}

fn servers_stats(pids: &[u32]) -> (f64, u64) {
    pids.iter()
        .filter_map(|p| proc_stats(*p))
        .fold((0.0, 0), |(c, r), (c2, r2)| (c + c2, r + r2))
}

/// Wait (at least 1 s, at most 30 s) until the servers use under 5% of a
/// core over half a second.
async fn settle(pids: &[u32]) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut last, _) = servers_stats(pids);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (now, _) = servers_stats(pids);
        if now - last < 0.025 {
            return;
        }
        last = now;
    }
}

/// Log in users `0..n` at the connect rate with bounded concurrency.
async fn login_all(ctx: &Arc<Ctx>, n: usize, rate: u64) -> (Vec<Option<Conn>>, Duration) {
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(ctx.args.concurrency.max(1)));
    let mut tasks = Vec::with_capacity(n);
    let done = Arc::new(AtomicU64::new(0));
    for i in 0..n {
        if rate > 0 {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let ctx = ctx.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let r = login(&ctx, i).await;
            drop(permit);
            let k = done.fetch_add(1, Ordering::Relaxed) + 1;
            if k.is_multiple_of(1000) {
                eprintln!("  {k} logged in");
            }
            match r {
                Ok(c) => Some(c),
                Err(e) => {
                    if ctx.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("  login {i}: {}", e.0);
                    }
                    None
                }
            }
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for t in tasks {
        conns.push(t.await.ok().flatten());
    }
    (conns, started.elapsed())
}

struct Report {
    lines: Vec<String>,
    json: Vec<(String, String)>,
}

impl Report {
    #[cfg(test)]
    fn value(&self, key: &str) -> Option<String> {
        self.json
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    fn add(&mut self, key: &str, value: String, text: String) {
        self.lines.push(text);
        self.json.push((key.to_string(), value));
    }
    fn print(&self, label: &str, scenario: &str) {
        println!("== {label}: {scenario}");
        for l in &self.lines {
            println!("   {l}");
        }
        let fields: Vec<String> = self
            .json
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        println!(
            "RESULT {{\"label\":\"{label}\",\"scenario\":\"{scenario}\",{}}}",
            fields.join(",")
        );
    }
}

async fn run(args: Args) -> Report {
    let ctx = Arc::new(Ctx {
        // Any certificate: the servers under test use self-signed ones.
        tls: starling::transport::s2s::stream::client_tls(false),
        next_source: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        salted: Mutex::new(Default::default()),
        tokens: Mutex::new(Default::default()),
        args: args.clone(),
    });
    let me = std::process::id();
    let mut report = Report {
        lines: Vec::new(),
        json: Vec::new(),
    };
    if args.register {
        let t = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
        let mut tasks = Vec::new();
        for i in 0..args.users {
            let permit = sem.clone().acquire_owned().await.expect("semaphore");
            let ctx = ctx.clone();
            tasks.push(tokio::spawn(async move {
                let r = register(&ctx, i).await;
                drop(permit);
                r
            }));
        }
        let mut failed = 0u64;
        for t in tasks {
            if let Ok(Err(e)) = t.await {
                if failed < 3 {
                    eprintln!("  {}", e.0);
                }
                failed += 1;
            }
        }
        eprintln!(
            "  registered {} accounts in {:.1} s ({failed} failed)",
            args.users,
            t.elapsed().as_secs_f64()
        );
        report.add("registration_failures", failed.to_string(), String::new());
    }
    if args.scenario == "register" {
        return report;
    }
    barrier(&args, "start").await;
    let (cpu0, rss0) = servers_stats(&args.pid);
    let (me_cpu0, _) = proc_stats(me).unwrap_or_default();
    match args.scenario.as_str() {
        "login" => {
            // An untimed first pass fills the client-side SCRAM cache (what
            // a real client keeps between logins), then the timed pass.
            let (warm, _) = login_all(&ctx, args.users, 0).await;
            drop(warm);
            // The warm pass's logouts are work too (session table,
            // last-activity); let the server finish them first, so the
            // timed pass measures logins only.
            settle(&args.pid).await;
            let (cpu_a, _) = servers_stats(&args.pid);
            let (conns, took) = login_all(&ctx, args.users, 0).await;
            let (cpu_b, _) = servers_stats(&args.pid);
            report.add(
                "login_server_cpu_ms",
                format!("{:.3}", (cpu_b - cpu_a) * 1000.0 / args.users.max(1) as f64),
                format!(
                    "server CPU per login {:.2} ms",
                    (cpu_b - cpu_a) * 1000.0 / args.users.max(1) as f64
                ),
            );
            let ok = conns.iter().filter(|c| c.is_some()).count();
            let per_sec = ok as f64 / took.as_secs_f64();
            report.add(
                "logins_per_sec",
                format!("{per_sec:.0}"),
                format!(
                    "{ok} logins in {:.2} s = {per_sec:.0}/s ({} in flight)",
                    took.as_secs_f64(),
                    args.concurrency
                ),
            );
        }
        "reconnect" => {
            // Each user in turn (no contention: this measures one client's
            // wait), classic then SASL2 + FAST; the first round of each
            // fills the caches (SaltedPassword, tokens) and is not counted.
            if args.auth != "fast" || !args.resume {
                eprintln!("  reconnect wants --auth fast --resume");
            }
            let mut classic = Vec::new();
            let mut fast = Vec::new();
            let mut trips = (0, 0);
            for round in 0..2 {
                for i in 0..args.users {
                    match reconnect_once(&ctx, i, false).await {
                        Ok((d, t)) if round == 1 => {
                            classic.push(d);
                            trips.0 = t;
                        }
                        Ok(_) => {}
                        Err(e) => eprintln!("  classic reconnect {i}: {}", e.0),
                    }
                    match reconnect_once(&ctx, i, true).await {
                        Ok((d, t)) if round == 1 => {
                            fast.push(d);
                            trips.1 = t;
                        }
                        Ok(_) => {}
                        Err(e) => eprintln!("  FAST reconnect {i}: {}", e.0),
                    }
                }
            }
            let median = |v: &mut Vec<Duration>| {
                v.sort();
                v.get(v.len() / 2)
                    .copied()
                    .unwrap_or_default()
                    .as_secs_f64()
                    * 1000.0
            };
            let (c_ms, f_ms) = (median(&mut classic), median(&mut fast));
            report.add(
                "reconnect_classic_ms",
                format!("{c_ms:.2}"),
                format!(
                    "classic reconnect (STARTTLS, SCRAM, restart, resume): {} round trips, median {c_ms:.2} ms ({} samples)",
                    trips.0,
                    classic.len()
                ),
            );
            report.add(
                "reconnect_fast_ms",
                format!("{f_ms:.2}"),
                format!(
                    "SASL2 reconnect (STARTTLS, FAST, inline resume): {} round trips, median {f_ms:.2} ms ({} samples)",
                    trips.1,
                    fast.len()
                ),
            );
            report.add(
                "reconnect_classic_trips",
                trips.0.to_string(),
                String::new(),
            );
            report.add("reconnect_fast_trips", trips.1.to_string(), String::new());
        }
        "idle" => {
            let (conns, took) = login_all(&ctx, args.users, args.connect_rate).await;
            let ok = conns.iter().filter(|c| c.is_some()).count();
            barrier(&args, "connected").await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            let (_, rss1) = servers_stats(&args.pid);
            barrier(&args, "measured").await;
            let per = (rss1 as f64 - rss0 as f64) / ok.max(1) as f64;
            report.add(
                "sessions",
                ok.to_string(),
                format!("{ok} sessions connected in {:.1} s", took.as_secs_f64()),
            );
            report.add(
                "rss_per_session_bytes",
                format!("{per:.0}"),
                format!(
                    "server resident memory {:.1} MiB -> {:.1} MiB: {:.1} kB per idle session",
                    rss0 as f64 / 1048576.0,
                    rss1 as f64 / 1048576.0,
                    per / 1000.0
                ),
            );
            drop(conns);
            if args.logout_wait > 0 {
                tokio::time::sleep(Duration::from_secs(args.logout_wait)).await;
                let (_, rss2) = servers_stats(&args.pid);
                report.add(
                    "rss_after_logout_mib",
                    format!("{:.1}", rss2 as f64 / 1048576.0),
                    format!(
                        "server resident memory {:.1} MiB {} s after all logged out",
                        rss2 as f64 / 1048576.0,
                        args.logout_wait
                    ),
                );
            }
        }
        "rooms" => rooms(&ctx, &mut report).await,
        _ => messages(&ctx, &mut report).await,
    }
    let (cpu1, rss1) = servers_stats(&args.pid);
    let (me_cpu1, _) = proc_stats(me).unwrap_or_default();
    report.add(
        "server_cpu_secs",
        format!("{:.2}", cpu1 - cpu0),
        format!(
            "server CPU {:.2} s, resident {:.1} MiB; driver CPU {:.2} s",
            cpu1 - cpu0,
            rss1 as f64 / 1048576.0,
            me_cpu1 - me_cpu0
        ),
    );
    report.add(
        "driver_cpu_secs",
        format!("{:.2}", me_cpu1 - me_cpu0),
        String::new(),
    );
    report.add(
        "errors",
        ctx.errors.load(Ordering::Relaxed).to_string(),
        format!("errors: {}", ctx.errors.load(Ordering::Relaxed)),
    );
    report.lines.retain(|l| !l.is_empty());
    report
}

/// The PEP node `--mode pep` publishes to.
const PEP_NODE: &str = "urn:example:bench";
/// The XEP-0115 hash of what a `--mode pep` contact answers (identity
/// client/bot, feature PEP_NODE+notify): base64(sha1("client/bot//<"
/// "urn:example:bench+notify<")).
const PEP_CAPS: &str = "OyUWoDndR7oaSOyaKd6cDFQda/Q=";

/// Messages at a fixed offered rate; each body carries its send time.
/// One user's room: `{prefix}{i}-room@conference.DOMAIN`, entered as
/// `{prefix}{i}` and taken as an instant room (XEP-0045 §10.1.2); true
/// once the room answered the configuration.
async fn own_room(c: &mut Conn, args: &Args, i: usize) -> Result<(), LoadError> {
    let room = format!("{}{i}-room@conference.{}", args.prefix, args.domain);
    let nick = format!("{room}/{}{i}", args.prefix);
    c.send(&format!(
        "<presence to='{nick}'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x></presence>"
    ))
    .await?;
    loop {
        let e = c.element().await?;
        if e.name != "presence" || e.attr("from") != Some(nick.as_str()) {
            continue;
        }
        if e.attr("type") == Some("error") {
            return Err(err(format!("{room} refused the join")));
        }
        break;
    }
    c.send(&format!(
        "<iq type='set' id='instant' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>"
    ))
    .await?;
    loop {
        let e = c.element().await?;
        if e.name == "iq" && e.attr("id") == Some("instant") {
            return match e.attr("type") {
                Some("result") => Ok(()),
                _ => Err(err(format!("{room} refused its configuration"))),
            };
        }
    }
}

/// `rooms`: every user creates and enters a room of its own, `--concurrency`
/// at a time; then all sit idle. Memory per idle room is the server's
/// resident memory with the rooms less that with the sessions alone (read
/// first, after the logins settled), over the rooms made.
async fn rooms(ctx: &Arc<Ctx>, report: &mut Report) {
    let args = &ctx.args;
    let (conns, _) = login_all(ctx, args.users, args.connect_rate).await;
    let logged_in = conns.iter().filter(|c| c.is_some()).count();
    settle(&args.pid).await;
    let (_, rss_sessions) = servers_stats(&args.pid);
    let t = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let mut tasks = Vec::with_capacity(conns.len());
    for (i, c) in conns.into_iter().enumerate() {
        let Some(mut c) = c else { continue };
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            let r = own_room(&mut c, &ctx.args, i).await;
            drop(permit);
            if let Err(e) = &r {
                if ctx.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("  room {i}: {}", e.0);
                }
            }
            (c, r.is_ok())
        }));
    }
    let mut kept = Vec::with_capacity(tasks.len());
    let mut made = 0usize;
    for task in tasks {
        if let Ok((c, ok)) = task.await {
            made += usize::from(ok);
            kept.push(c);
        }
    }
    let took = t.elapsed();
    settle(&args.pid).await;
    let (_, rss_rooms) = servers_stats(&args.pid);
    let per = (rss_rooms as f64 - rss_sessions as f64) / made.max(1) as f64;
    report.add(
        "rooms",
        made.to_string(),
        format!(
            "{made} rooms made and entered by {logged_in} sessions in {:.1} s = {:.0}/s",
            took.as_secs_f64(),
            made as f64 / took.as_secs_f64()
        ),
    );
    report.add(
        "rooms_per_sec",
        format!("{:.0}", made as f64 / took.as_secs_f64()),
        String::new(),
    );
    report.add(
        "rss_per_room_bytes",
        format!("{per:.0}"),
        format!(
            "server resident memory {:.1} MiB with the sessions -> {:.1} MiB with the rooms: {:.1} kB per idle room",
            rss_sessions as f64 / 1048576.0,
            rss_rooms as f64 / 1048576.0,
            per / 1000.0
        ),
    );
    drop(kept);
}

/// Latency over time (`--series-ms`): per slot of send time, the messages
/// measured, those over [`Series::SLOW_US`], and the slowest (µs).
struct Series {
    slot_us: u64,
    slots: Vec<[AtomicU64; 3]>,
}

impl Series {
    const SLOW_US: u64 = 10_000;

    fn new(slot_ms: u64, for_secs: u64) -> Option<Series> {
        (slot_ms > 0).then(|| Series {
            slot_us: slot_ms * 1000,
            slots: (0..=(for_secs * 1000 / slot_ms).min(1_000_000))
                .map(|_| Default::default())
                .collect(),
        })
    }

    fn record(&self, sent_us: u64, took_us: u64) {
        let i = ((sent_us / self.slot_us) as usize).min(self.slots.len() - 1);
        let s = &self.slots[i];
        s[0].fetch_add(1, Ordering::Relaxed);
        if took_us > Self::SLOW_US {
            s[1].fetch_add(1, Ordering::Relaxed);
        }
        s[2].fetch_max(took_us, Ordering::Relaxed);
    }

    fn print(&self) {
        for (i, s) in self.slots.iter().enumerate() {
            let n = s[0].load(Ordering::Relaxed);
            if n > 0 {
                eprintln!(
                    "series at {:.3} s: {n} messages, {} over {} ms, slowest {:.3} ms",
                    (i as u64 * self.slot_us) as f64 / 1e6,
                    s[1].load(Ordering::Relaxed),
                    Self::SLOW_US / 1000,
                    s[2].load(Ordering::Relaxed) as f64 / 1000.0
                );
            }
        }
    }
}

async fn messages(ctx: &Arc<Ctx>, report: &mut Report) {
    let args = &ctx.args;
    let (conns, _) = login_all(ctx, args.users, args.connect_rate).await;
    let epoch = Instant::now();
    // Send times run from the epoch through a warm-up and the measurement.
    let series = Series::new(args.series_ms, args.duration.saturating_mul(2) + 60).map(Arc::new);
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
    ));
    // On a cluster (--also): same-node and cross-node deliveries apart.
    let nodes = 1 + args.also.len();
    let split = Arc::new(Mutex::new([
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
    ]));
    let received = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut writers: Vec<Option<mpsc::Sender<String>>> = Vec::new();
    let (pong_tx, mut pong_rx) = mpsc::unbounded_channel::<usize>();
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let room_mode = args.mode == "room";
    let pep_mode = args.mode == "pep";
    // PEP mode: (contact, publisher) pairs a readiness publish reached.
    let ready: Arc<Mutex<std::collections::HashSet<(usize, String)>>> = Arc::default();
    // Both fan a message out: one sent, many delivered.
    let fanout = room_mode || pep_mode;
    let room = args
        .room
        .clone()
        .unwrap_or_else(|| format!("bench@conference.{}", args.domain));
    // Room mode: each reader says when its user is in the room (true) or
    // was refused (false).
    let (joined_tx, mut joined_rx) = mpsc::unbounded_channel::<bool>();
    for (i, c) in conns.into_iter().enumerate() {
        let Some(c) = c else {
            writers.push(None);
            continue;
        };
        let Conn { mut r, mut w } = c;
        let (tx, mut rx) = mpsc::channel::<String>(1024);
        writers.push(Some(tx));
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = first;
                while let Ok(more) = rx.try_recv() {
                    batch.push_str(&more);
                }
                if w.write_all(batch.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        let hist = hist.clone();
        let series = series.clone();
        let split = split.clone();
        let received = received.clone();
        let refused = refused.clone();
        let pong = pong_tx.clone();
        let measuring = measuring.clone();
        let ctx2 = ctx.clone();
        let joined = joined_tx.clone();
        let own_nick = format!("{room}/{}{i}", args.prefix);
        // With --resume: stanzas handled since <enabled/>, for the <a/>s.
        let acker = writers.last().cloned().flatten().filter(|_| args.resume);
        // PEP mode: publishers accept subscription requests, contacts say
        // what their capabilities mean when the server asks.
        let answer = writers.last().cloned().flatten().filter(|_| pep_mode);
        let ready2 = ready.clone();
        let mut handled: Option<u32> = None;
        tokio::spawn(async move {
            loop {
                let ev = r.next().await;
                if let (Some(acker), Ok(StreamEvent::Stanza(e))) = (&acker, &ev) {
                    match e.name.as_str() {
                        "enabled" => handled = Some(0),
                        "message" | "presence" | "iq" => {
                            if let Some(h) = handled.as_mut() {
                                *h = h.wrapping_add(1);
                            }
                        }
                        "r" => {
                            let h = handled.unwrap_or(0);
                            let _ = acker.try_send(format!("<a xmlns='urn:xmpp:sm:3' h='{h}'/>"));
                        }
                        _ => {}
                    }
                }
                if let (Some(w), Ok(StreamEvent::Stanza(e))) = (&answer, &ev) {
                    let from = e.attr("from").unwrap_or_default();
                    if e.name == "presence" && e.attr("type") == Some("subscribe") {
                        let _ = w.try_send(format!("<presence type='subscribed' to='{from}'/>"));
                    }
                    let caps_query = e.name == "iq"
                        && e.attr("type") == Some("get")
                        && e.get_child("query", "http://jabber.org/protocol/disco#info")
                            .is_some();
                    if caps_query {
                        let node = e
                            .get_child("query", "http://jabber.org/protocol/disco#info")
                            .and_then(|q| q.attr("node"))
                            .unwrap_or_default();
                        let _ = w.try_send(format!(
                            "<iq type='result' to='{from}' id='{}'><query xmlns='http://jabber.org/protocol/disco#info' node='{node}'><identity category='client' type='bot'/><feature var='{PEP_NODE}+notify'/></query></iq>",
                            e.attr("id").unwrap_or_default()
                        ));
                    }
                }
                match ev {
                    Ok(StreamEvent::Stanza(e))
                        if e.name == "presence" && e.attr("from") == Some(own_nick.as_str()) =>
                    {
                        let me = e
                            .get_child("x", "http://jabber.org/protocol/muc#user")
                            .is_some_and(|x| {
                                x.elements()
                                    .any(|s| s.name == "status" && s.attr("code") == Some("110"))
                            });
                        if e.attr("type") == Some("error") {
                            let _ = joined.send(false);
                        } else if me && e.attr("type").is_none() {
                            let _ = joined.send(true);
                        }
                    }
                    // A publish refused (PEP mode): counted as an error.
                    Ok(StreamEvent::Stanza(e))
                        if e.name == "iq" && e.attr("type") == Some("error") =>
                    {
                        ctx2.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(StreamEvent::Stanza(e)) if e.name == "message" => {
                        if e.attr("type") == Some("error") {
                            ctx2.errors.fetch_add(1, Ordering::Relaxed);
                            // Refused with an error (the archive's backlog
                            // full): answered, not lost.
                            if measuring.load(Ordering::Relaxed) {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                            continue;
                        }
                        // A PEP notification carries its send time in
                        // the item's payload.
                        let pep = e
                            .get_child("event", "http://jabber.org/protocol/pubsub#event")
                            .and_then(|ev| ev.elements().next())
                            .and_then(|items| items.elements().next())
                            .and_then(|item| item.get_child("bench", PEP_NODE))
                            .map(|b| b.text());
                        let Some(text) =
                            pep.or_else(|| e.get_child("body", "jabber:client").map(|b| b.text()))
                        else {
                            continue;
                        };
                        // PEP mode's readiness round: which publishers this
                        // contact hears from.
                        if let Some(p) = text.strip_prefix("ready ") {
                            ready2.lock().expect("ready").insert((i, p.to_string()));
                            continue;
                        }
                        let mut parts = text.split(' ');
                        let Some(Ok(sent)) = parts.next().map(|t| t.parse::<u64>()) else {
                            continue;
                        };
                        let from: usize = parts.next().and_then(|f| f.parse().ok()).unwrap_or(0);
                        let now = epoch.elapsed().as_micros() as u64;
                        if measuring.load(Ordering::Relaxed) {
                            received.fetch_add(1, Ordering::Relaxed);
                            let us = now.saturating_sub(sent).max(1);
                            let _ = hist.lock().expect("hist").record(us);
                            if let Some(s) = &series {
                                s.record(sent, us);
                            }
                            if nodes > 1 {
                                let cross = usize::from(from % nodes != i % nodes);
                                let _ = split.lock().expect("hist")[cross].record(us);
                            }
                        }
                        let _ = pong.send(i);
                    }
                    Ok(StreamEvent::Stanza(_))
                    | Ok(StreamEvent::Keepalive)
                    | Ok(StreamEvent::Header(_)) => {}
                    _ => return,
                }
            }
        });
    }
    let live: Vec<usize> = (0..writers.len())
        .filter(|i| writers[*i].is_some())
        .collect();
    if live.len() < 2 {
        report.add(
            "msgs_per_sec",
            "0".into(),
            "fewer than two clients logged in".into(),
        );
        return;
    }
    // Room mode: everyone enters (a few at a time), the first one takes
    // the room as it is (an instant room, XEP-0045 §10.1.2, which also
    // unlocks a server that locks new rooms).
    let mut occupants = 1u64;
    if room_mode {
        let t = Instant::now();
        let mut ok = 0u64;
        let mut refused_joins = 0u64;
        let join = |i: usize| {
            let xml = format!(
                "<presence to='{room}/{}{i}'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x></presence>",
                args.prefix
            );
            if let Some(Some(w)) = writers.get(i) {
                let _ = w.try_send(xml);
            }
        };
        join(live[0]);
        match tokio::time::timeout(Duration::from_secs(30), joined_rx.recv()).await {
            Ok(Some(true)) => ok += 1,
            _ => refused_joins += 1,
        }
        if let Some(Some(w)) = writers.get(live[0]) {
            let _ = w.try_send(format!(
                "<iq type='set' id='instant' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut next = 1;
        let mut in_flight = 0;
        while ok + refused_joins < live.len() as u64 && t.elapsed() < Duration::from_secs(300) {
            while in_flight < 32 && next < live.len() {
                join(live[next]);
                next += 1;
                in_flight += 1;
            }
            match tokio::time::timeout(Duration::from_secs(30), joined_rx.recv()).await {
                Ok(Some(true)) => ok += 1,
                Ok(Some(false)) => refused_joins += 1,
                _ => break,
            }
            in_flight -= 1;
        }
        occupants = ok.max(1);
        report.add(
            "occupants",
            ok.to_string(),
            format!(
                "{ok} occupants entered {room} in {:.1} s ({refused_joins} refused)",
                t.elapsed().as_secs_f64()
            ),
        );
        // Presence of the late joiners reaches everyone first.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // PEP mode: every other user and each publisher subscribe to each
    // other's presence (both accept), then the others say their
    // capabilities, whose `+notify` the server learns by asking.
    let publishers: Vec<usize> = live.iter().copied().take(args.publishers.max(1)).collect();
    if pep_mode {
        let contacts: Vec<usize> = live.iter().copied().skip(publishers.len()).collect();
        let t = Instant::now();
        for &c in &contacts {
            if let Some(Some(w)) = writers.get(c) {
                for &p in &publishers {
                    let _ = w
                        .send(format!(
                            "<presence type='subscribe' to='{}{p}@{}'/>",
                            args.prefix, args.domain
                        ))
                        .await;
                }
            }
        }
        // And back: servers that learn a contact's interests from the
        // presence the publisher receives (Prosody, ejabberd) need it.
        for &p in &publishers {
            if let Some(Some(w)) = writers.get(p) {
                for &c in &contacts {
                    let _ = w
                        .send(format!(
                            "<presence type='subscribe' to='{}{c}@{}'/>",
                            args.prefix, args.domain
                        ))
                        .await;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        for &c in &contacts {
            if let Some(Some(w)) = writers.get(c) {
                let _ = w
                    .send(format!("<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='urn:example:starling-load' ver='{PEP_CAPS}'/></presence>"))
                    .await;
            }
        }
        // The run starts once every contact hears from every publisher
        // (the subscriptions and capabilities are all committed): each
        // publisher publishes a readiness item every second until then.
        let want = contacts.len() * publishers.len();
        for _ in 0..60 {
            for &p in &publishers {
                if let Some(Some(w)) = writers.get(p) {
                    let _ = w
                        .send(format!(
                            "<iq type='set' id='ready'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{PEP_NODE}'><item id='current'><bench xmlns='{PEP_NODE}'>ready {p}</bench></item></publish></pubsub></iq>"
                        ))
                        .await;
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            if ready.lock().expect("ready").len() >= want {
                break;
            }
        }
        let heard = ready.lock().expect("ready").len();
        if heard < want {
            eprintln!("  only {heard} of {want} contact/publisher pairs ready after 60 s");
        }
        occupants = contacts.len().max(1) as u64;
        report.add(
            "contacts",
            contacts.len().to_string(),
            format!(
                "{} publishers, each with {} contacts (set up in {:.1} s)",
                publishers.len(),
                contacts.len(),
                t.elapsed().as_secs_f64()
            ),
        );
    }
    let send = |from: usize, to: usize| {
        let body = format!("{} {from}", epoch.elapsed().as_micros());
        let from = if pep_mode {
            publishers[to % publishers.len()]
        } else {
            from
        };
        let xml = if pep_mode {
            format!(
                "<iq type='set' id='pub'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{PEP_NODE}'><item id='current'><bench xmlns='{PEP_NODE}'>{body}</bench></item></publish></pubsub></iq>"
            )
        } else if room_mode {
            format!("<message to='{room}' type='groupchat'><body>{body}</body></message>")
        } else {
            format!(
                "<message to='{}{to}@{}/load' type='chat'><body>{body}</body></message>",
                args.prefix, args.domain
            )
        };
        if let Some(Some(w)) = writers.get(from) {
            if w.try_send(xml).is_err() {
                ctx.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    // Warm up for a second, then measure for `duration`.
    let mut rng_state = 0x9e3779b97f4a7c15u64;
    let mut rand = move |n: usize| {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        (rng_state % n as u64) as usize
    };
    let total = Duration::from_secs(args.duration + 1);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut sent_measured = 0u64;
    let mut last_progress = Instant::now();
    if args.mode == "pingpong" {
        // Each user pair keeps one message in flight: a reply triggers the next.
        for k in 0..live.len() / 2 {
            send(live[2 * k], live[2 * k + 1]);
        }
        while start.elapsed() < total {
            if start.elapsed() >= Duration::from_secs(1) && !measuring.load(Ordering::Relaxed) {
                measuring.store(true, Ordering::Relaxed);
            }
            match tokio::time::timeout(Duration::from_millis(100), pong_rx.recv()).await {
                Ok(Some(i)) => {
                    let peer = if i % 2 == 0 { i + 1 } else { i - 1 };
                    send(i, peer.min(live.len() - 1));
                    sent += 1;
                    if measuring.load(Ordering::Relaxed) {
                        sent_measured += 1;
                    }
                }
                _ => continue,
            }
        }
    } else {
        let tick = Duration::from_millis(2);
        let per_tick = args.rate as f64 * tick.as_secs_f64();
        let mut carry = 0.0;
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while start.elapsed() < total {
            interval.tick().await;
            if start.elapsed() >= Duration::from_secs(1) && !measuring.load(Ordering::Relaxed) {
                measuring.store(true, Ordering::Relaxed);
            }
            carry += per_tick;
            while carry >= 1.0 {
                carry -= 1.0;
                let a = live[rand(live.len())];
                let mut b = live[rand(live.len())];
                if a == b {
                    b = live[(live.iter().position(|x| *x == a).unwrap_or(0) + 1) % live.len()];
                }
                send(a, b);
                sent += 1;
                if measuring.load(Ordering::Relaxed) {
                    sent_measured += 1;
                }
            }
            while pong_rx.try_recv().is_ok() {}
            if last_progress.elapsed() >= Duration::from_secs(2) {
                eprintln!(
                    "  {:.0} s: sent {sent}, received {}",
                    start.elapsed().as_secs_f64(),
                    received.load(Ordering::Relaxed)
                );
                last_progress = Instant::now();
            }
        }
    }
    let measured_for = start.elapsed().as_secs_f64() - 1.0;
    // Let stragglers arrive (bounded).
    let wait = Instant::now();
    while received.load(Ordering::Relaxed) + refused.load(Ordering::Relaxed)
        < sent_measured * occupants
        && wait.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        while pong_rx.try_recv().is_ok() {}
    }
    measuring.store(false, Ordering::Relaxed);
    let got = received.load(Ordering::Relaxed);
    if let Some(s) = &series {
        s.print();
    }
    let h = hist.lock().expect("hist");
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let throughput = got as f64 / measured_for;
    report.add(
        "offered_per_sec",
        if args.mode == "pingpong" {
            "0".into()
        } else {
            args.rate.to_string()
        },
        format!(
            "{} clients, mode {}, offered {}/s for {:.0} s (after 1 s warm-up)",
            live.len(),
            args.mode,
            if args.mode == "pingpong" {
                "as fast as replies".to_string()
            } else {
                args.rate.to_string()
            },
            measured_for
        ),
    );
    if pep_mode {
        report.add(
            "publishes_per_sec",
            format!("{:.0}", sent_measured as f64 / measured_for),
            format!(
                "{sent_measured} publishes measured ({sent} sent in all), to {occupants} contacts each"
            ),
        );
    }
    if room_mode {
        report.add(
            "room_msgs_per_sec",
            format!("{:.0}", sent_measured as f64 / measured_for),
            format!(
                "{sent_measured} messages to the room measured ({sent} sent in all), to {occupants} occupants each"
            ),
        );
    }
    report.add(
        "msgs_per_sec",
        format!("{throughput:.0}"),
        format!(
            "delivered {got} of {} measured{} = {throughput:.0} {}/s",
            sent_measured * occupants,
            if fanout { " deliveries" } else { "" },
            if fanout { "deliveries" } else { "msg" }
        ),
    );
    report.add(
        "p50_ms",
        format!("{:.3}", ms(0.5)),
        format!("latency p50 {:.3} ms", ms(0.5)),
    );
    report.add(
        "p99_ms",
        format!("{:.3}", ms(0.99)),
        format!("latency p99 {:.3} ms", ms(0.99)),
    );
    report.add(
        "p999_ms",
        format!("{:.3}", ms(0.999)),
        format!("latency p99.9 {:.3} ms", ms(0.999)),
    );
    if nodes > 1 {
        let sp = split.lock().expect("hist");
        for (k, name) in [(0, "same"), (1, "cross")] {
            let q = |p: f64| sp[k].value_at_quantile(p) as f64 / 1000.0;
            report.add(
                &format!("{name}_node_p50_ms"),
                format!("{:.3}", q(0.5)),
                format!(
                    "{name}-node ({} messages): p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms",
                    sp[k].len(),
                    q(0.5),
                    q(0.99),
                    q(0.999)
                ),
            );
            report.add(
                &format!("{name}_node_p99_ms"),
                format!("{:.3}", q(0.99)),
                String::new(),
            );
        }
    }
    let refused = refused.load(Ordering::Relaxed);
    report.add(
        "refused",
        refused.to_string(),
        format!("refused with an error reply (not lost, not delivered): {refused}"),
    );
    let lost = (sent_measured * occupants).saturating_sub(got + refused);
    report.add(
        "lost",
        lost.to_string(),
        format!("neither delivered nor refused within 5 s: {lost}"),
    );
}

#[cfg(test)]
/// The `starling` binary built beside this one (target/<profile>/, or one
/// level up from a test harness in target/<profile>/deps/), or STARLING_BIN.
fn starling_bin() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("STARLING_BIN") {
        return p.into();
    }
    let me = std::env::current_exe().expect("own path");
    me.ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("starling"))
        .find(|p| p.is_file())
        .expect("the starling binary beside starling-load: build the workspace (cargo build)")
}

/// A small self-contained run against a Starling started here.
#[cfg(test)]
fn self_contained() -> (Args, std::process::Child, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(starling_bin())
        .arg("serve")
        .env_clear()
        .env("STARLING_DATA_DIR", dir.path().join("data"))
        .env("STARLING_C2S_LISTEN", "127.0.0.1:0")
        .env("STARLING_C2S_DIRECT_TLS_LISTEN", "")
        .env("STARLING_HTTP_LISTEN", "")
        .env("STARLING_S2S_LISTEN", "")
        .env("STARLING_COMPONENT_LISTEN", "")
        .env("STARLING_CLUSTER_LISTEN", "127.0.0.1:0")
        .env("STARLING_REGISTRATION_ALLOW", "true")
        .env("STARLING_REGISTRATION_PER_ADDRESS_PER_HOUR", "1000000")
        .env("STARLING_LOG_LEVEL", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start starling");
    let out = child.stdout.take().expect("stdout");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).expect("ready line");
    let c2s: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("c2s="))
        .and_then(|a| a.parse().ok())
        .expect("c2s address");
    let pid = child.id();
    let args = Args::parse_from([
        "starling-load",
        "--server",
        &c2s.to_string(),
        "--users",
        "20",
        "--register",
        "--rate",
        "200",
        "--duration",
        "2",
        "--pid",
        &pid.to_string(),
        "--label",
        "starling (smoke run)",
    ]);
    (args, child, dir)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn main() {
    let args = Args::parse();
    let report = runtime().block_on(run(args.clone()));
    report.print(&args.label, &args.scenario);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The driver against a real Starling: 20 accounts registered in-band,
    /// two seconds of messages, every one answered, no errors.
    #[test]
    fn smoke_run() {
        let (args, mut child, _dir) = self_contained();
        let report = runtime().block_on(run(args.clone()));
        let _ = child.kill();
        let _ = child.wait();
        report.print(&args.label, &args.scenario);
        let field = |k: &str| {
            report
                .value(k)
                .unwrap_or_else(|| panic!("no {k} in the report"))
        };
        assert_eq!(field("registration_failures"), "0");
        assert_eq!(field("errors"), "0");
        let rate: f64 = field("msgs_per_sec").parse().expect("a number");
        assert!(rate > 0.0, "messages went through");
    }

    /// `rooms`: each of the 20 users makes and enters a room of its own.
    #[test]
    fn rooms_run() {
        let (mut args, mut child, _dir) = self_contained();
        args.scenario = "rooms".into();
        let report = runtime().block_on(run(args.clone()));
        let _ = child.kill();
        let _ = child.wait();
        report.print(&args.label, &args.scenario);
        assert_eq!(report.value("errors").as_deref(), Some("0"));
        assert_eq!(report.value("rooms").as_deref(), Some("20"));
        assert!(report.value("rss_per_room_bytes").is_some());
    }
}
