//! Mutual TLS on the mesh, and the credentials every mesh call carries.
//!
//! Every node has a certificate signed by the cluster's own CA. The
//! certificate names its node id as the DNS name `node-<id>.starling-mesh`
//! (and the shared name `starling-mesh`, which a node dials when it does
//! not know the id behind an address yet: a seed it joins through). The
//! server asks for the client's certificate and refuses any not signed by
//! the CA; a call that speaks for node N (raft messages, each of them from
//! N to this node; relays, snapshot chunks, a join) is refused unless the
//! certificate names node N. Calls from outside the cluster (`from` 0:
//! `cluster drain --node`) and removing a member take the admin
//! certificate (`admin.starling-mesh`, a client only); any certificate of
//! the cluster may ask a node's status. A client dialing a known peer
//! checks the peer's certificate names that peer. The cluster secret is
//! still checked on every call, inside TLS.
//!
//! Without certificates (`ClusterConfig::tls` is `None`) the mesh is plain
//! HTTP/2 with the secret in a header: for loopback and tests only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, ServerName};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Status as RpcStatus};

/// The DNS name every node certificate carries.
pub const MESH_NAME: &str = "starling-mesh";
/// The name of the admin certificate (cluster commands): a client only,
/// speaking for no node.
pub const ADMIN_NAME: &str = "admin.starling-mesh";
const SECRET_HEADER: &str = "x-starling-cluster-secret";

/// The DNS name that binds a certificate to node `id`.
pub fn node_name(id: u64) -> String {
    format!("node-{id}.{MESH_NAME}")
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("cannot write {0}: {1}")]
    Write(String, std::io::Error),
    #[error("{0}: no PEM certificate in it")]
    NoCertificate(String),
    #[error("{0}: no PEM private key in it")]
    NoKey(String),
    #[error("the node certificate is not signed by the cluster CA: {0}")]
    NotSigned(String),
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A node's certificate, its key, and the cluster CA, as PEM.
#[derive(Clone)]
pub struct MeshTls {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls").finish_non_exhaustive()
    }
}

fn has(pem: &[u8], kind: &str) -> bool {
    String::from_utf8_lossy(pem).contains(&format!("-----BEGIN {kind}"))
}

fn pem_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

impl MeshTls {
    /// From PEM text; the certificate must be signed by `ca`.
    pub fn from_pem(ca: Vec<u8>, cert: Vec<u8>, key: Vec<u8>) -> Result<MeshTls, TlsError> {
        if !has(&ca, "CERTIFICATE") {
            return Err(TlsError::NoCertificate("the CA".into()));
        }
        if !has(&cert, "CERTIFICATE") {
            return Err(TlsError::NoCertificate("the node certificate".into()));
        }
        if !String::from_utf8_lossy(&key).contains("PRIVATE KEY-----") {
            return Err(TlsError::NoKey("the node key".into()));
        }
        let tls = MeshTls { ca, cert, key };
        tls.signed_by_ca()?;
        Ok(tls)
    }

    /// From three PEM files.
    pub fn load(
        ca: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<MeshTls, TlsError> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| TlsError::Read(p.display().to_string(), e))
        };
        MeshTls::from_pem(read(ca)?, read(cert)?, read(key)?)
    }

    fn signed_by_ca(&self) -> Result<(), TlsError> {
        let certs = pem_certs(&self.cert);
        let Some(leaf) = certs.first() else {
            return Err(TlsError::NoCertificate("the node certificate".into()));
        };
        let anchors = self.anchors()?;
        let ee = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| TlsError::NotSigned(format!("{e:?}")))?;
        let now = rustls_pki_types::UnixTime::now();
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &certs[1..],
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map(|_| ())
        .map_err(|e| TlsError::NotSigned(format!("{e:?}")))
    }

    fn anchors(&self) -> Result<Vec<rustls_pki_types::TrustAnchor<'static>>, TlsError> {
        let cas = pem_certs(&self.ca);
        if cas.is_empty() {
            return Err(TlsError::NoCertificate("the CA".into()));
        }
        cas.iter()
            .map(|c| {
                webpki::anchor_from_trusted_cert(c)
                    .map(|a| a.to_owned())
                    .map_err(|e| TlsError::NotSigned(format!("the CA: {e:?}")))
            })
            .collect()
    }

    /// Whether this certificate names node `id` (a node refuses to start
    /// with another node's certificate).
    pub fn names_node(&self, id: u64) -> bool {
        pem_certs(&self.cert)
            .first()
            .is_some_and(|leaf| names(leaf, &node_name(id)))
    }

    pub(crate) fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
    }

    fn client_config(&self, peer: Option<u64>) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .ca_certificate(Certificate::from_pem(&self.ca))
            .domain_name(peer.map(node_name).unwrap_or_else(|| MESH_NAME.into()))
    }
}

/// What a node presents on the mesh: the cluster secret and, when set,
/// its certificate. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MeshAuth(Arc<Credentials>);

#[derive(Debug)]
struct Credentials {
    secret: String,
    tls: Option<MeshTls>,
}

impl MeshAuth {
    pub fn new(secret: impl Into<String>, tls: Option<MeshTls>) -> MeshAuth {
        MeshAuth(Arc::new(Credentials {
            secret: secret.into(),
            tls,
        }))
    }

    fn secret(&self) -> &str {
        &self.0.secret
    }

    pub(crate) fn tls(&self) -> Option<&MeshTls> {
        self.0.tls.as_ref()
    }

    /// Where to dial `addr`; `peer` is the node expected there, when known
    /// (its certificate must then name it).
    pub(crate) fn endpoint(&self, addr: &str, peer: Option<u64>) -> Result<Endpoint, String> {
        match self.tls() {
            None => Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| crate::transport::error_chain(&e)),
            Some(tls) => Endpoint::from_shared(format!("https://{addr}"))
                .map_err(|e| crate::transport::error_chain(&e))?
                .tls_config(tls.client_config(peer))
                .map_err(|e| crate::transport::error_chain(&e)),
        }
    }

    /// A request carrying the secret.
    pub(crate) fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        if let Ok(v) = self.secret().parse() {
            req.metadata_mut().insert(SECRET_HEADER, v);
        }
        req
    }

    /// The secret of a call (any call).
    pub(crate) fn check<T>(&self, req: &Request<T>) -> Result<Caller, RpcStatus> {
        use subtle::ConstantTimeEq;
        let given = req
            .metadata()
            .get(SECRET_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !bool::from(given.ct_eq(self.secret().as_bytes())) {
            return Err(RpcStatus::unauthenticated("bad cluster secret"));
        }
        match self.tls() {
            None => Ok(Caller::new(None)),
            // The TLS layer has already refused a certificate the CA did
            // not sign; no certificate at all means a plain connection.
            Some(_) => match req.peer_certs() {
                Some(certs) if !certs.is_empty() => Ok(Caller::new(Some(certs))),
                _ => Err(RpcStatus::unauthenticated("no client certificate")),
            },
        }
    }

    /// The secret of a call that speaks for node `from` (0: an admin tool,
    /// which only the admin certificate may be).
    pub(crate) fn check_from<T>(&self, req: &Request<T>, from: u64) -> Result<(), RpcStatus> {
        self.check(req)?.speaks_for(from)
    }

    /// The secret of a call from node `from`, which must be a node (not 0).
    pub(crate) fn check_node<T>(&self, req: &Request<T>, from: u64) -> Result<(), RpcStatus> {
        self.check(req)?.speaks_for_node(from)
    }

    /// The secret of an admin call (`remove`): with TLS, the admin
    /// certificate only.
    pub(crate) fn check_admin<T>(&self, req: &Request<T>) -> Result<(), RpcStatus> {
        self.check(req)?.speaks_for(0)
    }
}

/// Who made a call, as far as its certificate says.
pub struct Caller {
    certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// The node the certificate was last found to name (0: none yet), so
    /// a stream's frames do not parse it again.
    named: AtomicU64,
}

impl Caller {
    fn new(certs: Option<Arc<Vec<CertificateDer<'static>>>>) -> Caller {
        Caller {
            certs,
            named: AtomicU64::new(0),
        }
    }

    /// As [`Caller::speaks_for`], for what only nodes send (raft messages,
    /// snapshots): `from` 0 is refused, with TLS or without.
    pub(crate) fn speaks_for_node(&self, from: u64) -> Result<(), RpcStatus> {
        if from == 0 {
            return Err(RpcStatus::invalid_argument("this comes only from a node"));
        }
        self.speaks_for(from)
    }

    /// Whether the caller's certificate names node `from`, or for 0 (an
    /// admin tool) is the admin certificate. Always true without TLS,
    /// where the secret alone authorizes.
    pub(crate) fn speaks_for(&self, from: u64) -> Result<(), RpcStatus> {
        let Some(certs) = &self.certs else {
            return Ok(());
        };
        if from != 0 && self.named.load(Ordering::Relaxed) == from {
            return Ok(());
        }
        let name = if from == 0 {
            ADMIN_NAME.to_string()
        } else {
            node_name(from)
        };
        let named = certs.first().is_some_and(|leaf| names(leaf, &name));
        if named {
            self.named.store(from, Ordering::Relaxed);
            Ok(())
        } else {
            tracing::warn!(
                from,
                "a mesh call for a node its certificate does not name; refused"
            );
            Err(RpcStatus::permission_denied(format!(
                "the certificate does not name {name}"
            )))
        }
    }
}

/// Whether `cert` is valid for the DNS name `name`.
fn names(cert: &CertificateDer<'_>, name: &str) -> bool {
    ServerName::try_from(name)
        .ok()
        .zip(webpki::EndEntityCert::try_from(cert).ok())
        .is_some_and(|(n, ee)| ee.verify_is_valid_for_subject_name(&n).is_ok())
}

/// A cluster CA that issues node certificates (`starling cluster certs`).
pub struct CertAuthority {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl CertAuthority {
    /// A new CA (rcgen's default validity: until the year 4096).
    pub fn generate() -> Result<CertAuthority, TlsError> {
        CertAuthority::with_key(rcgen::KeyPair::generate()?)
    }

    /// The CA again from its key (`ca-key.pem`): the same name and key
    /// sign certificates that the CA certificate made first verifies.
    pub fn from_key_pem(key_pem: &str) -> Result<CertAuthority, TlsError> {
        CertAuthority::with_key(rcgen::KeyPair::from_pem(key_pem)?)
    }

    fn with_key(key: rcgen::KeyPair) -> Result<CertAuthority, TlsError> {
        // Named after its key, so two clusters' CAs never share a name.
        let tag = key
            .public_key_raw()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
            });
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("Starling cluster CA {tag:016x}"),
        );
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(CertAuthority { cert, key })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate and key for node `id`, for both ends of a connection.
    pub fn issue(&self, id: u64) -> Result<(String, String), TlsError> {
        self.issue_for(
            vec![node_name(id), MESH_NAME.to_string()],
            vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// A certificate for admin commands (`cluster status`, `remove`,
    /// `drain --node`): of the cluster, a client only, speaking for no
    /// node (it cannot serve the mesh or join it).
    pub fn issue_admin(&self) -> Result<(String, String), TlsError> {
        self.issue_for(
            vec![ADMIN_NAME.to_string()],
            vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
        )
    }

    fn issue_for(
        &self,
        names: Vec<String>,
        usages: Vec<rcgen::ExtendedKeyUsagePurpose>,
    ) -> Result<(String, String), TlsError> {
        let cn = names.first().cloned().unwrap_or_default();
        let mut params = rcgen::CertificateParams::new(names)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = usages;
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// The node's [`MeshTls`] straight away (tests, `cluster up`).
    pub fn node_tls(&self, id: u64) -> Result<MeshTls, TlsError> {
        let (cert, key) = self.issue(id)?;
        MeshTls::from_pem(
            self.cert_pem().into_bytes(),
            cert.into_bytes(),
            key.into_bytes(),
        )
    }
}
