"""pylstm on Dask: ``GridSearchCV`` on a ``LocalCluster`` against ``n_jobs=1`` and joblib's
processes, and ``Incremental`` against an in-memory fit (needs the ``dask`` extra).

See benchmarks/README.md. Usage: ``python benchmarks/bench_dask.py [--scheduler ADDRESS]``
"""

import argparse
import os
import sys
import time
import warnings

import _common as common
import numpy as np

import pylstm
from pylstm.datasets import load_digits_sequences


def cpu_seconds():
    """CPU seconds of this process and its children so far (psutil, from distributed)."""
    import psutil

    me, total = psutil.Process(), 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def start_cluster(args, malloc=None):
    """``(cluster or None, client)`` with pylstm imported on the workers.

    ``malloc`` overrides variables that the nanny sets before it spawns a worker. The
    nanny also writes them into this process's environment; that is undone here, so
    that the loky run's worker processes do not inherit them.
    """
    import dask
    from dask.distributed import Client, LocalCluster

    cluster = None
    if args.scheduler:
        client = Client(args.scheduler, set_as_default=False)
    else:
        before = dict(os.environ)
        try:
            with dask.config.set({f"distributed.nanny.pre-spawn-environ.{k}": v
                                  for k, v in (malloc or {}).items()}):
                cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1,
                                       processes=True, dashboard_address=None)
        finally:
            os.environ.clear()
            os.environ.update(before)
        client = Client(cluster, set_as_default=False)
    client.run(lambda: __import__("pylstm") and None)  # untimed
    return cluster, client


def grid_search(args, clusters, X, y):
    """Best wall time, speed-up and CPU seconds of each way to run the search; the
    runs alternate, and the scores of every run must equal the serial run's."""
    import joblib
    from sklearn.model_selection import GridSearchCV
    from threadpoolctl import threadpool_limits

    n_workers = len(clusters["dask"][1].nthreads())
    grid = {"hidden_size": args.hidden, "learning_rate_init": args.lr}

    def search(n_jobs, client=None):
        gs = GridSearchCV(pylstm.LSTMClassifier(max_iter=args.max_iter, random_state=0), grid,
                          cv=3, n_jobs=n_jobs, error_score="raise")
        if client is None:  # one BLAS thread per fit, as Dask's workers have
            with threadpool_limits(limits=1, user_api="blas"):
                return gs.fit(X, y)
        with joblib.parallel_backend("dask", client=client):
            return gs.fit(X, y)

    runs = {"n_jobs=1": lambda: search(1)}
    if not args.no_loky:
        runs[f"loky n_jobs={n_workers}"] = lambda: search(n_workers)
    for name, (_, client) in clusters.items():
        runs[name] = lambda client=client: search(-1, client)
    n_cand = len(args.hidden) * len(args.lr)
    print(f"GridSearchCV: {n_cand} candidates x cv=3 = {3 * n_cand} fits of {args.max_iter} "
          f"epochs on {len(y)} sequences (+ refit), {n_workers} workers, best of {args.repeats}")
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            c0, t0 = cpu_seconds(), time.perf_counter()
            gs = fn()
            times[name].append((time.perf_counter() - t0, cpu_seconds() - c0, gs.cv_results_))
    base, reference = min(t for t, _, _ in times["n_jobs=1"]), times["n_jobs=1"][0][2]
    for name, ts in times.items():
        best, cpu = min(t for t, _, _ in ts), min(c for _, c, _ in ts)
        same = all(np.array_equal(res[f"split{i}_test_score"], reference[f"split{i}_test_score"])
                   for _, _, res in ts for i in range(3))
        cpu_text = "" if args.scheduler and name.startswith("dask") else f"cpu {cpu:5.1f} s"
        print(f"  {name:<18} {best:6.2f} s  x{base / best:4.2f}  {cpu_text:<12} (all: "
              f"{', '.join(f'{t:.2f}' for t, _, _ in ts)}; identical scores: {same})")


def incremental(args, client, X_train, X_test, y_train, y_test):
    """``Incremental`` on a Dask array against an in-memory fit: accuracy and time."""
    import dask.array as da
    from dask_ml.wrappers import Incremental

    n, T, F = X_train.shape
    X_da = da.from_array(X_train.reshape(n, T * F), chunks=(args.chunk, T * F))
    y_da = da.from_array(y_train, chunks=args.chunk)
    params = {"hidden_size": 32, "learning_rate_init": 0.01, "random_state": 0}
    t0 = time.perf_counter()
    with client.as_current():
        inc = Incremental(pylstm.LSTMClassifier(n_features=F, **params),
                          random_state=np.random.RandomState(0))
        for _ in range(args.epochs):
            inc.partial_fit(X_da, y_da, classes=np.unique(y_train))
    t_inc = time.perf_counter() - t0
    acc_inc = float(np.mean(inc.predict(X_test.reshape(len(X_test), T * F)) == y_test))
    t0 = time.perf_counter()
    mem = pylstm.LSTMClassifier(max_iter=args.epochs, **params).fit(X_train, y_train)
    t_mem, acc_mem = time.perf_counter() - t0, float(mem.score(X_test, y_test))
    print(f"\nIncremental: {args.epochs} passes over {X_da.numblocks[0]} blocks of <= "
          f"{args.chunk} rows vs in-memory fit of {args.epochs} epochs; held-out accuracy")
    print(f"  Incremental   accuracy {acc_inc:.4f}   {t_inc:.2f} s")
    print(f"  in-memory fit accuracy {acc_mem:.4f}   {t_mem:.2f} s")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    p.add_argument("--scheduler", help="address of an existing scheduler (--workers ignored)")
    p.add_argument("--hidden", type=int, nargs="+", default=[16, 32])
    p.add_argument("--lr", type=float, nargs="+", default=[0.002, 0.005, 0.01, 0.02])
    p.add_argument("--max-iter", type=int, default=20, help="epochs per grid-search fit")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-loky", action="store_true", help="skip joblib's process pool")
    p.add_argument("--no-malloc", action="store_true", help="skip the second cluster")
    p.add_argument("--malloc-trim", type=int, default=64 << 20,
                   help="MALLOC_TRIM_THRESHOLD_ of the second cluster's workers (bytes)")
    p.add_argument("--malloc-mmap", type=int, default=16 << 20,
                   help="MALLOC_MMAP_THRESHOLD_ of the second cluster's workers (bytes)")
    p.add_argument("--epochs", type=int, default=12, help="Incremental passes, in-memory epochs")
    p.add_argument("--chunk", type=int, default=150, help="rows per Dask block (Incremental)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    args = common.apply_quick(p.parse_args(argv), hidden=[8], lr=[0.01], max_iter=1, repeats=1,
                              no_malloc=True, epochs=1, workers=1)
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split

    warnings.simplefilter("ignore", ConvergenceWarning)
    warnings.filterwarnings("ignore", message="Port 8787 is already in use")
    X, y = load_digits_sequences(return_X_y=True)
    split = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    common.start(argparse.Namespace(threads=None), "bench_dask.py: GridSearchCV on Dask, and "
                 "Incremental, with LSTMClassifier (serial and loky fits: one BLAS thread)", "no")
    clusters = {}
    try:
        clusters["dask"] = start_cluster(args)
        if not (args.scheduler or args.no_malloc):
            clusters["dask, malloc tuned"] = start_cluster(
                args, {"MALLOC_TRIM_THRESHOLD_": args.malloc_trim,
                       "MALLOC_MMAP_THRESHOLD_": args.malloc_mmap})
        grid_search(args, clusters, split[0], split[2])
        incremental(args, clusters["dask"][1], *split)
    finally:
        for cluster, client in clusters.values():
            client.close()
            if cluster is not None:
                cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
