"""A XEP-0357 app server played by slixmpp's ComponentXMPP (XEP-0114): it
takes the notifications a server publishes (§7) and prints each as a line
"NOTIFICATION <json>" (node, from, the summary form's fields, the publish
options), answering each with a result. Prints "CONNECTED" once the
handshake succeeded. On stdin, "FORGET <node>" makes it answer that node's
notifications with <item-not-found/> (the device is gone, §8); it serves
until stdin closes (or 300 s pass).

usage: slixmpp_push_appserver.py HOST PORT DOMAIN SECRET
"""
import asyncio
import json
import sys

from slixmpp.componentxmpp import ComponentXMPP
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

HOST, PORT, DOMAIN, SECRET = sys.argv[1:5]
PUBSUB = "http://jabber.org/protocol/pubsub"
PUSH = "urn:xmpp:push:0"
DATA = "jabber:x:data"

forgotten = set()


def form_fields(x):
    out = {}
    if x is None:
        return out
    for f in x.findall(f"{{{DATA}}}field"):
        out[f.get("var")] = [v.text or "" for v in f.findall(f"{{{DATA}}}value")]
    return out


class AppServer(ComponentXMPP):
    def __init__(self):
        super().__init__(DOMAIN, SECRET, HOST, int(PORT))
        self.ready = asyncio.Event()
        self.add_event_handler("session_start", lambda _: self.ready.set())
        self.register_handler(
            Callback(
                "push publish",
                MatchXPath(f"{{jabber:component:accept}}iq/{{{PUBSUB}}}pubsub"),
                self.on_publish,
            )
        )

    def on_publish(self, iq):
        if iq["type"] != "set":
            return
        pubsub = iq.xml.find(f"{{{PUBSUB}}}pubsub")
        publish = pubsub.find(f"{{{PUBSUB}}}publish")
        node = publish.get("node") if publish is not None else None
        note = None
        if publish is not None:
            note = publish.find(f"{{{PUBSUB}}}item/{{{PUSH}}}notification")
        summary = form_fields(note.find(f"{{{DATA}}}x") if note is not None else None)
        options = form_fields(pubsub.find(f"{{{PUBSUB}}}publish-options/{{{DATA}}}x"))
        print(
            "NOTIFICATION "
            + json.dumps(
                {"node": node, "from": str(iq["from"]), "summary": summary, "options": options}
            ),
            flush=True,
        )
        if node in forgotten:
            err = iq.reply()
            err["type"] = "error"
            err["error"]["type"] = "cancel"
            err["error"]["condition"] = "item-not-found"
            err.send()
        else:
            iq.reply().send()


async def read_commands():
    loop = asyncio.get_event_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        parts = line.decode().split()
        if len(parts) == 2 and parts[0] == "FORGET":
            forgotten.add(parts[1])
            print(f"FORGOTTEN {parts[1]}", flush=True)


async def main():
    a = AppServer()
    a.connect()
    await asyncio.wait_for(a.ready.wait(), 20)
    print("CONNECTED", flush=True)
    await asyncio.wait_for(read_commands(), 300)
    a.disconnect()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as ex:
        print(f"FAIL {type(ex).__name__}: {ex!r}", flush=True)
        sys.exit(1)
