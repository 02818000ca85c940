//! Server-to-server stream plumbing (RFC 6120 §4, §5): a connection with
//! its XML parser, our stream headers, and the initiating side's
//! negotiation (connect, STARTTLS or direct TLS per XEP-0368, restart).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::base::xml::element::escape;
use crate::transport::stream::lazy_reader::LazyBufReader;
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use super::resolve::Candidate;
use super::{dialback, S2sError};
use crate::base::xml::{ns, Element, StreamEvent, StreamHeader, XmlStream};
use crate::transport::context::TransportCtx;

/// Any byte stream a server-to-server connection runs over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The parsing read side of a connection.
pub type Reader = XmlStream<LazyBufReader<ReadHalf<Box<dyn Io>>>>;

pub struct Conn {
    reader: Reader,
    writer: WriteHalf<Box<dyn Io>>,
    pub tls: bool,
    /// Inbound links only: what the peer may send per second.
    rate: Option<crate::base::rate_limit::RateLimit>,
}

impl Conn {
    pub fn new(io: Box<dyn Io>, ctx: &TransportCtx, tls: bool) -> Conn {
        let (r, w) = tokio::io::split(io);
        Conn {
            reader: XmlStream::new(LazyBufReader::with_capacity(4096, r), ctx.xml_limits()),
            writer: w,
            tls,
            rate: None,
        }
    }

    /// Limit what the peer may send (an incoming link).
    pub fn limit_rate(&mut self, rate: crate::base::rate_limit::RateLimit) {
        self.rate = Some(rate);
    }

    pub async fn send(&mut self, data: &str) -> Result<(), S2sError> {
        self.writer.write_all(data.as_bytes()).await?;
        self.writer.flush().await?;
        Ok(())
    }

    pub async fn next(&mut self) -> Result<StreamEvent, S2sError> {
        let ev = self.reader.next().await?;
        if let Some(rate) = &mut self.rate {
            rate.charge(self.reader.last_event_bytes()).await;
        }
        Ok(ev)
    }

    /// The next element, skipping whitespace keepalives. A stream error
    /// or the stream's end is an error here.
    pub async fn element(&mut self) -> Result<Element, S2sError> {
        loop {
            match self.next().await? {
                StreamEvent::Stanza(el) => {
                    if el.is("error", ns::STREAM) {
                        let cond = el
                            .elements()
                            .next()
                            .map(|c| c.name.clone())
                            .unwrap_or_default();
                        return Err(S2sError::Remote(cond));
                    }
                    return Ok(el);
                }
                StreamEvent::Keepalive => continue,
                StreamEvent::Header(_) => {
                    return Err(S2sError::Protocol("unexpected stream header".into()))
                }
                StreamEvent::End => return Err(S2sError::Remote("stream closed".into())),
            }
        }
    }

    pub async fn header(&mut self) -> Result<StreamHeader, S2sError> {
        loop {
            match self.next().await? {
                StreamEvent::Header(h) => return Ok(h),
                StreamEvent::Keepalive => continue,
                _ => return Err(S2sError::Protocol("expected a stream header".into())),
            }
        }
    }

    pub fn restart(&mut self) {
        self.reader.restart();
    }

    pub fn into_io(self) -> Box<dyn Io> {
        self.reader.into_inner().into_inner().unsplit(self.writer)
    }

    pub fn split(self) -> (Reader, WriteHalf<Box<dyn Io>>) {
        (self.reader, self.writer)
    }
}

/// Our initiating stream header (RFC 6120 §4.7, with the dialback prefix).
/// Addresses are escaped: a peer's `from` comes back in our answer.
pub fn initiating_header(from: &str, to: &str) -> String {
    let (from, to) = (escape(from), escape(to));
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' xmlns:db='{}' from='{from}' to='{to}' version='1.0'>",
        ns::SERVER,
        ns::STREAM,
        dialback::NS
    )
}

/// Our answering stream header.
pub fn response_header(from: &str, to: Option<&str>, id: &str) -> String {
    let from = escape(from);
    let to = to
        .map(|t| format!(" to='{}'", escape(t)))
        .unwrap_or_default();
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' xmlns:db='{}' from='{from}'{to} id='{id}' version='1.0'>",
        ns::SERVER,
        ns::STREAM,
        dialback::NS
    )
}

/// The WebPKI roots, plus the CA certificates in `ca_file` (PEM), if set.
pub fn trust_roots(
    ca_file: &str,
) -> Result<Arc<rustls::RootCertStore>, crate::base::tls::TlsError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if !ca_file.is_empty() {
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(ca_file)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| crate::base::tls::TlsError::Pem {
                path: ca_file.to_string(),
                message: e.to_string(),
            })?;
        for c in certs {
            roots.add(c)?;
        }
    }
    Ok(Arc::new(roots))
}

/// TLS for connections we open: the trusted roots, or (for test setups,
/// `s2s.verify_certificates = false`) any certificate. With an identity,
/// we present our certificate (for SASL EXTERNAL at the peer).
pub fn client_tls_with(
    identity: Option<&crate::base::tls::Identity>,
    verify: bool,
    roots: Arc<rustls::RootCertStore>,
) -> Result<tokio_rustls::TlsConnector, crate::base::tls::TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if verify {
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
    };
    let config = match identity {
        Some(id) => {
            let id = id.clone();
            builder.with_client_auth_cert(id.certs, id.key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A client config that accepts any server certificate and presents none
/// (tests and load tools against self-signed servers).
pub fn client_tls(verify: bool) -> tokio_rustls::TlsConnector {
    let roots = Arc::new(rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    });
    client_tls_with(None, verify, roots).expect("default TLS configuration")
}

/// TLS for inbound server streams: our certificate, ALPN "xmpp-server";
/// when peers are verified, a client certificate is asked for (optional)
/// and checked against the trusted roots.
pub fn server_tls(
    identity: &crate::base::tls::Identity,
    verify: bool,
    roots: Arc<rustls::RootCertStore>,
) -> Result<tokio_rustls::TlsAcceptor, crate::base::tls::TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if verify {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
            .allow_unauthenticated()
            .build()
            .map_err(|e| {
                crate::base::tls::TlsError::Rustls(rustls::Error::General(e.to_string()))
            })?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let id = identity.clone();
    let mut config = builder.with_single_cert(id.certs, id.key)?;
    config.alpn_protocols = vec![b"xmpp-server".to_vec()];
    // Server links are long-lived and reconnect rarely: no resumption tickets.
    config.send_tls13_tickets = 0;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Whether the certificate a peer presented (already verified against our
/// roots by the TLS layer) names `domain` (RFC 6125, XEP-0178).
pub fn certificate_names(cert: &rustls_pki_types::CertificateDer<'_>, domain: &str) -> bool {
    let Ok(name) = rustls_pki_types::ServerName::try_from(domain) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .and_then(|c| c.verify_is_valid_for_subject_name(&name))
        .is_ok()
}

/// Accepts every certificate (signatures are still checked): only with
/// `s2s.verify_certificates = false`.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// An authenticated-to-be stream to `remote`: connected, encrypted, and
/// past the restart. Returns the connection, the stream id the remote
/// gave us, and its stream features. TLS is required.
pub async fn open(
    ctx: &TransportCtx,
    local: &str,
    remote: &str,
) -> Result<(Conn, String, Element), S2sError> {
    let timeout = Duration::from_secs(ctx.config.s2s.connect_timeout_secs);
    match tokio::time::timeout(timeout, open_inner(ctx, local, remote)).await {
        Ok(r) => r,
        Err(_) => Err(S2sError::Timeout),
    }
}

async fn open_inner(
    ctx: &TransportCtx,
    local: &str,
    remote: &str,
) -> Result<(Conn, String, Element), S2sError> {
    let candidates = ctx
        .s2s
        .resolver
        .candidates(&ctx.config.s2s.static_routes, remote)
        .await;
    let mut last = S2sError::NotFound(remote.to_string());
    for c in candidates {
        match try_candidate(ctx, local, remote, &c).await {
            Ok(done) => return Ok(done),
            Err(e) => {
                tracing::debug!(remote, host = %c.host, port = c.port, error = %e, "s2s candidate failed");
                last = e;
            }
        }
    }
    Err(last)
}

async fn try_candidate(
    ctx: &TransportCtx,
    local: &str,
    remote: &str,
    c: &Candidate,
) -> Result<(Conn, String, Element), S2sError> {
    let mut tcp = None;
    for addr in ctx.s2s.resolver.addresses(c).await {
        if let Ok(s) = TcpStream::connect(addr).await {
            tcp = Some(s);
            break;
        }
    }
    let tcp = tcp.ok_or_else(|| S2sError::NotFound(remote.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let mut conn = if c.direct_tls {
        let io = tls_connect(ctx, remote, Box::new(tcp)).await?;
        Conn::new(io, ctx, true)
    } else {
        Conn::new(Box::new(tcp), ctx, false)
    };
    loop {
        conn.send(&initiating_header(local, remote)).await?;
        let header = conn.header().await?;
        if header.default_ns.as_deref() != Some(ns::SERVER) {
            return Err(S2sError::Protocol("not a jabber:server stream".into()));
        }
        let id = header.attr("id").unwrap_or_default().to_string();
        let features = conn.element().await?;
        if !features.is("features", ns::STREAM) {
            return Err(S2sError::Protocol("expected stream features".into()));
        }
        if conn.tls {
            return Ok((conn, id, features));
        }
        if features.get_child("starttls", ns::TLS).is_none() {
            return Err(S2sError::Tls(format!("{remote} does not offer TLS")));
        }
        conn.send(&format!("<starttls xmlns='{}'/>", ns::TLS))
            .await?;
        let proceed = conn.element().await?;
        if !proceed.is("proceed", ns::TLS) {
            return Err(S2sError::Tls(format!("{remote} refused STARTTLS")));
        }
        let io = tls_connect(ctx, remote, conn.into_io()).await?;
        conn = Conn::new(io, ctx, true);
    }
}

async fn tls_connect(
    ctx: &TransportCtx,
    remote: &str,
    io: Box<dyn Io>,
) -> Result<Box<dyn Io>, S2sError> {
    let name = rustls_pki_types::ServerName::try_from(remote.to_string())
        .map_err(|e| S2sError::Tls(e.to_string()))?;
    let tls = ctx
        .s2s
        .tls
        .connect(name, io)
        .await
        .map_err(|e| S2sError::Tls(e.to_string()))?;
    Ok(Box::new(tls))
}

/// End a stream we answered with `condition` (RFC 6120 §4.9): the error,
/// then the closing tag. Always an `Err`, for the caller to return.
pub async fn fail(
    conn: &mut Conn,
    condition: crate::transport::stream::StreamCondition,
    text: &str,
) -> Result<(), S2sError> {
    let err = crate::transport::stream::StreamError::with_text(condition, text);
    let _ = conn
        .send(&format!("{}</stream:stream>", err.to_xml()))
        .await;
    Err(S2sError::Protocol(format!("sent stream error: {text}")))
}

#[cfg(test)]
mod header_tests {
    use super::*;

    /// Issue 13: a peer's `from` went into our header unescaped.
    #[test]
    fn headers_escape_addresses() {
        let h = response_header("starling.localhost", Some("evil' x='1"), "id1");
        assert!(h.contains("to='evil&apos; x=&apos;1'"), "{h}");
        let h = initiating_header("a<b", "c&d");
        assert!(h.contains("from='a&lt;b' to='c&amp;d'"), "{h}");
    }
}
