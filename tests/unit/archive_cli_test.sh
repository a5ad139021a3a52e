#!/usr/bin/env bash
# The `sightline archive` retrieval and retention commands end to end on a
# fixture archive: archive_cli_test.sh SIGHTLINE_BIN FIXTURE_BIN
set -euo pipefail
bin="$1" fixture="$2"
tmp="$(mktemp -d /tmp/sightline-archive-cli-XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
expect_rc() {  # expect_rc RC CMD...: runs CMD, output in $tmp/out
  local want="$1"; shift
  local rc=0
  "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
  [ "$rc" -eq "$want" ] || { cat "$tmp/out" "$tmp/err" >&2; fail "exit $rc, wanted $want: $*"; }
}

a="$tmp/archive"
"$bin" archive keygen "$tmp/k.key" >/dev/null
"$fixture" "$a" "$tmp/k.key" 2>/dev/null

expect_rc 0 "$bin" archive search "$a" --user jdoe
[ "$(wc -l <"$tmp/out")" -eq 10 ] || fail "search --user jdoe: $(cat "$tmp/out")"
expect_rc 0 "$bin" archive search "$a" --host bank.example --status 403 --json
[ "$(wc -l <"$tmp/out")" -eq 3 ] || fail "search --host --status: $(cat "$tmp/out")"
python3 -c 'import json,sys; [json.loads(l) for l in open(sys.argv[1])]' "$tmp/out"
expect_rc 0 "$bin" archive search "$a" --since 2026-11-27T05:00:00Z --until 2026-11-27T07:00:00Z
[ "$(wc -l <"$tmp/out")" -eq 2 ] || fail "search --since --until: $(cat "$tmp/out")"
expect_rc 1 "$bin" archive search "$a" --user nobody
expect_rc 2 "$bin" archive search "$a" --since yesterday
ls "$a"/*.warc.gz.idx >/dev/null || fail "no index written"

expect_rc 0 "$bin" archive search "$a" --text TRANSFER=600
id="$(awk '{print $2}' "$tmp/out")"
expect_rc 0 "$bin" archive show "$a" "${id:0:8}" --key "$tmp/k.key.pub"
grep -q "each record matches the signed manifest" "$tmp/out" || fail "show integrity"
grep -q "3 bytes of binary body" "$tmp/out" || fail "show binary body"
grep -q '"user": "asmith"' "$tmp/out" || fail "show metadata"
expect_rc 0 "$bin" archive show "$a" "$id" --raw
grep -q "^WARC/1.1" "$tmp/out" || fail "show --raw"

mkdir "$tmp/case"
expect_rc 0 "$bin" archive export "$a" --user jdoe --since 2026-11-27T10:00:00Z --out "$tmp/case/c.warc.gz" --key "$tmp/k.key"
expect_rc 0 "$bin" archive verify "$tmp/case/c.warc.gz" --key "$tmp/k.key.pub"
grep -q "intact" "$tmp/out" || fail "verify export"
expect_rc 2 "$bin" archive export "$a" --out "$tmp/case/c.warc.gz" --key "$tmp/k.key"  # never overwritten
cp "$tmp/case/"* "$a/"
expect_rc 0 "$bin" archive verify "$a" --key "$tmp/k.key.pub"
sed -i 's/"jdoe"/"eve"/' "$tmp/case/c.warc.gz.manifest.json"
expect_rc 1 "$bin" archive verify "$tmp/case" --key "$tmp/k.key.pub"
grep -q "^bad_signature c.warc.gz" "$tmp/out" || fail "tampered export manifest"

expect_rc 0 "$bin" archive hold add "$a" --user jdoe --since 2026-11-01 --reason "matter 17" --by tester
hold_id="$(python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["id"])' <"$tmp/out")"
expect_rc 0 "$bin" archive hold list "$a"
grep -q "user jdoe" "$tmp/out" || fail "hold list"
expect_rc 2 "$bin" archive hold add "$a" --reason "no scope"
expect_rc 0 "$bin" archive prune "$a" --retention-days 1 --key "$tmp/k.key" --dry-run
expect_rc 0 "$bin" archive hold remove "$a" "$hold_id" --reason closed --by tester
grep -q '"event":"archive_hold_removed"' "$tmp/out" || fail "hold remove"
expect_rc 0 "$bin" archive verify "$a" --key "$tmp/k.key.pub"
echo "ok"
