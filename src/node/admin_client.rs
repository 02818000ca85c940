//! The `starling` command's side of the admin HTTP API (`admin_http.rs`):
//! account, session and broadcast commands go to a running node over HTTP
//! with its bearer token. The node to ask is `--url` / `STARLING_ADMIN_URL`
//! (with `--token` / `STARLING_ADMIN_TOKEN`, or the token in this data
//! dir), else the node running on this config's data dir, which writes its
//! loopback admin address to `data_dir/admin.url` at start.
//!
//! A small blocking HTTP/1.1 client over plain TCP: the API is for this
//! machine by default (`[http] admin = "loopback"`); to reach a node on
//! another machine, open an SSH tunnel to its HTTP port, or set
//! `admin = "any"` on a private network.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// Where a running node says its admin API is (`http://127.0.0.1:PORT`).
pub const URL_FILE: &str = "admin.url";

const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nobody answers there (a node that stopped without removing its
    /// address file, or a wrong address).
    #[error("cannot reach the admin API at {0}: {1}")]
    Unreachable(String, String),
    /// The token was not accepted (a wrong token, or not the node the
    /// address file named: it stopped and another took its port).
    #[error("the admin API at {0} did not accept the token")]
    Unauthorized(String),
    /// The node answered with an error.
    #[error("{0}")]
    Refused(String),
    /// The request went out but no whole answer came back: it may have
    /// been carried out (not retried another way).
    #[error("no answer from the admin API at {0} (the operation may have been done): {1}")]
    NoAnswer(String, String),
    /// A token must be given for a node on another machine.
    #[error("--token is needed for {0}: this machine's token is not sent elsewhere")]
    TokenNeeded(String),
    #[error("bad admin URL {0:?}: {1}")]
    BadUrl(String, String),
}

/// A node's admin API and the token to use it.
pub struct Target {
    /// host:port
    pub addr: String,
    pub token: String,
    /// Given on the command line (not found in the data dir).
    pub explicit: bool,
}

/// What a node writes to [`URL_FILE`]: its loopback admin URL and its
/// process id.
pub fn url_file(listen: SocketAddr) -> String {
    format!("{}\n{}\n", local_url(listen), std::process::id())
}

/// The loopback URL a node writes for `listen` (its bound HTTP address):
/// an unspecified address is reached on loopback.
pub fn local_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        std::net::IpAddr::V4(v) if v.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v) if v.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, listen.port()))
}

impl Target {
    /// `url`/`token` if given, else the node running on `data_dir`, if
    /// any (`None`: no node says it is there).
    pub fn find(
        data_dir: &Path,
        url: Option<&str>,
        token: Option<&str>,
    ) -> Result<Option<Target>, CallError> {
        let file_token = || {
            std::fs::read_to_string(data_dir.join(crate::node::admin::TOKEN))
                .map(|t| t.trim().to_string())
                .unwrap_or_default()
        };
        if let Some(url) = url.filter(|u| !u.is_empty()) {
            let addr = host_port(url)?;
            let token = match token {
                Some(t) => t.to_string(),
                None if is_loopback(&addr) => file_token(),
                None => return Err(CallError::TokenNeeded(url.to_string())),
            };
            return Ok(Some(Target {
                addr,
                token,
                explicit: true,
            }));
        }
        // "URL\nPID": the node that wrote it must still be running (a node
        // killed with -9 leaves the file; its port may be another's now).
        let Ok(file) = std::fs::read_to_string(data_dir.join(URL_FILE)) else {
            return Ok(None);
        };
        let mut lines = file.lines();
        let url = lines.next().unwrap_or_default().trim();
        let alive = lines
            .next()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            return Ok(None);
        }
        Ok(Some(Target {
            addr: host_port(url)?,
            token: token.map(str::to_string).unwrap_or_else(file_token),
            explicit: false,
        }))
    }

    /// One request; the JSON answer of a 2xx status, else the API's error.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, CallError> {
        let unreachable =
            |e: std::io::Error| CallError::Unreachable(self.addr.clone(), e.to_string());
        let addr = self
            .addr
            .to_socket_addrs()
            .map_err(unreachable)?
            .next()
            .ok_or_else(|| CallError::Unreachable(self.addr.clone(), "no address".into()))?;
        let mut tcp = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(unreachable)?;
        tcp.set_read_timeout(Some(TIMEOUT)).map_err(unreachable)?;
        tcp.set_write_timeout(Some(TIMEOUT)).map_err(unreachable)?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            self.token,
            body.len()
        );
        tcp.write_all(request.as_bytes()).map_err(unreachable)?;
        let mut raw = Vec::new();
        tcp.take(16 << 20)
            .read_to_end(&mut raw)
            .map_err(|e| CallError::NoAnswer(self.addr.clone(), e.to_string()))?;
        let text = String::from_utf8_lossy(&raw);
        let (head, payload) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| CallError::Refused("the node's answer is not HTTP".into()))?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| CallError::Refused("the node's answer has no status".into()))?;
        let json: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(json);
        }
        if status == 401 {
            return Err(CallError::Unauthorized(self.addr.clone()));
        }
        let why = json
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {status}"));
        Err(CallError::Refused(why))
    }
}

/// Whether `host:port` names this machine.
fn is_loopback(addr: &str) -> bool {
    addr.to_socket_addrs()
        .map(|mut a| a.all(|a| a.ip().is_loopback()))
        .unwrap_or(false)
}

/// "http://host:port[/]" -> "host:port".
fn host_port(url: &str) -> Result<String, CallError> {
    let bad = |why: &str| CallError::BadUrl(url.to_string(), why.to_string());
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("use http://HOST:PORT (the API is plain HTTP on loopback)"))?;
    let hp = rest.trim_end_matches('/');
    if hp.is_empty() || hp.contains('/') || !hp.contains(':') {
        return Err(bad("use http://HOST:PORT"));
    }
    Ok(hp.to_string())
}

/// `s` for a path segment (a JID's '/' and '@', a user name's oddities).
pub fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_segments() {
        assert_eq!(
            host_port("http://127.0.0.1:5280/").unwrap(),
            "127.0.0.1:5280"
        );
        assert!(host_port("https://x:1").is_err());
        assert!(host_port("http://x").is_err());
        assert!(host_port("http://x:1/admin").is_err());
        assert_eq!(
            segment("bob@localhost/desk 1"),
            "bob%40localhost%2Fdesk%201"
        );
        assert_eq!(
            local_url("0.0.0.0:5280".parse().unwrap()),
            "http://127.0.0.1:5280"
        );
        assert_eq!(local_url("[::]:5280".parse().unwrap()), "http://[::1]:5280");
        assert_eq!(
            local_url("127.0.0.2:80".parse().unwrap()),
            "http://127.0.0.2:80"
        );
    }
}
