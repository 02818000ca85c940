"""XEP-0045 limits and bad input, driven with slixmpp's XEP-0045 plugin
(the server runs with at most 2 rooms per user, 3 messages/s per
occupant and a history of at most 5): a third room is refused, a full
room turns a newcomer away, an occupant sending too fast is told to slow
down for the excess only, a history length over the service's is
refused, configuration forms with wrong types are refused and change
nothing, and an affiliation for a malformed JID is jid-malformed (one
for a JID nobody uses is kept). A nick that is no valid resourcepart is
refused in slixmpp_muc_registration.py.

usage: slixmpp_muc_limits.py MUCDOMAIN HOST:PORT JID PASS (x3: alice, bob, carol)
"""
import asyncio
import sys
import xml.etree.ElementTree as ET

import slixmpp
from slixmpp import JID
from slixmpp.exceptions import PresenceError
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import StanzaPath

from helpers import T, check, condition_of, online_clients, setup_client

MUCD = sys.argv[1]
USERS = [sys.argv[2 + 3 * i: 5 + 3 * i] for i in range(3)]
MUC_OWNER = "http://jabber.org/protocol/muc#owner"
DATA = "jabber:x:data"


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        setup_client(self, ["xep_0030", "xep_0004", "xep_0045"], mech=None)
        self.online = asyncio.Event()
        self.groupchat = asyncio.Queue()
        self.errors = asyncio.Queue()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("groupchat_message", lambda m: self.groupchat.put_nowait(m))
        self.register_handler(
            Callback("message errors", StanzaPath("message@type=error"), self.errors.put_nowait))

    async def on_start(self, _):
        self.send_presence()
        self.online.set()


async def enter(c, room, nick):
    """None once in, or the error condition the room answered."""
    try:
        await c.plugin["xep_0045"].join_muc_wait(JID(room), nick, timeout=T)
    except PresenceError as e:
        return e.condition
    return None


def owner_set(c, room, fields):
    iq = c.make_iq_set(ito=room)
    body = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items())
    iq.append(ET.fromstring(
        f"<query xmlns='{MUC_OWNER}'><x xmlns='{DATA}' type='submit'>"
        f"<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>"
        f"{body}</x></query>"))
    return iq.send(timeout=T)


async def config_value(c, room, var):
    form = await c.plugin["xep_0045"].get_room_config(JID(room))
    return form.field[var]["value"]


async def main():
    clients = await online_clients(Client, USERS)
    alice, bob, carol = clients

    # Rooms per user: two, then a third is refused.
    for r in ("one", "two"):
        check(await enter(alice, f"{r}@{MUCD}", "alice") is None, f"alice enters {r}")
    cond = await enter(alice, f"three@{MUCD}", "alice")
    check(cond == "resource-constraint", f"a third room: {cond}")
    alice.plugin["xep_0045"].leave_muc(JID(f"two@{MUCD}"), "alice")
    await asyncio.sleep(0.5)
    check(await enter(alice, f"three@{MUCD}", "alice") is None, "a room again once one is left")
    print("OK rooms per user", flush=True)

    # Occupants per room: the room's maximum, set by its owner.
    room = f"one@{MUCD}"
    await owner_set(alice, room, {"muc#roomconfig_maxusers": "2"})
    check(await enter(bob, room, "bob") is None, "bob enters")
    cond = await enter(carol, room, "carol")
    check(cond == "service-unavailable", f"a full room: {cond}")
    print("OK occupants per room", flush=True)

    # History: not over the service's limit; wrong types change nothing.
    cond, _ = await condition_of(owner_set(alice, room, {"muc#roomconfig_historylength": "500"}))
    check(cond == "not-acceptable", f"history over the limit: {cond}")
    for var, bad in [("muc#roomconfig_historylength", "many"),
                     ("muc#roomconfig_persistentroom", "perhaps"),
                     ("muc#roomconfig_maxusers", "-3"),
                     ("muc#roomconfig_whois", "everybody")]:
        cond, _ = await condition_of(owner_set(alice, room, {var: bad}))
        check(cond == "not-acceptable", f"{var}={bad}: {cond}")
    check(str(await config_value(alice, room, "muc#roomconfig_maxusers")) == "2", "the form changed nothing")
    print("OK forms", flush=True)

    # Affiliations: a malformed JID is refused, an unused one is kept.
    # Raw: slixmpp itself would refuse to build a stanza with that JID.
    iq = alice.make_iq_set(ito=room)
    iq.append(ET.fromstring(
        "<query xmlns='http://jabber.org/protocol/muc#admin'>"
        "<item affiliation='member' jid='not a jid@@x'/></query>"))
    cond, _ = await condition_of(iq.send(timeout=T))
    check(cond == "jid-malformed", f"an affiliation for a malformed JID: {cond}")
    await alice.plugin["xep_0045"].set_affiliation(JID(room), "member", jid=JID(f"nobody@{alice.boundjid.domain}"))
    members = await alice.plugin["xep_0045"].get_affiliation_list(JID(room), "member")
    check(f"nobody@{alice.boundjid.domain}" in [str(j) for j in members], f"members {members}")
    print("OK affiliations", flush=True)

    # Message rate: the excess is refused, what was taken is reflected.
    for i in range(20):
        bob.send_message(mto=JID(room), mbody=f"fast {i}", mtype="groupchat", mfrom=None)
    taken, refused = 0, 0
    while taken + refused < 20:
        get_msg = asyncio.ensure_future(bob.groupchat.get())
        get_err = asyncio.ensure_future(bob.errors.get())
        done, pending = await asyncio.wait({get_msg, get_err}, timeout=T,
                                           return_when=asyncio.FIRST_COMPLETED)
        for p in pending:
            p.cancel()
        check(done, f"waiting for the room's answers: {taken} taken, {refused} refused")
        for d in done:
            m = d.result()
            if m["type"] == "error":
                check(m["error"]["condition"] == "resource-constraint", f"refused with {m['error']['condition']}")
                refused += 1
            elif m["body"].startswith("fast "):
                taken += 1
    check(refused > 0 and taken >= 3, f"taken {taken}, refused {refused}")
    print("OK message rate", flush=True)

    for c in clients:
        c.disconnect()
    print("ALL OK", flush=True)


asyncio.run(main())
