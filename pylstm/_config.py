"""What this pylstm was built with and runs on: :func:`show_config`."""

import platform
import sys

__all__ = ["show_config"]


def _blas_info():
    """threadpoolctl's description of the BLAS that the kernels call (SciPy's)."""
    from ._threads import _controller

    ctl = _controller()
    if not ctl:
        return {"name": "unknown (threadpoolctl is not installed)"}
    return [
        {
            "name": b.lib.internal_api,
            "version": b.lib.version,
            "architecture": getattr(b.lib, "architecture", None),
            "threading_layer": getattr(b.lib, "threading_layer", None),
            "num_threads": b.num_threads,
            "filepath": b.filepath,
        }
        for b in ctl[1]
    ]


def _config():
    from . import __version__, _lstm
    from ._threads import caller_threads, usable_cpus

    threads = min(_lstm.kernel_threads(), usable_cpus(), max(caller_threads(), 1))
    return {
        "version": __version__,
        "compiler": _lstm.compiler(),
        "simd": _lstm.simd(),
        "simd_available": _lstm.simd_levels(),
        "threads": threads,
        "blas": _blas_info(),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "system": platform.system(),
    }


def show_config(mode="stdout"):
    """Show how pylstm was built and what its kernels use on this machine.

    Like :func:`numpy.show_config`: the C compiler that built the kernels,
    the instruction-set level in use and those available, the threads a
    kernel call may use and the BLAS that the whole-sequence products call.

    Parameters
    ----------
    mode : {"stdout", "dicts"}, default="stdout"
        ``"stdout"`` prints the configuration; ``"dicts"`` returns it.

    Returns
    -------
    config : dict or None
        With ``mode="dicts"``, a dict with the keys ``"compiler"`` (name and
        version), ``"simd"`` (the level in use: ``"baseline"``, ``"avx2"``,
        ``"avx512"`` or ``"neon"``), ``"simd_available"`` (the levels this
        build and CPU support), ``"threads"`` (how many threads a kernel
        call may use), ``"blas"`` (threadpoolctl's description of SciPy's
        BLAS), and ``"version"``, ``"python"``, ``"machine"``, ``"system"``.

    Notes
    -----
    The level is chosen when pylstm is imported: the best that the CPU runs,
    capped by the environment variable ``PYLSTM_SIMD`` (one of
    ``baseline``, ``avx2``, ``avx512``, ``neon``). A level that the CPU or
    the build lacks falls back to the best available, with a warning; an
    unknown value is ignored, with a warning.

    Examples
    --------
    >>> import pylstm
    >>> config = pylstm.show_config(mode="dicts")
    >>> config["simd"] in config["simd_available"]
    True
    >>> sorted(k for k in config if k in {"compiler", "simd", "threads", "blas"})
    ['blas', 'compiler', 'simd', 'threads']
    """
    if mode not in ("stdout", "dicts"):
        raise ValueError(f"mode must be 'stdout' or 'dicts', got {mode!r}")
    config = _config()
    if mode == "dicts":
        return config
    width = max(len(k) for k in config)
    for key, value in config.items():
        if key == "blas" and isinstance(value, list):
            print(f"{key:<{width}} :")
            for lib in value:
                print("    " + ", ".join(f"{k}={v}" for k, v in lib.items()))
        else:
            shown = ", ".join(value) if isinstance(value, list) else value
            print(f"{key:<{width}} : {shown}")
    return None
