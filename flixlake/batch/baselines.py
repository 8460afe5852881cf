"""Strong non-ALS baselines for offline evaluation: item-kNN on co-watches and EASE.

Both learn from the same binary matrix ALS's training window gives: ``X[u, i] = 1`` when user
``u`` liked movie ``i`` (confidence > 0) before the test window.

* **item-kNN**: cosine similarity of movies' co-watch columns,
  ``S[i, j] = |U_i ∩ U_j| / sqrt(|U_i| |U_j|)``, keeping each movie's ``neighbours`` most similar
  ones; a user's score of ``j`` is the sum of ``S[i, j]`` over the movies ``i`` they liked.
  Computed in column blocks, so memory stays ``movies x block`` whatever the catalog size.
* **EASE** (Steck, "Embarrassingly Shallow Autoencoders", WWW 2019): the closed form
  ``P = (XᵀX + λI)⁻¹``, ``B = -P / diag(P)``, ``diag(B) = 0``; score = ``X_u B``. Dense
  ``movies x movies``: only where it fits in memory (``ease_max_items``), else item-kNN alone.

Users whose scores are all zero (no liked movie, or none with neighbours) get no list here; the
evaluation fills those with the popularity list, as it does for ALS.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

_EMPTY = np.zeros(0, np.int64)


def interaction_matrix(users: np.ndarray, movies: np.ndarray, n_items: int) -> sp.csr_matrix:
    """Binary users x movies CSR matrix from aligned ``(user row, movie_idx)`` arrays."""
    data = np.ones(len(users), np.float32)
    matrix = sp.csr_matrix(
        (data, (np.asarray(users, np.int64), np.asarray(movies, np.int64))),
        shape=(int(users.max()) + 1 if len(users) else 0, n_items),
    )
    matrix.data[:] = 1.0  # duplicate pairs summed: back to binary
    return matrix


@dataclass(frozen=True)
class ItemScorer:
    """A movies x movies weight matrix (sparse or dense); a user's scores = their row of X times it."""

    name: str
    weights: sp.csr_matrix | np.ndarray

    def recommend(
        self,
        history: sp.csr_matrix,
        seen: list[np.ndarray],
        k: int,
        block: int = 1024,
    ) -> list[np.ndarray]:
        """Top-``k`` unseen movies per row of ``history`` (best first; empty when no signal)."""
        out: list[np.ndarray] = []
        for lo in range(0, history.shape[0], block):
            hi = min(lo + block, history.shape[0])
            scores = history[lo:hi] @ self.weights
            scores = np.asarray(scores.toarray() if sp.issparse(scores) else scores, np.float32)
            for row in range(hi - lo):
                values = scores[row]
                drop = seen[lo + row]
                if drop.size:
                    values[drop[drop < values.size]] = -np.inf
                positive = np.flatnonzero(values > 0)
                if positive.size == 0:
                    out.append(_EMPTY)
                    continue
                top = positive[np.argsort(-values[positive], kind="stable")[:k]]
                out.append(top.astype(np.int64))
        return out


def item_knn(matrix: sp.csr_matrix, neighbours: int = 100, block: int = 512) -> ItemScorer:
    """Cosine item-item similarity on co-watches, ``neighbours`` per movie (sparse)."""
    n_items = matrix.shape[1]
    columns = matrix.tocsc()
    transposed = matrix.T.tocsr()
    norms = np.sqrt(np.asarray(columns.sum(axis=0)).ravel()).astype(np.float32)
    norms[norms == 0] = 1.0
    keep = min(neighbours, max(n_items - 1, 1))
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for lo in range(0, n_items, block):
        hi = min(lo + block, n_items)
        co = np.asarray((transposed @ columns[:, lo:hi]).toarray(), np.float32)  # items x block
        co /= norms[:, None] * norms[None, lo:hi]
        co[np.arange(lo, hi), np.arange(hi - lo)] = 0.0  # no movie is its own neighbour
        if keep < n_items:
            top = np.argpartition(-co, keep - 1, axis=0)[:keep]
        else:
            top = np.broadcast_to(np.arange(n_items)[:, None], co.shape)
        values = np.take_along_axis(co, top, axis=0)
        nonzero = values > 0
        # S[i, j]: the weight movie i (liked) gives movie j; column j keeps its top neighbours i
        rows.append(top[nonzero])
        cols.append(np.broadcast_to(np.arange(lo, hi)[None, :], top.shape)[nonzero])
        vals.append(values[nonzero])
    weights = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_items, n_items),
        dtype=np.float32,
    )
    return ItemScorer("itemknn", weights)


def ease(matrix: sp.csr_matrix, l2: float = 250.0) -> ItemScorer:
    """EASE's closed form on the binary matrix (dense movies x movies: mind the catalog size)."""
    gram = np.asarray((matrix.T @ matrix).toarray(), np.float64)
    gram[np.diag_indices_from(gram)] += l2
    inverse = np.linalg.inv(gram)
    weights = -inverse / np.diag(inverse)[None, :]
    weights[np.diag_indices_from(weights)] = 0.0
    return ItemScorer("ease", weights.astype(np.float32))


def history_rows(users: np.ndarray, liked: Mapping[int, np.ndarray], n_items: int) -> sp.csr_matrix:
    """The liked movies of ``users`` (in that order) as a binary users x movies matrix."""
    lists = [liked.get(int(u), _EMPTY) for u in users]
    lists = [lst[lst < n_items] for lst in lists]
    indptr = np.r_[0, np.cumsum([len(lst) for lst in lists])].astype(np.int64)
    indices = np.concatenate(lists).astype(np.int64) if lists else _EMPTY
    data = np.ones(indices.size, np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=(len(users), n_items))
