"""Federation check with slixmpp clients on two servers: A (on Starling)
and B (on the remote server) complete a subscription handshake, see each
other online, and exchange messages both ways. One line per verified
step; exits non-zero on any failure.

usage: slixmpp_federation.py A_HOST A_PORT A_JID A_PASS B_HOST B_PORT B_JID B_PASS
"""
import asyncio
import ssl
import sys

import slixmpp

AH, AP, AJ, APW, BH, BP, BJ, BPW = sys.argv[1:9]
T = 30


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        # The test servers use self-signed certificates.
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.enable_direct_tls = False
        self.online = asyncio.Event()
        self.subscribed = asyncio.Event()
        self.available = {}
        self.inbox = asyncio.Queue()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("presence_subscribed", lambda p: self.subscribed.set())
        self.add_event_handler("got_online", self.on_online)
        self.add_event_handler("message", self.on_message)

    async def on_start(self, _):
        await self.get_roster()
        self.send_presence()
        self.online.set()

    def on_online(self, p):
        self.available.setdefault(p["from"].bare, asyncio.Event()).set()

    def on_message(self, m):
        if m["type"] in ("chat", "normal") and m["body"]:
            self.inbox.put_nowait((m["from"].bare, m["body"]))

    async def seen_online(self, bare):
        await self.available.setdefault(bare, asyncio.Event()).wait()


async def expect(c, frm, body):
    while True:
        f, b = await asyncio.wait_for(c.inbox.get(), T)
        if f == frm and b == body:
            return


async def main():
    global AJ, BJ
    a = Client(AJ, APW)
    b = Client(BJ, BPW)
    a.connect(host=AH, port=int(AP))
    b.connect(host=BH, port=int(BP))
    await asyncio.wait_for(asyncio.gather(a.online.wait(), b.online.wait()), T)
    print("OK both online", flush=True)
    AJ, BJ = slixmpp.JID(AJ).bare, slixmpp.JID(BJ).bare

    # slixmpp's default auto_authorize accepts and auto_subscribe asks back.
    a.send_presence_subscription(pto=BJ)
    await asyncio.wait_for(a.subscribed.wait(), T)
    for _ in range(300):
        if a.client_roster[BJ]["subscription"] == "both" and b.client_roster[AJ]["subscription"] == "both":
            break
        await asyncio.sleep(0.1)
    assert a.client_roster[BJ]["subscription"] == "both", a.client_roster[BJ]["subscription"]
    assert b.client_roster[AJ]["subscription"] == "both", b.client_roster[AJ]["subscription"]
    print("OK subscription both ways", flush=True)

    await asyncio.wait_for(a.seen_online(BJ), T)
    print("OK A sees B online", flush=True)
    await asyncio.wait_for(b.seen_online(AJ), T)
    print("OK B sees A online", flush=True)

    for i in range(3):
        a.send_message(mto=BJ, mbody=f"a->b {i}", mtype="chat")
        b.send_message(mto=AJ, mbody=f"b->a {i}", mtype="chat")
    for i in range(3):
        await expect(b, AJ, f"a->b {i}")
        await expect(a, BJ, f"b->a {i}")
    print("OK messages both ways", flush=True)

    a.disconnect()
    b.disconnect()
    print("ALL OK", flush=True)


if __name__ == "__main__":
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 120))
    except Exception as e:
        print(f"FAIL {type(e).__name__}: {e!r}", flush=True)
        sys.exit(1)
