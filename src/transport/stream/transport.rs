//! The client connection's transport: plain TCP until STARTTLS, then TLS;
//! or an in-process pipe bridged to a WebSocket or BOSH session (which
//! carry the classic stream's bytes, see `c2s::websocket`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// The server's end of a pipe to an HTTP transport. `secure`: the
    /// HTTP connection is TLS (or trusted to be, behind a TLS proxy).
    Bridged {
        io: tokio::io::DuplexStream,
        secure: bool,
    },
}

impl MaybeTls {
    /// Whether the connection is protected by TLS (SASL PLAIN may run).
    pub fn is_tls(&self) -> bool {
        matches!(
            self,
            MaybeTls::Tls(_) | MaybeTls::Bridged { secure: true, .. }
        )
    }

    /// Whether STARTTLS can upgrade this connection (not a bridged one:
    /// its TLS, if any, is the HTTP connection's).
    pub fn can_starttls(&self) -> bool {
        matches!(self, MaybeTls::Plain(_))
    }

    /// tls-exporter channel-binding data (RFC 9266), only on TLS 1.3 where
    /// exporters are safe without extended master secret.
    pub fn channel_binding(&self) -> Option<Vec<u8>> {
        let MaybeTls::Tls(tls) = self else {
            return None;
        };
        let conn = tls.get_ref().1;
        if conn.protocol_version() != Some(tokio_rustls::rustls::ProtocolVersion::TLSv1_3) {
            return None;
        }
        conn.export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
            .ok()
    }
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            MaybeTls::Bridged { io, .. } => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            MaybeTls::Bridged { io, .. } => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            MaybeTls::Bridged { io, .. } => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            MaybeTls::Bridged { io, .. } => Pin::new(io).poll_shutdown(cx),
        }
    }
}
