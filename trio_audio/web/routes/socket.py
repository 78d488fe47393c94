"""``/ws`` on the HTTP port: the WebSocket session protocol (``web/ws/``), the same session
code as the dedicated listener's."""

from __future__ import annotations

from quart import websocket
from quart_trio import QuartTrio

from ..context import context
from ..ws import QuartTransport, Session


async def ws_session() -> None:
    ctx = context()
    await websocket.accept()
    await Session(QuartTransport(websocket), ctx.ws, ctx.ingress).run()


def register(app: QuartTrio) -> None:
    app.add_websocket("/ws", view_func=ws_session)
