"""Same-origin reverse proxy that puts Viser behind Gradio's port.

A Hugging Face Space (or any single-port deployment) exposes one port, so Viser's own
HTTP + websocket server stays on loopback and this proxy, mounted on Gradio's FastAPI
app, forwards ``/viser/...`` to it. The websocket handshake must carry the browser's
``Sec-WebSocket-Protocol`` (``viser-v<version>``) through, or Viser closes with 1002.
``/viser/s/<token>/`` pins the Viser client to one app session: the token travels in
the upstream websocket path, where the Viser scene reads it.
"""
from __future__ import annotations

import asyncio
import logging
import re

import httpx
import websockets
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import RedirectResponse, Response
from starlette.routing import Route, WebSocketRoute

log = logging.getLogger("vantage.viewer")

_TOKEN = re.compile(r"^[A-Za-z0-9_\-]{8,64}$")
_HOP_HEADERS = {"content-encoding", "content-length", "transfer-encoding", "connection", "keep-alive"}


def _split(rest: str) -> tuple[str | None, str]:
    """``s/<token>/a/b`` -> (token, ``a/b``); anything else -> (None, rest)."""
    parts = rest.split("/", 2)
    if len(parts) >= 2 and parts[0] == "s" and _TOKEN.match(parts[1]):
        return parts[1], parts[2] if len(parts) == 3 else ""
    return None, rest


def mount_viser_proxy(app: FastAPI, viser_port: int, prefix: str = "/viser") -> None:
    """Add ``prefix`` HTTP and websocket routes forwarding to Viser on 127.0.0.1:``viser_port``.

    The routes go to the front of the router so Gradio's own catch-all routes cannot
    shadow them.
    """
    upstream_http = f"http://127.0.0.1:{viser_port}"
    upstream_ws = f"ws://127.0.0.1:{viser_port}"
    client = httpx.AsyncClient(base_url=upstream_http, timeout=30.0)

    async def http_proxy(request: Request) -> Response:
        rest = request.path_params.get("rest", "")
        token, path = _split(rest)
        if token is not None and rest.rstrip("/") == f"s/{token}" and not rest.endswith("/"):
            return RedirectResponse(f"{prefix}/s/{token}/")    # relative asset URLs need the slash
        r = await client.request(request.method, "/" + path, params=request.query_params,
                                 headers={"accept-encoding": "identity"})
        headers = {k: v for k, v in r.headers.items() if k.lower() not in _HOP_HEADERS}
        return Response(content=r.content, status_code=r.status_code, headers=headers)

    async def root_redirect(request: Request) -> Response:
        return RedirectResponse(f"{prefix}/")

    async def ws_proxy(websocket: WebSocket) -> None:
        token = websocket.path_params.get("token")
        if token is not None and not _TOKEN.match(token):
            await websocket.close(code=1008)
            return
        offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        try:
            upstream = await websockets.connect(upstream_ws + (f"/s/{token}" if token else "/"),
                                                subprotocols=offered or None, max_size=None,
                                                compression=None, open_timeout=10)
        except Exception as e:
            log.warning("viser proxy: upstream connect failed: %s", e)
            await websocket.close(code=1011)
            return
        await websocket.accept(subprotocol=upstream.subprotocol)

        async def client_to_upstream() -> None:
            while True:
                msg = await websocket.receive()
                if msg["type"] == "websocket.disconnect":
                    return
                data = msg.get("bytes")
                await upstream.send(data if data is not None else msg.get("text", ""))

        async def upstream_to_client() -> None:
            async for data in upstream:
                if isinstance(data, bytes):
                    await websocket.send_bytes(data)
                else:
                    await websocket.send_text(data)

        tasks = [asyncio.create_task(client_to_upstream()), asyncio.create_task(upstream_to_client())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await upstream.close()
            try:
                await websocket.close()
            except Exception:
                pass

    routes = [
        WebSocketRoute(f"{prefix}/s/{{token}}", ws_proxy),
        WebSocketRoute(f"{prefix}", ws_proxy),
        WebSocketRoute(f"{prefix}/", ws_proxy),
        Route(f"{prefix}", root_redirect, methods=["GET", "HEAD"]),
        Route(f"{prefix}/{{rest:path}}", http_proxy, methods=["GET", "HEAD"]),
    ]
    app.router.routes[:0] = routes
