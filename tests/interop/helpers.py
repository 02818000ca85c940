"""What the interop scripts share: a slixmpp client set up for the test
servers (self-signed certificates, STARTTLS, SCRAM), and bounded waits and
checks that end the script with a FAIL line."""
import asyncio
import ssl

import slixmpp
from slixmpp.exceptions import IqError

T = 20


def setup_client(c, plugins, mech="SCRAM-SHA-256"):
    """Trust the test certificate, use STARTTLS, load `plugins`."""
    c.ssl_context.check_hostname = False
    c.ssl_context.verify_mode = ssl.CERT_NONE
    c.enable_direct_tls = False
    if mech:
        c.enable_plaintext = False
    for p in plugins:
        c.register_plugin(p)


def check(cond, what):
    if not cond:
        print(f"FAIL {what}", flush=True)
        raise SystemExit(1)


async def connect(c, addr, online):
    """Connect `c` to HOST:PORT and wait for `online` (an asyncio.Event)."""
    host, port = addr.rsplit(":", 1)
    c.connect(host=host, port=int(port))
    await asyncio.wait_for(online.wait(), T)


async def online_clients(make, users, wait=T):
    """A client `make(jid, password)` per (HOST:PORT, JID, PASS) of
    `users`, all connecting at once; returned once each has set its
    `online` event (each within `wait` seconds)."""
    clients = []
    for (addr, jid, pw) in users:
        host, port = addr.rsplit(":", 1)
        c = make(jid, pw)
        c.connect(host=host, port=int(port))
        clients.append(c)
    for c in clients:
        await asyncio.wait_for(c.online.wait(), wait)
    return clients


async def next_of(q, pred, what, seconds=T):
    """The next item of the asyncio queue `q` that `pred` accepts (others
    are skipped), within `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            while True:
                m = await q.get()
                if pred(m):
                    return m
    except TimeoutError:
        check(False, f"timed out waiting for {what}")


async def until(pred, what, seconds=T):
    for _ in range(seconds * 10):
        if pred():
            return
        await asyncio.sleep(0.1)
    check(False, what)


async def condition_of(coro):
    """The error condition an iq gets (None if it succeeds), and the
    tags of its error's children (for application conditions)."""
    try:
        await coro
    except IqError as e:
        return e.condition, [c.tag for c in e.iq["error"].xml]
    return None, []
