"""Large server messages through a standard client library (Python `websockets`).

Usage: ws_big_messages.py ws://host:port/path COUNT
Prints 'connected', then for each of COUNT messages 'message KIND LEN ok' when its data is an
intact pattern body (`pattern:` then the letters a..z repeating) of LEN bytes, or
'message KIND LEN bad AT' with the first wrong position; then closes.
"""
import asyncio
import json
import sys

import websockets

PREFIX = "pattern:"


def first_wrong(data: str) -> int:
    """-1 if `data` is a pattern body, else the index of its first wrong character."""
    if not data.startswith(PREFIX):
        return 0
    for i, ch in enumerate(data[len(PREFIX):]):
        if ch != chr(ord("a") + i % 26):
            return len(PREFIX) + i
    return -1


async def main(uri: str, count: int) -> None:
    async with websockets.connect(uri, open_timeout=10, max_size=1 << 20) as ws:
        print("connected", flush=True)
        for _ in range(count):
            msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
            data = msg.get("data", "")
            wrong = first_wrong(data)
            verdict = "ok" if wrong < 0 else f"bad {wrong}"
            print(f"message {msg.get('kind')} {len(data)} {verdict}", flush=True)
        await ws.close()


asyncio.run(main(sys.argv[1], int(sys.argv[2])))
