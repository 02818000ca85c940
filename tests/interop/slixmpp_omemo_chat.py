"""An OMEMO conversation (XEP-0384) between two slixmpp-omemo clients,
each on the node given for it: both publish their device lists and bundles
to their own PEP service (XEP-0163, with XEP-0223 publish options), become
contacts, fetch each other's device list and bundle, and exchange
encrypted messages both ways, each decrypted by the other. Both send
entity capabilities (XEP-0115) with the device-list `+notify` interests,
so each also hears of the other's device list by notification.

usage: slixmpp_omemo_chat.py DOMAIN HOST:PORT USER PASS HOST:PORT USER PASS
"""
import asyncio
import sys
from typing import Any, Dict, FrozenSet, Optional

import omemo
from omemo.storage import Just, Maybe, Nothing, Storage
from omemo.types import DeviceInformation, JSONType
import slixmpp
from slixmpp import JID
from slixmpp.plugins import register_plugin
from slixmpp_omemo import TrustLevel, XEP_0384

from helpers import T, check, connect, setup_client, until

DOMAIN = sys.argv[1]
USERS = [sys.argv[2 + 3 * i: 5 + 3 * i] for i in range(2)]
DEVICE_LIST = "urn:xmpp:omemo:2:devices"
OLD_DEVICE_LIST = "eu.siacs.conversations.axolotl.devicelist"


class MemoryStorage(Storage):
    def __init__(self) -> None:
        super().__init__()
        self.data: Dict[str, JSONType] = {}

    async def _load(self, key: str) -> Maybe[JSONType]:
        return Just(self.data[key]) if key in self.data else Nothing()

    async def _store(self, key: str, value: JSONType) -> None:
        self.data[key] = value

    async def _delete(self, key: str) -> None:
        self.data.pop(key, None)


class XEP_0384Impl(XEP_0384):  # pylint: disable=invalid-name
    default_config = {"fallback_message": "This message is OMEMO encrypted."}

    def plugin_init(self) -> None:
        self._store = MemoryStorage()
        super().plugin_init()

    @property
    def storage(self) -> Storage:
        return self._store

    @property
    def _btbv_enabled(self) -> bool:
        return True

    async def _devices_blindly_trusted(self, blindly_trusted, identifier) -> None:
        pass

    async def _prompt_manual_trust(self, manually_trusted, identifier) -> None:
        session_manager = await self.get_session_manager()
        for device in manually_trusted:
            await session_manager.set_trust(
                device.bare_jid, device.identity_key, TrustLevel.TRUSTED.value
            )


register_plugin(XEP_0384Impl)


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password, sasl_mech="SCRAM-SHA-256")
        setup_client(self, ["xep_0030", "xep_0004", "xep_0060", "xep_0115", "xep_0163", "xep_0199"])
        self.register_plugin("xep_0384", module=sys.modules[__name__])
        self.online = asyncio.Event()
        self.omemo_ready = asyncio.Event()
        self.decrypted = asyncio.Queue()
        self.device_lists = asyncio.Queue()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("omemo_initialized", lambda _: self.omemo_ready.set())
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("twomemo_device_list_publish", lambda m: self.device_lists.put_nowait(m))
        self.add_event_handler("oldmemo_device_list_publish", lambda m: self.device_lists.put_nowait(m))

    async def on_start(self, _):
        await self.get_roster()
        self.send_presence()
        self.online.set()

    async def on_message(self, m):
        if m["type"] not in ("chat", "normal"):
            return
        xep_0384 = self.plugin["xep_0384"]
        if xep_0384.is_encrypted(m):
            try:
                plain, device = await xep_0384.decrypt_message(m)
            except Exception as e:  # reported, and the test fails on the missing message
                print(f"decrypt failed: {e!r}", flush=True)
                return
            self.decrypted.put_nowait((str(m["from"].bare), plain["body"], device.device_id))

    async def send_encrypted(self, to: JID, body: str):
        xep_0384 = self.plugin["xep_0384"]
        msg = self.make_message(mto=to, mtype="chat")
        msg["body"] = body
        encrypted, errors = await xep_0384.encrypt_message(msg, to)
        if errors:
            print(f"encryption errors: {errors}", flush=True)
        assert encrypted is not None, "nothing encrypted"
        assert "OMEMO" not in body and body not in str(encrypted), "the body went out in clear"
        encrypted.send()


async def main():
    (a_addr, a_user, a_pw), (b_addr, b_user, b_pw) = USERS
    alice = Client(f"{a_user}@{DOMAIN}/phone", a_pw)
    bob = Client(f"{b_user}@{DOMAIN}/laptop", b_pw)
    await connect(alice, a_addr, alice.online)
    await connect(bob, b_addr, bob.online)
    a_jid, b_jid = JID(f"{a_user}@{DOMAIN}"), JID(f"{b_user}@{DOMAIN}")

    # Contacts both ways (slixmpp answers and returns subscriptions itself).
    alice.send_presence_subscription(pto=b_jid)
    await until(
        lambda: alice.client_roster[b_jid]["subscription"] == "both"
        and bob.client_roster[a_jid]["subscription"] == "both",
        "mutual subscription",
    )
    print("OK contacts", flush=True)

    # Each publishes its device list and bundle to its own PEP service.
    await asyncio.wait_for(alice.omemo_ready.wait(), T)
    await asyncio.wait_for(bob.omemo_ready.wait(), T)
    for who, owner in [(alice, b_jid), (bob, a_jid)]:
        got = await who.plugin["xep_0060"].get_items(owner, DEVICE_LIST, max_items=1)
        items = got["pubsub"]["items"]
        check(len(items) == 1, f"one device list item for {owner}, got {len(items)}")
    print("OK device lists published", flush=True)
    info = await alice.plugin["xep_0030"].get_info(jid=a_jid)
    check(("pubsub", "pep", None, None) in info["disco_info"]["identities"]
          or any(i[0] == "pubsub" and i[1] == "pep" for i in info["disco_info"]["identities"]),
          "the account is a PEP service")
    check("http://jabber.org/protocol/pubsub#publish-options" in info["disco_info"]["features"],
          "publish-options advertised")
    print("OK pep advertised", flush=True)

    # Alice writes to Bob, encrypted; Bob decrypts; and back.
    await alice.send_encrypted(b_jid, "hello bob, in secret")
    frm, body, _ = await asyncio.wait_for(bob.decrypted.get(), T)
    check(frm == str(a_jid) and body == "hello bob, in secret", f"bob decrypted {body!r} from {frm}")
    print("OK alice to bob decrypted", flush=True)
    await bob.send_encrypted(a_jid, "hello alice, also in secret")
    frm, body, _ = await asyncio.wait_for(alice.decrypted.get(), T)
    check(frm == str(b_jid) and body == "hello alice, also in secret", f"alice decrypted {body!r} from {frm}")
    print("OK bob to alice decrypted", flush=True)
    for i in range(3):
        await alice.send_encrypted(b_jid, f"more {i}")
        _, body, _ = await asyncio.wait_for(bob.decrypted.get(), T)
        check(body == f"more {i}", f"bob decrypted {body!r}")
    print("OK a conversation", flush=True)

    # The device lists reached the other side by PEP notification too
    # (their caps asked for DEVICE_LIST+notify).
    seen = set()
    for c in (alice, bob):
        while not c.device_lists.empty():
            seen.add((c.boundjid.bare, str(c.device_lists.get_nowait()["from"].bare)))
    check((str(a_jid), str(b_jid)) in seen or (str(b_jid), str(a_jid)) in seen,
          f"a device list notification between the two, saw {seen}")
    print("OK device list notifications", flush=True)

    alice.disconnect()
    bob.disconnect()
    print("ALL OK", flush=True)


asyncio.run(asyncio.wait_for(main(), 150))
