//! Offline messages (XEP-0160) with delay stamps (XEP-0203) and a quota.
mod common;
use common::*;
use std::time::Duration;

#[tokio::test]
async fn stored_while_offline_delivered_at_initial_presence() {
    let s = Server::start();
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let mut a = Client::online(s.c2s, "alice", "pw", "r").await;
    // Enough of them that a reordering among their commits would show.
    const N: usize = 20;
    for i in 0..N {
        a.send(&format!("<message to='bob@localhost' type='chat' id='o{i}'><body>while you were out {i}</body></message>")).await;
    }
    // A headline is not kept; no error for any of them.
    a.send("<message to='bob@localhost' type='headline' id='h'><body>news</body></message>")
        .await;
    assert!(a.quiet_for(Duration::from_millis(300)).await);
    // Binding alone is not enough: initial presence with priority >= 0 is.
    let mut b = Client::login(s.c2s, "bob", "pw", "r").await;
    b.send("<presence><priority>-1</priority></presence>").await;
    b.stanza("presence").await;
    assert!(
        b.quiet_for(Duration::from_millis(300)).await,
        "negative priority gets nothing"
    );
    drop(b);
    let mut b = Client::login(s.c2s, "bob", "pw", "r").await;
    b.send("<presence/>").await;
    for i in 0..N {
        let m = b.wait_for(|e| e.name == "message").await;
        assert_eq!(m.attr("id"), Some(format!("o{i}").as_str()), "in order");
        assert_eq!(m.attr("from"), Some("alice@localhost/r"));
        let d = m.get_child("delay", "urn:xmpp:delay").expect("delay stamp");
        assert_eq!(d.attr("from"), Some("localhost"));
        let stamp = d.attr("stamp").unwrap();
        assert!(
            stamp.len() == 24 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{stamp}"
        );
    }
    // Delivered once: the next login finds nothing.
    drop(b);
    let mut b = Client::online(s.c2s, "bob", "pw", "again").await;
    assert!(b
        .collect_for(Duration::from_millis(300))
        .await
        .iter()
        .all(|e| e.name != "message"));
}

/// XEP-0160 order across the moment a user comes online: a message sent
/// while the stored ones are being handed over (or are still being
/// committed) arrives after them, never in between.
#[tokio::test]
async fn messages_sent_as_the_user_comes_online_stay_behind_stored_ones() {
    let s = Server::start();
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let mut a = Client::online(s.c2s, "alice", "pw", "r").await;
    const STORED: usize = 400;
    const LIVE: usize = 100;
    for i in 0..STORED {
        a.send(&format!(
            "<message to='bob@localhost' type='chat' id='m{i}'><body>{i}</body></message>"
        ))
        .await;
    }
    let mut b = Client::login(s.c2s, "bob", "pw", "r").await;
    // Initial presence and the next messages leave together: the flush of
    // the stored ones and the new ones race on the server.
    b.send("<presence/>").await;
    for i in STORED..STORED + LIVE {
        a.send(&format!(
            "<message to='bob@localhost' type='chat' id='m{i}'><body>{i}</body></message>"
        ))
        .await;
    }
    let mut ids = Vec::new();
    for _ in 0..STORED + LIVE {
        let m = b.wait_for(|e| e.name == "message").await;
        ids.push(m.attr("id").unwrap_or_default().to_string());
    }
    let want: Vec<String> = (0..STORED + LIVE).map(|i| format!("m{i}")).collect();
    if let Some(i) = (0..want.len()).find(|&i| ids[i] != want[i]) {
        panic!(
            "not in the order alice sent them: at {i}, {:?}",
            &ids[i..(i + 5).min(ids.len())]
        );
    }
    let after = b.collect_for(Duration::from_millis(500)).await;
    assert!(
        after.iter().all(|e| e.name != "message"),
        "twice: {after:?}"
    );
}

#[tokio::test]
async fn a_full_queue_answers_resource_constraint() {
    let s = Server::start_with(&[("STARLING_LIMITS_OFFLINE_MESSAGES", "2")]);
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let mut a = Client::online(s.c2s, "alice", "pw", "r").await;
    for i in 0..3 {
        a.send(&format!(
            "<message to='bob@localhost' type='chat' id='q{i}'><body>{i}</body></message>"
        ))
        .await;
    }
    let e = a.wait_for(|e| e.attr("id") == Some("q2")).await;
    assert_eq!(e.attr("type"), Some("error"));
    assert_eq!(stanza_condition(&e).as_deref(), Some("resource-constraint"));
    // The first two are kept, not lost.
    let mut b = Client::login(s.c2s, "bob", "pw", "r").await;
    b.send("<presence/>").await;
    assert_eq!(
        b.wait_for(|e| e.name == "message").await.attr("id"),
        Some("q0")
    );
    assert_eq!(
        b.wait_for(|e| e.name == "message").await.attr("id"),
        Some("q1")
    );
}

#[tokio::test]
async fn offline_messages_survive_a_restart() {
    let mut s = Server::start();
    s.add_user("alice", "pw");
    s.add_user("bob", "pw");
    let mut a = Client::online(s.c2s, "alice", "pw", "r").await;
    a.send("<message to='bob@localhost' type='chat' id='keep'><body>durable</body></message>")
        .await;
    // The iq round trip orders it after the message was stored.
    a.iq(iq_get(
        Some("localhost"),
        starling::base::xml::Element::new("ping", "urn:xmpp:ping"),
    ))
    .await;
    drop(a);
    assert!(s.terminate().success());
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    let s2 = Server::start_in(dir, &[]);
    let mut b = Client::login(s2.c2s, "bob", "pw", "r").await;
    b.send("<presence/>").await;
    assert_eq!(
        b.wait_for(|e| e.name == "message").await.attr("id"),
        Some("keep")
    );
}
