"""Strong non-ALS baselines for offline evaluation: item-kNN on co-watches and EASE.

Both learn from the same binary matrix ALS's training window gives: ``X[u, i] = 1`` when user
``u`` liked movie ``i`` (confidence > 0) before the test window.

* **item-kNN** (item-based top-N, Deshpande & Karypis 2004): cosine similarity of movies'
  co-watch columns, ``S[i, j] = |U_i ∩ U_j| / sqrt(|U_i| |U_j|)``, keeping each movie's
  ``neighbours`` most similar ones; a user's score of ``j`` is the sum of ``S[i, j]`` over the
  movies ``i`` they liked (candidates: their movies' neighbours). Computed in sparse column
  blocks, so memory follows the co-watch counts, not ``movies²``.
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
        """Top-``k`` unseen movies per row of ``history`` (best first, ties by movie index;
        only movies with a positive score, so a user without signal gets an empty list)."""
        n_items = history.shape[1]
        kk = min(k, n_items)
        out: list[np.ndarray] = []
        for lo in range(0, history.shape[0], block):
            hi = min(lo + block, history.shape[0])
            scores = history[lo:hi] @ self.weights
            if sp.issparse(scores):  # item-kNN: a few hundred candidates per user
                scores = sp.csr_matrix(scores)
                for row in range(hi - lo):
                    a, b = scores.indptr[row], scores.indptr[row + 1]
                    items, values = scores.indices[a:b], scores.data[a:b]
                    keep = (values > 0) & ~np.isin(items, seen[lo + row])
                    items, values = items[keep], values[keep]
                    order = np.lexsort((items, -values))[:kk]
                    out.append(items[order].astype(np.int64))
                continue
            dense = np.array(scores, np.float32)  # EASE: every movie scored
            drop = [seen[i][seen[i] < n_items] for i in range(lo, hi)]
            rows = np.repeat(np.arange(hi - lo), [d.size for d in drop])
            if rows.size:
                dense[rows, np.concatenate(drop)] = -np.inf
            if kk == 0:
                out.extend([_EMPTY] * (hi - lo))
                continue
            top = np.argpartition(-dense, kk - 1, axis=1)[:, :kk]
            values = np.take_along_axis(dense, top, axis=1)
            order = np.lexsort((top, -values), axis=-1)
            top = np.take_along_axis(top, order, axis=1)
            values = np.take_along_axis(values, order, axis=1)
            out.extend(r[v > 0].astype(np.int64) for r, v in zip(top, values, strict=True))
        return out


def item_knn(matrix: sp.csr_matrix, neighbours: int = 100, block: int = 512) -> ItemScorer:
    """Cosine item-item similarity on co-watches, ``neighbours`` per movie (sparse)."""
    n_items = matrix.shape[1]
    columns = matrix.tocsc()
    transposed = matrix.T.tocsr()
    norms = np.sqrt(np.asarray(columns.sum(axis=0)).ravel()).astype(np.float32)
    norms[norms == 0] = 1.0
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for lo in range(0, n_items, block):
        hi = min(lo + block, n_items)
        co = (transposed @ columns[:, lo:hi]).tocsc()  # co-watch counts: items x block, sparse
        co.sort_indices()
        col_of = np.repeat(np.arange(lo, hi), np.diff(co.indptr))
        data = co.data.astype(np.float32) / (norms[co.indices] * norms[col_of])
        data[co.indices == col_of] = 0.0  # no movie is its own neighbour
        # row lo + j of S: movie lo + j's most similar movies (cosine is symmetric, so column j
        # of the co-watch block is row lo + j); a user's candidates are their movies' neighbours
        for j in range(hi - lo):
            a, b = co.indptr[j], co.indptr[j + 1]
            values, items = data[a:b], co.indices[a:b]
            if b - a > neighbours:
                best = np.argpartition(-values, neighbours - 1)[:neighbours]
                values, items = values[best], items[best]
            positive = values > 0
            rows.append(np.full(int(positive.sum()), lo + j, np.int64))
            cols.append(items[positive])
            vals.append(values[positive])
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
