"""Device credentials through standard clients: Python's `websockets` (the token in a
subprotocol, as a browser must send it) and `http.client` for long-poll.

Usage: ws_token_check.py HOST:PORT SOURCE_IP WS_TOKEN POLL_TOKEN FORGED_TOKEN
(WS_TOKEN is for device py-dev, POLL_TOKEN for poll-dev). Prints one line per step so the Rust
test can act between steps: refused <status>, connected <subprotocol>, message <json>,
closed <code>, poll-refused <status>, polling, poll <status> <body>.
"""
import asyncio
import http.client
import sys

import websockets
from websockets.exceptions import InvalidStatus


async def websocket(server: str, source: str, token: str, forged: str) -> None:
    url = f"ws://{server}/ws?id=py-dev"
    try:
        async with websockets.connect(
            url, additional_headers={"Authorization": f"Bearer {forged}"}, open_timeout=5, local_addr=(source, 0)
        ):
            print("connected with a forged token", flush=True)
    except InvalidStatus as refusal:
        print("refused", refusal.response.status_code, flush=True)
    async with websockets.connect(
        url, subprotocols=["push.v1", f"bearer.{token}"], open_timeout=5, close_timeout=5, local_addr=(source, 0)
    ) as ws:
        print("connected", ws.subprotocol, flush=True)
        message = await asyncio.wait_for(ws.recv(), 15)
        print("message", message, flush=True)
        await ws.close(code=1000, reason="done")
    print("closed", ws.close_code, flush=True)


def poll(server: str, source: str, token: str | None) -> tuple[int, str]:
    host, port = server.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=20, source_address=(source, 0))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conn.request("GET", "/poll?id=poll-dev", headers=headers)
    answer = conn.getresponse()
    body = answer.read().decode()
    conn.close()
    return answer.status, body


def main() -> None:
    server, source, ws_token, poll_token, forged = sys.argv[1:6]
    asyncio.run(websocket(server, source, ws_token, forged))
    status, _ = poll(server, source, None)
    print("poll-refused", status, flush=True)
    print("polling", flush=True)
    status, body = poll(server, source, poll_token)
    print("poll", status, body, flush=True)


if __name__ == "__main__":
    main()
