//! STARTTLS (RFC 6120 §5.4).

use tokio::io::AsyncWriteExt;

use super::transport::MaybeTls;
use super::Stream;
use crate::base::xml::ns;
use crate::transport::context::TransportCtx;

/// Send `<proceed/>` and run the TLS handshake. Bytes the client pipelined
/// after `<starttls/>` sit in the parser's buffer and are dropped with it
/// (RFC 6120 §5.4.3.3). `None` if the handshake fails: the connection is
/// then simply closed, as nothing can be said in the clear any more.
pub async fn upgrade(ctx: &TransportCtx, mut s: Stream) -> Option<Stream> {
    let proceed = format!("<proceed xmlns='{}'/>", ns::TLS);
    if s.send(&proceed).await.is_err() {
        return None;
    }
    let read_half = s.parser.into_inner().into_inner();
    let MaybeTls::Plain(tcp) = read_half.unsplit(s.writer) else {
        return None;
    };
    let accept = ctx.tls.accept(tcp);
    let tls = match tokio::time::timeout_at(s.deadline, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => return None,
    };
    let mut next = Stream::new(MaybeTls::Tls(Box::new(tls)), ctx, s.peer, s.deadline);
    next.shutdown = s.shutdown;
    let _ = next.writer.flush().await;
    Some(next)
}
