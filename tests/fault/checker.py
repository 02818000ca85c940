#!/usr/bin/env python3
"""Fault checker for issue 12, "nothing acknowledged is lost".

A swarm of slixmpp clients with XEP-0198 stream management (resumption on)
logs in through one front address (HAProxy in front of the cluster: plain
TCP, STARTTLS, self-signed certificates accepted without verification).
Each client sends a chat message about twice a second, every one with a
unique id, to the other users in turn, addressed at random to the bare JID
(u3@localhost) or the full JID (u3@localhost/r). For every id it records:

  sent       the client wrote it on a stream with stream management on
  acked      the server acknowledged it: slixmpp's `stanza_acked` event,
             which fires only when an <a h='..'/> (or <resumed h='..'/>)
             from the server covers that stanza
  received   by which user, how many times (live, or from offline storage)

A dropped stream is resumed through the front (slixmpp resends what the
server had not acknowledged); retries back off (0.2 s doubling to 5 s) and
give up after --max-retries attempts in a row. A watchdog restarts a
connection attempt that made no progress for 12 s, and a refused bind
(no quorum) drops the stream and tries again.

When told to stop (a line on stdin, or --duration seconds of traffic), the
clients stop sending, ask for and give acks until every queue is empty and
nothing has arrived for 3 s (at most --settle seconds), acknowledge all they
handled and close their streams. Then every user logs in once more with a
fresh session (new resource, initial presence) and collects what offline
storage gives it, until 3 s of quiet (at most 30 s).

Output on stdout: one JSON line
  {"acked": n, "sent": n, "delivered": n, "lost": [...], "dup": [...],
   "resumed": n, "failures": [...], ...details...}
followed by "acked=X lost=Y dup=Z". `lost` are ids the server acknowledged
that no user ever received; `dup` are ids some user received more than
once. Progress goes to stderr. Exit 0 whenever the run completed (the
harness judges the figures); 2 when the swarm could not even start.

What slixmpp 1.17 does when a resume fails (read in
slixmpp/plugins/xep_0198/stream_management.py): on <failed/>,
`_handle_failed` clears `unacked_queue` and raises `sm_failed`; then
`_handle_sm_feature` raises `session_end`, whose handler clears the queue
again and forgets sm_id, h and seq. It binds a new session and enables SM
afresh. So stanzas the server had not acknowledged are NOT resent after a
failed resume: they are silently dropped by the client (and never counted
as acked here, so they cannot show up as "lost"). Only a successful
<resumed/> resends the unacknowledged queue (`_handle_resumed`, with
use_filters=False, so they stay in the queue once, not twice). Stanzas
sent while the stream is down wait in XMLStream's __queued_stanzas and go
out (through the SM filter) at the next session_start/session_resumed;
this checker only sends while SM is enabled, so that path is not used.

usage: checker.py --host 127.0.0.1 --port 12300 [--clients 16] [--duration S]
                  [--ready-file PATH] [--domain localhost] [--password pw]
"""
import argparse
import asyncio
import collections
import json
import logging
import random
import ssl
import sys
import time

import slixmpp
from slixmpp.stanza import Message

SM_FAILED_RESUME = "new session instead of resume"


class Book:
    """Everything counted, shared by all clients."""

    def __init__(self):
        self.t0 = time.time()
        # id -> {"from", "to", "addr": "bare"|"full", "t": sent time}
        self.sent = {}
        self.acked = {}  # id -> ack time
        # user -> Counter(id)
        self.received = collections.defaultdict(collections.Counter)
        # (user, id) -> list of (time, phase, delayed)
        self.recv_log = collections.defaultdict(list)
        self.errors = {}  # id -> error condition (bounced to the sender)
        self.misrouted = []
        self.failures = []
        self.resumed = 0
        self.new_sessions = collections.Counter()  # user -> failed resumes
        self.last_rx = time.monotonic()
        self.phase = "live"
        self.log_problems = collections.Counter()

    def rel(self, t=None):
        return round((t or time.time()) - self.t0, 2)


class LogCounter(logging.Handler):
    """slixmpp reports protocol trouble (e.g. an <a h/> that acknowledges
    more than was sent) only in its log: count those."""

    def __init__(self, book):
        super().__init__(logging.WARNING)
        self.book = book

    def emit(self, record):
        try:
            msg = record.getMessage()
        except Exception:
            msg = str(record.msg)
        key = msg.split("\n")[0][:120]
        self.book.log_problems[key] += 1


class SmClient(slixmpp.ClientXMPP):
    def __init__(self, args, book, user, users):
        super().__init__(f"{user}@{args.domain}/r", args.password,
                         sasl_mech="SCRAM-SHA-256")
        self.args = args
        self.book = book
        self.user = user
        self.users = users
        self.rng = random.Random(f"{args.seed}-{user}")
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.enable_direct_tls = False
        self.enable_starttls = True
        self.enable_plaintext = False
        self.register_plugin("xep_0198")
        sm = self.plugin["xep_0198"]
        sm.allow_resume = True
        sm.window = 5
        self.online = asyncio.Event()
        self.ever_online = asyncio.Event()
        self.closing = False
        self.retries = 0  # connection attempts since the last success
        self.gave_up = False
        self.last_progress = time.monotonic()
        self.reconnect_handle = None
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("sm_enabled", self.on_enabled)
        self.add_event_handler("session_resumed", self.on_resumed)
        self.add_event_handler("sm_failed", self.on_sm_failed)
        self.add_event_handler("disconnected", self.on_disconnected)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("message_error", self.on_message_error)
        self.add_event_handler("stanza_acked", self.on_acked)
        self.add_event_handler("failed_auth", self.on_failed_auth)
        self.add_event_handler("stream_error", self.on_stream_error)
        self.add_event_handler("connected", self.on_progress)
        # A refused bind (e.g. "no quorum") leaves slixmpp waiting on a
        # stream that will never start: drop it and try again at once.
        bind = self.plugin["feature_bind"]._handle_bind_resource

        async def bind_or_retry(features):
            try:
                return await bind(features)
            except Exception as e:
                cond = getattr(getattr(e, "iq", None), "get", None)
                why = (e.iq["error"]["condition"] if cond else type(e).__name__)
                self.book.log_problems[f"bind failed: {why}"] += 1
                self.abort()
                return False

        self.unregister_feature("bind", 10000)
        self.register_feature("bind", bind_or_retry, restart=False,
                              order=10000)

    # --- connection life cycle

    def start(self):
        self.last_progress = time.monotonic()
        self.connect(host=self.args.host, port=self.args.port)

    def on_progress(self, _=None):
        self.last_progress = time.monotonic()

    def on_start(self, _):
        self.on_progress()
        if self.ever_online.is_set():
            # Resumption failed (or was not possible): a new session.
            self.book.new_sessions[self.user] += 1
            self.book.failures.append(
                f"{self.user}: {SM_FAILED_RESUME} at t={self.book.rel()}")
        self.send_presence()

    def on_enabled(self, _):
        self.retries = 0
        self.on_progress()
        self.online.set()
        self.ever_online.set()

    def on_resumed(self, _):
        self.retries = 0
        self.on_progress()
        self.book.resumed += 1
        self.online.set()

    def on_sm_failed(self, stanza):
        if self.ever_online.is_set():
            self.book.failures.append(
                f"{self.user}: resume failed at t={self.book.rel()}: "
                f"{str(stanza)[:200]}")

    def on_failed_auth(self, _):
        self.book.failures.append(f"{self.user}: authentication failed")

    def on_stream_error(self, err):
        self.book.log_problems[f"stream error: {err['condition']}"] += 1

    def on_disconnected(self, _):
        self.online.clear()
        if self.closing or self.gave_up:
            return
        self.schedule_reconnect()

    def schedule_reconnect(self):
        if self.reconnect_handle is not None:
            self.reconnect_handle.cancel()
        self.retries += 1
        if self.retries > self.args.max_retries:
            self.gave_up = True
            self.book.failures.append(
                f"{self.user}: gave up after {self.args.max_retries} "
                f"reconnection attempts at t={self.book.rel()}")
            return
        delay = min(5.0, 0.2 * 2 ** min(self.retries - 1, 5))
        self.reconnect_handle = asyncio.get_event_loop().call_later(
            delay, self.reconnect_now)

    def reconnect_now(self):
        self.reconnect_handle = None
        if not self.closing and not self.gave_up:
            self.start()

    def watchdog(self):
        """A connection attempt stuck for 12 s (a frozen node, slixmpp's
        own exponential reconnect delay): start over."""
        if self.closing or self.gave_up or self.online.is_set():
            return
        if self.reconnect_handle is not None:
            return
        if time.monotonic() - self.last_progress < 12:
            return
        self.book.log_problems["watchdog restarted a stuck connection"] += 1
        if self.transport:
            self.abort()  # -> disconnected -> schedule_reconnect
            self.last_progress = time.monotonic()
        else:
            self.cancel_connection_attempt()
            self.schedule_reconnect()

    # --- counting

    def on_acked(self, stanza):
        if isinstance(stanza, Message):
            mid = stanza["id"]
            if mid in self.book.sent and mid not in self.book.acked:
                self.book.acked[mid] = time.time()

    def on_message(self, msg):
        if msg["type"] == "error":
            return
        mid = msg["id"]
        if not mid or mid not in self.book.sent:
            return
        record(self.book, self.user, mid, delayed(msg))

    def on_message_error(self, msg):
        mid = msg["id"]
        if mid in self.book.sent:
            self.book.errors[mid] = msg["error"]["condition"]

    # --- traffic

    async def traffic(self, index, stop):
        n = len(self.users)
        k = 0
        await asyncio.sleep(self.rng.random() * self.args.interval)
        while not stop.is_set():
            if self.online.is_set():
                to = self.users[(index + 1 + k % (n - 1)) % n]
                mid = f"{self.user}-{k}"
                addr = "full" if self.rng.random() < 0.5 else "bare"
                jid = f"{to}@{self.args.domain}"
                if addr == "full":
                    jid += "/r"
                self.book.sent[mid] = {"from": self.user, "to": to,
                                       "addr": addr, "t": time.time()}
                m = self.make_message(mto=jid, mbody=mid, mtype="chat")
                m["id"] = mid
                m.send()
                k += 1
            try:
                await asyncio.wait_for(stop.wait(), self.args.interval)
            except asyncio.TimeoutError:
                pass

    def unacked(self):
        return len(self.plugin["xep_0198"].unacked_queue)


def delayed(msg):
    """Came from offline storage (XEP-0203 stamp)?"""
    return msg.xml.find("{urn:xmpp:delay}delay") is not None


def record(book, user, mid, was_delayed):
    book.received[user][mid] += 1
    book.recv_log[(user, mid)].append((book.rel(), book.phase, was_delayed))
    book.last_rx = time.monotonic()
    if book.sent[mid]["to"] != user:
        book.misrouted.append(f"{mid} -> {user}")


class SweepClient(slixmpp.ClientXMPP):
    """A fresh login (new resource, no stream management) that takes what
    offline storage hands it after initial presence."""

    def __init__(self, args, book, user):
        super().__init__(
            f"{user}@{args.domain}/sweep-{random.randrange(1 << 30):x}",
            args.password, sasl_mech="SCRAM-SHA-256")
        self.book = book
        self.user = user
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.enable_direct_tls = False
        self.enable_starttls = True
        self.enable_plaintext = False
        self.started = asyncio.Event()
        self.last_rx = time.monotonic()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)

    def on_start(self, _):
        self.send_presence()
        self.last_rx = time.monotonic()
        self.started.set()

    def on_message(self, msg):
        if msg["type"] == "error":
            return
        mid = msg["id"]
        if mid and mid in self.book.sent:
            self.last_rx = time.monotonic()
            record(self.book, self.user, mid, delayed(msg))


async def sweep_one(args, book, user, deadline):
    """Log in (bounded retries) and collect until 3 s of quiet."""
    loop = asyncio.get_event_loop()
    for attempt in range(5):
        c = SweepClient(args, book, user)
        c.connect(host=args.host, port=args.port)
        try:
            await asyncio.wait_for(c.started.wait(),
                                   max(1.0, min(10.0, deadline - loop.time())))
        except asyncio.TimeoutError:
            c.abort()
            c.cancel_connection_attempt()
            if loop.time() >= deadline:
                break
            await asyncio.sleep(0.5 * (attempt + 1))
            continue
        while loop.time() < deadline:
            if time.monotonic() - c.last_rx >= args.quiet:
                break
            await asyncio.sleep(0.2)
        try:
            await asyncio.wait_for(c.disconnect(wait=2), 4)
        except Exception:
            c.abort()
        return True
    book.failures.append(f"{user}: offline sweep could not log in")
    return False


async def read_stop_line(stop):
    """Any line (or EOF) on stdin stops the traffic."""
    loop = asyncio.get_event_loop()
    try:
        await loop.run_in_executor(None, sys.stdin.readline)
    except Exception:
        return
    stop.set()


def log(msg):
    print(f"[checker {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr,
          flush=True)


async def main(args):
    book = Book()
    logging.basicConfig(level=logging.ERROR if not args.verbose
                        else logging.DEBUG, stream=sys.stderr)
    logging.getLogger("slixmpp").addHandler(LogCounter(book))
    users = [f"{args.prefix}{i}" for i in range(args.clients)]
    clients = [SmClient(args, book, u, users) for u in users]
    loop = asyncio.get_event_loop()
    for c in clients:
        c.start()
        await asyncio.sleep(0.05)

    async def watchdog():
        while True:
            await asyncio.sleep(1)
            for c in clients:
                c.watchdog()

    dog = asyncio.ensure_future(watchdog())
    try:
        await asyncio.wait_for(
            asyncio.gather(*(c.ever_online.wait() for c in clients)), 90)
    except asyncio.TimeoutError:
        missing = [c.user for c in clients if not c.ever_online.is_set()]
        log(f"not every client logged in within 90 s: {missing}")
        print(json.dumps({"error": "swarm did not start", "missing": missing,
                          "failures": book.failures}), flush=True)
        return 2
    log(f"ONLINE: {len(clients)} clients")
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            f.write(f"{time.time()}\n")

    stop = asyncio.Event()
    reader = asyncio.ensure_future(read_stop_line(stop))
    book.t_start = time.time()
    traffic = [asyncio.ensure_future(c.traffic(i, stop))
               for i, c in enumerate(clients)]

    async def progress():
        while True:
            await asyncio.sleep(10)
            online = sum(c.online.is_set() for c in clients)
            log(f"t={book.rel()} sent={len(book.sent)} acked={len(book.acked)}"
                f" online={online}/{len(clients)} resumed={book.resumed}"
                f" new_sessions={sum(book.new_sessions.values())}")

    prog = asyncio.ensure_future(progress())
    try:
        await asyncio.wait_for(stop.wait(), args.duration)
    except asyncio.TimeoutError:
        stop.set()
    await asyncio.gather(*traffic)
    book.t_stop = time.time()
    log(f"stop at t={book.rel()}: sent={len(book.sent)} "
        f"acked={len(book.acked)}; settling")

    # Settle: everyone back online, every queue acknowledged, 3 s quiet.
    until = loop.time() + args.settle
    while loop.time() < until:
        for c in clients:
            if c.online.is_set():
                sm = c.plugin["xep_0198"]
                sm.request_ack()
                sm.send_ack()
        await asyncio.sleep(0.5)
        if (all(c.online.is_set() or c.gave_up for c in clients)
                and sum(c.unacked() for c in clients) == 0
                and time.monotonic() - book.last_rx >= args.quiet):
            break
    not_online = [c.user for c in clients if not c.online.is_set()]
    unacked_end = sum(c.unacked() for c in clients)
    if not_online:
        book.failures.append(f"not online at the end: {not_online}")
    if unacked_end:
        book.failures.append(
            f"{unacked_end} stanzas never acknowledged by the server")
    # Acknowledge everything handled, then close every stream.
    for c in clients:
        c.closing = True
        if c.online.is_set():
            c.plugin["xep_0198"].send_ack()
    await asyncio.sleep(0.5)
    closes = []
    for c in clients:
        if c.reconnect_handle is not None:
            c.reconnect_handle.cancel()
        if c.transport:
            closes.append(c.disconnect(wait=3))
        else:
            c.cancel_connection_attempt()
    if closes:
        try:
            await asyncio.wait_for(asyncio.gather(*closes,
                                                  return_exceptions=True), 8)
        except asyncio.TimeoutError:
            pass
    for c in clients:
        if c.transport:
            c.abort()
    prog.cancel()
    dog.cancel()
    reader.cancel()
    await asyncio.sleep(1)

    # Offline sweep: a fresh session per user collects offline messages.
    book.phase = "sweep"
    log("offline sweep")
    deadline = loop.time() + args.sweep_max
    await asyncio.gather(*(sweep_one(args, book, u, deadline)
                           for u in users))

    # Judgement material.
    got = collections.Counter()
    for user, ids in book.received.items():
        for mid in ids:
            got[mid] += 1
    delivered = sum(1 for mid in book.sent if got[mid] > 0)
    # A message answered with an error (refused: the archive's backlog was
    # full) was never owned by the server: its sender was told. Counted
    # apart, not as lost.
    refused = sorted(mid for mid in book.acked
                     if got[mid] == 0 and mid in book.errors)
    lost = sorted((mid for mid in book.acked
                   if got[mid] == 0 and mid not in book.errors),
                  key=lambda m: book.sent[m]["t"])
    dup = sorted({mid for ids in book.received.values()
                  for mid, n in ids.items() if n > 1},
                 key=lambda m: book.sent[m]["t"])

    def detail(mid):
        s = book.sent[mid]
        d = {"id": mid, "to": s["to"], "addr": s["addr"],
             "sent_t": book.rel(s["t"])}
        if mid in book.acked:
            d["acked_t"] = book.rel(book.acked[mid])
        if mid in book.errors:
            d["error"] = book.errors[mid]
        rx = [(u, book.recv_log[(u, mid)]) for u in book.received
              if book.received[u][mid]]
        if rx:
            d["received"] = {u: r for u, r in rx}
        d["to_new_sessions"] = book.new_sessions.get(s["to"], 0)
        d["from_new_sessions"] = book.new_sessions.get(s["from"], 0)
        return d

    swept = sum(1 for (u, mid), r in book.recv_log.items()
                for (_, phase, _) in r if phase == "sweep")
    lost_by = collections.Counter(book.sent[m]["addr"] for m in lost)
    report = {
        "acked": len(book.acked),
        "sent": len(book.sent),
        "delivered": delivered,
        "lost": lost,
        "refused": refused,
        "dup": dup,
        "resumed": book.resumed,
        "failures": book.failures,
        "new_sessions": sum(book.new_sessions.values()),
        "unacked_at_end": unacked_end,
        "from_offline_sweep": swept,
        "bounced": {m: e for m, e in book.errors.items()},
        "misrouted": book.misrouted[:50],
        "lost_by_addressing": dict(lost_by),
        "lost_detail": [detail(m) for m in lost[:60]],
        "dup_detail": [detail(m) for m in dup[:60]],
        "client_log_problems": dict(book.log_problems),
        "t0": book.t0,
        "traffic": [book.rel(book.t_start), book.rel(book.t_stop)],
    }
    print(json.dumps(report), flush=True)
    print(f"acked={len(book.acked)} lost={len(lost)} dup={len(dup)}",
          flush=True)
    # slixmpp leaves its send-queue tasks behind; asyncio would log each.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    return 0


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=12300)
    p.add_argument("--domain", default="localhost")
    p.add_argument("--password", default="pw")
    p.add_argument("--prefix", default="u", help="users are PREFIX0..N-1")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--interval", type=float, default=0.5,
                   help="seconds between a client's messages")
    p.add_argument("--duration", type=float, default=600,
                   help="stop traffic after this many seconds at the latest")
    p.add_argument("--settle", type=float, default=40)
    p.add_argument("--quiet", type=float, default=3)
    p.add_argument("--sweep-max", type=float, default=30)
    p.add_argument("--max-retries", type=int, default=60)
    p.add_argument("--seed", default="12")
    p.add_argument("--ready-file")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args()


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(parse())))
    except KeyboardInterrupt:
        sys.exit(130)
