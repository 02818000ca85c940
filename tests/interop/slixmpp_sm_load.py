"""Stream-management clients built with slixmpp (XEP-0198 plugin) for the
rolling-restart test: each logs in through the load balancer, enables
resumable stream management, sends a message every 250 ms to the other
users in turn, and on a dropped stream connects again and resumes.

Prints "ONLINE" once every client has a session, then waits for a line on
stdin ("GO") before sending. At the end prints one JSON line:
{"sent": {id: to_user}, "received": {user: [ids]}, "acked": [ids],
 "resumed": n, "failures": [text]}. slixmpp drops a message it was still
sending when its connection closed (its XEP-0198 filter runs after the
disconnect, so the message is neither written nor queued for resending):
only "acked" ones are the server's to deliver.

usage: slixmpp_sm_load.py HOST PORT DOMAIN PASSWORD SECONDS TOTAL USER...
(users are named uN; TOTAL is how many users take part in all)
"""
import asyncio
import json
import ssl
import sys

import slixmpp

HOST, PORT, DOMAIN, PASSWORD = sys.argv[1:5]
SECONDS = float(sys.argv[5])
TOTAL = int(sys.argv[6])
USERS = sys.argv[7:]
SM = "urn:xmpp:sm:3"


class Client(slixmpp.ClientXMPP):
    def __init__(self, user):
        super().__init__(f"{user}@{DOMAIN}/r", PASSWORD, sasl_mech="SCRAM-SHA-256")
        self.user = user
        # The test servers use self-signed certificates.
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
        self.received = []
        # Ids of our messages the server acknowledged (XEP-0198 <a h/>).
        self.acked = []
        self.resumed = 0
        self.failures = []
        self.stopping = False
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("session_resumed", self.on_resumed)
        self.add_event_handler("sm_failed", self.on_sm_failed)
        self.add_event_handler("disconnected", self.on_disconnected)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("failed_auth", self.on_failed_auth)
        self.add_event_handler("stanza_acked", self.on_acked)

    async def on_start(self, _):
        if self.ever_online.is_set():
            # A new session instead of the old one: resumption failed.
            self.failures.append(f"{self.user}: new session instead of resume")
        self.send_presence()
        self.online.set()
        self.ever_online.set()

    def on_resumed(self, _):
        self.resumed += 1
        self.online.set()

    def on_sm_failed(self, stanza):
        if self.ever_online.is_set():
            self.failures.append(f"{self.user}: resume failed: {stanza}")

    def on_failed_auth(self, _):
        self.failures.append(f"{self.user}: authentication failed")

    def on_disconnected(self, _):
        self.online.clear()
        if not self.stopping:
            asyncio.get_event_loop().call_later(0.2, self.reconnect_now)

    def reconnect_now(self):
        if not self.stopping:
            self.connect(host=HOST, port=int(PORT))

    def on_acked(self, stanza):
        if stanza.name == "message" and stanza["id"]:
            self.acked.append(stanza["id"])

    def on_message(self, msg):
        if msg["type"] == "chat" and msg["id"]:
            self.received.append(msg["id"])


async def traffic(c, index, sent):
    k = 0
    loop = asyncio.get_event_loop()
    until = loop.time() + SECONDS
    while loop.time() < until:
        if c.online.is_set():
            to = f"u{(index + 1 + (k % (TOTAL - 1))) % TOTAL}"
            mid = f"{c.user}-{k}"
            sent[mid] = to
            m = c.make_message(mto=f"{to}@{DOMAIN}/r", mbody=mid, mtype="chat")
            m["id"] = mid
            m.send()
            k += 1
        await asyncio.sleep(0.25)


async def main():
    clients = [Client(u) for u in USERS]
    for c in clients:
        c.connect(host=HOST, port=int(PORT))
    await asyncio.wait_for(asyncio.gather(*(c.ever_online.wait() for c in clients)), 60)
    print("ONLINE", flush=True)
    loop = asyncio.get_event_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    sent = {}
    await asyncio.gather(*(traffic(c, int(c.user[1:]), sent) for c in clients))
    # Let the last messages arrive and everything be acknowledged.
    for _ in range(16):
        for c in clients:
            if c.online.is_set():
                c.plugin["xep_0198"].request_ack()
        await asyncio.sleep(0.5)
    unacked = sum(len(c.plugin["xep_0198"].unacked_queue) for c in clients)
    failures = [f for c in clients for f in c.failures]
    if unacked:
        failures.append(f"{unacked} stanzas never acknowledged by the server")
    for c in clients:
        c.stopping = True
        c.disconnect()
    print(
        json.dumps(
            {
                "sent": sent,
                "received": {c.user: c.received for c in clients},
                "acked": [i for c in clients for i in c.acked],
                "resumed": sum(c.resumed for c in clients),
                "failures": failures,
            }
        ),
        flush=True,
    )


asyncio.run(main())
