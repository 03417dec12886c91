#!/usr/bin/env bash
# Builds tests/c/test_kernels.c with src/_kernels.c (one object per SIMD
# level, with the flags of src/meson.build) and runs it:
#
#   x86-64, gcc and clang    baseline, avx2 and avx512, run here (a level
#                            this CPU lacks is skipped by the program);
#   x86-64, gcc + sanitizers the same under AddressSanitizer and UBSan;
#   aarch64                  aarch64-linux-gnu-gcc, neon, run under qemu-aarch64;
#   Windows                  x86_64-w64-mingw32-gcc compiles the three x86
#                            levels and links the program (not run).
#
# A missing toolchain is skipped ("skipped: <tool> not found"); with
# --require-all (CI) it is an error. Builds in a temporary folder.
#
#   tests/c/run.sh [--require-all]
set -euo pipefail
cd "$(dirname "$0")/../.."

require_all=0
case "${1:-}" in
  --require-all) require_all=1 ;;
  "") ;;
  *) echo "usage: $0 [--require-all]" >&2; exit 2 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The kernels' flags (meson.build's common flags) and the test program's.
kflags=(-std=c11 -O3 -fno-trapping-math -ffp-contract=fast -Wall -Wextra -Werror -Isrc)
tflags=(-std=c11 -O2 -Wall -Wextra -Werror -Isrc)
declare -A level_flags=(
  [baseline]=""
  [avx2]="-mavx2 -mfma"
  [avx512]="-mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx2 -mfma -mprefer-vector-width=512"
)
x86_have=(-DPYLSTM_HAVE_BASELINE=1 -DPYLSTM_HAVE_AVX2=1 -DPYLSTM_HAVE_AVX512=1)
limit=()  # a hung barrier fails the step instead of the whole job
if command -v timeout >/dev/null; then limit=(timeout 300); fi

status=0
summary=()

# have TOOL...: whether every tool exists (a missing one is reported).
have() {
  local tool
  for tool in "$@"; do
    if ! command -v "$tool" >/dev/null; then
      if ((require_all)); then
        echo "error: $tool not found (--require-all)"
        summary+=("$(printf '%-24s' "$tool:") MISSING")
        status=1
      else
        echo "skipped: $tool not found"
        summary+=("$(printf '%-24s' "$tool:") skipped (not found)")
      fi
      return 1
    fi
  done
}

# build_x86 CC DIR EXTRA...: the objects of the three x86 levels' kernels and
# of the program in DIR, compiled side by side (EXTRA: flags for all).
build_x86() {
  local cc=$1 out=$2 level pid pids=()
  shift 2
  mkdir -p "$out"
  for level in baseline avx2 avx512; do
    # shellcheck disable=SC2086  # the level's flags are words
    "$cc" "${kflags[@]}" ${level_flags[$level]} "$@" -DPYLSTM_TARGET="$level" \
      -c src/_kernels.c -o "$out/kernels_$level.o" &
    pids+=($!)
  done
  "$cc" "${tflags[@]}" "$@" "${x86_have[@]}" -c tests/c/test_kernels.c -o "$out/test.o"
  for pid in "${pids[@]}"; do wait "$pid"; done
}

# run NAME CMD...: runs the program, keeps its last line ("N passed, M failed").
run() {
  local name=$1 start=$SECONDS rc=0
  shift
  "${limit[@]}" "$@" >"$work/out" 2>&1 || rc=$?
  cat "$work/out"
  if ((rc != 0)); then status=1; fi
  summary+=("$(printf '%-24s' "$name:") $(tail -n 1 "$work/out") ($((SECONDS - start)) s, exit $rc)")
}

x86_host=0
if [[ $(uname -m) == x86_64 ]]; then x86_host=1; fi

for cc in gcc clang; do
  echo "== x86-64, $cc"
  if ((!x86_host)); then
    echo "skipped: this host is not x86-64"
    if ((require_all)); then status=1; fi
  elif have "$cc"; then
    build_x86 "$cc" "$work/$cc"
    "$cc" -pthread -o "$work/$cc/test_kernels" "$work/$cc"/*.o -lm
    run "x86-64 $cc" "$work/$cc/test_kernels"
  fi
done

echo "== x86-64, gcc with -fsanitize=address,undefined"
if ((x86_host)) && have gcc; then
  # -O1 (after the -O3 of the kernels' flags): the same accesses, 4x faster to build.
  san=(-fsanitize=address,undefined -fno-sanitize-recover=all -g -O1)
  build_x86 gcc "$work/san" "${san[@]}"
  gcc "${san[@]}" -pthread -o "$work/san/test_kernels" "$work/san"/*.o -lm
  run "x86-64 gcc sanitizers" "$work/san/test_kernels"
fi

echo "== aarch64 (neon), aarch64-linux-gnu-gcc and qemu-aarch64"
if have aarch64-linux-gnu-gcc qemu-aarch64; then
  out=$work/aarch64
  mkdir -p "$out"
  aarch64-linux-gnu-gcc "${kflags[@]}" -DPYLSTM_TARGET=neon -c src/_kernels.c -o "$out/kernels_neon.o"
  aarch64-linux-gnu-gcc "${tflags[@]}" -DPYLSTM_HAVE_NEON=1 -c tests/c/test_kernels.c -o "$out/test.o"
  if aarch64-linux-gnu-gcc -static -pthread -o "$out/test_kernels" "$out"/*.o -lm 2>"$out/link.log"; then
    run "aarch64 qemu" qemu-aarch64 "$out/test_kernels"
  else
    cat "$out/link.log"
    echo "(the static link failed: linking dynamically, run with -L /usr/aarch64-linux-gnu)"
    aarch64-linux-gnu-gcc -pthread -o "$out/test_kernels" "$out"/*.o -lm
    run "aarch64 qemu" qemu-aarch64 -L /usr/aarch64-linux-gnu "$out/test_kernels"
  fi
fi

echo "== Windows, x86_64-w64-mingw32-gcc (compile and link only)"
if have x86_64-w64-mingw32-gcc; then
  out=$work/mingw
  build_x86 x86_64-w64-mingw32-gcc "$out"
  x86_64-w64-mingw32-gcc -o "$out/test_kernels.exe" "$out"/*.o -lm
  # The program's threads are _platform.h's Windows threads.
  if command -v x86_64-w64-mingw32-objdump >/dev/null; then
    imports=$(x86_64-w64-mingw32-objdump -p "$out/test_kernels.exe")
    for fn in CreateThread SleepConditionVariableSRW AcquireSRWLockExclusive; do
      if grep -q "$fn" <<<"$imports"; then
        echo "test_kernels.exe imports $fn"
      else
        echo "test_kernels.exe does not import $fn"
        status=1
      fi
    done
  fi
  echo "built test_kernels.exe ($(wc -c <"$out/test_kernels.exe") bytes; not run)"
  summary+=("$(printf '%-24s' "windows mingw:") compiled and linked (not run)")
fi

echo "== summary"
printf '%s\n' "${summary[@]}"
exit "$status"
