"""Count sketch (Charikar, Chen & Farach-Colton 2002), batched over workers.

An r x c table; coordinate i goes to bucket h_j(i) of row j with sign s_j(i):

    S(x)[j, b] = sum_{i : h_j(i) = b} s_j(i) x_i
    estimate_i = median_j  s_j(i) S[j, h_j(i)]

Hashes as in CSVec (nikitaivkin/csh): the bucket hash ((a i + b) mod p) mod c is
drawn from a 2-wise independent family, the sign hash from a degree-3
polynomial mod p (4-wise independent), coefficients from a seed shared by all
parties.  Here p = 2^31 - 1 (a Mersenne prime) instead of CSVec's 2^61 - 1, so
that every product stays exact in int64 (a, i < 2^31); this limits d to
2^31 - 1 coordinates.  torch.median returns the lower of the two middle values
for even r, as CSVec does.  The tables are built once and kept on the device
(int32 buckets and int8 signs: 5 r d bytes).

Sketching is linear -- S(x + y) = S(x) + S(y) up to float rounding -- so the
server may sum workers' tables, or sketch the sum of their vectors once when
an algorithm allows it; the network still carries n tables of 4 r c bytes.
"""
from __future__ import annotations

import numpy as np
import torch

P = 2**31 - 1


class CountSketch:
    def __init__(self, d: int, rows: int, cols: int, seed: int, device: torch.device | str = "cpu") -> None:
        if d >= P:
            raise ValueError(f"d = {d} is too large for p = 2^31 - 1")
        if rows < 1 or cols < 1:
            raise ValueError("rows and cols must be >= 1")
        self.d, self.rows, self.cols = d, rows, cols
        self.device = torch.device(device)
        rng = np.random.default_rng([seed, 0x5CE7C4])       # shared by every party
        coef = torch.from_numpy(rng.integers(1, P, size=(rows, 6), dtype=np.int64))
        i = torch.arange(d, dtype=torch.int64)
        buckets, signs = [], []
        for j in range(rows):
            a, b, c3, c2, c1, c0 = (int(v) for v in coef[j])
            h = ((a * i + b) % P) % cols                       # 2-wise independent bucket
            g = (c3 * i + c2) % P                              # Horner, every product < 2^62
            g = (g * i + c1) % P
            g = (g * i + c0) % P
            buckets.append(h.to(torch.int32))
            signs.append((1 - 2 * (g & 1)).to(torch.int8))     # 4-wise independent sign
        self.buckets = torch.stack(buckets).to(self.device)    # [r, d] int32
        self.signs = torch.stack(signs).to(self.device)        # [r, d] int8

    @property
    def nbytes(self) -> int:
        """Wire size of one table: r c float32 values."""
        return 4 * self.rows * self.cols

    def sketch(self, x: torch.Tensor) -> torch.Tensor:
        """x [n, d] -> tables [n, r, c] (a [d] vector gives [r, c])."""
        single = x.dim() == 1
        xb = x.view(1, -1) if single else x
        out = torch.zeros(xb.shape[0], self.rows, self.cols, dtype=xb.dtype, device=xb.device)
        for j in range(self.rows):                             # r is small; workers are batched
            out[:, j].index_add_(1, self.buckets[j].long(), xb * self.signs[j].to(xb.dtype))
        return out[0] if single else out

    def estimate(self, table: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """table [r, c] -> estimates [d]: median over rows of the signed bucket
        values; with ``scale`` [d], each row's value is divided by it first
        (SketchedAMSGrad's v_hat^{1/2} scaling, sketched-amsgrad.txt Algorithm 3)."""
        vals = torch.stack([table[j, self.buckets[j].long()] * self.signs[j].to(table.dtype)
                            for j in range(self.rows)])        # [r, d]
        if scale is not None:
            vals = vals / scale
        return vals.median(dim=0).values

    def heavy_hitters(self, table: torch.Tensor, k: int, scale: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """The k coordinates with the largest estimated magnitude, and their estimates."""
        est = self.estimate(table, scale)
        idx = torch.topk(est.abs(), k, sorted=False).indices
        return idx, est[idx]
