"""A standard WebSocket client (the `websockets` library) against ws-server.

Prints one line per step so the Rust test can drive the server between steps:
connected, pong, message <json> (twice: a targeted push, then a broadcast), closed <code>.
"""
import asyncio
import sys

import websockets


async def main(url: str) -> None:
    async with websockets.connect(url, open_timeout=5, close_timeout=5) as ws:
        print("connected", flush=True)
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 5)
        print("pong", flush=True)
        for _ in range(2):
            message = await asyncio.wait_for(ws.recv(), 15)
            print("message", message, flush=True)
        await ws.close(code=1000, reason="done")
    print("closed", ws.close_code, flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
