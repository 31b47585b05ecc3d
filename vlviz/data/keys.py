"""Content keys: what caches and lookups know an image or a caption by, whatever its file or place in a set."""

from __future__ import annotations

import hashlib

from PIL import Image


def content_key(item: Image.Image | str) -> str:
    """A hash of an image's pixels (with size and mode) or of a caption's text."""
    digest = hashlib.blake2b(digest_size=16)
    if isinstance(item, str):
        digest.update(b"text:" + item.encode("utf-8"))
    else:
        digest.update(f"image:{item.mode}:{item.size}".encode())
        digest.update(item.tobytes())
    return digest.hexdigest()
