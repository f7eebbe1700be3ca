"""A request head and a message both far larger than the xdp server's 256-byte receive buffer.

Usage: ws_large_check.py ws://host:port/path
Prints 'head N ok' once the upgrade with an N-byte head succeeded, 'frame N accepted' once an
N-byte message was taken (the connection still answers a ping after it), then closes.
"""
import asyncio
import sys

import websockets


async def main(uri: str) -> None:
    pad = "a" * 2800
    async with websockets.connect(uri, additional_headers={"X-Pad": pad}, open_timeout=10) as ws:
        print("head 3000 ok", flush=True)
        await ws.send(b"\x01" * 1500)
        pong = await ws.ping(b"after")
        await asyncio.wait_for(pong, 5)
        print("frame 1500 accepted", flush=True)
        await ws.close()


asyncio.run(main(sys.argv[1]))
