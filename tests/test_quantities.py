"""Parsing and normalising quantities: number words, currencies, durations, percentages, dates, ranges."""

import pytest

from tether.text.quantities import Quantity, extract_quantities, normalise, parse_number


def one(text: str) -> Quantity:
    found = extract_quantities(text)
    assert len(found) == 1, [q.norm for q in found]
    return found[0]


@pytest.mark.parametrize(
    "text, value",
    [
        ("1,000", 1000),
        ("2.5", 2.5),
        ("ten", 10),
        ("twenty-five", 25),
        ("one hundred and fifty", 150),
        ("five thousand", 5000),
        ("a dozen", 12),
        ("thirty", 30),
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["one-off", "several", "", "twelfth"])
def test_parse_number_rejects_non_numbers(text):
    assert parse_number(text) is None


@pytest.mark.parametrize(
    "text, norm",
    [
        ("€45 per day", "EUR 45 per day"),
        ("EUR 45 per day", "EUR 45 per day"),
        ("45 euros per day", "EUR 45 per day"),
        ("up to EUR 1,000", "EUR 1,000"),
        ("EUR 2.4 million", "EUR 2,400,000"),
        ("€0.19 per km", "EUR 0.19 per km"),
        ("CZK 500 per month", "CZK 500 per month"),
        ("five thousand euros", "EUR 5,000"),
        ("$20", "USD 20"),
    ],
)
def test_amounts_normalise_currency_and_scale(text, norm):
    q = one(text)
    assert q.kind == "amount" and q.norm == norm


def test_same_amount_in_different_notation_agrees_and_other_values_do_not():
    assert one("€45").agrees(one("45 euros")) and one("EUR 45").agrees(one("€45"))
    assert not one("€45").agrees(one("EUR 60"))
    assert not one("€45").comparable(one("CZK 45"))  # different currencies never compare
    assert not one("€40 per weekday").comparable(one("€80 per weekend day"))


@pytest.mark.parametrize(
    "a, b, same",
    [
        ("3 weeks", "21 days", True),
        ("3 weeks", "14 days", False),
        ("twenty working days", "20 working days", True),
        ("four weeks", "28 days", True),
        ("4 years", "48 months", True),
        ("two months", "60 days", None),
        ("20 working days", "20 days", None),
        ("one working week", "5 working days", True),
        ("2 hours", "120 minutes", True),
        ("ten consecutive working days", "10 working days", True),
    ],
)
def test_durations_convert_within_a_unit_family_only(a, b, same):
    qa, qb = one(a), one(b)
    assert qa.kind == qb.kind == "duration"
    if same is None:  # months vs days, working vs calendar days: not comparable at all
        assert not qa.comparable(qb)
    else:
        assert qa.comparable(qb) and qa.agrees(qb) is same


def test_duration_norms():
    assert one("at least 3 weeks before").norm == "21 days"
    assert one("twenty working days").norm == "20 working days"
    assert one("every 4 years").norm == "4 years" and one("48 months").norm == "4 years"
    assert one("more than 6 hours").norm == "6 hours"


@pytest.mark.parametrize(
    "text, bound",
    [
        ("at least 14 days", "min"),
        ("more than 10 working days", "min"),
        ("up to 5 days", "max"),
        ("under €2,500", "max"),
        ("no later than 21 days", "max"),
        ("about 3 weeks", "approx"),
        ("16 weeks", "exact"),
    ],
)
def test_bounds(text, bound):
    assert one(text).bound == bound


def test_ranges_contain_values_inside_them():
    rng = one("between 2 and 4 weeks")
    assert (rng.bound, rng.value, rng.high, rng.norm) == ("range", 14, 28, "14-28 days")
    assert rng.agrees(one("about 3 weeks")) and rng.agrees(one("21 days")) and not rng.agrees(one("5 weeks"))
    one_two = one("between one and two weeks")
    assert one_two.agrees(one("one week")) and not one_two.agrees(one("three weeks"))
    assert one("between EUR 5,000 and EUR 25,000").norm == "EUR 5,000-25,000"
    # "2 and 3 weeks" without "between" is not a range
    assert [q.norm for q in extract_quantities("2 and 3 weeks")] == ["21 days"]


def test_approximate_values_allow_a_tolerance():
    assert one("about 3 weeks").agrees(one("20 days")) and not one("about 3 weeks").agrees(one("14 days"))


@pytest.mark.parametrize(
    "text, iso, unit",
    [
        ("on 14 October 2025", "2025-10-14", "date"),
        ("2024-06-01", "2024-06-01", "date"),
        ("March 2024", "2024-03", "month"),
        ("October 14, 2025", "2025-10-14", "date"),
        ("by 31 March", "--03-31", "day-of-year"),
        ("on the 25th of each month", "day 25 of the month", "day-of-month"),
        ("on the last working day of each month", "last working day of the month", "day-of-month"),
        ("at 09:45", "09:45", "time"),
        ("the 2024 budget", "2024", "year"),
    ],
)
def test_dates(text, iso, unit):
    q = one(text)
    assert (q.kind, q.iso, q.unit) == ("date", iso, unit)


def test_same_date_in_two_notations_agrees():
    assert one("1 March 2024").agrees(one("2024-03-01")) and not one("14 October 2025").agrees(one("21 October 2025"))
    assert not one("March 2024").comparable(one("1 March 2024"))  # different granularity


def test_time_ranges():
    q = one("open from 07:30 to 19:00")
    assert (q.unit, q.bound, q.value, q.high, q.norm) == ("time", "range", 450, 1140, "07:30-19:00")


def test_percentages_and_counts():
    assert one("paid at 150% of the hourly rate").norm == "150%" and one("20 percent").norm == "20%"
    q = one("at least 14 characters long")
    assert (q.kind, q.unit, q.value, q.bound) == ("count", "character", 14, "min")
    assert one("three written quotes").norm == "3 quotes"  # the counted noun, adjective dropped


@pytest.mark.parametrize(
    "text",
    [
        "Firmware goes through the rig in Lab 3 before signing.",
        "Call +31 10 555 0142 now.",
        "The HS-400 sensor family.",
        "A one-off allowance.",
        "Each employee receives one-twelfth of the entitlement.",
        "Use a one-way ticket.",
    ],
)
def test_names_codes_and_phone_numbers_are_not_quantities(text):
    assert extract_quantities(text) == []


def test_normalise_lists_every_quantity_in_order():
    assert normalise("€40 for each weekday and €80 for each weekend day, within 3 weeks") == [
        "EUR 40 per weekday",
        "EUR 80 per weekend day",
        "21 days",
    ]
