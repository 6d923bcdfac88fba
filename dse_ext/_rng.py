"""Counter-based random numbers shared with the compiled kernels (csrc/common/rng.h).

Every draw is a pure function of ``(seed, stream, counter)``, so the C++ kernels, any
thread count and the reference give the same k-means++ seeds. torch's global RNG is
never used.
"""

from __future__ import annotations

_MASK = (1 << 64) - 1


def splitmix64(z: int) -> int:
    """SplitMix64 mixer on unsigned 64-bit integers."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def uniform01(seed: int, stream: int, counter: int) -> float:
    """Uniform float in [0, 1) with 53 random bits, identical to ``dse::uniform01``."""
    h = splitmix64(splitmix64(splitmix64(seed & _MASK) ^ (stream & _MASK)) ^ (counter & _MASK))
    return (h >> 11) * (1.0 / 9007199254740992.0)


def derive_seed(seed: int, tag: str) -> int:
    """A sub-seed for one use of ``seed`` (e.g. ``"local"``, ``"global"``, ``"positions"``).

    Returned as a non-negative int64 so it fits the ops' ``int`` arguments and
    ``torch.Generator.manual_seed``.
    """
    h = seed & _MASK
    for ch in tag.encode():
        h = splitmix64(h ^ ch)
    return splitmix64(h) >> 1
