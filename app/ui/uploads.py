"""Uploaded files: sanitised names, type and size limits, written only under ``<data dir>/uploads/``.

Names keep their letters in any script (NFC-normalised: ``日本語.md`` stays ``日本語.md``); folders,
control and format characters, leading dots and Windows device names are taken out. An upload
never replaces a different file: when the sanitised name is taken by other bytes, the file is
saved as ``NAME (2).EXT`` (then ``(3)``, ...) and ``SavedUpload.renamed_from`` says so; the same
bytes under a name already holding them are not written again (``SavedUpload.identical``).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from retrieval.readers import SIDECAR_SUFFIX, SUPPORTED
from tether.errors import TetherError

log = logging.getLogger(__name__)

ALLOWED_SUFFIXES = tuple(sorted(SUPPORTED))  # .md .markdown .txt .html .htm .pdf .docx
MAX_NAME_CHARS = 120
# bytes of UTF-8: leaves room under the usual 255-byte file-name limit for " (NNN)" and ".meta.yaml"
MAX_NAME_BYTES = 200
MAX_COPIES = 999  # NAME (2) ... NAME (999)
# Windows device names, also with superscript digits (COM¹); refused as a stem, whatever the case or extension
_RESERVED = {
    "con", "prn", "aux", "nul",
    *(f"{dev}{d}" for dev in ("com", "lpt") for d in "0123456789\u00b9\u00b2\u00b3"),
}  # fmt: skip
_KEEP_PUNCT = "._-"


class UploadRejected(TetherError):
    """An uploaded file that is not written, with the reason."""


@dataclass(frozen=True)
class SavedUpload:
    """Where an upload went: ``path`` under ``uploads/``; ``renamed_from`` is the sanitised name
    that another file already held (so this one got a ``(2)`` suffix), or None; ``identical`` is
    True when ``path`` already held exactly these bytes and nothing was written."""

    path: Path
    given: str
    renamed_from: str | None = None
    identical: bool = False

    def message(self) -> str | None:
        """What to tell the user about this upload's name, or None when there is nothing to say."""
        if self.renamed_from:
            return (
                f"{self.given!r} was saved as {self.path.name!r}: a different file named {self.renamed_from!r} "
                "is already uploaded (delete it first to replace it)"
            )
        if self.identical:
            return f"{self.given!r} is identical to the uploaded {self.path.name!r}: not saved again"
        return None


def uploads_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "uploads"


def _clean(text: str) -> str:
    """Letters, marks and digits of any script and ``._-`` kept; control and format characters
    (bidi overrides, zero-width joiners) dropped; anything else (spaces, punctuation, symbols) one '_'."""
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat[0] == "C":
            continue
        out.append(ch if cat[0] in "LMN" or ch in _KEEP_PUNCT else "_")
    return re.sub(r"_+", "_", "".join(out))


def _fit(stem: str, suffix: str) -> str:
    """``stem`` cut to fit MAX_NAME_CHARS characters and MAX_NAME_BYTES bytes of UTF-8 with ``suffix``."""
    stem = stem[: MAX_NAME_CHARS - len(suffix)]
    while len((stem + suffix).encode("utf-8")) > MAX_NAME_BYTES:
        stem = stem[:-1]
    return stem


def sanitize_filename(name: str) -> str:
    """A safe file name from whatever the browser sent: the last path component, NFC-normalised,
    letters and digits of any script plus '.', '_' and '-' (anything else one '_'), no dots or
    dashes at either end, at most 120 characters and 200 bytes, the extension kept (lower-cased)
    and checked, a Windows device name prefixed with ``file_``.

    Raises UploadRejected when nothing usable is left or the extension is not supported.
    """
    allowed = ", ".join(ALLOWED_SUFFIXES)
    base = re.split(r"[\\/]", unicodedata.normalize("NFC", name or ""))[-1]
    base = _clean(base).rstrip(_KEEP_PUNCT)
    if base.lower().endswith(SIDECAR_SUFFIX):
        raise UploadRejected(f"{name!r}: metadata sidecars are written by Tether, not uploaded")
    stem, dot, suffix = base.rpartition(".")
    stem = stem.lstrip(_KEEP_PUNCT)  # no hidden files, no names that read as options
    if not dot or not suffix:
        raise UploadRejected(f"{name!r}: no file extension (allowed: {allowed})")
    suffix = "." + suffix.lower()
    if suffix not in ALLOWED_SUFFIXES:
        raise UploadRejected(f"{name!r}: type {suffix} is not supported (allowed: {allowed})")
    stem = _fit(stem.rstrip(_KEEP_PUNCT), suffix).rstrip(_KEEP_PUNCT)
    if not stem:
        raise UploadRejected(f"{name!r}: no file name before the extension {suffix}")
    if stem.split(".")[0].lower() in _RESERVED:
        stem = _fit("file_" + stem, suffix)
    return stem + suffix


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        return (
            not path.is_symlink() and path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data
        )
    except OSError:
        return False


def _copies(folder: Path, safe: str) -> list[Path]:
    """``safe`` and its ``NAME (n).EXT`` copies already in ``folder``."""
    stem, suffix = safe[: -len(Path(safe).suffix)], Path(safe).suffix
    pattern = re.compile(re.escape(stem) + r" \((\d+)\)" + re.escape(suffix))
    return [folder / safe] + sorted((p for p in folder.iterdir() if pattern.fullmatch(p.name)), key=lambda p: p.name)


def _candidate(safe: str, n: int) -> str:
    if n == 1:
        return safe
    stem, suffix = safe[: -len(Path(safe).suffix)], Path(safe).suffix
    return f"{stem} ({n}){suffix}"


def _link_new(tmp: str, target: Path) -> bool:
    """Give ``tmp``'s bytes the name ``target`` unless it exists (never replacing it); False when taken."""
    try:
        os.link(tmp, target)
        return True
    except FileExistsError:
        return False
    except OSError as exc:  # a file system without hard links: exclusive create, then write
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
            raise
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f, open(tmp, "rb") as src:
        f.write(src.read())
    return True


def save_upload(data_dir: Path, name: str, data: bytes, *, max_mb: float) -> SavedUpload:
    """Write an uploaded file under ``<data dir>/uploads/`` by its sanitised name and say where it
    went (see the module docstring: a different file of that name is never replaced; the same
    bytes are not written twice). Raises UploadRejected for a bad name, type, size or empty file."""
    safe = sanitize_filename(name)
    if not data:
        raise UploadRejected(f"{name!r}: the file is empty")
    if len(data) > max_mb * 1024 * 1024:
        raise UploadRejected(
            f"{name!r}: {len(data) / 1e6:.1f} MB is over the {max_mb:g} MB limit (retrieval.max_file_mb)"
        )
    folder = uploads_dir(data_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / safe).resolve().parent != folder:  # cannot happen after sanitising; checked anyway
        raise UploadRejected(f"{name!r}: would be written outside {folder}")
    for existing in _copies(folder, safe):
        if _same_bytes(existing, data):
            return SavedUpload(existing, name, identical=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        for n in range(1, MAX_COPIES + 1):
            target = folder / _candidate(safe, n)
            if _link_new(tmp, target):
                if n > 1:
                    log.info("upload %r saved as %s: %s holds another file", name, target.name, safe)
                return SavedUpload(target, name, renamed_from=safe if n > 1 else None)
            if _same_bytes(target, data):  # written meanwhile by another session
                return SavedUpload(target, name, identical=True)
    finally:
        Path(tmp).unlink(missing_ok=True)
    raise UploadRejected(
        f"{name!r}: {safe} and {MAX_COPIES - 1} numbered copies of it are already uploaded: delete some first"
    )
