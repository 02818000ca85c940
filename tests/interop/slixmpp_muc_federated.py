"""Group chat across servers, with slixmpp's XEP-0045 plugin: a user of
the other server (Prosody or ejabberd) enters a Starling room (presence
both ways, messages to all both ways, a private message), and a Starling
user enters a room on the other server.

usage: slixmpp_muc_federated.py STARLING_MUC PEER_MUC
           HOST:PORT ALICE_JID PASS   (a Starling user)
           HOST:PORT BOB_JID PASS     (the other server's user)
The other server's name in the OK lines is PEER's (default "prosody").
"""
import asyncio
import os
import ssl
import sys

import slixmpp
from slixmpp import JID

from helpers import online_clients

S_MUC, P_MUC = sys.argv[1:3]
USERS = [sys.argv[3:6], sys.argv[6:9]]
T = 30
PEER = os.environ.get("PEER", "prosody")
MUC_USER = "http://jabber.org/protocol/muc#user"


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.enable_direct_tls = False
        for p in ["xep_0030", "xep_0004", "xep_0045", "xep_0199"]:
            self.register_plugin(p)
        self.online = asyncio.Event()
        self.groupchat = asyncio.Queue()
        self.private = asyncio.Queue()
        self.presences = asyncio.Queue()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("groupchat_message", self.on_groupchat)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("groupchat_presence", lambda p: self.presences.put_nowait(p))

    async def on_start(self, _):
        self.send_presence()
        self.online.set()

    def on_groupchat(self, m):
        if m["body"]:
            self.groupchat.put_nowait(m)

    def on_message(self, m):
        if m["type"] in ("chat", "normal") and m["body"] and m.xml.find(f"{{{MUC_USER}}}x") is not None:
            self.private.put_nowait(m)


def check(cond, what):
    if not cond:
        print("FAIL", what, flush=True)
        sys.exit(1)


async def next_of(q, pred, what):
    try:
        async with asyncio.timeout(T):
            while True:
                m = await q.get()
                if pred(m):
                    return m
    except TimeoutError:
        check(False, f"timed out waiting for {what}")


def codes(p):
    x = p.xml.find(f"{{{MUC_USER}}}x")
    return set() if x is None else {s.get("code") for s in x.findall(f"{{{MUC_USER}}}status")}


async def main():
    alice, bob = await online_clients(Client, USERS, wait=T)
    print("OK login", flush=True)

    # The other server's user in a Starling room.
    room = JID(f"lobby@{S_MUC}")
    await alice.plugin["xep_0045"].join_muc_wait(room, "alice", timeout=T)
    pres, _, occupants, _ = await bob.plugin["xep_0045"].join_muc_wait(room, "bob", timeout=T)
    check("110" in codes(pres), f"bob's self-presence {codes(pres)}")
    check("alice" in [o["from"].resource for o in occupants], "bob sees alice")
    await next_of(alice.presences, lambda p: p["from"] == JID(f"{room}/bob"), "alice sees bob")
    print(f"OK {PEER} user entered a starling room", flush=True)
    bob.send_message(mto=room, mbody=f"hi from {PEER}", mtype="groupchat")
    m = await next_of(alice.groupchat, lambda m: m["body"] == f"hi from {PEER}", "bob's message at alice")
    check(m["from"] == JID(f"{room}/bob"), f"from {m['from']}")
    await next_of(bob.groupchat, lambda m: m["body"] == f"hi from {PEER}", "bob's reflection")
    alice.send_message(mto=room, mbody="hi from starling", mtype="groupchat")
    await next_of(bob.groupchat, lambda m: m["body"] == "hi from starling", "alice's message at bob")
    bob.send_message(mto=JID(f"{room}/alice"), mbody="psst", mtype="chat")
    m = await next_of(alice.private, lambda m: m["body"] == "psst", "private message")
    check(m["from"] == JID(f"{room}/bob"), f"private from {m['from']}")
    bob.plugin["xep_0045"].leave_muc(room, "bob")
    await next_of(alice.presences, lambda p: p["from"] == JID(f"{room}/bob") and p["type"] == "unavailable", "bob left")
    print("OK messages both ways in a starling room", flush=True)

    # A Starling user in a room of the other server.
    proom = JID(f"hall@{P_MUC}")
    pres, _, _, _ = await bob.plugin["xep_0045"].join_muc_wait(proom, "bob", timeout=T)
    if "201" in codes(pres):
        form = await bob.plugin["xep_0045"].get_room_config(proom)
        form["type"] = "submit"
        await bob.plugin["xep_0045"].set_room_config(proom, form)
    pres, _, occupants, _ = await alice.plugin["xep_0045"].join_muc_wait(proom, "alice", timeout=T)
    check("110" in codes(pres), f"alice's self-presence in {PEER}'s room {codes(pres)}")
    check("bob" in [o["from"].resource for o in occupants], f"alice sees bob in {PEER}'s room")
    alice.send_message(mto=proom, mbody="starling here", mtype="groupchat")
    await next_of(bob.groupchat, lambda m: m["body"] == "starling here", f"alice's message in {PEER}'s room")
    bob.send_message(mto=proom, mbody=f"{PEER} here", mtype="groupchat")
    await next_of(alice.groupchat, lambda m: m["body"] == f"{PEER} here", "bob's message at alice")
    print(f"OK starling user in a room on {PEER}", flush=True)

    for c in (alice, bob):
        c.disconnect()
    print("ALL OK", flush=True)


asyncio.run(main())
