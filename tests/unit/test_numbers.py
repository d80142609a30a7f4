from datetime import date

import pytest

from orchestrator.incidents.numbers import check_digit, format_number, is_valid_number


@pytest.mark.parametrize(
    ("digits", "expected"),
    [
        # weights 1,2,1,2…: sum = 1*2+2*0+1*2+2*6+1*1+2*1+1*2+2*5+1*0+2*1+1*0+2*0+1*0+2*0+1*1 = 34
        ("202611250100001", 6),
        ("000000000000000", 1),  # sum 0 -> 10 -> 1
        ("5", 5),
        ("19", 1),  # 1 + 18 = 19 -> 10 - 9 = 1
    ],
)
def test_check_digit(digits: str, expected: int) -> None:
    assert check_digit(digits) == expected


def test_format_number_shape_and_validity() -> None:
    number = format_number(date(2026, 11, 25), "01", 1)
    assert number == "2026112501000016"
    assert len(number) == 16
    assert is_valid_number(number)
    tampered = number[:-2] + str((int(number[-2]) + 1) % 10) + number[-1]
    assert not is_valid_number(tampered)


@pytest.mark.parametrize(("system_id", "counter"), [("1", 1), ("ab", 1), ("01", 0), ("01", 100000)])
def test_format_number_rejects(system_id: str, counter: int) -> None:
    with pytest.raises(ValueError):
        format_number(date(2026, 1, 1), system_id, counter)
