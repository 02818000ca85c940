"""A slixmpp chat peer driven over stdin/stdout, for tests written in other
languages (tests/web/converse.mjs uses it as bob).

Logs in over STARTTLS with SCRAM-SHA-256, sends initial presence and prints
"ONLINE <full jid>". Then reads commands from stdin, one per line:
  SEND <to-jid> <body...>   send a chat message (the body is the rest of the line)
  JOIN <room> <nick>        enter a room (XEP-0045); prints "JOINED <room> <nick>"
  GROUP <room> <body...>    send a message to the room
  REGISTER <room> <nick>    register the nick with the room (§7.10); prints
                            "REGISTER <room> ok" or "REGISTER <room> <condition> <text>"
  UNREGISTER <room> -       give it back (<remove/>); prints "UNREGISTER <room> ..."
  OWNER <room> <bare-jid>   make that account an owner of the room (§10.3);
                            prints "OWNER <room> ok" or "OWNER <room> <condition> <text>"
  QUIT                      disconnect and exit 0
Every received chat or normal message with a body is printed as
"GOT <from full jid> <body>", a room's message as "GROUPCHAT <from> <body>",
an occupant's presence as "OCCUPANT <room/nick> available|unavailable",
and a moderator's retraction (XEP-0425) as "RETRACTED <room> <stanza-id>".
Exits 1 with "FAIL ..." if not online within 20 s; exits when stdin closes.

usage: slixmpp_chat_peer.py JID PASSWORD HOST:PORT
"""
import asyncio
import os
import sys
import xml.etree.ElementTree as ET

import slixmpp
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from slixmpp.exceptions import IqError, IqTimeout

from helpers import T, connect, setup_client

JID, PASSWORD, ADDR = sys.argv[1:4]
RETRACT = "urn:xmpp:message-retract:1"


def out(line):
    print(line, flush=True)


class Client(slixmpp.ClientXMPP):
    def __init__(self):
        super().__init__(JID, PASSWORD, sasl_mech="SCRAM-SHA-256")
        setup_client(self, ["xep_0030", "xep_0045"])
        self.online = asyncio.Event()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("groupchat_message", self.on_groupchat)
        self.add_event_handler("groupchat_presence", self.on_occupant)
        # A room's retraction notice has no body, so slixmpp's message
        # events never see it.
        self.register_handler(Callback(
            "retractions", MatchXPath(f"{{jabber:client}}message/{{{RETRACT}}}retract"), self.on_retract))
        self.add_event_handler("failed_auth", lambda _: fail(f"auth failed for {JID}"))

    def on_start(self, _):
        self.send_presence()
        self.online.set()

    def on_retract(self, msg):
        retract = msg.xml.find(f"{{{RETRACT}}}retract")
        if retract.find("{urn:xmpp:message-moderate:1}moderated") is not None:
            out(f"RETRACTED {msg['from']} {retract.get('id')}")

    def on_message(self, msg):
        if msg["type"] in ("chat", "normal") and msg["body"]:
            body = msg["body"].replace("\n", " ")
            out(f"GOT {msg['from']} {body}")

    def on_groupchat(self, msg):
        if msg["body"]:
            body = msg["body"].replace("\n", " ")
            out(f"GROUPCHAT {msg['from']} {body}")

    def on_occupant(self, p):
        state = "unavailable" if p["type"] == "unavailable" else "available"
        out(f"OCCUPANT {p['from']} {state}")


async def join(c, room, nick):
    try:
        await c.plugin["xep_0045"].join_muc_wait(room, nick, timeout=T)
        out(f"JOINED {room} {nick}")
    except Exception as e:
        out(f"FAIL joining {room} as {nick}: {type(e).__name__} {e}")


async def make_owner(c, room, jid):
    iq = c.make_iq_set(ito=room)
    iq.append(ET.fromstring(
        "<query xmlns='http://jabber.org/protocol/muc#admin'>"
        f"<item affiliation='owner' jid='{jid}'/></query>"))
    try:
        await iq.send(timeout=T)
        out(f"OWNER {room} ok")
    except IqError as e:
        out(f"OWNER {room} {e.condition} {e.text}")
    except IqTimeout:
        out(f"OWNER {room} timeout")


async def register(c, room, nick):
    iq = c.make_iq_set(ito=room)
    if nick is None:
        payload = "<remove/>"
    else:
        payload = ("<x xmlns='jabber:x:data' type='submit'>"
                   "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#register</value></field>"
                   f"<field var='muc#register_roomnick'><value>{nick}</value></field></x>")
    iq.append(ET.fromstring(f"<query xmlns='jabber:iq:register'>{payload}</query>"))
    kind = "UNREGISTER" if nick is None else "REGISTER"
    try:
        await iq.send(timeout=T)
        out(f"{kind} {room} ok")
    except IqError as e:
        out(f"{kind} {room} {e.condition} {e.text}")
    except IqTimeout:
        out(f"{kind} {room} timeout")


def fail(why):
    out(f"FAIL {why}")
    # os._exit: slixmpp's tasks must not keep the process alive.
    os._exit(1)


async def main():
    c = Client()
    try:
        await connect(c, ADDR, c.online)
    except asyncio.TimeoutError:
        fail(f"not online within {T} s")
    except Exception as e:
        fail(f"connecting: {type(e).__name__}: {e}")
    out(f"ONLINE {c.boundjid}")

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        raw = await reader.readline()
        if not raw:  # stdin closed
            break
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line == "QUIT":
            break
        if line.startswith("SEND "):
            parts = line.split(" ", 2)
            if len(parts) < 3 or not parts[1]:
                out(f"ERROR bad SEND line: {line}")
                continue
            c.send_message(mto=parts[1], mbody=parts[2], mtype="chat")
        elif line.startswith(("JOIN ", "GROUP ", "REGISTER ", "UNREGISTER ", "OWNER ")):
            parts = line.split(" ", 2)
            if len(parts) < 3 or not parts[1] or not parts[2]:
                out(f"ERROR bad line: {line}")
            elif parts[0] == "JOIN":
                asyncio.ensure_future(join(c, parts[1], parts[2]))
            elif parts[0] == "GROUP":
                c.send_message(mto=parts[1], mbody=parts[2], mtype="groupchat")
            elif parts[0] == "OWNER":
                asyncio.ensure_future(make_owner(c, parts[1], parts[2]))
            elif parts[0] == "REGISTER":
                asyncio.ensure_future(register(c, parts[1], parts[2]))
            else:
                asyncio.ensure_future(register(c, parts[1], None))
        elif line.strip():
            out(f"ERROR unknown command: {line}")
    try:
        await asyncio.wait_for(c.disconnect(), 5)
    except Exception:
        pass


asyncio.run(main())
