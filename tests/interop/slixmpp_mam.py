"""Message archive (XEP-0313) with slixmpp's XEP-0313/0059/0359 plugins:
1,000 messages paged through both ways, filters (with, start/end,
after-id, ids), flip-page, an unknown id, preferences, metadata; the ids a
recipient and its carbons-enabled second resource see are the archive's
ids; a forged stanza-id is replaced; a device that was offline reads the
history its sibling made.

usage: slixmpp_mam.py HOST PORT DOMAIN ALICE PASS BOB PASS CAROL PASS
"""
import asyncio
import ssl
import sys
from datetime import timedelta

import slixmpp
from slixmpp import JID
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import StanzaPath

HOST, PORT, DOMAIN, U1, P1, U2, P2, U3, P3 = sys.argv[1:10]
T = 30
N = 1000
MAM = "urn:xmpp:mam:2"
SID = "urn:xmpp:sid:0"


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password, sasl_mech="SCRAM-SHA-256")
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.enable_direct_tls = False
        self.enable_plaintext = False
        for p in ["xep_0030", "xep_0059", "xep_0280", "xep_0297", "xep_0313", "xep_0359"]:
            self.register_plugin(p)
        self.online = asyncio.Event()
        self.inbox = asyncio.Queue()
        self.carbons = asyncio.Queue()
        self.results = {}
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("carbon_received", lambda m: self.carbons.put_nowait(m))
        self.register_handler(
            Callback("mam results", StanzaPath("message/mam_result"), self.on_result)
        )

    async def on_start(self, _):
        self.send_presence()
        self.online.set()

    def on_message(self, m):
        if m.xml.find(f"{{{MAM}}}result") is None and m["body"]:
            self.inbox.put_nowait(m)

    def on_result(self, m):
        r = m["mam_result"]
        fwd = r["forwarded"]
        self.results.setdefault(r["queryid"], []).append(
            (r["id"], fwd["stanza"]["body"], fwd["delay"]["stamp"])
        )


def stanza_id(m, by):
    for e in m.xml.findall(f"{{{SID}}}stanza-id"):
        if e.get("by") == by:
            return e.get("id")
    return None


async def query(c, with_jid=None, start=None, end=None, after_id=None, before_id=None,
                ids=None, max_=None, after=None, before=None, flip=False):
    """One archive query; returns (fin, [(id, body, stamp)])."""
    iq = c.make_iq_set()
    qid = iq["id"]
    iq["mam"]["queryid"] = qid
    if with_jid:
        iq["mam"]["with"] = JID(with_jid)
    if start:
        iq["mam"]["start"] = start
    if end:
        iq["mam"]["end"] = end
    if after_id:
        iq["mam"]["after_id"] = after_id
    if before_id:
        iq["mam"]["before_id"] = before_id
    if ids:
        iq["mam"]["ids"] = ids
    if max_ is not None:
        iq["mam"]["rsm"]["max"] = str(max_)
    if after:
        iq["mam"]["rsm"]["after"] = after
    if before is not None:
        iq["mam"]["rsm"]["before"] = before
    if flip:
        iq["mam"].xml.append(ET.Element(f"{{{MAM}}}flip-page"))
    res = await iq.send(timeout=T)
    return res["mam_fin"], c.results.pop(qid, [])


def check(cond, what):
    if not cond:
        print("FAIL", what, flush=True)
        sys.exit(1)


async def prefs(c, default, always=(), never=()):
    iq = c.make_iq_set()
    p = ET.Element(f"{{{MAM}}}prefs", {"default": default})
    for name, jids in (("always", always), ("never", never)):
        lst = ET.SubElement(p, f"{{{MAM}}}{name}")
        for j in jids:
            ET.SubElement(lst, f"{{{MAM}}}jid").text = j
    iq.append(p)
    return await iq.send(timeout=T)


async def send_and_wait(sender, receiver, to, body):
    sender.send_message(mto=to, mbody=body, mtype="chat")
    m = await asyncio.wait_for(receiver.inbox.get(), T)
    check(m["body"] == body, f"{body!r} arrived, got {m['body']!r}")
    return m


async def main():
    alice, bob, carol = (f"{u}@{DOMAIN}" for u in (U1, U2, U3))
    a1 = Client(f"{alice}/phone", P1)
    b1 = Client(f"{bob}/desk", P2)
    b2 = Client(f"{bob}/laptop", P2)
    c1 = Client(f"{carol}/slix", P3)
    for c in (a1, b1, b2, c1):
        c.connect(host=HOST, port=int(PORT))
    await asyncio.wait_for(
        asyncio.gather(*(c.online.wait() for c in (a1, b1, b2, c1))), T
    )
    await b2.plugin["xep_0280"].enable(timeout=T)
    print("OK login", flush=True)

    # Account disco lists the archive.
    info = await a1.plugin["xep_0030"].get_info(jid=alice, timeout=T)
    check(MAM in info["disco_info"]["features"], "mam:2 on the account")
    print("OK disco", flush=True)

    # 1,000 messages alice -> bob/desk; bob/laptop gets carbons.
    for i in range(N):
        a1.send_message(mto=f"{bob}/desk", mbody=f"m{i}", mtype="chat")
    seen, carb = [], []
    for i in range(N):
        m = await asyncio.wait_for(b1.inbox.get(), T)
        check(m["body"] == f"m{i}", f"m{i} in order at bob, got {m['body']}")
        seen.append(stanza_id(m, bob))
        c = await asyncio.wait_for(b2.carbons.get(), T)
        carb.append(stanza_id(c["carbon_received"], bob))
    check(all(seen) and len(set(seen)) == N, "every message has its own stanza-id")
    check(seen == carb, "carbons carry the same stanza-ids")
    check(seen == sorted(seen), "stanza-ids rise")
    fin, last10 = await query(b1, before=True, max_=10)
    check([r[0] for r in last10] == seen[-10:], "bob's archive ids are the ids he saw")
    print("OK carbons and mam ids match", flush=True)

    # A stanza-id forged with bob's name is replaced.
    m = a1.make_message(mto=f"{bob}/desk", mbody="forged", mtype="chat")
    ET.SubElement(m.xml, f"{{{SID}}}stanza-id", {"by": bob, "id": "forged-id"})
    m.send()
    got = await asyncio.wait_for(b1.inbox.get(), T)
    ids = [e.get("id") for e in got.xml.findall(f"{{{SID}}}stanza-id") if e.get("by") == bob]
    check(got["body"] == "forged" and len(ids) == 1 and ids[0] != "forged-id",
          f"forged stanza-id replaced: {ids}")
    print("OK forged stanza-id replaced", flush=True)

    # Paging forward through alice's archive with bob, 100 at a time.
    bodies, after, pages, all_a = [], None, 0, []
    while pages < 20:
        fin, rs = await query(a1, with_jid=bob, max_=100, after=after)
        pages += 1
        bodies += [r[1] for r in rs]
        all_a += rs
        if fin["complete"] in (True, "true"):
            break
        after = fin["rsm"]["last"]
    want = [f"m{i}" for i in range(N)] + ["forged"]
    check(bodies == want, f"forward paging: {len(bodies)} messages in {pages} pages")
    check(pages == 11, f"forward paging took {pages} pages")
    print(f"OK paging forward through {len(bodies)} in {pages} pages", flush=True)

    bodies, before, pages = [], True, 0
    while pages < 20:
        fin, rs = await query(a1, with_jid=bob, max_=100, before=before)
        pages += 1
        bodies = [r[1] for r in rs] + bodies
        if fin["complete"] in (True, "true"):
            break
        before = fin["rsm"]["first"]
    check(bodies == want, f"backward paging: {len(bodies)} messages in {pages} pages")
    print(f"OK paging backward through {len(bodies)} in {pages} pages", flush=True)

    # slixmpp's own iterator (XEP-0059) agrees.
    n = 0
    async for _ in a1.plugin["xep_0313"].iterate(with_jid=JID(bob), rsm={"max": 250}):
        n += 1
    check(n == N + 1, f"slixmpp iterate saw {n}")
    print("OK slixmpp iterate", flush=True)

    # Filters.
    for i in range(3):
        await send_and_wait(a1, c1, carol, f"c{i}")
    fin, rs = await query(a1, with_jid=carol)
    check([r[1] for r in rs] == ["c0", "c1", "c2"], f"with=carol: {rs}")
    ids_a = {r[1]: r[0] for r in all_a}
    fin, rs = await query(a1, with_jid=bob, after_id=ids_a["m989"], max_=100)
    check([r[1] for r in rs] == [f"m{i}" for i in range(990, N)] + ["forged"], "after-id")
    fin, rs = await query(a1, before_id=ids_a["m3"])
    check([r[1] for r in rs] == ["m0", "m1", "m2"], "before-id")
    fin, rs = await query(a1, ids=[ids_a["m5"], ids_a["m7"], "0000000000000001"])
    check([r[1] for r in rs] == ["m5", "m7"], f"ids: {rs}")
    stamps = {r[1]: r[2] for r in all_a}
    start, end = stamps["m100"], stamps["m199"]
    fin, rs = await query(a1, start=start, end=end + timedelta(milliseconds=1), max_=1000)
    got = [r[1] for r in rs]
    check(all(f"m{i}" in got for i in range(100, 200)), "start/end cover m100..m199")
    check(all(start <= r[2] <= end + timedelta(milliseconds=1) for r in rs), "start/end bound")
    print("OK filters with, after-id, before-id, ids, start, end", flush=True)

    fin, rs = await query(a1, with_jid=carol, before=True, max_=2, flip=True)
    check([r[1] for r in rs] == ["c2", "c1"], f"flip-page: {rs}")
    print("OK flip-page", flush=True)

    try:
        await query(a1, after_id="ffffffffffffffff")
        check(False, "an unknown id must be an error")
    except IqError as e:
        check(e.iq["error"]["condition"] == "item-not-found", str(e.iq))
    print("OK unknown id is item-not-found", flush=True)

    # Preferences: never, then always for bob only.
    await prefs(a1, "never")
    await send_and_wait(a1, b1, f"{bob}/desk", "not kept")
    await send_and_wait(a1, c1, carol, "carol not kept")
    await prefs(a1, "never", always=[bob])
    await send_and_wait(a1, b1, f"{bob}/desk", "kept for bob")
    await send_and_wait(a1, c1, carol, "carol still not kept")
    fin, rs = await query(a1, before=True, max_=3)
    bodies = [r[1] for r in rs]
    check("not kept" not in bodies and "carol not kept" not in bodies, f"never: {bodies}")
    check(bodies[-1] == "kept for bob", f"always list: {bodies}")
    fin, rs = await query(b1, before=True, max_=2)
    check([r[1] for r in rs] == ["not kept", "kept for bob"], f"bob keeps his: {rs}")
    iq = a1.make_iq_get()
    iq.append(ET.Element(f"{{{MAM}}}prefs"))
    res = await iq.send(timeout=T)
    p = res.xml.find(f"{{{MAM}}}prefs")
    always = [j.text for j in p.iter(f"{{{MAM}}}jid")]
    check(p.get("default") == "never" and always == [bob], "prefs read back")
    await prefs(a1, "always")
    print("OK prefs", flush=True)

    # Metadata.
    iq = a1.make_iq_get()
    iq.append(ET.Element(f"{{{MAM}}}metadata"))
    res = await iq.send(timeout=T)
    meta = res.xml.find(f"{{{MAM}}}metadata")
    start_id = meta.find(f"{{{MAM}}}start").get("id")
    check(start_id == ids_a["m0"], "metadata start is the first message")
    print("OK metadata", flush=True)

    # A second device that was offline reads what the first sent.
    a2 = Client(f"{alice}/laptop", P1)
    a2.connect(host=HOST, port=int(PORT))
    await asyncio.wait_for(a2.online.wait(), T)
    fin, rs = await query(a2, with_jid=bob, before=True, max_=5)
    check([r[1] for r in rs][-1] == "kept for bob", f"second device: {rs}")
    print("OK second device sees history", flush=True)

    for c in (a1, a2, b1, b2, c1):
        c.disconnect()
    print("ALL OK", flush=True)


asyncio.run(main())
