//! Server modules: disco (XEP-0030), ping (XEP-0199), version (XEP-0092),
//! in-band registration (XEP-0077).
mod common;
use common::*;
use starling::base::xml::Element;

const REG: &str = "jabber:iq:register";

#[tokio::test]
async fn disco_ping_version() {
    let s = Server::start();
    s.add_user("alice", "pw");
    let mut a = Client::online(s.c2s, "alice", "pw", "desk").await;
    let info = a
        .iq(iq_get(
            Some("localhost"),
            Element::new("query", "http://jabber.org/protocol/disco#info"),
        ))
        .await;
    assert_eq!(info.attr("type"), Some("result"));
    assert_eq!(info.attr("from"), Some("localhost"));
    let q = info
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .unwrap();
    let id = q
        .get_child("identity", "http://jabber.org/protocol/disco#info")
        .unwrap();
    assert_eq!(
        (id.attr("category"), id.attr("type")),
        (Some("server"), Some("im"))
    );
    let mut features: Vec<&str> = q
        .elements()
        .filter(|e| e.name == "feature")
        .filter_map(|e| e.attr("var"))
        .collect();
    features.sort();
    // Exactly what is implemented.
    let expected = [
        "http://jabber.org/protocol/commands",
        "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/disco#items",
        "jabber:iq:last",
        "jabber:iq:private",
        "jabber:iq:register",
        "jabber:iq:version",
        "msgoffline",
        "urn:xmpp:blocking",
        "urn:xmpp:carbons:2",
        "urn:xmpp:ping",
        "urn:xmpp:reporting:1",
        "urn:xmpp:time",
        "vcard-temp",
    ];
    assert_eq!(features, expected);
    let items = a
        .iq(iq_get(
            Some("localhost"),
            Element::new("query", "http://jabber.org/protocol/disco#items"),
        ))
        .await;
    assert_eq!(items.attr("type"), Some("result"));
    let node = a
        .iq(iq_get(
            Some("localhost"),
            Element::new("query", "http://jabber.org/protocol/disco#info").with_attr("node", "x"),
        ))
        .await;
    assert_eq!(stanza_condition(&node).as_deref(), Some("item-not-found"));
    let mine = a
        .iq(iq_get(
            None,
            Element::new("query", "http://jabber.org/protocol/disco#info"),
        ))
        .await;
    let q = mine
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .unwrap();
    assert_eq!(
        q.get_child("identity", "http://jabber.org/protocol/disco#info")
            .unwrap()
            .attr("category"),
        Some("account")
    );
    // The archive is the account's (XEP-0313 §7).
    let mut account: Vec<&str> = q
        .elements()
        .filter(|e| e.name == "feature")
        .filter_map(|e| e.attr("var"))
        .collect();
    account.sort();
    // The archive's, and the PEP service's (XEP-0163 §6, with XEP-0402's
    // and XEP-0398's conversions).
    let (pubsub, other): (Vec<&str>, Vec<&str>) = account.iter().partition(|f| {
        f.starts_with("http://jabber.org/protocol/pubsub")
            || **f == "urn:xmpp:bookmarks:1#compat"
            || **f == "urn:xmpp:bookmarks:1#compat-pep"
            || **f == "urn:xmpp:pep-vcard-conversion:0"
    });
    assert_eq!(
        other,
        [
            "http://jabber.org/protocol/disco#info",
            "urn:xmpp:mam:2",
            "urn:xmpp:mam:2#extended",
            // XEP-0357 §5: the account offers push.
            "urn:xmpp:push:0",
            "urn:xmpp:sid:0"
        ]
    );
    assert!(pubsub.contains(&"http://jabber.org/protocol/pubsub#publish-options"));
    assert!(pubsub.contains(&"http://jabber.org/protocol/pubsub#config-node-max"));
    assert!(q.elements().any(|e| e.name == "identity"
        && e.attr("category") == Some("pubsub")
        && e.attr("type") == Some("pep")));

    let pong = a
        .iq(iq_get(
            Some("localhost"),
            Element::new("ping", "urn:xmpp:ping"),
        ))
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
    assert!(pong.elements().next().is_none());

    let v = a
        .iq(iq_get(
            Some("localhost"),
            Element::new("query", "jabber:iq:version"),
        ))
        .await;
    let q = v.get_child("query", "jabber:iq:version").unwrap();
    assert_eq!(
        q.get_child("name", "jabber:iq:version").unwrap().text(),
        "Starling"
    );
    assert_eq!(
        q.get_child("version", "jabber:iq:version").unwrap().text(),
        env!("CARGO_PKG_VERSION")
    );
}

async fn pre_auth_stream(s: &Server) -> (Client, Element) {
    let mut c = Client::connect(s.c2s).await;
    c.open().await;
    let mut c = c.starttls().await;
    let f = c.open().await;
    (c, f)
}

fn register_set(user: &str, pw: &str) -> Element {
    Element::new("iq", "jabber:client")
        .with_attr("type", "set")
        .with_child(
            Element::new("query", REG)
                .with_child(Element::new("username", REG).with_text(user))
                .with_child(Element::new("password", REG).with_text(pw)),
        )
}

#[tokio::test]
async fn registration_closed_by_default() {
    let s = Server::start();
    let (mut c, f) = pre_auth_stream(&s).await;
    assert!(f
        .get_child("register", "http://jabber.org/features/iq-register")
        .is_none());
    let r = c.iq(register_set("eve", "pw")).await;
    assert_eq!(stanza_condition(&r).as_deref(), Some("service-unavailable"));
    let out = s.user_cmd(&["list"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("eve"));
}

#[tokio::test]
async fn register_change_password_cancel() {
    let s = Server::start_with(&[("STARLING_REGISTRATION_ALLOW", "true")]);
    s.add_user("taken", "pw");
    let (mut c, f) = pre_auth_stream(&s).await;
    assert!(f
        .get_child("register", "http://jabber.org/features/iq-register")
        .is_some());
    let form = c.iq(iq_get(None, Element::new("query", REG))).await;
    let q = form.get_child("query", REG).expect("form");
    assert!(q.get_child("username", REG).is_some() && q.get_child("password", REG).is_some());
    let r = c.iq(register_set("taken", "x")).await;
    assert_eq!(stanza_condition(&r).as_deref(), Some("conflict"));
    let r = c
        .iq(Element::new("iq", "jabber:client")
            .with_attr("type", "set")
            .with_child(
                Element::new("query", REG)
                    .with_child(Element::new("username", REG).with_text("nopw")),
            ))
        .await;
    assert_eq!(stanza_condition(&r).as_deref(), Some("not-acceptable"));
    let r = c.iq(register_set("bad@name", "x")).await;
    assert_eq!(stanza_condition(&r).as_deref(), Some("jid-malformed"));
    let r = c.iq(register_set("newbie", "first-pw")).await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    // Same stream goes on to log in with the new account.
    c.auth_scram("SCRAM-SHA-256", "newbie", "first-pw")
        .await
        .expect("login as the new account");

    // Change the password while logged in.
    let mut n = Client::online(s.c2s, "newbie", "first-pw", "r").await;
    let r = n.iq(register_set("someoneelse", "x")).await;
    assert_eq!(stanza_condition(&r).as_deref(), Some("not-allowed"));
    let r = n.iq(register_set("newbie", "second-pw")).await;
    assert_eq!(r.attr("type"), Some("result"));
    let (mut c, _) = pre_auth_stream(&s).await;
    assert_eq!(
        c.auth_scram("SCRAM-SHA-256", "newbie", "first-pw").await,
        Err("not-authorized".into())
    );
    let mut other = Client::online(s.c2s, "newbie", "second-pw", "other").await;

    // Cancel: the reply, then the stream ends; other sessions end too.
    let r = n
        .iq(Element::new("iq", "jabber:client")
            .with_attr("type", "set")
            .with_child(Element::new("query", REG).with_child(Element::new("remove", REG))))
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    assert_eq!(n.stream_error().await, "not-authorized");
    assert_eq!(other.stream_error().await, "not-authorized");
    let (mut c, _) = pre_auth_stream(&s).await;
    assert_eq!(
        c.auth_scram("SCRAM-SHA-256", "newbie", "second-pw").await,
        Err("not-authorized".into())
    );
}

/// One address registers at most `[registration] per_address_per_hour`
/// accounts; failed attempts do not count.
#[tokio::test]
async fn registration_is_limited_per_address() {
    let s = Server::start_with(&[
        ("STARLING_REGISTRATION_ALLOW", "true"),
        ("STARLING_REGISTRATION_PER_ADDRESS_PER_HOUR", "2"),
    ]);
    let (mut c, _) = pre_auth_stream(&s).await;
    let r = c.iq(register_set("bad@name", "x")).await;
    assert_eq!(stanza_condition(&r).as_deref(), Some("jid-malformed"));
    for user in ["first", "second"] {
        let r = c.iq(register_set(user, "pw")).await;
        assert_eq!(r.attr("type"), Some("result"), "{user}: {r:?}");
    }
    let (mut c, _) = pre_auth_stream(&s).await;
    let r = c.iq(register_set("third", "pw")).await;
    assert_eq!(
        stanza_condition(&r).as_deref(),
        Some("resource-constraint"),
        "{r:?}"
    );
    let out = s.user_cmd(&["list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("second") && !listed.contains("third"),
        "{listed}"
    );
}

/// XEP-0030 §4: the server's disco#items lists the services it hosts (the
/// external components configured for the cluster, group chat and the
/// other hosted services), so clients find them; an account's items stay
/// empty.
#[tokio::test]
async fn disco_items_lists_the_hosted_components() {
    let s = Server::start_with(&[
        (
            "STARLING_COMPONENT_SECRETS",
            "irc.localhost=one-secret,gw.localhost=another-secret",
        ),
        ("STARLING_SERVICES_ECHO", "echo.localhost"),
    ]);
    s.add_user("alice", "pw");
    let mut a = Client::online(s.c2s, "alice", "pw", "desk").await;
    let items = a
        .iq(iq_get(
            Some("localhost"),
            Element::new("query", "http://jabber.org/protocol/disco#items"),
        ))
        .await;
    assert_eq!(items.attr("type"), Some("result"), "{items:?}");
    let q = items
        .get_child("query", "http://jabber.org/protocol/disco#items")
        .expect("query");
    let jids: Vec<&str> = q.elements().filter_map(|i| i.attr("jid")).collect();
    assert_eq!(
        jids,
        [
            "conference.localhost",
            "echo.localhost",
            "gw.localhost",
            "irc.localhost",
            "pubsub.localhost",
            "upload.localhost"
        ]
    );
    let mine = a
        .iq(iq_get(
            None,
            Element::new("query", "http://jabber.org/protocol/disco#items"),
        ))
        .await;
    let q = mine
        .get_child("query", "http://jabber.org/protocol/disco#items")
        .expect("query");
    assert_eq!(q.elements().count(), 0);
}

/// A hosted service domain (`[services] echo`) answers a local user: its
/// disco#info comes from the service's declaration, it answers pings, and
/// the echo service answers a chat message from the addressed entity.
#[tokio::test]
async fn a_hosted_service_domain_answers_local_users() {
    let s = Server::start_with(&[("STARLING_SERVICES_ECHO", "echo.localhost")]);
    s.add_user("alice", "pw");
    let mut a = Client::online(s.c2s, "alice", "pw", "desk").await;
    let info = a
        .iq(iq_get(
            Some("echo.localhost"),
            Element::new("query", "http://jabber.org/protocol/disco#info"),
        ))
        .await;
    assert_eq!(info.attr("type"), Some("result"), "{info:?}");
    assert_eq!(info.attr("from"), Some("echo.localhost"));
    let q = info
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .expect("query");
    let identity = q.elements().next().expect("identity");
    assert_eq!(identity.attr("category"), Some("component"));
    let ping = a
        .iq(iq_get(
            Some("echo.localhost"),
            Element::new("ping", "urn:xmpp:ping"),
        ))
        .await;
    assert_eq!(ping.attr("type"), Some("result"), "{ping:?}");
    a.send("<message to='bot@echo.localhost' type='chat' id='e1'><body>hello</body></message>")
        .await;
    let m = a.wait_for(|e| e.name == "message").await;
    assert_eq!(m.attr("from"), Some("bot@echo.localhost"));
    assert_eq!(m.attr("id"), Some("e1"));
    assert_eq!(
        m.get_child("body", "jabber:client").map(|b| b.text()),
        Some("echo: hello".to_string())
    );
    // An iq the service does not handle is refused, not dropped.
    let other = a
        .iq(iq_get(
            Some("echo.localhost"),
            Element::new("query", "jabber:iq:version"),
        ))
        .await;
    assert_eq!(
        stanza_condition(&other).as_deref(),
        Some("service-unavailable")
    );
}

/// XEP-0115 §5.1, written out here apart from the server's code: the
/// verification string of a disco#info answer.
fn caps_verification(q: &Element) -> String {
    let mut s = String::new();
    let mut ids: Vec<String> = q
        .elements()
        .filter(|e| e.name == "identity")
        .map(|e| {
            let a = |n| e.attr(n).unwrap_or("");
            format!(
                "{}/{}/{}/{}<",
                a("category"),
                a("type"),
                a("xml:lang"),
                a("name")
            )
        })
        .collect();
    ids.sort();
    s.extend(ids);
    let mut features: Vec<String> = q
        .elements()
        .filter(|e| e.name == "feature")
        .map(|e| format!("{}<", e.attr("var").unwrap_or("")))
        .collect();
    features.sort();
    s.extend(features);
    for x in q.elements().filter(|e| e.name == "x") {
        let values = |f: &Element| {
            let mut v: Vec<String> = f
                .elements()
                .filter(|v| v.name == "value")
                .map(|v| v.text())
                .collect();
            v.sort();
            v
        };
        let mut fields: Vec<(String, Vec<String>)> = Vec::new();
        for f in x.elements().filter(|e| e.name == "field") {
            let var = f.attr("var").unwrap_or("").to_string();
            if var == "FORM_TYPE" {
                s.push_str(&format!("{}<", values(f).join("")));
            } else {
                fields.push((var, values(f)));
            }
        }
        fields.sort();
        for (var, vs) in fields {
            s.push_str(&format!("{var}<"));
            for v in vs {
                s.push_str(&format!("{v}<"));
            }
        }
    }
    s
}

/// The server names its capabilities in its stream features (XEP-0115
/// §6.3), before and after login; the hash is that of its disco#info
/// answer, which carries the contact addresses (XEP-0157) from the
/// settings; a query for `node#ver` answers the same.
#[tokio::test]
async fn server_capabilities_and_contact_addresses() {
    use base64::Engine;
    use sha1::Digest;
    let s = Server::start_with(&[
        ("STARLING_CONTACT_ABUSE", "mailto:abuse@localhost"),
        (
            "STARLING_CONTACT_SUPPORT",
            "xmpp:support@localhost,https://localhost/help",
        ),
    ]);
    s.add_user("alice", "pw");
    const CAPS: &str = "http://jabber.org/protocol/caps";
    let caps_of = |f: &Element| {
        let c = f.get_child("c", CAPS).expect("caps in the stream features");
        assert_eq!(c.attr("hash"), Some("sha-1"));
        (
            c.attr("node").expect("node").to_string(),
            c.attr("ver").expect("ver").to_string(),
        )
    };
    let (mut c, pre) = pre_auth_stream(&s).await;
    let before_login = caps_of(&pre);
    c.auth_scram("SCRAM-SHA-256", "alice", "pw")
        .await
        .expect("login");
    let post = c.open().await;
    let (node, ver) = caps_of(&post);
    assert_eq!((node.clone(), ver.clone()), before_login);
    c.bind(Some("desk")).await.expect("bind");

    const INFO: &str = "http://jabber.org/protocol/disco#info";
    let info = c
        .iq(iq_get(Some("localhost"), Element::new("query", INFO)))
        .await;
    let q = info.get_child("query", INFO).expect("disco#info").clone();
    let form = q.get_child("x", "jabber:x:data").expect("serverinfo form");
    let field = |var: &str| -> Vec<String> {
        form.elements()
            .filter(|f| f.attr("var") == Some(var))
            .flat_map(|f| f.elements().map(|v| v.text()).collect::<Vec<_>>())
            .collect()
    };
    assert_eq!(field("FORM_TYPE"), ["http://jabber.org/network/serverinfo"]);
    assert_eq!(field("abuse-addresses"), ["mailto:abuse@localhost"]);
    assert_eq!(
        field("support-addresses"),
        ["xmpp:support@localhost", "https://localhost/help"]
    );
    assert!(field("sales-addresses").is_empty(), "only what is set");
    let digest = sha1::Sha1::digest(caps_verification(&q).as_bytes());
    assert_eq!(
        base64::engine::general_purpose::STANDARD.encode(digest),
        ver,
        "the advertised hash is that of the disco#info answer"
    );

    let by_node = c
        .iq(iq_get(
            Some("localhost"),
            Element::new("query", INFO).with_attr("node", format!("{node}#{ver}")),
        ))
        .await;
    assert_eq!(by_node.attr("type"), Some("result"), "{by_node:?}");
    let nq = by_node.get_child("query", INFO).expect("query");
    assert_eq!(nq.attr("node"), Some(format!("{node}#{ver}").as_str()));
    assert_eq!(caps_verification(nq), caps_verification(&q));
    let stale = c
        .iq(iq_get(
            Some("localhost"),
            Element::new("query", INFO).with_attr("node", format!("{node}#AAAA")),
        ))
        .await;
    assert_eq!(stale_condition(&stale), "item-not-found");
}

fn stale_condition(iq: &Element) -> String {
    assert_eq!(iq.attr("type"), Some("error"), "{iq:?}");
    stanza_condition(iq).unwrap_or_default()
}
