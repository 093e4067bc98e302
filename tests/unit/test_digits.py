import pytest

from common.digits import TOO_LARGE, decimal


@pytest.mark.parametrize("text, expected", [
    ("0", 0), ("42", 42), ("007", 7), ("0" * 5000 + "1", 1), ("4294967295", 4294967295),
    ("9" * 33, TOO_LARGE), ("9" * 5000, TOO_LARGE),            # int() would raise past 4,300 digits
    ("", None), ("²", None), ("1²", None), ("٣", None),         # Unicode digits: isdigit() says yes, int() no
    ("-1", None), ("+1", None), (" 1", None), ("1_000", None), ("0x10", None), ("1.0", None),
])
def test_decimal(text, expected):
    assert decimal(text) == expected
