"""Small Sphinx hooks of the pylstm documentation.

* API pages show pylstm's own methods: members that scikit-learn's base
  classes contribute (``get_params``, ``set_params``, the metadata-routing
  ``set_*_request`` methods) are left out. Their docstrings point into
  scikit-learn's user guide, which an offline build cannot link to, and they
  are documented there.
* ``.. benchmark-tables::`` renders the JSON summaries that ``benchmarks/bench_lstm.py``,
  ``bench_fit.py`` and ``bench_lm.py`` write with ``--json`` into
  ``benchmarks/results/`` (the committed runs, and any run since) as tables, or says
  that there are none.
* :class:`GalleryOrder` orders the gallery's examples.
"""

import json
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective


class GalleryOrder:
    """Order of the gallery examples: from first steps to inner workings.

    Used as ``sphinx_gallery_conf["within_subsection_order"]`` (by name, so
    that the configuration stays picklable). Files not listed come last, by
    name.
    """

    ORDER = (
        "plot_digits.py",
        "plot_forecasting.py",
        "plot_streaming_sensor.py",
        "plot_adding_problem.py",
        "plot_gates.py",
        "plot_text_generation.py",
        "plot_agreement.py",
        "plot_benchmark.py",
    )

    def __init__(self, src_dir):
        self.src_dir = src_dir

    def __call__(self, filename):
        name = Path(filename).name
        rank = self.ORDER.index(name) if name in self.ORDER else len(self.ORDER)
        return (rank, name)

    def __repr__(self):
        return f"{type(self).__name__}()"


def _skip_foreign_members(app, what, name, obj, skip, options):
    """Skip class members that scikit-learn (not pylstm) defines.

    autodoc calls this with ``what='class'`` for the members of a class;
    autosummary, when it lists a class's methods for the template, with the
    member's own type (``'method'``).
    """
    module = getattr(obj, "__module__", None) or ""
    if module.startswith("sklearn."):
        return True
    return None


def _ms(value):
    return "-" if value is None else f"{value:.3g}"


def _ratio(value):
    return "-" if value is None else f"{value:.2f}"


def _environment_line(env):
    parts = []
    if env.get("cpu"):
        parts.append(str(env["cpu"]))
    if env.get("cpu_count"):
        parts.append(f"{env['cpu_count']} CPUs")
    if env.get("threads") not in (None, ""):
        parts.append(f"threads: {env['threads']}")
    for lib in ("numpy", "scipy", "torch"):
        value = env.get(lib)
        if isinstance(value, dict):
            value = value.get("version")
        if value:
            parts.append(f"{lib} {value}")
    return "; ".join(parts)


def _list_table(title, header, rows):
    lines = [f".. list-table:: {title}", "   :header-rows: 1", ""]
    for row in [header] + rows:
        lines.append(f"   * - {row[0]}")
        lines.extend(f"     - {cell}" for cell in row[1:])
    return lines + [""]


def _lstm_table(name, data):
    rows = []
    for r in data["timings"]:
        cells = [r.get(impl) or {} for impl in ("pylstm", "numpy", "torch")]
        rows.append([r["case"], r["dtype"], r["mode"], str(r.get("threads") or "-")]
                    + [_ms(c.get("median_ms")) for c in cells]
                    + [_ratio(r.get("numpy_over_pylstm")), _ratio(r.get("torch_over_pylstm"))])
    header = ["case (BxTxIxH)", "dtype", "mode", "threads", "pylstm ms", "NumPy ms", "torch ms",
              "NumPy / pylstm", "torch / pylstm"]
    return _list_table(f"``{name}`` (bench_lstm.py): {_environment_line(data['environment'])}",
                       header, rows)


def _fit_table(name, data):
    rows = []
    for r in data["results"]:
        pl, th = r.get("pylstm") or {}, r.get("torch") or {}
        rows.append([r["case"], str(r.get("hidden", "")), str(r.get("batch", "")), r["dtype"],
                     _ratio(pl.get("epochs_per_s")), _ratio(th.get("epochs_per_s")),
                     _ratio(r.get("ratio"))])
    header = ["case", "H", "batch", "dtype", "pylstm epochs/s", "torch epochs/s",
              "pylstm / torch"]
    return _list_table(f"``{name}`` (bench_fit.py): {_environment_line(data['environment'])}",
                       header, rows)


def _lm_table(name, data):
    rows = []
    for r in data["results"]:
        for mode in ("train", "generate"):
            entry = r.get(mode) or {}
            pl, th = entry.get("pylstm") or {}, entry.get("torch") or {}
            rows.append([str(r["hidden"]), str(r["layers"]), mode,
                         f"{pl['tokens_per_s']:,.0f}" if "tokens_per_s" in pl else "-",
                         f"{th['tokens_per_s']:,.0f}" if "tokens_per_s" in th else "-",
                         _ratio(entry.get("ratio"))])
    header = ["H", "layers", "mode", "pylstm tokens/s", "torch tokens/s", "pylstm / torch"]
    return _list_table(f"``{name}`` (bench_lm.py): {_environment_line(data['environment'])}",
                       header, rows)


class BenchmarkTables(SphinxDirective):
    """Tables of the benchmark results under ``benchmarks/results/``, if any."""

    has_content = False

    def run(self):
        folder = Path(self.env.srcdir).parent / "benchmarks" / "results"
        # Re-read this page when result files come or go (a missing folder
        # counts as changed, so the page is then re-read on every build).
        self.env.note_dependency(str(folder))
        lines = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            self.env.note_dependency(str(path))
            try:
                data = json.loads(path.read_text())
                if "timings" in data:
                    lines += _lstm_table(path.name, data)
                elif "results" in data and data["results"] and "layers" in data["results"][0]:
                    lines += _lm_table(path.name, data)
                elif "results" in data:
                    lines += _fit_table(path.name, data)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # not a benchmark result file
        if not lines:
            para = nodes.paragraph(
                text="No benchmark result files are present in this build's "
                     "benchmarks/results/ folder. Run the benchmarks as shown below to "
                     "produce them; the gallery's benchmark example measures a few cases "
                     "live instead.")
            return [para]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source="benchmark-tables"),
                                self.content_offset, container)
        return container.children


def setup(app):
    app.add_directive("benchmark-tables", BenchmarkTables)
    app.connect("autodoc-skip-member", _skip_foreign_members)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
