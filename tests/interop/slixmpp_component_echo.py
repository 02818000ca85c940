"""An echo gateway built on slixmpp's ComponentXMPP (XEP-0114): answers
every chat message with "echo: <body>". Prints "CONNECTED" once the
handshake succeeded, then serves until stdin closes (or 120 s pass).

usage: slixmpp_component_echo.py HOST PORT DOMAIN SECRET
"""
import asyncio
import sys

from slixmpp.componentxmpp import ComponentXMPP

HOST, PORT, DOMAIN, SECRET = sys.argv[1:5]


class Echo(ComponentXMPP):
    def __init__(self):
        super().__init__(DOMAIN, SECRET, HOST, int(PORT))
        self.ready = asyncio.Event()
        self.add_event_handler("session_start", lambda _: self.ready.set())
        self.add_event_handler("message", self.on_message)

    def on_message(self, msg):
        if msg["type"] in ("chat", "normal") and msg["body"]:
            reply = msg.reply(f"echo: {msg['body']}")
            reply["id"] = msg["id"]
            reply.send()


async def main():
    e = Echo()
    e.connect()
    await asyncio.wait_for(e.ready.wait(), 20)
    print("CONNECTED", flush=True)
    loop = asyncio.get_event_loop()
    await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.read), 120)
    e.disconnect()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as ex:
        print(f"FAIL {type(ex).__name__}: {ex!r}", flush=True)
        sys.exit(1)
