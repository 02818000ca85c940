//! Push notifications (XEP-0357) to a real app server: slixmpp's
//! ComponentXMPP plays it (tests/interop/slixmpp_push_appserver.py), as the
//! components test does. A device whose stream-management session is
//! detached, and an account that is offline, each produce a notification
//! with the summary form; a device the app server forgot (item-not-found)
//! and a disabled one get no more; bursts are counted in one; and a user
//! whose node was killed is still notified, by the node that stores the
//! message.
mod common;
use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use starling::base::xml::Element;

const APP: &str = "push.localhost";
const APP_SECRET: &str = "push-app-server-secret";
const NS: &str = "urn:xmpp:push:0";

/// The app server: its notifications, one JSON value each.
struct AppServer {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Notifications for other nodes that came while one node's was
    /// awaited (the server notifies a user's devices in no fixed order):
    /// the next wait or collection looks at them first, then drops them.
    held: Vec<Value>,
}

impl AppServer {
    async fn start(addr: std::net::SocketAddr, log: impl Fn() -> String) -> AppServer {
        let mut child = Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/interop/slixmpp_push_appserver.py"
            ))
            .args([addr.ip().to_string(), addr.port().to_string()])
            .args([APP, APP_SECRET])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the app server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut a = AppServer {
            child,
            lines,
            held: Vec::new(),
        };
        let first = a.line(Duration::from_secs(30)).await;
        assert_eq!(first.as_deref(), Some("CONNECTED"), "app server: {}", log());
        a
    }

    async fn line(&mut self, wait: Duration) -> Option<String> {
        tokio::time::timeout(wait, self.lines.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next notification within `wait`.
    async fn notification(&mut self, wait: Duration) -> Option<Value> {
        let end = Instant::now() + wait;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let line = self.line(left).await?;
            assert!(!line.starts_with("FAIL"), "app server: {line}");
            if let Some(json) = line.strip_prefix("NOTIFICATION ") {
                return Some(serde_json::from_str(json).expect("json"));
            }
        }
    }

    /// Notifications for `node` until one has `body` as its last body.
    async fn until_body(&mut self, node: &str, body: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        let mut others = Vec::new();
        let mut earlier = std::mem::take(&mut self.held).into_iter();
        loop {
            let n = match earlier.next() {
                Some(n) => n,
                None => self
                    .notification(Duration::from_secs(20))
                    .await
                    .unwrap_or_else(|| {
                        panic!("no notification for {node} with {body:?}: {seen:?}")
                    }),
            };
            if n["node"] != node {
                others.push(n);
                continue;
            }
            let done = field(&n, "last-message-body").as_deref() == Some(body);
            seen.push(n);
            if done {
                self.held = others;
                return seen;
            }
        }
    }

    /// All notifications for `node` within `d`.
    async fn collect(&mut self, node: &str, d: Duration) -> Vec<Value> {
        let end = Instant::now() + d;
        let mut out: Vec<Value> = std::mem::take(&mut self.held)
            .into_iter()
            .filter(|n| n["node"] == node)
            .collect();
        while let Some(n) = self
            .notification(end.saturating_duration_since(Instant::now()))
            .await
        {
            if n["node"] == node {
                out.push(n);
            }
        }
        out
    }

    fn forget(&mut self, node: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "FORGET {node}").expect("write");
        stdin.flush().expect("flush");
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A summary form field's first value.
fn field(n: &Value, var: &str) -> Option<String> {
    n["summary"][var][0].as_str().map(str::to_string)
}

fn enable(node: &str, options: &[(&str, &str)]) -> Element {
    let mut form = Element::new("x", "jabber:x:data").with_attr("type", "submit");
    let mut fields = vec![(
        "FORM_TYPE",
        "http://jabber.org/protocol/pubsub#publish-options",
    )];
    fields.extend_from_slice(options);
    for (var, value) in fields {
        form.push_child(
            Element::new("field", "jabber:x:data")
                .with_attr("var", var)
                .with_child(Element::new("value", "jabber:x:data").with_text(value)),
        );
    }
    let mut iq = Element::new("iq", "jabber:client").with_attr("type", "set");
    iq.push_child(
        Element::new("enable", NS)
            .with_attr("jid", APP)
            .with_attr("node", node)
            .with_child(form),
    );
    iq
}

fn chat(to: &str, body: &str) -> String {
    format!("<message type='chat' to='{to}'><body>{body}</body></message>")
}

/// bob: logged in with stream management, push enabled for `node`.
async fn bob_with_push(s: &Server, node: &str, options: &[(&str, &str)]) -> Client {
    let mut bob = sm_bound(s, "bob", "builder", "phone").await;
    let r = bob.iq(enable(node, options)).await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    bob.send("<presence/>").await;
    bob.stanza("presence").await;
    bob
}

#[tokio::test]
async fn detached_and_offline_devices_are_notified_until_forgotten_or_disabled() {
    let comp = format!("{APP}={APP_SECRET}");
    let s = Server::start_with(&[
        ("STARLING_COMPONENT_SECRETS", &comp),
        ("STARLING_PUSH_INCLUDE_BODY", "true"),
        ("STARLING_PUSH_MIN_INTERVAL_MS", "400"),
        ("STARLING_LIMITS_RESUME_TIMEOUT_SECS", "2"),
    ]);
    s.add_user("alice", "wonderland");
    s.add_user("bob", "builder");
    let mut app = AppServer::start(s.component.expect("component listener"), || s.log()).await;
    let mut alice = Client::online(s.c2s, "alice", "wonderland", "home").await;

    // The account advertises push (§4).
    let mut bob = bob_with_push(&s, "bob-phone", &[("secret", "s3cr3t")]).await;
    let info = bob
        .iq(iq_get(
            Some("bob@localhost"),
            Element::new("query", "http://jabber.org/protocol/disco#info"),
        ))
        .await;
    let query = info
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .expect("disco#info");
    assert!(
        query.elements().any(|f| f.attr("var") == Some(NS)),
        "{info:?}"
    );
    // A second device that does not want bodies sent.
    let r = bob
        .iq(enable("bob-tablet", &[("include-body", "false")]))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    // Bad requests: no node; a form of another type.
    let mut bad = Element::new("iq", "jabber:client").with_attr("type", "set");
    bad.push_child(Element::new("enable", NS).with_attr("jid", APP));
    assert_eq!(
        stanza_condition(&bob.iq(bad).await).as_deref(),
        Some("bad-request")
    );

    // Online: nothing is pushed.
    alice.send(&chat("bob@localhost", "while online")).await;
    bob.stanza("message").await;
    assert!(app
        .collect("bob-phone", Duration::from_millis(800))
        .await
        .is_empty());

    // Detached (the connection is cut, the session waits for a resume).
    drop(bob);
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice
        .send(&chat("bob@localhost/phone", "while detached"))
        .await;
    let n = app.until_body("bob-phone", "while detached").await;
    let last = n.last().expect("one");
    assert_eq!(
        field(last, "FORM_TYPE").as_deref(),
        Some("urn:xmpp:push:summary")
    );
    // Counted: the messages the session holds unacknowledged (bob read the
    // first but never acknowledged it, so it is pending too).
    assert_eq!(field(last, "message-count").as_deref(), Some("2"));
    assert_eq!(
        field(last, "last-message-sender").as_deref(),
        alice.jid.as_deref()
    );
    assert_eq!(last["from"], "bob@localhost");
    assert_eq!(last["options"]["secret"][0], "s3cr3t", "{last}");
    // The tablet was told too, without the body.
    let tablet = app.collect("bob-tablet", Duration::from_millis(600)).await;
    assert!(!tablet.is_empty(), "the second device was not notified");
    assert!(
        tablet
            .iter()
            .all(|t| field(t, "last-message-body").is_none()),
        "{tablet:?}"
    );

    // The session times out; the account is offline: stored, and pushed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    app.collect("bob-phone", Duration::from_millis(500)).await;
    alice.send(&chat("bob@localhost", "while offline")).await;
    let n = app.until_body("bob-phone", "while offline").await;
    let count: u64 = field(n.last().expect("one"), "message-count")
        .and_then(|c| c.parse().ok())
        .expect("a count");
    assert!(count >= 1, "{n:?}");

    // A burst within the interval: fewer notifications than messages, the
    // last one counting them all.
    app.collect("bob-phone", Duration::from_millis(500)).await;
    for i in 0..5 {
        alice
            .send(&chat("bob@localhost", &format!("burst {i}")))
            .await;
    }
    let burst = app.until_body("bob-phone", "burst 4").await;
    assert!(burst.len() < 5, "{burst:?}");
    let last: u64 = field(burst.last().expect("one"), "message-count")
        .and_then(|c| c.parse().ok())
        .expect("count");
    assert!(last >= count + 5, "{last} after {count}: {burst:?}");

    // The app server forgets the phone: one more try is refused with
    // item-not-found, and then nothing more goes to it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.forget("bob-phone");
    loop {
        let line = app
            .line(Duration::from_secs(5))
            .await
            .expect("the app server's answer");
        if line == "FORGOTTEN bob-phone" {
            break;
        }
        assert!(line.starts_with("NOTIFICATION "), "{line}");
    }
    alice
        .send(&chat("bob@localhost", "to a forgotten phone"))
        .await;
    app.until_body("bob-phone", "to a forgotten phone").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    alice.send(&chat("bob@localhost", "nobody hears")).await;
    let after = app.collect("bob-phone", Duration::from_secs(2)).await;
    assert!(after.is_empty(), "notified after item-not-found: {after:?}");

    // bob disables the tablet himself (§6): no more for it either.
    let mut bob = authed_retry(&s, "bob", "builder").await;
    bob.bind(Some("laptop")).await.expect("bind");
    let mut off = Element::new("iq", "jabber:client").with_attr("type", "set");
    off.push_child(
        Element::new("disable", NS)
            .with_attr("jid", APP)
            .with_attr("node", "bob-tablet"),
    );
    assert_eq!(bob.iq(off).await.attr("type"), Some("result"));
    bob.send("</stream:stream>").await;
    drop(bob);
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.collect("bob-tablet", Duration::from_millis(500)).await;
    alice.send(&chat("bob@localhost", "after disable")).await;
    let after = app.collect("bob-tablet", Duration::from_secs(2)).await;
    assert!(after.is_empty(), "notified after disable: {after:?}");
}

/// bob's node is killed: the message goes offline on a node that lives, and
/// that node notifies his device; the app server's item-not-found for a
/// notification another node made removes the device cluster-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_whose_node_died_is_still_notified() {
    const SECRET: &str = "push-tests-cluster-secret-0123456789";
    let _turn = CLUSTER_TURN.lock().await;
    let comp = format!("{APP}={APP_SECRET}");
    let env = [
        ("STARLING_COMPONENT_SECRETS", comp.as_str()),
        ("STARLING_PUSH_INCLUDE_BODY", "true"),
    ];
    let n1 = cluster_node(1, None, SECRET, &env);
    let n2 = cluster_node(2, Some(&n1), SECRET, &env);
    let mut n3 = cluster_node(3, Some(&n1), SECRET, &env);
    wait_members(&n1, SECRET, 3).await;
    n1.add_user("alice", "wonderland");
    n1.add_user("bob", "builder");
    n1.add_user("carol", "carol-pw");
    let mut app = AppServer::start(n1.component.expect("component listener"), || n1.log()).await;
    let mut alice = authed_retry(&n1, "alice", "wonderland").await;
    alice.bind(Some("home")).await.expect("bind");
    alice.send("<presence/>").await;
    alice.stanza("presence").await;
    let mut bob = bob_with_push(&n3, "bob-phone", &[]).await;
    alice.send(&chat("bob@localhost", "are you there")).await;
    bob.stanza("message").await;
    n3.kill9();
    drop(bob);
    alice.send(&chat("bob@localhost", "after the crash")).await;
    let n = app.until_body("bob-phone", "after the crash").await;
    assert_eq!(n.last().expect("one")["from"], "bob@localhost");

    // A notification node 2 makes (carol writes from there) crosses the
    // mesh to the app server on node 1; the app server's item-not-found
    // comes back to node 1, which removes the device for the whole
    // cluster: nothing more from node 2 or node 1.
    let mut carol = authed_retry(&n2, "carol", "carol-pw").await;
    carol.bind(Some("desk")).await.expect("bind");
    app.forget("bob-phone");
    loop {
        let line = app.line(WAIT).await.expect("the app server's answer");
        if line == "FORGOTTEN bob-phone" {
            break;
        }
    }
    carol.send(&chat("bob@localhost", "from node 2")).await;
    app.until_body("bob-phone", "from node 2").await;
    assert!(
        n2.log().contains("push notification sent"),
        "node 2 made the notification"
    );
    let deadline = std::time::Instant::now() + WAIT;
    while !n1
        .log()
        .contains("app server forgot the device: push registration removed")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "node 1 did not act on the answer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    carol.send(&chat("bob@localhost", "nobody hears")).await;
    alice.send(&chat("bob@localhost", "nor this")).await;
    let after = app.collect("bob-phone", Duration::from_secs(2)).await;
    assert!(after.is_empty(), "notified after item-not-found: {after:?}");
    drop(n2);
}
