"""The decoder against 100,000+ generated inputs, in-process (issue 13).

Each hypothesis example is a batch of inputs and seeded mutants of them:
valid packet streams with bytes flipped, cut, or header sizes changed, admin
lines, and raw noise, fed in random pieces to a fresh server-side decoder
with a small payload limit.
Whatever arrives, the decoder never raises, every event is well formed, a
malformed stream ends the events, and it holds no more than it was given.
"""

from __future__ import annotations

import random
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gearmill.protocol.codec import MALFORMED, TEXT, WRONG_MAGIC, Decoder
from gearmill.protocol.packets import ARG_COUNT, ARGS, MAX_TYPE, encode_req

# hypothesis draws DRAWN inputs per example; each is fed with VARIANTS - 1
# seeded mutants of it (hypothesis' drawing is the slow part)
DRAWN = 12
VARIANTS = 8
EXAMPLES = 1100  # 105,600 inputs


def _packet(ptype: int, sizes: list[int], fill: int) -> bytes:
    argc, data = ARGS[ptype] if 0 < ptype <= MAX_TYPE else (0, True)
    args = [bytes([fill]) * (sizes[i % len(sizes)] % 40) for i in range(argc)]
    if data:
        args.append(bytes([fill ^ 0x55]) * (sizes[-1] % 300))
    return encode_req(ptype, *args)


@st.composite
def one_input(draw: st.DrawFn) -> tuple[bytes, int]:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        data = draw(st.binary(max_size=120))
    elif kind == 1:
        lines = draw(st.lists(st.binary(max_size=30), max_size=4))
        data = b"".join(line.replace(b"\x00", b"") + b"\n" for line in lines)
    else:
        stream = b"".join(
            _packet(draw(st.integers(0, MAX_TYPE + 3)), [draw(st.integers(0, 400))], i)
            for i in range(draw(st.integers(1, 4)))
        )
        buf = bytearray(stream)
        for _ in range(draw(st.integers(0, 3))):
            at = draw(st.integers(0, len(buf) - 1))
            buf[at] = draw(st.integers(0, 255))
        if kind == 3 and len(buf) >= 12:
            # a header claiming a different size than what follows
            struct.pack_into(">I", buf, 8, draw(st.integers(0, 1 << 32 - 1)))
        data = bytes(buf[: draw(st.integers(0, len(buf)))])
    return data, draw(st.integers(1, 64))


def _check(data: bytes, chunk: int) -> None:
    dec = Decoder(server=True, max_payload=4096)
    events = []
    for i in range(0, len(data), chunk):
        events.extend(dec.feed(data[i : i + chunk]))
        if events and events[-1][0] == MALFORMED:
            break
    for j, (kind, args) in enumerate(events):
        assert kind in (TEXT, WRONG_MAGIC, MALFORMED) or 1 <= kind <= MAX_TYPE, kind
        if kind == MALFORMED:
            assert j == len(events) - 1
        elif kind > 0:
            assert len(args) == ARG_COUNT[kind]
            assert sum(len(a) for a in args) <= 4096
    assert dec.buffered <= len(data)


def _variants(data: bytes, other: bytes, rng: random.Random) -> list[bytes]:
    """``data`` and seven mutants: bytes flipped, cut, spliced with ``other``."""
    out = [data]
    for _ in range(VARIANTS - 1):
        buf = bytearray(data + other[: rng.randrange(len(other) + 1)])
        for _ in range(rng.randrange(4)):
            if buf:
                buf[rng.randrange(len(buf))] = rng.randrange(256)
        out.append(bytes(buf[: rng.randrange(len(buf) + 1)]))
    return out


def test_decoder_survives_100k_generated_inputs() -> None:
    fed = [0]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        st.lists(one_input(), min_size=DRAWN, max_size=DRAWN),
        st.integers(0, 1 << 32),
    )
    def run(inputs: list[tuple[bytes, int]], seed: int) -> None:
        rng = random.Random(seed)
        for n, (data, chunk) in enumerate(inputs):
            other = inputs[(n + 1) % len(inputs)][0]
            for variant in _variants(data, other, rng):
                _check(variant, chunk)
                fed[0] += 1

    run()
    assert fed[0] >= 100_000, fed[0]
