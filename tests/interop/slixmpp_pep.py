"""Personal eventing (XEP-0163) with slixmpp's own plugins, each user on
the node given for it:

- an avatar (XEP-0084): data and metadata published, the metadata
  notified to contacts, the data fetched by id;
- avatars in both forms (XEP-0398): the PEP avatar as the vCard photo and
  the presence's hash, a vCard photo published with PEP;
- a user tune (XEP-0118) published the way Smack-like clients do (a plain
  publish to the tune node), notified only to the contact whose
  capabilities (XEP-0115) ask for `tune+notify`, not to the one that does
  not;
- bookmarks 2 (XEP-0402) with the publish options clients send
  (XEP-0223: whitelist, max items), notified to the owner's other device
  and closed to contacts; a publish whose options differ from the node's
  answered `<precondition-not-met/>`; a retraction notified;
- the node lifecycle: item-not-found, the configuration form, delete;
- bookmarks in both places (XEP-0402 §4): a private-XML write seen on
  PEP, a PEP publish seen in private XML;
- access: a stranger refused a presence-access node;
- the last item sent to a device coming online.

usage: slixmpp_pep.py DOMAIN HOST:PORT USER PASS (x4: alice, bob, carol, dave)
"""
import asyncio
import base64
import hashlib
import sys

import slixmpp
from slixmpp import JID
from slixmpp.plugins.xep_0004 import Form
from slixmpp.xmlstream import ET

from helpers import T, check, condition_of, connect, setup_client, until

DOMAIN = sys.argv[1]
USERS = [sys.argv[2 + 3 * i: 5 + 3 * i] for i in range(4)]
TUNE = "http://jabber.org/protocol/tune"
BOOKMARKS = "urn:xmpp:bookmarks:1"
AVATAR_META = "urn:xmpp:avatar:metadata"


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password, plugins=(), interests=()):
        super().__init__(jid, password, sasl_mech="SCRAM-SHA-256")
        setup_client(self, ["xep_0030", "xep_0004", "xep_0060", "xep_0115", "xep_0163", *plugins])
        self.interests = interests
        self.online = asyncio.Event()
        self.events = asyncio.Queue()
        self.presences = asyncio.Queue()
        self.add_event_handler("presence_available", lambda p: self.presences.put_nowait(p))
        self.plugin["xep_0060"].map_node_event(BOOKMARKS, "bookmarks")
        # Every client would see a tune event, interested or not.
        self.plugin["xep_0060"].map_node_event(TUNE, "user_tune")
        for name in ["avatar_metadata_publish", "user_tune_publish", "bookmarks_publish",
                     "bookmarks_retract"]:
            self.add_event_handler(name, lambda m, name=name: self.events.put_nowait((name, m)))
        self.add_event_handler("session_start", self.on_start)

    async def on_start(self, _):
        for ns in self.interests:
            self.plugin["xep_0030"].add_feature(f"{ns}+notify")
        # The presence below carries capabilities that include them.
        await self.plugin["xep_0115"].update_caps(broadcast=False)
        await self.get_roster()
        self.send_presence()
        self.online.set()

    async def next_event(self, kind, timeout=T):
        while True:
            name, m = await asyncio.wait_for(self.events.get(), timeout)
            if name == kind:
                return m


def options(**fields):
    form = Form()
    form["type"] = "submit"
    form.add_field(var="FORM_TYPE", ftype="hidden",
                   value="http://jabber.org/protocol/pubsub#publish-options")
    for k, v in fields.items():
        form.add_field(var=f"pubsub#{k}", value=v)
    return form


async def main():
    (a_addr, a_user, a_pw), (b_addr, b_user, b_pw), (c_addr, c_user, c_pw), (d_addr, d_user, d_pw) = USERS
    alice = Client(f"{a_user}@{DOMAIN}/phone", a_pw, ["xep_0084", "xep_0118", "xep_0402"])
    laptop = Client(f"{a_user}@{DOMAIN}/laptop", a_pw, ["xep_0402"], interests=[BOOKMARKS])
    bob = Client(f"{b_user}@{DOMAIN}/desk", b_pw, ["xep_0084", "xep_0118"])
    carol = Client(f"{c_user}@{DOMAIN}/desk", c_pw, ["xep_0084"])
    dave = Client(f"{d_user}@{DOMAIN}/desk", d_pw)
    for c, addr in [(alice, a_addr), (laptop, a_addr), (bob, b_addr), (carol, c_addr), (dave, d_addr)]:
        await connect(c, addr, c.online)
    a_jid, b_jid, c_jid = JID(f"{a_user}@{DOMAIN}"), JID(f"{b_user}@{DOMAIN}"), JID(f"{c_user}@{DOMAIN}")

    for other, o_jid in [(bob, b_jid), (carol, c_jid)]:
        alice.send_presence_subscription(pto=o_jid)
        await until(lambda: alice.client_roster[o_jid]["subscription"] == "both"
                    and other.client_roster[a_jid]["subscription"] == "both",
                    f"mutual subscription with {o_jid}")
    print("OK contacts", flush=True)

    # Avatar: data, then metadata; contacts hear of the metadata.
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    await alice.plugin["xep_0084"].publish_avatar(png)
    avatar_id = hashlib.sha1(png).hexdigest()
    await alice.plugin["xep_0084"].publish_avatar_metadata(
        {"id": avatar_id, "type": "image/png", "bytes": len(png)})
    for who in (bob, carol):
        m = await who.next_event("avatar_metadata_publish")
        check(m["from"].bare == a_jid.bare, f"metadata from {m['from']}")
        info = m["pubsub_event"]["items"]["item"]["avatar_metadata"]["info"]
        check(info["id"] == avatar_id, f"metadata id {info['id']}")
    got = await bob.plugin["xep_0084"].retrieve_avatar(a_jid, avatar_id)
    data = got["pubsub"]["items"]["item"]["avatar_data"]["value"]
    check(data == png, "avatar data fetched by id")
    print("OK avatar", flush=True)

    # XEP-0398: the PEP avatar is the vCard's photo, and the presence
    # carries its hash; a photo set in the vCard is published with PEP.
    iq = bob.Iq(stype="get", sto=a_jid)
    iq.xml.append(ET.fromstring("<vCard xmlns='vcard-temp'/>"))
    res = await iq.send()
    binval = res.xml.find("{vcard-temp}vCard/{vcard-temp}PHOTO/{vcard-temp}BINVAL")
    check(binval is not None and base64.b64decode(binval.text) == png, "vCard PHOTO from PEP")
    while not bob.presences.empty():
        bob.presences.get_nowait()
    alice.send_presence()
    for _ in range(5):
        p = await asyncio.wait_for(bob.presences.get(), T)
        if p["from"] == alice.boundjid:
            break
    photo = p.xml.find("{vcard-temp:x:update}x/{vcard-temp:x:update}photo")
    check(photo is not None and photo.text == avatar_id, "presence carries the avatar hash")
    jpeg = b"\xff\xd8\xff\xe0" + bytes(range(200))
    iq = alice.Iq(stype="set")
    iq.xml.append(ET.fromstring(
        "<vCard xmlns='vcard-temp'><FN>Alice</FN><PHOTO><TYPE>image/jpeg</TYPE>"
        f"<BINVAL>{base64.b64encode(jpeg).decode()}</BINVAL></PHOTO></vCard>"))
    await iq.send()
    m = await bob.next_event("avatar_metadata_publish")
    info = m["pubsub_event"]["items"]["item"]["avatar_metadata"]["info"]
    check(info["id"] == hashlib.sha1(jpeg).hexdigest() and info["type"] == "image/jpeg",
          f"vCard photo published with PEP: {info}")
    got = await bob.plugin["xep_0084"].retrieve_avatar(a_jid, info["id"])
    check(got["pubsub"]["items"]["item"]["avatar_data"]["value"] == jpeg, "its data")
    print("OK avatar conversion", flush=True)

    # A tune, published as a plain item: bob asked for tune+notify, carol
    # did not.
    tune = ET.fromstring(f"<tune xmlns='{TUNE}'><artist>Yes</artist><title>Heart of the Sunrise</title></tune>")
    await alice.plugin["xep_0060"].publish(a_jid, TUNE, id="current", payload=tune)
    m = await bob.next_event("user_tune_publish")
    check(m["pubsub_event"]["items"]["item"]["tune"]["title"] == "Heart of the Sunrise", "tune title")
    await asyncio.sleep(1.5)
    leaked = [n for n, _ in list(carol.events._queue) if n == "user_tune_publish"]
    check(not leaked, "carol (no tune+notify) got no tune")
    print("OK tune and +notify filtering", flush=True)

    # Bookmarks 2 with the options clients send.
    conf = ET.fromstring(
        f"<conference xmlns='{BOOKMARKS}' name='The lobby' autojoin='true'><nick>al</nick></conference>")
    room = f"lobby@conference.{DOMAIN}"
    bm_opts = dict(persist_items="true", access_model="whitelist", max_items="max",
                   send_last_published_item="never")
    await alice.plugin["xep_0060"].publish(a_jid, BOOKMARKS, id=room, payload=conf,
                                           options=options(**bm_opts))
    m = await laptop.next_event("bookmarks_publish")
    item = m["pubsub_event"]["items"]["item"]
    check(item["id"] == room, f"bookmark id {item['id']}")
    got = await laptop.plugin["xep_0060"].get_items(a_jid, BOOKMARKS)
    check([i["id"] for i in got["pubsub"]["items"]] == [room], "the owner reads its bookmarks")
    cond, app = await condition_of(bob.plugin["xep_0060"].get_items(a_jid, BOOKMARKS))
    check(cond == "not-allowed", f"a contact is refused the bookmarks: {cond} {app}")
    print("OK bookmarks", flush=True)

    cond, app = await condition_of(alice.plugin["xep_0060"].publish(
        a_jid, BOOKMARKS, id=room, payload=conf, options=options(access_model="open")))
    check(cond == "conflict" and any("precondition-not-met" in t for t in app),
          f"precondition-not-met, got {cond} {app}")
    got = await alice.plugin["xep_0060"].get_items(a_jid, BOOKMARKS)
    check(len(got["pubsub"]["items"]) == 1, "the refused publish changed nothing")
    print("OK precondition", flush=True)

    await alice.plugin["xep_0060"].retract(a_jid, BOOKMARKS, room, notify=True)
    m = await laptop.next_event("bookmarks_retract")
    check(m["pubsub_event"]["items"]["retract"]["id"] == room, "retract id")
    print("OK retract", flush=True)

    # Node lifecycle on the account.
    cond, _ = await condition_of(alice.plugin["xep_0060"].get_items(a_jid, "urn:example:none"))
    check(cond == "item-not-found", f"no such node: {cond}")
    cfg = await alice.plugin["xep_0060"].get_node_config(a_jid, BOOKMARKS)
    values = cfg["pubsub_owner"]["configure"]["form"].get_values()
    check(values.get("pubsub#access_model") == "whitelist", f"config {values}")
    await alice.plugin["xep_0060"].delete_node(a_jid, BOOKMARKS)
    cond, _ = await condition_of(alice.plugin["xep_0060"].get_items(a_jid, BOOKMARKS))
    check(cond == "item-not-found", f"deleted: {cond}")
    print("OK node lifecycle", flush=True)

    # Bookmarks in both places (XEP-0402 §4): written as private XML by
    # an old client, seen on PEP by a new one, and back.
    info = await alice.plugin["xep_0030"].get_info(jid=a_jid)
    check("urn:xmpp:bookmarks:1#compat" in info["disco_info"]["features"], "compat advertised")
    old_room = f"old@conference.{DOMAIN}"
    iq = alice.Iq(stype="set")
    iq.xml.append(ET.fromstring(
        "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'>"
        f"<conference jid='{old_room}' name='Old room' autojoin='true'><nick>al</nick></conference>"
        "<url name='site' url='https://example.org/'/></storage></query>"))
    await iq.send()
    m = await laptop.next_event("bookmarks_publish")
    check(m["pubsub_event"]["items"]["item"]["id"] == old_room, "the private write reached PEP")
    got = await laptop.plugin["xep_0060"].get_items(a_jid, BOOKMARKS)
    check([i["id"] for i in got["pubsub"]["items"]] == [old_room], "the PEP node holds the room")
    await alice.plugin["xep_0060"].publish(a_jid, BOOKMARKS, id=room, payload=conf,
                                           options=options(**bm_opts))
    iq = alice.Iq(stype="get")
    iq.xml.append(ET.fromstring("<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>"))
    res = await iq.send()
    storage = res.xml.find("{jabber:iq:private}query/{storage:bookmarks}storage")
    jids = sorted(c.get("jid") for c in storage.findall("{storage:bookmarks}conference"))
    check(jids == sorted([old_room, room]), f"private storage shows the PEP rooms: {jids}")
    check(storage.find("{storage:bookmarks}url") is not None, "the URL bookmark stays")
    # An old client writes the list without the old room: PEP clients are
    # told it is gone.
    iq = alice.Iq(stype="set")
    iq.xml.append(ET.fromstring(
        "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'>"
        f"<conference jid='{room}' name='The lobby' autojoin='true'/></storage></query>"))
    await iq.send()
    m = await laptop.next_event("bookmarks_retract")
    check(m["pubsub_event"]["items"]["retract"]["id"] == old_room, "a removed room is retracted")
    print("OK bookmarks conversion", flush=True)

    # Clients that keep bookmarks as a PEP node of their own (XEP-0048
    # over PEP; XEP-0402 §5.2 #compat-pep): the legacy node shows the
    # bookmarks node's rooms, and a list published there is followed.
    check("urn:xmpp:bookmarks:1#compat-pep" in info["disco_info"]["features"], "compat-pep advertised")
    LEGACY = "storage:bookmarks"

    def legacy_rooms(got):
        items = list(got["pubsub"]["items"])
        check(len(items) == 1 and items[0]["id"] == "current", f"one legacy item: {got}")
        storage = items[0].xml.find("{storage:bookmarks}storage")
        return sorted(c.get("jid") for c in storage.findall("{storage:bookmarks}conference"))
    rooms = legacy_rooms(await alice.plugin["xep_0060"].get_items(a_jid, LEGACY))
    check(rooms == [room], f"the legacy PEP node shows the rooms: {rooms}")
    legacy_room = f"legacy@conference.{DOMAIN}"
    payload = ET.fromstring(
        "<storage xmlns='storage:bookmarks'>"
        f"<conference jid='{room}' name='The lobby' autojoin='true'/>"
        f"<conference jid='{legacy_room}' name='Legacy' autojoin='false'><nick>al</nick></conference>"
        "</storage>")
    await alice.plugin["xep_0060"].publish(a_jid, LEGACY, id="current", payload=payload,
                                           options=options(**bm_opts))
    m = await laptop.next_event("bookmarks_publish")
    got = await laptop.plugin["xep_0060"].get_items(a_jid, BOOKMARKS)
    ids = sorted(i["id"] for i in got["pubsub"]["items"])
    check(ids == sorted([room, legacy_room]), f"the bookmarks node follows the legacy one: {ids}")
    # And back: a new client removes the room; the legacy node drops it.
    await alice.plugin["xep_0060"].retract(a_jid, BOOKMARKS, legacy_room)
    rooms = legacy_rooms(await alice.plugin["xep_0060"].get_items(a_jid, LEGACY))
    check(rooms == [room], f"the legacy node after a retraction: {rooms}")
    print("OK bookmarks on the legacy PEP node", flush=True)

    # A stranger may not read a presence-access node.
    cond, app = await condition_of(dave.plugin["xep_0060"].get_items(a_jid, TUNE))
    check(cond == "not-authorized" and any("presence-subscription-required" in t for t in app),
          f"stranger refused: {cond} {app}")
    print("OK access", flush=True)

    # A device coming online gets the last tune.
    bob2 = Client(f"{b_user}@{DOMAIN}/phone", b_pw, ["xep_0118"])
    await connect(bob2, b_addr, bob2.online)
    m = await bob2.next_event("user_tune_publish")
    check(m["pubsub_event"]["items"]["item"]["tune"]["artist"] == "Yes", "last tune on login")
    print("OK last item on login", flush=True)

    for c in (alice, laptop, bob, carol, dave, bob2):
        c.disconnect()
    print("ALL OK", flush=True)


asyncio.run(asyncio.wait_for(main(), 150))
