"""The HTML check of issue 17, section 4, without a browser: parse a page and check every link
and image as a browser would load them.

No browser can be installed here (Playwright and Selenium drive a browser binary that comes
from a CDN, not from a package registry), so pages are parsed with ``html.parser``:

- every ``<a href>`` and ``<img src>`` is either a ``data:`` URI or a relative path;
- a relative target exists on disk, resolved against the page's folder;
- a ``data:`` image decodes (base64) to a PNG that Pillow opens and verifies;
- a page that must stand alone (mailed, or shown as a dashboard artifact) embeds its images.
"""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

from PIL import Image


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []  # (tag, target)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"a": "href", "img": "src"}.get(tag)
        for name, value in attrs:
            if name == wanted:
                self.refs.append((tag, value or ""))


def page_refs(page: Path) -> list[tuple[str, str]]:
    """(tag, target) of every ``<a href>`` and ``<img src>`` in ``page``, in order."""
    parser = _Refs()
    parser.feed(page.read_text(encoding="utf-8"))
    parser.close()
    return parser.refs


def _check_png(uri: str) -> None:
    head, _, payload = uri.partition(",")
    assert head == "data:image/png;base64", f"not a base64 PNG: {head}"
    raw = base64.b64decode(payload, validate=True)
    with Image.open(io.BytesIO(raw)) as im:
        assert im.format == "PNG"
        im.verify()  # raises on a truncated or corrupt file


def check_page(page: Path, standalone: bool = False) -> list[tuple[str, str]]:
    """Assert every link and image of ``page`` resolves (module docstring); return the refs."""
    refs = page_refs(page)
    for tag, target in refs:
        assert target, f"{page}: empty <{tag}> target"
        if target.startswith("data:"):
            assert tag == "img", f"{page}: data: URI in <{tag}>"
            _check_png(target)
            continue
        parts = urlsplit(target)
        assert not parts.scheme and not parts.netloc, f"{page}: not relative: {target}"
        assert not target.startswith("/"), f"{page}: absolute path: {target}"
        assert not (standalone and tag == "img"), f"{page}: image not embedded: {target}"
        on_disk = page.parent / unquote(parts.path)
        assert on_disk.exists(), f"{page}: broken <{tag}> {target}"
        if tag == "img":
            with Image.open(on_disk) as im:
                im.verify()
    return refs
