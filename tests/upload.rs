//! HTTP File Upload (XEP-0363) at upload.DOMAIN: slixmpp's XEP-0363 plugin
//! uploads through node 1 of three; the file is downloaded through node 3,
//! node 1 is killed, and it is downloaded again. Slots and uploads are
//! checked (size, quota, signature, expiry, body length, reuse), and files
//! expire.
mod common;
use common::*;
use sha2::{Digest, Sha256};
use starling::base::xml::Element;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "upload-tests-secret-0123456789";
const NS: &str = "urn:xmpp:http:upload:0";

/// One HTTP/1.0 request: status, head, body (bytes).
async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut req =
        format!("{method} {target} HTTP/1.0\r\nHost: localhost\r\n{headers}\r\n").into_bytes();
    req.extend_from_slice(body);
    http_exchange(addr, &req, Duration::from_secs(60)).await
}

/// The path (and query) of an upload URL.
fn target(url: &str) -> String {
    let rest = url.split_once("://").expect("a URL").1;
    rest[rest.find('/').expect("a path")..].to_string()
}

fn sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Ask for a slot: the put and get URLs, or the error.
async fn slot(
    c: &mut Client,
    name: &str,
    size: u64,
    ctype: &str,
) -> Result<(String, String), Element> {
    let mut iq = Element::new("iq", "jabber:client")
        .with_attr("type", "get")
        .with_attr("to", "upload.localhost");
    iq.push_child(
        Element::new("request", NS)
            .with_attr("filename", name)
            .with_attr("size", size.to_string())
            .with_attr("content-type", ctype),
    );
    let r = c.iq(iq).await;
    match r.get_child("slot", NS) {
        Some(s) => Ok((
            s.get_child("put", NS)
                .and_then(|p| p.attr("url"))
                .unwrap_or_default()
                .to_string(),
            s.get_child("get", NS)
                .and_then(|p| p.attr("url"))
                .unwrap_or_default()
                .to_string(),
        )),
        None => Err(r),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_uploaded_through_one_node_survives_its_loss() {
    let _turn = CLUSTER_TURN.lock().await;
    let limit = [("STARLING_UPLOAD_MAX_FILE_SIZE", "5000000")];
    let mut n1 = cluster_node(1, None, SECRET, &limit);
    let n2 = cluster_node(2, Some(&n1), SECRET, &limit);
    let n3 = cluster_node(3, Some(&n1), SECRET, &limit);
    wait_members(&n1, SECRET, 3).await;
    n1.add_user("alice", "pw");
    drop(authed_retry(&n1, "alice", "pw").await);
    let out = run_interop(
        "slixmpp_upload.py",
        &[
            "localhost".into(),
            n1.c2s.to_string(),
            "alice".into(),
            "pw".into(),
            "3000000".into(),
        ],
        &[&n1, &n2, &n3],
        Duration::from_secs(90),
        &[
            "STEP found upload.localhost",
            "STEP too large refused, max 5000000",
            "STEP uploaded ",
        ],
    );
    let (url, digest) = out
        .lines()
        .find_map(|l| l.strip_prefix("STEP uploaded "))
        .and_then(|l| l.rsplit_once(' '))
        .expect("the URL and digest");
    assert!(
        url.starts_with(&format!("http://{}/upload/", n1.http)),
        "{url}"
    );
    let path = target(url);
    // Through node 3, then with node 1 gone, through nodes 3 and 2.
    let (code, head, body) = request(n3.http, "GET", &path, "", b"").await;
    assert_eq!(code, 200, "{head}");
    assert_eq!(body.len(), 3_000_000);
    assert_eq!(sha(&body), digest, "the same bytes through node 3");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: image/jpeg"),
        "{head}"
    );
    n1.kill9();
    for n in [&n3, &n2] {
        let (code, head, body) = request(n.http, "GET", &path, "", b"").await;
        assert_eq!(code, 200, "{head}\n{}", n.log());
        assert_eq!(sha(&body), digest, "the same bytes with node 1 dead");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_and_uploads_are_checked_and_files_expire() {
    let s = Server::start_with(&[
        ("STARLING_UPLOAD_MAX_FILE_SIZE", "1000"),
        ("STARLING_UPLOAD_QUOTA_BYTES", "1500"),
        ("STARLING_UPLOAD_EXPIRE_AFTER_SECS", "3"),
    ]);
    s.add_user("alice", "pw");
    let mut c = Client::online(s.c2s, "alice", "pw", "r").await;
    // disco#info names the limit (§3).
    let info = c
        .iq(iq_get(
            Some("upload.localhost"),
            Element::new("query", "http://jabber.org/protocol/disco#info"),
        ))
        .await
        .to_xml("jabber:client");
    assert!(
        info.contains(NS) && info.contains("<value>1000</value>"),
        "{info}"
    );
    // Too large: not-acceptable with file-too-large and the maximum (§4.1).
    let e = slot(&mut c, "big.bin", 1001, "").await.unwrap_err();
    assert_eq!(stanza_condition(&e).as_deref(), Some("not-acceptable"));
    let xml = e.to_xml("jabber:client");
    assert!(
        xml.contains(
            "<file-too-large xmlns='urn:xmpp:http:upload:0'><max-file-size>1000</max-file-size>"
        ),
        "{xml}"
    );
    assert!(slot(&mut c, "../etc", 10, "").await.is_err());

    let data = vec![7u8; 800];
    let (put, get) = slot(&mut c, "a.txt", 800, "text/plain")
        .await
        .expect("a slot");
    let put_path = target(&put);
    // A tampered slot, a wrong length, more bytes than granted: refused.
    let tampered = put_path.replace("s=800", "s=900");
    let (code, _, _) = request(
        s.http,
        "PUT",
        &tampered,
        "Content-Length: 900\r\n",
        &[1u8; 900],
    )
    .await;
    assert_eq!(code, 403);
    let (code, _, _) = request(
        s.http,
        "PUT",
        &put_path,
        "Content-Length: 10\r\n",
        &[1u8; 10],
    )
    .await;
    assert_eq!(code, 400);
    let (code, _, _) = request(
        s.http,
        "PUT",
        put_path.split('?').next().unwrap(),
        "Content-Length: 800\r\n",
        &data,
    )
    .await;
    assert_eq!(code, 403, "no signature");
    // The real upload, then the same slot again.
    let (code, head, _) = request(
        s.http,
        "PUT",
        &put_path,
        "Content-Length: 800\r\nContent-Type: text/plain\r\n",
        &data,
    )
    .await;
    assert_eq!(code, 201, "{head}\n{}", s.log());
    let (code, _, _) = request(s.http, "PUT", &put_path, "Content-Length: 800\r\n", &data).await;
    assert_eq!(code, 409, "a slot is used once");
    let (code, head, body) = request(s.http, "GET", &target(&get), "", b"").await;
    assert_eq!(code, 200);
    assert_eq!(body, data);
    assert!(
        head.to_ascii_lowercase()
            .contains("x-content-type-options: nosniff"),
        "{head}"
    );
    let (code, _, _) = request(s.http, "GET", "/upload/nosuchfileid0000/x", "", b"").await;
    assert_eq!(code, 404);
    // 800 of 1500 bytes used: 800 more would pass the quota.
    let e = slot(&mut c, "b.txt", 800, "").await.unwrap_err();
    assert_eq!(stanza_condition(&e).as_deref(), Some("resource-constraint"));
    // A body that stops arriving is cut off.
    let (put2, _) = slot(&mut c, "c.txt", 100, "").await.expect("a slot");
    let mut slow = tokio::net::TcpStream::connect(s.http).await.unwrap();
    slow.write_all(
        format!(
            "PUT {} HTTP/1.0\r\nContent-Length: 100\r\n\r\nabc",
            target(&put2)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut buf)).await;
    assert!(
        String::from_utf8_lossy(&buf).contains(" 408 "),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    assert!(t.elapsed() < Duration::from_secs(25));
    // After 3 s the file expires: gone from the service, then from the disk.
    let started = Instant::now();
    loop {
        let (code, _, _) = request(s.http, "GET", &target(&get), "", b"").await;
        if code == 404 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "not expired");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let dir = s.data_dir().join("upload");
    let started = Instant::now();
    while std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0) > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "files left in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
