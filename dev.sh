#!/usr/bin/env bash
# One entry point for a fresh Debian 12 machine (run as root or with sudo):
#   ./dev.sh run        install what is missing, build, create a development
#                       CA under ca/dev if none exists, run the proxy on
#                       127.0.0.1:3128 (explicit mode)
#   ./dev.sh test       same setup, then the whole test suite (meson test)
#   ./dev.sh test-asan  the suite again in an ASan+UBSan build
#   ./dev.sh fuzz [S]   every libFuzzer target for S seconds (default 60)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

build_pkgs=(meson ninja-build pkg-config g++ libssl-dev libuv1-dev libnghttp2-dev
            prometheus-cpp-dev libtomlplusplus-dev doctest-dev nlohmann-json3-dev
            libcli11-dev libidn2-dev zlib1g-dev libisal-dev libcurl4-openssl-dev libcap-dev cmake openssl ca-certificates)
test_pkgs=(nginx-light curl nghttp2-client python3 procps iproute2 prometheus nftables iptables haproxy openssl tshark
           c-icap libc-icap-mod-urlcheck ceph-mon ceph-osd radosgw ceph-common testssl.sh)
fuzz_pkgs=(clang libclang-rt-14-dev)

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_missing() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      "${missing[@]}" </dev/null
  fi
}

build() {  # build DIR [meson options...]
  local dir="$1"; shift
  if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" "$@"
  fi
  ninja -C "$dir"
}

dev_ca() {
  ca/sightline-ca --out ca/dev >/dev/null
}

# Prints "N passed, N failed" from meson's test log, so any CI reads one line.
summary() {
  python3 - "$1/meson-logs/testlog.json" <<'PY'
import json, sys
passed = failed = skipped = 0
for line in open(sys.argv[1]):
    r = json.loads(line).get("result")
    if r in ("OK", "EXPECTEDFAIL"): passed += 1
    elif r == "SKIP": skipped += 1
    else: failed += 1
print(f"{passed} passed, {failed} failed, {skipped} skipped")
PY
}

run_tests() {  # run_tests DIR
  local dir="$1" rc=0
  meson test -C "$dir" --print-errorlogs --num-processes 2 || rc=$?
  summary "$dir"
  return $rc
}

cmd="${1:-}"
case "$cmd" in
  run)
    install_missing "${build_pkgs[@]}"
    build build --buildtype=release
    dev_ca
    cat <<MSG

== sightline: explicit proxy on 127.0.0.1:3128
   CA certificate for clients: $here/ca/dev/root.crt
   try:  curl --proxy http://127.0.0.1:3128 --cacert $here/ca/dev/root.crt https://example.com/

MSG
    exec build/sightline run -c deploy/sightline.example.toml \
      --listen 127.0.0.1:3128 --ca-cert ca/dev/ca.crt --ca-key ca/dev/ca.key
    ;;
  test)
    install_missing "${build_pkgs[@]}" "${test_pkgs[@]}"
    build build --buildtype=release
    dev_ca
    run_tests build
    ;;
  test-asan)
    install_missing "${build_pkgs[@]}" "${test_pkgs[@]}"
    build build-asan -Db_sanitize=address,undefined -Db_lundef=false --buildtype=debug
    dev_ca
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:quarantine_size_mb=64 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
      run_tests build-asan
    ;;
  fuzz)
    install_missing "${build_pkgs[@]}" "${fuzz_pkgs[@]}"
    tests/fuzz/run.sh "${2:-60}"
    ;;
  *)
    echo "usage: $0 run | test | test-asan | fuzz [SECONDS]" >&2
    exit 2
    ;;
esac
