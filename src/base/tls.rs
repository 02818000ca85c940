//! TLS server configuration: the configured PEM files, or a self-signed
//! certificate generated into the data directory on first start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    Pem { path: String, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

/// This server's certificate chain and key.
pub struct Identity {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// The configured `cert`/`key`, or data_dir/tls, making a self-signed pair
/// for `domain` there if none exists.
pub fn load_identity(
    cert: Option<&Path>,
    key: Option<&Path>,
    data_dir: &Path,
    domain: &str,
) -> Result<Identity, TlsError> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
        _ => ensure_self_signed(data_dir, domain)?,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_err(&cert_path, e))?;
    if certs.is_empty() {
        return Err(pem_err(&cert_path, "no certificate found"));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| pem_err(&key_path, e))?;
    Ok(Identity { certs, key })
}

/// A server config for `identity`: ring, safe protocol versions, no
/// client certificates.
fn base_config(identity: &Identity) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let identity = identity.clone();
    Ok(ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(identity.certs, identity.key)?)
}

/// The HTTPS (and wss) config for `identity`: HTTP/1.1 only (WebSocket
/// upgrades and BOSH both ride on it).
pub fn http_server_config(identity: &Identity) -> Result<ServerConfig, TlsError> {
    let mut config = base_config(identity)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The client-to-server TLS config for `identity`.
pub fn server_config(
    identity: &Identity,
    session_tickets: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = base_config(identity)?;
    // XEP-0368 direct TLS uses ALPN "xmpp-client"; accept it, do not require it.
    config.alpn_protocols = vec![b"xmpp-client".to_vec()];
    if !session_tickets {
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

fn pem_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn ensure_self_signed(data_dir: &Path, domain: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    let dir = data_dir.join("tls");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let write_err = |path: &Path, source| TlsError::Write {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(|e| write_err(&dir, e))?;
    // The domain as common name too (rcgen's default is "rcgen self signed
    // cert", which is what clients showed in their trust prompt).
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, domain);
    let key_pair = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key_pair)?;
    std::fs::write(&cert_path, cert.pem()).map_err(|e| write_err(&cert_path, e))?;
    write_private(&key_path, key_pair.serialize_pem().as_bytes())
        .map_err(|e| write_err(&key_path, e))?;
    tracing::warn!(
        cert = %cert_path.display(),
        "no TLS certificate configured: made a self-signed one for {domain}; clients will warn until you set [tls] cert and key"
    );
    Ok((cert_path, key_path))
}

/// Write a file readable only by its owner.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}
