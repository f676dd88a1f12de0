"""Schemathesis hooks of the fuzz tests (``SCHEMATHESIS_HOOKS=fuzz_hooks``): the upload fields
declare the image types they take, and these strategies make real images of those types --
small, of any size and colours, sometimes cut short -- so that generated uploads reach the
search instead of stopping at "not an image"."""

from __future__ import annotations

import io

import schemathesis
from hypothesis import strategies as st
from PIL import Image

FORMATS = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WEBP",
    "image/bmp": "BMP",
    "image/gif": "GIF",
    "image/tiff": "TIFF",
}
MODES = {"JPEG": ["RGB", "L"], "PNG": ["RGB", "L", "P", "RGBA"], "WEBP": ["RGB", "RGBA"]}


@st.composite
def image_bytes(draw: st.DrawFn, fmt: str) -> bytes:
    """An encoded image: 1..96 x 1..96 pixels, a background and a block, maybe truncated."""
    w, h = draw(st.integers(1, 96)), draw(st.integers(1, 96))
    colour = st.tuples(*[st.integers(0, 255)] * 3)
    img = Image.new("RGB", (w, h), draw(colour))
    x0, y0 = draw(st.integers(0, w - 1)), draw(st.integers(0, h - 1))
    img.paste(draw(colour), (x0, y0, draw(st.integers(x0, w)), draw(st.integers(y0, h))))
    img = img.convert(draw(st.sampled_from(MODES.get(fmt, ["RGB", "L", "P"]))))
    buf = io.BytesIO()
    img.save(buf, fmt)
    data = buf.getvalue()
    if draw(st.integers(0, 9)) == 9:  # one in ten cut short (the simplest draw is whole)
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    return data


for _media, _fmt in FORMATS.items():
    schemathesis.openapi.media_type(_media, image_bytes(_fmt))
