"""Server administration from a client (XEP-0050 ad-hoc commands,
XEP-0133) with slixmpp's XEP-0050 plugin: the admin lists the commands,
adds a user (who then logs in), changes its password (the old one stops
working), lists the online users, announces to them, and deletes the
user; a non-admin sees no commands and is refused.

usage: slixmpp_admin_commands.py DOMAIN HOST:PORT ADMIN PASS USER PASS
"""
import asyncio
import sys

import slixmpp
from slixmpp import JID
from slixmpp.exceptions import IqError
from slixmpp.plugins.xep_0004 import Form

from helpers import T, check, setup_client

DOMAIN, ADDR, ADMIN, ADMIN_PW, USER, USER_PW = sys.argv[1:7]
ADMIN_NS = "http://jabber.org/protocol/admin"


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password, sasl_mech="SCRAM-SHA-256")
        setup_client(self, ["xep_0030", "xep_0004", "xep_0050"])
        self.online = asyncio.Event()
        self.failed = asyncio.Event()
        self.headlines = asyncio.Queue()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("failed_auth", lambda _: self.failed.set())
        self.add_event_handler("message", self.on_message)

    async def on_start(self, _):
        self.send_presence()
        self.online.set()

    def on_message(self, m):
        if m["type"] == "headline":
            self.headlines.put_nowait(m)


async def login(jid, pw):
    c = Client(jid, pw)
    host, port = ADDR.rsplit(":", 1)
    c.connect(host=host, port=int(port))
    done, _ = await asyncio.wait(
        [asyncio.create_task(c.online.wait()), asyncio.create_task(c.failed.wait())],
        timeout=T, return_when=asyncio.FIRST_COMPLETED)
    return c if c.online.is_set() else None


async def run(admin, name, fields):
    node = f"{ADMIN_NS}#{name}"
    first = await admin.plugin["xep_0050"].send_command(JID(DOMAIN), node)
    check(first["command"]["status"] == "executing", f"{name}: a form first")
    form = Form()
    form["type"] = "submit"
    form.add_field(var="FORM_TYPE", ftype="hidden", value=ADMIN_NS)
    for k, v in fields.items():
        form.add_field(var=k, value=v)
    done = await admin.plugin["xep_0050"].send_command(
        JID(DOMAIN), node, action="complete", payload=form,
        sessionid=first["command"]["sessionid"])
    check(done["command"]["status"] == "completed", f"{name}: completed")
    return done


async def main():
    admin = await login(f"{ADMIN}@{DOMAIN}/console", ADMIN_PW)
    check(admin is not None, "admin logs in")
    user = await login(f"{USER}@{DOMAIN}/desk", USER_PW)
    check(user is not None, "user logs in")

    items = await admin.plugin["xep_0030"].get_items(jid=DOMAIN, node="http://jabber.org/protocol/commands")
    nodes = {i[1] for i in items["disco_items"]["items"]}
    for name in ["add-user", "delete-user", "change-user-password", "get-online-users-list", "announce"]:
        check(f"{ADMIN_NS}#{name}" in nodes, f"{name} listed")
    theirs = await user.plugin["xep_0030"].get_items(jid=DOMAIN, node="http://jabber.org/protocol/commands")
    check(len(theirs["disco_items"]["items"]) == 0, "a non-admin sees no commands")
    try:
        await user.plugin["xep_0050"].send_command(JID(DOMAIN), f"{ADMIN_NS}#add-user")
        check(False, "a non-admin is refused")
    except IqError as e:
        check(e.condition == "forbidden", f"refused with {e.condition}")
    print("OK commands listed for admins only", flush=True)

    newbie = f"newbie@{DOMAIN}"
    await run(admin, "add-user", {"accountjid": newbie, "password": "first-pw",
                                  "password-verify": "first-pw"})
    n = await login(f"{newbie}/phone", "first-pw")
    check(n is not None, "the added user logs in")
    print("OK add user", flush=True)

    done = await run(admin, "get-online-users-list", {})
    online = set(done["command"]["form"].get_values().get("onlineuserjids", []))
    check({f"{ADMIN}@{DOMAIN}", f"{USER}@{DOMAIN}", newbie} <= {str(j) for j in online},
          f"online users: {online}")
    print("OK online users", flush=True)

    await run(admin, "announce", {"subject": "Maintenance", "announcement": "Back in five"})
    for c in (user, n):
        m = await asyncio.wait_for(c.headlines.get(), T)
        check(m["body"] == "Back in five" and m["subject"] == "Maintenance", f"announcement {m}")
    print("OK announce", flush=True)

    n.disconnect()
    await run(admin, "change-user-password", {"accountjid": newbie, "password": "second-pw"})
    check(await login(f"{newbie}/phone", "first-pw") is None, "the old password fails")
    n = await login(f"{newbie}/phone", "second-pw")
    check(n is not None, "the new password works")
    n.disconnect()
    print("OK change password", flush=True)

    await run(admin, "delete-user", {"accountjids": newbie})
    check(await login(f"{newbie}/phone", "second-pw") is None, "the deleted user cannot log in")
    print("OK delete user", flush=True)

    admin.disconnect()
    user.disconnect()
    print("ALL OK", flush=True)


asyncio.run(asyncio.wait_for(main(), 150))
