//! The message archive (XEP-0313) beside offline storage, operators'
//! purge, bad queries, and a server with the archive turned off. Paging,
//! filters and preferences are tested with slixmpp (interop_slixmpp.rs).
mod common;
use common::*;

const SID: &str = "urn:xmpp:sid:0";

#[tokio::test]
async fn an_offline_message_is_archived_and_delivered_with_its_archive_id() {
    let s = Server::start();
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let mut a = Client::online(s.c2s, "alice", "pw", "r").await;
    a.send(
        "<message to='bob@localhost' type='chat' id='o1'><body>while you were out</body></message>",
    )
    .await;
    // The sender's copy is in the sender's archive (a query waits for
    // the archive writes queued before it).
    let (sent, _) = mam_query(&mut a, "q1", "").await;
    assert_eq!(sent.len(), 1);
    let mut b = Client::online(s.c2s, "bob", "pw", "r").await;
    let m = b.wait_for(|e| e.name == "message").await;
    let sid = m
        .elements()
        .find(|e| e.name == "stanza-id" && e.ns == SID && e.attr("by") == Some("bob@localhost"))
        .and_then(|e| e.attr("id"))
        .expect("the offline copy carries bob's stanza-id")
        .to_string();
    let (got, fin) = mam_query(&mut b, "q2", "").await;
    assert_eq!(got, vec![(sid, "while you were out".to_string())]);
    let fin = fin.get_child("fin", MAM_NS).expect("fin");
    assert_eq!(fin.attr("complete"), Some("true"));
}

#[tokio::test]
async fn an_operator_purges_an_archive_and_bad_queries_get_errors() {
    let s = Server::start();
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let mut a = Client::online(s.c2s, "alice", "pw", "r").await;
    let mut b = Client::online(s.c2s, "bob", "pw", "r").await;
    for i in 0..3 {
        a.send(&format!(
            "<message to='bob@localhost/r' type='chat'><body>{i}</body></message>"
        ))
        .await;
        b.wait_for(|e| e.name == "message").await;
    }
    let (got, _) = mam_query(&mut b, "before", "").await;
    assert_eq!(got.len(), 3);

    for (form, cond) in [
        (
            "<x xmlns='jabber:x:data' type='submit'><field var='start'><value>yesterday</value></field></x>",
            "bad-request",
        ),
        (
            "<x xmlns='jabber:x:data' type='submit'><field var='colour'><value>red</value></field></x>",
            "feature-not-implemented",
        ),
        (
            "<set xmlns='http://jabber.org/protocol/rsm'><after>0000000000000001</after></set>",
            "item-not-found",
        ),
    ] {
        let (_, iq) = mam_query(&mut b, "bad", form).await;
        assert_eq!(iq.attr("type"), Some("error"), "{form}");
        let err = iq.get_child("error", "jabber:client").expect("error");
        assert!(err.elements().any(|e| e.name == cond), "{form}: {iq:?}");
    }

    let out = s.user_cmd(&["purge-archive", "bob"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "emptied the archive of bob@localhost\n"
    );
    let (got, _) = mam_query(&mut b, "after", "").await;
    assert!(got.is_empty(), "{got:?}");
    // Alice's own copies are hers.
    let (got, _) = mam_query(&mut a, "hers", "").await;
    assert_eq!(got.len(), 3);
    let missing = s.user_cmd(&["purge-archive", "nobody"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no account"));
}

#[tokio::test]
async fn with_the_archive_off_nothing_is_stamped_or_answered() {
    let s = Server::start_with(&[("STARLING_MAM_ENABLED", "false")]);
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let mut a = Client::online(s.c2s, "alice", "pw", "r").await;
    let mut b = Client::online(s.c2s, "bob", "pw", "r").await;
    a.send("<message to='bob@localhost/r' type='chat'><body>x</body></message>")
        .await;
    let m = b.wait_for(|e| e.name == "message").await;
    assert!(m.get_child("stanza-id", SID).is_none());
    let (_, iq) = mam_query(&mut b, "off", "").await;
    assert_eq!(iq.attr("type"), Some("error"));
}

#[tokio::test]
async fn the_contact_gets_only_its_own_id_and_a_note_to_self_is_kept_once() {
    let s = Server::start();
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let mut a = Client::online(s.c2s, "alice", "pw", "r").await;
    let mut b = Client::online(s.c2s, "bob", "pw", "r").await;
    a.send("<message to='bob@localhost/r' type='chat'><body>hi</body></message>")
        .await;
    let m = b.wait_for(|e| e.name == "message").await;
    let by: Vec<&str> = m
        .elements()
        .filter(|e| e.name == "stanza-id" && e.ns == SID)
        .filter_map(|e| e.attr("by"))
        .collect();
    assert_eq!(
        by,
        ["bob@localhost"],
        "XEP-0313 §3: the sender's id is not sent on"
    );
    a.send("<message to='alice@localhost' type='chat'><body>note to self</body></message>")
        .await;
    a.wait_for(|e| e.name == "message").await;
    let (got, _) = mam_query(&mut a, "self", "").await;
    let notes = got.iter().filter(|(_, b)| b == "note to self").count();
    assert_eq!(notes, 1, "{got:?}");
}
