"""Embedding matrices from files (workbench.matrix_files.read_matrices): errors that name the file and the problem,
name clashes when 3-D arrays are split, foreign byte order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.errors import ConfigError
from workbench.matrix_files import read_matrices


def test_embedding_file_errors(tmp_path):
    np.save(tmp_path / "row.npy", np.ones((1, 5)))
    np.save(tmp_path / "vec.npy", np.ones(5))
    bad = np.random.rand(4, 3)
    bad[0, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    for name, match in [("row.npy", "at least 2 rows"), ("vec.npy", "must be 2-D"), ("nan.npy", "NaN"),
                        ("junk.pt", "could not read"), ("missing.npy", "existing file"), ("x.csv", "end in one of")]:
        with pytest.raises(ConfigError, match=match):
            read_matrices(tmp_path / name)


def test_embedding_file_name_clash_and_foreign_byte_order(tmp_path):
    torch.save({"a": torch.randn(2, 4, 3), "a.0": torch.zeros(4, 3)}, tmp_path / "clash.pt")
    with pytest.raises(ConfigError, match="already exist"):
        read_matrices(tmp_path / "clash.pt")
    np.save(tmp_path / "big.npy", np.random.rand(4, 3).astype(">f8"))
    try:
        mats = read_matrices(tmp_path / "big.npy")  # either read correctly or refused with a named error
        assert mats["big"].shape == (4, 3)
    except ConfigError as exc:
        assert "big.npy" in str(exc)
