"""Strong non-ALS recommenders: item-kNN on co-watches and EASE, evaluated every run and served
when they win (:mod:`flixlake.batch.gate`).

Both learn from a binary matrix of the same pairs ALS learns from: ``X[u, i] = 1`` when user
``u`` liked movie ``i`` (confidence > 0) in the window -- before the test window when evaluated,
up to the run date when served (:mod:`flixlake.batch.recommenders`).

* **item-kNN** (item-based top-N, Deshpande & Karypis 2004): cosine similarity of movies'
  co-watch columns, ``S[i, j] = |U_i ∩ U_j| / sqrt(|U_i| |U_j|)``, keeping each movie's
  ``neighbours`` most similar ones; a user's score of ``j`` is the sum of ``S[i, j]`` over the
  movies ``i`` they liked (candidates: their movies' neighbours). Computed in sparse column
  blocks, so memory follows the co-watch counts, not ``movies²``.
* **EASE** (Steck, "Embarrassingly Shallow Autoencoders", WWW 2019): the closed form
  ``P = (XᵀX + λI)⁻¹``, ``B = -P / diag(P)``, ``diag(B) = 0``; score = ``X_u B``. Dense
  ``movies x movies``: only where it fits in memory (``ease_max_items``), else item-kNN alone.

Users whose scores are all zero (no liked movie, or none with neighbours) get no list here; the
evaluation fills those with the popularity list, as it does for ALS, and the service answers
them like new users. :meth:`ItemScorer.top_n` ranks blocks of users with numpy/scipy only, so
the same code runs on the driver (evaluation) and in Spark tasks (the batch view).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from flixlake.batch.topn import top_k_rows

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
    """A movies x movies weight matrix (sparse or dense); a user's scores = their row of X times it.

    The same object ranks the sampled users in evaluation (:meth:`recommend`, on the driver) and
    every user of the batch view (:meth:`top_n`, inside Spark tasks): what is measured is what
    is served.
    """

    name: str
    weights: sp.csr_matrix | np.ndarray

    @property
    def n_items(self) -> int:
        return int(self.weights.shape[0])

    def top_n(
        self,
        history: sp.csr_matrix,
        seen_lengths: np.ndarray,
        seen_movies: np.ndarray,
        n: int,
        block: int = 256,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` unseen movies per row of ``history``: ``(movie_idx int32, score float32)``.

        Best first, ties by lower movie index; only positive scores count, so a row without
        signal ends with movie -1 / score -inf (like :meth:`flixlake.batch.topn.ItemIndex.recommend`).
        Seen movies come CSR-style: row ``u`` saw ``seen_movies[sum(seen_lengths[:u]):][:len]``.
        Rows are scored ``block`` at a time, so memory stays ``block x movies`` at most.
        """
        m, n_items = history.shape[0], self.n_items
        if history.shape[1] != n_items:
            raise ValueError(f"history has {history.shape[1]} movies, the weights {n_items}")
        seen_lengths = np.asarray(seen_lengths, np.int64)
        if seen_lengths.shape != (m,):
            raise ValueError("seen_lengths needs one entry per row")
        seen_rows = np.repeat(np.arange(m, dtype=np.int64), seen_lengths)
        seen_cols = np.asarray(seen_movies, np.int64)
        if seen_cols.shape != seen_rows.shape:
            raise ValueError("seen_movies length differs from sum(seen_lengths)")
        inside = (seen_cols >= 0) & (seen_cols < n_items)
        seen_keys = seen_rows[inside] * n_items + seen_cols[inside]  # ascending rows
        kk = min(n, n_items)
        movies = np.full((m, kk), -1, np.int32)
        scores = np.full((m, kk), -np.inf, np.float32)
        if kk == 0 or m == 0:
            return movies, scores
        bounds = np.searchsorted(seen_keys, np.arange(0, m + block, block) * n_items)
        for b, lo in enumerate(range(0, m, block)):
            hi = min(lo + block, m)
            block_seen = seen_keys[bounds[b] : bounds[b + 1]] - lo * n_items
            product = history[lo:hi] @ self.weights
            if sp.issparse(product):  # item-kNN: a few hundred candidates per user
                found = sp.coo_matrix(product)
                rows = found.row.astype(np.int64)
                cols = found.col.astype(np.int64)
                values = found.data.astype(np.float32)
                keep = (values > 0) & ~np.isin(rows * n_items + cols, block_seen)
                rows, cols, values = rows[keep], cols[keep], values[keep]
                order = np.lexsort((cols, -values, rows))
                rows, cols, values = rows[order], cols[order], values[order]
                first = np.searchsorted(rows, np.arange(hi - lo))
                place = np.arange(rows.size) - first[rows]
                top = place < kk
                movies[lo + rows[top], place[top]] = cols[top]
                scores[lo + rows[top], place[top]] = values[top]
                continue
            dense = np.array(product, np.float32)  # EASE: every movie scored
            dense[dense <= 0] = -np.inf
            dense.reshape(-1)[block_seen] = -np.inf
            idx, val = top_k_rows(dense, kk)
            ok = np.isfinite(val)
            movies[lo:hi] = np.where(ok, idx, -1)
            scores[lo:hi] = val
        return movies, scores

    def recommend(
        self,
        history: sp.csr_matrix,
        seen: list[np.ndarray],
        k: int,
        block: int = 256,
    ) -> list[np.ndarray]:
        """Top-``k`` unseen movies per row of ``history`` as lists (empty without signal)."""
        lengths = np.array([s.size for s in seen], np.int64)
        values = np.concatenate(seen).astype(np.int64) if seen else _EMPTY
        movies, _ = self.top_n(history, lengths, values, k, block)
        return [row[row >= 0].astype(np.int64) for row in movies]


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


def fit_item_scorer(
    kind: str,
    users: np.ndarray,
    movies: np.ndarray,
    n_items: int,
    params: Mapping[str, Any],
) -> ItemScorer:
    """Item-kNN (``params["neighbours"]``) or EASE (``params["l2"]``) from liked ``(user, movie)``
    pairs; ``n_items`` movies (every ``movie_idx`` must be below it)."""
    _, rows = np.unique(np.asarray(users, np.int64), return_inverse=True)
    matrix = interaction_matrix(rows, np.asarray(movies, np.int64), n_items)
    if kind == "itemknn":
        return item_knn(matrix, int(params["neighbours"]))
    if kind == "ease":
        return ease(matrix, float(params["l2"]))
    raise ValueError(f"no item scorer of kind {kind!r}; expected 'itemknn' or 'ease'")
