//! `/metrics` (Prometheus/OpenMetrics text) parsed by the Prometheus Python
//! client's OpenMetrics parser (tests/interop/metrics_parse.py) and checked
//! against traffic the test made: logins and failed logins, messages and
//! their acknowledgement latency, sessions, stanza errors, Raft state.
mod common;
use common::*;
use serde_json::Value;
use std::time::Duration;

/// The metric families' names.
fn families(s: &Server) -> Vec<String> {
    let v = parse(s);
    v["families"]
        .as_array()
        .expect("families")
        .iter()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect()
}

fn parse(s: &Server) -> Value {
    let out = std::process::Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/metrics_parse.py"
        ))
        .arg(format!("http://{}/metrics", s.http))
        .output()
        .expect("run the parser");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "parser failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("json")
}

/// Every sample: (name, labels, value).
fn scrape(s: &Server) -> Vec<(String, serde_json::Map<String, Value>, f64)> {
    let v = parse(s);
    v["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|s| {
            (
                s[0].as_str().unwrap_or_default().to_string(),
                s[1].as_object().cloned().unwrap_or_default(),
                s[2].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect()
}

/// The value of `name` with exactly these labels (0 when absent).
fn value(
    samples: &[(String, serde_json::Map<String, Value>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).and_then(Value::as_str) == Some(*v))
        })
        .map(|s| s.2)
        .unwrap_or(0.0)
}

/// Every metric the Grafana dashboard in the repository plots is in `s`'s
/// exposition.
fn dashboard_metrics_exist(s: &Server) {
    let dash = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/deploy/grafana-dashboard.json"
    ))
    .expect("the dashboard");
    let dash: Value = serde_json::from_str(&dash).expect("dashboard JSON");
    let mut plotted = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().unwrap_or_default();
            for (i, _) in expr.match_indices("starling_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                plotted.push(name);
            }
        }
    }
    assert!(plotted.len() > 10, "{plotted:?}");
    let families = families(s);
    for name in plotted {
        let family = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        assert!(
            families.iter().any(|f| f == family),
            "the dashboard plots {name}, which /metrics lacks: {families:?}"
        );
    }
}

#[tokio::test]
async fn metrics_count_known_traffic() {
    let s = Server::start();
    s.add_user("alice", "wonderland");
    s.add_user("bob", "builder");
    let before = scrape(&s);
    assert_eq!(
        value(
            &before,
            "starling_logins_total",
            &[("mechanism", "SCRAM-SHA-256")]
        ),
        0.0
    );

    // Three failed logins.
    for _ in 0..3 {
        let mut c = Client::connect(s.c2s).await;
        c.open().await;
        let mut c = c.starttls().await;
        c.open().await;
        assert_eq!(
            c.auth_scram("SCRAM-SHA-256", "alice", "wrong").await,
            Err("not-authorized".to_string())
        );
    }
    // Two sessions; alice acknowledges with stream management.
    let mut alice = Client::login(s.c2s, "alice", "wonderland", "home").await;
    alice.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    alice.wait_for(|e| e.name == "enabled").await;
    let mut bob = Client::online(s.c2s, "bob", "builder", "desk").await;
    for i in 0..5 {
        alice
            .send(&format!(
                "<message to='bob@localhost/desk' type='chat' id='m{i}'><body>m{i}</body></message>"
            ))
            .await;
        bob.stanza("message").await;
    }
    alice.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    let a = alice.wait_for(|e| e.name == "a").await;
    assert_eq!(a.attr("h"), Some("5"));
    // One stanza error: an iq to a user who does not exist.
    alice
        .send("<iq type='get' id='v1' to='nobody@localhost'><vCard xmlns='vcard-temp'/></iq>")
        .await;
    let e = alice.wait_for(|e| e.attr("id") == Some("v1")).await;
    assert_eq!(e.attr("type"), Some("error"));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let m = scrape(&s);
    let v = |name: &str, labels: &[(&str, &str)]| value(&m, name, labels);
    assert_eq!(
        v("starling_logins_total", &[("mechanism", "SCRAM-SHA-256")]),
        2.0
    );
    assert_eq!(
        v(
            "starling_login_failures_total",
            &[("condition", "not-authorized")]
        ),
        3.0
    );
    assert_eq!(v("starling_sessions", &[("transport", "client")]), 2.0);
    assert!(
        v(
            "starling_stanzas_total",
            &[("direction", "in"), ("kind", "message")]
        ) >= 5.0
    );
    assert!(
        v(
            "starling_stanzas_total",
            &[("direction", "out"), ("kind", "message")]
        ) >= 5.0
    );
    // The five acknowledged messages went to a session on this node.
    assert_eq!(
        v(
            "starling_message_ack_seconds_count",
            &[("recipient", "local")]
        ),
        5.0
    );
    assert!(
        v(
            "starling_message_ack_seconds_sum",
            &[("recipient", "local")]
        ) > 0.0
    );
    assert!(
        v(
            "starling_stanza_errors_total",
            &[("condition", "service-unavailable")]
        ) >= 1.0
    );
    assert_eq!(v("starling_state", &[("name", "raft_is_leader")]), 1.0);
    assert!(v("starling_state", &[("name", "raft_term")]) >= 1.0);
    assert!(v("starling_state", &[("name", "raft_applied_index")]) >= 1.0);
    assert_eq!(v("starling_state", &[("name", "cluster_members")]), 1.0);

    // Sessions that end are no longer counted.
    drop(bob);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(&s);
        if value(&m, "starling_sessions", &[("transport", "client")]) == 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bob's session still counted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A message to a user on another node is counted as cross-node; each node
/// reports the mesh queue to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_messages_and_the_mesh() {
    const SECRET: &str = "metrics-tests-secret-0123456789";
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = cluster_node(1, None, SECRET, &[]);
    let n2 = cluster_node(2, Some(&n1), SECRET, &[]);
    wait_members(&n1, SECRET, 2).await;
    n1.add_user("alice", "wonderland");
    n1.add_user("bob", "builder");
    let mut bob = authed_retry(&n2, "bob", "builder").await;
    bob.bind(Some("desk")).await.expect("bind");
    let mut alice = sm_bound(&n1, "alice", "wonderland", "home").await;
    for i in 0..4 {
        alice
            .send(&format!(
                "<message to='bob@localhost/desk' type='chat' id='x{i}'><body>x{i}</body></message>"
            ))
            .await;
        bob.stanza("message").await;
    }
    alice.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    let a = alice.wait_for(|e| e.name == "a").await;
    assert_eq!(a.attr("h"), Some("4"));
    let m = scrape(&n1);
    assert_eq!(
        value(
            &m,
            "starling_message_ack_seconds_count",
            &[("recipient", "other_node")]
        ),
        4.0
    );
    assert_eq!(
        value(&m, "starling_state", &[("name", "cluster_members")]),
        2.0
    );
    // With a failed login, a stream error and a stanza error behind it,
    // every family the dashboard plots has samples.
    let mut c = Client::connect(n1.c2s).await;
    c.open().await;
    let mut c = c.starttls().await;
    c.open().await;
    assert!(c
        .auth_scram("SCRAM-SHA-256", "alice", "wrong")
        .await
        .is_err());
    let mut c = Client::connect(n1.c2s).await;
    c.send(&HEADER.replace("to='localhost'", "to='nowhere.example'"))
        .await;
    assert_eq!(c.stream_error().await, "host-unknown");
    alice
        .send("<iq type='get' id='v1' to='nobody@localhost'><vCard xmlns='vcard-temp'/></iq>")
        .await;
    alice.wait_for(|e| e.attr("id") == Some("v1")).await;
    dashboard_metrics_exist(&n1);
    // The stanza queue to node 2 exists and has connected.
    assert!(
        value(
            &m,
            "starling_mesh",
            &[("node", "2"), ("lane", "stanzas"), ("stat", "connects")]
        ) >= 1.0,
        "{:?}",
        m.iter()
            .filter(|s| s.0 == "starling_mesh")
            .collect::<Vec<_>>()
    );
    drop(n2);
}
