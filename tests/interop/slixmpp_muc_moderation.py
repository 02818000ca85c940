"""XEP-0425 moderated message retraction with slixmpp's XEP-0425 plugin:
alice owns a room, bob writes something a moderator removes. Everyone
gets the retraction (with the moderator and the reason), the room's
archive (XEP-0313) and the history a newcomer gets hold a tombstone in
its place, a participant cannot retract, and an unknown id is
item-not-found. Then voice requests (XEP-0045 §7.13, §8.6): carol,
silenced in the moderated room, asks with slixmpp's request_voice, alice
gets the form and approves it, and carol speaks; bob, who has voice, is
told he has nothing to ask for.

usage: slixmpp_muc_moderation.py MUCDOMAIN HOST:PORT JID PASS (x3: alice, bob, carol)
"""
import asyncio
import sys

import slixmpp
from slixmpp import JID
from slixmpp.exceptions import IqError
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath, StanzaPath

from helpers import check, next_of, online_clients, setup_client

MUCD = sys.argv[1]
USERS = [sys.argv[2 + 3 * i: 5 + 3 * i] for i in range(3)]
T = 20
ROOM = JID(f"modroom@{MUCD}")
RETRACT = "urn:xmpp:message-retract:1"
MODERATE = "urn:xmpp:message-moderate:1"
SID = "urn:xmpp:sid:0"


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        setup_client(self, ["xep_0030", "xep_0004", "xep_0045", "xep_0059", "xep_0313",
                            "xep_0421", "xep_0424", "xep_0425"], mech=None)
        self.online = asyncio.Event()
        self.groupchat = asyncio.Queue()
        self.moderated = asyncio.Queue()
        self.presences = asyncio.Queue()
        self.errors = asyncio.Queue()
        self.forms = asyncio.Queue()
        self.add_event_handler("groupchat_presence", self.presences.put_nowait)
        self.add_event_handler("message_error", self.errors.put_nowait)
        self.register_handler(Callback(
            "voice forms", MatchXPath("{jabber:client}message/{jabber:x:data}x"),
            lambda m: self.forms.put_nowait(m) if m["type"] != "error" else None))
        self.results = {}
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("groupchat_message", self.on_groupchat)
        self.add_event_handler("moderated_message", lambda m: self.moderated.put_nowait(m))
        self.register_handler(
            Callback("mam results", StanzaPath("message/mam_result"), self.on_result)
        )

    async def on_start(self, _):
        self.send_presence()
        self.online.set()

    def on_groupchat(self, m):
        if m["body"]:
            self.groupchat.put_nowait(m)

    def on_result(self, m):
        r = m["mam_result"]
        self.results.setdefault(r["queryid"], []).append(r["forwarded"]["stanza"])


def stanza_id(m):
    for el in m.xml.findall(f"{{{SID}}}stanza-id"):
        if el.get("by") == str(ROOM):
            return el.get("id")
    return None


async def archive(c):
    iq = c.make_iq_set(ito=ROOM)
    qid = iq["id"]
    iq["mam"]["queryid"] = qid
    await iq.send(timeout=T)
    return c.results.pop(qid, [])


async def main():
    clients = await online_clients(Client, USERS)
    alice, bob, carol = clients
    await alice.plugin["xep_0045"].join_muc_wait(ROOM, "alice", timeout=T)
    await bob.plugin["xep_0045"].join_muc_wait(ROOM, "bob", timeout=T)
    info = await bob.plugin["xep_0030"].get_info(jid=ROOM, timeout=T)
    check(MODERATE in info["disco_info"]["features"], "the room advertises moderation")
    # XEP-0045 §7.12: no reserved nick here is an empty answer, not an error.
    reserved = await bob.plugin["xep_0030"].get_info(jid=ROOM, node="x-roomuser-item", timeout=T)
    check(not reserved["disco_info"]["identities"], f"no reserved nick: {reserved}")
    print("OK entered", flush=True)

    bob.send_message(mto=ROOM, mbody="something regrettable", mtype="groupchat")
    seen = await next_of(alice.groupchat, lambda m: m["body"] == "something regrettable", "bob's message")
    sid = stanza_id(seen)
    check(sid, f"a stanza-id on {seen}")
    bob.send_message(mto=ROOM, mbody="something fine", mtype="groupchat")
    await next_of(alice.groupchat, lambda m: m["body"] == "something fine", "bob's second message")

    # A participant may not retract; an unknown id is not found.
    try:
        await bob.plugin["xep_0425"].moderate(ROOM, sid, "mine", timeout=T)
        check(False, "a participant retracted a message")
    except IqError as e:
        check(e.condition == "forbidden", f"participant: {e.condition}")
    try:
        await alice.plugin["xep_0425"].moderate(ROOM, "0000000000000001", "", timeout=T)
        check(False, "an unknown id was retracted")
    except IqError as e:
        check(e.condition == "item-not-found", f"unknown id: {e.condition}")
    print("OK refused", flush=True)

    # A participant cannot forge the room's tombstone to escape moderation:
    # the room drops it, and the message can still be retracted.
    from slixmpp.xmlstream import ET
    sneaky = bob.make_message(mto=ROOM, mbody="sneaky", mtype="groupchat")
    sneaky.append(ET.Element(f"{{{RETRACT}}}retracted"))
    sneaky.send()
    got = await next_of(alice.groupchat, lambda m: m["body"] == "sneaky", "the sneaky message")
    check(got.xml.find(f"{{{RETRACT}}}retracted") is None, f"the forged tombstone passed: {got}")
    sneaky_sid = stanza_id(got)
    await alice.plugin["xep_0425"].moderate(ROOM, sneaky_sid, "forged", timeout=T)
    await next_of(bob.moderated, lambda m: m["retract"]["id"] == sneaky_sid, "the sneaky retraction")
    print("OK forged tombstone dropped", flush=True)

    await alice.plugin["xep_0425"].moderate(ROOM, sid, "off topic", timeout=T)
    for c in (alice, bob):
        m = await next_of(c.moderated, lambda m: m["retract"]["id"] == sid, "the retraction")
        check(m["from"] == ROOM, f"retraction from {m['from']}")
        check(m["retract"]["moderated"]["by"] == JID(f"{ROOM}/alice"), f"by {m['retract']['moderated']['by']}")
        check(m["retract"]["reason"] == "off topic", f"reason {m['retract']['reason']!r}")
    print("OK retracted", flush=True)

    # The archive holds a tombstone where the message was.
    msgs = await archive(bob)
    bodies = [m["body"] for m in msgs]
    check("something regrettable" not in bodies, f"the retracted body is still archived: {bodies}")
    check("something fine" in bodies, f"the other message is archived: {bodies}")
    stones = [m for m in msgs if m.xml.find(f"{{{RETRACT}}}retracted") is not None]
    check(sorted(stanza_id(m) for m in stones) == sorted([sid, sneaky_sid]),
          f"a tombstone for each retracted id: {[str(m) for m in stones]}")
    check(all(str(m["from"]) == f"{ROOM}/bob" for m in stones), "the tombstones keep their sender")
    print("OK archive tombstone", flush=True)

    # A newcomer's history has the tombstone, not the message.
    carol_seen = []
    carol_stones = []
    carol.add_event_handler("groupchat_message", carol_seen.append)
    # A tombstone has no body: slixmpp's group chat events skip it.
    carol.register_handler(Callback(
        "tombstones", MatchXPath(f"{{jabber:client}}message/{{{RETRACT}}}retracted"), carol_stones.append))
    _, _, _, history = await carol.plugin["xep_0045"].join_muc_wait(ROOM, "carol", timeout=T)
    carol_seen.extend(history)
    for _ in range(T * 10):
        if any(m["body"] == "something fine" for m in carol_seen):
            break
        await asyncio.sleep(0.1)
    bodies = [m["body"] for m in carol_seen]
    check("something fine" in bodies, f"the history: {bodies}")
    check("something regrettable" not in bodies, f"history still has it: {bodies}")
    check(sorted(stanza_id(m) for m in carol_stones) == sorted([sid, sneaky_sid]),
          f"the tombstone in the history: {[str(m) for m in carol_stones]}")
    print("OK history", flush=True)

    # Voice requests: carol is silenced in the moderated room, asks for
    # voice, alice approves the form the room sends her, carol speaks.
    form = await alice.plugin["xep_0045"].get_room_config(ROOM)
    form["type"] = "submit"
    form.field["muc#roomconfig_moderatedroom"]["value"] = True
    await alice.plugin["xep_0045"].set_room_config(ROOM, form)
    await alice.plugin["xep_0045"].set_role(ROOM, "carol", "visitor")
    await next_of(carol.presences, lambda p: p["from"] == JID(f"{ROOM}/carol")
                  and p["muc"]["role"] == "visitor", "carol silenced")
    carol.send_message(mto=ROOM, mbody="may I?", mtype="groupchat")
    err = await next_of(carol.errors, lambda m: True, "a visitor's message refused")
    check(err["error"]["condition"] == "forbidden", f"visitor's message: {err['error']['condition']}")
    carol.plugin["xep_0045"].request_voice(ROOM, "participant")
    def val(field):
        # slixmpp gives some single values as a one-item list.
        v = field["value"] if field is not None else None
        return v[0] if isinstance(v, list) and len(v) == 1 else v

    def form_type(m):
        return val(m["form"].get_fields().get("FORM_TYPE"))
    req = await next_of(alice.forms, lambda m: form_type(m) == "http://jabber.org/protocol/muc#request",
                        "the voice request form")
    fields = req["form"].get_fields()
    check(req["from"] == ROOM, f"the request comes from the room: {req['from']}")
    nick, jid, allow = (val(fields.get(v)) for v in ("muc#roomnick", "muc#jid", "muc#request_allow"))
    check(nick == "carol", f"names carol: {nick}")
    check(JID(jid).bare == carol.boundjid.bare, f"carol's JID: {jid}")
    check(allow in (False, "false", "0"), f"not yet allowed: {allow!r}")
    answer = alice.make_message(mto=ROOM)
    f = answer["form"]
    f["type"] = "submit"
    f.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/muc#request")
    f.add_field(var="muc#role", ftype="list-single", value="participant")
    f.add_field(var="muc#jid", ftype="jid-single", value=jid)
    f.add_field(var="muc#roomnick", ftype="text-single", value="carol")
    f.add_field(var="muc#request_allow", ftype="boolean", value=True)
    answer.send()
    await next_of(carol.presences, lambda p: p["from"] == JID(f"{ROOM}/carol")
                  and p["muc"]["role"] == "participant", "carol's voice")
    carol.send_message(mto=ROOM, mbody="thank you", mtype="groupchat")
    await next_of(alice.groupchat, lambda m: m["body"] == "thank you", "carol speaking")
    bob.plugin["xep_0045"].request_voice(ROOM, "participant")
    err = await next_of(bob.errors, lambda m: True, "bob's needless request")
    check(err["error"]["condition"] == "not-acceptable", f"a request with voice: {err['error']['condition']}")
    print("OK voice request", flush=True)

    for c in clients:
        c.disconnect()
    print("ALL OK", flush=True)


asyncio.run(main())
