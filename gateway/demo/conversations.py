"""The demo server's Conversations API, shaped like OpenAI's: a conversation holds items; a
response created in one (`conversation`) is given every earlier item and adds its input and
its output. The demo's reply quotes the conversation so far, so tests and `make run` users can
see that what the gateway restores is what was sent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

CREATED = 1_700_000_000


@dataclass
class DemoConversation:
    id: str
    metadata: dict[str, Any]
    items: list[dict[str, Any]] = field(default_factory=list)
    added: int = 0  # item ids are numbered per conversation

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "object": "conversation", "created_at": CREATED,
                "metadata": self.metadata}

    def add(self, raw: list[Any]) -> list[dict[str, Any]]:
        new = []
        for item in raw:
            if not isinstance(item, dict):
                continue
            content = item.get("content")
            if isinstance(content, str):
                content = [{"type": "input_text", "text": content}]
            self.added += 1
            new.append({"type": "message", "status": "completed", **item,
                        "id": f"msg_{self.id[5:]}_{self.added}", "content": content})
        self.items += new
        return new

    def text(self) -> str:
        return " | ".join(" ".join(str(p.get("text", "")) for p in item.get("content") or []
                                   if isinstance(p, dict)) for item in self.items)


def routes(app: web.Application, conversations: dict[str, DemoConversation],
           receive: Any) -> None:
    """`receive(request) -> (state, body)`: the demo's own reading of a request (its key
    check and its record of what arrived)."""

    def found(request: web.Request) -> DemoConversation:
        conversation = conversations.get(request.match_info["cid"])
        if conversation is None:
            raise web.HTTPNotFound(text='{"error": {"message": "No conversation found.", '
                                        '"type": "invalid_request_error", "code": null, '
                                        '"param": null}}', content_type="application/json")
        return conversation

    async def create(request: web.Request) -> web.Response:
        _, body = await receive(request)
        conversation = DemoConversation(f"conv_demo{len(conversations) + 1:08d}",
                                        body.get("metadata") or {})
        conversation.add(body.get("items") or [])
        conversations[conversation.id] = conversation
        return web.json_response(conversation.view())

    async def update(request: web.Request) -> web.Response:
        _, body = await receive(request)
        conversation = found(request)
        conversation.metadata = body.get("metadata") or {}
        return web.json_response(conversation.view())

    async def retrieve(request: web.Request) -> web.Response:
        return web.json_response(found(request).view())

    async def delete(request: web.Request) -> web.Response:
        conversation = found(request)
        del conversations[conversation.id]
        return web.json_response({"id": conversation.id, "object": "conversation.deleted",
                                  "deleted": True})

    async def add_items(request: web.Request) -> web.Response:
        _, body = await receive(request)
        return web.json_response(_page(found(request).add(body.get("items") or [])))

    async def list_items(request: web.Request) -> web.Response:
        items = found(request).items
        return web.json_response(_page(items if request.query.get("order") == "asc"
                                       else items[::-1]))

    def item(request: web.Request) -> tuple[DemoConversation, dict[str, Any]]:
        conversation = found(request)
        for entry in conversation.items:
            if entry["id"] == request.match_info["iid"]:
                return conversation, entry
        raise web.HTTPNotFound(text='{"error": {"message": "No item found."}}',
                               content_type="application/json")

    async def get_item(request: web.Request) -> web.Response:
        return web.json_response(item(request)[1])

    async def delete_item(request: web.Request) -> web.Response:
        conversation, entry = item(request)
        conversation.items.remove(entry)
        return web.json_response(conversation.view())

    path = "/v1/conversations/{cid}"
    app.router.add_post("/v1/conversations", create)
    app.router.add_post(path, update)
    app.router.add_get(path, retrieve)
    app.router.add_delete(path, delete)
    app.router.add_post(path + "/items", add_items)
    app.router.add_get(path + "/items", list_items)
    app.router.add_get(path + "/items/{iid}", get_item)
    app.router.add_delete(path + "/items/{iid}", delete_item)


def _page(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": items, "has_more": False,
            "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None}
