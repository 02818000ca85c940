//! Federation with a real Prosody (Debian's `prosody`, started here from a
//! generated config): a user on a three-node Starling cluster and a user
//! on Prosody complete a subscription handshake, see each other's
//! presence and exchange messages both ways, with slixmpp as both clients.
//! Prosody's link into Starling lands on node 2; the Starling user is on
//! node 3, whose own outbound link carries the other direction (and whose
//! dialback key node 2 verifies for Prosody).
mod common;
use common::prosody::Prosody;
use common::*;
use std::process::Command;

const SECRET: &str = "federation-test-secret-0123456789";
const PROSODY_C2S: u16 = 16222;
const PROSODY_S2S: u16 = 16269;
/// For the bidirectional-link test (the tests run at once).
const BIDI_C2S: u16 = 16322;
const BIDI_S2S: u16 = 16369;
/// For the hosted-component test.
const COMP_C2S: u16 = 16422;
const COMP_S2S: u16 = 16469;
const ECHO_SECRET: &str = "echo-component-secret";

fn starling_node(id: u64, join: Option<&Server>, prosody_s2s: u16) -> Server {
    starling_node_with(id, join, prosody_s2s, &[])
}

fn starling_node_with(
    id: u64,
    join: Option<&Server>,
    prosody_s2s: u16,
    extra: &[(&str, &str)],
) -> Server {
    let route = format!("prosody.localhost=127.0.0.1:{prosody_s2s}");
    let mut env = vec![
        ("STARLING_DOMAIN", "starling.localhost"),
        ("STARLING_S2S_VERIFY_CERTIFICATES", "false"),
        ("STARLING_S2S_STATIC_ROUTES", &route),
        (
            "STARLING_LOG_LEVEL",
            "info,starling::transport::s2s=trace,starling::routing::route=trace,starling::im::presence=trace",
        ),
    ];
    env.extend_from_slice(extra);
    cluster_node(id, join, SECRET, &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_and_messages_with_prosody_across_the_cluster() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = starling_node(1, None, PROSODY_S2S);
    let n2 = starling_node(2, Some(&n1), PROSODY_S2S);
    let n3 = starling_node(3, Some(&n1), PROSODY_S2S);
    wait_members(&n1, SECRET, 3).await;
    // Through node 3's admin socket: committed and applied there on return.
    n3.add_user("alice", "alice-pw");
    let prosody = Prosody::start(n2.s2s.expect("s2s on"), PROSODY_C2S, PROSODY_S2S, false);
    prosody.register("bob", "bob-pw");

    let out = federate(n3.c2s, prosody.c2s, "bob@prosody.localhost/fed").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "federation script failed:\n{stdout}\n{}\n--- prosody\n{}\n--- node 2\n{}\n--- node 3\n{}",
        String::from_utf8_lossy(&out.stderr),
        prosody.log(),
        n2.log(),
        n3.log()
    );
    // Prosody's stream came in on node 2; node 3 opened its own link out.
    assert!(n2.log().contains("dialback"), "node 2 took Prosody's link");
    assert!(
        n3.log().contains("outbound link ready"),
        "node 3 linked out"
    );
}

/// XEP-0288: Prosody offers a bidirectional link and Starling asks for it;
/// federation works with Prosody's bidi module on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidirectional_link_with_prosody() {
    let n = starling_node(1, None, BIDI_S2S);
    n.add_user("alice", "alice-pw");
    let prosody = Prosody::start(n.s2s.expect("s2s on"), BIDI_C2S, BIDI_S2S, true);
    prosody.register("bob", "bob-pw");
    let out = federate(n.c2s, prosody.c2s, "bob@prosody.localhost/fed").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "federation over a bidirectional link failed:\n{stdout}\n--- prosody\n{}\n--- starling\n{}",
        prosody.log(),
        n.log()
    );
    let log = n.log();
    assert!(log.contains("outbound link ready bidi=true"), "{log}");
    // (Whether Prosody then routes over it is its choice: to verify our
    // dialback key it connects to us and authenticates that connection
    // too, and uses it.)
}

/// A component hosted by the cluster is part of the federated domain: a
/// Prosody user's messages to `bot@echo.starling.localhost` cross the s2s
/// link into node 2 (Prosody's stream names the component's domain), go
/// to the component connected to node 1, and its answers leave node 1 on
/// an outbound link that authenticates as `echo.starling.localhost` with
/// dialback (Prosody verifies the key with node 2). The echo service on
/// `svc.starling.localhost`, hosted by the nodes themselves, answers the
/// same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosted_component_and_a_service_domain_are_reached_from_prosody() {
    let _turn = CLUSTER_TURN.lock().await;
    let secrets = format!("echo.starling.localhost={ECHO_SECRET}");
    let extra = [
        ("STARLING_COMPONENT_SECRETS", secrets.as_str()),
        ("STARLING_SERVICES_ECHO", "svc.starling.localhost"),
    ];
    let n1 = starling_node_with(1, None, COMP_S2S, &extra);
    let n2 = starling_node_with(2, Some(&n1), COMP_S2S, &extra);
    wait_members(&n1, SECRET, 2).await;
    let comp = n1.component.expect("component listener");
    let gateway =
        EchoComponent::start(comp, "echo.starling.localhost", ECHO_SECRET, || n1.log()).await;
    let prosody = Prosody::start(n2.s2s.expect("s2s on"), COMP_C2S, COMP_S2S, false);
    prosody.register("bob", "bob-pw");
    let out = ask_echo("bot@echo.starling.localhost").await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    drop(gateway);
    assert!(
        out.status.success() && text.matches("ECHO bot@echo.starling.localhost").count() == 3,
        "a Prosody user could not reach the hosted component:\n{text}\n{}\n--- prosody\n{}\n--- node 1\n{}\n--- node 2\n{}",
        String::from_utf8_lossy(&out.stderr),
        prosody.log(),
        n1.log(),
        n2.log()
    );
    // The answers left on a link authenticated as the component's domain.
    let log = n1.log();
    assert!(
        log.contains("local=echo.starling.localhost") && log.contains("outbound link ready"),
        "{log}"
    );
    // A service domain the cluster hosts itself is reached the same way.
    let out = ask_echo("bot@svc.starling.localhost").await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.matches("ECHO bot@svc.starling.localhost").count() == 3,
        "a Prosody user could not reach the hosted service:\n{text}\n--- prosody\n{}\n--- node 2\n{}",
        prosody.log(),
        n2.log()
    );
}

/// A Prosody user (bob) sends three chat messages to `to` and waits for
/// each echo (tests/interop/slixmpp_ask_echo.py).
async fn ask_echo(to: &'static str) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/interop/slixmpp_ask_echo.py"
            ))
            .args(["127.0.0.1", &COMP_C2S.to_string()])
            .args(["bob@prosody.localhost/fed", "bob-pw", to, "3"])
            .output()
            .expect("run python")
    })
    .await
    .expect("client task")
}

/// For the group-chat test.
const MUC_C2S: u16 = 16522;
const MUC_S2S: u16 = 16569;

/// XEP-0045 across servers: a Prosody user enters a Starling room (the
/// room's stanzas to it leave from the room's own domain), and a Starling
/// user enters a room on Prosody's MUC component.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_chat_with_prosody_both_ways() {
    let _turn = CLUSTER_TURN.lock().await;
    let routes = format!(
        "prosody.localhost=127.0.0.1:{MUC_S2S},conference.prosody.localhost=127.0.0.1:{MUC_S2S}"
    );
    let env = [
        ("STARLING_DOMAIN", "starling.localhost"),
        ("STARLING_S2S_VERIFY_CERTIFICATES", "false"),
        ("STARLING_S2S_STATIC_ROUTES", routes.as_str()),
        ("STARLING_LOG_LEVEL", "info,starling::transport::s2s=debug"),
    ];
    let n1 = cluster_node(1, None, SECRET, &env);
    let n2 = cluster_node(2, Some(&n1), SECRET, &env);
    wait_members(&n1, SECRET, 2).await;
    n1.add_user("alice", "alice-pw");
    let prosody = Prosody::start(n2.s2s.expect("s2s on"), MUC_C2S, MUC_S2S, false);
    prosody.register("bob", "bob-pw");
    let alice_at = n1.c2s.to_string();
    let bob_at = format!("127.0.0.1:{MUC_C2S}");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/interop/slixmpp_muc_federated.py"
            ))
            .args([
                "conference.starling.localhost",
                "conference.prosody.localhost",
            ])
            .args([
                alice_at.as_str(),
                "alice@starling.localhost/fed",
                "alice-pw",
            ])
            .args([bob_at.as_str(), "bob@prosody.localhost/fed", "bob-pw"])
            .output()
            .expect("run python")
    })
    .await
    .expect("client task");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && text.contains("ALL OK"),
        "group chat with Prosody failed:\n{text}\n{}\n--- prosody\n{}\n--- node 1\n{}\n--- node 2\n{}",
        String::from_utf8_lossy(&out.stderr),
        prosody.log(),
        n1.log(),
        n2.log()
    );
    for step in [
        "OK prosody user entered a starling room",
        "OK messages both ways in a starling room",
        "OK starling user in a room on prosody",
    ] {
        assert!(text.contains(step), "missing {step:?} in:\n{text}");
    }
}

const PEP_C2S: u16 = 16622;
const PEP_S2S: u16 = 16669;

/// XEP-0163 across servers: a Prosody user who is a Starling user's
/// contact hears of the Starling user's tune and avatar metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prosody_contact_hears_of_a_starling_users_pep() {
    let _turn = CLUSTER_TURN.lock().await;
    let routes = format!("prosody.localhost=127.0.0.1:{PEP_S2S}");
    let env = [
        ("STARLING_DOMAIN", "starling.localhost"),
        ("STARLING_S2S_VERIFY_CERTIFICATES", "false"),
        ("STARLING_S2S_STATIC_ROUTES", routes.as_str()),
    ];
    let n1 = cluster_node(1, None, SECRET, &env);
    let n2 = cluster_node(2, Some(&n1), SECRET, &env);
    wait_members(&n1, SECRET, 2).await;
    n1.add_user("alice", "alice-pw");
    let prosody = Prosody::start(n2.s2s.expect("s2s on"), PEP_C2S, PEP_S2S, false);
    prosody.register("bob", "bob-pw");
    let alice_at = n1.c2s.to_string();
    let bob_at = format!("127.0.0.1:{PEP_C2S}");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/interop/slixmpp_pep_federated.py"
            ))
            .args([
                alice_at.as_str(),
                "alice@starling.localhost/fed",
                "alice-pw",
            ])
            .args([bob_at.as_str(), "bob@prosody.localhost/fed", "bob-pw"])
            .output()
            .expect("run python")
    })
    .await
    .expect("client task");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && text.contains("ALL OK"),
        "PEP with Prosody failed:\n{text}\n{}\n--- prosody\n{}\n--- node 1\n{}\n--- node 2\n{}",
        String::from_utf8_lossy(&out.stderr),
        prosody.log(),
        n1.log(),
        n2.log()
    );
    for step in [
        "OK contacts across servers",
        "OK prosody user notified of a starling user's tune",
        "OK prosody user reads a starling user's node",
        "OK prosody user notified of avatar metadata",
    ] {
        assert!(text.contains(step), "missing {step:?} in:\n{text}");
    }
}
