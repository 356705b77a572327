"""HTTP routes of the gallery (PROTOCOL.md v1.1): ``GET/POST /api/gallery``, ``DELETE
/api/gallery/{person}`` (a person's id; a name is accepted too), and each person's photos."""

from __future__ import annotations

from aiohttp import BodyPartReader, web

from ingest.exceptions import BadRequestError, TooLargeError
from ingest.server.context import CONTEXT
from ingest.server.enrolment import EnrolmentService
from ingest.server.responses import json_response

ENROLMENT = web.AppKey("enrolment", EnrolmentService)
CONFIRMED = ("1", "true", "yes")


async def list_people(request: web.Request) -> web.StreamResponse:
    return json_response({"people": await request.app[ENROLMENT].people()})


async def enrol(request: web.Request) -> web.StreamResponse:
    """multipart/form-data: ``name`` and one or more ``file`` photos (each at most
    ``max_snapshot_bytes``, read as they arrive: a larger one is refused before it is held).
    A face that matches someone else, or a name whose photos do not match it, is answered 409
    ``conflict`` with ``matches`` unless ``confirm=1`` (a form field or the query)."""
    service = request.app[ENROLMENT]
    limit = service.settings.max_snapshot_bytes
    max_photos = service.settings.max_photos_per_request
    if not request.content_type.startswith("multipart/"):
        raise BadRequestError("send a multipart form with a 'name' field and one or more 'file' photos")
    name = ""
    confirm = request.query.get("confirm", "") in CONFIRMED
    photos: list[tuple[bytes, str]] = []
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise BadRequestError("nested multipart forms are not accepted")
        if part.name == "name":
            name = (await part.read(decode=True))[:1000].decode("utf-8", "replace")
        elif part.name == "confirm":  # yes, enrol even if the face looks like someone else's
            confirm = (await part.read(decode=True))[:10].decode("ascii", "replace").strip().lower() in CONFIRMED
        elif part.name == "file":
            if len(photos) == max_photos:
                raise BadRequestError(f"at most {max_photos} photos per request (max_photos_per_request)")
            source = (part.filename or f"photo {len(photos) + 1}")[:200]
            data = bytearray()
            while piece := await part.read_chunk(256 * 1024):
                data += piece
                if len(data) > limit:
                    raise TooLargeError(f"{source} is larger than {limit} bytes (setting max_snapshot_bytes)")
            photos.append((bytes(data), source))
        else:
            await part.release()
    result = await service.add(name, photos, confirm)
    request.app[CONTEXT].webhooks.event("gallery.changed", {"change": "added", "person": {
        "id": result.get("id"), "name": result.get("name"), "images": result.get("images")}})  # fmt: skip
    return json_response(result, status=201)


async def remove(request: web.Request) -> web.StreamResponse:
    removed = await request.app[ENROLMENT].remove(request.match_info["person"])
    request.app[CONTEXT].webhooks.event("gallery.changed", {"change": "removed", "person": {
        "id": removed.get("id"), "name": removed.get("name")}})  # fmt: skip
    return json_response({"ok": True, **removed})


async def photo(request: web.Request) -> web.StreamResponse:
    """The person's first enrolment photo (the sessions page's People list shows it)."""
    data, mime = await request.app[ENROLMENT].photo(request.match_info["person"])
    return web.Response(body=data, content_type=mime, headers={"Cache-Control": "no-cache"})


def add_gallery_routes(app: web.Application) -> None:
    app.router.add_get("/api/gallery", list_people)
    app.router.add_post("/api/gallery", enrol)
    app.router.add_get("/api/gallery/{person}/photo", photo)
    app.router.add_delete("/api/gallery/{person:.+}", remove)
