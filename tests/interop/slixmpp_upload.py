"""HTTP File Upload (XEP-0363) with slixmpp's XEP-0363 plugin (which PUTs
with aiohttp): the service is found by disco, a file too large for it is
refused with its maximum, and a file of SIZE random bytes is uploaded.
Prints "STEP uploaded URL SHA256".

usage: slixmpp_upload.py DOMAIN HOST:PORT USER PASS SIZE
"""
import asyncio
import hashlib
import io
import os
import sys

import slixmpp
from slixmpp.plugins.xep_0363.http_upload import FileTooBig

from helpers import T, check, connect, setup_client

DOMAIN, ADDR, USER, PASSWORD, SIZE = sys.argv[1:6]
SIZE = int(SIZE)


class Client(slixmpp.ClientXMPP):
    def __init__(self):
        super().__init__(f"{USER}@{DOMAIN}", PASSWORD, sasl_mech="SCRAM-SHA-256")
        setup_client(self, ["xep_0030", "xep_0363"])
        self.online = asyncio.Event()
        self.add_event_handler("session_start", lambda _: self.online.set())


async def main():
    c = Client()
    await connect(c, ADDR, c.online)
    up = c["xep_0363"]
    info = await asyncio.wait_for(up.find_upload_service(), T)
    check(info is not None, "no upload service found by disco")
    print(f"STEP found {info['from']}", flush=True)
    too_big = None
    try:
        await asyncio.wait_for(
            up.upload_file("huge.bin", size=10**12, input_file=io.BytesIO(b"x")), T
        )
    except FileTooBig as e:
        too_big = e
    check(too_big is not None, "a terabyte was not refused")
    print(f"STEP too large refused, max {up.max_file_size}", flush=True)
    data = os.urandom(SIZE)
    url = await asyncio.wait_for(
        up.upload_file(
            "photo of the cat.jpg",
            size=SIZE,
            content_type="image/jpeg",
            input_file=io.BytesIO(data),
        ),
        60,
    )
    print(f"STEP uploaded {url} {hashlib.sha256(data).hexdigest()}", flush=True)
    c.disconnect()


asyncio.run(main())
