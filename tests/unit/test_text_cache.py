"""The on-disk text-vector cache: written atomically, and a bad file is re-encoded, not trusted."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlops.text import TextEncoder

TEXTS = ["whole milk. dairy", "rye bread. bakery"]


def test_a_truncated_or_mismatched_cache_file_is_encoded_again(tmp_path: Path) -> None:
    want = TextEncoder("tiny").encode(TEXTS)
    enc = TextEncoder("tiny", tmp_path)
    np.testing.assert_array_equal(enc.encode(TEXTS), want)
    (file,) = tmp_path.glob("text-*.npy")
    assert [p.name for p in tmp_path.iterdir()] == [file.name]  # no temporary file left behind

    file.write_bytes(file.read_bytes()[:50])  # a crash mid-write by some other tool
    np.testing.assert_array_equal(TextEncoder("tiny", tmp_path).encode(TEXTS), want)
    np.testing.assert_array_equal(np.load(file), want)  # and the cache is whole again

    np.save(file, np.zeros((3, 7), np.float32))  # another encoder's shape under this name
    np.testing.assert_array_equal(TextEncoder("tiny", tmp_path).encode(TEXTS), want)
