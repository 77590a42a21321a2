"""The partner store: tokens are random, shown once, and kept only as their SHA-256."""

from __future__ import annotations

import hashlib

from hookbus_receiver import partnerstore as store

# ----------------------------------------------------------------------- tokens


def test_tokens_are_random_urlsafe_and_hashed_with_sha256():
    tokens = {store.new_token() for _ in range(100)}
    assert len(tokens) == 100
    for t in tokens:
        assert len(t) >= 43  # 32 bytes of entropy
        assert t.replace("-", "").replace("_", "").isalnum()
        assert store.token_hash(t) == hashlib.sha256(t.encode()).digest()


def test_any_string_from_a_path_hashes():
    # A path may decode to lone surrogates or anything else: no early failure on format.
    for odd in ("", "é", "\ud800", "x" * 10_000):
        assert len(store.token_hash(odd)) == 32
