"""Benchmark the whole-population top-N (flixlake.batch.topn) at full scale on random factors.

Prints the machine, then
1. numpy, one process with one BLAS thread (like a Spark worker), on a subset of users: the
   baseline (matmul + seen mask + ``np.argpartition`` + sort of the top n) against
   ``ItemIndex.recommend`` (same block size), checking both return the same movies and scores;
2. Spark: ``top_n_per_user`` for all users (factors and seen pairs generated and cached first,
   so the figure is the top-N job itself: seen-list aggregation, join, mapInArrow, 50M output
   rows into a no-op sink), plus a spot check of some users against a brute-force numpy answer.

    PYSPARK_PYTHON=.venv/bin/python .venv/bin/python bench/topn.py \
        [--users 1000000] [--items 27000] [--rank 32] [--n 50] [--subset 20000]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

# The numpy part stands for one Spark Python worker, which PySpark starts with OMP_NUM_THREADS
# set to spark.task.cpus (1): one BLAS thread per worker, one worker per core.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np


def machine_info() -> str:
    """CPU, memory, BLAS and library versions: figures mean nothing without them."""
    import pyspark

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(
                line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as fh:
            mem = f"{int(fh.readline().split()[1]) / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    blas = "?"
    try:
        config = np.show_config(mode="dicts")  # type: ignore[func-returns-value]
        blas_info = config["Build Dependencies"]["blas"]
        blas = f"{blas_info['name']} {blas_info['version']}"
    except Exception:  # informational only
        pass
    env = {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS_", "OMP_"))}
    return (
        f"machine: {platform.machine()} {cpu}, {os.cpu_count()} cpus, {mem} RAM, "
        f"{platform.system()} {platform.release()}\n"
        f"python {platform.python_version()}, numpy {np.__version__} ({blas}), "
        f"pyspark {pyspark.__version__}, env {env}"
    )


def baseline_top_n(
    users: np.ndarray,
    items_t: np.ndarray,
    seen_rows: np.ndarray,
    seen_cols: np.ndarray,
    n: int,
    block: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The obvious approach: per block matmul, mask seen, argpartition, sort the n winners."""
    m = users.shape[0]
    out_idx = np.empty((m, n), np.int64)
    out_val = np.empty((m, n), np.float32)
    bounds = np.searchsorted(seen_rows, np.arange(0, m + block, block))
    for b, start in enumerate(range(0, m, block)):
        stop = min(start + block, m)
        scores = users[start:stop] @ items_t
        lo, hi = bounds[b], bounds[b + 1]
        scores[seen_rows[lo:hi] - start, seen_cols[lo:hi]] = -np.inf
        part = np.argpartition(scores, -n, axis=1)[:, -n:]
        vals = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")
        out_idx[start:stop] = np.take_along_axis(part, order, axis=1)
        out_val[start:stop] = np.take_along_axis(vals, order, axis=1)
    return out_idx, out_val


def numpy_part(args: argparse.Namespace) -> None:
    from flixlake.batch.topn import _BLOCK_USERS, ItemIndex

    rng = np.random.default_rng(0)
    m = args.subset
    items = rng.standard_normal((args.items, args.rank), dtype=np.float32)
    users = rng.standard_normal((m, args.rank), dtype=np.float32)
    lengths = rng.poisson(args.seen, m)
    seen = rng.integers(0, args.items, int(lengths.sum()))
    seen_rows = np.repeat(np.arange(m), lengths)

    index = ItemIndex.build(np.arange(args.items), items, args.n)
    items_t = np.ascontiguousarray(items.T)
    best = {"baseline": (np.inf, np.inf), "ours": (np.inf, np.inf)}
    for _ in range(args.repeat):  # alternate, keep the best: other load on the machine is noise
        w0, c0 = time.perf_counter(), time.process_time()
        base_idx, base_val = baseline_top_n(users, items_t, seen_rows, seen, args.n, _BLOCK_USERS)
        w1, c1 = time.perf_counter(), time.process_time()
        movies, scores = index.recommend(users, lengths, seen)
        w2, c2 = time.perf_counter(), time.process_time()
        best["baseline"] = min(best["baseline"], (w1 - w0, c1 - c0))
        best["ours"] = min(best["ours"], (w2 - w1, c2 - c1))

    close_scores = np.allclose(scores, base_val, rtol=1e-5, atol=1e-5)
    same_movies = float(np.mean(movies == base_idx))
    scale = args.users / m
    print(
        f"\n[numpy, 1 process, {m:,} users x {args.items:,} items x rank {args.rank}, "
        f"top {args.n}, best of {args.repeat}; per {args.users:,} users = x{scale:g}]"
    )
    for name, label in (("baseline", "baseline argpartition"), ("ours", "flixlake top_k_rows")):
        wall, cpu = best[name]
        print(
            f"  {label:22s} wall {wall:6.2f} s, cpu {cpu:6.2f} s -> "
            f"{wall * scale:6.1f} s wall / {cpu * scale:6.1f} s cpu per {args.users:,} users"
        )
    speedup = best["baseline"][1] / best["ours"][1]
    print(
        f"  speed-up (cpu) {speedup:.2f}x; scores equal (1e-5): {close_scores}; "
        f"identical movie ids: {same_movies:.4%} (equal scores may swap places)"
    )


def spark_part(args: argparse.Namespace) -> None:
    from pyspark.sql import functions as F

    from flixlake.batch.topn import top_n_per_user
    from flixlake.config import load_settings
    from flixlake.ops.spark import build_spark_session

    home = tempfile.mkdtemp(prefix="flixlake-bench-")
    settings = load_settings(
        args.env,
        home=home,
        overrides={"spark": {"extra_conf": {"spark.ui.showConsoleProgress": "false"}}},
    )
    spark = build_spark_session(settings, app_name="bench-topn")
    parts = max(2, spark.sparkContext.defaultParallelism) * 4

    def factors(seed: int) -> F.Column:
        return F.array(*[F.randn(seed * 1000 + i).cast("float") for i in range(args.rank)])

    t0 = time.perf_counter()
    users = (
        spark.range(args.users, numPartitions=parts)
        .select(F.col("id").cast("int").alias("id"), factors(1).alias("features"))
        .persist()
    )
    items = (
        spark.range(args.items, numPartitions=2)
        .select(F.col("id").cast("int").alias("id"), factors(2).alias("features"))
        .persist()
    )
    seen = (
        spark.range(args.users, numPartitions=parts)
        .select(
            F.col("id").alias("user_id"),
            F.explode(
                F.sequence(F.lit(1), (F.rand(3) * (2 * args.seen - 1) + 1).cast("int"))
            ).alias("k"),
        )
        .select("user_id", (F.rand(4) * args.items).cast("int").alias("movie_idx"))
        .persist()
    )
    n_users, n_items, n_seen = users.count(), items.count(), seen.count()
    print(
        f"\n[spark {settings.spark.master}, {n_users:,} users x {n_items:,} items x rank "
        f"{args.rank}, {n_seen:,} seen pairs, top {args.n}] inputs cached in "
        f"{time.perf_counter() - t0:.1f} s"
    )

    t0 = time.perf_counter()
    top = top_n_per_user(spark, users, items, seen, args.n)
    top.write.format("noop").mode("overwrite").save()
    elapsed = time.perf_counter() - t0
    print(f"  top_n_per_user, all users, into a no-op sink: {elapsed:.1f} s")

    # spot check a few users against brute force
    check_ids = list(range(0, args.users, max(1, args.users // 50)))[:50]
    item_tab = items.orderBy("id").toArrow()
    item_mat = np.array(item_tab.column("features").to_pylist(), np.float32)
    user_rows = {
        r.id: np.array(r.features, np.float32)
        for r in users.where(F.col("id").isin(check_ids)).collect()
    }
    seen_rows: dict[int, set[int]] = {}
    for r in seen.where(F.col("user_id").isin(check_ids)).collect():
        seen_rows.setdefault(r.user_id, set()).add(r.movie_idx)
    got: dict[int, list[int]] = {}
    for r in top.where(F.col("user_id").isin(check_ids)).orderBy("user_id", "rank").collect():
        got.setdefault(r.user_id, []).append(r.movie_idx)
    mismatches = 0
    for uid in check_ids:
        scores = item_mat @ user_rows[uid]
        scores[list(seen_rows.get(uid, set()))] = -np.inf
        expected = np.argsort(-scores, kind="stable")[: args.n].tolist()
        mismatches += expected != got.get(uid)
    same = len(check_ids) - mismatches
    print(f"  spot check vs. numpy argsort: {same}/{len(check_ids)} users identical")
    spark.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=27_000)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--seen", type=int, default=13, help="mean seen movies per user")
    parser.add_argument("--subset", type=int, default=20_000, help="users for the numpy part")
    parser.add_argument("--repeat", type=int, default=3, help="numpy part repetitions")
    parser.add_argument("--env", default="local")
    parser.add_argument("--skip-spark", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    print(machine_info())
    numpy_part(args)
    if not args.skip_spark:
        spark_part(args)


if __name__ == "__main__":
    main()
