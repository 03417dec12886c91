"""pylstm on Dask: grid-search speed and Incremental accuracy.

Not a test: a script that prints (and optionally saves) figures. It needs the
``dask`` extra (``pip install "pylstm[dask]"``: ``dask[array]``, ``distributed``
and ``dask-ml``) and times two things on digits-as-sequences
(:func:`pylstm.datasets.load_digits_sequences`, 1797 x 8 steps x 8 features,
10 classes, a stratified 25% held out):

* **Grid search**: ``GridSearchCV`` over ``LSTMClassifier`` (``--hidden`` x
  ``--lr`` candidates, default 2 x 4 = 8, ``cv=3``, ``--max-iter`` epochs per
  fit) on the training part, run

  - with ``n_jobs=1`` in this process,
  - with ``n_jobs=--workers`` on joblib's own process pool (loky), for
    reference (``--no-loky`` skips it),
  - with ``n_jobs=-1`` under ``joblib.parallel_backend('dask')`` on a
    ``LocalCluster`` of ``--workers`` processes with one thread each, as Dask
    sets it up by default (or on the cluster at ``--scheduler``),
  - and the same on a second ``LocalCluster`` whose workers get glibc malloc
    settings that suit pylstm (``--no-malloc`` skips it):
    ``MALLOC_TRIM_THRESHOLD_=--malloc-trim`` (64 MiB) and
    ``MALLOC_MMAP_THRESHOLD_=--malloc-mmap`` (16 MiB). Dask's nanny starts its
    workers with ``MALLOC_TRIM_THRESHOLD_=65536``: the heap is given back to
    the system whenever 64 KiB at its top are free, and (as any explicit
    setting does) glibc's adaptive mmap threshold is switched off, so every
    temporary array above 128 KiB is mmap'd and unmapped again, and its pages
    fault on first touch. (pylstm keeps its work arrays between calls, so on
    this benchmark the two clusters now cost about the same CPU time; an
    earlier version, which allocated them on every call, took 1.6 times it.)

  The serial and loky runs are capped at one BLAS thread (threadpoolctl),
  which is what Dask's workers get (the nanny sets ``OMP_NUM_THREADS``,
  ``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` to 1), so all runs train
  bit-identical models: the script checks that ``cv_results_`` agree exactly.
  Each figure is the best of ``--repeats`` wall-clock times of
  ``GridSearchCV.fit`` (refit included; the runs alternate, so that they see
  the same background load), with the CPU seconds that this process and its
  children (the local workers) spent, a figure that other processes disturb
  less. The clusters are started, and pylstm imported on their workers,
  before timing.

* **Incremental**: ``dask_ml.wrappers.Incremental(LSTMClassifier(n_features=8))``
  trained on a Dask array of the training rows flattened to 64 values
  (``--chunk`` rows per block), ``--epochs`` passes (``Incremental.partial_fit``
  calls: one pass over the blocks in random order, each block one
  ``partial_fit`` epoch), against an in-memory ``fit`` with
  ``max_iter=--epochs``: held-out accuracy and time of each.

Other processes running meanwhile slow the parallel runs more than the
serial one (on 2 cores, one busy process leaves the two workers one core
between them). The header shows the load average, and each timing the share
of the CPUs that other processes took during it (``*`` above 15%); before each
run the script waits up to ``--quiet-wait`` seconds for that share to drop
below 15%.

Usage (from the repository root; the installed package is imported)::

    python benchmarks/bench_dask.py                       # ~2 min on 2 cores when quiet
    python benchmarks/bench_dask.py --workers 4 --max-iter 40
    python benchmarks/bench_dask.py --scheduler tcp://scheduler:8786
    python benchmarks/bench_dask.py --json benchmarks/results/dask.json
"""

import argparse
import json
import os
import platform
import time
import warnings

import numpy as np


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    p.add_argument("--scheduler", default=None,
                   help="address of an existing scheduler (then --workers is ignored)")
    p.add_argument("--hidden", type=int, nargs="+", default=[16, 32])
    p.add_argument("--lr", type=float, nargs="+", default=[0.002, 0.005, 0.01, 0.02])
    p.add_argument("--max-iter", type=int, default=20, help="epochs per grid-search fit")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-loky", action="store_true", help="skip the joblib process-pool run")
    p.add_argument("--malloc-trim", type=int, default=64 << 20,
                   help="MALLOC_TRIM_THRESHOLD_ of the second cluster's workers (bytes)")
    p.add_argument("--malloc-mmap", type=int, default=16 << 20,
                   help="MALLOC_MMAP_THRESHOLD_ of the second cluster's workers (bytes)")
    p.add_argument("--no-malloc", action="store_true", help="skip the second cluster")
    p.add_argument("--epochs", type=int, default=12, help="Incremental passes / in-memory epochs")
    p.add_argument("--chunk", type=int, default=150, help="rows per Dask block (Incremental)")
    p.add_argument("--inc-hidden", type=int, default=32)
    p.add_argument("--inc-lr", type=float, default=0.01)
    p.add_argument("--quiet-wait", type=float, default=30,
                   help="seconds to wait for other processes to go quiet before each run")
    p.add_argument("--json", default=None, help="write the figures to this file")
    return p.parse_args()


class CpuMeter:
    """Share of all CPUs taken by processes other than this one and its children
    (the LocalCluster's workers, joblib's process pool) over a stretch of time."""

    def __init__(self):
        import psutil  # installed with distributed

        self.psutil = psutil
        self.me = psutil.Process()

    def _ours(self):
        total = 0.0
        for proc in [self.me, *self.me.children(recursive=True)]:
            try:
                t = proc.cpu_times()
            except self.psutil.Error:
                continue
            total += t.user + t.system
        return total

    def _busy(self):
        t = self.psutil.cpu_times()
        return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)

    def start(self):
        self._t0, self._b0, self._o0 = time.perf_counter(), self._busy(), self._ours()

    def others(self):
        """Others' share of the CPUs since start()."""
        wall = time.perf_counter() - self._t0
        other = (self._busy() - self._b0) - (self._ours() - self._o0)
        return max(0.0, other / (wall * (os.cpu_count() or 1)))

    def ours(self):
        """CPU seconds of this process and its children since start()."""
        return self._ours() - self._o0

    def wait_quiet(self, timeout, threshold=0.15):
        deadline = time.perf_counter() + timeout
        while True:
            self.start()
            time.sleep(1.0)
            if self.others() < threshold or time.perf_counter() > deadline:
                return


def timed(fn, meter, quiet_wait):
    """Wall-clock time, our CPU seconds and others' CPU share of one call, and its result."""
    meter.wait_quiet(quiet_wait)
    meter.start()
    t0 = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - t0
    return wall, meter.ours(), meter.others(), result


def fmt_times(times, others):
    return ", ".join(f"{t:.2f}{'*' if o > 0.15 else ''} [{o:.0%}]"
                     for t, o in zip(times, others, strict=True))


def start_cluster(args, malloc=None):
    """(LocalCluster or None, Client) with pylstm imported on the workers.

    ``malloc``, a dict, overrides variables that the nanny sets before it
    spawns the workers (``distributed.nanny.pre-spawn-environ``). The nanny
    also writes those into this process's environment; that is undone here,
    so that joblib's own worker processes (the loky run) do not inherit them.
    """
    import dask
    from dask.distributed import Client, LocalCluster

    if args.scheduler:
        client = Client(args.scheduler, set_as_default=False)
        cluster = None
    else:
        cfg = {f"distributed.nanny.pre-spawn-environ.{name}": value
               for name, value in (malloc or {}).items()}
        before = dict(os.environ)
        try:
            with dask.config.set(cfg):
                cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1,
                                       processes=True, dashboard_address=None)
        finally:
            for name in set(os.environ) - set(before):
                del os.environ[name]
            os.environ.update(before)
        client = Client(cluster, set_as_default=False)
    client.run(lambda: __import__("pylstm") and None)  # import on the workers, untimed
    return cluster, client


def main():
    args = parse_args()
    import dask
    import dask.array as da
    import dask_ml
    import distributed
    import joblib
    import sklearn
    from dask_ml.wrappers import Incremental
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV, train_test_split
    from threadpoolctl import threadpool_limits

    import pylstm
    from pylstm import LSTMClassifier
    from pylstm.datasets import load_digits_sequences

    warnings.simplefilter("ignore", ConvergenceWarning)
    # The second cluster's scheduler serves its health checks on another port.
    warnings.filterwarnings("ignore", message="Port 8787 is already in use")
    meter = CpuMeter()
    X, y = load_digits_sequences(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=0, stratify=y)
    n, T, F = X_train.shape

    load = os.getloadavg()
    print(f"pylstm {pylstm.__version__}, dask {dask.__version__}, distributed "
          f"{distributed.__version__}, dask-ml {dask_ml.__version__}, scikit-learn "
          f"{sklearn.__version__}")
    print(f"{platform.platform()}, {os.cpu_count()} CPUs, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")

    clusters = {}
    try:
        t0 = time.perf_counter()
        clusters["dask"] = start_cluster(args)
        startup = time.perf_counter() - t0
        if not (args.scheduler or args.no_malloc):
            clusters["dask, malloc tuned"] = start_cluster(
                args, {"MALLOC_TRIM_THRESHOLD_": args.malloc_trim,
                       "MALLOC_MMAP_THRESHOLD_": args.malloc_mmap})
        nthreads = clusters["dask"][1].nthreads()
        n_workers = len(nthreads)
        print(f"cluster: {n_workers} workers, {sum(nthreads.values())} threads "
              f"({'scheduler ' + args.scheduler if args.scheduler else 'LocalCluster'}), "
              f"started in {startup:.1f} s")
        figures = {"cpus": os.cpu_count(), "loadavg_before": load, "workers": n_workers,
                   "cluster_startup_s": startup}

        # ------------------------------------------------------------ grid search
        grid = {"hidden_size": args.hidden, "learning_rate_init": args.lr}
        n_cand = len(args.hidden) * len(args.lr)
        est = LSTMClassifier(max_iter=args.max_iter, random_state=0)

        def search(n_jobs):
            return GridSearchCV(est, grid, cv=3, n_jobs=n_jobs, error_score="raise").fit(
                X_train, y_train)

        def serial():
            with threadpool_limits(limits=1, user_api="blas"):
                return search(1)

        def on_loky():
            with threadpool_limits(limits=1, user_api="blas"):
                return search(n_workers)

        def on_dask(client):
            def run():
                with joblib.parallel_backend("dask", client=client):
                    return search(-1)
            return run

        runs = {"n_jobs=1": serial}
        if not args.no_loky:
            runs[f"loky n_jobs={n_workers}"] = on_loky
        for name, (_, client) in clusters.items():
            runs[name] = on_dask(client)
        print(f"\nGridSearchCV: {n_cand} candidates x cv=3 = {3 * n_cand} fits of "
              f"{args.max_iter} epochs on {n} sequences (+ refit), best of {args.repeats}")
        print("  best wall-clock time, speed-up over n_jobs=1, CPU seconds of all our processes"
              "\n  (all times, [share of the CPUs other processes took meanwhile])")
        results = {name: {"times": [], "cpu": [], "others": []} for name in runs}
        for _ in range(args.repeats):  # alternate, so that all runs see the same load
            for name, fn in runs.items():
                wall, cpu, others, gs = timed(fn, meter, args.quiet_wait)
                results[name]["times"].append(wall)
                results[name]["cpu"].append(cpu)
                results[name]["others"].append(others)
                results[name]["search"] = gs
        gs1 = results["n_jobs=1"]["search"]
        base = min(results["n_jobs=1"]["times"])
        grid_fig = {}
        for name, r in results.items():
            best, cpu = min(r["times"]), min(r["cpu"])
            same = all(np.array_equal(r["search"].cv_results_[k], gs1.cv_results_[k])
                       for k in ("split0_test_score", "split1_test_score", "split2_test_score"))
            cpu_txt = "" if args.scheduler and name.startswith("dask") else f"cpu {cpu:5.1f} s"
            print(f"  {name:<18} {best:6.2f} s  x{base / best:4.2f}  {cpu_txt:<12} "
                  f"({fmt_times(r['times'], r['others'])}; identical scores: {same})")
            grid_fig[name] = {"best_s": best, "times_s": r["times"], "cpu_s": r["cpu"],
                              "others_cpu_share": r["others"], "speedup": base / best,
                              "identical_cv_results": same}
        print(f"  best params {gs1.best_params_}, cv accuracy {gs1.best_score_:.4f}")
        figures["grid_search"] = {"candidates": n_cand, "cv": 3, "max_iter": args.max_iter,
                                  "runs": grid_fig, "best_params": gs1.best_params_}

        # ------------------------------------------------------------ Incremental
        params = {"hidden_size": args.inc_hidden, "learning_rate_init": args.inc_lr,
                  "random_state": 0}
        X_da = da.from_array(X_train.reshape(n, T * F), chunks=(args.chunk, T * F))
        y_da = da.from_array(y_train, chunks=args.chunk)
        classes = np.unique(y_train)
        def incremental():
            with clusters["dask"][1].as_current():
                inc = Incremental(LSTMClassifier(n_features=F, **params),
                                  random_state=np.random.RandomState(0))
                for _ in range(args.epochs):
                    inc.partial_fit(X_da, y_da, classes=classes)
            return inc

        t_inc, _, o_inc, inc = timed(incremental, meter, args.quiet_wait)
        acc_inc = float(np.mean(inc.predict(X_test.reshape(len(X_test), T * F)) == y_test))
        t_mem, _, o_mem, mem = timed(
            lambda: LSTMClassifier(max_iter=args.epochs, **params).fit(X_train, y_train),
            meter, args.quiet_wait)
        acc_mem = float(mem.score(X_test, y_test))
        print(f"\nIncremental: {args.epochs} passes over {X_da.numblocks[0]} blocks of "
              f"<= {args.chunk} rows (n_features={F}, hidden_size={args.inc_hidden}) vs "
              f"in-memory fit, {args.epochs} epochs; held-out accuracy on {len(y_test)}")
        print(f"  Incremental   accuracy {acc_inc:.4f}   {fmt_times([t_inc], [o_inc])} s")
        print(f"  in-memory fit accuracy {acc_mem:.4f}   {fmt_times([t_mem], [o_mem])} s")
        print(f"  difference {acc_inc - acc_mem:+.4f}")
        figures["incremental"] = {"epochs": args.epochs, "blocks": X_da.numblocks[0],
                                  "chunk": args.chunk, "accuracy_incremental": acc_inc,
                                  "accuracy_in_memory": acc_mem, "time_incremental_s": t_inc,
                                  "time_in_memory_s": t_mem}
    finally:
        for cluster, client in clusters.values():
            client.close()
            if cluster is not None:
                cluster.close()

    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    figures["loadavg_after"] = load
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2, default=str)
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
