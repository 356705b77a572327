"""Gallery names that can be removed (issue 26, item 3): one person per name's key ("Ada", "ada",
"ADA" and the fullwidth "Ａｄａ"), a name that only looks like an enrolled one (a Cyrillic "Аda")
warned before it is enrolled, the characters a name may hold, and names of before these rules
("{curly}", ".", "..", "a/b") removed from the sessions page and by id, their photos with them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from tests.client import http_get, http_json, run
from tests.conftest import CHROMIUM, IMAGES
from tests.pages import get_json, in_thread, wait_until
from tests.test_batch import cli
from tests.test_identity import photos  # noqa: F401 -- the identity tests' photos (a fixture)

CYRILLIC_ADA = "\u0410da"  # А: CYRILLIC CAPITAL LETTER A


async def enrol(url: str, name: str, photo: Path, confirm: bool = False) -> tuple[int, dict]:
    form = aiohttp.FormData()
    form.add_field("name", name)
    form.add_field("file", photo.read_bytes(), filename=photo.name, content_type="application/octet-stream")
    if confirm:
        form.add_field("confirm", "1")
    async with aiohttp.ClientSession() as http, http.post(f"{url}/api/gallery", data=form) as response:
        return response.status, await response.json()


async def delete(url: str, person: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.delete(f"{url}/api/gallery/{person}") as response:
        return response.status, await response.json()


def test_one_person_per_name_lookalikes_warned_and_what_a_name_may_hold(server_factory, photos):  # noqa: F811
    server = server_factory("--no-analysis")

    async def scenario() -> None:
        status, ada = await enrol(server.url, "Ada", photos["obama"])
        assert status == 201, ada
        for n, spelling in enumerate(("ada", "ADA", "\uff21\uff44\uff41"), start=2):  # fullwidth Ａｄａ: NFKC folds it
            assert await enrol(server.url, spelling, photos["obama"]) == (201, {"id": ada["id"], "name": "Ada", "images": n})
        # another script's letters: another name, warned before it is enrolled (another face: no face match)
        status, body = await enrol(server.url, CYRILLIC_ADA, photos["far"])
        assert (status, body) == (409, {"error": {"code": "conflict", "message": (
            f"the name {CYRILLIC_ADA} looks like Ada, who is enrolled, but is another name (it holds "
            f"{CYRILLIC_ADA[0]} (cyrillic capital letter a)): a search or a removal by one would miss the other; "
            f"choose another name, or send confirm=1 to enrol {CYRILLIC_ADA} as another person"),
            "matches": [], "lookalike_names": ["Ada"]}})  # fmt: skip
        _, listed = await http_json(server.url + "/api/gallery")
        assert [(p["id"], p["name"], p["images"]) for p in listed["people"]] == [(ada["id"], "Ada", 4)]
        status, other = await enrol(server.url, CYRILLIC_ADA, photos["far"], confirm=True)
        assert status == 201 and other["name"] == CYRILLIC_ADA and other["id"] != ada["id"]
        # what a name may hold: letters, marks, digits, spaces and ' - . , ( ) & /, one letter or digit at least
        for name, message in (
            ("{curly}", "the name holds '{'; a name may hold letters, digits, spaces and ' - . , ( ) & /"),
            (".", "the name '.' has no letter or digit; a name needs at least one"),
            ("..", "the name '..' has no letter or digit; a name needs at least one"),
            ("a\u200bb", "the name holds 'U+200B'; a name may hold letters, digits, spaces and ' - . , ( ) & /"),
            ("x" * 101, "the name is 101 characters long; at most 100 are allowed"),
        ):
            assert await enrol(server.url, name, photos["obama"]) == (400, {"error": {"code": "bad_request",
                                                                                      "message": message}}), name  # fmt: skip
        for name in ("Jean-Luc O'Brien", "Zoë (née Smith) & co./2", "李小龍", "José 3"):
            status, body = await enrol(server.url, name, photos["far"], confirm=True)
            assert status == 201 and body["name"] == name, body
        # removed by any spelling of the name (its key), or by id; photos by id
        status, _, kind = await http_get(f"{server.url}/api/gallery/{other['id']}/photo")
        assert (status, kind) == (200, "image/png")
        assert await delete(server.url, "ＡＤＡ") == (200, {"ok": True, "id": ada["id"], "name": "Ada", "images_removed": 4})
        assert (await delete(server.url, other["id"]))[0] == 200
        _, listed = await http_json(server.url + "/api/gallery")
        assert CYRILLIC_ADA not in [p["name"] for p in listed["people"]] and "Ada" not in [p["name"] for p in listed["people"]]

    run(scenario())


LEGACY_NAMES = ["{curly}", ".", "..", "a/b", "100%", "Grace"]


def legacy_gallery(data: Path) -> None:
    """A data folder's gallery of before the index (gallery/gallery.sqlite3, people by name), whose
    names were never checked: what import_legacy moves into the index at start-up."""
    folder = data / "gallery"
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(7)
    with sqlite3.connect(folder / "gallery.sqlite3") as db:
        db.execute("CREATE TABLE people (name TEXT PRIMARY KEY, created_at TEXT)")
        db.execute("CREATE TABLE images (id TEXT PRIMARY KEY, name TEXT, file TEXT, source TEXT, box TEXT, "
                   "descriptor BLOB, created_at TEXT)")  # fmt: skip
        for n, name in enumerate(LEGACY_NAMES):
            db.execute("INSERT INTO people VALUES (?, ?)", (name, "2026-01-01T00:00:00.000Z"))
            file = f"legacy{n:02d}.jpg"
            (folder / "images" / file).write_bytes((IMAGES / "obama.jpg").read_bytes())
            db.execute("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?)", (f"{n:032x}", name, file, "old.jpg", "1,2,3,4",
                       rng.normal(size=128).astype("<f8").tobytes(), "2026-01-01T00:00:00.000Z"))  # fmt: skip


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_names_of_before_the_rules_are_removed_from_the_page_and_by_id(server_factory, browser, tmp_path):
    data = tmp_path / "data"
    legacy_gallery(data)
    server = server_factory("--no-analysis", data=data)  # it moves them into the index
    listed = get_json(server.url + "/api/gallery")
    people = {p["name"]: p["id"] for p in listed["people"]}
    assert sorted(people) == sorted(LEGACY_NAMES)
    # by name over HTTP (braces once got the router's 404), by name on the command line
    assert in_thread(delete(server.url, "%7Bcurly%7D")) == (200, {"ok": True, "id": people["{curly}"], "name": "{curly}",
                                                            "images_removed": 1})  # fmt: skip
    removed = cli("gallery", "remove", "100%", data=data)
    assert (removed.returncode, removed.stdout) == (0, "removed 100% and 1 photo\n"), removed.stderr
    page = browser.new_page()
    page.goto(server.url + "/sessions")
    wait_until(page, f"() => document.querySelectorAll('[data-person-id]').length === {len(LEGACY_NAMES) - 2}")
    # the photos load by id ("a/b" and ".." as names would be other addresses)
    wait_until(page, "() => [...document.querySelectorAll('[data-person-id] img')].every((i) => i.complete && i.naturalWidth > 0)")
    page.on("dialog", lambda dialog: dialog.accept())
    for name in (".", "..", "a/b", "Grace"):
        page.locator(f"[data-person-id='{people[name]}'] [data-testid=remove-person]").click()
        wait_until(page, f"() => !document.querySelector('[data-person-id=\"{people[name]}\"]')")
    assert get_json(server.url + "/api/gallery") == {"people": []}
    assert list((data / "gallery" / "images").iterdir()) == []  # every photo went with its person
