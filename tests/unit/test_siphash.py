"""lb/pyengine/siphash.py (the rounds synproxy's SipHash-2-4 and mh's hsiphash share) against the
published vectors: the SipHash paper's for SipHash-2-4 and lib/test_siphash.c's hsiphash vectors
for 64-bit kernels (SipHash-1-3, low 32 bits). Key bytes 00..0f, message bytes 0..n-1."""

from __future__ import annotations

import pytest

from lb.pyengine.schedhash import hsiphash_u32
from lb.pyengine.siphash import message_words, siphash24, siphash_words

KEY = (0x0706050403020100, 0x0F0E0D0C0B0A0908)


@pytest.mark.parametrize(("length", "expected"),
                         [(0, 0x726FDB47DD0E0E31), (15, 0xA129CA6149BE45E5), (63, 0x958A324CEB064572)])
def test_siphash24_matches_the_reference_vectors(length: int, expected: int) -> None:
    assert siphash24(*KEY, bytes(range(length))) == expected


@pytest.mark.parametrize(
    ("length", "expected"),
    [(0, 0x050FC4DC), (1, 0x7D57CA93), (4, 0x88D38328), (7, 0x9BB11140), (8, 0x8D299A8E),
     (15, 0x2A519956), (16, 0x7D908B66), (63, 0xB7BBB3A8)],
)
def test_siphash_1_3_matches_the_kernels_hsiphash_vectors(length: int, expected: int) -> None:
    assert siphash_words(*KEY, message_words(bytes(range(length))), 1, 3) & 0xFFFFFFFF == expected


def test_hsiphash_u32_is_hsiphash_of_the_four_little_endian_bytes() -> None:
    assert hsiphash_u32(0x03020100, KEY) == 0x88D38328  # the 4-byte vector: bytes 00 01 02 03
