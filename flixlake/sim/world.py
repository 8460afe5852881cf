"""The synthetic world behind ``flixlake generate`` and the live simulator: movies, users, tastes.

A :class:`World` is deterministic per seed and fully vectorized (numpy): a world of 1,000,000
users and 27,000 movies builds in seconds and never materializes a users x movies matrix.

* Movies have an MLiP-style slug id (``the+silent+harbor+1987``), 1-3 genres, a Zipf-like
  popularity, a runtime and a latent vector built from their genres plus a personal twist.
* Users have MovieLens-style attributes (age, gender, occupation), a heavy-tailed activity
  level (expected visits per day) and a latent taste: a taste cluster, drawn with probabilities
  shifted by age, gender and occupation, plus a personal deviation.
* The choice model: a user picks movie ``m`` with probability proportional to
  ``popularity[m] ** pop_exponent * exp(affinity_scale * taste . movie_vector[m])``. It is
  sampled exactly for the user's cluster centroid (one CDF per cluster) and importance-resampled
  for the personal deviation, so sampling costs O(candidates), not O(movies), per choice.
* How much of a movie a user watches, and the rating they give, grow with the affinity.

That choice model is exactly ALS's model class (a low-rank taste . movie logit), so figures
measured on it flatter ALS. ``regime="trends"`` (``flixlake generate --regime trends``) is a
world that is *not* low-rank, shaped like real catalogs:

* choices follow the day's popularity: a steep Zipf base, a boost for movies released in the
  last weeks (recency) and bandwagon bursts (a movie's draw multiplied for a few days), with a
  mild genre affinity (the user's cluster's genre profile) as the only personal signal
  (:class:`TrendChooser`);
* many one-off users (``user_one_off``: one visit on their join day, never again);
* 1-2 star raters (``user_low_rater``) whose every rating is 1 or 2;
* most sessions are short samples (1-4 minutes, ``sample_share``); liking, hence minutes and stars, follows genre
  affinity plus noise, not the choice model.

>>> world = World.build(n_users=50, n_movies=40, seed=1)
>>> world.movie_ids[0].endswith(str(world.movie_years[0]))
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

GENRES: tuple[str, ...] = (
    "Action",
    "Adventure",
    "Animation",
    "Children",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
_GENRE_FREQ = np.array(
    [9, 6, 3, 4, 16, 6, 4, 20, 3, 1, 5, 2, 3, 8, 4, 8, 2, 1], dtype=np.float64
)  # MovieLens-like shares, in GENRES order

OCCUPATIONS: tuple[str, ...] = (
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
)
_OCC_FREQ = np.array(
    [11, 9, 4, 3, 12, 2, 4, 11, 0.3, 1.5, 3, 2, 6, 2.5, 5, 2.5, 4, 8, 1.2, 1.2, 4.7]
)  # MovieLens-1M-like shares, in OCCUPATIONS order

GENDERS: tuple[str, str] = ("M", "F")


def _words(text: str) -> tuple[str, ...]:
    """A word list written as text (easier to read and extend than a literal)."""
    return tuple(text.split())


_ADJECTIVES = _words(
    "silent hidden broken golden last dark lost crimson distant frozen wild secret burning "
    "hollow midnight quiet savage endless forgotten electric bitter brave cold crooked deadly "
    "empty falling final fragile gentle glass gray hungry invisible iron lonely lucky mad "
    "northern painted pale perfect restless rising scarlet shattered shining silver sleeping "
    "southern stolen strange sweet tender twisted velvet wandering wicked winter young "
    "ancient blue brilliant careless dancing eternal fearless fierce first green heavy little "
    "long new open red royal sacred small summer white"
)
_NOUNS = _words(
    "harbor river city road garden kingdom shadow storm mirror island forest highway ocean "
    "mountain valley station empire horizon promise memory stranger witness journey heart "
    "fire dream echo frontier game ghost hunter knight legend letter machine mission moon "
    "night orchard outlaw passage planet prince queen rain rebel return runner saint sea "
    "signal sky song soldier spring star sun tide tower town train treasure voyage war wave "
    "wind window wolf world border bridge castle circus code crown dance desert detective "
    "diary doctor dragon engine factory family farewell fortune friend gambit gate harvest "
    "heist house hotel lake lighthouse line mask meadow orbit painter paradise pilgrim prison "
    "puzzle raven reckoning rider sailor silence sister canyon carnival chase cipher comet "
    "compass"
)
# (pattern, probability); {a} adjective, {n}/{m} nouns
_TITLE_PATTERNS = (
    ("the {a} {n}", 0.30),
    ("{a} {n}", 0.20),
    ("{n} of the {m}", 0.15),
    ("the {n}", 0.10),
    ("{n} and {m}", 0.10),
    ("return to the {n}", 0.08),
    ("{n} {m}", 0.07),
)

# Genre preference shifts (in GENRES order) by user attribute: youth (positive under ~35),
# female (+1 F, -1 M) and occupation. They move users between taste clusters.
_YOUTH_SHIFT = np.array(
    [0.6, 0.3, 1.0, 0.3, 0.4, 0, -0.6, -0.5, 0.6, -0.8, 0.8, -0.2, -0.3, 0, 0.6, 0.2, -0.7, -0.8]
)
_FEMALE_SHIFT = np.array(
    [-0.5, -0.1, 0.1, 0.2, 0.2, -0.1, 0, 0.4, 0.1, 0, -0.2, 0.6, 0, 0.9, -0.4, -0.1, -0.6, -0.5]
)
_OCC_SHIFT_SPARSE: dict[str, dict[str, float]] = {
    "K-12 student": {"Children": 1.2, "Animation": 1.0},
    "college/grad student": {"Comedy": 0.3, "Sci-Fi": 0.3, "Horror": 0.3},
    "artist": {"Drama": 0.5, "Film-Noir": 0.8, "Documentary": 0.6},
    "writer": {"Drama": 0.6, "Film-Noir": 0.6, "Mystery": 0.4},
    "scientist": {"Sci-Fi": 0.8, "Documentary": 0.7},
    "programmer": {"Sci-Fi": 0.9, "Fantasy": 0.4},
    "technician/engineer": {"Sci-Fi": 0.5, "Action": 0.3},
    "homemaker": {"Children": 0.8, "Romance": 0.5},
    "retired": {"War": 0.5, "Western": 0.6, "Drama": 0.3},
    "academic/educator": {"Documentary": 0.8, "Drama": 0.3},
    "doctor/health care": {"Drama": 0.3, "Mystery": 0.3},
    "lawyer": {"Crime": 0.8, "Thriller": 0.4},
    "executive/managerial": {"Thriller": 0.3, "Crime": 0.3},
    "farmer": {"Western": 1.0},
}

REGIMES = ("lowrank", "trends")
ONE_OFF_FRACTION = 0.35  # trends: users with a single visit
LOW_RATER_FRACTION = 0.06  # trends: users who only give 1-2 stars
SAMPLE_SESSION_SHARE = 0.6  # trends: sessions that are a few minutes of sampling
_BLOCK = 131_072  # users per vectorized block (bounds temporary memory)
_SAMPLE_BLOCK = 8_192  # choices per block in MovieChooser.sample
_FALLBACK_DRAWS = 3  # extra candidate draws for users who have seen all their candidates

IntArray = NDArray[np.int64]


def _occupation_shift() -> NDArray[np.float64]:
    """Dense occupations x genres matrix of genre-preference shifts."""
    shift = np.zeros((len(OCCUPATIONS), len(GENRES)))
    for occ, genres in _OCC_SHIFT_SPARSE.items():
        for genre, value in genres.items():
            shift[OCCUPATIONS.index(occ), GENRES.index(genre)] = value
    return shift


def _occupation_logits() -> NDArray[np.float64]:
    """Occupation log-odds per age bucket (<18, 18-24, 25-54, 55+): students are young."""
    base = np.log(_OCC_FREQ / _OCC_FREQ.sum())
    logits = np.tile(base, (4, 1))
    k12, college, retired = (
        OCCUPATIONS.index("K-12 student"),
        OCCUPATIONS.index("college/grad student"),
        OCCUPATIONS.index("retired"),
    )
    working = np.ones(len(OCCUPATIONS), dtype=bool)
    working[[k12, college, retired, OCCUPATIONS.index("other")]] = False
    logits[0, working] -= 3.0
    logits[0, k12] += 4.0
    logits[0, retired] -= 10.0
    logits[1, college] += 1.5
    logits[1, k12] -= 3.0
    logits[1, retired] -= 8.0
    logits[2, k12] -= 10.0
    logits[2, retired] -= 4.0
    logits[2, college] -= 1.0
    logits[3, retired] += 2.5
    logits[3, k12] -= 10.0
    logits[3, college] -= 3.0
    return logits


def _softmax(logits: NDArray[np.float64]) -> NDArray[np.float64]:
    """Row-wise probabilities from unnormalized log-probabilities."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def _search(haystack: NDArray[np.float64], needles: NDArray[np.float64]) -> IntArray:
    """``searchsorted(side="right")`` with the needles sorted first: far fewer cache misses."""
    flat = needles.ravel()
    order = np.argsort(flat, kind="stable")
    pos = np.empty(flat.size, dtype=np.int64)
    pos[order] = np.searchsorted(haystack, flat[order], side="right")
    return pos.reshape(needles.shape)


def _unit_rows(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def _make_titles(n: int, years: NDArray[np.int64], rng: np.random.Generator) -> list[str]:
    """``n`` distinct lower-case titles; the slug adds the year, so title+year must be unique."""
    patterns = [p for p, _ in _TITLE_PATTERNS]
    probs = np.array([w for _, w in _TITLE_PATTERNS])
    chosen: dict[str, int] = {}  # "title year" -> index of the movie it was given to
    titles: list[str] = []
    while len(titles) < n:
        k = 2 * (n - len(titles)) + 16
        pat = rng.choice(len(patterns), size=k, p=probs / probs.sum())
        adj = rng.integers(0, len(_ADJECTIVES), size=k)
        noun = rng.integers(0, len(_NOUNS), size=k)
        noun2 = (noun + 1 + rng.integers(0, len(_NOUNS) - 1, size=k)) % len(_NOUNS)
        for p, a, n1, n2 in zip(
            pat.tolist(), adj.tolist(), noun.tolist(), noun2.tolist(), strict=True
        ):
            if len(titles) == n:
                break
            title = patterns[p].format(a=_ADJECTIVES[a], n=_NOUNS[n1], m=_NOUNS[n2])
            key = f"{title} {years[len(titles)]}"
            if key not in chosen:
                chosen[key] = len(titles)
                titles.append(title)
    return titles


@dataclass(frozen=True, eq=False)
class World:
    """Movies, users and their tastes; arrays are indexed by movie index and user index.

    User ids are ``1..n_users`` (user index = user id - 1); movie indices are ``0..n_movies-1``
    and ``movie_ids`` holds their slugs.
    """

    seed: int
    pop_exponent: float
    affinity_scale: float
    movie_ids: list[str]
    movie_titles: list[str]
    movie_years: NDArray[np.int16]
    movie_genres: NDArray[np.bool_]  # movies x len(GENRES)
    movie_popularity: NDArray[np.float64]  # sums to 1
    movie_runtime: NDArray[np.int16]  # minutes
    movie_vectors: NDArray[np.float32]  # movies x dim
    user_age: NDArray[np.int16]
    user_gender: NDArray[np.int8]  # index into GENDERS
    user_occupation: NDArray[np.int8]  # index into OCCUPATIONS
    user_activity: NDArray[np.float32]  # expected visits per day
    user_cluster: NDArray[np.int16]
    user_taste: NDArray[np.float32]  # users x dim
    cluster_taste: NDArray[np.float32]  # clusters x dim
    cluster_genres: NDArray[np.float64]  # clusters x len(GENRES), each row sums to 1
    affinity_mean: float
    affinity_std: float
    regime: str  # "lowrank" (the taste model above) | "trends"
    sample_share: float  # trends: share of sessions that are a few minutes of sampling
    user_one_off: NDArray[np.bool_]  # trends: one visit, on the join day
    user_low_rater: NDArray[np.bool_]  # trends: rates 1-2 stars only

    @property
    def n_users(self) -> int:
        return int(self.user_age.shape[0])

    @property
    def n_movies(self) -> int:
        return len(self.movie_ids)

    @property
    def dim(self) -> int:
        return int(self.movie_vectors.shape[1])

    @classmethod
    def build(
        cls,
        n_users: int,
        n_movies: int,
        seed: int,
        *,
        dim: int = 16,
        n_clusters: int = 64,
        mean_activity: float = 0.3,
        pop_exponent: float = 0.3,
        affinity_scale: float = 12.0,
        regime: str = "lowrank",
        sample_share: float = SAMPLE_SESSION_SHARE,
    ) -> World:
        """Build the world for ``seed``; same arguments, same world."""
        if n_users < 1 or n_movies < 1:
            raise ValueError(f"need at least one user and one movie, got {n_users}, {n_movies}")
        if regime not in REGIMES:
            raise ValueError(f"regime must be one of {', '.join(REGIMES)}, got {regime!r}")
        rng = np.random.default_rng([seed, 0])
        genre_vectors = _unit_rows(rng.normal(size=(len(GENRES), dim)))

        # movies
        years = np.clip(2026 - np.floor(rng.exponential(14.0, n_movies)), 1930, 2026).astype(
            np.int64
        )
        titles = _make_titles(n_movies, years, rng)
        n_genres = rng.choice(3, size=n_movies, p=[0.4, 0.4, 0.2]) + 1
        keys = np.log(_GENRE_FREQ / _GENRE_FREQ.sum()) + rng.gumbel(size=(n_movies, len(GENRES)))
        rank_in_movie = np.argsort(np.argsort(-keys, axis=1), axis=1)
        movie_genres = rank_in_movie < n_genres[:, None]
        noise = rng.normal(scale=1 / np.sqrt(dim), size=(n_movies, dim))
        movie_vectors = _unit_rows(movie_genres @ genre_vectors) + 0.5 * noise
        pop_key = rng.gumbel(size=n_movies) + 0.03 * (years - 2000)
        pop_rank = np.argsort(np.argsort(-pop_key))
        popularity = 1.0 / (pop_rank + 1.0)
        runtime = np.rint(rng.normal(108, 20, n_movies))
        runtime -= 10 * movie_genres[:, GENRES.index("Documentary")]  # documentaries are shorter
        runtime = np.clip(runtime, 80, 180)

        # taste clusters: sparse genre profiles with a centroid in taste space
        alpha = 0.25 * len(GENRES) * _GENRE_FREQ / _GENRE_FREQ.sum()
        cluster_genres = rng.dirichlet(alpha, size=n_clusters)
        cluster_weight = rng.dirichlet(np.full(n_clusters, 2.0))
        cluster_taste = _unit_rows(cluster_genres @ genre_vectors) + 0.45 * rng.normal(
            scale=1 / np.sqrt(dim), size=(n_clusters, dim)
        )

        # users: attributes, then a taste cluster drawn per attribute combination (at most
        # 68 ages x 2 genders x 21 occupations), so a million users need no big temporaries
        age = np.clip(np.rint(14 + rng.gamma(2.0, 8.5, n_users)), 13, 80).astype(np.int16)
        gender = (rng.random(n_users) < 0.38).astype(np.int8)  # 1 = F
        activity = rng.lognormal(0.0, 1.1, n_users)
        activity = np.minimum(activity * (mean_activity / activity.mean()), 8.0)
        bucket = np.digitize(age, [18, 25, 55])
        occ_cdf = np.cumsum(_softmax(_occupation_logits()), axis=1)
        occ_cdf[:, -1] = 1.0
        flat_occ = (occ_cdf + np.arange(4)[:, None]).ravel()
        occ = _search(flat_occ, bucket + rng.random(n_users))
        occupation = np.minimum(occ - bucket * len(OCCUPATIONS), len(OCCUPATIONS) - 1)
        ages = np.arange(13, 81)
        combo_age, combo_gender, combo_occ = (
            g.ravel() for g in np.meshgrid(ages, [0, 1], np.arange(len(OCCUPATIONS)), indexing="ij")
        )
        combo_shift = (
            np.clip((35 - combo_age) / 15, -1.5, 1.5)[:, None] * _YOUTH_SHIFT
            + np.where(combo_gender == 1, 1.0, -1.0)[:, None] * _FEMALE_SHIFT
            + _occupation_shift()[combo_occ]
        )
        cluster_cdf = np.cumsum(
            _softmax(np.log(cluster_weight) + 1.5 * combo_shift @ cluster_genres.T), axis=1
        )
        cluster_cdf[:, -1] = 1.0
        combo = ((age.astype(np.int64) - 13) * 2 + gender) * len(OCCUPATIONS) + occupation
        flat_cluster = (cluster_cdf + np.arange(len(combo_shift))[:, None]).ravel()
        drawn = _search(flat_cluster, combo + rng.random(n_users))
        cluster = np.minimum(drawn - combo * n_clusters, n_clusters - 1)
        combo_taste = 0.1 * _unit_rows(combo_shift @ genre_vectors)
        taste = np.empty((n_users, dim), dtype=np.float32)
        for lo in range(0, n_users, _BLOCK):
            hi = min(lo + _BLOCK, n_users)
            personal = rng.normal(scale=1 / np.sqrt(dim), size=(hi - lo, dim))
            taste[lo:hi] = (
                cluster_taste[cluster[lo:hi]] + 0.35 * personal + combo_taste[combo[lo:hi]]
            )

        # affinity scale for outcomes, from random pairs
        n_pairs = 20_000
        pu = rng.integers(0, n_users, n_pairs)
        pm = rng.integers(0, n_movies, n_pairs)
        sample = np.einsum("ij,ij->i", taste[pu], movie_vectors[pm].astype(np.float32))
        # the trends regime's user kinds: their own stream, so "lowrank" worlds stay as they were
        kinds = np.random.default_rng([seed, 7]).random((2, n_users))
        one_off = kinds[0] < ONE_OFF_FRACTION if regime == "trends" else np.zeros(n_users, bool)
        low = kinds[1] < LOW_RATER_FRACTION if regime == "trends" else np.zeros(n_users, bool)
        return cls(
            seed=seed,
            pop_exponent=pop_exponent,
            affinity_scale=affinity_scale,
            movie_ids=[
                f"{t.replace(' ', '+')}+{y}" for t, y in zip(titles, years.tolist(), strict=True)
            ],
            movie_titles=[
                t.title().replace(" Of ", " of ").replace(" And ", " and ") for t in titles
            ],
            movie_years=years.astype(np.int16),
            movie_genres=movie_genres,
            movie_popularity=popularity / popularity.sum(),
            movie_runtime=runtime.astype(np.int16),
            movie_vectors=movie_vectors.astype(np.float32),
            user_age=age,
            user_gender=gender,
            user_occupation=occupation.astype(np.int8),
            user_activity=activity.astype(np.float32),
            user_cluster=cluster.astype(np.int16),
            user_taste=taste,
            cluster_taste=cluster_taste.astype(np.float32),
            cluster_genres=cluster_genres,
            affinity_mean=float(sample.mean()),
            affinity_std=float(sample.std()) or 1.0,
            regime=regime,
            sample_share=sample_share,
            user_one_off=one_off,
            user_low_rater=low & ~one_off,
        )

    def movie_genre_names(self, movie: int) -> list[str]:
        """The genres of one movie, in GENRES order (for the catalog metadata)."""
        return [GENRES[g] for g in np.flatnonzero(self.movie_genres[movie])]

    def affinity(self, users: IntArray, movies: IntArray) -> NDArray[np.float32]:
        """Taste . movie vector for each (user index, movie index) pair."""
        return np.einsum("ij,ij->i", self.user_taste[users], self.movie_vectors[movies])

    def chooser(self, available: NDArray[np.bool_] | None = None) -> MovieChooser:
        """A sampler of movie choices restricted to ``available`` movies (all by default)."""
        return MovieChooser(self, available)

    def genre_affinity(self, users: IntArray, movies: IntArray) -> NDArray[np.float64]:
        """log of the user's cluster's share of the movie's genres (trends regime's taste)."""
        profile = self.cluster_genres[self.user_cluster[users].astype(np.int64)]
        genres = self.movie_genres[movies]
        share = (profile * genres).sum(axis=-1) / np.maximum(genres.sum(axis=-1), 1)
        return np.asarray(np.log(share + 0.02), np.float64)

    def watch_outcome(
        self, users: IntArray, movies: IntArray, rng: np.random.Generator
    ) -> tuple[IntArray, IntArray, NDArray[np.bool_]]:
        """Minutes watched (1..runtime), the rating it would get (1..5) and whether it is rated."""
        if self.regime == "trends":
            return self._trends_outcome(users, movies, rng)
        z = (self.affinity(users, movies) - self.affinity_mean) / self.affinity_std
        liking = 0.7 * z + rng.normal(0.0, 0.8, size=len(users))
        completion = 1.0 / (1.0 + np.exp(-2.0 * (liking - 1.8)))
        runtime = self.movie_runtime[movies].astype(np.int64)
        minutes = np.clip(np.ceil(completion * runtime), 1, runtime).astype(np.int64)
        rating = np.clip(np.rint(1.95 + 1.1 * liking), 1, 5).astype(np.int64)
        rated = rng.random(len(users)) < 0.1 + 0.35 * completion
        return minutes, rating, rated

    def _trends_outcome(
        self, users: IntArray, movies: IntArray, rng: np.random.Generator
    ) -> tuple[IntArray, IntArray, NDArray[np.bool_]]:
        n = len(users)
        liking = 0.6 * (self.genre_affinity(users, movies) + 1.5) + rng.normal(0.0, 1.0, n)
        runtime = self.movie_runtime[movies].astype(np.int64)
        sample = rng.random(n) < self.sample_share  # browsed a few minutes and left
        completion = 1.0 / (1.0 + np.exp(-2.0 * (liking - 0.5)))
        full = np.ceil(completion * runtime)
        minutes = np.where(sample, rng.integers(1, 5, n), full)
        minutes = np.clip(minutes, 1, runtime).astype(np.int64)
        rating = np.clip(np.rint(3.0 + 0.9 * liking), 1, 5).astype(np.int64)
        low = self.user_low_rater[users]
        rating = np.where(low, rng.integers(1, 3, n), rating)
        rated = rng.random(n) < np.where(sample, 0.05, 0.25) + 0.4 * low
        return minutes, rating, rated


class SeenPairs:
    """The (user, movie) pairs already watched, as sorted int64 keys: cheap for millions."""

    def __init__(self, n_movies: int) -> None:
        self._n_movies = n_movies
        self._keys: NDArray[np.int64] = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return int(self._keys.size)

    def _key(self, users: IntArray, movies: IntArray) -> NDArray[np.int64]:
        return np.asarray(users, np.int64) * self._n_movies + np.asarray(movies, np.int64)

    def contains(self, users: IntArray, movies: IntArray) -> NDArray[np.bool_]:
        """Whether each (user, movie) pair (broadcast together) was seen."""
        keys = self._key(users, movies)
        if self._keys.size == 0:
            return np.zeros(keys.shape, dtype=bool)
        pos = np.minimum(np.searchsorted(self._keys, keys), self._keys.size - 1)
        return np.asarray(self._keys[pos] == keys)

    def add(self, users: IntArray, movies: IntArray) -> None:
        """Record pairs as seen (duplicates are kept once)."""
        merged = np.concatenate([self._keys, np.sort(self._key(users, movies))])
        merged.sort(kind="stable")  # two sorted runs: a linear merge
        keep = np.ones(merged.size, dtype=bool)
        keep[1:] = merged[1:] != merged[:-1]
        self._keys = merged[keep]


class MovieChooser:
    """Samples movie choices from the world's choice model, for many users at once.

    Exact for each taste cluster (one CDF per cluster over the available movies); the user's
    personal deviation from the cluster is applied by importance resampling among
    ``n_candidates`` draws, which also skips movies the user has already seen.
    """

    def __init__(self, world: World, available: NDArray[np.bool_] | None = None) -> None:
        self.world = world
        n_movies = world.n_movies
        mask = np.ones(n_movies, dtype=bool) if available is None else np.asarray(available)
        if not mask.any():
            raise ValueError("no movie is available to choose from")
        logits = world.pop_exponent * np.log(world.movie_popularity)[None, :] + (
            world.affinity_scale * (world.cluster_taste @ world.movie_vectors.T).astype(np.float64)
        )
        logits[:, ~mask] = -np.inf
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        self.cluster_probs = probs  # clusters x movies
        cdf = np.cumsum(probs, axis=1)
        cdf[:, -1] = 1.0
        # row c of the CDF lives in [c, c + 1]: one searchsorted serves every cluster
        offsets = np.arange(probs.shape[0], dtype=np.float64)[:, None]
        self._flat_cdf = np.asarray((cdf + offsets).ravel(), dtype=np.float64)
        self._available = mask

    def sample(
        self,
        users: IntArray,
        rng: np.random.Generator,
        seen: SeenPairs | None = None,
        n_candidates: int = 16,
    ) -> IntArray:
        """One movie per user index in ``users`` (seen movies avoided while candidates last)."""
        users = np.asarray(users, dtype=np.int64)
        chosen = np.empty(users.size, dtype=np.int64)
        for lo in range(0, users.size, _SAMPLE_BLOCK):
            hi = min(lo + _SAMPLE_BLOCK, users.size)
            chosen[lo:hi] = self._sample_block(users[lo:hi], rng, seen, n_candidates)
        return chosen

    def _sample_block(
        self, users: IntArray, rng: np.random.Generator, seen: SeenPairs | None, n_candidates: int
    ) -> IntArray:
        chosen = self._draw(users, rng, seen, n_candidates, uniform=False)
        # users whose candidates were all seen already: draw again, at last among all movies
        for attempt in range(_FALLBACK_DRAWS):
            stuck = np.flatnonzero(chosen < 0)
            if stuck.size == 0:
                break
            uniform = attempt == _FALLBACK_DRAWS - 1
            chosen[stuck] = self._draw(users[stuck], rng, seen, n_candidates, uniform)
        stuck = np.flatnonzero(chosen < 0)  # has seen every candidate: watches one again
        if stuck.size:
            chosen[stuck] = self._draw(users[stuck], rng, None, n_candidates, uniform=False)
        return chosen

    def _draw(
        self,
        users: IntArray,
        rng: np.random.Generator,
        seen: SeenPairs | None,
        n_candidates: int,
        uniform: bool,
    ) -> IntArray:
        """Draw candidates (cluster CDF, or uniform) and resample one; -1 if all were seen."""
        world = self.world
        n_movies = world.n_movies
        clusters = world.user_cluster[users].astype(np.int64)
        if uniform:
            pool = np.flatnonzero(self._available)
            candidates = pool[rng.integers(0, pool.size, (users.size, n_candidates))]
        else:
            u = rng.random((users.size, n_candidates))
            flat = _search(self._flat_cdf, clusters[:, None] + u)
            candidates = np.clip(flat - clusters[:, None] * n_movies, 0, n_movies - 1)
            candidates = np.where(self._available[candidates], candidates, candidates[:, :1])
        deviation = world.user_taste[users] - world.cluster_taste[clusters]
        log_w = world.affinity_scale * np.einsum(
            "sd,scd->sc", deviation, world.movie_vectors[candidates]
        ).astype(np.float64)
        if seen is not None and len(seen):
            log_w[seen.contains(users[:, None], candidates)] = -np.inf
        pick = np.argmax(log_w + rng.gumbel(size=log_w.shape), axis=1)
        chosen = candidates[np.arange(users.size), pick]
        return np.where(np.isneginf(log_w).all(axis=1), -1, chosen)

    def top_movies(self, k: int) -> NDArray[np.int64]:
        """Each cluster's ``k`` most likely movies, best first (clusters x k)."""
        k = min(k, int(self._available.sum()))
        top = np.argpartition(-self.cluster_probs, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(self.cluster_probs, top, axis=1), axis=1)
        return np.take_along_axis(top, order, axis=1)


class TrendChooser:
    """The trends regime's choices on one day: popularity x recency x bursts, then genre taste.

    ``day_weight`` (movies) is the day's draw of each movie; candidates are drawn from it and one
    is resampled by ``exp(genre_beta * genre_affinity)``, skipping seen movies while candidates
    last (as :class:`MovieChooser` does). ``top_movies`` is the day's trending list, the same for
    every cluster.
    """

    def __init__(self, world: World, day_weight: NDArray[np.float64], genre_beta: float = 1.0):
        if not (day_weight > 0).any():
            raise ValueError("no movie is available to choose from")
        self.world = world
        self.genre_beta = genre_beta
        probs = day_weight / day_weight.sum()
        self.probs = probs
        cdf = np.cumsum(probs)
        cdf[-1] = 1.0
        self._cdf = cdf

    def sample(
        self,
        users: IntArray,
        rng: np.random.Generator,
        seen: SeenPairs | None = None,
        n_candidates: int = 16,
    ) -> IntArray:
        """One movie per user index in ``users``."""
        users = np.asarray(users, dtype=np.int64)
        chosen = np.empty(users.size, dtype=np.int64)
        for lo in range(0, users.size, _SAMPLE_BLOCK):
            hi = min(lo + _SAMPLE_BLOCK, users.size)
            block = users[lo:hi]
            candidates = np.minimum(
                np.searchsorted(self._cdf, rng.random((block.size, n_candidates)), side="right"),
                self.probs.size - 1,
            )
            log_w = self.genre_beta * self.world.genre_affinity(block[:, None], candidates)
            if seen is not None and len(seen):
                log_w[seen.contains(block[:, None], candidates)] = -np.inf
            all_seen = np.isneginf(log_w).all(axis=1)
            log_w[all_seen] = 0.0  # seen them all: watches one again
            pick = np.argmax(log_w + rng.gumbel(size=log_w.shape), axis=1)
            chosen[lo:hi] = candidates[np.arange(block.size), pick]
        return chosen

    def top_movies(self, k: int) -> NDArray[np.int64]:
        """The day's ``k`` most drawn movies, best first, for every taste cluster."""
        k = min(k, int((self.probs > 0).sum()))
        top = np.argsort(-self.probs, kind="stable")[:k]
        return np.tile(top, (self.world.cluster_taste.shape[0], 1))
