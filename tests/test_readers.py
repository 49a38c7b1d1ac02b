import pytest

from retrieval.readers import decode_text, html_visible_text, read_document
from tests.corpus import LEAVE_MD, SECURITY_HTML, TRAVEL_PAGES, make_corpus, write_pdf, write_zip_bomb
from tether.errors import FileRejected


def test_html_keeps_visible_text_only():
    text, title = html_visible_text(SECURITY_HTML)
    assert title == "IT Security Standard"
    assert text.startswith("Home | Policies")  # no DOCTYPE residue
    assert "Passwords must be at least 14 characters long" in text
    assert "Lock your screen" in text
    for hidden in ("tracking", "font-family", "SYSTEM", "ignore all previous", "Contact Bob", "Hidden paragraph"):
        assert hidden not in text


def test_markdown_front_matter_is_metadata_and_spans_index_the_file(tmp_path):
    path = tmp_path / "leave.md"
    path.write_text(LEAVE_MD, encoding="utf-8")
    doc = read_document(path)
    assert (doc.title, doc.date, doc.status, doc.authority) == (
        "Annual Leave Policy",
        "2024-01-15",
        "current",
        "official",
    )
    assert doc.text == LEAVE_MD
    assert doc.text[doc.body_start :].startswith("# Annual Leave Policy")


def test_sidecar_metadata_and_bad_sidecar(tmp_path):
    folder = make_corpus(tmp_path / "kb")
    doc = read_document(folder / "travel.pdf")
    assert (doc.title, doc.date, doc.authority) == ("Travel and Expenses", "2024-06-01", "official")
    (folder / "travel.meta.yaml").write_text("date: last tuesday\n")
    with pytest.raises(FileRejected, match="date 'last tuesday' is not YYYY-MM-DD"):
        read_document(folder / "travel.pdf")
    (folder / "travel.meta.yaml").write_text("authority: supreme\n")
    with pytest.raises(FileRejected, match="authority 'supreme' must be one of"):
        read_document(folder / "travel.pdf")


def test_pdf_pages(tmp_path):
    path = tmp_path / "t.pdf"
    write_pdf(path, TRAVEL_PAGES)
    doc = read_document(path)
    assert len(doc.page_starts) == 3
    at = doc.text.index("finance director")
    assert doc.page_at(at) == 3
    assert doc.page_at(doc.text.index("per diem of 60 euros")) == 2


def test_docx_paragraphs_lists_and_tables(tmp_path):
    folder = make_corpus(tmp_path / "kb")
    doc = read_document(folder / "lab" / "lab-safety.docx")
    assert doc.title == "Laboratory Safety Rules"
    assert "Safety goggles are mandatory" in doc.text
    assert "- Report every spill" in doc.text
    assert "B1.12 | Jana Novak" in doc.text


def test_decoding():
    assert decode_text("café".encode()) == ("café", None)
    assert decode_text("\ufeffhello".encode("utf-8")) == ("hello", None)
    assert decode_text("naïve".encode("utf-16")) == ("naïve", None)
    text, warning = decode_text(("Le café est très bon, déjà réservé à côté de l'hôtel. " * 5).encode("cp1252"))
    assert "café" in text and warning and "decoded as" in warning
    with pytest.raises(FileRejected, match="binary content"):
        decode_text(b"abc\x00\x01\x02" * 10)
    # UTF-16 without a byte-order mark is recognised, with a warning; NUL bytes anywhere else are binary
    assert decode_text("Größe: 240 Liter\n".encode("utf-16-le") * 3) == (
        "Größe: 240 Liter\n" * 3,
        "no byte-order mark: decoded as UTF-16-LE",
    )
    assert decode_text("Größe: 240 Liter\n".encode("utf-16-be") * 3)[1] == "no byte-order mark: decoded as UTF-16-BE"
    with pytest.raises(FileRejected, match="NUL bytes, the first at offset 20000"):
        decode_text(b"plain text " * 1818 + b"xx" + b"\x00\x00 tail")


@pytest.mark.parametrize(
    "name, content, reason, skipped",
    [
        ("empty.md", b"   \n\n", "empty", True),
        ("broken.pdf", b"this is not a pdf at all", "corrupt PDF", False),
        ("truncated.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >>", "corrupt PDF", False),
        ("broken.docx", b"PK\x03\x04 not really a zip", "corrupt DOCX", False),
        ("data.txt", b"\x00\x01\x02\x03binary" * 100, "binary content", False),
        ("image.png", b"\x89PNG\r\n\x1a\n", "unsupported file type '.png'", True),
    ],
)
def test_bad_inputs_are_rejected_with_a_reason(tmp_path, name, content, reason, skipped):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(FileRejected, match=reason) as info:
        read_document(path)
    assert info.value.skipped is skipped


def test_zip_bomb_is_rejected(tmp_path):
    path = tmp_path / "bomb.docx"
    write_zip_bomb(path, inflated_mb=20)
    assert path.stat().st_size < 100_000
    with pytest.raises(FileRejected, match="zip bomb suspected"):
        read_document(path)
