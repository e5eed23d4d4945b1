#!/usr/bin/env bash
# Instruction profile of the steady-state inspected HTTPS request: komugate
# (release build, line tables) runs under callgrind with instrumentation off;
# one inspected session (CONNECT through the plain listener, TLS with the
# minted certificate, keep-alive) makes WARMUP requests, then callgrind is
# switched on for exactly N requests and off again. Instruction counts do
# not depend on the machine's load, so the figures are comparable between
# runs on a busy machine. Syscalls are not instructions: they are counted
# separately with strace over the same phase (STRACE=1).
#
# Usage:  benches/profile-inspect.sh
# Environment (defaults in brackets):
#   N          measured requests per session [2000]
#   WARMUP     requests before the measured phase [200]
#   INNER      inner protocols to profile ["h1 h2"]
#   SIZE       response body bytes [1024]
#   POLICY     policy file for the gateway ["": none, as benches/compare-squid.sh]
#   OUT        where the callgrind files and the breakdown go [target/profile-inspect]
#   STRACE     1 = also count syscalls per request with strace [1 if strace is installed]
#   SKIP_BUILD 1 = use the release binaries already built [0]
#   KG_BIN     the komugate binary to profile [target/release/komugate]
# Prints one breakdown per inner protocol (Ir per request: total, by crate
# (self cost), by stage (inclusive cost of the stage's function)) and
# writes it to $OUT/breakdown-<inner>.md.
# Origin, config and clean-up: benches/inspect-common.sh (shared with inspect-memory.sh).
set -euo pipefail
ORIGIN_HTTPS=127.0.0.1:19443
ORIGIN_DNS=127.0.0.1:19353
KG_PLAIN=127.0.0.1:19128
source "$(dirname "$0")/inspect-common.sh"
N="${N:-2000}"
WARMUP="${WARMUP:-200}"
INNER="${INNER:-h1 h2}"
SIZE="${SIZE:-1024}"
POLICY="${POLICY:-}"
OUT="${OUT:-$TARGET/profile-inspect}"
if [ -z "${STRACE:-}" ]; then command -v strace >/dev/null && STRACE=1 || STRACE=0; fi

need=()
command -v valgrind >/dev/null || need+=(valgrind)
[ "$STRACE" = 1 ] && ! command -v strace >/dev/null && need+=(strace)
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
build_release
mkdir -p "$OUT"
start_origin
write_config
[ -n "$POLICY" ] && set_key "$KCONF" policy file "\"$(realpath "$POLICY")\""
"$KG" config check "$KCONF" >/dev/null

profile() { # inner: h1 | h2
  local inner="$1" flag=()
  [ "$inner" = h2 ] && flag=(--inner-h2)
  local cg="$OUT/callgrind-$inner.out"
  rm -f "$cg" "$cg".*
  # --instr-atstart=no: start-up (PKI, config, listeners) is not measured;
  # the hooks switch instrumentation on for the measured requests only.
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$cg" \
    "$KG" serve --config "$KCONF" --data "$W/kg" >"$W/komugate-$inner.log" 2>&1 &
  local vg=$!
  PIDS+=($vg)
  wait_port "$KG_PLAIN" 1800
  local before="callgrind_control -z $vg >/dev/null && callgrind_control -i on $vg >/dev/null"
  local after="callgrind_control -d $vg >/dev/null && callgrind_control -i off $vg >/dev/null"
  "$LG" steady --proxy "$KG_PLAIN" --target "$M365:${ORIGIN_HTTPS##*:}" --trust "$W/kg/pki/inspect-ca.pem" \
    "${flag[@]}" --path "/bytes/$SIZE" --warmup "$WARMUP" --requests "$N" \
    --before "$before" --after "$after" --json "$OUT/steady-$inner.json" 2>"$W/steady-$inner.err" >/dev/null \
    || { cat "$W/steady-$inner.err" >&2; tail -5 "$W/komugate-$inner.log" >&2; exit 1; }
  local got
  got="$(sed -n 's/.*"inner_h2": *\(true\|false\).*/\1/p' "$OUT/steady-$inner.json")"
  if [ "$inner" = h2 ] && [ "$got" != true ]; then echo "inner HTTP/2 was not negotiated" >&2; exit 1; fi
  kill "$vg"; wait "$vg" 2>/dev/null || true
  local syscalls=""
  if [ "$STRACE" = 1 ]; then
    # The same phase on a native gateway, syscalls only (strace slows the
    # run, not the count; under valgrind the counts would include its own).
    syscalls="$W/strace-$inner.txt"
    "$KG" serve --config "$KCONF" --data "$W/kg" >"$W/komugate-$inner-native.log" 2>&1 &
    local kg=$!
    PIDS+=($kg)
    wait_port "$KG_PLAIN"
    "$LG" steady --proxy "$KG_PLAIN" --target "$M365:${ORIGIN_HTTPS##*:}" --trust "$W/kg/pki/inspect-ca.pem" \
      "${flag[@]}" --path "/bytes/$SIZE" --warmup "$WARMUP" --requests "$N" \
      --before "strace -f -c -o $syscalls -p $kg 2>/dev/null & echo \$! >$W/strace.pid; sleep 2" \
      --after "kill -INT \$(cat $W/strace.pid); sleep 2" >/dev/null 2>&1
    kill "$kg"; wait "$kg" 2>/dev/null || true
  fi
  local dump
  dump="$(ls "$cg".* 2>/dev/null | head -1)"
  [ -n "$dump" ] || { echo "no callgrind dump for $inner (see $W/komugate-$inner.log)" >&2; exit 1; }
  python3 "$ROOT/benches/callgrind_breakdown.py" "$dump" "$N" "$inner" "$syscalls" >"$OUT/breakdown-$inner.md"
  cat "$OUT/breakdown-$inner.md"
}

echo "# Inspected request profile: N=$N measured after WARMUP=$WARMUP, $SIZE-byte responses, policy: ${POLICY:-none} ($(git rev-parse --short HEAD)$(git diff --quiet HEAD -- proxy || echo +dirty))"
for inner in $INNER; do profile "$inner"; done
