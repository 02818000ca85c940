"""SASL ANONYMOUS (XEP-0175) with slixmpp: log in to the anonymous host with
no username or password (slixmpp then picks ANONYMOUS itself), learn the
temporary JID the server made, message PEER, and disconnect.
Prints "STEP anonymous JID" and "STEP sent".

usage: slixmpp_anonymous.py ANON_DOMAIN HOST:PORT PEER
"""
import asyncio
import sys

import slixmpp

from helpers import check, connect, setup_client

ANON, ADDR, PEER = sys.argv[1:4]


class Client(slixmpp.ClientXMPP):
    def __init__(self):
        super().__init__(ANON, "")
        setup_client(self, [], mech=None)
        self.online = asyncio.Event()
        self.add_event_handler("session_start", lambda _: self.online.set())


async def main():
    c = Client()
    await connect(c, ADDR, c.online)
    jid = str(c.boundjid)
    check(jid.split("@")[-1].split("/")[0] == ANON, f"bound to {jid}")
    check(bool(c.boundjid.user), f"no local part in {jid}")
    print(f"STEP anonymous {jid}", flush=True)
    c.send_presence()
    c.send_message(mto=PEER, mbody="hello from slixmpp", mtype="chat")
    await asyncio.sleep(0.5)
    print("STEP sent", flush=True)
    c.disconnect()
    await asyncio.wait_for(c.disconnected, 10)


asyncio.run(main())
