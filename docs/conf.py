"""Sphinx configuration of the pylstm documentation.

Build the site (warnings are errors) from the repository root with::

    pip install ".[docs]" && sphinx-build -W -b html docs docs/_build/html

The gallery (``docs/examples/plot_*.py``) is executed during the build and
written to ``docs/auto_examples/``; the API pages are generated into
``docs/generated/``. Both are build outputs, ignored by git.

Intersphinx links to NumPy, SciPy, scikit-learn and Python are only made when
``PYLSTM_DOCS_ONLINE=1`` is set: fetching the inventories needs the internet,
and an offline build (CI) must not warn about unreachable servers.
"""

import os
import sys
import warnings
from pathlib import Path

import pylstm

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "sphinxext"))

# -- Project -------------------------------------------------------------------
project = "pylstm"
author = "pylstm developers"
copyright = "pylstm developers"  # noqa: A001 - Sphinx's name
release = pylstm.__version__
version = ".".join(release.split(".")[:2])

# -- General -------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # ships MathJax: formulas render without the internet
    "sphinx_copybutton",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "pylstm_docs",  # docs/sphinxext/pylstm_docs.py
]

templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "Thumbs.db",
    ".DS_Store",
    "examples/README.rst",  # the gallery's header, rendered into auto_examples/index
    "auto_examples/*.ipynb",
    "auto_examples/*.py",
    "auto_examples/*.zip",
    "auto_examples/*.json",
    "auto_examples/*.md5",
    "sphinxext",
]
root_doc = "index"
default_role = "literal"
pygments_style = "sphinx"
# numpydoc renders the sections; autodoc only pulls the docstrings in.
autodoc_default_options = {"members": False}
autodoc_typehints = "none"
autosummary_generate = True
autosummary_imported_members = False

# -- numpydoc ------------------------------------------------------------------
# The class pages list their methods themselves (see _templates/autosummary).
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False

# -- copy buttons: copy code without the >>> / ... / $ prompts -----------------
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = False

# -- intersphinx ---------------------------------------------------------------
# Offline by default: the inventories would have to be downloaded.
ONLINE = os.environ.get("PYLSTM_DOCS_ONLINE", "0") == "1"
if ONLINE:
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable", None),
        "scipy": ("https://docs.scipy.org/doc/scipy", None),
        "sklearn": ("https://scikit-learn.org/stable", None),
        "matplotlib": ("https://matplotlib.org/stable", None),
    }
else:
    intersphinx_mapping = {}

# -- doctest (sphinx-build -b doctest docs docs/_build/doctest) ----------------
doctest_global_setup = """
import warnings
import numpy as np
from sklearn.exceptions import ConvergenceWarning
warnings.simplefilter("ignore", ConvergenceWarning)
"""

# -- sphinx-gallery ------------------------------------------------------------
# The examples run at build time, in this process; keep each well under 30 s on
# two cores. They run with one BLAS thread per library (results are the same,
# only the speed differs): on a busy machine, as CI often is, multi-threaded
# BLAS can be many times slower than one thread, because its threads wait for
# each other at every small matrix product. PYLSTM_DOCS_BLAS_THREADS overrides
# the limit ("0": leave BLAS's own setting).
_blas_threads = int(os.environ.get("PYLSTM_DOCS_BLAS_THREADS", "1"))
if _blas_threads > 0:
    from threadpoolctl import threadpool_limits

    _blas_limits = threadpool_limits(limits=_blas_threads)
warnings.filterwarnings("ignore", category=UserWarning,
                        message="Matplotlib is currently using agg")
sphinx_gallery_conf = {
    "examples_dirs": ["examples"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"__init__\.py",
    "within_subsection_order": "pylstm_docs.GalleryOrder",
    "doc_module": ("pylstm",),
    "backreferences_dir": "gen_modules/backreferences",
    "reference_url": {"pylstm": None},
    "remove_config_comments": True,
    "min_reported_time": 1,
    "show_memory": False,
    "plot_gallery": "True",
    "download_all_examples": False,
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    "capture_repr": ("_repr_html_", "__repr__"),
    "default_thumb_file": None,
    "abort_on_example_error": False,
    "only_warn_on_example_error": False,
}

# -- HTML ----------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"pylstm {release}"
html_static_path = ["_static"]
html_css_files = ["pylstm.css"]
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_depth": 3,
    "show_prev_next": True,
    "secondary_sidebar_items": ["page-toc", "sourcelink"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version", "theme-version"],
    # No version switcher, no external icons: everything works offline.
    "icon_links": [],
}
html_sidebars = {
    "index": [],
    "api": [],
}
html_show_sourcelink = True
html_copy_source = True
html_last_updated_fmt = None
