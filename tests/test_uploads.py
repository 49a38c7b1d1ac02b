"""Uploaded file names (app/ui/uploads.py): letters of any script kept, unsafe parts taken out, and
a name already holding a different file never overwritten (the new one gets ``NAME (2).EXT``);
the same bytes under the same name are not saved twice. The Documents page ingests both files
of a collision and says where the second went."""

from __future__ import annotations

import errno
import os
import threading
import unicodedata
from pathlib import Path

import pytest

from app.ui.uploads import MAX_NAME_BYTES, UploadRejected, sanitize_filename, save_upload

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "given, expected",
    [
        ("日本語.md", "日本語.md"),  # no ASCII stem: kept, not "no file extension"
        ("á.md", "á.md"),
        ("a.md.", "a.md"),  # trailing dots go (Windows drops them too)
        ("Ünïcödé résumé.pdf", "Ünïcödé_résumé.pdf"),
        ("отчёт 2024.DOCX", "отчёт_2024.docx"),
        (unicodedata.normalize("NFD", "café.txt"), "café.txt"),  # NFC: one code point for é
        ("../../секрет/план.md", "план.md"),
        ("C:\\Users\\me\\Notes 2024.DOCX", "Notes_2024.docx"),
        ("..hidden.html", "hidden.html"),
        ("a\u202egpj.md", "agpj.md"),  # a right-to-left override is dropped, not rendered
        ("tab\there\x00.txt", "tabhere.txt"),  # control characters dropped
        ("x?y*z:w.md", "x_y_z_w.md"),
        ("con.txt", "file_con.txt"),
        ("NUL.md", "file_NUL.md"),
        ("COM¹.md", "file_COM¹.md"),
        ("lpt9.backup.txt", "file_lpt9.backup.txt"),
    ],
)
def test_names_are_sanitised_and_keep_their_letters(given, expected):
    assert sanitize_filename(given) == expected


def test_long_names_fit_the_file_system_in_bytes():
    name = sanitize_filename("語" * 300 + ".md")
    assert name.endswith(".md") and len(name.encode("utf-8")) <= MAX_NAME_BYTES
    assert len((name[:-3] + " (999).md.meta.yaml").encode("utf-8")) <= 255  # a numbered copy's sidecar still fits


@pytest.mark.parametrize(
    "bad, why",
    [
        ("日本語", "no file extension"),
        ("..md", "no file name"),
        ("-_.md", "no file name"),
        ("日本語.exe", "not supported"),
        ("/", "no file extension"),
        ("notes.MD.meta.yaml", "sidecars"),
    ],
)
def test_unusable_names_are_refused(bad, why, tmp_path):
    with pytest.raises(UploadRejected, match=why):
        save_upload(tmp_path, bad, b"data", max_mb=1)


def test_names_that_used_to_collide_are_two_files(tmp_path):
    """The issue's case: ``á.md`` and ``a.md.`` both became ``a.md``, the second overwriting the first."""
    first = save_upload(tmp_path, "á.md", b"first", max_mb=1)
    second = save_upload(tmp_path, "a.md.", b"second", max_mb=1)
    assert (first.path.name, second.path.name) == ("á.md", "a.md")
    assert first.path.read_bytes() == b"first" and second.path.read_bytes() == b"second"


def test_a_different_file_under_a_taken_name_gets_a_numbered_name(tmp_path):
    a = save_upload(tmp_path, "a?.md", b"one", max_mb=1)
    b = save_upload(tmp_path, "a.md", b"two", max_mb=1)
    c = save_upload(tmp_path, "a!.md", b"three", max_mb=1)
    assert [u.path.name for u in (a, b, c)] == ["a.md", "a (2).md", "a (3).md"]
    assert [u.path.read_bytes() for u in (a, b, c)] == [b"one", b"two", b"three"]  # nothing overwritten
    assert (a.renamed_from, b.renamed_from, c.renamed_from) == (None, "a.md", "a.md")
    assert a.message() is None
    assert (
        b.message()
        == "'a.md' was saved as 'a (2).md': a different file named 'a.md' is already uploaded (delete it first to replace it)"
    )
    assert sorted(p.name for p in (tmp_path / "uploads").iterdir()) == ["a (2).md", "a (3).md", "a.md"]


def test_the_same_bytes_under_the_same_name_are_saved_once(tmp_path):
    a = save_upload(tmp_path, "a.md", b"one", max_mb=1)
    b = save_upload(tmp_path, "a.md", b"two", max_mb=1)
    again = [
        save_upload(tmp_path, name, data, max_mb=1)
        for name, data in [
            ("a.md", b"one"),
            ("a.md", b"two"),
            ("a?.md", b"two"),
            (unicodedata.normalize("NFD", "a.md"), b"one"),
        ]
    ]
    assert [u.path for u in again] == [a.path, b.path, b.path, a.path]
    assert all(u.identical and not u.renamed_from for u in again)
    assert again[0].message() == "'a.md' is identical to the uploaded 'a.md': not saved again"
    assert sorted(p.name for p in (tmp_path / "uploads").iterdir()) == [
        "a (2).md",
        "a.md",
    ]  # no duplicate, no temp file


def test_concurrent_uploads_of_one_name_keep_both_files(tmp_path):
    results, start = [], threading.Barrier(8)

    def upload(i: int) -> None:
        start.wait()
        results.append(save_upload(tmp_path, "report.md", f"version {i}".encode(), max_mb=1))

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    files = list((tmp_path / "uploads").iterdir())
    assert len(files) == 8 and len({u.path for u in results}) == 8
    assert sorted(p.read_bytes() for p in files) == sorted(f"version {i}".encode() for i in range(8))


def test_no_overwrite_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    a = save_upload(tmp_path, "a.md", b"one", max_mb=1)
    b = save_upload(tmp_path, "a.md", b"two", max_mb=1)
    assert (a.path.read_bytes(), b.path.name, b.path.read_bytes()) == (b"one", "a (2).md", b"two")
    assert sorted(p.name for p in (tmp_path / "uploads").iterdir()) == ["a (2).md", "a.md"]


def test_the_documents_page_ingests_both_colliding_files_and_says_so(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from app.ui import library
    from tether.config import load_config

    home = tmp_path / "home"
    home.mkdir()
    (home / "tether.yaml").write_text("assistant:\n  generator: extractive\n", encoding="utf-8")
    monkeypatch.setenv("TETHER_HOME", str(home))
    monkeypatch.delenv("TETHER_CONFIG", raising=False)
    one = b"# Canteen\n\nThe Ostrava canteen serves soup on Mondays.\n"
    two = b"# Parking\n\nBicycles are parked in the courtyard of the Ostrava office.\n"
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120).run()
    at.switch_page("app/ui/pages/documents.py").run()
    at.file_uploader(key="uploads").set_value(
        [
            ("ostrava?.md", one, "text/markdown"),
            ("ostrava.md", two, "text/markdown"),
            ("日本語.md", "# 日本語\n\n食堂は月曜日にスープを出します。\n".encode(), "text/markdown"),
        ]
    ).run()
    at.button(key="ingest").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("'ostrava.md' was saved as 'ostrava (2).md'" in i.value for i in at.info)
    docs = {d.source: d for d in library.documents(load_config(home))}
    assert {"ostrava.md", "ostrava (2).md", "日本語.md"} <= set(docs) and all(d.n_chunks >= 1 for d in docs.values())
    assert (home / "uploads" / "ostrava.md").read_bytes() == one and (
        home / "uploads" / "ostrava (2).md"
    ).read_bytes() == two

    at.file_uploader(key="uploads").set_value([("ostrava.md", two, "text/markdown")]).run()  # the same file again
    at.button(key="ingest").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(
        "'ostrava.md' is identical to the uploaded 'ostrava (2).md': not saved again" in i.value for i in at.info
    )
    assert any("ostrava (2).md: unchanged" in s.value for s in at.success)
    assert sorted(p.name for p in (home / "uploads").iterdir()) == ["ostrava (2).md", "ostrava.md", "日本語.md"]
    assert len(library.documents(load_config(home))) == 3
