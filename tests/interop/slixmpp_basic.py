"""Interop check with slixmpp (a client library we did not write).

Two accounts log in over STARTTLS with SCRAM-SHA-256, exchange messages both
ways, ping the server (XEP-0199) and read its disco#info (XEP-0030).
Prints one line per verified step; exits non-zero on any failure.

usage: slixmpp_basic.py HOST PORT DOMAIN USER1 PASS1 USER2 PASS2
"""
import asyncio
import ssl
import sys

import slixmpp

HOST, PORT, DOMAIN, U1, P1, U2, P2 = sys.argv[1:8]
TIMEOUT = 20


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password, sasl_mech="SCRAM-SHA-256")
        # Our test server uses a self-signed certificate.
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.force_starttls = True
        self.enable_direct_tls = False
        self.enable_starttls = True
        self.enable_plaintext = False
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0199")
        self.inbox = asyncio.Queue()
        self.online = asyncio.Event()
        self.mech = None
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("failed_auth", self.on_failed)
        self.add_event_handler("auth_success", self.on_auth)

    async def on_start(self, _):
        self.send_presence()
        self.online.set()

    def on_auth(self, _):
        self.mech = self.plugin["feature_mechanisms"].mech.name if self.plugin["feature_mechanisms"].mech else None

    def on_failed(self, _):
        print("FAIL auth failed for", self.boundjid, flush=True)
        sys.exit(1)

    def on_message(self, msg):
        if msg["type"] in ("chat", "normal"):
            self.inbox.put_nowait((str(msg["from"]), msg["body"]))


async def main():
    a = Client(f"{U1}@{DOMAIN}/slix", P1)
    b = Client(f"{U2}@{DOMAIN}/slix", P2)
    for c in (a, b):
        c.connect(host=HOST, port=int(PORT))
    await asyncio.wait_for(asyncio.gather(a.online.wait(), b.online.wait()), TIMEOUT)
    assert a.mech == "SCRAM-SHA-256", a.mech
    assert b.mech == "SCRAM-SHA-256", b.mech
    assert a.is_connected_secure if hasattr(a, "is_connected_secure") else True
    print(f"OK login {a.boundjid} {b.boundjid} mech={a.mech}", flush=True)

    a.send_message(mto=b.boundjid, mbody="hello from a", mtype="chat")
    frm, body = await asyncio.wait_for(b.inbox.get(), TIMEOUT)
    assert body == "hello from a" and frm == str(a.boundjid), (frm, body)
    b.send_message(mto=a.boundjid, mbody="hello from b", mtype="chat")
    frm, body = await asyncio.wait_for(a.inbox.get(), TIMEOUT)
    assert body == "hello from b" and frm == str(b.boundjid), (frm, body)
    # To the bare JID: delivered to the available resource.
    a.send_message(mto=f"{U2}@{DOMAIN}", mbody="to bare", mtype="chat")
    frm, body = await asyncio.wait_for(b.inbox.get(), TIMEOUT)
    assert body == "to bare", body
    print("OK messages both ways", flush=True)

    rtt = await a.plugin["xep_0199"].ping(jid=DOMAIN, timeout=TIMEOUT)
    print(f"OK ping rtt={rtt:.4f}", flush=True)

    info = await a.plugin["xep_0030"].get_info(jid=DOMAIN, timeout=TIMEOUT)
    features = set(info["disco_info"]["features"])
    identities = info["disco_info"]["identities"]
    for f in ("http://jabber.org/protocol/disco#info", "urn:xmpp:ping", "jabber:iq:version"):
        assert f in features, (f, features)
    assert any(i[0] == "server" and i[1] == "im" for i in identities), identities
    print(f"OK disco features={len(features)}", flush=True)

    for c in (a, b):
        c.disconnect()
    print("ALL OK", flush=True)


if __name__ == "__main__":
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 60))
    except Exception as e:  # report and fail
        print(f"FAIL {type(e).__name__}: {e}", flush=True)
        sys.exit(1)
