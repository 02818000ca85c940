//! BOSH (XEP-0124, XMPP over it per XEP-0206) at `/http-bind`.
//!
//! A BOSH session is a client stream on an in-process pipe, like a
//! WebSocket's (`http_bridge`): payloads of requests are written to the
//! stream in `rid` order, and what the server writes is parsed into
//! elements that wait for a held request to carry them.
//!
//! - §7–§8: session creation (`wait`, `hold`, `requests`, `polling`,
//!   `inactivity`, `maxpause`), the creation response with the stream's
//!   features (XEP-0206 §5); `xmpp:restart` writes a new stream header.
//! - §9–§10: at most `hold` requests are held; the oldest is answered
//!   empty when more arrive; a held request is answered empty after `wait`.
//! - §11: too many simultaneous requests, or polling faster than
//!   `polling`, ends the session (`policy-violation`).
//! - §12: `pause` (up to `maxpause`) stretches the inactivity limit.
//! - §14: `rid`s are processed in order; a request ahead of a missing one
//!   waits for it (within the window of `requests`); a repeated `rid`
//!   gets the response it got before (retransmission); a `rid` outside the
//!   window ends the session (`item-not-found`).
//! - §17: errors end the session with a `terminate` body and condition
//!   (HTTP 200 for clients that sent `ver`, the legacy HTTP codes otherwise).
//!
//! A session lives on the node that created it. Behind a load balancer the
//! balancer pins a client's requests to that node with a cookie (HAProxy:
//! `cookie ... insert`, tests/deploy/haproxy.cfg); a request for a session
//! this node does not hold ends with `item-not-found`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::http_bridge;
use crate::base::xml::element::escape;
use crate::base::xml::{ns, Element, ParseError, StreamEvent, StreamHeader, XmlLimits, XmlStream};
use crate::transport::context::TransportCtx;

pub const NS: &str = "http://jabber.org/protocol/httpbind";
/// XEP-0206's attributes on the body (`xmpp:version`, `xmpp:restart`).
pub const XBOSH: &str = "urn:xmpp:xbosh";

/// The longest a request is held (`wait` is capped to it).
const MAX_WAIT: u64 = 60;
/// Requests held at once (`hold` is capped to it).
const MAX_HOLD: u64 = 2;
/// The longest `pause` a client may ask for.
const MAX_PAUSE: u64 = 300;
/// The shortest interval between empty requests of a polling session.
const POLLING: u64 = 2;
/// How long a request body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long session creation waits for the stream's features.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The sessions this node holds, shared by the HTTP workers.
#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

impl Registry {
    fn get(&self, sid: &str) -> Option<Arc<Session>> {
        self.lock().get(sid).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remove(&self, sid: &str) {
        self.lock().remove(sid);
    }
}

/// One BOSH session.
struct Session {
    sid: String,
    /// The domain the session is for: the server's, or the anonymous host.
    host: String,
    wait: Duration,
    hold: usize,
    requests: u64,
    polling: bool,
    /// Without a request for this long the session ends.
    inactivity: Duration,
    /// The client sent no `ver`: errors as HTTP status codes (§17.1).
    legacy: bool,
    /// The pipe to the stream; taken (closed) when the session ends.
    input: tokio::sync::Mutex<Option<WriteHalf<DuplexStream>>>,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    /// The next `rid` to process.
    next_rid: u64,
    /// Elements the server wrote, waiting for a request to carry them.
    out: Vec<String>,
    /// The stream ended: the terminate body to answer with.
    ended: Option<String>,
    /// Requests being held: rid -> which request holds it (a client that
    /// lost a held request's connection sends the rid again, §14.3).
    held: BTreeMap<u64, u64>,
    /// Numbers the held requests.
    holds: u64,
    /// Held requests below this rid answer now (empty).
    release_below: u64,
    /// The last responses, for retransmissions (§14.3).
    answered: VecDeque<(u64, String)>,
    last_activity: Option<Instant>,
    last_empty: Option<Instant>,
    /// Until when a `pause` stretches the inactivity limit.
    paused_until: Option<Instant>,
    /// From the stream header: the stream id (`authid`) and `from`.
    header: Option<(String, String)>,
    /// The stream's first features have arrived.
    opened: bool,
}

impl Session {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A BOSH terminal condition (§17.2) and its legacy HTTP status.
#[derive(Debug, Clone, Copy)]
enum Condition {
    BadRequest,
    HostUnknown,
    ItemNotFound,
    PolicyViolation,
    InternalServerError,
}

impl Condition {
    fn name(self) -> &'static str {
        match self {
            Condition::BadRequest => "bad-request",
            Condition::HostUnknown => "host-unknown",
            Condition::ItemNotFound => "item-not-found",
            Condition::PolicyViolation => "policy-violation",
            Condition::InternalServerError => "internal-server-error",
        }
    }

    fn legacy_status(self) -> StatusCode {
        match self {
            Condition::BadRequest => StatusCode::BAD_REQUEST,
            Condition::ItemNotFound => StatusCode::NOT_FOUND,
            Condition::PolicyViolation => StatusCode::FORBIDDEN,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

fn terminate_body(condition: Option<Condition>, inner: &str) -> String {
    let mut b = format!("<body xmlns='{NS}' type='terminate'");
    if let Some(c) = condition {
        b.push_str(&format!(" condition='{}'", c.name()));
    }
    if inner.is_empty() {
        b.push_str("/>");
    } else {
        b.push_str(&format!(" xmlns:stream='{}'>{inner}</body>", ns::STREAM));
    }
    b
}

fn body_response(
    req: &HttpRequest,
    ctx: &TransportCtx,
    status: StatusCode,
    body: String,
) -> HttpResponse {
    http_bridge::cors(req, &ctx.config, status)
        .content_type("text/xml; charset=utf-8")
        .body(body)
}

/// End a request with a terminal condition (the session, if any, is
/// ended by the caller).
fn refuse(req: &HttpRequest, ctx: &TransportCtx, legacy: bool, c: Condition) -> HttpResponse {
    let status = if legacy {
        c.legacy_status()
    } else {
        StatusCode::OK
    };
    body_response(req, ctx, status, terminate_body(Some(c), ""))
}

/// A request's body: its attributes and payload elements.
struct Request {
    attrs: StreamHeader,
    payload: Vec<Element>,
}

impl Request {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.attr(name)
    }
}

fn parse(bytes: &[u8], limits: XmlLimits) -> Result<Request, ParseError> {
    let mut parser = XmlStream::new(bytes, limits);
    let parse = async {
        let attrs = match parser.next().await? {
            StreamEvent::Header(h) => h,
            _ => return Err(ParseError::NotWellFormed("no <body/>".into())),
        };
        if attrs.name != "body" || attrs.ns != NS {
            return Err(ParseError::NotWellFormed(
                "the root must be <body xmlns='http://jabber.org/protocol/httpbind'/>".into(),
            ));
        }
        let mut payload = Vec::new();
        loop {
            match parser.next().await {
                Ok(StreamEvent::Stanza(el)) => payload.push(el),
                Ok(StreamEvent::Keepalive) => {}
                Ok(StreamEvent::End) => return Ok(Request { attrs, payload }),
                Ok(StreamEvent::Header(_)) => {
                    return Err(ParseError::NotWellFormed("nested body".into()))
                }
                Err(e) => return Err(e),
            }
        }
    };
    crate::base::xml::in_memory(parse)
        .unwrap_or_else(|| Err(ParseError::NotWellFormed("incomplete body".into())))
}

/// GET /http-bind: a hint for people who open it in a browser.
pub async fn info() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain")
        .body("XMPP over BOSH (XEP-0124/XEP-0206): POST <body/> requests here.\n")
}

/// POST /http-bind.
pub async fn request(
    req: HttpRequest,
    payload: web::Payload,
    ctx: web::Data<Arc<TransportCtx>>,
    registry: web::Data<Registry>,
) -> HttpResponse {
    let ctx = ctx.get_ref().clone();
    if !ctx.config.http.bosh {
        return HttpResponse::NotFound().finish();
    }
    // A body holds at most a few stanzas' worth.
    let limit = ctx.config.limits.max_stanza_size + 4096;
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, payload.to_bytes_limited(limit)).await {
        Err(_) => return HttpResponse::RequestTimeout().finish(),
        Ok(Err(_)) => {
            return http_bridge::cors(&req, &ctx.config, StatusCode::PAYLOAD_TOO_LARGE)
                .content_type("text/xml; charset=utf-8")
                .body(terminate_body(Some(Condition::PolicyViolation), ""))
        }
        Ok(Ok(Err(_))) => return HttpResponse::BadRequest().finish(),
        Ok(Ok(Ok(b))) => b,
    };
    let body = match parse(&bytes, ctx.xml_limits()) {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(error = %e, "bad BOSH body");
            return refuse(&req, &ctx, true, Condition::BadRequest);
        }
    };
    let Some(rid) = body.attr("rid").and_then(|r| r.parse::<u64>().ok()) else {
        return refuse(&req, &ctx, true, Condition::BadRequest);
    };
    match body.attr("sid") {
        None => create(req, ctx, registry, body, rid).await,
        Some(sid) => {
            let legacy = body.attr("ver").is_none();
            match registry.get(sid) {
                Some(s) => serve(req, ctx, registry, s, body, rid).await,
                None => refuse(&req, &ctx, legacy, Condition::ItemNotFound),
            }
        }
    }
}

/// §7: a new session; answered once the stream's features are known.
async fn create(
    req: HttpRequest,
    ctx: Arc<TransportCtx>,
    registry: web::Data<Registry>,
    body: Request,
    rid: u64,
) -> HttpResponse {
    let legacy = body.attr("ver").is_none();
    let Some(to) = body.attr("to") else {
        return refuse(&req, &ctx, legacy, Condition::BadRequest);
    };
    if !ctx.config.hosts_accounts(to) {
        return refuse(&req, &ctx, legacy, Condition::HostUnknown);
    }
    if ctx.draining.load(std::sync::atomic::Ordering::Acquire) {
        return refuse(&req, &ctx, legacy, Condition::InternalServerError);
    }
    let num = |name: &str, default: u64| {
        body.attr(name)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let wait = num("wait", MAX_WAIT).min(MAX_WAIT);
    let inactivity = ctx.config.http.bosh_inactivity_secs.max(1);
    let hold = num("hold", 1).min(MAX_HOLD);
    let secure = http_bridge::secure(&req, &ctx.config);
    let peer = http_bridge::peer(&req);
    let Some(pipe) = http_bridge::open_stream(&ctx, secure, peer, "bosh") else {
        return refuse(&req, &ctx, legacy, Condition::InternalServerError);
    };
    let (r, mut w) = tokio::io::split(pipe);
    let lang = body.attr("xml:lang").map(|l| ("xml:lang", l));
    let header =
        http_bridge::stream_header([("to", to), ("version", "1.0")].into_iter().chain(lang));
    if w.write_all(header.as_bytes()).await.is_err() {
        return refuse(&req, &ctx, legacy, Condition::InternalServerError);
    }
    let sid = crate::transport::stream::header::new_stream_id()
        + &crate::transport::stream::header::new_stream_id();
    let session = Arc::new(Session {
        sid: sid.clone(),
        host: to.to_ascii_lowercase(),
        wait: Duration::from_secs(wait),
        hold: hold as usize,
        requests: hold + 1,
        polling: hold == 0,
        inactivity: Duration::from_secs(inactivity),
        legacy,
        input: tokio::sync::Mutex::new(Some(w)),
        state: Mutex::new(State {
            next_rid: rid.wrapping_add(1),
            last_activity: Some(Instant::now()),
            ..State::default()
        }),
        changed: Notify::new(),
    });
    registry.lock().insert(sid.clone(), session.clone());
    actix_web::rt::spawn(output(session.clone(), r));
    actix_web::rt::spawn(watchdog(session.clone(), registry.clone().into_inner()));
    // Wait for the stream header and features (XEP-0206 §5).
    let deadline = Instant::now() + OPEN_TIMEOUT;
    loop {
        let notified = session.changed.notified();
        {
            let st = session.lock();
            if st.opened || st.ended.is_some() {
                break;
            }
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            break;
        }
    }
    let (content, ended) = {
        let mut st = session.lock();
        let (authid, from) = st.header.clone().unwrap_or_default();
        let ended = st.ended.take();
        let out: String = std::mem::take(&mut st.out).concat();
        let mut b = format!(
            "<body xmlns='{NS}' sid='{sid}' wait='{wait}' hold='{hold}' requests='{}' polling='{POLLING}' inactivity='{inactivity}' maxpause='{MAX_PAUSE}' ver='1.11' from='{}' authid='{}' secure='{secure}' xmlns:xmpp='{XBOSH}' xmpp:version='1.0' xmlns:stream='{}'",
            hold + 1,
            escape(&from),
            escape(&authid),
            ns::STREAM
        );
        if out.is_empty() {
            b.push_str("/>");
        } else {
            b.push('>');
            b.push_str(&out);
            b.push_str("</body>");
        }
        st.answered.push_back((rid, b.clone()));
        (b, ended)
    };
    if let Some(end) = ended {
        end_session(&session, &registry).await;
        return body_response(&req, &ctx, StatusCode::OK, end);
    }
    tracing::debug!(sid = %sid, %peer, "BOSH session created");
    body_response(&req, &ctx, StatusCode::OK, content)
}

/// A request within a session: retransmission, order, payloads, holding.
async fn serve(
    req: HttpRequest,
    ctx: Arc<TransportCtx>,
    registry: web::Data<Registry>,
    s: Arc<Session>,
    body: Request,
    rid: u64,
) -> HttpResponse {
    let legacy = s.legacy;
    let window = s.requests;
    // §14.3: a repeated rid gets its response again (or, still held, is
    // held again here); §14.2: one too far ahead (or behind) ends the
    // session.
    enum Seen {
        New,
        Again(String),
        StillHeld,
        Outside,
    }
    let seen = {
        let mut st = s.lock();
        st.last_activity = Some(Instant::now());
        if rid < st.next_rid {
            match st.answered.iter().find(|(r, _)| *r == rid) {
                Some((_, b)) => Seen::Again(b.clone()),
                None if st.held.contains_key(&rid) => Seen::StillHeld,
                None => Seen::Outside,
            }
        } else if rid >= st.next_rid + window {
            Seen::Outside
        } else {
            Seen::New
        }
    };
    match seen {
        Seen::New => {}
        Seen::Again(b) => return body_response(&req, &ctx, StatusCode::OK, b),
        Seen::StillHeld => {
            let answer = hold(&s, rid).await;
            return body_response(&req, &ctx, StatusCode::OK, answer);
        }
        Seen::Outside => {
            end_session(&s, &registry).await;
            return refuse(&req, &ctx, legacy, Condition::ItemNotFound);
        }
    }
    // Wait for the requests before this one (bounded).
    let deadline = Instant::now() + s.wait + Duration::from_secs(5);
    loop {
        let notified = s.changed.notified();
        if s.lock().next_rid >= rid {
            break;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            end_session(&s, &registry).await;
            return refuse(&req, &ctx, legacy, Condition::ItemNotFound);
        }
    }
    // §11: overactivity; polling too often.
    let empty = body.payload.is_empty();
    let violation = {
        let mut st = s.lock();
        let too_many = st.held.len() as u64 >= s.requests;
        let now = Instant::now();
        let too_often = s.polling
            && empty
            && st
                .last_empty
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(POLLING));
        if empty {
            st.last_empty = Some(now);
        }
        too_many || too_often
    };
    if violation {
        tracing::debug!(sid = %s.sid, "BOSH client too active");
        end_session(&s, &registry).await;
        return refuse(&req, &ctx, legacy, Condition::PolicyViolation);
    }
    // The payloads go to the stream in rid order.
    let terminate = body.attr("type") == Some("terminate");
    let restart = body.attrs.ns_attr(XBOSH, "restart") == Some("true");
    {
        let mut input = s.input.lock().await;
        let mut data = String::new();
        for el in &body.payload {
            let mut el = el.clone();
            // Stanzas in the body's namespace are jabber:client ones.
            if el.ns == NS {
                el.ns = ns::CLIENT.to_string();
            }
            data.push_str(&el.to_xml(ns::CLIENT));
        }
        if restart {
            data.push_str(&http_bridge::stream_header([
                ("to", s.host.as_str()),
                ("version", "1.0"),
            ]));
        }
        if terminate {
            data.push_str("</stream:stream>");
        }
        if let Some(w) = input.as_mut() {
            if !data.is_empty() && w.write_all(data.as_bytes()).await.is_err() {
                *input = None;
            }
        }
        let mut st = s.lock();
        st.next_rid = rid + 1;
        if let Some(p) = body.attr("pause").and_then(|p| p.parse::<u64>().ok()) {
            // §12: answer what is held, this request too; stay for up to
            // maxpause.
            st.paused_until = Some(Instant::now() + Duration::from_secs(p.min(MAX_PAUSE)));
            st.release_below = rid + 1;
        }
        drop(st);
        s.changed.notify_waiters();
    }
    if terminate {
        end_session(&s, &registry).await;
        let b = terminate_body(None, "");
        return body_response(&req, &ctx, StatusCode::OK, b);
    }
    let answer = hold(&s, rid).await;
    if answer.contains("type='terminate'") {
        end_session(&s, &registry).await;
    }
    body_response(&req, &ctx, StatusCode::OK, answer)
}

/// Hold request `rid` until there is something to carry, a newer request
/// pushes it out (§10), the stream ends, or `wait` passes.
async fn hold(s: &Session, rid: u64) -> String {
    let me = {
        let mut st = s.lock();
        st.holds += 1;
        let me = st.holds;
        // Held again (a retransmission): the earlier holder gives way.
        st.held.insert(rid, me);
        // More held than `hold`: the oldest go back empty.
        while st.held.len() > s.hold.max(1) {
            let Some((&oldest, _)) = st.held.first_key_value() else {
                break;
            };
            st.release_below = st.release_below.max(oldest + 1);
            st.held.remove(&oldest);
        }
        me
    };
    s.changed.notify_waiters();
    // Let go of the hold however this ends (a client that disconnects
    // drops the request mid-wait).
    let _held = Held { s, rid, me };
    let deadline = Instant::now() + s.wait;
    let empty = || format!("<body xmlns='{NS}'/>");
    let answer = loop {
        let notified = s.changed.notified();
        {
            let mut st = s.lock();
            if st.held.get(&rid) != Some(&me) {
                if st.held.contains_key(&rid) {
                    // A retransmission holds it now: this connection is
                    // gone, and what comes goes to the new one.
                    return empty();
                }
                break empty();
            }
            if rid < st.release_below {
                break empty();
            }
            let first = st.held.first_key_value().map(|(r, _)| *r) == Some(rid);
            if !st.out.is_empty() && first {
                let out = std::mem::take(&mut st.out).concat();
                break format!(
                    "<body xmlns='{NS}' xmlns:stream='{}'>{out}</body>",
                    ns::STREAM
                );
            }
            if let Some(end) = st.ended.clone() {
                break end;
            }
            // A polling session is answered at once.
            if s.hold == 0 {
                break empty();
            }
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            break empty();
        }
    };
    let mut st = s.lock();
    st.last_activity = Some(Instant::now());
    st.answered.push_back((rid, answer.clone()));
    while st.answered.len() as u64 > s.requests + 1 {
        st.answered.pop_front();
    }
    drop(st);
    s.changed.notify_waiters();
    answer
}

/// A held request's place; given up when the request ends.
struct Held<'a> {
    s: &'a Session,
    rid: u64,
    me: u64,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut st = self.s.lock();
        if st.held.get(&self.rid) == Some(&self.me) {
            st.held.remove(&self.rid);
        }
        drop(st);
        self.s.changed.notify_waiters();
    }
}

/// What the server writes: parsed into elements for held requests.
async fn output(s: Arc<Session>, pipe: ReadHalf<DuplexStream>) {
    let mut parser = http_bridge::server_output(pipe);
    loop {
        let ev = parser.next().await;
        let mut st = s.lock();
        match ev {
            Ok(StreamEvent::Header(h)) => {
                st.header = Some((
                    h.attr("id").unwrap_or_default().to_string(),
                    h.attr("from").unwrap_or_default().to_string(),
                ));
            }
            Ok(StreamEvent::Stanza(el)) => {
                if el.ns == ns::STREAM && el.name == "error" {
                    let inner = http_bridge::standalone(&el);
                    st.ended = Some(terminate_body_remote(&inner));
                } else {
                    if el.ns == ns::STREAM && el.name == "features" {
                        st.opened = true;
                    }
                    st.out.push(http_bridge::standalone(&el));
                    // SASL success: the stream restarts with a new header.
                    if http_bridge::restarts_stream(&el) {
                        parser.restart();
                    }
                }
            }
            Ok(StreamEvent::Keepalive) => {}
            Ok(StreamEvent::End) | Err(_) => {
                if st.ended.is_none() {
                    st.ended = Some(terminate_body(None, ""));
                }
                drop(st);
                s.changed.notify_waiters();
                break;
            }
        }
        drop(st);
        s.changed.notify_waiters();
    }
}

fn terminate_body_remote(error: &str) -> String {
    format!(
        "<body xmlns='{NS}' type='terminate' condition='remote-stream-error' xmlns:stream='{}'>{error}</body>",
        ns::STREAM
    )
}

/// §8: a session with no request for `inactivity` (or past its pause) ends.
async fn watchdog(s: Arc<Session>, registry: Arc<Registry>) {
    let _live = crate::base::metrics::Live::new("bosh");
    // Seconds since the stream ended: the next request still hears why.
    let mut ended_for = 0u32;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (idle, ended) = {
            let st = s.lock();
            let limit = match st.paused_until {
                Some(p) if p > Instant::now() => Duration::from_secs(0),
                _ => s.inactivity,
            };
            let idle = st.held.is_empty()
                && !limit.is_zero()
                && st.last_activity.is_some_and(|t| t.elapsed() > limit);
            (idle, st.ended.is_some())
        };
        if ended {
            ended_for += 1;
        }
        if ended_for > 10 {
            end_session(&s, &registry).await;
            return;
        }
        if idle {
            tracing::debug!(sid = %s.sid, "BOSH session inactive; ends");
            end_session(&s, &registry).await;
            return;
        }
        if registry.get(&s.sid).is_none() {
            return;
        }
    }
}

/// Close the stream's input (the session then ends, or waits for a
/// stream-management resume, as for a dropped connection) and forget it.
async fn end_session(s: &Session, registry: &Registry) {
    registry.remove(&s.sid);
    if let Some(mut w) = s.input.lock().await.take() {
        let _ = w.shutdown().await;
    }
    {
        let mut st = s.lock();
        if st.ended.is_none() {
            st.ended = Some(terminate_body(None, ""));
        }
    }
    s.changed.notify_waiters();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_gives_its_attributes_and_payloads() {
        let b = parse(
            b"<body rid='10' sid='s' xmlns='http://jabber.org/protocol/httpbind' xmlns:xmpp='urn:xmpp:xbosh' xmpp:restart='true'><message xmlns='jabber:client' to='a@b'/><iq xmlns='jabber:client' type='get' id='1'/></body>",
            XmlLimits::default(),
        )
        .unwrap();
        assert_eq!(b.attr("rid"), Some("10"));
        assert_eq!(b.attrs.ns_attr(XBOSH, "restart"), Some("true"));
        assert_eq!(b.payload.len(), 2);
        let empty = parse(
            b"<body rid='1' xmlns='http://jabber.org/protocol/httpbind'/>",
            XmlLimits::default(),
        )
        .unwrap();
        assert!(empty.payload.is_empty());
        for bad in [
            &b"<bogus xmlns='http://jabber.org/protocol/httpbind'/>"[..],
            b"<body rid='1'/>",
            b"<body xmlns='http://jabber.org/protocol/httpbind'><message>",
            b"not xml",
        ] {
            assert!(parse(bad, XmlLimits::default()).is_err());
        }
    }

    #[test]
    fn terminate_bodies_carry_the_condition() {
        assert_eq!(
            terminate_body(Some(Condition::ItemNotFound), ""),
            "<body xmlns='http://jabber.org/protocol/httpbind' type='terminate' condition='item-not-found'/>"
        );
    }
}
