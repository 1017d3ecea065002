"""What the till checks refuse before anything is written (shared by the API and the CLI):
each problem named by field and code, all of them at once."""

from __future__ import annotations

from app.service.tills import LOCATION_MAX_LENGTH, till_field_errors


def _codes(**fields: str) -> list[tuple[str, str]]:
    return [(error.field, error.code) for error in till_field_errors(**fields)]


def test_a_well_formed_till_has_no_errors() -> None:
    assert (
        _codes(
            till_id="kasse-1",
            store_id="store_7",
            location_description="Kassa 2 – Åbo",
            msn="123456",
        )
        == []
    )


def test_every_problem_is_named_at_once() -> None:
    assert _codes(
        till_id="kasse 1",
        store_id="x" * 65,
        location_description=" ",
        msn="12",
    ) == [
        ("tillId", "invalid_format"),
        ("storeId", "invalid_format"),
        ("locationDescription", "blank"),
        ("msn", "invalid_format"),
    ]


def test_a_location_vipps_would_cut_is_refused_with_its_length() -> None:
    longest = "a" * LOCATION_MAX_LENGTH
    assert _codes(location_description=longest) == []
    [error] = till_field_errors(location_description=longest + "b")
    assert (error.field, error.code) == ("locationDescription", "too_long")
    assert str(LOCATION_MAX_LENGTH + 1) in error.message
