"""Uploaded files: sanitised names, type and size limits, written only under ``<data dir>/uploads/``."""

from __future__ import annotations

import os
import re
import tempfile
import unicodedata
from pathlib import Path

from tether.errors import TetherError
from retrieval.readers import SUPPORTED

ALLOWED_SUFFIXES = tuple(sorted(SUPPORTED))  # .md .markdown .txt .html .htm .pdf .docx
MAX_NAME_CHARS = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


class UploadRejected(TetherError):
    """An uploaded file that is not written, with the reason."""


def uploads_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "uploads"


def sanitize_filename(name: str) -> str:
    """A safe file name from whatever the browser sent: no folders, no dots in front, ASCII
    letters, digits, '.', '_' and '-' only, at most 120 characters, the extension kept.

    Raises UploadRejected when nothing usable is left or the extension is not supported.
    """
    base = re.split(r"[\\/]", name or "")[-1]
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode("ascii")
    base = _UNSAFE.sub("_", base).strip("._-")
    base = re.sub(r"_+", "_", base)
    stem, dot, suffix = base.rpartition(".")
    if not dot or not stem:
        raise UploadRejected(f"{name!r}: no file extension (allowed: {', '.join(ALLOWED_SUFFIXES)})")
    suffix = "." + suffix.lower()
    if suffix not in ALLOWED_SUFFIXES:
        raise UploadRejected(f"{name!r}: type {suffix} is not supported (allowed: {', '.join(ALLOWED_SUFFIXES)})")
    if base.endswith(".meta.yaml"):
        raise UploadRejected(f"{name!r}: metadata sidecars are written by Tether, not uploaded")
    stem = stem.rstrip("._-")[: MAX_NAME_CHARS - len(suffix)] or "upload"
    if stem.split(".")[0].lower() in _RESERVED:
        stem = "file_" + stem
    return stem + suffix


def save_upload(data_dir: Path, name: str, data: bytes, *, max_mb: float) -> Path:
    """Write an uploaded file as ``<data dir>/uploads/<sanitised name>`` (replacing one of that
    name) and return its path. Raises UploadRejected for a bad name, type, size or empty file."""
    safe = sanitize_filename(name)
    if not data:
        raise UploadRejected(f"{name!r}: the file is empty")
    if len(data) > max_mb * 1024 * 1024:
        raise UploadRejected(f"{name!r}: {len(data) / 1e6:.1f} MB is over the {max_mb:g} MB limit (retrieval.max_file_mb)")
    folder = uploads_dir(data_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    target = (folder / safe).resolve()
    if target.parent != folder:  # cannot happen after sanitising; checked anyway
        raise UploadRejected(f"{name!r}: would be written outside {folder}")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
