"""XEP-0045 §7.10 registration and §7.12 reserved nicks, driven with
slixmpp (its XEP-0045 and XEP-0004 plugins; the register iq by hand,
as slixmpp has no room-registration call): bob registers a nick and
becomes a member, nobody else may enter with it or change to it, the
reservation outlives the room leaving memory, a banned user and a
non-member of a members-only room are refused, and `<remove/>` gives
the nick and the membership back.

usage: slixmpp_muc_registration.py MUCDOMAIN HOST:PORT JID PASS (x3: alice, bob, carol)
"""
import asyncio
import sys
import xml.etree.ElementTree as ET

import slixmpp
from slixmpp import JID
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import StanzaPath

from helpers import check, condition_of, next_of, online_clients, setup_client, T

MUCD = sys.argv[1]
USERS = [sys.argv[2 + 3 * i: 5 + 3 * i] for i in range(3)]
ROOM = JID(f"regroom@{MUCD}")
REGISTER = "jabber:iq:register"
DATA = "jabber:x:data"
MUC_USER = "http://jabber.org/protocol/muc#user"


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        setup_client(self, ["xep_0030", "xep_0004", "xep_0045"], mech=None)
        self.online = asyncio.Event()
        self.presences = asyncio.Queue()
        self.errors = asyncio.Queue()
        self.add_event_handler("session_start", self.on_start)
        self.register_handler(
            Callback("presence errors", StanzaPath("presence@type=error"), self.errors.put_nowait))
        self.add_event_handler("groupchat_presence", lambda p: self.presences.put_nowait(p))

    async def on_start(self, _):
        self.send_presence()
        self.online.set()


def register_iq(c, kind, payload=""):
    iq = c.make_iq_get(ito=ROOM) if kind == "get" else c.make_iq_set(ito=ROOM)
    iq.append(ET.fromstring(f"<query xmlns='{REGISTER}'>{payload}</query>"))
    return iq.send(timeout=T)


def submit(nick):
    value = "" if nick is None else f"<value>{nick}</value>"
    return (f"<x xmlns='{DATA}' type='submit'>"
            "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#register</value></field>"
            f"<field var='muc#register_roomnick'>{value}</field></x>")


async def reserved_nick(c):
    info = await c.plugin["xep_0030"].get_info(jid=ROOM, node="x-roomuser-item", timeout=T)
    names = [i[3] for i in info["disco_info"]["identities"]]
    return names[0] if names else None


def codes(p):
    x = p.xml.find(f"{{{MUC_USER}}}x")
    return set() if x is None else {s.get("code") for s in x.findall(f"{{{MUC_USER}}}status")}


async def enter_condition(c, nick):
    try:
        await c.plugin["xep_0045"].join_muc_wait(ROOM, nick, timeout=T)
    except slixmpp.exceptions.PresenceError as e:
        return e.condition
    return None


async def configure(c, **fields):
    form = await c.plugin["xep_0045"].get_room_config(ROOM)
    form["type"] = "submit"
    for var, value in fields.items():
        form.field[var]["value"] = value
    await c.plugin["xep_0045"].set_room_config(ROOM, form)


async def main():
    clients = await online_clients(Client, USERS)
    alice, bob, carol = clients
    pres, _, _, _ = await alice.plugin["xep_0045"].join_muc_wait(ROOM, "alice", timeout=T)
    await configure(alice, **{"muc#roomconfig_persistentroom": True})
    info = await bob.plugin["xep_0030"].get_info(jid=ROOM, timeout=T)
    check(REGISTER in info["disco_info"]["features"], "the room advertises registration")
    check(await reserved_nick(bob) is None, "no reserved nick before registering")

    # The form, then bad submissions.
    got = await register_iq(bob, "get")
    q = got.xml.find(f"{{{REGISTER}}}query")
    fields = {f.get("var"): f for f in q.iter(f"{{{DATA}}}field")}
    check("muc#register_roomnick" in fields, f"the form asks for a nick: {list(fields)}")
    check(fields["muc#register_roomnick"].find(f"{{{DATA}}}required") is not None, "the nick is required")
    cond, _ = await condition_of(register_iq(bob, "set", submit(None)))
    check(cond == "not-acceptable", f"a form without a nick: {cond}")
    cond, _ = await condition_of(register_iq(bob, "set", submit("x" * 1100)))
    check(cond == "jid-malformed", f"a nick too long for a resource: {cond}")
    cond, _ = await condition_of(register_iq(bob, "set", ""))
    check(cond == "bad-request", f"neither a form nor <remove/>: {cond}")
    print("OK form", flush=True)

    # bob registers: a member with a reserved nick.
    await register_iq(bob, "set", submit("thirdwitch"))
    check(await reserved_nick(bob) == "thirdwitch", "bob's reserved nick")
    got = await register_iq(bob, "get")
    q = got.xml.find(f"{{{REGISTER}}}query")
    check(q.find(f"{{{REGISTER}}}registered") is not None, f"registered: {ET.tostring(q)}")
    check(q.findtext(f"{{{REGISTER}}}username") == "thirdwitch", "the registered nick")
    members = await alice.plugin["xep_0045"].get_affiliation_list(ROOM, "member")
    check(JID(bob.boundjid.bare) in [JID(j) for j in members], f"bob is a member: {members}")
    check(await reserved_nick(carol) is None, "carol has no reserved nick")
    print("OK registered", flush=True)

    # Nobody else takes it: entering, registering, changing to it.
    cond = await enter_condition(carol, "thirdwitch")
    check(cond == "conflict", f"carol entering as thirdwitch: {cond}")
    cond, _ = await condition_of(register_iq(carol, "set", submit("thirdwitch")))
    check(cond == "conflict", f"carol registering thirdwitch: {cond}")
    await carol.plugin["xep_0045"].join_muc_wait(ROOM, "carol", timeout=T)
    carol.send_presence(pto=f"{ROOM}/thirdwitch")
    err = await next_of(carol.errors, lambda p: p["from"].resource == "thirdwitch", "carol's refused nick change")
    check(err["error"]["condition"] == "conflict", f"nick change to thirdwitch: {err['error']['condition']}")
    pres, _, _, _ = await bob.plugin["xep_0045"].join_muc_wait(ROOM, "thirdwitch", timeout=T)
    item = pres.xml.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}item")
    check(item is not None and item.get("affiliation") == "member", f"bob enters as a member: {ET.tostring(pres.xml)}")
    print("OK reserved", flush=True)

    # The room leaves memory (everyone gone) and comes back from its records.
    for c, nick in [(alice, "alice"), (bob, "thirdwitch"), (carol, "carol")]:
        c.plugin["xep_0045"].leave_muc(ROOM, nick)
    await asyncio.sleep(1)
    check(await reserved_nick(bob) == "thirdwitch", "the reservation outlives the room leaving memory")
    cond = await enter_condition(carol, "thirdwitch")
    check(cond == "conflict", f"carol entering as thirdwitch later: {cond}")
    print("OK kept", flush=True)

    # Banned: refused. Members-only: a non-member is told membership is needed.
    await alice.plugin["xep_0045"].join_muc_wait(ROOM, "alice", timeout=T)
    await alice.plugin["xep_0045"].set_affiliation(ROOM, "outcast", jid=JID(carol.boundjid.bare))
    cond, _ = await condition_of(register_iq(carol, "get"))
    check(cond == "forbidden", f"an outcast asking for the form: {cond}")
    await alice.plugin["xep_0045"].set_affiliation(ROOM, "none", jid=JID(carol.boundjid.bare))
    await configure(alice, **{"muc#roomconfig_membersonly": True})
    cond, _ = await condition_of(register_iq(carol, "get"))
    check(cond == "registration-required", f"a non-member of a members-only room: {cond}")
    await configure(alice, **{"muc#roomconfig_membersonly": False,
                              "muc#roomconfig_passwordprotectedroom": True,
                              "muc#roomconfig_roomsecret": "pw"})
    cond, _ = await condition_of(register_iq(carol, "set", submit("cee")))
    check(cond == "not-allowed", f"registering with a password room from outside: {cond}")
    await configure(alice, **{"muc#roomconfig_passwordprotectedroom": False,
                              "muc#roomconfig_roomsecret": "",
                              "muc#roomconfig_moderatedroom": True})
    cond, _ = await condition_of(register_iq(carol, "set", submit("cee")))
    check(cond == "not-allowed", f"registering with a moderated room without voice: {cond}")
    await configure(alice, **{"muc#roomconfig_moderatedroom": False,
                              "muc#roomconfig_membersonly": True})
    # A membership an admin gave stays when its holder gives a nick back.
    await alice.plugin["xep_0045"].set_affiliation(ROOM, "member", jid=JID(carol.boundjid.bare))
    await register_iq(carol, "set", submit("cee"))
    await register_iq(carol, "set", "<remove/>")
    members = await alice.plugin["xep_0045"].get_affiliation_list(ROOM, "member")
    check(JID(carol.boundjid.bare) in [JID(j) for j in members], f"carol is still a member: {members}")
    # A member of a members-only room reads who belongs only where real
    # JIDs are public anyway (clients encrypt to each member: OMEMO in a
    # private group); never who is banned.
    lists = carol.plugin["xep_0045"].get_affiliation_list
    cond, _ = await condition_of(lists(ROOM, "member"))
    check(cond == "forbidden", f"member list, JIDs hidden: {cond}")
    await configure(alice, **{"muc#roomconfig_whois": "anyone"})
    members = await lists(ROOM, "member")
    check(JID(carol.boundjid.bare) in [JID(j) for j in members], f"carol reads the members: {members}")
    owners = await lists(ROOM, "owner")
    check(JID(alice.boundjid.bare) in [JID(j) for j in owners], f"carol reads the owners: {owners}")
    cond, _ = await condition_of(lists(ROOM, "outcast"))
    check(cond == "forbidden", f"ban list: {cond}")
    await configure(alice, **{"muc#roomconfig_whois": "moderators"})
    await alice.plugin["xep_0045"].set_affiliation(ROOM, "none", jid=JID(carol.boundjid.bare))
    print("OK refused", flush=True)

    # bob gives it back: no nick, no membership, out of the members-only room.
    await bob.plugin["xep_0045"].join_muc_wait(ROOM, "thirdwitch", timeout=T)
    # Forget what alice saw before (bob's earlier leave, when the three
    # left in an order the nodes may change).
    while not alice.presences.empty():
        alice.presences.get_nowait()
    await register_iq(bob, "set", "<remove/>")
    gone = await next_of(alice.presences,
                         lambda p: p["from"].resource == "thirdwitch" and p["type"] == "unavailable",
                         "bob leaving the members-only room")
    check("321" in codes(gone), f"bob's exit status {codes(gone)}")
    members = await alice.plugin["xep_0045"].get_affiliation_list(ROOM, "member")
    check(JID(bob.boundjid.bare) not in [JID(j) for j in members], f"bob is no member: {members}")
    cond, _ = await condition_of(register_iq(bob, "set", "<remove/>"))
    check(cond in ("registration-required", "item-not-found"), f"removing twice: {cond}")
    await configure(alice, **{"muc#roomconfig_membersonly": False})
    check(await reserved_nick(bob) is None, "bob's nick is free again")
    await carol.plugin["xep_0045"].join_muc_wait(ROOM, "thirdwitch", timeout=T)
    print("OK removed", flush=True)

    for c in clients:
        c.disconnect()
    print("ALL OK", flush=True)


asyncio.run(main())
