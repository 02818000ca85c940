//! Group chat (XEP-0045) with slixmpp's XEP-0045 plugin: one node, and
//! three nodes with the occupants spread over them (the room lives on the
//! node its creator's join reached; the others reach it over the mesh).
mod common;
use common::*;
use starling::base::xml::Element;
use std::time::Duration;

const SECRET: &str = "muc-secret";
const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];

/// Run tests/interop/slixmpp_muc.py with each user on `nodes[i % len]`.
fn run_muc_script(nodes: &[&Server]) -> String {
    let mut args = vec![DOMAIN.to_string(), format!("conference.{DOMAIN}")];
    for (i, u) in USERS.iter().enumerate() {
        args.push(nodes[i % nodes.len()].c2s.to_string());
        args.push(u.to_string());
        args.push(format!("{u}-pw"));
    }
    run_interop(
        "slixmpp_muc.py",
        &args,
        nodes,
        Duration::from_secs(180),
        &[
            "OK room created",
            "OK configured",
            "OK entered",
            "OK nick conflict",
            "OK message to all",
            "OK room archive",
            "OK two devices one nick",
            "OK subject",
            "OK private message",
            "OK nick change",
            "OK self-ping",
            "OK rejoin",
            "OK disco",
            "OK invitation",
            "OK kick",
            "OK ban",
            "OK password",
            "OK leave",
            "OK destroy",
            "ALL OK",
        ],
    )
}

#[test]
fn slixmpp_group_chat_on_one_node() {
    let s = Server::start();
    for u in USERS {
        s.add_user(u, &format!("{u}-pw"));
    }
    run_muc_script(&[&s]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_group_chat_with_occupants_on_three_nodes() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = cluster_node(1, None, SECRET, &[]);
    let n2 = cluster_node(2, Some(&n1), SECRET, &[]);
    let n3 = cluster_node(3, Some(&n1), SECRET, &[]);
    wait_members(&n1, SECRET, 3).await;
    for u in USERS {
        n1.add_user(u, &format!("{u}-pw"));
    }
    // Accounts reach every node before the clients log in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = tokio::task::spawn_blocking(move || {
        let out = run_muc_script(&[&n1, &n2, &n3]);
        drop((n1, n2, n3));
        out
    })
    .await
    .expect("join");
    assert!(out.contains("ALL OK"));
}

const ROOM: &str = "failover@conference.localhost";
/// The failover tests send faster than an occupant's default allowance.
const NO_RATE: &[(&str, &str)] = &[("STARLING_SERVICES_MUC_MESSAGES_PER_SEC", "0")];
const MUC_NS: &str = "http://jabber.org/protocol/muc";
const MUC_USER_NS: &str = "http://jabber.org/protocol/muc#user";

/// Online on `s` (retrying while the account replicates), in the room
/// as `nick`; returns once its own presence (110) came back.
async fn in_room(s: &Server, user: &str, nick: &str) -> Client {
    let mut c = authed_retry(s, user, &format!("{user}-pw")).await;
    c.bind(Some("r")).await.expect("bind");
    c.send("<presence/>").await;
    c.send(&format!(
        "<presence to='{ROOM}/{nick}'><x xmlns='{MUC_NS}'/></presence>"
    ))
    .await;
    let own = format!("{ROOM}/{nick}");
    c.wait_for(|e| {
        e.name == "presence" && e.attr("from") == Some(own.as_str()) && has_status(e, "110")
    })
    .await;
    // The others' presence came before, the subject comes last: forgotten.
    c.wait_for(|e| e.name == "message" && e.get_child("subject", "jabber:client").is_some())
        .await;
    c.drain();
    c
}

fn has_status(e: &Element, code: &str) -> bool {
    e.get_child("x", MUC_USER_NS).is_some_and(|x| {
        x.elements()
            .any(|s| s.name == "status" && s.attr("code") == Some(code))
    })
}

fn body(e: &Element) -> Option<String> {
    e.get_child("body", "jabber:client").map(|b| b.text())
}

/// XEP-0045 rooms that survive their node: the room lives on node 1 (its
/// creator's join reached it first); kill -9 node 1 mid-conversation. The
/// room comes back on a surviving node from its replicated records, the
/// occupants on surviving nodes stay joined (their self-ping answers
/// success, XEP-0410) and see only the dead node's occupant leave (333),
/// and every message the room reflected to its sender (acknowledged) is
/// in the history a newcomer gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_survives_kill_9_of_its_node_with_its_history_and_occupants() {
    let _turn = CLUSTER_TURN.lock().await;
    let mut n1 = cluster_node(1, None, SECRET, NO_RATE);
    let n2 = cluster_node(2, Some(&n1), SECRET, NO_RATE);
    let n3 = cluster_node(3, Some(&n1), SECRET, NO_RATE);
    wait_members(&n1, SECRET, 3).await;
    for u in USERS {
        n1.add_user(u, &format!("{u}-pw"));
    }
    let _alice = in_room(&n1, "alice", "alice").await;
    let mut bob = in_room(&n2, "bob", "bob").await;
    let mut carol = in_room(&n3, "carol", "carol").await;

    // Acknowledged: reflected to bob.
    let mut acked = Vec::new();
    for i in 0..20 {
        let id = format!("m{i}");
        bob.send(&format!(
            "<message to='{ROOM}' type='groupchat' id='{id}'><body>before {i}</body></message>"
        ))
        .await;
        bob.wait_for(|e| e.name == "message" && e.attr("id") == Some(id.as_str()))
            .await;
        acked.push(format!("before {i}"));
    }
    carol
        .wait_for(|e| e.name == "message" && e.attr("id") == Some("m19"))
        .await;

    let killed = std::time::Instant::now();
    n1.kill9();

    // Bob stays joined: his self-ping answers success once the room is
    // back (bounded: 60 tries, a second each).
    let mut seen = Vec::new();
    let mut back = None;
    for i in 0..60 {
        bob.send(&format!(
            "<iq type='get' id='sp{i}' to='{ROOM}/bob'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
        let got = bob.collect_for(Duration::from_secs(1)).await;
        let ok = got.iter().any(|e| {
            e.name == "iq"
                && e.attr("type") == Some("result")
                && e.attr("id").is_some_and(|id| id.starts_with("sp"))
        });
        let refused = got.iter().find(|e| {
            e.name == "iq"
                && e.attr("type") == Some("error")
                && e.attr("id").is_some_and(|id| id.starts_with("sp"))
        });
        assert!(
            refused.is_none(),
            "self-ping refused after the room's node died: {refused:?}\n{}\n{}",
            n2.log(),
            n3.log()
        );
        seen.extend(got);
        if ok {
            back = Some(killed.elapsed());
            break;
        }
    }
    let back =
        back.unwrap_or_else(|| panic!("the room did not come back\n{}\n{}", n2.log(), n3.log()));
    println!("room back after {back:?} (self-ping answered)");

    // Alice (on the dead node) left, with 333; nobody else did.
    let alice_nick = format!("{ROOM}/alice");
    let left = |e: &Element| e.name == "presence" && e.attr("type") == Some("unavailable");
    if !seen
        .iter()
        .any(|e| left(e) && e.attr("from") == Some(alice_nick.as_str()))
    {
        let p = bob
            .wait_for(|e| left(e) && e.attr("from") == Some(alice_nick.as_str()))
            .await;
        seen.push(p);
    }
    let gone: Vec<&str> = seen
        .iter()
        .filter(|e| left(e))
        .filter_map(|e| e.attr("from"))
        .collect();
    assert_eq!(gone, [alice_nick.as_str()], "only alice left");
    assert!(seen
        .iter()
        .filter(|e| left(e))
        .all(|e| has_status(e, "333")));
    let p = carol
        .wait_for(|e| left(e) && e.attr("from") == Some(alice_nick.as_str()))
        .await;
    assert!(has_status(&p, "333"));

    // The conversation goes on.
    bob.send(&format!(
        "<message to='{ROOM}' type='groupchat' id='after'><body>after</body></message>"
    ))
    .await;
    bob.wait_for(|e| e.name == "message" && e.attr("id") == Some("after"))
        .await;
    acked.push("after".into());
    carol
        .wait_for(|e| e.name == "message" && e.attr("id") == Some("after"))
        .await;

    // A newcomer's history holds every acknowledged message, in order.
    let mut dave = authed_retry(&n3, "dave", "dave-pw").await;
    dave.bind(Some("r")).await.expect("bind");
    dave.send(&format!(
        "<presence to='{ROOM}/dave'><x xmlns='{MUC_NS}'/></presence>"
    ))
    .await;
    let mut history = Vec::new();
    loop {
        let e = dave.stanza("message").await;
        if e.get_child("subject", "jabber:client").is_some() {
            break;
        }
        if let Some(b) = body(&e) {
            history.push(b);
        }
    }
    assert_eq!(history, acked, "history after the failover");
    drop((n2, n3));
}

/// A drained node (SIGTERM, as in a rolling restart) hands its rooms over:
/// the occupants on other nodes stay joined and see nothing but the
/// drained node's own occupant leave, and every message reflected while
/// the room moved is delivered and in its history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_hands_its_rooms_over_unnoticed() {
    let _turn = CLUSTER_TURN.lock().await;
    let mut n1 = cluster_node(1, None, SECRET, NO_RATE);
    let n2 = cluster_node(2, Some(&n1), SECRET, NO_RATE);
    let n3 = cluster_node(3, Some(&n1), SECRET, NO_RATE);
    wait_members(&n1, SECRET, 3).await;
    for u in USERS {
        n1.add_user(u, &format!("{u}-pw"));
    }
    let _alice = in_room(&n1, "alice", "alice").await;
    let mut bob = in_room(&n2, "bob", "bob").await;
    let mut carol = in_room(&n3, "carol", "carol").await;
    let carol_nick = format!("{ROOM}/carol");
    bob.wait_for(|e| e.name == "presence" && e.attr("from") == Some(carol_nick.as_str()))
        .await;
    bob.drain();

    // Bob talks while node 1 drains and stops.
    let stop = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(150));
        let status = n1.terminate();
        (n1, status)
    });
    let mut reflected = Vec::new();
    for i in 0..40 {
        let id = format!("d{i}");
        bob.send(&format!(
            "<message to='{ROOM}' type='groupchat' id='{id}'><body>during {i}</body></message>"
        ))
        .await;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (n1, status) = stop.await.expect("join");
    assert!(status.success(), "node 1 did not drain cleanly: {status:?}");
    let mut seen = Vec::new();
    for i in 0..40 {
        let id = format!("d{i}");
        let m = bob
            .wait_for(|e| e.name == "message" && e.attr("id") == Some(id.as_str()))
            .await;
        assert!(
            m.attr("type") != Some("error"),
            "message {id} refused during the hand-over: {m:?}\n{}",
            n1.log()
        );
        reflected.push(body(&m).unwrap_or_default());
    }
    let mut got = Vec::new();
    while got.len() < reflected.len() {
        let m = carol
            .wait_for(|e| e.name == "message" && e.attr("id").is_some_and(|i| i.starts_with('d')))
            .await;
        got.push(body(&m).unwrap_or_default());
    }
    let mut sorted = got.clone();
    sorted.sort();
    let mut want = reflected.clone();
    want.sort();
    assert_eq!(sorted, want, "carol got every reflected message once");
    // Nobody but alice (whose node stopped) left; nobody was re-joined.
    seen.extend(bob.collect_for(Duration::from_millis(500)).await);
    let alice_nick = format!("{ROOM}/alice");
    let from_room =
        |e: &&Element| e.name == "presence" && e.attr("from").is_some_and(|f| f.starts_with(ROOM));
    for e in seen.iter().filter(from_room) {
        assert_eq!(
            e.attr("from"),
            Some(alice_nick.as_str()),
            "unexpected presence {e:?}"
        );
        assert_eq!(
            e.attr("type"),
            Some("unavailable"),
            "{e:?}\n{}\n{}",
            n1.log(),
            n2.log()
                .lines()
                .filter(|l| l.contains("alice") || l.contains("room") || l.contains("drain"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // Still joined where the room lives now.
    let r = bob
        .iq(starling::base::xml::parse_fragment(&format!(
            "<iq xmlns='jabber:client' type='get' to='{ROOM}/bob'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .expect("xml"))
        .await;
    assert_eq!(
        r.attr("type"),
        Some("result"),
        "self-ping after the drain: {r:?}"
    );
    // The history has them all.
    let mut dave = authed_retry(&n2, "dave", "dave-pw").await;
    dave.bind(Some("r")).await.expect("bind");
    dave.send(&format!(
        "<presence to='{ROOM}/dave'><x xmlns='{MUC_NS}'><history maxstanzas='100'/></x></presence>"
    ))
    .await;
    let mut history = Vec::new();
    loop {
        let e = dave.stanza("message").await;
        if e.get_child("subject", "jabber:client").is_some() {
            break;
        }
        if let Some(b) = body(&e) {
            history.push(b);
        }
    }
    let mut h = history.clone();
    h.sort();
    assert_eq!(h, want, "history after the hand-over");
    println!(
        "order kept for carol: {}; in history: {}",
        got == reflected,
        history == reflected
    );
    drop((n1, n2, n3));
}

/// Limits (XEP-0045 leaves them to the service): an occupant sending
/// faster than `[services] muc_messages_per_sec` (bursts of twice that)
/// gets `<resource-constraint/>` for the excess; what was taken is
/// reflected, and nothing is silently dropped.
#[tokio::test]
async fn an_occupant_over_its_message_rate_is_told_to_slow_down() {
    let s = Server::start_with(&[("STARLING_SERVICES_MUC_MESSAGES_PER_SEC", "5")]);
    s.add_user("alice", "alice-pw");
    let mut a = Client::online(s.c2s, "alice", "alice-pw", "r").await;
    a.send(&format!(
        "<presence to='limits@conference.localhost/alice'><x xmlns='{MUC_NS}'/></presence>"
    ))
    .await;
    a.wait_for(|e| e.name == "message" && e.get_child("subject", "jabber:client").is_some())
        .await;
    for i in 0..30 {
        a.send(&format!(
            "<message to='limits@conference.localhost' type='groupchat' id='q{i}'><body>{i}</body></message>"
        ))
        .await;
    }
    let (mut taken, mut refused) = (0, 0);
    while taken + refused < 30 {
        let m = a
            .wait_for(|e| e.name == "message" && e.attr("id").is_some_and(|i| i.starts_with('q')))
            .await;
        if m.attr("type") == Some("error") {
            assert_eq!(stanza_condition(&m).as_deref(), Some("resource-constraint"));
            refused += 1;
        } else {
            taken += 1;
        }
    }
    assert!(
        (10..30).contains(&taken),
        "taken {taken}, refused {refused}"
    );
    assert!(refused > 0);
}

/// The public room list covers every node's rooms (XEP-0045 §6.3, read
/// from the replicated records), and a persistent room that empties
/// leaves memory and comes back from its records, history and subject
/// included, when someone enters again (here through another node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_rooms_are_listed_cluster_wide_and_come_back_from_their_records() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = cluster_node(1, None, SECRET, &[]);
    let n2 = cluster_node(2, Some(&n1), SECRET, &[]);
    wait_members(&n1, SECRET, 2).await;
    for u in USERS {
        n1.add_user(u, &format!("{u}-pw"));
    }
    let room = "kept@conference.localhost";
    let mut alice = authed_retry(&n1, "alice", "alice-pw").await;
    alice.bind(Some("r")).await.expect("bind");
    alice
        .send(&format!(
            "<presence to='{room}/alice'><x xmlns='{MUC_NS}'/></presence>"
        ))
        .await;
    alice
        .wait_for(|e| e.name == "message" && e.get_child("subject", "jabber:client").is_some())
        .await;
    let form = "<x xmlns='jabber:x:data' type='submit'>\
        <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
        <field var='muc#roomconfig_roomname'><value>Kept</value></field>\
        <field var='muc#roomconfig_persistentroom'><value>1</value></field></x>";
    let r = alice
        .iq(starling::base::xml::parse_fragment(&format!(
            "<iq xmlns='jabber:client' type='set' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'>{form}</query></iq>"
        ))
        .expect("xml"))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    alice
        .send(&format!(
            "<message to='{room}' type='groupchat' id='s1'><subject>kept subject</subject></message>"
        ))
        .await;
    alice
        .send(&format!(
            "<message to='{room}' type='groupchat' id='k1'><body>kept message</body></message>"
        ))
        .await;
    alice
        .wait_for(|e| e.name == "message" && e.attr("id") == Some("k1"))
        .await;
    alice
        .send(&format!("<presence to='{room}/alice' type='unavailable'/>"))
        .await;
    alice
        .wait_for(|e| e.name == "presence" && e.attr("type") == Some("unavailable"))
        .await;
    // Listed, by its name, from the other node.
    let mut bob = authed_retry(&n2, "bob", "bob-pw").await;
    bob.bind(Some("r")).await.expect("bind");
    let items = bob
        .iq(starling::base::xml::parse_fragment(
            "<iq xmlns='jabber:client' type='get' to='conference.localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
        )
        .expect("xml"))
        .await;
    let listed: Vec<(String, String)> = items
        .get_child("query", "http://jabber.org/protocol/disco#items")
        .map(|q| {
            q.elements()
                .map(|i| {
                    (
                        i.attr("jid").unwrap_or("").to_string(),
                        i.attr("name").unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        listed.contains(&(room.to_string(), "Kept".to_string())),
        "{listed:?}"
    );
    // Entering again: the history and subject come from the records.
    bob.send(&format!(
        "<presence to='{room}/bob'><x xmlns='{MUC_NS}'/></presence>"
    ))
    .await;
    let mut bodies = Vec::new();
    let subject = loop {
        let e = bob.stanza("message").await;
        if let Some(s) = e.get_child("subject", "jabber:client") {
            break s.text();
        }
        bodies.extend(body(&e));
    };
    assert_eq!(bodies, ["kept message"]);
    assert_eq!(subject, "kept subject");
    drop((n1, n2));
}

/// XEP-0425 with slixmpp's plugin: a moderator retracts a message; every
/// occupant hears of it, the room's archive and a newcomer's history hold
/// a tombstone in its place; then a silenced occupant asks for voice
/// (XEP-0045 §7.13) and a moderator approves the form (§8.6)
/// (tests/interop/slixmpp_muc_moderation.py).
#[test]
fn slixmpp_moderates_a_message() {
    let s = Server::start();
    let mut args = vec![format!("conference.{DOMAIN}")];
    for u in ["alice", "bob", "carol"] {
        s.add_user(u, &format!("{u}-pw"));
        args.push(s.c2s.to_string());
        args.push(format!("{u}@{DOMAIN}"));
        args.push(format!("{u}-pw"));
    }
    run_interop(
        "slixmpp_muc_moderation.py",
        &args,
        &[&s],
        Duration::from_secs(90),
        &[
            "OK entered",
            "OK refused",
            "OK forged tombstone dropped",
            "OK retracted",
            "OK archive tombstone",
            "OK history",
            "OK voice request",
            "ALL OK",
        ],
    );
}

/// XEP-0045 §7.10 and §7.12 across two nodes (alice and carol on node 1,
/// bob on node 2; the room lives where alice created it): registering
/// reserves a nick and makes a member, the nick is refused to others
/// (entering, registering, changing nick), outlives the room leaving
/// memory, and `<remove/>` gives it back
/// (tests/interop/slixmpp_muc_registration.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_registers_a_nick_with_a_room() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = cluster_node(1, None, SECRET, &[]);
    let n2 = cluster_node(2, Some(&n1), SECRET, &[]);
    wait_members(&n1, SECRET, 2).await;
    let mut args = vec![format!("conference.{DOMAIN}")];
    for (u, n) in [("alice", &n1), ("bob", &n2), ("carol", &n1)] {
        n1.add_user(u, &format!("{u}-pw"));
        args.push(n.c2s.to_string());
        args.push(format!("{u}@{DOMAIN}"));
        args.push(format!("{u}-pw"));
    }
    // Accounts reach node 2 before the clients log in.
    drop(authed_retry(&n2, "bob", "bob-pw").await);
    tokio::task::spawn_blocking(move || {
        run_interop(
            "slixmpp_muc_registration.py",
            &args,
            &[&n1, &n2],
            Duration::from_secs(120),
            &[
                "OK form",
                "OK registered",
                "OK reserved",
                "OK kept",
                "OK refused",
                "OK removed",
                "ALL OK",
            ],
        );
        // "OK kept" checked the room after it had left memory.
        assert!(
            n1.log().contains("room restored from its records"),
            "the room never came back from its records"
        );
        drop((n1, n2));
    })
    .await
    .expect("join");
}

/// XEP-0045 limits and bad input with slixmpp's plugin
/// (tests/interop/slixmpp_muc_limits.py): rooms per user, occupants per
/// room, message rate, history length, forms with wrong types, an
/// affiliation for a malformed JID. Two nodes: alice on node 1, bob and
/// carol on node 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_meets_the_limits_and_bad_input() {
    let _turn = CLUSTER_TURN.lock().await;
    let env = [
        ("STARLING_SERVICES_MUC_MAX_ROOMS_PER_USER", "2"),
        ("STARLING_SERVICES_MUC_MESSAGES_PER_SEC", "3"),
        ("STARLING_SERVICES_MUC_HISTORY", "5"),
    ];
    let n1 = cluster_node(1, None, SECRET, &env);
    let n2 = cluster_node(2, Some(&n1), SECRET, &env);
    wait_members(&n1, SECRET, 2).await;
    let mut args = vec![format!("conference.{DOMAIN}")];
    for (u, n) in [("alice", &n1), ("bob", &n2), ("carol", &n2)] {
        n1.add_user(u, &format!("{u}-pw"));
        args.push(n.c2s.to_string());
        args.push(format!("{u}@{DOMAIN}"));
        args.push(format!("{u}-pw"));
    }
    drop(authed_retry(&n2, "carol", "carol-pw").await);
    tokio::task::spawn_blocking(move || {
        run_interop(
            "slixmpp_muc_limits.py",
            &args,
            &[&n1, &n2],
            Duration::from_secs(120),
            &[
                "OK rooms per user",
                "OK occupants per room",
                "OK forms",
                "OK affiliations",
                "OK message rate",
                "ALL OK",
            ],
        );
        drop((n1, n2));
    })
    .await
    .expect("join");
}
