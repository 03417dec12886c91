"""Generate the torch.nn.LSTM parity fixtures in ``tests/data/torch_ref/``.

Run from anywhere with ``python tests/data/make_torch_reference.py [CASE ...]``
(all cases, or the named ones). This
script is the only place torch is used: the test suite
(``tests/layer/test_torch_parity.py``) reads the committed ``.npz`` files and never
imports torch.

Each case builds ``torch.nn.LSTM(input_size, hidden_size, num_layers,
bidirectional=..., proj_size=..., batch_first=True)`` in float32 or float64
with fixed seeds,
runs it forward (through ``pack_padded_sequence(enforce_sorted=False)`` /
``pad_packed_sequence(total_length=T)`` when the case has lengths) and
backward on the loss::

    sum(out * d_out) + sum(h_n * d_h_n) + sum(c_n * d_c_n)

where ``d_out`` is zero at padded positions. ``h0``/``c0`` always require
grad: a case without a given initial state uses zeros (and stores no ``h0``
/``c0`` array, only their gradients).

Keys of each ``.npz`` (all plain arrays, ``allow_pickle=False`` works):

* config, 0-d arrays: ``case`` (str), ``input_size``, ``hidden_size``,
  ``num_layers``, ``proj_size`` (int64; absent in the files of cases
  without projections written before it, read as 0), ``bidirectional``,
  ``has_lengths``, ``has_h0``
  (bool), ``dtype`` (str, ``"float32"``/``"float64"``), ``batch_first``;
* inputs: ``x`` (B, T, I), ``lengths`` (B,) int64 (only if ``has_lengths``),
  ``h0``/``c0`` (num_layers * D, B, P or H) and (num_layers * D, B, H)
  (only if ``has_h0``), ``d_out`` (B, T, D * P or D * H), ``d_h_n``,
  ``d_c_n`` shaped as ``h0`` and ``c0`` (P: ``proj_size`` when > 0);
* parameters ``param__<torch name>`` (``weight_ih_l0``, ``weight_hh_l0``,
  ``bias_ih_l0``, ``bias_hh_l0``, ``weight_hr_l0``, ``..._reverse``, ...);
* outputs ``out`` (B, T, D * H), ``h_n``, ``c_n``;
* gradients ``grad__<torch name>`` for every parameter, ``grad__x``,
  ``grad__h0``, ``grad__c0``.
"""

from __future__ import annotations

import pathlib
import sys
import zlib

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

OUT_DIR = pathlib.Path(__file__).resolve().parent / "torch_ref"

# name: (B, T, I, H, num_layers, bidirectional, lengths or None, has_h0[, proj_size])
CASES = {
    "plain_1layer": (3, 5, 4, 6, 1, False, None, False),
    "stacked_2layer": (3, 6, 5, 4, 2, False, None, False),
    "bidir_1layer": (3, 5, 4, 5, 1, True, None, False),
    "bidir_2layer_lengths_h0": (4, 7, 3, 4, 2, True, [5, 7, 2, 4], True),
    "seq_len_1": (2, 1, 3, 4, 2, True, None, True),
    "hidden_1": (3, 6, 4, 1, 2, False, [6, 3, 4], False),
    "unsorted_lengths": (4, 7, 5, 5, 1, False, [3, 1, 6, 4], False),
    "proj_1layer": (3, 5, 4, 6, 1, False, None, False, 3),
    "proj_bidir_2layer_lengths_h0": (4, 7, 3, 5, 2, True, [5, 7, 2, 4], True, 2),
    "proj_stacked_unsorted_h0": (5, 6, 2, 4, 3, False, [2, 6, 1, 6, 3], True, 1),
}

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _seed(name: str, dtype_name: str) -> int:
    # stable across runs and Python processes (unlike hash())
    return zlib.crc32(f"{name}/{dtype_name}".encode())


def run_case(name: str, dtype_name: str) -> dict[str, np.ndarray]:
    B, T, n_in, H, L, bidir, lengths, has_h0, *proj = CASES[name]
    P = proj[0] if proj else 0
    R = P or H  # units of h
    D = 2 if bidir else 1
    dtype = DTYPES[dtype_name]
    seed = _seed(name, dtype_name)

    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(n_in, H, L, bidirectional=bidir, batch_first=True, dtype=dtype,
                         proj_size=P)
    lstm.train()

    # inputs drawn in float64 by numpy, then cast: independent of torch's RNG
    rng = np.random.default_rng(seed)
    np_dtype = np.dtype(dtype_name)
    x_np = rng.standard_normal((B, T, n_in)).astype(np_dtype)
    h0_np = (0.5 * rng.standard_normal((L * D, B, R))).astype(np_dtype)
    c0_np = (0.5 * rng.standard_normal((L * D, B, H))).astype(np_dtype)
    d_out_np = rng.standard_normal((B, T, D * R)).astype(np_dtype)
    d_h_n_np = rng.standard_normal((L * D, B, R)).astype(np_dtype)
    d_c_n_np = rng.standard_normal((L * D, B, H)).astype(np_dtype)
    if lengths is not None:
        lengths_np = np.asarray(lengths, dtype=np.int64)
        mask = np.arange(T)[None, :] < lengths_np[:, None]
        d_out_np[~mask] = 0
    else:
        lengths_np = None
    if not has_h0:
        h0_np = np.zeros_like(h0_np)
        c0_np = np.zeros_like(c0_np)

    x = torch.from_numpy(x_np.copy()).requires_grad_(True)
    h0 = torch.from_numpy(h0_np.copy()).requires_grad_(True)
    c0 = torch.from_numpy(c0_np.copy()).requires_grad_(True)

    if lengths_np is not None:
        packed = pack_padded_sequence(
            x, torch.from_numpy(lengths_np), batch_first=True, enforce_sorted=False
        )
        out_packed, (h_n, c_n) = lstm(packed, (h0, c0))
        out, out_lengths = pad_packed_sequence(out_packed, batch_first=True, total_length=T)
        assert np.array_equal(out_lengths.numpy(), lengths_np)
    else:
        out, (h_n, c_n) = lstm(x, (h0, c0))

    assert out.shape == (B, T, D * R) and h_n.shape == (L * D, B, R)
    loss = (
        (out * torch.from_numpy(d_out_np)).sum()
        + (h_n * torch.from_numpy(d_h_n_np)).sum()
        + (c_n * torch.from_numpy(d_c_n_np)).sum()
    )
    loss.backward()

    res: dict[str, np.ndarray] = {
        "case": np.array(name),
        "input_size": np.array(n_in, dtype=np.int64),
        "hidden_size": np.array(H, dtype=np.int64),
        "num_layers": np.array(L, dtype=np.int64),
        "bidirectional": np.array(bidir),
        "dtype": np.array(dtype_name),
        "has_lengths": np.array(lengths_np is not None),
        "has_h0": np.array(has_h0),
        "batch_first": np.array(True),
        "x": x_np,
        "d_out": d_out_np,
        "d_h_n": d_h_n_np,
        "d_c_n": d_c_n_np,
        "out": out.detach().numpy().copy(),
        "h_n": h_n.detach().numpy().copy(),
        "c_n": c_n.detach().numpy().copy(),
        "grad__x": x.grad.numpy().copy(),
        "grad__h0": h0.grad.numpy().copy(),
        "grad__c0": c0.grad.numpy().copy(),
    }
    if P:
        res["proj_size"] = np.array(P, dtype=np.int64)
    if lengths_np is not None:
        res["lengths"] = lengths_np
    if has_h0:
        res["h0"] = h0_np
        res["c0"] = c0_np
    for pname, p in lstm.named_parameters():
        res[f"param__{pname}"] = p.detach().numpy().copy()
        res[f"grad__{pname}"] = p.grad.numpy().copy()
    for key, arr in res.items():
        assert arr.dtype != object, key
        if arr.dtype.kind == "f":
            assert arr.dtype == np_dtype, key
            assert np.all(np.isfinite(arr)), key
    return res


def main() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    total = 0
    for name in sys.argv[1:] or CASES:
        for dtype_name in DTYPES:
            res = run_case(name, dtype_name)
            # determinism check: an independent second run must agree bitwise
            again = run_case(name, dtype_name)
            assert res.keys() == again.keys()
            for key in res:
                assert np.array_equal(res[key], again[key]), (name, dtype_name, key)
            path = OUT_DIR / f"{name}_{dtype_name}.npz"
            np.savez_compressed(path, **res)
            # round trip without pickle
            with np.load(path, allow_pickle=False) as f:
                assert set(f.files) == set(res)
                for key in f.files:
                    assert np.array_equal(f[key], res[key]), (path, key)
            size = path.stat().st_size
            total += size
            print(f"{path.name:42s} {size:7d} bytes")
    print(f"total {total} bytes in {OUT_DIR}")


if __name__ == "__main__":
    main()
