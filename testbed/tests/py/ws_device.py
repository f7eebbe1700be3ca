"""A device on a WebSocket (the `websockets` library) for the cluster tests.

Prints "connected", then "message <json>" for every message, then "closed <code>" when the
server closes (or "timeout" after the given seconds), so the Rust test can follow it.
"""
import asyncio
import sys

import websockets


async def main(url: str, seconds: float) -> None:
    async with websockets.connect(url, open_timeout=10, close_timeout=5) as ws:
        print("connected", flush=True)
        try:
            async with asyncio.timeout(seconds):
                async for message in ws:
                    print("message", message, flush=True)
        except TimeoutError:
            print("timeout", flush=True)
            return
        except websockets.ConnectionClosed:
            pass  # any close code: said below
    print("closed", ws.close_code, flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
