//! The session's I/O tasks: a reader that parses and rate-limits inbound
//! data, and a writer that batches outbound stanzas.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_channel::mpsc;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use starling_cluster::Receipt;

use crate::base::clock;
use crate::base::xml::{ParseError, StreamEvent};
use crate::transport::stream::{StreamError, StreamReader};

/// What the writer task is asked to do.
pub enum Outbound {
    Data(String),
    /// Data the session numbered (its `n`-th): [`Written`] tells when it
    /// reached the socket.
    Marked(String, u64),
    /// [`Outbound::Marked`], written only once `gate` fires (or fails, or
    /// [`GATE_WAIT`] passes): a relayed stanza whose sender records which
    /// stanza of the session it is before it reaches the client
    /// ([`starling_cluster::Marker`]). What follows waits behind it.
    Gated(String, u64, Gate),
    /// End the stream, with an error first if given.
    Close(Option<StreamError>),
}

/// A stanza that waits to be owned (a relayed message, or a local
/// sender's message whose `<a/>` waits) is owned by this node once its
/// bytes are with the kernel: a kill -9 of this process then no longer
/// loses it, while before that it died with the session's queue. Answers
/// are given in the order of the marks; the writer answers everything
/// when it ends (with stream management the stanzas stay in the session's
/// queue, which outlives the connection). How long an answer may wait is
/// bounded where it is asked for (`router::OWNED_AFTER`).
#[derive(Default)]
pub struct Written(std::sync::Mutex<WrittenState>);

#[derive(Default)]
struct WrittenState {
    /// Every mark up to this one is written.
    done: u64,
    ended: bool,
    waiting: std::collections::VecDeque<(u64, Receipt)>,
}

impl Written {
    fn lock(&self) -> std::sync::MutexGuard<'_, WrittenState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answer `receipt` once mark `n` is written.
    pub fn after(&self, n: u64, receipt: Receipt) {
        let mut st = self.lock();
        if st.ended || n <= st.done {
            drop(st);
            let _ = receipt.send(true);
        } else {
            st.waiting.push_back((n, receipt));
        }
    }

    fn up_to(&self, n: u64) {
        let mut st = self.lock();
        st.done = st.done.max(n);
        while st.waiting.front().is_some_and(|w| w.0 <= n) {
            if let Some((_, r)) = st.waiting.pop_front() {
                let _ = r.send(true);
            }
        }
    }

    fn end(&self) {
        let mut st = self.lock();
        st.ended = true;
        for (_, r) in st.waiting.drain(..) {
            let _ = r.send(true);
        }
    }
}

impl Drop for WrittenState {
    fn drop(&mut self) {
        for (_, r) in self.waiting.drain(..) {
            let _ = r.send(true);
        }
    }
}

/// The longest a gated write waits for its sender to record the mark
/// (normally one mesh round trip); past it the stanza is written anyway,
/// unmarked.
pub const GATE_WAIT: Duration = Duration::from_secs(2);

/// What a gated write waits for: the confirmation, or the deadline set
/// when the mark was asked for (so gates met one after another never add
/// up to more than [`GATE_WAIT`] each from their own start).
pub struct Gate {
    pub confirmed: oneshot::Receiver<()>,
    pub deadline: tokio::time::Instant,
}

impl Gate {
    pub fn new(confirmed: oneshot::Receiver<()>) -> Gate {
        Gate {
            confirmed,
            deadline: tokio::time::Instant::now() + GATE_WAIT,
        }
    }
}

/// Wait for a gated write's gate, bounded.
async fn open_gate(gate: Gate) {
    if tokio::time::timeout_at(gate.deadline, gate.confirmed)
        .await
        .is_err()
    {
        tracing::debug!("relay mark not confirmed in time; written unmarked");
    }
}

/// Writes at most this much per batch before flushing.
const BATCH_BYTES: usize = 64 * 1024;
/// A client that will not take our bytes for this long is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs until the stream is closed. `abort` closes at once, even when the
/// queue is full.
/// `guard` is dropped once the stream is written and closed.
pub async fn writer<W: tokio::io::AsyncWrite + Unpin, G>(
    mut w: W,
    mut rx: mpsc::Receiver<Outbound>,
    mut abort: oneshot::Receiver<StreamError>,
    written: Arc<Written>,
    guard: G,
) {
    // Grows while busy; given back when the queue runs dry, so an idle
    // session keeps no write buffer.
    let mut buf = String::new();
    // The session drops the abort handle when it stops; queued data and the
    // final close still come through `rx` then.
    let mut abort_live = true;
    // A gated write met while batching: it starts the next batch.
    let mut next: Option<Outbound> = None;
    loop {
        let cmd = if let Some(cmd) = next.take() {
            cmd
        } else {
            tokio::select! {
            biased;
            err = &mut abort, if abort_live => match err {
                Ok(err) => {
                    // A completed receiver must not be polled again.
                    abort_live = false;
                    Outbound::Close(Some(err))
                }
                Err(_) => {
                    abort_live = false;
                    continue;
                }
            },
            cmd = rx.recv() => cmd.unwrap_or(Outbound::Close(None)),
            }
        };
        let cmd = match cmd {
            Outbound::Gated(d, n, gate) => {
                open_gate(gate).await;
                Outbound::Marked(d, n)
            }
            cmd => cmd,
        };
        let mut close = None;
        // The last mark in this batch.
        let mut mark = None;
        match cmd {
            Outbound::Data(d) => buf.push_str(&d),
            Outbound::Marked(d, n) => {
                buf.push_str(&d);
                mark = Some(n);
            }
            Outbound::Close(e) => close = Some(e),
            // Opened above.
            Outbound::Gated(d, n, _) => {
                buf.push_str(&d);
                mark = Some(n);
            }
        }
        let mut ran_dry = false;
        while close.is_none() && buf.len() < BATCH_BYTES {
            match rx.try_recv() {
                Ok(Outbound::Data(d)) => buf.push_str(&d),
                Ok(Outbound::Marked(d, n)) => {
                    buf.push_str(&d);
                    mark = Some(n);
                }
                Ok(Outbound::Close(e)) => close = Some(e),
                Ok(gated @ Outbound::Gated(..)) => {
                    // What is batched goes out first; the gate is awaited
                    // at the top of the loop.
                    next = Some(gated);
                    break;
                }
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
        if let (true, Some(n)) = (ok, mark) {
            written.up_to(n);
        }
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
    written.end();
    drop(guard);
}

/// Boxed: a queued event is then one pointer, and an idle session's
/// queue holds nothing (an unboxed event is ~100 bytes).
pub type Inbound = Box<Result<StreamEvent, ParseError>>;

pub use crate::base::rate_limit::RateLimit;

/// Parse events and pass them to the session; stops after the stream ends
/// or fails, or when the session goes away.
#[allow(clippy::manual_async_fn)] // deliberate, see below
pub fn reader(
    mut parser: StreamReader,
    mut tx: mpsc::Sender<Inbound>,
    activity: Arc<AtomicU64>,
    mut rate: RateLimit,
    mut stanzas: Option<RateLimit>,
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
            // The stanza shaper (`limits.stanzas_per_sec`): one token each.
            if let (Some(s), Ok(StreamEvent::Stanza(_))) = (stanzas.as_mut(), &ev) {
                s.charge(1).await;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A writer on a pipe of `cap` bytes, its receiving end, its queue.
    fn pipe(
        cap: usize,
    ) -> (
        tokio::io::DuplexStream,
        mpsc::Sender<Outbound>,
        Arc<Written>,
        oneshot::Sender<StreamError>,
        tokio::task::JoinHandle<()>,
    ) {
        let (ours, theirs) = tokio::io::duplex(cap);
        let (tx, rx) = mpsc::channel(16);
        let (abort_tx, abort_rx) = oneshot::channel();
        let written = Arc::new(Written::default());
        let task = tokio::spawn(writer(ours, rx, abort_rx, written.clone(), ()));
        (theirs, tx, written, abort_tx, task)
    }

    #[tokio::test]
    async fn a_stanza_is_owned_once_its_bytes_are_written_not_when_queued() {
        let (mut client, mut tx, written, _abort, _task) = pipe(64);
        let stanza = format!("<message>{}</message>", "x".repeat(1000));
        tx.try_send(Outbound::Marked(stanza.clone(), 1)).unwrap();
        let (r, mut answered) = oneshot::channel();
        written.after(1, r);
        // The client reads nothing: 64 bytes of 1,019 fit in the pipe.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            answered.try_recv().is_err(),
            "answered while its bytes were still queued"
        );
        let mut got = vec![0u8; stanza.len()];
        client.read_exact(&mut got).await.unwrap();
        let owned = tokio::time::timeout(Duration::from_secs(10), answered)
            .await
            .expect("answered once written");
        assert_eq!(owned, Ok(true));
        assert_eq!(got, stanza.as_bytes());
        // A mark already written is answered at once.
        let (r, answered) = oneshot::channel();
        written.after(1, r);
        assert_eq!(answered.await, Ok(true));
    }

    /// Read from `client` for `d`: whatever arrived.
    async fn read_for(client: &mut tokio::io::DuplexStream, d: Duration) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, client.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(got).unwrap()
    }

    #[tokio::test]
    async fn a_gated_write_and_what_follows_wait_for_the_gate() {
        let (mut client, mut tx, _written, _abort, _task) = pipe(4096);
        let (open, gate) = oneshot::channel();
        tx.try_send(Outbound::Marked("<a/>".into(), 1)).unwrap();
        tx.try_send(Outbound::Gated("<b/>".into(), 2, Gate::new(gate)))
            .unwrap();
        tx.try_send(Outbound::Marked("<c/>".into(), 3)).unwrap();
        // What came before the gate goes out; the rest waits.
        assert_eq!(
            read_for(&mut client, Duration::from_millis(300)).await,
            "<a/>"
        );
        open.send(()).unwrap();
        assert_eq!(
            read_for(&mut client, Duration::from_millis(300)).await,
            "<b/><c/>"
        );
        // A gate that fails (its stream broke) does not hold the write.
        let (open, gate) = oneshot::channel::<()>();
        tx.try_send(Outbound::Gated("<d/>".into(), 4, Gate::new(gate)))
            .unwrap();
        drop(open);
        assert_eq!(
            read_for(&mut client, Duration::from_millis(300)).await,
            "<d/>"
        );
    }

    #[tokio::test]
    async fn the_end_of_the_connection_answers_what_still_waits() {
        let (client, mut tx, written, abort, task) = pipe(64);
        tx.try_send(Outbound::Marked("z".repeat(4096), 1)).unwrap();
        tx.try_send(Outbound::Marked("w".repeat(10), 2)).unwrap();
        let (r1, a1) = oneshot::channel();
        let (r2, a2) = oneshot::channel();
        written.after(1, r1);
        written.after(2, r2);
        // The connection is dropped mid-write: the stanzas stay in the
        // session's stream management queue, owned by this node.
        drop(client);
        let _ = abort.send(StreamError::with_text(
            crate::transport::stream::StreamCondition::Conflict,
            "test",
        ));
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("writer ends")
            .unwrap();
        assert_eq!(a1.await, Ok(true));
        assert_eq!(a2.await, Ok(true));
        // Anything asked after the end is answered at once (never refused:
        // a refusal would make the sender route it a second time).
        let (r, a) = oneshot::channel();
        written.after(3, r);
        assert_eq!(a.await, Ok(true));
    }
}
