"""Build the PDF and DOCX files of the sample handbook in examples/handbook/.

The text of every generated document is defined in this file, so the binaries can be rebuilt
byte for byte: fixed creation dates and metadata for the PDFs (fpdf2), fixed core properties and
zip timestamps for the DOCX files (python-docx). The Markdown, HTML and text documents and all
``*.meta.yaml`` sidecars are written by hand and are not touched here.

Usage::

    python examples/build_handbook.py

Needs ``fpdf2`` and ``python-docx`` (both in the ``dev`` extra / core dependencies).
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import zipfile
from pathlib import Path

log = logging.getLogger("build_handbook")

HANDBOOK = Path(__file__).resolve().parent / "handbook"
FIXED_DATE = dt.datetime(2024, 6, 1, 9, 0, 0, tzinfo=dt.UTC)
ZIP_DATE = (2024, 6, 1, 9, 0, 0)
COMPANY = "Halden Instruments"

# A document is a list of blocks: ("title", text), ("h", text), ("p", text), ("li", text),
# ("table", [[header...], [row...], ...]) and ("pagebreak", "") for PDFs.
Block = tuple[str, object]

# --- PDF documents (latin-1 only: core Helvetica font; amounts are written as "EUR") -------------

TRAVEL_2024: list[Block] = [
    ("title", "Travel and Expenses Policy"),
    (
        "p",
        "Version 2024. Effective date: 1 June 2024. Policy owner: Lotte Hendriks, Finance Director. "
        "This policy replaces the Travel and Expenses Policy of March 2022 and applies to all business travel "
        "by employees of Halden Instruments in Rotterdam and Brno.",
    ),
    ("h", "1. Purpose and scope"),
    (
        "p",
        "Business travel is necessary to serve customers, support installations and work with suppliers and "
        "between our two sites. This policy sets out how trips are approved and booked, which costs are "
        "reimbursed and how expenses are claimed. It applies to employees, interns and contractors who travel "
        "at the company's expense.",
    ),
    (
        "p",
        "Before planning a trip, consider whether a video call would achieve the same result. Trips between "
        "Rotterdam and Brno should be combined with other business where possible.",
    ),
    ("h", "2. Approval"),
    (
        "p",
        "Every business trip must be approved in advance by the Finance Director. Requests are submitted in the "
        "Travel Request form on the intranet, with the purpose of the trip, the estimated total cost and the "
        "cost centre. The Finance Director, or a deputy appointed in writing, decides within 2 working days.",
    ),
    (
        "p",
        "Travel to destinations classified as high risk by the travel insurer additionally requires written "
        "approval from the CEO. No booking may be made before approval has been given.",
    ),
    ("h", "3. Booking"),
    (
        "p",
        "All flights and hotels must be booked through the travel desk at least 3 weeks before departure. The "
        "travel desk can be reached at travel@halden-instruments.com or on +31 10 555 0177. Bookings made later "
        "than this require a written justification in the travel request, for example an urgent customer repair "
        "or an unplanned audit.",
    ),
    (
        "p",
        "Employees may not book travel privately and claim it afterwards, except for local public transport and "
        "taxis. Loyalty points collected on business travel may be kept, but they must not influence the choice "
        "of airline or hotel.",
    ),
    ("pagebreak", ""),
    ("h", "4. Transport"),
    (
        "p",
        "Rail is the default for journeys under 700 km, for example Rotterdam to Paris or Brno to Vienna. Rail "
        "travel is booked in second class; first class is allowed for journeys longer than 4 hours.",
    ),
    (
        "p",
        "Economy class is the standard for all flights. Business class is allowed for flights with a scheduled "
        "duration of more than 6 hours. Seat reservations and one checked bag are reimbursed when the fare does "
        "not include them.",
    ),
    (
        "p",
        "Taxis may be used when no public transport is available, after 22:00, or when you carry equipment "
        "heavier than 15 kg. Business use of a private car is reimbursed at EUR 0.23 per km. Parking and tolls "
        "are reimbursed against receipts. Rental cars are limited to a compact car category.",
    ),
    ("h", "5. Accommodation"),
    (
        "p",
        "Hotel costs are reimbursed up to EUR 175 per night, including breakfast. For London, Zurich, Copenhagen "
        "and Oslo the limit is EUR 240 per night. The travel desk books hotels close to the customer site or "
        "the office being visited.",
    ),
    ("p", "Private stays with friends or family do not qualify for an accommodation allowance."),
    ("h", "6. Daily allowance"),
    (
        "p",
        "The daily allowance for meals and incidentals is EUR 60 per day for travel within the EU. For travel "
        "outside the EU the daily allowance is EUR 85 per day. The allowance is paid for each calendar day on "
        "which you are travelling on business for more than 8 hours.",
    ),
    (
        "p",
        "When a meal is provided free of charge, for example by a customer or at a conference, the allowance is "
        "reduced by 20% for breakfast, by 30% for lunch and by 40% for dinner.",
    ),
    ("pagebreak", ""),
    ("h", "7. Expense claims"),
    (
        "p",
        "Any expense over EUR 25 must be supported by an itemised receipt. Claims are submitted in the expense "
        "tool within 30 days of returning from the trip and are reimbursed with the next monthly salary. Claims "
        "submitted more than 90 days after the trip are not reimbursed.",
    ),
    ("p", "The following costs are not reimbursed:"),
    ("li", "alcoholic drinks;"),
    ("li", "minibar items and pay-per-view films;"),
    ("li", "traffic and parking fines;"),
    ("li", "upgrades to a higher travel class or room category;"),
    ("li", "costs for accompanying family members;"),
    ("li", "lost or stolen personal items."),
    ("h", "8. Corporate cards"),
    (
        "p",
        "A corporate credit card is issued to employees who travel on business more than 6 times per year. The "
        "monthly limit on a corporate card is EUR 5,000. Cardholders reconcile their statement in the expense "
        "tool by the 5th working day of the following month. Personal purchases on the corporate card are not "
        "allowed; any personal amount charged by mistake must be repaid within 30 days.",
    ),
    ("h", "9. Travel safety and insurance"),
    (
        "p",
        "All employees on business travel are covered by the company travel insurance, policy number "
        "HI-TRV-2024-118. The 24-hour emergency assistance line is +31 10 555 0199. Register every trip in the "
        "travel tool so that we can contact you in an emergency.",
    ),
    ("h", "10. Sustainability"),
    (
        "p",
        "Halden Instruments aims to reduce travel emissions by 30% compared with 2019 by the end of 2027. The "
        "Finance Director reports travel emissions to the management team every quarter.",
    ),
    ("h", "11. Questions and review"),
    (
        "p",
        "Questions about this policy can be sent to finance@halden-instruments.com. This policy is reviewed "
        "every two years; the next review is planned for June 2026.",
    ),
]

PURCHASING: list[Block] = [
    ("title", "Purchasing and Procurement Policy"),
    (
        "p",
        "Effective date: 1 February 2024. Policy owner: Femke Visser, Procurement Manager. Approved by the "
        "management team on 23 January 2024.",
    ),
    ("h", "1. Scope"),
    (
        "p",
        "This policy applies to all purchases of goods and services by Halden Instruments B.V. and Halden "
        "Instruments s.r.o., including laboratory consumables, electronic components, software licences, "
        "consultancy and facility services. Travel expenses are covered by the Travel and Expenses Policy.",
    ),
    ("h", "2. Approval limits"),
    ("p", "Approval limits apply to the total value of an order excluding VAT."),
    ("li", "Purchases up to EUR 1,000 may be made by any budget holder without further approval."),
    ("li", "Purchases above EUR 1,000 and up to EUR 10,000 require approval by the department head."),
    ("li", "Purchases above EUR 10,000 and up to EUR 50,000 require approval by the Finance Director."),
    ("li", "Purchases above EUR 50,000 require approval by the CEO."),
    (
        "p",
        "Splitting an order into smaller orders to stay below an approval limit is prohibited. Recurring "
        "contracts are approved on their total value over the full contract term.",
    ),
    ("h", "3. Quotes and suppliers"),
    (
        "p",
        "At least three written quotes are required for any purchase above EUR 25,000. For purchases between "
        "EUR 5,000 and EUR 25,000, two written quotes are required. The reason for choosing a supplier other than "
        "the cheapest must be documented in the purchase request.",
    ),
    (
        "p",
        "Preferred suppliers are listed in the supplier catalogue in the purchasing system. New suppliers must "
        "be registered by Procurement before the first order; supplier registration, including a credit and "
        "sanctions check, takes up to 10 working days.",
    ),
    (
        "p",
        "Standard delivery lead time from approved suppliers is between 2 and 4 weeks. Plan orders for "
        "calibration projects and customer installations accordingly.",
    ),
    ("h", "4. Purchase orders and invoices"),
    (
        "p",
        "A purchase order must be issued before goods or services are ordered from a supplier. Invoices without "
        "a valid purchase order number are returned to the supplier unpaid. Our standard payment term is 30 days "
        "after receipt of a correct invoice.",
    ),
    ("p", "Goods receipt must be confirmed in the purchasing system within 3 working days of delivery."),
    ("h", "5. Team purchasing cards"),
    (
        "p",
        "Team purchasing cards may be used for purchases up to EUR 1,000 per transaction from suppliers that do "
        "not accept purchase orders. Card purchases count towards the approval limits in section 2, and the "
        "receipt for every card purchase must be uploaded to the expense tool within 7 days.",
    ),
    ("h", "6. Sustainability and ethics"),
    (
        "p",
        "Suppliers must sign the Halden Supplier Code of Conduct before they receive orders above EUR 10,000. "
        "We prefer suppliers with ISO 14001 certification for electronic components and packaging.",
    ),
    ("h", "7. Gifts and hospitality"),
    (
        "p",
        "Employees involved in purchasing must remain independent of suppliers. Gifts from suppliers with a "
        "value up to EUR 50 may be accepted. Gifts above EUR 50 must be declared to the Compliance Officer "
        "within 5 working days and are normally returned or donated. Cash, vouchers and gift cards may never be "
        "accepted, whatever their value.",
    ),
    (
        "p",
        "Supplier hospitality such as a business lunch is acceptable when it is occasional and proportionate. "
        "Invitations to events that include travel or overnight stays must be approved by the Finance Director "
        "in advance.",
    ),
    ("h", "8. Conflicts of interest"),
    (
        "p",
        "Employees must declare any personal or financial relationship with a supplier to their manager and to "
        "Procurement before taking part in a purchasing decision. The declaration is recorded in the supplier "
        "file.",
    ),
    ("h", "9. Budgets"),
    (
        "p",
        "The 2024 capital expenditure budget is EUR 2.4 million, of which EUR 900,000 is reserved for the new "
        "calibration line in Brno. Budget holders receive a monthly report of committed and actual spend from "
        "Finance.",
    ),
    ("h", "10. Contact"),
    (
        "p",
        "Questions about purchasing can be sent to procurement@halden-instruments.com. The Compliance Officer "
        "is Robert Claes.",
    ),
]

# --- DOCX documents ----------------------------------------------------------------------------

REMOTE_WORK: list[Block] = [
    ("title", "Remote and Hybrid Work Policy"),
    ("p", "Policy owner: Ingrid Vermeulen, Head of People. Effective from 1 June 2023."),
    ("h", "1. Purpose"),
    (
        "p",
        "Halden Instruments supports hybrid working where the role allows it. Working from home gives employees "
        "more flexibility, while time in the office keeps teams connected and makes collaboration with the "
        "laboratories and production easier.",
    ),
    ("h", "2. Eligibility"),
    (
        "p",
        "Hybrid work is available to employees in office-based roles after they have completed their probation "
        "period. Laboratory, production, warehouse and field service roles are performed on site, although "
        "employees in these roles may occasionally do administrative work from home with their manager's "
        "agreement.",
    ),
    ("h", "3. Office attendance"),
    (
        "p",
        "Employees in hybrid roles must work from the office at least 2 days per week. Teams agree their own "
        "office days; most teams choose Tuesday and Thursday. Managers may ask for additional office days for "
        "onboarding, workshops, audits or customer visits, with at least one week's notice.",
    ),
    (
        "p",
        "Core hours are 10:00 to 15:00 CET. During core hours, employees working from home must be reachable by "
        "phone and Teams.",
    ),
    ("h", "4. Allowances"),
    (
        "p",
        "Each eligible employee receives a one-off home-office allowance of €500 for furniture and equipment. "
        "The allowance is claimed through the expense tool with receipts and must be used within the first 6 "
        "months of hybrid working.",
    ),
    (
        "p",
        "In the Netherlands, a tax-free working-from-home allowance of €2.35 is paid for each day worked from "
        "home. In Brno, employees receive a monthly internet contribution of CZK 500.",
    ),
    (
        "p",
        "Commuting by public transport is reimbursed in full. Commuting by private car or bicycle is reimbursed "
        "at €0.19 per km, up to a maximum distance of 60 km for a one-way trip.",
    ),
    (
        "table",
        [
            ["Allowance", "Amount", "Paid"],
            ["Home-office setup", "€500", "Once"],
            ["Working from home (Rotterdam)", "€2.35 per day", "Monthly with salary"],
            ["Internet contribution (Brno)", "CZK 500 per month", "Monthly with salary"],
            ["Commuting by car or bicycle", "€0.19 per km", "Monthly with salary"],
        ],
    ),
    ("h", "5. Your home workplace"),
    (
        "p",
        "Employees are responsible for a safe and healthy workplace at home. The home workplace must meet the "
        "following requirements:",
    ),
    ("li", "an adjustable chair and a desk at the right height;"),
    ("li", "an external monitor, keyboard and mouse (available from the IT Service Desk on request);"),
    ("li", "a secure Wi-Fi network with WPA2 or WPA3 encryption;"),
    ("li", "a lockable cupboard or drawer for confidential documents;"),
    ("li", "a quiet space where customer calls cannot be overheard."),
    (
        "p",
        "Public Wi-Fi may only be used with the company VPN switched on. Confidential documents must not be "
        "printed at home.",
    ),
    ("h", "6. Working from abroad"),
    (
        "p",
        "Working from another country requires prior approval from HR and is limited to 4 weeks per calendar "
        "year. Working from outside the EU is not permitted because of data protection and tax rules.",
    ),
    ("h", "7. Insurance and health"),
    (
        "p",
        "Accidents that happen while working at home during working hours are covered by the company accident "
        "insurance. Employees can request a free ergonomic assessment of their home workplace once every 2 years "
        "through HR.",
    ),
    ("h", "8. Review"),
    (
        "p",
        "This policy is reviewed annually by the Head of People together with the works council. Questions can "
        "be sent to hr@halden-instruments.com.",
    ),
]

DATA_PROTECTION: list[Block] = [
    ("title", "Data Protection and Retention Policy"),
    ("p", "Policy owner: the data protection officer. Effective from 20 May 2024. Approved by the management team."),
    ("h", "1. Purpose and scope"),
    (
        "p",
        "This policy describes how Halden Instruments protects the personal data of employees, applicants, "
        "customers and suppliers, in line with the EU General Data Protection Regulation (GDPR). It applies to "
        "both legal entities and to all employees, contractors and interns.",
    ),
    ("h", "2. Responsibilities"),
    (
        "p",
        "The data protection officer is Marta Kowalski, based in the Brno office. The data protection officer "
        "advises on data protection questions, keeps the register of processing activities and is the contact "
        "point for the Dutch Data Protection Authority (Autoriteit Persoonsgegevens) and the Czech Office for "
        "Personal Data Protection. She can be reached at dpo@halden-instruments.com.",
    ),
    (
        "p",
        "Every department head is responsible for the personal data processed in their department. The IT "
        "Security Lead is responsible for technical security measures.",
    ),
    ("h", "3. Principles"),
    ("li", "Collect only the personal data that is needed for a clear purpose."),
    ("li", "Use personal data only for the purpose for which it was collected."),
    ("li", "Keep personal data accurate and up to date."),
    ("li", "Keep personal data no longer than the retention periods in this policy."),
    ("li", "Protect personal data against loss and unauthorised access."),
    ("h", "4. Data breaches"),
    (
        "p",
        "Suspected personal data breaches must be reported to the data protection officer within 24 hours of "
        "discovery. The data protection officer decides whether the breach must be notified to the supervisory "
        "authority, which must happen within 72 hours of discovery. Do not try to investigate a breach yourself.",
    ),
    ("h", "5. Rights of individuals"),
    (
        "p",
        "Requests from individuals to access, correct or delete their data are forwarded to the data protection "
        "officer on the day they are received. Requests are answered within one month. The deadline can be "
        "extended by two further months for complex requests, in which case the individual is informed within "
        "the first month.",
    ),
    ("h", "6. Retention periods"),
    (
        "p",
        "The table below lists the standard retention periods. After the retention period has ended, data is "
        "deleted or anonymised within 3 months.",
    ),
    (
        "table",
        [
            ["Record type", "Retention period", "Owner"],
            ["Payroll and tax records", "7 years after the end of the tax year", "Finance"],
            ["Personnel file", "2 years after employment ends", "HR"],
            ["Job applications (rejected candidates)", "4 weeks after the vacancy is filled", "HR"],
            ["Job applications (with candidate consent)", "1 year", "HR"],
            ["Customer contracts", "7 years after contract end", "Sales"],
            ["Calibration certificates", "10 years", "Quality"],
            ["CCTV recordings", "28 days", "Facilities"],
            ["Mailboxes of former employees", "3 months after departure", "IT"],
        ],
    ),
    ("p", "CCTV recordings are deleted automatically after 28 days unless they are needed for an investigation."),
    (
        "p",
        "Calibration certificates are kept for 10 years because customers in regulated industries rely on them "
        "during audits.",
    ),
    ("h", "7. International transfers"),
    (
        "p",
        "Personal data may only be transferred outside the European Economic Area when an adequacy decision or "
        "standard contractual clauses are in place. New cloud services that process personal data must be "
        "approved by the data protection officer before use.",
    ),
    ("h", "8. Training and review"),
    (
        "p",
        "All employees who handle personal data of customers or colleagues complete a 30-minute data protection "
        "module in LearnHub every 2 years. This policy is reviewed every year by the data protection officer.",
    ),
]

PDFS = {
    "travel-expenses-2024.pdf": (TRAVEL_2024, "Travel and Expenses Policy", "Finance"),
    "purchasing-policy.pdf": (PURCHASING, "Purchasing and Procurement Policy", "Procurement"),
}
DOCXS = {
    "remote-work-policy.docx": (REMOTE_WORK, "Remote and Hybrid Work Policy", "People and Workplace"),
    "data-protection-gdpr.docx": (DATA_PROTECTION, "Data Protection and Retention Policy", "Data Protection Office"),
}


def _check_latin1(blocks: list[Block], name: str) -> None:
    for kind, value in blocks:
        texts = [c for row in value for c in row] if kind == "table" else [str(value)]
        for text in texts:
            try:
                text.encode("latin-1")
            except UnicodeEncodeError as exc:
                raise ValueError(f"{name}: non-latin-1 character {text[exc.start]!r} in {text[:60]!r}") from exc


def build_pdf(blocks: list[Block], title: str, department: str, out: Path) -> None:
    from fpdf import FPDF

    _check_latin1(blocks, out.name)

    class HandbookPDF(FPDF):
        def header(self) -> None:
            self.set_font("Helvetica", "I", 8)
            self.set_text_color(110, 110, 110)
            self.cell(0, 6, f"{COMPANY} - {title}", align="R")
            self.ln(10)
            self.set_text_color(0, 0, 0)

        def footer(self) -> None:
            self.set_y(-15)
            self.set_font("Helvetica", "I", 8)
            self.set_text_color(110, 110, 110)
            self.cell(0, 8, f"Page {self.page_no()} of {{nb}}", align="C")
            self.set_text_color(0, 0, 0)

    pdf = HandbookPDF(format="A4")
    pdf.set_creation_date(FIXED_DATE)
    pdf.set_title(title)
    pdf.set_author(f"{COMPANY} - {department}")
    pdf.set_subject(f"{COMPANY} employee handbook")
    pdf.set_creator("examples/build_handbook.py")
    pdf.set_producer("fpdf2")
    pdf.set_margins(22, 18, 22)
    pdf.set_auto_page_break(auto=True, margin=22)
    pdf.add_page()
    for kind, value in blocks:
        if kind == "title":
            pdf.set_font("Helvetica", "B", 18)
            pdf.multi_cell(0, 10, str(value))
            pdf.ln(3)
        elif kind == "h":
            pdf.ln(2)
            pdf.set_font("Helvetica", "B", 13)
            pdf.multi_cell(0, 8, str(value))
            pdf.ln(1)
        elif kind == "p":
            pdf.set_font("Helvetica", "", 11)
            pdf.multi_cell(0, 6.5, str(value))
            pdf.ln(2.5)
        elif kind == "li":
            pdf.set_font("Helvetica", "", 11)
            pdf.set_x(pdf.l_margin + 6)
            pdf.multi_cell(0, 6.5, f"- {value}")
            pdf.ln(0.5)
        elif kind == "pagebreak":
            pdf.add_page()
        else:
            raise ValueError(f"block {kind!r} is not supported in PDFs")
    pdf.output(str(out))
    log.info("wrote %s (%d pages)", out.relative_to(HANDBOOK.parent), pdf.page_no())


def _normalise_zip(data: bytes) -> bytes:
    """Rewrite a DOCX package with fixed zip timestamps so rebuilds are byte-identical."""
    src = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            fixed = zipfile.ZipInfo(info.filename, date_time=ZIP_DATE)
            fixed.compress_type = zipfile.ZIP_DEFLATED
            fixed.external_attr = 0o644 << 16
            dst.writestr(fixed, src.read(info.filename))
    return buf.getvalue()


def build_docx(blocks: list[Block], title: str, department: str, out: Path) -> None:
    import docx

    document = docx.Document()
    props = document.core_properties
    props.title = title
    props.author = f"{COMPANY} - {department}"
    props.last_modified_by = f"{COMPANY} - {department}"
    props.subject = f"{COMPANY} employee handbook"
    props.comments = "Generated by examples/build_handbook.py"
    props.keywords = "handbook"
    props.category = "Policy"
    props.created = FIXED_DATE.replace(tzinfo=None)
    props.modified = FIXED_DATE.replace(tzinfo=None)
    props.last_printed = FIXED_DATE.replace(tzinfo=None)
    props.revision = 1
    for kind, value in blocks:
        if kind == "title":
            document.add_heading(str(value), level=0)
        elif kind == "h":
            document.add_heading(str(value), level=1)
        elif kind == "p":
            document.add_paragraph(str(value))
        elif kind == "li":
            document.add_paragraph(str(value), style="List Bullet")
        elif kind == "table":
            rows = value  # type: ignore[assignment]
            table = document.add_table(rows=len(rows), cols=len(rows[0]))
            table.style = "Table Grid"
            for r, row in enumerate(rows):
                for c, cell_text in enumerate(row):
                    cell = table.cell(r, c)
                    cell.text = cell_text
                    if r == 0:
                        for run in cell.paragraphs[0].runs:
                            run.bold = True
        else:
            raise ValueError(f"block {kind!r} is not supported in DOCX files")
    buf = io.BytesIO()
    document.save(buf)
    out.write_bytes(_normalise_zip(buf.getvalue()))
    log.info("wrote %s", out.relative_to(HANDBOOK.parent))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    HANDBOOK.mkdir(parents=True, exist_ok=True)
    for name, (blocks, title, department) in PDFS.items():
        build_pdf(blocks, title, department, HANDBOOK / name)
    for name, (blocks, title, department) in DOCXS.items():
        build_docx(blocks, title, department, HANDBOOK / name)


if __name__ == "__main__":
    main()
