"""PEP across servers (XEP-0163 §4.3.1): a Prosody user who is a contact
of a Starling user hears of the Starling user's new tune (XEP-0118) and
avatar metadata (XEP-0084), and reads the node from the Starling account
(an iq from another server to a local account's bare JID).

usage: slixmpp_pep_federated.py HOST:PORT JID PASS HOST:PORT JID PASS
  (the Starling user, then the Prosody user)
"""
import asyncio
import sys

import slixmpp
from slixmpp import JID
from slixmpp.xmlstream import ET

from helpers import T, check, connect, setup_client, until

(A_ADDR, A_JID, A_PW, B_ADDR, B_JID, B_PW) = sys.argv[1:7]
TUNE = "http://jabber.org/protocol/tune"


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        setup_client(self, ["xep_0030", "xep_0004", "xep_0060", "xep_0115", "xep_0163",
                            "xep_0118", "xep_0084"], mech=None)
        self.online = asyncio.Event()
        self.events = asyncio.Queue()
        for name in ["user_tune_publish", "avatar_metadata_publish"]:
            self.add_event_handler(name, lambda m, name=name: self.events.put_nowait((name, m)))
        self.add_event_handler("session_start", self.on_start)

    async def on_start(self, _):
        await self.plugin["xep_0115"].update_caps(broadcast=False)
        await self.get_roster()
        self.send_presence()
        self.online.set()

    async def next_event(self, kind):
        while True:
            name, m = await asyncio.wait_for(self.events.get(), T)
            if name == kind:
                return m


async def main():
    alice, bob = Client(A_JID, A_PW), Client(B_JID, B_PW)
    for c, addr in [(alice, A_ADDR), (bob, B_ADDR)]:
        await connect(c, addr, c.online)
    a, b = JID(A_JID).bare, JID(B_JID).bare
    alice.send_presence_subscription(pto=b)
    await until(lambda: alice.client_roster[b]["subscription"] == "both"
                and bob.client_roster[a]["subscription"] == "both", "mutual subscription")
    print("OK contacts across servers", flush=True)

    tune = ET.fromstring(f"<tune xmlns='{TUNE}'><artist>Yes</artist><title>Roundabout</title></tune>")
    await alice.plugin["xep_0060"].publish(JID(a), TUNE, id="current", payload=tune)
    m = await bob.next_event("user_tune_publish")
    check(m["from"].bare == a, f"tune from {m['from']}")
    check(m["pubsub_event"]["items"]["item"]["tune"]["title"] == "Roundabout", "tune title")
    print("OK prosody user notified of a starling user's tune", flush=True)

    got = await bob.plugin["xep_0060"].get_items(JID(a), TUNE, max_items=1)
    items = list(got["pubsub"]["items"])
    artist = items[0].xml.find(f"{{{TUNE}}}tune/{{{TUNE}}}artist") if items else None
    check(len(items) == 1 and artist is not None and artist.text == "Yes",
          "items fetched across servers")
    print("OK prosody user reads a starling user's node", flush=True)

    await alice.plugin["xep_0084"].publish_avatar_metadata(
        {"id": "0123456789abcdef0123456789abcdef01234567", "type": "image/png", "bytes": 1024})
    m = await bob.next_event("avatar_metadata_publish")
    check(m["pubsub_event"]["items"]["item"]["avatar_metadata"]["info"]["bytes"] == 1024, "avatar metadata")
    print("OK prosody user notified of avatar metadata", flush=True)

    alice.disconnect()
    bob.disconnect()
    print("ALL OK", flush=True)


asyncio.run(asyncio.wait_for(main(), 120))
