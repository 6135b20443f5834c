"""Declared limits: one "no limit" sentinel, and one check on request token ids."""

from __future__ import annotations

import pytest

from hfserve.errors import InvalidRequestError
from hfserve.skills.limits import NO_LIMIT, check_token_ids, declared_limit


def test_the_tightest_real_limit_wins() -> None:
    assert declared_limit(2048, 512) == 512
    assert declared_limit(None, 1024.0) == 1024


@pytest.mark.parametrize(
    "values",
    [(), (None,), (0,), (-5,), (NO_LIMIT,), (int(1e30),), ("512",), (True,)],
    ids=[
        "nothing",
        "none",
        "zero",
        "negative",
        "sentinel",
        "transformers-sentinel",
        "text",
        "bool",
    ],
)
def test_sentinels_and_junk_are_no_limit(values: tuple[object, ...]) -> None:
    assert declared_limit(*values) is None


def test_a_sentinel_beside_a_real_limit_is_ignored() -> None:
    # A tokenizer without a limit (model_max_length = 1e30) and a 2048-position model.
    assert declared_limit(int(1e30), 2048) == 2048


def test_token_ids_in_range_pass() -> None:
    check_token_ids([0, 5, 9], 10, param="prompt")
    check_token_ids([], 10, param="prompt")


@pytest.mark.parametrize("ids", [[10], [-1], [1.0], [True], ["3"]])
def test_token_ids_out_of_range_or_not_ints_are_refused(ids: list[object]) -> None:
    with pytest.raises(
        InvalidRequestError, match=r"^input 2: token ids must be integers in \[0, 10\)$"
    ) as err:
        check_token_ids(ids, 10, param="input", where="input 2: ")
    assert err.value.param == "input"
