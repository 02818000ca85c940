"""An IRC channel through biboumi (the XMPP-to-IRC gateway, an XEP-0114
component), seen from both sides: XMPP users with slixmpp's XEP-0045 and
XEP-0050 plugins, and an IRC user over a raw socket to ngircd.

Phases (each a fresh run of this script):

  chat  - the XMPP user enters the channel (the IRC user sees the JOIN),
          messages both ways, the IRC user's nick change (303) and part as
          MUC presence; the second XMPP user enters too; private messages
          to an IRC nick (nick%server@gw) both ways from both; biboumi's
          ad-hoc commands listed through disco by both; with a third user (on another
          server, over federation) also in the channel, messages both ways.
  down  - the gateway is not connected: entering the channel and a private
          message get an error whose text names the gateway.
  again - the gateway is back: entering and messages both ways work.

usage: slixmpp_biboumi.py PHASE GATEWAY IRC_HOST:PORT
           HOST:PORT JID PASS               (the user who enters the channel)
           [HOST:PORT JID PASS              (a second user, on another node)
            [HOST:PORT JID PASS]]           (a user of another server)
"""
import asyncio
import sys

import slixmpp
from slixmpp import JID

import helpers
from helpers import check, setup_client

PHASE, GW, IRC = sys.argv[1:4]
USERS = [sys.argv[i:i + 3] for i in range(4, len(sys.argv), 3)]
IRC_HOST, IRC_PORT = IRC.rsplit(":", 1)
ROOM = JID(f"#test%{IRC_HOST}@{GW}")
T = 40
MUC_USER = "http://jabber.org/protocol/muc#user"
COMMANDS = "http://jabber.org/protocol/commands"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


async def next_of(q, pred, what):
    return await helpers.next_of(q, pred, what, T)


class Irc:
    """An IRC client over a raw socket: lines in a queue, PINGs answered."""

    def __init__(self, nick):
        self.nick = nick
        self.lines = asyncio.Queue()

    async def connect(self):
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(IRC_HOST, int(IRC_PORT)), T)
        self.task = asyncio.create_task(self.read())
        self.send(f"NICK {self.nick}")
        self.send(f"USER {self.nick} 0 * :test user")
        await self.expect(lambda l: f" 001 {self.nick} " in l, "IRC welcome")

    async def read(self):
        while True:
            raw = await self.reader.readline()
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip("\r\n")
            if line.startswith("PING"):
                self.send("PONG" + line[4:])
            else:
                self.lines.put_nowait(line)

    def send(self, line):
        self.writer.write((line + "\r\n").encode())

    async def expect(self, pred, what):
        return await next_of(self.lines, pred, f"IRC: {what}")

    def close(self):
        self.send("QUIT :done")
        self.task.cancel()
        self.writer.close()


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        setup_client(self, ["xep_0030", "xep_0004", "xep_0045", "xep_0050", "xep_0199"], mech=None)
        self.online = asyncio.Event()
        self.groupchat = asyncio.Queue()
        self.chats = asyncio.Queue()
        self.presences = asyncio.Queue()
        self.errors = asyncio.Queue()
        self.occupants = {}
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("groupchat_message", self.on_groupchat)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("presence", self.on_presence)
        self.add_event_handler("message_error", lambda m: self.errors.put_nowait(m))

    async def on_start(self, _):
        self.send_presence()
        self.online.set()

    def on_groupchat(self, m):
        if m["body"]:
            self.groupchat.put_nowait(m)

    def on_message(self, m):
        if m["type"] in ("chat", "normal") and m["body"]:
            self.chats.put_nowait(m)

    def on_presence(self, p):
        if p["from"].bare == ROOM:
            self.occupants[p["from"].resource] = p["type"]
            self.presences.put_nowait(p)
        if p["type"] == "error":
            self.errors.put_nowait(p)

    def enter(self, nick):
        p = self.make_presence(pto=f"{ROOM}/{nick}")
        p.append(slixmpp.xmlstream.ET.Element("{http://jabber.org/protocol/muc}x"))
        p.send()


def codes(p):
    x = p.xml.find(f"{{{MUC_USER}}}x")
    return set() if x is None else {s.get("code") for s in x.findall(f"{{{MUC_USER}}}status")}


def nick_of(p):
    x = p.xml.find(f"{{{MUC_USER}}}x")
    i = None if x is None else x.find(f"{{{MUC_USER}}}item")
    return None if i is None else i.get("nick")


def error_text(stanza):
    e = stanza.xml.find("{jabber:client}error")
    if e is None:
        return None, None
    cond = next((c.tag.split("}")[1] for c in e if c.tag.startswith(f"{{{STANZAS}}}") and not c.tag.endswith("}text")), None)
    t = e.find(f"{{{STANZAS}}}text")
    return cond, (t.text if t is not None else None)


async def enter_and_chat(c, nick, irc, tag):
    """`c` enters the channel as `nick`: the IRC user sees the JOIN, and a
    message goes each way."""
    c.enter(nick)
    me = await next_of(c.presences, lambda p: p["from"].resource == nick and p["type"] != "unavailable",
                       f"{nick}'s own presence in the channel")
    check(me["type"] != "error", f"{nick} could not enter: {me}")
    await irc.expect(lambda l: l.startswith(f":{nick}!") and " JOIN " in l, f"{nick} joins")
    check(c.occupants.get(irc.nick) == "available", f"{irc.nick} among the occupants: {c.occupants}")
    print(f"OK {tag}: {nick} entered, the IRC user saw the join", flush=True)

    c.send_message(mto=ROOM, mbody=f"hello irc from {nick}", mtype="groupchat")
    await irc.expect(lambda l: l.startswith(f":{nick}!") and f"PRIVMSG #test :hello irc from {nick}" in l,
                     f"{nick}'s message")
    irc.send(f"PRIVMSG #test :hello {nick} from irc")
    m = await next_of(c.groupchat, lambda m: m["body"] == f"hello {nick} from irc", "the IRC message")
    check(m["from"] == JID(f"{ROOM}/{irc.nick}"), f"IRC message from {m['from']}")
    print(f"OK {tag}: messages both ways with {nick}", flush=True)


async def login(addr, jid, pw):
    host, port = addr.rsplit(":", 1)
    c = Client(jid, pw)
    c.connect(host=host, port=int(port))
    await asyncio.wait_for(c.online.wait(), T)
    return c


async def chat_phase(users):
    alice = users[0]
    irc = Irc("ircbob")
    await irc.connect()
    irc.send("JOIN #test")
    await irc.expect(lambda l: " 366 " in l, "end of NAMES")
    await enter_and_chat(alice, "alice", irc, "chat")

    # A nick change is presence 303 then the new nick's presence; a part
    # is unavailable presence.
    irc.send("NICK ircbob2")
    gone = await next_of(alice.presences, lambda p: p["from"].resource == "ircbob" and p["type"] == "unavailable",
                         "ircbob's nick change")
    check("303" in codes(gone) and nick_of(gone) == "ircbob2", f"nick change codes {codes(gone)} nick {nick_of(gone)}")
    await next_of(alice.presences, lambda p: p["from"].resource == "ircbob2" and p["type"] != "unavailable",
                  "ircbob2's presence")
    irc.nick = "ircbob2"
    print("OK chat: the IRC nick change reached XMPP as 303", flush=True)

    # The second user (another node) enters too; then a private message to
    # the IRC nick (nick%server@gateway) from each, both ways (biboumi
    # takes them from users it has connected to that IRC server).
    carol = users[1] if len(users) > 1 else None
    if carol:
        await enter_and_chat(carol, "carol", irc, "second node")
    nick_jid = JID(f"ircbob2%{IRC_HOST}@{GW}")
    for c in [alice] + ([carol] if carol else []):
        c.send_message(mto=nick_jid, mbody=f"psst from {c.boundjid.user}", mtype="chat")
        line = await irc.expect(lambda l: f"PRIVMSG ircbob2 :psst from {c.boundjid.user}" in l,
                                "the private message")
        sender = line[1:].split("!", 1)[0]
        irc.send(f"PRIVMSG {sender} :psst back to {sender}")
        m = await next_of(c.chats, lambda m: m["body"] == f"psst back to {sender}", "the private answer")
        check(m["from"].bare == nick_jid.bare, f"private answer from {m['from']}")
        print(f"OK chat: private messages both ways with {c.boundjid.user} (IRC nick {sender})", flush=True)

    # Biboumi's ad-hoc commands, listed through disco from each user's node.
    for c in users[:2]:
        items = await c.plugin["xep_0030"].get_items(jid=GW, node=COMMANDS, timeout=T)
        nodes = {i[1] for i in items["disco_items"]["items"]}
        check("configure" in nodes, f"ad-hoc commands of the gateway: {nodes}")
    print(f"OK chat: ad-hoc commands listed ({', '.join(sorted(nodes))})", flush=True)

    # A user of another server, through federation.
    if len(users) > 2:
        pete = users[2]
        await enter_and_chat(pete, "pete", irc, "federation")
        await next_of(alice.presences, lambda p: p["from"].resource == "pete", "pete's presence for alice")

    irc.send("PART #test :bye")
    await next_of(alice.presences, lambda p: p["from"].resource == "ircbob2" and p["type"] == "unavailable",
                  "ircbob2's part")
    print("OK chat: the IRC part reached XMPP as unavailable presence", flush=True)
    irc.close()

    # Another IRC user joins, then quits the network.
    quitter = Irc("ircq")
    await quitter.connect()
    quitter.send("JOIN #test")
    await quitter.expect(lambda l: " 366 " in l, "end of NAMES")
    await next_of(alice.presences, lambda p: p["from"].resource == "ircq" and p["type"] != "unavailable",
                  "ircq's join")
    quitter.send("QUIT :gone fishing")
    await next_of(alice.presences, lambda p: p["from"].resource == "ircq" and p["type"] == "unavailable",
                  "ircq's quit")
    print("OK chat: an IRC quit reached XMPP as unavailable presence", flush=True)


async def down_phase(users):
    # Each user (the last may be on another server): entering, a message
    # to the channel and a private message each get an error that says
    # the gateway is away.
    for c in users:
        who = c.boundjid.bare
        c.enter(c.boundjid.user)
        p = await next_of(c.errors, lambda p: p.name == "presence", f"{who}: an error for entering")
        cond, text = error_text(p)
        check(cond is not None and text and GW in text, f"{who} entering with the gateway away: {cond} {text!r}")
        print(f"OK down: {who} entering gets {cond}: {text}", flush=True)
        c.send_message(mto=ROOM, mbody="is anyone here?", mtype="groupchat")
        m = await next_of(c.errors, lambda m: m.name == "message", f"{who}: an error for a group message")
        cond, text = error_text(m)
        check(cond is not None and text and GW in text, f"{who}'s group message with the gateway away: {cond} {text!r}")
        print(f"OK down: {who}'s group message gets {cond}", flush=True)
        c.send_message(mto=f"someone%{IRC_HOST}@{GW}", mbody="anyone?", mtype="chat")
        m = await next_of(c.errors, lambda m: m.name == "message", f"{who}: an error for a private message")
        cond, text = error_text(m)
        check(cond is not None and text and GW in text, f"{who}'s private message with the gateway away: {cond} {text!r}")
        print(f"OK down: {who}'s private message gets {cond}", flush=True)


async def again_phase(users):
    alice = users[0]
    irc = Irc("ircdan")
    await irc.connect()
    irc.send("JOIN #test")
    await irc.expect(lambda l: " 366 " in l, "end of NAMES")
    # The gateway may still be connecting: retry entering until it answers.
    for attempt in range(10):
        alice.enter("alice")
        p = await next_of(alice.presences, lambda p: p["from"].resource == "alice", "alice's presence")
        if p["type"] != "error":
            break
        await asyncio.sleep(1)
    check(p["type"] != "error", f"alice still cannot enter: {p}")
    await irc.expect(lambda l: l.startswith(":alice!") and " JOIN " in l, "alice joins")
    alice.send_message(mto=ROOM, mbody="back again", mtype="groupchat")
    await irc.expect(lambda l: "PRIVMSG #test :back again" in l, "alice's message")
    irc.send("PRIVMSG #test :welcome back")
    await next_of(alice.groupchat, lambda m: m["body"] == "welcome back", "the IRC message")
    print("OK again: the gateway works again", flush=True)
    irc.close()


async def main():
    users = [await login(*u) for u in USERS]
    print("OK login", flush=True)
    await {"chat": chat_phase, "down": down_phase, "again": again_phase}[PHASE](users)
    for c in users:
        c.disconnect()
    print("DONE", flush=True)


asyncio.run(main())
