//! The session's I/O tasks: a reader that parses and rate-limits inbound
//! data, and a writer that batches outbound stanzas.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_channel::mpsc;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use crate::clock;
use crate::stream::{StreamError, StreamReader, StreamWriter};
use crate::xml::{ParseError, StreamEvent};

/// What the writer task is asked to do.
pub enum Outbound {
    Data(String),
    /// End the stream, with an error first if given.
    Close(Option<StreamError>),
}

/// Writes at most this much per batch before flushing.
const BATCH_BYTES: usize = 64 * 1024;
/// A client that will not take our bytes for this long is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs until the stream is closed. `abort` closes at once, even when the
/// queue is full.
pub async fn writer(
    mut w: StreamWriter,
    mut rx: mpsc::Receiver<Outbound>,
    mut abort: oneshot::Receiver<StreamError>,
    guard: crate::server::ConnGuard,
) {
    // Grows while busy; given back when the queue runs dry, so an idle
    // session keeps no write buffer.
    let mut buf = String::new();
    // The session drops the abort handle when it stops; queued data and the
    // final close still come through `rx` then.
    let mut abort_live = true;
    loop {
        let cmd = tokio::select! {
            biased;
            err = &mut abort, if abort_live => match err {
                Ok(err) => Outbound::Close(Some(err)),
                Err(_) => {
                    abort_live = false;
                    continue;
                }
            },
            cmd = rx.recv() => cmd.unwrap_or(Outbound::Close(None)),
        };
        let mut close = None;
        match cmd {
            Outbound::Data(d) => buf.push_str(&d),
            Outbound::Close(e) => close = Some(e),
        }
        let mut ran_dry = false;
        while close.is_none() && buf.len() < BATCH_BYTES {
            match rx.try_recv() {
                Ok(Outbound::Data(d)) => buf.push_str(&d),
                Ok(Outbound::Close(e)) => close = Some(e),
                Err(mpsc::TryRecvError::Empty) => {
                    ran_dry = true;
                    break;
                }
                Err(mpsc::TryRecvError::Closed) => {
                    close = Some(None);
                    break;
                }
            }
        }
        if let Some(err) = &close {
            if let Some(err) = err {
                buf.push_str(&err.to_xml());
            }
            buf.push_str("</stream:stream>");
        }
        let ok = {
            let write = tokio::time::timeout(WRITE_TIMEOUT, async {
                w.write_all(buf.as_bytes()).await?;
                w.flush().await
            });
            tokio::pin!(write);
            // An abort while a write is blocked (the client stopped reading)
            // drops the connection at once: an error cannot be written
            // mid-stanza. The session merely going away is no abort: what
            // it queued last (a <failed/>, a close) is still written.
            loop {
                tokio::select! {
                    r = &mut write => break matches!(r, Ok(Ok(()))),
                    e = &mut abort, if abort_live => match e {
                        Ok(_) => break false,
                        Err(_) => abort_live = false,
                    },
                }
            }
        };
        if ran_dry {
            buf = String::new();
        } else {
            buf.clear();
        }
        if close.is_some() || !ok {
            let _ = tokio::time::timeout(Duration::from_secs(2), w.shutdown()).await;
            break;
        }
    }
    drop(guard);
}

/// Boxed: a queued event is then one pointer, and an idle session's
/// queue holds nothing (an unboxed event is ~100 bytes).
pub type Inbound = Box<Result<StreamEvent, ParseError>>;

pub use crate::rate_limit::RateLimit;

/// Parse events and pass them to the session; stops after the stream ends
/// or fails, or when the session goes away.
#[allow(clippy::manual_async_fn)] // deliberate, see below
pub fn reader(
    mut parser: StreamReader,
    mut tx: mpsc::Sender<Inbound>,
    activity: Arc<AtomicU64>,
    mut rate: RateLimit,
) -> impl std::future::Future<Output = ()> + Send {
    // An `async move` block rather than an `async fn`: an async fn keeps
    // its arguments twice in the task (rust-lang/rust#62958), the parser
    // included.
    async move {
        loop {
            // Wait for bytes first, then parse in a boxed future: the parse
            // state exists only while bytes are being parsed, not while
            // the client is idle.
            let ev = match parser.ready().await {
                Ok(()) => Box::pin(parser.next()).await,
                Err(e) => Err(ParseError::Io(e)),
            };
            activity.store(clock::now_ms(), Ordering::Relaxed);
            let last = !matches!(ev, Ok(StreamEvent::Stanza(_)) | Ok(StreamEvent::Keepalive));
            rate.charge(parser.last_event_bytes()).await;
            let sent = match std::future::poll_fn(|cx| tx.poll_ready(cx)).await {
                Ok(()) => tx.start_send(Box::new(ev)).is_ok(),
                Err(_) => false,
            };
            if !sent || last {
                break;
            }
        }
    }
}
