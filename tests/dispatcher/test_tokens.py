"""Runner tokens: random, URL-safe, and never read as an option on a command line."""

from __future__ import annotations

import re

from dispatcher.tokens import new_token, token_hash
from runner.cli import build_parser


def test_a_draw_that_begins_with_a_dash_is_drawn_again() -> None:
    draws = iter(["-first", "-second", "third"])
    assert new_token(lambda _n: next(draws)) == "third"


def test_tokens_are_url_safe_unique_and_never_begin_with_a_dash() -> None:
    tokens = [new_token() for _ in range(2_000)]  # about 31 would begin with '-' by chance
    assert len(set(tokens)) == len(tokens)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", t) for t in tokens)
    assert not [t for t in tokens if t.startswith("-")]


def test_an_older_token_that_begins_with_a_dash_is_given_with_an_equals_sign() -> None:
    args = build_parser().parse_args(["--url", "http://h:1", "--runner", "r1", "--token=-x1"])
    assert args.token == "-x1"


def test_the_hash_is_the_sha256_hex_digest() -> None:
    assert token_hash("abc") == ("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
