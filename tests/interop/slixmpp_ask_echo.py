"""A slixmpp client logs in, sends chat messages to an echo address and
waits for each "echo: <body>" answer. Prints "ECHO <from> <body>" per
answer and "ALL OK" at the end; exits non-zero on a failure.

usage: slixmpp_ask_echo.py HOST PORT JID PASSWORD TO COUNT
"""
import asyncio
import ssl
import sys

import slixmpp

HOST, PORT, JID, PASSWORD, TO, COUNT = sys.argv[1:7]
T = 30


class Client(slixmpp.ClientXMPP):
    def __init__(self):
        super().__init__(JID, PASSWORD)
        # The test servers use self-signed certificates.
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.enable_direct_tls = False
        self.online = asyncio.Event()
        self.inbox = asyncio.Queue()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", lambda m: self.inbox.put_nowait(m))

    async def on_start(self, _):
        self.send_presence()
        self.online.set()


async def main():
    c = Client()
    c.connect(host=HOST, port=int(PORT))
    await asyncio.wait_for(c.online.wait(), T)
    for i in range(int(COUNT)):
        body = f"hello {i}"
        c.send_message(mto=TO, mbody=body, mtype="chat")
        while True:
            m = await asyncio.wait_for(c.inbox.get(), T)
            if m["type"] == "error":
                raise RuntimeError(f"error answer: {m}")
            if m["body"] == f"echo: {body}":
                print(f"ECHO {m['from']} {m['body']}", flush=True)
                break
    print("ALL OK", flush=True)
    c.disconnect()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as ex:
        print(f"FAIL {type(ex).__name__}: {ex!r}", flush=True)
        sys.exit(1)
