"""HTTP routes of the gallery (PROTOCOL.md v1.1): ``GET/POST /api/gallery``, ``DELETE
/api/gallery/{person}`` (a person's id; a name is accepted too), and each person's photos."""

from __future__ import annotations

from aiohttp import BodyPartReader, web

from ingest.exceptions import BadRequestError, TooLargeError
from ingest.server.bodies import Pace
from ingest.server.context import CONTEXT
from ingest.server.enrolment import EnrolmentService
from ingest.server.responses import json_response

ENROLMENT = web.AppKey("enrolment", EnrolmentService)
CONFIRMED = ("1", "true", "yes")
FORM_OVERHEAD = 64 * 1024  # a form's boundaries, headers and small fields beside its photos


async def list_people(request: web.Request) -> web.StreamResponse:
    return json_response({"people": await request.app[ENROLMENT].people()})


async def enrol(request: web.Request) -> web.StreamResponse:
    """multipart/form-data: ``name`` and one or more ``file`` photos (each at most
    ``max_snapshot_bytes``, all together at most ``max_enrol_bytes``, read as they arrive: a
    larger one is refused before it is held). The enrolment slot is taken before the body is
    read: while another enrolment runs the answer is 503 ``busy`` and nothing is received. The
    body must keep pace (``upload_idle_s``, ``upload_min_bytes_per_s``), or 408 frees the slot.
    A face that matches someone else, or a name whose photos do not match it, is answered 409
    ``conflict`` with ``matches`` unless ``confirm=1`` (a form field or the query)."""
    service = request.app[ENROLMENT]
    settings = service.settings
    total = settings.max_enrol_bytes
    if not request.content_type.startswith("multipart/"):
        raise BadRequestError("send a multipart form with a 'name' field and one or more 'file' photos")
    if request.content_length is not None and request.content_length > total + FORM_OVERHEAD:
        raise TooLargeError(f"the enrolment's body is {request.content_length} bytes; its photos may take at most "
                            f"{total} bytes together (setting max_enrol_bytes)")  # fmt: skip
    async with service.slot():
        pace = Pace(settings.upload_idle_s, settings.upload_min_bytes_per_s, total, "max_enrol_bytes")
        name, confirm, photos = await pace.run(_read_form(request, pace, settings.max_snapshot_bytes,
                                                          settings.max_photos_per_request))  # fmt: skip
        result = await service.add(name, photos, confirm or request.query.get("confirm", "") in CONFIRMED)
    request.app[CONTEXT].webhooks.event("gallery.changed", {"change": "added", "person": {
        "id": result.get("id"), "name": result.get("name"), "images": result.get("images")}})  # fmt: skip
    return json_response(result, status=201)


async def _read_form(request: web.Request, pace: Pace, limit: int, max_photos: int) -> tuple[str, bool, list[tuple[bytes, str]]]:
    name, confirm = "", False
    photos: list[tuple[bytes, str]] = []
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise BadRequestError("nested multipart forms are not accepted")
        if part.name == "name":
            name = (await pace.field(part, 1000)).decode("utf-8", "replace")
        elif part.name == "confirm":  # yes, enrol even if the face looks like someone else's
            confirm = (await pace.field(part, 10)).decode("ascii", "replace").strip().lower() in CONFIRMED
        elif part.name == "file":
            if len(photos) == max_photos:
                raise BadRequestError(f"at most {max_photos} photos per request (max_photos_per_request)")
            source = (part.filename or f"photo {len(photos) + 1}")[:200]
            data = await pace.file(part, limit, f"{source} is larger than {limit} bytes (setting max_snapshot_bytes)")
            photos.append((data, source))
        else:
            await pace.field(part, 0)
    return name, confirm, photos


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
