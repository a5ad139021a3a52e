#!/usr/bin/env bash
# Runs every libFuzzer target for SECONDS_PER_TARGET (default 60) on a copy of
# its seed corpus, so the corpus in the repository is never modified.
# Exits non-zero if any target crashes, leaks, times out or runs out of memory;
# the reproducer is then kept in $BUILD_DIR/fuzz-artifacts/<target>/.
#
#   tests/fuzz/run.sh [SECONDS_PER_TARGET]
#
# Environment: FUZZ_BUILD_DIR (default build-fuzz), FUZZ_CXX (default
# clang++), FUZZ_TARGETS (default: all), FUZZ_ARGS (extra libFuzzer flags),
# FUZZ_PARALLEL (targets fuzzed at once; default: the number of cores, each
# target being one process unless FUZZ_ARGS asks for -jobs).
set -euo pipefail

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
  echo "usage: $0 [SECONDS_PER_TARGET]" >&2
  exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${FUZZ_BUILD_DIR:-$root/build-fuzz}"
targets="${FUZZ_TARGETS:-h1_parser client_hello connect_request proxy_protocol icap_response warc_reader config policy h2_frames}"

if [ ! -f "$build/build.ninja" ]; then
  CXX="${FUZZ_CXX:-clang++}" meson setup "$build" "$root" \
    -Dfuzz=true -Db_sanitize=address,undefined -Db_lundef=false
fi
ninja -C "$build"
build="$(cd "$build" && pwd)"  # the targets run from their work directory

work="$(mktemp -d "${TMPDIR:-/tmp}/sightline-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# Sanitizer findings must end the run with a saved reproducer.
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:abort_on_error=1:print_stacktrace=1}"

# One target: its report goes to $work/$t/report, its exit code to $work/$t/rc.
fuzz_one() {
  local t="$1"
  local exe="$build/tests/fuzz/${t}_fuzz"
  local seeds="$root/tests/fuzz/corpus/$t"
  local corpus="$work/$t/corpus"
  local artifacts="$work/$t/artifacts"
  local report="$work/$t/report"
  mkdir -p "$corpus" "$artifacts"
  cp -R "$seeds/." "$corpus/"
  local dict=()
  [ -f "$root/tests/fuzz/$t.dict" ] && dict=("-dict=$root/tests/fuzz/$t.dict")

  echo "== $t: ${seconds}s, $(ls "$corpus" | wc -l) seeds" >"$report"
  local log="$work/$t/fuzz.log" rc
  set +e
  # From the work directory: with -jobs, libFuzzer writes each job's log
  # (fuzz-N.log) into the current directory.
  # shellcheck disable=SC2086  # FUZZ_ARGS is a list of flags
  (cd "$work/$t" && "$exe" "$corpus" -max_total_time="$seconds" -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "${dict[@]}" ${FUZZ_ARGS:-}) >"$log" 2>&1
  rc=$?
  set -e

  # Totals over the main log and the jobs' logs, if any.
  local logs=("$log" "$work/$t"/fuzz-*.log)
  [ -f "${logs[1]}" ] || logs=("$log")
  local runs rate cov
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "${logs[@]}" | awk '{s += $1} END {if (NR) print s}')"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "${logs[@]}" | awk '{s += $1} END {if (NR) print s}')"
  cov="$(awk 'match($0, /cov: [0-9]+/) {v = substr($0, RSTART + 5, RLENGTH - 5) + 0; if (v > m) m = v}
             END {if (m) print "cov: " m}' "${logs[@]}")"
  echo "   exit $rc, ${runs:-?} runs, ${rate:-?} exec/s, ${cov:-cov: ?}, corpus $(ls "$corpus" | wc -l) files" >>"$report"
  if [ "$rc" -ne 0 ]; then
    local keep="$build/fuzz-artifacts/$t"
    mkdir -p "$keep"
    cp -R "$artifacts/." "$keep/" 2>/dev/null || true
    cp "${logs[@]}" "$keep/"
    {
      echo "   FAILED: last lines of the log (full log and reproducers in $keep):"
      tail -n 40 "$log" | sed 's/^/   | /'
      echo "   reproduce: $exe $keep/<crash-file>"
    } >>"$report"
  fi
  echo "$rc" >"$work/$t/rc"
}

# Each target is one process on one core: the targets share the cores.
parallel="${FUZZ_PARALLEL:-$(nproc)}"
running=0
for t in $targets; do
  if [ "$running" -ge "$parallel" ]; then
    wait -n
    running=$((running - 1))
  fi
  mkdir -p "$work/$t"
  # A target that fails before writing its rc (a missing corpus, say) is
  # recorded as failed here, so every job exits 0 and `wait` never stops the script.
  { fuzz_one "$t" || echo 1 >"$work/$t/rc"; } &
  running=$((running + 1))
done
wait

failed=()
for t in $targets; do
  cat "$work/$t/report" 2>/dev/null || echo "== $t: no report"
  [ "$(cat "$work/$t/rc" 2>/dev/null || echo 1)" = 0 ] || failed+=("$t")
done

if [ "${#failed[@]}" -ne 0 ]; then
  echo "fuzzing FAILED: ${failed[*]}"
  exit 1
fi
echo "fuzzing passed: $targets"
