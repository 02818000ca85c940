"""The publish-subscribe service at pubsub.DOMAIN (XEP-0060) with
slixmpp's XEP-0060 plugin, each user on the node given for it: a node
created with a configuration form, listed and described by disco, its
subscribers told of each publish; a non-publisher refused until the owner
makes it a publisher; items by max_items; a retraction, a purge and the
deletion notified; an outcast refused; the owner's affiliations list.

usage: slixmpp_pubsub.py DOMAIN HOST:PORT USER PASS (x3: alice, bob, carol)
"""
import asyncio
import sys

import slixmpp
from slixmpp import JID
from slixmpp.plugins.xep_0004 import Form
from slixmpp.xmlstream import ET

from helpers import T, check, condition_of, connect, setup_client

DOMAIN = sys.argv[1]
USERS = [sys.argv[2 + 3 * i: 5 + 3 * i] for i in range(3)]
SERVICE = JID(f"pubsub.{DOMAIN}")
NODE = "news"


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password, sasl_mech="SCRAM-SHA-256")
        setup_client(self, ["xep_0030", "xep_0004", "xep_0060"])
        self.online = asyncio.Event()
        self.events = asyncio.Queue()
        for name in ["pubsub_publish", "pubsub_retract", "pubsub_purge", "pubsub_delete"]:
            self.add_event_handler(name, lambda m, name=name: self.events.put_nowait((name, m)))
        self.add_event_handler("session_start", self.on_start)

    async def on_start(self, _):
        self.send_presence()
        self.online.set()

    async def next_event(self, kind):
        while True:
            name, m = await asyncio.wait_for(self.events.get(), T)
            if name == kind:
                return m


def entry(n):
    return ET.fromstring(f"<entry xmlns='http://www.w3.org/2005/Atom'><title>post {n}</title></entry>")


async def main():
    clients = []
    for addr, user, pw in USERS:
        c = Client(f"{user}@{DOMAIN}/desk", pw)
        await connect(c, addr, c.online)
        clients.append(c)
    alice, bob, carol = clients
    ps = lambda c: c.plugin["xep_0060"]

    info = await alice.plugin["xep_0030"].get_info(jid=SERVICE)
    check(any(i[0] == "pubsub" and i[1] == "service" for i in info["disco_info"]["identities"]),
          "a pubsub service")
    form = Form()
    form["type"] = "submit"
    form.add_field(var="pubsub#title", value="The news")
    form.add_field(var="pubsub#max_items", value="5")
    form.add_field(var="pubsub#access_model", value="open")
    await ps(alice).create_node(SERVICE, NODE, config=form)
    cond, _ = await condition_of(ps(bob).create_node(SERVICE, NODE))
    check(cond == "conflict", f"a second create: {cond}")
    items = await alice.plugin["xep_0030"].get_items(jid=SERVICE)
    nodes = [(i[1], i[2]) for i in items["disco_items"]["items"]]
    check((NODE, "The news") in nodes, f"listed: {nodes}")
    info = await bob.plugin["xep_0030"].get_info(jid=SERVICE, node=NODE)
    check(any(i[0] == "pubsub" and i[1] == "leaf" for i in info["disco_info"]["identities"]),
          "a leaf node")
    print("OK node created and listed", flush=True)

    await ps(bob).subscribe(SERVICE, NODE)
    await ps(alice).subscribe(SERVICE, NODE)
    for n in range(7):
        await ps(alice).publish(SERVICE, NODE, id=f"p{n}", payload=entry(n))
    for n in range(7):
        m = await bob.next_event("pubsub_publish")
        check(m["pubsub_event"]["items"]["item"]["id"] == f"p{n}", f"bob told of p{n} in order")
    got = await ps(carol).get_items(SERVICE, NODE)
    ids = sorted(i["id"] for i in got["pubsub"]["items"])
    check(ids == [f"p{n}" for n in range(2, 7)], f"max_items 5 keeps the newest: {ids}")
    got = await ps(carol).get_items(SERVICE, NODE, max_items=2)
    check(len(got["pubsub"]["items"]) == 2, "max_items on retrieval")
    print("OK subscribers told of each publish", flush=True)

    cond, _ = await condition_of(ps(bob).publish(SERVICE, NODE, id="b1", payload=entry("b")))
    check(cond == "forbidden", f"a non-publisher is refused: {cond}")
    await ps(alice).modify_affiliations(SERVICE, NODE, [(JID(bob.boundjid.bare), "publisher")])
    await ps(bob).publish(SERVICE, NODE, id="b1", payload=entry("b"))
    m = await alice.next_event("pubsub_publish")
    while m["pubsub_event"]["items"]["item"]["id"] != "b1":
        m = await alice.next_event("pubsub_publish")
    print("OK publisher affiliation", flush=True)

    await ps(alice).retract(SERVICE, NODE, "p6", notify=True)
    m = await bob.next_event("pubsub_retract")
    check(m["pubsub_event"]["items"]["retract"]["id"] == "p6", "retract notified")
    await ps(alice).purge(SERVICE, NODE)
    await bob.next_event("pubsub_purge")
    got = await ps(carol).get_items(SERVICE, NODE)
    check(len(got["pubsub"]["items"]) == 0, "purged")
    print("OK retract and purge", flush=True)

    await ps(alice).modify_affiliations(SERVICE, NODE, [(JID(carol.boundjid.bare), "outcast")])
    cond, _ = await condition_of(ps(carol).subscribe(SERVICE, NODE))
    check(cond == "forbidden", f"an outcast is refused: {cond}")
    affs = await ps(alice).get_affiliations(SERVICE)
    mine = [(a["node"], a["affiliation"]) for a in affs["pubsub"]["affiliations"]]
    check((NODE, "owner") in mine, f"owner affiliation {mine}")
    cond, _ = await condition_of(ps(bob).delete_node(SERVICE, NODE))
    check(cond == "forbidden", f"only the owner deletes: {cond}")
    print("OK affiliations", flush=True)

    await ps(alice).delete_node(SERVICE, NODE)
    await bob.next_event("pubsub_delete")
    cond, _ = await condition_of(ps(bob).get_items(SERVICE, NODE))
    check(cond == "item-not-found", f"deleted: {cond}")
    print("OK node deleted", flush=True)

    for c in clients:
        c.disconnect()
    print("ALL OK", flush=True)


asyncio.run(asyncio.wait_for(main(), 150))
