"""Group chat (XEP-0045) with slixmpp's XEP-0045 plugin, each user on the
node given for it: creating a room (201), configuring it with the
muc#roomconfig form, entering with presence exchange, a nick conflict,
messages to all with the room's stanza-id and occupant ids (XEP-0359,
XEP-0421), history on entering, the subject, private messages, a nick
change (303), self-ping (XEP-0410), disco#info with muc#roominfo and the
public room list, a mediated invitation, kick (307), ban (301), a
password, members-only, a form with a wrong type, leaving, destroying with
an alternate venue.

usage: slixmpp_muc.py DOMAIN MUCDOMAIN HOST:PORT USER PASS (x4)
"""
import asyncio
import ssl
import sys

import slixmpp
from slixmpp import JID
from slixmpp.exceptions import IqError, PresenceError
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import StanzaPath

DOMAIN, MUCD = sys.argv[1:3]
USERS = [sys.argv[3 + 3 * i: 6 + 3 * i] for i in range(4)]
T = 20
MUC_USER = "http://jabber.org/protocol/muc#user"
SID = "urn:xmpp:sid:0"
OID = "urn:xmpp:occupant-id:0"
ROOM = JID(f"lobby@{MUCD}")


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password, sasl_mech="SCRAM-SHA-256")
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.enable_direct_tls = False
        self.enable_plaintext = False
        for p in ["xep_0030", "xep_0004", "xep_0045", "xep_0059", "xep_0199", "xep_0203", "xep_0313"]:
            self.register_plugin(p)
        self.results = {}
        self.register_handler(
            Callback("mam results", StanzaPath("message/mam_result"), self.on_result)
        )
        self.online = asyncio.Event()
        self.groupchat = asyncio.Queue()
        self.private = asyncio.Queue()
        self.presences = asyncio.Queue()
        self.invites = asyncio.Queue()
        self.subjects = asyncio.Queue()
        self.unavailable = asyncio.Queue()
        self.register_handler(
            Callback("unavailable", StanzaPath("presence@type=unavailable"),
                     lambda p: self.unavailable.put_nowait(p))
        )
        self.add_event_handler("groupchat_subject", lambda m: self.subjects.put_nowait(m))
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("groupchat_message", self.on_groupchat)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler(f"muc::{ROOM}::presence", lambda p: self.presences.put_nowait(p))
        self.add_event_handler("groupchat_invite", lambda m: self.invites.put_nowait(m))

    async def on_start(self, _):
        self.send_presence()
        self.online.set()

    def on_result(self, m):
        r = m["mam_result"]
        self.results.setdefault(r["queryid"], []).append(
            (str(m["from"]), r["id"], r["forwarded"]["stanza"]["body"], str(r["forwarded"]["stanza"]["from"]))
        )

    def on_groupchat(self, m):
        if m["body"]:
            self.groupchat.put_nowait(m)

    def on_message(self, m):
        if m["type"] in ("chat", "normal") and m["from"].bare == ROOM and m["body"]:
            self.private.put_nowait(m)


def check(cond, what):
    if not cond:
        print("FAIL", what, flush=True)
        sys.exit(1)


def codes(p):
    x = p.xml.find(f"{{{MUC_USER}}}x")
    if x is None:
        return set()
    return {s.get("code") for s in x.findall(f"{{{MUC_USER}}}status")}


def item(p):
    x = p.xml.find(f"{{{MUC_USER}}}x")
    return None if x is None else x.find(f"{{{MUC_USER}}}item")


async def next_of(q, pred, what):
    """The next item of `q` that `pred` accepts (others are skipped)."""
    try:
        async with asyncio.timeout(T):
            while True:
                m = await q.get()
                if pred(m):
                    return m
    except TimeoutError:
        check(False, f"timed out waiting for {what}")


async def main():
    clients = []
    for (addr, user, pw) in USERS:
        host, port = addr.rsplit(":", 1)
        c = Client(f"{user}@{DOMAIN}/muc", pw)
        c.connect(host=host, port=int(port))
        clients.append(c)
    for c in clients:
        await asyncio.wait_for(c.online.wait(), T)
    print("OK login", flush=True)
    alice, bob, carol, dave = clients
    muc = {c: c.plugin["xep_0045"] for c in clients}

    # Creating: the first to enter owns the room (201, 110).
    pres, subject, occupants, history = await muc[alice].join_muc_wait(ROOM, "alice", timeout=T)
    check({"110", "201"} <= codes(pres), f"create codes {codes(pres)}")
    check(item(pres).get("affiliation") == "owner", "creator is owner")
    check(item(pres).get("role") == "moderator", "owner is moderator")
    check(pres.xml.find(f"{{{OID}}}occupant-id") is not None, "occupant-id on presence")
    check(not subject["subject"], f"empty subject on entering: {subject}")
    print("OK room created", flush=True)

    # Configuring: the owner's form; real JIDs for anyone, a name.
    form = await muc[alice].get_room_config(ROOM)
    check("muc#roomconfig_whois" in form.get_fields(), "config form has whois")
    new = alice.plugin["xep_0004"].make_form(ftype="submit")
    new.add_field(var="FORM_TYPE", value="http://jabber.org/protocol/muc#roomconfig", ftype="hidden")
    new.add_field(var="muc#roomconfig_roomname", value="The Lobby")
    new.add_field(var="muc#roomconfig_whois", value="anyone")
    new.add_field(var="muc#roomconfig_changesubject", value=True, ftype="boolean")
    await muc[alice].set_room_config(ROOM, new)
    bad = alice.plugin["xep_0004"].make_form(ftype="submit")
    bad.add_field(var="FORM_TYPE", value="http://jabber.org/protocol/muc#roomconfig", ftype="hidden")
    bad.add_field(var="muc#roomconfig_maxusers", value="many")
    try:
        await muc[alice].set_room_config(ROOM, bad)
        check(False, "a form with a wrong type was taken")
    except IqError as e:
        check(e.iq["error"]["condition"] == "not-acceptable", f"bad form: {e.iq['error']['condition']}")
    print("OK configured", flush=True)

    # A message before bob and carol enter, for history.
    alice.send_message(mto=ROOM, mbody="first", mtype="groupchat")
    m = await next_of(alice.groupchat, lambda m: m["body"] == "first", "alice's reflection")

    # Entering: bob sees alice, then himself; alice sees bob.
    pres, _, occupants, history = await muc[bob].join_muc_wait(ROOM, "bob", timeout=T)
    check("110" in codes(pres) and "100" in codes(pres), f"bob's codes {codes(pres)}")
    seen = [o["from"].resource for o in occupants]
    check(seen == ["alice", "bob"], f"bob saw {seen}: the others first, then himself")
    check([h["body"] for h in history] == ["first"], f"bob's history {history}")
    p = await next_of(alice.presences, lambda p: p["from"].resource == "bob", "bob's presence")
    check(item(p).get("jid", "").startswith(f"{USERS[1][1]}@"), "non-anonymous: alice sees bob's jid")
    print("OK entered", flush=True)

    # A nick that is taken.
    try:
        await muc[carol].join_muc_wait(ROOM, "bob", timeout=T)
        check(False, "carol took bob's nick")
    except PresenceError as e:
        check(e.presence["error"]["condition"] == "conflict", "nick conflict")
    pres, _, _, history = await muc[carol].join_muc_wait(ROOM, "carol", maxstanzas=0, timeout=T)
    check(history == [], "maxstanzas=0 gives no history")
    print("OK nick conflict", flush=True)

    # A message to all: each gets it from alice's nick with the room's id.
    alice.send_message(mto=ROOM, mbody="hello room", mtype="groupchat")
    got = []
    for c in (alice, bob, carol):
        m = await next_of(c.groupchat, lambda m: m["body"] == "hello room", "hello room")
        got.append(m)
    ids = set()
    for m in got:
        check(m["from"] == JID(f"{ROOM}/alice"), f"from {m['from']}")
        sid = [e.get("id") for e in m.xml.findall(f"{{{SID}}}stanza-id") if e.get("by") == str(ROOM)]
        check(len(sid) == 1, "one stanza-id by the room")
        ids.add(sid[0])
        check(m.xml.find(f"{{{OID}}}occupant-id") is not None, "occupant-id on message")
    check(len(ids) == 1, f"everyone sees the same stanza-id {ids}")
    print("OK message to all", flush=True)

    # A second device of alice's account enters under the same nick: one
    # occupant; both sessions get what the room sends; the phone leaving
    # is not alice leaving.
    addr, user, pw = USERS[0]
    host, port = addr.rsplit(":", 1)
    phone = Client(f"{user}@{DOMAIN}/phone", pw)
    phone.connect(host=host, port=int(port))
    await asyncio.wait_for(phone.online.wait(), T)
    pres, _, occupants, _ = await phone.plugin["xep_0045"].join_muc_wait(ROOM, "alice", timeout=T)
    check("110" in codes(pres), f"the phone is alice in the room: {codes(pres)}")
    check(sorted(o["from"].resource for o in occupants) == ["alice", "bob", "carol"], "the phone sees the room")
    bob.send_message(mto=ROOM, mbody="to both devices", mtype="groupchat")
    for c in (alice, phone):
        await next_of(c.groupchat, lambda m: m["body"] == "to both devices", "a message on both devices")
    phone.plugin["xep_0045"].leave_muc(ROOM, "alice")
    # Its leaving is done once its own unavailable presence came back.
    await next_of(phone.unavailable, lambda p: p["from"] == JID(f"{ROOM}/alice"), "the phone left")
    bob.send_message(mto=ROOM, mbody="alice still here", mtype="groupchat")
    await next_of(alice.groupchat, lambda m: m["body"] == "alice still here", "alice still in")
    await asyncio.sleep(0.5)
    late = [m for m in list(phone.groupchat._queue) if m["body"] == "alice still here"]
    check(late == [], "the phone got nothing after it left")
    gone = [p for p in list(bob.presences._queue) if p["from"].resource == "alice" and p["type"] == "unavailable"]
    check(gone == [], "bob did not see alice leave")
    phone.disconnect()
    print("OK two devices one nick", flush=True)

    # The room's archive (XEP-0313 on the room JID): results come from the
    # room, with the ids everyone saw as the room's stanza-id.
    info = await bob.plugin["xep_0030"].get_info(jid=ROOM, timeout=T)
    check("urn:xmpp:mam:2" in info["disco_info"]["features"], "room advertises MAM")
    async def mam(c, **rsm):
        iq = c.make_iq_set(ito=ROOM)
        qid = iq["id"]
        iq["mam"]["queryid"] = qid
        for k, v in rsm.items():
            iq["mam"]["rsm"][k] = v
        res = await iq.send(timeout=T)
        return res["mam_fin"], c.results.pop(qid, [])
    fin, page1 = await mam(bob, max="1")
    check([b for (_, _, b, _) in page1] == ["first"], f"first page {page1}")
    check(page1[0][0] == str(ROOM), f"results come from the room: {page1[0][0]}")
    check(page1[0][3] == f"{ROOM}/alice", f"archived from the nick: {page1[0][3]}")
    check(fin["complete"] is not True and fin["complete"] != "true", "first page is not the last")
    fin, page2 = await mam(bob, max="1", after=fin["rsm"]["last"])
    check([b for (_, _, b, _) in page2] == ["hello room"], f"second page {page2}")
    check(page2[0][1] in ids, f"archive id {page2[0][1]} is the stanza-id {ids}")
    print("OK room archive", flush=True)

    # The subject, set by an occupant (the room allows it).
    muc[bob].set_subject(ROOM, "Today: MUC")
    for c in (alice, bob, carol):
        m = await next_of(c.subjects, lambda m: m["subject"] == "Today: MUC", "subject")
        check(m["from"] == JID(f"{ROOM}/bob"), f"subject from {m['from']}")
    _, subject, _, _ = await muc[dave].join_muc_wait(ROOM, "dave", timeout=T)
    check(subject["subject"] == "Today: MUC", "the subject on entering")
    muc[dave].leave_muc(ROOM, "dave")
    await next_of(alice.presences, lambda p: p["from"].resource == "dave" and p["type"] == "unavailable", "dave left")
    print("OK subject", flush=True)

    # Private message: bob to carol through the room.
    bob.send_message(mto=JID(f"{ROOM}/carol"), mbody="psst", mtype="chat")
    m = await next_of(carol.private, lambda m: m["body"] == "psst", "private message")
    check(m["from"] == JID(f"{ROOM}/bob"), f"private from {m['from']}")
    print("OK private message", flush=True)

    # Nick change: 303 with the new nick, then the new presence.
    await muc[bob].set_self_nick(ROOM, "bobby")
    p = await next_of(alice.presences, lambda p: "303" in codes(p), "303")
    check(item(p).get("nick") == "bobby", "303 carries the new nick")
    await next_of(alice.presences, lambda p: p["from"].resource == "bobby" and p["type"] != "unavailable", "bobby")
    print("OK nick change", flush=True)

    # Self-ping (XEP-0410): joined answers result; not joined is refused.
    await bob.plugin["xep_0199"].ping(JID(f"{ROOM}/bobby"), timeout=T)
    try:
        await dave.plugin["xep_0199"].ping(JID(f"{ROOM}/dave"), timeout=T)
        check(False, "a non-occupant's self-ping succeeded")
    except IqError as e:
        check(e.iq["error"]["condition"] == "not-acceptable", "self-ping when not joined")
    # A room that does not exist (gone with a restart, say): not joined
    # either, so the client joins again (item-not-found would read as
    # "joined under another nick", XEP-0410 §3.2).
    try:
        await dave.plugin["xep_0199"].ping(JID(f"no-such-room@{MUCD}/dave"), timeout=T)
        check(False, "a self-ping to a room that does not exist succeeded")
    except IqError as e:
        cond = e.iq["error"]["condition"]
        check(cond == "not-acceptable", f"self-ping to a missing room: {cond}")
    print("OK self-ping", flush=True)

    # Joining again while joined (a client that lost track, XEP-0410 §4):
    # the whole join again, occupants, self-presence and subject.
    pres, subject, occupants, _ = await muc[bob].join_muc_wait(ROOM, "bobby", timeout=T)
    check("110" in codes(pres), "rejoin self-presence")
    seen = sorted(o["from"].resource for o in occupants)
    check(seen == ["alice", "bobby", "carol"], f"rejoin occupants {seen}")
    check(subject["subject"] == "Today: MUC", "rejoin subject")
    print("OK rejoin", flush=True)

    # Discovery: the room's features and info form; the public list.
    info = await dave.plugin["xep_0030"].get_info(jid=ROOM, timeout=T)
    feats = info["disco_info"]["features"]
    for f in ("http://jabber.org/protocol/muc", "muc_nonanonymous", "muc_public", "muc_temporary",
              "urn:xmpp:mam:2", "urn:xmpp:mam:2#extended"):
        check(f in feats, f"room feature {f}")
    forms = info["disco_info"].xml.findall("{jabber:x:data}x")
    check(any("muc#roominfo" in ET_tostring(f) for f in forms), "muc#roominfo form")
    items = await dave.plugin["xep_0030"].get_items(jid=JID(MUCD), timeout=T)
    listed = [(str(i[0]), i[2]) for i in items["disco_items"]["items"]]
    check((str(ROOM), "The Lobby") in listed, f"public room list {listed}")
    print("OK disco", flush=True)

    # A mediated invitation reaches dave from the room.
    muc[alice].invite(ROOM, JID(f"{USERS[3][1]}@{DOMAIN}"), reason="come in")
    m = await next_of(dave.invites, lambda m: True, "invitation")
    check(m["from"] == ROOM, f"invitation from {m['from']}")
    print("OK invitation", flush=True)

    # Kick: carol leaves with 307 (she sees 110 too).
    await muc[alice].set_role(ROOM, "carol", "none", reason="out")
    p = await next_of(carol.presences, lambda p: p["type"] == "unavailable" and p["from"].resource == "carol", "carol kicked")
    check({"307", "110"} <= codes(p), f"kick codes {codes(p)}")
    reason = item(p).find(f"{{{MUC_USER}}}reason")
    actor = item(p).find(f"{{{MUC_USER}}}actor")
    check(reason is not None and reason.text == "out", "kick carries the reason")
    check(actor is not None and actor.get("nick") == "alice", "kick names the actor")
    await next_of(bob.presences, lambda p: p["from"].resource == "carol" and "307" in codes(p), "bob sees the kick")
    print("OK kick", flush=True)

    # Ban: carol may not come back.
    await muc[alice].set_affiliation(ROOM, "outcast", jid=JID(f"{USERS[2][1]}@{DOMAIN}"))
    try:
        await muc[carol].join_muc_wait(ROOM, "carol", timeout=T)
        check(False, "a banned user entered")
    except PresenceError as e:
        check(e.presence["error"]["condition"] == "forbidden", "ban refuses entry")
    print("OK ban", flush=True)

    # A password: dave needs it.
    pw = alice.plugin["xep_0004"].make_form(ftype="submit")
    pw.add_field(var="FORM_TYPE", value="http://jabber.org/protocol/muc#roomconfig", ftype="hidden")
    pw.add_field(var="muc#roomconfig_passwordprotectedroom", value=True, ftype="boolean")
    pw.add_field(var="muc#roomconfig_roomsecret", value="sesame")
    await muc[alice].set_room_config(ROOM, pw)
    try:
        await muc[dave].join_muc_wait(ROOM, "dave", timeout=T)
        check(False, "entered without the password")
    except PresenceError as e:
        check(e.presence["error"]["condition"] == "not-authorized", "password needed")
    pres, _, _, _ = await muc[dave].join_muc_wait(ROOM, "dave", password="sesame", timeout=T)
    check("110" in codes(pres), "dave entered with the password")
    print("OK password", flush=True)

    # Leaving: the others see dave go.
    muc[dave].leave_muc(ROOM, "dave")
    await next_of(alice.presences, lambda p: p["from"].resource == "dave" and p["type"] == "unavailable", "dave left")
    print("OK leave", flush=True)

    # Destroying: bob is told where to go.
    await muc[alice].destroy(ROOM, reason="moving", altroom=f"hall@{MUCD}")
    p = await next_of(bob.presences, lambda p: p["from"].resource == "bobby" and p["type"] == "unavailable", "destroyed")
    d = p.xml.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}destroy")
    check(d is not None and d.get("jid") == f"hall@{MUCD}", "destroy names the alternate venue")
    print("OK destroy", flush=True)

    for c in clients:
        c.disconnect()
    print("ALL OK", flush=True)


def ET_tostring(e):
    from slixmpp.xmlstream import tostring
    return tostring(e)


asyncio.run(main())
