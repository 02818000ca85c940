//! BOSH (XEP-0124, XEP-0206) at /http-bind, over real HTTP: session
//! creation, login, chat with a TCP user, rid ordering and
//! retransmission, hold/wait, pause, polling limits, terminate,
//! inactivity, and hostile requests.
mod common;
use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = BOSH_NS;

fn message(to: &str, id: &str) -> String {
    format!("<message xmlns='jabber:client' to='{to}' type='chat' id='{id}'><body>{id}</body></message>")
}

/// Alice on BOSH and bob on TCP chat both ways; a held request carries
/// bob's message as soon as it arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bosh_user_logs_in_and_chats_with_a_tcp_user() {
    let s = Server::start();
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let (mut a, _) = Bosh::login(s.http, "alice", "pw", 10).await;
    let (_, r) = a.send("<presence xmlns='jabber:client'/>").await;
    assert!(r.contains("<presence"), "her presence comes back: {r}");
    let mut bob = Client::online(s.c2s, "bob", "pw", "tcp").await;

    // A held request, answered by bob's message well before `wait`.
    let (_, held) = a.next("", "");
    let addr = s.http;
    let waiting = tokio::spawn(async move { post(addr, &held).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    bob.send("<message to='alice@localhost' type='chat' id='b1'><body>hi</body></message>")
        .await;
    let (code, r) = waiting.await.expect("request");
    assert_eq!(code, 200);
    assert!(
        r.contains("id='b1'") && r.contains("<body>hi</body>"),
        "{r}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "held, then answered at once"
    );

    let (_, body) = a.next("", &message("bob@localhost/tcp", "a1"));
    tokio::spawn(async move { post(addr, &body).await });
    let m = bob.stanza("message").await;
    assert_eq!(m.attr("id"), Some("a1"));
    assert_eq!(m.attr("from"), Some("alice@localhost/web"));
}

/// §14: a request that overtakes an earlier one waits for it, so the
/// stream sees them in rid order; a repeated rid gets the same answer; a
/// rid outside the window ends the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rids_are_processed_in_order_and_repeats_get_the_same_answer() {
    let s = Server::start();
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let (mut a, _) = Bosh::login(s.http, "alice", "pw", 2).await;
    let mut bob = Client::online(s.c2s, "bob", "pw", "tcp").await;
    let addr = s.http;
    let (_, first) = a.next("", &message("bob@localhost/tcp", "m1"));
    let (_, second) = a.next("", &message("bob@localhost/tcp", "m2"));
    // The second arrives first.
    let later = tokio::spawn(async move { post(addr, &second).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        bob.quiet_for(Duration::from_millis(300)).await,
        "m2 waits for m1"
    );
    let first_answer = post(addr, &first).await;
    assert_eq!(bob.stanza("message").await.attr("id"), Some("m1"));
    assert_eq!(bob.stanza("message").await.attr("id"), Some("m2"));
    let _ = later.await;
    // A retransmission of the first gets what the first got, and sends
    // nothing again.
    let again = post(addr, &first).await;
    assert_eq!(again, first_answer);
    assert!(bob.quiet_for(Duration::from_millis(500)).await, "m1 once");
    // A held request whose connection drops is sent again: the new one
    // is held in its place and carries what comes.
    let (_, held) = a.next("", "");
    let dropped = {
        let held = held.clone();
        tokio::spawn(async move { post(addr, &held).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    dropped.abort();
    let again = tokio::spawn(async move { post(addr, &held).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob.send("<message to='alice@localhost/web' type='chat' id='b2'><body>b2</body></message>")
        .await;
    let (code, r) = again.await.expect("the retransmission");
    assert_eq!(code, 200);
    assert!(r.contains("id='b2'"), "{r}");
    // Far ahead: the session ends.
    a.rid += 10;
    let (code, r) = a.send("").await;
    assert_eq!(
        code, 200,
        "a client that sent ver hears of errors in the body: {r}"
    );
    assert!(r.contains("condition='item-not-found'"), "{r}");
    let (code, r) = a.send("").await;
    assert!(
        r.contains("item-not-found"),
        "the session is gone: {code} {r}"
    );
}

/// §10: with hold=1 a second request sends the first back empty; a lone
/// held request comes back empty after `wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_and_wait_bound_how_long_a_request_is_kept() {
    let s = Server::start();
    s.add_user("alice", "pw");
    let (mut a, _) = Bosh::login(s.http, "alice", "pw", 2).await;
    let addr = s.http;
    let (_, one) = a.next("", "");
    let (_, two) = a.next("", "");
    let first = tokio::spawn(async move {
        let t = Instant::now();
        (post(addr, &one).await, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let (code, r) = post(addr, &two).await;
    let held_for = t.elapsed();
    let ((code1, r1), first_for) = first.await.expect("first");
    assert_eq!((code, code1), (200, 200));
    assert_eq!(r1, format!("<body xmlns='{NS}'/>"));
    assert!(
        first_for < Duration::from_millis(1500),
        "pushed out: {first_for:?}"
    );
    assert_eq!(r, format!("<body xmlns='{NS}'/>"));
    assert!(
        held_for >= Duration::from_millis(1800) && held_for < Duration::from_secs(6),
        "held for wait=2: {held_for:?}"
    );
    // §12: a pause answers what is held and keeps the session.
    let (_, held) = a.next("", "");
    let waiting = tokio::spawn(async move { post(addr, &held).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, pause) = a.next(" pause='20'", "");
    let t = Instant::now();
    let (code, _) = post(addr, &pause).await;
    assert_eq!(code, 200);
    let (code, _) = waiting.await.expect("held one");
    assert_eq!(code, 200);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let (code, r) = a.send("").await;
    assert_eq!(code, 200, "still there after the pause: {r}");
}

/// §11: a polling session (hold=0) that polls faster than `polling`, or
/// a client with more requests open than `requests`, is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_too_often_ends_the_session() {
    let s = Server::start();
    let (mut p, created) = Bosh::create(s.http, 5, 0).await;
    assert_eq!(attr(&created, "polling").as_deref(), Some("2"), "{created}");
    let (code, r) = p.send("").await;
    assert_eq!((code, r), (200, format!("<body xmlns='{NS}'/>")));
    let (code, r) = p.send("").await;
    assert_eq!(code, 200, "{r}");
    assert!(r.contains("condition='policy-violation'"), "{r}");
}

/// A client's terminate ends its stream (its unavailable presence goes
/// out first); an idle session ends after `inactivity`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_and_inactivity_end_the_session() {
    let s = Server::start_with(&[("STARLING_HTTP_BOSH_INACTIVITY_SECS", "3")]);
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let mut bob = Client::online(s.c2s, "bob", "pw", "tcp").await;
    bob.send("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    let (mut a, _) = Bosh::login(s.http, "alice", "pw", 2).await;
    a.send("<presence xmlns='jabber:client' to='bob@localhost' type='subscribed'/><presence xmlns='jabber:client'/>")
        .await;
    let p = bob
        .wait_for(|e| e.name == "presence" && e.attr("type").is_none())
        .await;
    assert_eq!(p.attr("from"), Some("alice@localhost/web"));
    let (_, body) = a.next(
        " type='terminate'",
        "<presence xmlns='jabber:client' type='unavailable'/>",
    );
    let (code, r) = post(s.http, &body).await;
    assert_eq!(code, 200);
    assert!(r.contains("type='terminate'"), "{r}");
    let p = bob
        .wait_for(|e| e.name == "presence" && e.attr("type") == Some("unavailable"))
        .await;
    assert_eq!(p.attr("from"), Some("alice@localhost/web"));
    let (code, _) = a.send("").await;
    assert_eq!(code, 404, "gone after terminate");

    // Logged in again, then silent: after 3 s without a request it ends.
    let (mut a, _) = Bosh::login(s.http, "alice", "pw", 1).await;
    a.send("<presence xmlns='jabber:client'/>").await;
    bob.wait_for(|e| e.name == "presence" && e.attr("type").is_none())
        .await;
    let t = Instant::now();
    let gone = bob
        .wait_for(|e| e.name == "presence" && e.attr("type") == Some("unavailable"))
        .await;
    assert_eq!(gone.attr("from"), Some("alice@localhost/web"));
    assert!(
        t.elapsed() >= Duration::from_secs(2) && t.elapsed() < Duration::from_secs(15),
        "{:?}",
        t.elapsed()
    );
    let (code, _) = a.send("").await;
    assert_eq!(code, 404);
}

/// Bad requests get a terminate body with a condition (or an HTTP error);
/// large and slow bodies are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bosh_requests_get_clear_errors() {
    let s = Server::start();
    let h = s.http;
    let (code, r) = post(h, "not xml at all").await;
    assert_eq!(code, 400, "{r}");
    assert!(r.contains("condition='bad-request'"), "{r}");
    let (code, r) = post(h, "<body xmlns='urn:other' rid='1'/>").await;
    assert_eq!(code, 400, "{r}");
    let (code, r) = post(h, &format!("<body xmlns='{NS}' to='localhost'/>")).await;
    assert_eq!(code, 400, "no rid: {r}");
    let (code, r) = post(
        h,
        &format!("<body xmlns='{NS}' rid='5' to='elsewhere.example' ver='1.11'/>"),
    )
    .await;
    assert_eq!(code, 200, "{r}");
    assert!(r.contains("condition='host-unknown'"), "{r}");
    let (code, r) = post(h, &format!("<body xmlns='{NS}' rid='5' sid='nope'/>")).await;
    assert_eq!(code, 404, "{r}");
    assert!(r.contains("condition='item-not-found'"), "{r}");
    let big = format!(
        "<body xmlns='{NS}' rid='5' sid='nope'><message xmlns='jabber:client'><body>{}</body></message></body>",
        "x".repeat(400 * 1024)
    );
    let (code, _) = post(h, &big).await;
    assert_eq!(code, 413);
    // A stanza without a session's authentication ends that stream.
    let (mut b, _) = Bosh::create(h, 2, 1).await;
    let (code, r) = b.send(&message("x@localhost", "m")).await;
    assert_eq!(code, 200);
    assert!(
        r.contains("condition='remote-stream-error'") && r.contains("not-authorized"),
        "{r}"
    );
    // A body that never finishes arriving is cut off.
    let mut slow = tokio::net::TcpStream::connect(h).await.expect("connect");
    slow.write_all(b"POST /http-bind HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n<body")
        .await
        .expect("write");
    let t = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "still open after 30 s");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "cut off after {:?}",
        t.elapsed()
    );
    let (code, _) = http_get(h, "/health/live").await;
    assert_eq!(code, 200);
}
