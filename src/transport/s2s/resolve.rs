//! Finding a remote server (RFC 6120 §3.2.1, XEP-0368): `[s2s]
//! static_routes` first, then DNS SRV `_xmpps-server._tcp` (direct TLS) and
//! `_xmpp-server._tcp` (STARTTLS) through hickory-resolver, then the
//! domain's own A/AAAA records on port 5269.

use crate::model::config::parse_target;
use std::net::SocketAddr;

use hickory_resolver::TokioAsyncResolver;

/// One place to try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub host: String,
    pub port: u16,
    /// XEP-0368: TLS from the first byte instead of STARTTLS.
    pub direct_tls: bool,
}

/// `localhost` or a name under it (RFC 6761 §6.3).
pub fn is_localhost(name: &str) -> bool {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    n == "localhost" || n.ends_with(".localhost")
}

pub struct Resolver {
    dns: Option<TokioAsyncResolver>,
}

impl Resolver {
    pub fn new() -> Resolver {
        let dns = match TokioAsyncResolver::tokio_from_system_conf() {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "no system DNS configuration; only static s2s routes work");
                None
            }
        };
        Resolver { dns }
    }

    /// Where to connect for `domain`, best first.
    pub async fn candidates(
        &self,
        static_routes: &std::collections::BTreeMap<String, String>,
        domain: &str,
    ) -> Vec<Candidate> {
        if let Some((host, port)) = static_routes.get(domain).and_then(|t| parse_target(t)) {
            return vec![Candidate {
                host,
                port,
                direct_tls: false,
            }];
        }
        // RFC 6761 §6.3: names under .localhost are loopback, never asked of DNS.
        if is_localhost(domain) {
            return vec![Candidate {
                host: "127.0.0.1".into(),
                port: 5269,
                direct_tls: false,
            }];
        }
        let Some(dns) = &self.dns else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (service, direct_tls) in [("_xmpps-server._tcp", true), ("_xmpp-server._tcp", false)] {
            let name = format!("{service}.{domain}.");
            if let Ok(srv) = dns.srv_lookup(name).await {
                let mut records: Vec<_> = srv.iter().collect();
                records.sort_by_key(|r| (r.priority(), std::cmp::Reverse(r.weight())));
                for r in records {
                    let host = r.target().to_utf8();
                    // RFC 2782: a target of "." means "no service here".
                    if host == "." {
                        continue;
                    }
                    out.push(Candidate {
                        host: host.trim_end_matches('.').to_string(),
                        port: r.port(),
                        direct_tls,
                    });
                }
            }
        }
        if out.is_empty() {
            out.push(Candidate {
                host: domain.to_string(),
                port: 5269,
                direct_tls: false,
            });
        }
        out
    }

    /// The addresses of one candidate host.
    pub async fn addresses(&self, c: &Candidate) -> Vec<SocketAddr> {
        if let Ok(ip) = c.host.parse::<std::net::IpAddr>() {
            return vec![SocketAddr::new(ip, c.port)];
        }
        if is_localhost(&c.host) {
            return vec![SocketAddr::from(([127, 0, 0, 1], c.port))];
        }
        match &self.dns {
            Some(dns) => match dns.lookup_ip(format!("{}.", c.host)).await {
                Ok(ips) => ips.iter().map(|ip| SocketAddr::new(ip, c.port)).collect(),
                Err(_) => Vec::new(),
            },
            None => Vec::new(),
        }
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("127.0.0.1:5269"),
            Some(("127.0.0.1".into(), 5269))
        );
        assert_eq!(parse_target("[::1]:5269"), Some(("::1".into(), 5269)));
        assert_eq!(parse_target("xmpp.example:x"), None);
        assert_eq!(parse_target("nohost"), None);
    }

    /// Issue 13: a name nobody configured under .localhost (a client
    /// joining room@conference.localhost) went to the system resolver.
    #[tokio::test]
    async fn localhost_names_never_reach_dns() {
        let r = Resolver { dns: None };
        let routes = Default::default();
        let c = r.candidates(&routes, "conference.localhost").await;
        assert_eq!(
            c,
            vec![Candidate {
                host: "127.0.0.1".into(),
                port: 5269,
                direct_tls: false
            }]
        );
        assert!(is_localhost("LOCALHOST."));
        assert!(!is_localhost("notlocalhost"));
        let a = r
            .addresses(&Candidate {
                host: "xmpp.localhost".into(),
                port: 5270,
                direct_tls: false,
            })
            .await;
        assert_eq!(a, vec![SocketAddr::from(([127, 0, 0, 1], 5270))]);
    }
}
