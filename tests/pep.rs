//! Personal eventing (XEP-0163) and publish-subscribe (XEP-0060) with
//! client libraries we did not write: an OMEMO conversation (XEP-0384)
//! between two slixmpp-omemo clients, on one node and on two nodes of a
//! three-node cluster; avatars, a user tune, bookmarks 2, publish options,
//! capabilities-filtered notifications, access and last items with
//! slixmpp's plugins (tests/interop/slixmpp_pep.py), users spread over a
//! cluster.
mod common;
use common::*;
use std::time::Duration;

const SECRET: &str = "pep-secret";

const OMEMO_STEPS: &[&str] = &[
    "OK contacts",
    "OK device lists published",
    "OK pep advertised",
    "OK alice to bob decrypted",
    "OK bob to alice decrypted",
    "OK a conversation",
    "OK device list notifications",
    "ALL OK",
];

fn omemo_args(a: &Server, b: &Server) -> Vec<String> {
    vec![
        DOMAIN.into(),
        a.c2s.to_string(),
        "alice".into(),
        "alice-pw".into(),
        b.c2s.to_string(),
        "bob".into(),
        "bob-pw".into(),
    ]
}

#[test]
fn an_omemo_conversation_on_one_node() {
    let s = Server::start();
    s.add_user("alice", "alice-pw");
    s.add_user("bob", "bob-pw");
    run_interop(
        "slixmpp_omemo_chat.py",
        &omemo_args(&s, &s),
        &[&s],
        Duration::from_secs(180),
        OMEMO_STEPS,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_omemo_conversation_between_two_nodes_of_three() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = cluster_node(1, None, SECRET, &[]);
    let n2 = cluster_node(2, Some(&n1), SECRET, &[]);
    let n3 = cluster_node(3, Some(&n1), SECRET, &[]);
    wait_members(&n1, SECRET, 3).await;
    n1.add_user("alice", "alice-pw");
    n1.add_user("bob", "bob-pw");
    // Accounts reach every node before the clients log in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::spawn_blocking(move || {
        run_interop(
            "slixmpp_omemo_chat.py",
            &omemo_args(&n2, &n3),
            &[&n1, &n2, &n3],
            Duration::from_secs(180),
            OMEMO_STEPS,
        );
        drop((n1, n2, n3));
    })
    .await
    .expect("join");
}

const PEP_STEPS: &[&str] = &[
    "OK contacts",
    "OK avatar",
    "OK avatar conversion",
    "OK tune and +notify filtering",
    "OK bookmarks",
    "OK precondition",
    "OK retract",
    "OK node lifecycle",
    "OK bookmarks conversion",
    "OK bookmarks on the legacy PEP node",
    "OK access",
    "OK last item on login",
    "ALL OK",
];

fn pep_args(nodes: &[&Server]) -> Vec<String> {
    let mut args = vec![DOMAIN.to_string()];
    for (i, u) in ["alice", "bob", "carol", "dave"].iter().enumerate() {
        args.push(nodes[i % nodes.len()].c2s.to_string());
        args.push(u.to_string());
        args.push(format!("{u}-pw"));
    }
    args
}

#[test]
fn avatars_tunes_and_bookmarks_on_one_node() {
    let s = Server::start();
    for u in ["alice", "bob", "carol", "dave"] {
        s.add_user(u, &format!("{u}-pw"));
    }
    run_interop(
        "slixmpp_pep.py",
        &pep_args(&[&s]),
        &[&s],
        Duration::from_secs(180),
        PEP_STEPS,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avatars_tunes_and_bookmarks_across_three_nodes() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = cluster_node(1, None, SECRET, &[]);
    let n2 = cluster_node(2, Some(&n1), SECRET, &[]);
    let n3 = cluster_node(3, Some(&n1), SECRET, &[]);
    wait_members(&n1, SECRET, 3).await;
    for u in ["alice", "bob", "carol", "dave"] {
        n1.add_user(u, &format!("{u}-pw"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::spawn_blocking(move || {
        run_interop(
            "slixmpp_pep.py",
            &pep_args(&[&n1, &n2, &n3]),
            &[&n1, &n2, &n3],
            Duration::from_secs(180),
            PEP_STEPS,
        );
        drop((n1, n2, n3));
    })
    .await
    .expect("join");
}

const PUBSUB_STEPS: &[&str] = &[
    "OK node created and listed",
    "OK subscribers told of each publish",
    "OK publisher affiliation",
    "OK retract and purge",
    "OK affiliations",
    "OK node deleted",
    "ALL OK",
];

/// The service at pubsub.DOMAIN, its users on three nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pubsub_node_lifecycle_across_three_nodes() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = cluster_node(1, None, SECRET, &[]);
    let n2 = cluster_node(2, Some(&n1), SECRET, &[]);
    let n3 = cluster_node(3, Some(&n1), SECRET, &[]);
    wait_members(&n1, SECRET, 3).await;
    let users = ["alice", "bob", "carol"];
    for u in users {
        n1.add_user(u, &format!("{u}-pw"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::spawn_blocking(move || {
        let nodes = [&n1, &n2, &n3];
        let mut args = vec![DOMAIN.to_string()];
        for (i, u) in users.iter().enumerate() {
            args.push(nodes[i].c2s.to_string());
            args.push(u.to_string());
            args.push(format!("{u}-pw"));
        }
        run_interop(
            "slixmpp_pubsub.py",
            &args,
            &nodes,
            Duration::from_secs(180),
            PUBSUB_STEPS,
        );
        drop((n1, n2, n3));
    })
    .await
    .expect("join");
}

/// An iq built from XML text.
fn iq(xml: &str) -> starling::base::xml::Element {
    starling::base::xml::parse_fragment(xml).expect("test iq parses")
}

async fn online_on(s: &Server, user: &str) -> Client {
    let mut c = authed_retry(s, user, &format!("{user}-pw")).await;
    c.bind(Some("r")).await.expect("bind");
    c.send("<presence/>").await;
    c
}

/// Items outlive the node they were published on: a PEP item and a
/// pubsub.DOMAIN item published on node 2 are read on the others after
/// node 2 is killed with SIGKILL, and a new publish there reaches a
/// subscriber on another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_outlive_a_killed_node() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = cluster_node(1, None, SECRET, &[]);
    let mut n2 = cluster_node(2, Some(&n1), SECRET, &[]);
    let n3 = cluster_node(3, Some(&n1), SECRET, &[]);
    wait_members(&n1, SECRET, 3).await;
    for u in ["alice", "bob"] {
        n1.add_user(u, &format!("{u}-pw"));
    }
    let mut alice = online_on(&n2, "alice").await;
    let open = "<publish-options><x xmlns='jabber:x:data' type='submit'>\
        <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
        <field var='pubsub#access_model'><value>open</value></field></x></publish-options>";
    let r = alice
        .iq(iq(&format!(
            "<iq type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
             <publish node='urn:xmpp:status'><item id='current'><status xmlns='urn:xmpp:status'>\
             kept</status></item></publish>{open}</pubsub></iq>"
        )))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let r = alice
        .iq(iq("<iq type='set' to='pubsub.localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
             <create node='board'/></pubsub></iq>"))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let r = alice
        .iq(iq("<iq type='set' to='pubsub.localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
             <publish node='board'><item id='first'><note xmlns='urn:example:board'>one</note></item>\
             </publish></pubsub></iq>"))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    n2.kill9();
    drop(alice);

    let mut bob = online_on(&n3, "bob").await;
    let r = bob
        .iq(iq("<iq type='get' to='alice@localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
             <items node='urn:xmpp:status'/></pubsub></iq>"))
        .await;
    assert!(
        r.to_xml("").contains("kept"),
        "the PEP item after node 2 died: {r:?}"
    );
    let r = bob
        .iq(iq("<iq type='get' to='pubsub.localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
             <items node='board'/></pubsub></iq>"))
        .await;
    assert!(
        r.to_xml("").contains("one"),
        "the service item after node 2 died: {r:?}"
    );
    let r = bob
        .iq(iq("<iq type='set' to='pubsub.localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
             <subscribe node='board' jid='bob@localhost/r'/></pubsub></iq>"))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    // The last item comes on subscribing (§6.1.7).
    let last = bob
        .wait_for(|e| e.name == "message" && e.to_xml("").contains("first"))
        .await;
    assert_eq!(last.attr("from"), Some("pubsub.localhost"));

    // Alice again, on node 1 now: her publish reaches bob on node 3.
    let mut alice = online_on(&n1, "alice").await;
    let r = alice
        .iq(iq("<iq type='set' to='pubsub.localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
             <publish node='board'><item id='second'><note xmlns='urn:example:board'>two</note></item>\
             </publish></pubsub></iq>"))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let told = tokio::time::timeout(
        WAIT,
        bob.wait_for(|e| e.name == "message" && e.to_xml("").contains("second")),
    )
    .await
    .expect("bob told of the new item");
    assert!(told.to_xml("").contains("urn:example:board"));
    drop((n1, n3));
}

/// An account's disco#items are its PEP nodes, only those the asker may
/// read (XEP-0060 §5.2); a node's disco#info names it a leaf (§5.3), and
/// one the asker may not read is not found.
#[tokio::test]
async fn an_accounts_items_are_the_pep_nodes_the_asker_may_read() {
    let s = Server::start();
    for u in ["alice", "bob"] {
        s.add_user(u, &format!("{u}-pw"));
    }
    let mut alice = Client::online(s.c2s, "alice", "alice-pw", "r").await;
    let mut bob = Client::online(s.c2s, "bob", "bob-pw", "r").await;
    for (node, access) in [("urn:xmpp:status", "open"), ("secret", "whitelist")] {
        let r = alice
            .iq(iq(&format!(
                "<iq type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
                 <publish node='{node}'><item id='current'><x xmlns='urn:example'/></item></publish>\
                 <publish-options><x xmlns='jabber:x:data' type='submit'>\
                 <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
                 <field var='pubsub#access_model'><value>{access}</value></field></x></publish-options>\
                 </pubsub></iq>"
            )))
            .await;
        assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    }
    const ITEMS: &str = "http://jabber.org/protocol/disco#items";
    const INFO: &str = "http://jabber.org/protocol/disco#info";
    let nodes = |r: &starling::base::xml::Element| {
        let q = r.get_child("query", ITEMS).expect("items");
        let mut n: Vec<(String, String)> = q
            .elements()
            .map(|i| {
                (
                    i.attr("jid").unwrap_or_default().to_string(),
                    i.attr("node").unwrap_or_default().to_string(),
                )
            })
            .collect();
        n.sort();
        n
    };
    let get_items = "<iq type='get' to='alice@localhost'>\
        <query xmlns='http://jabber.org/protocol/disco#items'/></iq>";
    let own = nodes(&alice.iq(iq(get_items)).await);
    let a = "alice@localhost".to_string();
    assert_eq!(
        own,
        [
            (a.clone(), "secret".into()),
            (a.clone(), "urn:xmpp:status".into())
        ]
    );
    let seen = nodes(&bob.iq(iq(get_items)).await);
    assert_eq!(seen, [(a.clone(), "urn:xmpp:status".to_string())]);
    let info = |node: &str| {
        format!(
            "<iq type='get' to='alice@localhost'>\
             <query xmlns='http://jabber.org/protocol/disco#info' node='{node}'/></iq>"
        )
    };
    let r = bob.iq(iq(&info("urn:xmpp:status"))).await;
    let q = r.get_child("query", INFO).expect("node info");
    assert_eq!(q.attr("node"), Some("urn:xmpp:status"));
    let id = q.get_child("identity", INFO).expect("identity");
    assert_eq!(
        (id.attr("category"), id.attr("type")),
        (Some("pubsub"), Some("leaf"))
    );
    let r = bob.iq(iq(&info("secret"))).await;
    assert_eq!(stanza_condition(&r).as_deref(), Some("item-not-found"));
    let r = alice.iq(iq(&info("secret"))).await;
    assert_eq!(
        r.attr("type"),
        Some("result"),
        "the owner sees its node: {r:?}"
    );
}

/// Bookmarks carry room passwords: a legacy `storage:bookmarks` PEP node
/// an old client published without options (so contacts may read it) is
/// not written with the rooms of the bookmarks node (XEP-0402 §5.2 sync
/// stops there), while one the owner alone reads follows.
#[tokio::test]
async fn bookmarks_are_not_copied_into_a_node_contacts_read() {
    let s = Server::start();
    s.add_user("alice", "alice-pw");
    let mut alice = Client::online(s.c2s, "alice", "alice-pw", "r").await;
    let publish = |node: &str, id: &str, payload: &str, options: &str| {
        format!(
            "<iq type='set'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
             <publish node='{node}'><item id='{id}'>{payload}</item></publish>{options}\
             </pubsub></iq>"
        )
    };
    // An old client, no publish options: the PEP default, presence access.
    let r = alice
        .iq(iq(&publish(
            "storage:bookmarks",
            "current",
            "<storage xmlns='storage:bookmarks'>\
             <conference jid='open@conference.localhost' autojoin='true'/></storage>",
            "",
        )))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let whitelist = "<publish-options><x xmlns='jabber:x:data' type='submit'>\
        <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
        <field var='pubsub#access_model'><value>whitelist</value></field>\
        <field var='pubsub#persist_items'><value>true</value></field>\
        <field var='pubsub#send_last_published_item'><value>never</value></field>\
        <field var='pubsub#max_items'><value>max</value></field></x></publish-options>";
    let r = alice
        .iq(iq(&publish(
            "urn:xmpp:bookmarks:1",
            "secret@conference.localhost",
            "<conference xmlns='urn:xmpp:bookmarks:1' autojoin='true'>\
             <password>hunter2</password></conference>",
            whitelist,
        )))
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let get = |node: &str| {
        format!(
            "<iq type='get'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
             <items node='{node}'/></pubsub></iq>"
        )
    };
    let legacy = alice.iq(iq(&get("storage:bookmarks"))).await.to_xml("");
    assert!(legacy.contains("open@conference.localhost"), "{legacy}");
    assert!(
        !legacy.contains("hunter2") && !legacy.contains("secret@"),
        "a password reached a node contacts read: {legacy}"
    );
    // The bookmarks node (owner-only) did follow the old client's list.
    let new = alice.iq(iq(&get("urn:xmpp:bookmarks:1"))).await.to_xml("");
    assert!(
        new.contains("open@conference.localhost") && new.contains("secret@"),
        "{new}"
    );
}
