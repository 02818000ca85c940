"""A slixmpp chat peer driven over stdin/stdout, for tests written in other
languages (tests/web/converse.mjs uses it as bob).

Logs in over STARTTLS with SCRAM-SHA-256, sends initial presence and prints
"ONLINE <full jid>". Then reads commands from stdin, one per line:
  SEND <to-jid> <body...>   send a chat message (the body is the rest of the line)
  QUIT                      disconnect and exit 0
Every received chat or normal message with a body is printed as
"GOT <from full jid> <body>". Exits 1 with "FAIL ..." if not online within
20 s; exits when stdin closes.

usage: slixmpp_chat_peer.py JID PASSWORD HOST:PORT
"""
import asyncio
import os
import sys

import slixmpp

from helpers import T, connect, setup_client

JID, PASSWORD, ADDR = sys.argv[1:4]


def out(line):
    print(line, flush=True)


class Client(slixmpp.ClientXMPP):
    def __init__(self):
        super().__init__(JID, PASSWORD, sasl_mech="SCRAM-SHA-256")
        setup_client(self, ["xep_0030"])
        self.online = asyncio.Event()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("failed_auth", lambda _: fail(f"auth failed for {JID}"))

    def on_start(self, _):
        self.send_presence()
        self.online.set()

    def on_message(self, msg):
        if msg["type"] in ("chat", "normal") and msg["body"]:
            body = msg["body"].replace("\n", " ")
            out(f"GOT {msg['from']} {body}")


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
        elif line.strip():
            out(f"ERROR unknown command: {line}")
    try:
        await asyncio.wait_for(c.disconnect(), 5)
    except Exception:
        pass


asyncio.run(main())
