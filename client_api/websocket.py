"""The WebSocket sync endpoint (docs/websocket.md): accepts, then hands over to the service.

Only the transport lives here; the protocol is in ``homeserver/websocket/``.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from homeserver.core.errors import Codes
from homeserver.web.edge import JSONResponse, services_of
from homeserver.websocket import PATH, TransportClosed, WebSocketService


@dataclass(frozen=True, slots=True)
class WebSocketServices:
    """What the routes of the WebSocket transport call (built by the composition root)."""

    websocket: WebSocketService
    enabled: bool


class StarletteTransport:
    """``homeserver.websocket.Transport`` over a Starlette WebSocket."""

    def __init__(self, websocket: WebSocket) -> None:
        self._ws = websocket

    async def receive(self) -> str | bytes | None:
        try:
            message = await self._ws.receive()
        except (WebSocketDisconnect, WebSocketDisconnected):
            return None
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        if text is not None:
            return str(text)
        return bytes(message.get("bytes") or b"")

    async def send(self, text: str) -> None:
        try:
            await self._ws.send_text(text)
        except (WebSocketDisconnect, WebSocketDisconnected, OSError) as e:
            raise TransportClosed from e

    async def close(self, code: int, reason: str) -> None:
        try:
            await self._ws.close(code, reason)
        except (WebSocketDisconnect, WebSocketDisconnected, OSError) as e:
            raise TransportClosed from e


async def websocket_sync(websocket: WebSocket) -> None:
    """GET /_matrix/client/unstable/org.homeserver.ws/v1/sync (WebSocket upgrade)"""
    hs = services_of(websocket, WebSocketServices)
    if not hs.enabled:
        await websocket.send_denial_response(
            JSONResponse(
                {"errcode": Codes.UNRECOGNIZED, "error": "Unrecognized request"}, status_code=404
            )
        )
        return
    # Accept first, even a request we refuse: a browser sees a close code and an error frame,
    # never the body of a refused upgrade.
    await websocket.accept()
    await hs.websocket.serve(
        StarletteTransport(websocket),
        authorization=websocket.headers.get("authorization"),
        token_in_url="access_token" in websocket.query_params,
        query=websocket.query_params,
    )


client_routes = [WebSocketRoute(PATH, websocket_sync)]
