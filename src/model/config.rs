//! Configuration: a TOML file, then `STARLING_*` environment overrides,
//! validated once at start. Every key has a safe default, so no file at all
//! gives a working single node for `localhost`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A configuration problem, phrased to name the key or address at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config {origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("unknown setting {var}: no config key {key}")]
    UnknownEnv { var: String, key: String },
    #[error("bad value for {key}: {message}")]
    BadValue { key: String, message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The XMPP domain this server is for.
    pub domain: String,
    /// Where sled keeps accounts, and where the generated certificate lives.
    pub data_dir: PathBuf,
    /// Worker arbiters (threads); 0 means one per core.
    pub workers: usize,
    /// Accounts (bare JIDs) that may run the server's administration
    /// commands (XEP-0133) from a client.
    pub admins: Vec<String>,
    /// The anonymous host (XEP-0175, e.g. `anon.example.org`): a client
    /// that connects to it logs in with SASL ANONYMOUS as a temporary
    /// account, removed with its data when its session ends. Empty: off.
    pub anonymous_domain: String,
    pub c2s: C2sConfig,
    pub tls: TlsConfig,
    pub registration: RegistrationConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    pub cluster: ClusterSection,
    pub http: HttpSection,
    pub s2s: S2sSection,
    pub component: ComponentSection,
    pub services: ServicesSection,
    pub mam: MamSection,
    pub upload: UploadSection,
    pub push: PushSection,
    pub external_services: ExternalServicesSection,
    pub contact: ContactSection,
}

/// How to reach the people who run the service (XEP-0157), listed in the
/// server's disco#info: URIs such as `mailto:abuse@example.org`,
/// `xmpp:admin@example.org` or `https://example.org/support`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContactSection {
    pub abuse: Vec<String>,
    pub admin: Vec<String>,
    pub feedback: Vec<String>,
    pub sales: Vec<String>,
    pub security: Vec<String>,
    pub status: Vec<String>,
    pub support: Vec<String>,
}

impl ContactSection {
    /// Each kind of address as its form field (XEP-0157 §2), with the
    /// addresses set for it.
    pub fn fields(&self) -> [(&'static str, &[String]); 7] {
        [
            ("abuse-addresses", &self.abuse),
            ("admin-addresses", &self.admin),
            ("feedback-addresses", &self.feedback),
            ("sales-addresses", &self.sales),
            ("security-addresses", &self.security),
            ("status-addresses", &self.status),
            ("support-addresses", &self.support),
        ]
    }
}

/// Whether `s` reads as an absolute URI (RFC 3986 §3: a scheme, a colon,
/// something after it), with none of the characters a URI never holds
/// (white space, controls, and `<>"{}|\^` and the backquote, §2).
fn is_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>\"{}|\\^`".contains(c))
}

/// One configured STUN/TURN service (XEP-0215).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalService {
    /// "stun", "turn" or "turns".
    pub kind: &'static str,
    pub host: String,
    pub port: u16,
    /// "udp" or "tcp".
    pub transport: &'static str,
}

/// Parse one entry: `[stun:|turn:|turns:]host:port[?transport=udp|tcp]`;
/// `default` is the kind without a scheme.
pub fn parse_external_service(entry: &str, default: &'static str) -> Option<ExternalService> {
    let (kind, rest) = match entry.split_once(':') {
        Some(("stun", r)) => ("stun", r),
        Some(("turn", r)) => ("turn", r),
        Some(("turns", r)) => ("turns", r),
        _ => (default, entry),
    };
    let (addr, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let transport = match query {
        None if kind == "turns" => "tcp",
        None => "udp",
        Some("transport=udp") if kind != "turns" => "udp",
        Some("transport=tcp") => "tcp",
        Some(_) => return None,
    };
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    valid_host.then(|| ExternalService {
        kind,
        host: host.to_string(),
        port,
        transport,
    })
}

/// STUN and TURN servers for audio and video calls (XEP-0215).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExternalServicesSection {
    /// STUN servers: `host:port` (or `stun:host:port`).
    pub stun: Vec<String>,
    /// TURN servers: `host:port`, `turn:host:port?transport=tcp`, or
    /// `turns:host:port` (TLS).
    pub turn: Vec<String>,
    /// coturn's `static-auth-secret`: clients get time-limited credentials
    /// made with it. Empty: the TURN servers are listed without any.
    pub turn_secret: String,
    /// How long such credentials are valid.
    pub credential_ttl_secs: u64,
}

/// Push notifications (XEP-0357) to the app servers devices register with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushSection {
    /// Offer push at all.
    pub enabled: bool,
    /// Notifications may carry the last message's body (only for devices
    /// whose publish options do not say `include-body` false); off keeps
    /// message text away from app servers.
    pub include_body: bool,
    /// At most one notification per device in this time; messages within
    /// it are told of in one notification at its end (the count).
    pub min_interval_ms: u64,
    /// Devices one account may register.
    pub max_registrations: usize,
}

impl Default for PushSection {
    fn default() -> Self {
        PushSection {
            enabled: true,
            include_body: false,
            min_interval_ms: 2000,
            max_registrations: 10,
        }
    }
}

/// HTTP file upload (XEP-0363) at `upload.DOMAIN`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadSection {
    /// The service's domain; unset means `upload.DOMAIN`, empty turns it off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Where files are kept; empty: `data_dir/upload`.
    pub dir: String,
    /// The largest file (bytes).
    pub max_file_size: u64,
    /// Bytes one user's files may take (0: no limit).
    pub quota_bytes: u64,
    /// Files are deleted this long after their upload (0: kept).
    pub expire_after_secs: u64,
    /// Nodes that hold each file before its upload is answered (at most
    /// the cluster's size).
    pub copies: usize,
    /// Content types accepted (empty: any).
    pub allowed_types: Vec<String>,
    /// How long a slot's PUT URL is valid.
    pub slot_valid_secs: u64,
}

impl Default for UploadSection {
    fn default() -> Self {
        UploadSection {
            domain: None,
            dir: String::new(),
            max_file_size: 100 * 1024 * 1024,
            quota_bytes: 1024 * 1024 * 1024,
            expire_after_secs: 30 * 86_400,
            copies: 2,
            allowed_types: Vec::new(),
            slot_valid_secs: 300,
        }
    }
}

impl UploadSection {
    /// The upload service's domain for a server of `domain`, if it is on.
    pub fn service_domain(&self, domain: &str) -> Option<String> {
        service_domain(&self.domain, "upload", domain)
    }
}

/// The message archive (XEP-0313).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MamSection {
    /// Archive users' messages at all.
    pub enabled: bool,
    /// What is archived for a user who set no preferences: "always",
    /// "roster" (only messages with roster contacts) or "never".
    pub default: String,
    /// Days a message is kept; 0 keeps it until the user or an operator
    /// deletes it.
    pub retention_days: u64,
    /// Bytes one user's archive may hold; past it nothing more is archived
    /// for that user (messages are still delivered). 0: no limit.
    pub quota_bytes: u64,
    /// Most messages on one page of a query (a client asking for more gets this many).
    pub max_page: usize,
    /// Archive writes one node may have waiting for the cluster; past it a
    /// user's message is refused with `<resource-constraint/>` (type wait)
    /// rather than acknowledged without being archived.
    pub backlog: u64,
}

impl Default for MamSection {
    fn default() -> Self {
        MamSection {
            enabled: true,
            default: "always".into(),
            retention_days: 0,
            quota_bytes: 256 * 1024 * 1024,
            max_page: 250,
            backlog: 65_536,
        }
    }
}

/// Federation with other XMPP servers (RFC 6120 server-to-server).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S2sSection {
    /// Inbound listener, "host:port"; empty turns federation off.
    pub listen: String,
    /// Inbound direct TLS listener (XEP-0368, usually port 5270); off when empty.
    pub direct_tls_listen: String,
    /// Verify remote servers' certificates (outbound TLS). Turn off only
    /// for test setups with self-signed certificates: dialback still
    /// authenticates the peer's domain, but not who answers at its address.
    pub verify_certificates: bool,
    /// Refuse dialback and stanzas on inbound streams that did not STARTTLS.
    pub require_encryption: bool,
    /// Extra trusted CA certificates (PEM) for peers' certificates, besides
    /// the WebPKI roots: private federations and tests.
    pub ca_file: String,
    /// Domain -> "host:port", tried before DNS (private federations, tests).
    /// As an environment variable: "domain=host:port,domain2=host:port".
    pub static_routes: std::collections::BTreeMap<String, String>,
    /// Seconds an outbound link may take to connect and authenticate.
    pub connect_timeout_secs: u64,
    /// Seconds without traffic after which a link closes.
    pub idle_timeout_secs: u64,
    /// Stanzas waiting per remote domain while its link is set up.
    pub queue: usize,
    /// Sustained inbound bytes per second on one incoming link (it carries
    /// many users' traffic), and the burst over it.
    pub rate_bytes_per_sec: u64,
    pub rate_burst_bytes: u64,
    /// Inbound streams one remote domain may have authenticated into this
    /// node at once (a remote cluster opens one per node); 0: no limit.
    pub max_links_per_domain: usize,
    /// Stanzas per second one remote domain may send to this node over all
    /// its links, with bursts of twice that; past it reading pauses.
    /// 0: no limit.
    pub stanzas_per_sec_per_domain: u64,
}

impl Default for S2sSection {
    fn default() -> Self {
        S2sSection {
            listen: "0.0.0.0:5269".into(),
            direct_tls_listen: String::new(),
            verify_certificates: true,
            require_encryption: true,
            ca_file: String::new(),
            static_routes: Default::default(),
            connect_timeout_secs: 10,
            idle_timeout_secs: 600,
            queue: 1000,
            rate_bytes_per_sec: 1024 * 1024,
            rate_burst_bytes: 4 * 1024 * 1024,
            max_links_per_domain: 16,
            stanzas_per_sec_per_domain: 0,
        }
    }
}

/// External components (XEP-0114): gateways and services on subdomains.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComponentSection {
    /// Listener, "host:port"; empty turns components off.
    pub listen: String,
    /// Component domain -> shared secret. As an environment variable:
    /// "domain=secret,domain2=secret".
    pub secrets: std::collections::BTreeMap<String, String>,
}

impl Default for ComponentSection {
    fn default() -> Self {
        ComponentSection {
            listen: "127.0.0.1:5347".into(),
            secrets: Default::default(),
        }
    }
}

/// Hosted service domains (see `services.rs`): each service's domain, or
/// empty for off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServicesSection {
    /// The diagnostic echo service: answers messages with "echo: <body>".
    pub echo: String,
    /// Group chat (XEP-0045): its domain; unset means `conference.DOMAIN`,
    /// empty turns it off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub muc: Option<String>,
    /// Publish-subscribe (XEP-0060): its domain; unset means
    /// `pubsub.DOMAIN`, empty turns it off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pubsub: Option<String>,
    /// Occupants one room admits (XEP-0045 §7.2.9).
    pub muc_max_occupants: usize,
    /// Messages a room keeps for history on join (XEP-0045 §7.2.15).
    pub muc_history: usize,
    /// Rooms one user may create and occupy on a node at once.
    pub muc_max_rooms_per_user: usize,
    /// Messages one occupant may send a room per second, with bursts of
    /// twice that (0: no limit); past it: `<resource-constraint/>`.
    pub muc_messages_per_sec: u64,
}

impl Default for ServicesSection {
    fn default() -> Self {
        ServicesSection {
            echo: String::new(),
            muc: None,
            pubsub: None,
            muc_max_occupants: 1000,
            muc_history: 50,
            muc_max_rooms_per_user: 100,
            muc_messages_per_sec: 10,
        }
    }
}

impl ServicesSection {
    /// The group-chat domain for a server of `domain`, if it is on.
    pub fn muc_domain(&self, domain: &str) -> Option<String> {
        service_domain(&self.muc, "conference", domain)
    }

    /// The publish-subscribe service's domain, if it is on.
    pub fn pubsub_domain(&self, domain: &str) -> Option<String> {
        service_domain(&self.pubsub, "pubsub", domain)
    }
}

/// The bare JID of the account keyed `user` on a server of `domain` (see
/// `Config::account_jid`).
pub fn account_jid(domain: &str, user: &str) -> String {
    if is_anonymous_account(user) {
        user.to_string()
    } else {
        format!("{user}@{domain}")
    }
}

/// The key of the account whose bare JID is `bare` (one `account_jid`
/// made) on a server of `domain`.
pub fn account_key(domain: &str, bare: &str) -> String {
    match bare.split_once('@') {
        Some((user, d)) if d.eq_ignore_ascii_case(domain) => user.to_string(),
        _ => bare.to_string(),
    }
}

/// Whether the account key `user` is a temporary account of the anonymous
/// host (see `Config::account_jid`).
pub fn is_anonymous_account(user: &str) -> bool {
    user.contains('@')
}

fn service_domain(set: &Option<String>, default: &str, domain: &str) -> Option<String> {
    match set {
        None => Some(format!("{default}.{domain}").to_ascii_lowercase()),
        Some(d) if d.is_empty() => None,
        Some(d) => Some(d.to_ascii_lowercase()),
    }
}

/// HTTP: health checks, XMPP over WebSocket (RFC 7395), discovery
/// (XEP-0156).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// "host:port"; empty turns HTTP off.
    pub listen: String,
    /// "host:port" for HTTPS (and wss) with the server's certificate;
    /// empty (the default) turns it off.
    pub tls_listen: String,
    /// Serve XMPP over WebSocket at `/xmpp-websocket`.
    pub websocket: bool,
    /// Serve Prometheus metrics at `/metrics`.
    pub metrics: bool,
    /// Serve XMPP over BOSH at `/http-bind` (XEP-0124/0206).
    pub bosh: bool,
    /// A BOSH session with no request for this long ends (XEP-0124 §8).
    pub bosh_inactivity_secs: u64,
    /// The public base URL clients reach this service at, e.g.
    /// "https://chat.example.org" behind a proxy: used in host-meta and in
    /// a drained WebSocket's see-other-uri. Empty: taken from each
    /// request's Host header and scheme.
    pub public_url: String,
    /// Origins allowed by CORS (`Access-Control-Allow-Origin`); "*" for any.
    pub cors_origins: Vec<String>,
    /// Treat plain-HTTP clients as secure (a TLS-terminating proxy is in
    /// front). Clients on loopback always are.
    pub behind_tls_proxy: bool,
    /// Who may use the admin API and status page (`/admin`): "loopback"
    /// (requests from this machine only), "any", or "off".
    pub admin: String,
    /// Their bearer token; empty: the token the node writes to
    /// `data_dir/admin.token` at start.
    pub admin_token: String,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: "0.0.0.0:5280".into(),
            tls_listen: String::new(),
            websocket: true,
            metrics: true,
            bosh: true,
            bosh_inactivity_secs: 60,
            public_url: String::new(),
            cors_origins: vec!["*".into()],
            admin: "loopback".into(),
            admin_token: String::new(),
            behind_tls_proxy: false,
        }
    }
}

/// The node's place in the cluster (Raft over the gRPC mesh).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Unique per node, never 0.
    pub node_id: u64,
    /// Mesh listener (gRPC), "host:port".
    pub listen: String,
    /// Address other nodes dial; empty means the bound listen address.
    pub advertise: String,
    /// Shared secret of the cluster; empty means one generated into
    /// data_dir/cluster.secret (fine for one node; copy it to others).
    pub secret: String,
    /// A member's mesh address to join through (first start only).
    pub join: String,
    /// Mutual TLS on the mesh: the cluster CA (PEM), this node's
    /// certificate naming `node-<node_id>.starling-mesh`, and its key, as
    /// `starling cluster certs` makes them. All three, or none (plain mesh).
    pub tls_ca: String,
    pub tls_cert: String,
    pub tls_key: String,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            node_id: 1,
            listen: "127.0.0.1:7222".into(),
            advertise: String::new(),
            secret: String::new(),
            join: String::new(),
            tls_ca: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct C2sConfig {
    /// STARTTLS listener (RFC 6120), "host:port".
    pub listen: String,
    /// Direct TLS listener (XEP-0368); empty string turns it off.
    pub direct_tls_listen: String,
    /// Require TLS before authentication. Turn off only for load tools on loopback.
    pub require_tls: bool,
    /// What a second bind of the same full JID does: "replace" the old
    /// session (it gets `<conflict/>`) or "reject" the new bind.
    pub resource_conflict: ConflictPolicy,
    /// Expect a PROXY protocol v2 header on every c2s connection (behind
    /// HAProxy with `send-proxy-v2`). Off by default: with it on, clients
    /// that connect directly are refused.
    pub proxy_protocol: bool,
    /// How long a FAST token (XEP-0484) is valid; a client using one past
    /// half its life gets a new one.
    pub fast_token_ttl_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConflictPolicy {
    Replace,
    Reject,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; unset means a self-signed one in data_dir.
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
    /// Send TLS 1.3 session tickets (resumption). Off by default, like
    /// Prosody: XMPP connections are long-lived, so resumption saves
    /// little. A careful SSLEngine client (modelled on Smack's NIO TLS
    /// code) logged in 1,700 times with tickets on without a stall; a
    /// client that waits for the socket after an unwrap that yields no
    /// application bytes (the ticket) stalls on ~70% of logins, so the
    /// default stays off.
    pub session_tickets: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    /// Allow in-band registration (XEP-0077) of new accounts.
    pub allow: bool,
    /// Accounts one IP address may register in-band per hour (this node).
    pub per_address_per_hour: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest stanza accepted, in bytes.
    pub max_stanza_size: usize,
    /// Deepest element nesting inside a stanza.
    pub max_depth: usize,
    /// Most attributes on one element.
    pub max_attributes: usize,
    /// Sustained inbound bytes per second per connection.
    pub rate_bytes_per_sec: u64,
    /// Burst allowance over the sustained rate, in bytes.
    pub rate_burst_bytes: u64,
    /// Stanzas one client session may send per second (a shaper, like
    /// ejabberd's): past it, with bursts of twice that, the server stops
    /// reading the connection until the rate allows (TCP pushes back on
    /// the client). 0: no limit.
    pub stanzas_per_sec: u64,
    /// Client connections (TCP, direct TLS, WebSocket, BOSH) one address
    /// may open per minute, counted across the cluster (approximately,
    /// `ip_limits.rs`); past it a new stream ends with <policy-violation/>.
    /// 0: no limit.
    pub connections_per_ip_per_min: u32,
    /// Login attempts (SASL, SASL2, FAST) one address may make per minute,
    /// counted across the cluster; past it they fail with
    /// <temporary-auth-failure/>. 0: no limit.
    pub logins_per_ip_per_min: u32,
    /// Seconds an unauthenticated stream may take to bind.
    pub auth_timeout_secs: u64,
    /// Seconds of client silence before the server pings (XEP-0199).
    pub idle_ping_secs: u64,
    /// Seconds to wait for any data after a ping before dropping the client.
    pub ping_timeout_secs: u64,
    /// Stanzas queued for one client before it is cut off as too slow.
    pub outbound_queue: usize,
    /// SASL attempts on one stream before it is closed (RFC 6120 §6.4.5).
    pub max_auth_attempts: u32,
    /// Messages kept for an offline user (XEP-0160); more get <resource-constraint/>.
    pub offline_messages: usize,
    /// Largest vCard (XEP-0054) or private XML fragment (XEP-0049), in bytes.
    pub vcard_size: usize,
    /// How long a stream-management session waits to be resumed (XEP-0198).
    pub resume_timeout_secs: u64,
    /// Bytes kept for an offline user (XEP-0160); more get <resource-constraint/>.
    pub offline_bytes: usize,
    /// Stanzas sent to a client and not yet acknowledged (XEP-0198), also
    /// while it waits to be resumed; past this or `sm_unacked_bytes` the
    /// session ends with <resource-constraint/> and they go to offline storage.
    pub sm_unacked: usize,
    pub sm_unacked_bytes: usize,
    /// Presence stanzas held for an inactive client (XEP-0352, one per
    /// sender); past this they are all sent at once.
    pub csi_held: usize,
    /// Private XML namespaces (XEP-0049) one account may store.
    pub private_items: usize,
    /// Milliseconds a delivered message waits for its session to write it
    /// before it counts as owned once queued (see `router::deliver_owned`);
    /// at most 5,000, well inside a relay batch's answer time.
    pub write_wait_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter: error, warn, info, debug, trace, or a directive list.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            domain: "localhost".into(),
            data_dir: PathBuf::from("data"),
            workers: 0,
            admins: Vec::new(),
            anonymous_domain: String::new(),
            c2s: C2sConfig::default(),
            tls: TlsConfig::default(),
            registration: RegistrationConfig::default(),
            limits: LimitsConfig::default(),
            log: LogConfig::default(),
            cluster: ClusterSection::default(),
            http: HttpSection::default(),
            s2s: S2sSection::default(),
            component: ComponentSection::default(),
            services: ServicesSection::default(),
            mam: MamSection::default(),
            upload: UploadSection::default(),
            push: PushSection::default(),
            external_services: ExternalServicesSection {
                credential_ttl_secs: 86_400,
                ..ExternalServicesSection::default()
            },
            contact: ContactSection::default(),
        }
    }
}

impl Default for C2sConfig {
    fn default() -> Self {
        C2sConfig {
            listen: "0.0.0.0:5222".into(),
            direct_tls_listen: "0.0.0.0:5223".into(),
            require_tls: true,
            resource_conflict: ConflictPolicy::Replace,
            fast_token_ttl_secs: 14 * 86_400,
            proxy_protocol: false,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_stanza_size: 256 * 1024,
            max_depth: 32,
            max_attributes: 32,
            rate_bytes_per_sec: 256 * 1024,
            rate_burst_bytes: 1024 * 1024,
            stanzas_per_sec: 0,
            connections_per_ip_per_min: 0,
            logins_per_ip_per_min: 0,
            auth_timeout_secs: 30,
            idle_ping_secs: 300,
            ping_timeout_secs: 60,
            outbound_queue: 1024,
            max_auth_attempts: 5,
            offline_messages: 1000,
            vcard_size: 64 * 1024,
            resume_timeout_secs: 300,
            offline_bytes: 4 * 1024 * 1024,
            sm_unacked: 1000,
            sm_unacked_bytes: 4 * 1024 * 1024,
            csi_held: 500,
            private_items: 100,
            write_wait_ms: 250,
        }
    }
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        RegistrationConfig {
            allow: false,
            per_address_per_hour: 5,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

/// Sections that `STARLING_<SECTION>_<KEY>` can address.
const SECTIONS: [&str; 15] = [
    "c2s",
    "tls",
    "registration",
    "limits",
    "log",
    "cluster",
    "http",
    "s2s",
    "component",
    "services",
    "mam",
    "upload",
    "push",
    "external_services",
    "contact",
];

impl Config {
    /// The anonymous host, if it is on.
    pub fn anonymous(&self) -> Option<&str> {
        Some(self.anonymous_domain.as_str()).filter(|d| !d.is_empty())
    }

    /// Whether accounts live at `domain`: the server's domain, or the
    /// anonymous host.
    pub fn hosts_accounts(&self, domain: &str) -> bool {
        domain.eq_ignore_ascii_case(&self.domain)
            || self
                .anonymous()
                .is_some_and(|a| a.eq_ignore_ascii_case(domain))
    }

    /// The bare JID of the account keyed `user`. An account of the server's
    /// domain is keyed by its local part; a temporary account of the
    /// anonymous host by its whole bare JID (an `@` no local part can hold
    /// keeps the two apart in every store).
    pub fn account_jid(&self, user: &str) -> String {
        account_jid(&self.domain, user)
    }

    /// The key of the account `jid` belongs to, if it is one served here.
    pub fn account_of(&self, jid: &jid::Jid) -> Option<String> {
        let node = jid.node()?.as_str();
        let domain = jid.domain().as_str();
        if domain.eq_ignore_ascii_case(&self.domain) {
            Some(node.to_string())
        } else if self
            .anonymous()
            .is_some_and(|a| a.eq_ignore_ascii_case(domain))
        {
            Some(format!("{node}@{}", domain.to_ascii_lowercase()))
        } else {
            None
        }
    }

    /// Load `path` (if any), apply `STARLING_*` overrides from `env`, validate.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (mut table, origin) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                let table: toml::Table =
                    toml::from_str(&text).map_err(|e| invalid(&p.display().to_string(), e))?;
                (table, p.display().to_string())
            }
            None => (toml::Table::new(), "defaults".to_string()),
        };
        let defaults =
            toml::Table::try_from(Config::default()).map_err(|e| invalid("defaults", e))?;
        for (var, value) in env {
            let Some(rest) = var.strip_prefix("STARLING_") else {
                continue;
            };
            if rest == "CONFIG" {
                continue;
            }
            let rest = rest.to_ascii_lowercase();
            let (section, key) = match SECTIONS.iter().find(|s| rest.starts_with(&format!("{s}_")))
            {
                Some(s) => (Some(*s), rest[s.len() + 1..].to_string()),
                None => (None, rest.clone()),
            };
            let dotted = match section {
                Some(s) => format!("{s}.{key}"),
                None => key.clone(),
            };
            let default = match section {
                Some(s) => defaults
                    .get(s)
                    .and_then(|t| t.as_table())
                    .and_then(|t| t.get(&key)),
                None => defaults.get(&key).filter(|v| !v.is_table()),
            };
            // Option fields are absent from the defaults; they take strings.
            let known_optional = matches!(
                dotted.as_str(),
                "tls.cert" | "tls.key" | "services.muc" | "services.pubsub" | "upload.domain"
            );
            if default.is_none() && !known_optional {
                return Err(ConfigError::UnknownEnv { var, key: dotted });
            }
            let parsed = match default {
                Some(toml::Value::Boolean(_)) => match value.as_str() {
                    "true" | "1" | "yes" => toml::Value::Boolean(true),
                    "false" | "0" | "no" => toml::Value::Boolean(false),
                    _ => {
                        return Err(ConfigError::BadValue {
                            key: var,
                            message: format!("expected true or false, got {value:?}"),
                        })
                    }
                },
                Some(toml::Value::Integer(_)) => match value.parse::<i64>() {
                    Ok(n) => toml::Value::Integer(n),
                    Err(_) => {
                        return Err(ConfigError::BadValue {
                            key: var,
                            message: format!("expected an integer, got {value:?}"),
                        })
                    }
                },
                // Lists: "a,b".
                Some(toml::Value::Array(_)) => toml::Value::Array(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                        .map(|v| toml::Value::String(v.into()))
                        .collect(),
                ),
                // Maps: "key=value,key2=value2".
                Some(toml::Value::Table(_)) => {
                    let mut t = toml::Table::new();
                    for pair in value.split(',').filter(|p| !p.trim().is_empty()) {
                        let Some((k, v)) = pair.split_once('=') else {
                            return Err(ConfigError::BadValue {
                                key: var,
                                message: format!("expected key=value pairs, got {pair:?}"),
                            });
                        };
                        t.insert(k.trim().to_string(), toml::Value::String(v.trim().into()));
                    }
                    toml::Value::Table(t)
                }
                _ => toml::Value::String(value),
            };
            let target = match section {
                Some(s) => table
                    .entry(s)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .ok_or_else(|| ConfigError::BadValue {
                        key: s.to_string(),
                        message: "must be a table".into(),
                    })?,
                None => &mut table,
            };
            target.insert(key, parsed);
        }
        let cfg: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e| invalid(&origin, e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        jid::BareJid::new(&self.domain)
            .ok()
            .filter(|j| j.node().is_none())
            .ok_or_else(|| ConfigError::BadValue {
                key: "domain".into(),
                message: format!("{:?} is not a valid XMPP domain", self.domain),
            })?;
        parse_addr("c2s.listen", &self.c2s.listen)?;
        if !self.c2s.direct_tls_listen.is_empty() {
            parse_addr("c2s.direct_tls_listen", &self.c2s.direct_tls_listen)?;
        }
        parse_addr("cluster.listen", &self.cluster.listen)?;
        if !self.http.listen.is_empty() {
            parse_addr("http.listen", &self.http.listen)?;
        }
        if !self.http.tls_listen.is_empty() {
            parse_addr("http.tls_listen", &self.http.tls_listen)?;
        }
        if !["loopback", "any", "off"].contains(&self.http.admin.as_str()) {
            return Err(ConfigError::BadValue {
                key: "http.admin".into(),
                message: format!("{:?}: expected loopback, any or off", self.http.admin),
            });
        }
        if !(self.http.public_url.is_empty()
            || self.http.public_url.starts_with("http://")
            || self.http.public_url.starts_with("https://"))
        {
            return Err(ConfigError::BadValue {
                key: "http.public_url".into(),
                message: format!(
                    "{:?} must start with http:// or https://",
                    self.http.public_url
                ),
            });
        }
        if !self.s2s.listen.is_empty() {
            parse_addr("s2s.listen", &self.s2s.listen)?;
        }
        if !self.component.listen.is_empty() {
            parse_addr("component.listen", &self.component.listen)?;
        }
        if !self.s2s.direct_tls_listen.is_empty() {
            parse_addr("s2s.direct_tls_listen", &self.s2s.direct_tls_listen)?;
        }
        for (domain, target) in &self.s2s.static_routes {
            if parse_target(target).is_none() {
                return Err(ConfigError::BadValue {
                    key: format!("s2s.static_routes.{domain}"),
                    message: format!("expected host:port, got {target:?}"),
                });
            }
        }
        let muc = self.services.muc_domain(&self.domain).unwrap_or_default();
        let pubsub = self
            .services
            .pubsub_domain(&self.domain)
            .unwrap_or_default();
        let upload = self.upload.service_domain(&self.domain).unwrap_or_default();
        let services = [
            ("anonymous_domain", &self.anonymous_domain),
            ("services.echo", &self.services.echo),
            ("services.muc", &muc),
            ("services.pubsub", &pubsub),
            ("upload.domain", &upload),
        ];
        for (i, (key, domain)) in services.iter().enumerate() {
            if domain.is_empty() {
                continue;
            }
            if let Some((other, _)) = services[..i]
                .iter()
                .find(|(_, d)| d.eq_ignore_ascii_case(domain))
            {
                return Err(ConfigError::BadValue {
                    key: key.to_string(),
                    message: format!("{domain:?} is already {other}'s domain"),
                });
            }
            let valid = jid::BareJid::new(domain).is_ok_and(|j| j.node().is_none());
            let taken = domain.eq_ignore_ascii_case(&self.domain)
                || self
                    .component
                    .secrets
                    .keys()
                    .any(|c| c.eq_ignore_ascii_case(domain));
            if !valid || taken {
                return Err(ConfigError::BadValue {
                    key: key.to_string(),
                    message: format!(
                        "{domain:?} must be a domain of its own (not the server's, not a component's)"
                    ),
                });
            }
        }
        for (field, list) in self.contact.fields() {
            if let Some(bad) = list.iter().find(|a| !is_uri(a)) {
                let key = field.trim_end_matches("-addresses");
                return Err(ConfigError::BadValue {
                    key: format!("contact.{key}"),
                    message: format!(
                        "{bad:?} is not a URI (e.g. mailto:abuse@example.org or xmpp:admin@example.org)"
                    ),
                });
            }
        }
        let ext = &self.external_services;
        for (key, list, kind) in [("stun", &ext.stun, "stun"), ("turn", &ext.turn, "turn")] {
            if let Some(bad) = list
                .iter()
                .find(|e| parse_external_service(e, kind).is_none())
            {
                return Err(ConfigError::BadValue {
                    key: format!("external_services.{key}"),
                    message: format!(
                        "{bad:?} is not host:port (optionally stun:, turn: or turns:, and ?transport=udp|tcp)"
                    ),
                });
            }
        }
        for (domain, secret) in &self.component.secrets {
            if jid::BareJid::new(domain)
                .map(|j| j.node().is_some())
                .unwrap_or(true)
            {
                return Err(ConfigError::BadValue {
                    key: format!("component.secrets.{domain}"),
                    message: "not a valid component domain".into(),
                });
            }
            if secret.len() < 8 {
                return Err(ConfigError::BadValue {
                    key: format!("component.secrets.{domain}"),
                    message: "the secret must have at least 8 characters".into(),
                });
            }
        }
        for (key, v) in [
            ("s2s.connect_timeout_secs", self.s2s.connect_timeout_secs),
            ("s2s.idle_timeout_secs", self.s2s.idle_timeout_secs),
            ("s2s.queue", self.s2s.queue as u64),
            ("s2s.rate_bytes_per_sec", self.s2s.rate_bytes_per_sec),
        ] {
            if v == 0 {
                return Err(ConfigError::BadValue {
                    key: key.into(),
                    message: "must be greater than 0".into(),
                });
            }
        }
        let mesh_tls = [
            &self.cluster.tls_ca,
            &self.cluster.tls_cert,
            &self.cluster.tls_key,
        ];
        if mesh_tls.iter().any(|p| p.is_empty()) && mesh_tls.iter().any(|p| !p.is_empty()) {
            return Err(ConfigError::BadValue {
                key: "cluster.tls_ca".into(),
                message: "cluster.tls_ca, tls_cert and tls_key go together: set all three or none"
                    .into(),
            });
        }
        // Archive ids (XEP-0359) carry the node id in 12 bits.
        if self.cluster.node_id == 0 || self.cluster.node_id > 4095 {
            return Err(ConfigError::BadValue {
                key: "cluster.node_id".into(),
                message: "must be between 1 and 4095".into(),
            });
        }
        if !matches!(self.mam.default.as_str(), "always" | "roster" | "never") {
            return Err(ConfigError::BadValue {
                key: "mam.default".into(),
                message: format!(
                    "must be always, roster or never, not {:?}",
                    self.mam.default
                ),
            });
        }
        if self.mam.backlog == 0 {
            return Err(ConfigError::BadValue {
                key: "mam.backlog".into(),
                message: "must be greater than 0".into(),
            });
        }
        if self.mam.max_page == 0 {
            return Err(ConfigError::BadValue {
                key: "mam.max_page".into(),
                message: "must be greater than 0".into(),
            });
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(ConfigError::BadValue {
                key: "tls.cert".into(),
                message: "tls.cert and tls.key must be set together".into(),
            });
        }
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_stanza_size", l.max_stanza_size as u64),
            ("limits.max_depth", l.max_depth as u64),
            ("limits.max_attributes", l.max_attributes as u64),
            ("limits.rate_bytes_per_sec", l.rate_bytes_per_sec),
            ("limits.auth_timeout_secs", l.auth_timeout_secs),
            ("limits.idle_ping_secs", l.idle_ping_secs),
            ("limits.ping_timeout_secs", l.ping_timeout_secs),
            ("limits.outbound_queue", l.outbound_queue as u64),
            ("limits.max_auth_attempts", l.max_auth_attempts as u64),
            ("limits.offline_messages", l.offline_messages as u64),
            ("limits.vcard_size", l.vcard_size as u64),
            ("limits.resume_timeout_secs", l.resume_timeout_secs),
            ("limits.offline_bytes", l.offline_bytes as u64),
            ("limits.sm_unacked", l.sm_unacked as u64),
            ("limits.sm_unacked_bytes", l.sm_unacked_bytes as u64),
            ("limits.csi_held", l.csi_held as u64),
            ("limits.private_items", l.private_items as u64),
            ("limits.write_wait_ms", l.write_wait_ms),
            (
                "registration.per_address_per_hour",
                self.registration.per_address_per_hour as u64,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::BadValue {
                    key: key.into(),
                    message: "must be greater than 0".into(),
                });
            }
        }
        if l.write_wait_ms > 5000 {
            return Err(ConfigError::BadValue {
                key: "limits.write_wait_ms".into(),
                message: "must be at most 5000 (a relayed message's answer waits on it)".into(),
            });
        }
        if l.max_stanza_size < 4096 {
            return Err(ConfigError::BadValue {
                key: "limits.max_stanza_size".into(),
                message: "must be at least 4096 bytes".into(),
            });
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| {
            ConfigError::BadValue {
                key: "log.level".into(),
                message: e.to_string(),
            }
        })?;
        Ok(())
    }

    pub fn c2s_listen(&self) -> SocketAddr {
        parse_addr("c2s.listen", &self.c2s.listen).expect("validated at load")
    }

    pub fn direct_tls_listen(&self) -> Option<SocketAddr> {
        if self.c2s.direct_tls_listen.is_empty() {
            return None;
        }
        Some(
            parse_addr("c2s.direct_tls_listen", &self.c2s.direct_tls_listen)
                .expect("validated at load"),
        )
    }

    pub fn http_listen(&self) -> Option<SocketAddr> {
        if self.http.listen.is_empty() {
            return None;
        }
        Some(parse_addr("http.listen", &self.http.listen).expect("validated at load"))
    }

    pub fn http_tls_listen(&self) -> Option<SocketAddr> {
        (!self.http.tls_listen.is_empty()).then(|| {
            parse_addr("http.tls_listen", &self.http.tls_listen).expect("validated at load")
        })
    }

    pub fn s2s_listen(&self) -> Option<SocketAddr> {
        (!self.s2s.listen.is_empty())
            .then(|| parse_addr("s2s.listen", &self.s2s.listen).expect("validated at load"))
    }

    pub fn s2s_direct_tls_listen(&self) -> Option<SocketAddr> {
        (!self.s2s.direct_tls_listen.is_empty()).then(|| {
            parse_addr("s2s.direct_tls_listen", &self.s2s.direct_tls_listen)
                .expect("validated at load")
        })
    }

    pub fn component_listen(&self) -> Option<SocketAddr> {
        (!self.component.listen.is_empty()).then(|| {
            parse_addr("component.listen", &self.component.listen).expect("validated at load")
        })
    }

    pub fn cluster_listen(&self) -> SocketAddr {
        parse_addr("cluster.listen", &self.cluster.listen).expect("validated at load")
    }

    pub fn workers(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            self.workers
        }
    }
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| ConfigError::BadValue {
        key: key.into(),
        message: format!("{value:?} is not a host:port socket address"),
    })
}

fn invalid(origin: &str, e: impl std::fmt::Display) -> ConfigError {
    // toml's messages span several lines with a source excerpt; keep one line.
    let message = e
        .to_string()
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with('|') && !l.chars().all(|c| c == '^' || c == ' ')
        })
        .collect::<Vec<_>>()
        .join(" ");
    ConfigError::Invalid {
        origin: origin.into(),
        message,
    }
}

/// "host:port" from configuration.
pub fn parse_target(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c.domain, "localhost");
        assert!(c.c2s.require_tls);
        assert!(!c.registration.allow);
    }

    #[test]
    fn the_anonymous_host_keys_its_accounts_apart() {
        let c = Config::load(
            None,
            env(&[("STARLING_ANONYMOUS_DOMAIN", "anon.localhost")]),
        )
        .expect("valid");
        assert_eq!(c.anonymous(), Some("anon.localhost"));
        assert!(Config::default().anonymous().is_none(), "off by default");
        let j = |s: &str| jid::Jid::new(s).expect("jid");
        assert_eq!(
            c.account_of(&j("alice@localhost/r")).as_deref(),
            Some("alice")
        );
        let anon = c.account_of(&j("x1@ANON.localhost/r")).expect("an account");
        assert_eq!(anon, "x1@anon.localhost");
        assert!(is_anonymous_account(&anon) && !is_anonymous_account("alice"));
        assert_eq!(c.account_jid(&anon), "x1@anon.localhost");
        assert_eq!(c.account_jid("alice"), "alice@localhost");
        assert_eq!(account_key("localhost", "alice@localhost"), "alice");
        assert_eq!(account_key("localhost", &anon), anon);
        assert_eq!(c.account_of(&j("bob@example.org")), None);
        assert_eq!(c.account_of(&j("localhost")), None);
        // Not the server's own domain, nor a service's.
        for taken in ["localhost", "conference.localhost"] {
            let e = Config::load(None, env(&[("STARLING_ANONYMOUS_DOMAIN", taken)]));
            assert!(
                matches!(&e, Err(ConfigError::BadValue { key, .. }) if key.contains("anonymous_domain") || key.starts_with("services")),
                "{taken}: {e:?}"
            );
        }
    }

    #[test]
    fn contact_addresses_are_uris() {
        let c = Config::load(
            None,
            env(&[(
                "STARLING_CONTACT_ABUSE",
                "mailto:abuse@example.org, xmpp:abuse@example.org",
            )]),
        )
        .expect("valid");
        assert_eq!(
            c.contact.abuse,
            ["mailto:abuse@example.org", "xmpp:abuse@example.org"]
        );
        for bad in [
            "abuse@example.org",
            "mailto:",
            "1x:y",
            "mailto:a b@example.org",
            "https://example.org/<x>",
        ] {
            let e = Config::load(None, env(&[("STARLING_CONTACT_SUPPORT", bad)])).unwrap_err();
            assert!(e.to_string().contains("contact.support"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_service_domain_must_be_its_own() {
        let e = Config::load(None, env(&[("STARLING_SERVICES_ECHO", "localhost")])).unwrap_err();
        assert!(e.to_string().contains("services.echo"), "{e}");
        let e = Config::load(
            None,
            env(&[
                ("STARLING_SERVICES_ECHO", "gw.localhost"),
                ("STARLING_COMPONENT_SECRETS", "gw.localhost=s"),
            ]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("services.echo"), "{e}");
        let ok = Config::load(None, env(&[("STARLING_SERVICES_ECHO", "echo.localhost")]));
        assert_eq!(
            ok.map(|c| c.services.echo).ok().as_deref(),
            Some("echo.localhost")
        );
    }

    #[test]
    fn lists_and_the_pubsub_domain_from_the_environment() {
        let c = Config::load(
            None,
            env(&[
                ("STARLING_ADMINS", "root@localhost, ops@localhost"),
                ("STARLING_SERVICES_PUBSUB", "ps.localhost"),
            ]),
        )
        .expect("loads");
        assert_eq!(c.admins, vec!["root@localhost", "ops@localhost"]);
        assert_eq!(
            c.services.pubsub_domain("localhost").as_deref(),
            Some("ps.localhost")
        );
        let clash = Config::load(
            None,
            env(&[("STARLING_SERVICES_PUBSUB", "conference.localhost")]),
        )
        .unwrap_err();
        assert!(clash.to_string().contains("services.muc"), "{clash}");
    }

    #[test]
    fn env_overrides_typed_keys() {
        let c = Config::load(
            None,
            env(&[
                ("STARLING_C2S_LISTEN", "127.0.0.1:0"),
                ("STARLING_C2S_REQUIRE_TLS", "false"),
                ("STARLING_LIMITS_MAX_STANZA_SIZE", "10000"),
                ("STARLING_DOMAIN", "example.org"),
                ("STARLING_TLS_CERT", "/x.pem"),
                ("STARLING_TLS_KEY", "/x.key"),
            ]),
        )
        .unwrap();
        assert!(!c.c2s.require_tls);
        assert_eq!(c.limits.max_stanza_size, 10000);
        assert_eq!(c.domain, "example.org");
    }

    #[test]
    fn mesh_tls_files_go_together() {
        let e = Config::load(None, env(&[("STARLING_CLUSTER_TLS_CERT", "/n.pem")])).unwrap_err();
        assert!(e.to_string().contains("set all three or none"), "{e}");
        let c = Config::load(
            None,
            env(&[
                ("STARLING_CLUSTER_TLS_CA", "/ca.pem"),
                ("STARLING_CLUSTER_TLS_CERT", "/n.pem"),
                ("STARLING_CLUSTER_TLS_KEY", "/n-key.pem"),
            ]),
        )
        .unwrap();
        assert_eq!(c.cluster.tls_ca, "/ca.pem");
    }

    #[test]
    fn unknown_and_bad_keys_name_the_key() {
        let e = Config::load(None, env(&[("STARLING_C2S_LISTN", "x")])).unwrap_err();
        assert!(e.to_string().contains("c2s.listn"), "{e}");
        let e = Config::load(None, env(&[("STARLING_C2S_LISTEN", "nowhere")])).unwrap_err();
        assert!(e.to_string().contains("c2s.listen"), "{e}");
        let e = Config::load(None, env(&[("STARLING_C2S_REQUIRE_TLS", "maybe")])).unwrap_err();
        assert!(e.to_string().contains("STARLING_C2S_REQUIRE_TLS"), "{e}");
    }
}
