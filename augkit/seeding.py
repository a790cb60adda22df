"""One seed decides every random choice.

Each random draw in augkit (an augmented copy, a training sample in an epoch) gets its own
seed derived by hashing ``(seed, key, index)``, where ``key`` is the source file's path
relative to the input folder. The result does not depend on worker count, order or process.
"""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, key: str, index: int = 0, salt: str = "") -> int:
    """A 63-bit seed for one (sample, copy/epoch); stable across Python versions and platforms.
    A key from a file name that is not valid UTF-8 (``os.fsdecode`` surrogates) hashes its raw bytes."""
    h = hashlib.blake2b(
        f"{int(seed)}\x00{salt}\x00{key}\x00{int(index)}".encode("utf-8", "surrogateescape"), digest_size=8
    )
    return int.from_bytes(h.digest(), "little") >> 1
