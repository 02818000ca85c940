"""IM interop with slixmpp: two accounts complete a subscription handshake,
see each other's presence change, and one receives at its next login the
messages sent while it was offline (with XEP-0203 delay stamps).

usage: slixmpp_im.py HOST PORT DOMAIN USER1 PASS1 USER2 PASS2
"""
import asyncio
import ssl
import sys

import slixmpp

HOST, PORT, DOMAIN, U1, P1, U2, P2 = sys.argv[1:8]
T = 20


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password, sasl_mech="SCRAM-SHA-256")
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.enable_direct_tls = False
        self.enable_plaintext = False
        self.register_plugin("xep_0203")
        self.online = asyncio.Event()
        self.statuses = asyncio.Queue()
        self.offline_seen = asyncio.Event()
        self.subscribed = asyncio.Event()
        self.inbox = asyncio.Queue()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("changed_status", self.on_status)
        self.add_event_handler("got_offline", lambda p: self.offline_seen.set())
        self.add_event_handler("presence_subscribed", lambda p: self.subscribed.set())
        self.add_event_handler("message", lambda m: self.inbox.put_nowait(m))

    async def on_start(self, _):
        await self.get_roster()
        self.send_presence()
        self.online.set()

    def on_status(self, pres):
        if pres["from"].bare != self.boundjid.bare:
            self.statuses.put_nowait(pres)


async def wait_status(c, frm, pred):
    while True:
        p = await asyncio.wait_for(c.statuses.get(), T)
        if p["from"].bare == frm and pred(p):
            return p


async def main():
    a = Client(f"{U1}@{DOMAIN}/slix", P1)
    b = Client(f"{U2}@{DOMAIN}/slix", P2)
    a.connect(host=HOST, port=int(PORT))
    b.connect(host=HOST, port=int(PORT))
    await asyncio.wait_for(asyncio.gather(a.online.wait(), b.online.wait()), T)
    bob = f"{U2}@{DOMAIN}"
    alice = f"{U1}@{DOMAIN}"

    # Subscription handshake: slixmpp's default auto_authorize accepts it
    # and auto_subscribe asks back, so both end up with 'both'.
    a.send_presence_subscription(pto=bob)
    await asyncio.wait_for(a.subscribed.wait(), T)
    await wait_status(a, bob, lambda p: p["type"] in ("available", "chat", "away", "dnd", "xa"))
    for _ in range(100):
        if a.client_roster[bob]["subscription"] == "both" and b.client_roster[alice]["subscription"] == "both":
            break
        await asyncio.sleep(0.1)
    assert a.client_roster[bob]["subscription"] == "both", a.client_roster[bob]["subscription"]
    assert b.client_roster[alice]["subscription"] == "both", b.client_roster[alice]["subscription"]
    print("OK subscription both ways", flush=True)

    # Presence changes are seen by the contact.
    b.send_presence(pshow="dnd", pstatus="in a meeting")
    p = await wait_status(a, bob, lambda p: p["status"] == "in a meeting")
    assert p["show"] == "dnd", p["show"]
    print("OK presence change seen", flush=True)

    # Bob goes offline; alice sees it and writes to him anyway.
    b.disconnect()
    await asyncio.wait_for(a.offline_seen.wait(), T)
    print("OK offline seen", flush=True)
    for i in range(2):
        a.send_message(mto=bob, mbody=f"while you were away {i}", mtype="chat")
    await asyncio.sleep(0.5)

    # Bob's next login gets them, stamped.
    b2 = Client(f"{U2}@{DOMAIN}/slix2", P2)
    b2.connect(host=HOST, port=int(PORT))
    await asyncio.wait_for(b2.online.wait(), T)
    got = []
    while len(got) < 2:
        m = await asyncio.wait_for(b2.inbox.get(), T)
        if m["body"].startswith("while you were away"):
            got.append(m)
    assert [m["body"] for m in got] == ["while you were away 0", "while you were away 1"], [m["body"] for m in got]
    assert all(m["delay"]["stamp"] is not None for m in got)
    print("OK offline messages delivered with delay", flush=True)

    a.disconnect()
    b2.disconnect()
    print("ALL OK", flush=True)


if __name__ == "__main__":
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 90))
    except Exception as e:
        print(f"FAIL {type(e).__name__}: {e}", flush=True)
        sys.exit(1)
