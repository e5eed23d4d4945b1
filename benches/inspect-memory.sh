#!/usr/bin/env bash
# Memory per open inspected HTTPS session: SESSIONS sessions held open at
# once through komugate's plain listener (CONNECT, TLS with the minted
# certificate, one 1 KiB GET each), the gateway's RSS with every session
# idle, then its peak with one request in flight on every session (the
# origin holds each answer BUSY_MS, so every session also has an upstream
# TLS connection open). Per session = (RSS − RSS before) ÷ sessions.
#
# Usage:  benches/inspect-memory.sh
# Environment (defaults in brackets):
#   SESSIONS   inspected sessions held open [5000]
#   PARALLEL   sessions being opened at once [50]
#   INNER      inner protocols ["h1 h2"] (h2 = ALPN h2, http/1.1 offered)
#   BUSY_MS    how long the origin holds each busy answer [5000]
#   SKIP_BUILD 1 = use the release binaries already built [0]
# Prints a Markdown table (also written to $OUT/inspect-memory.md,
# OUT [target/inspect-memory]).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
SESSIONS="${SESSIONS:-5000}"
PARALLEL="${PARALLEL:-50}"
INNER="${INNER:-h1 h2}"
BUSY_MS="${BUSY_MS:-5000}"
TARGET="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
OUT="${OUT:-$TARGET/inspect-memory}"
# Each session costs the gateway a client socket and, while busy, an
# upstream one; the origin and the load generator one each.
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $((2 * SESSIONS + 1000)) ]; then
  echo "open-file limit $(ulimit -n) is too low for $SESSIONS sessions (needs $((2 * SESSIONS + 1000))): raise it (ulimit -Hn as root) or lower SESSIONS" >&2
  exit 1
fi
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -q -p komugate -p komugate-benches --bin komugate --bin komugate-loadgen
fi
KG="$TARGET/release/komugate"
LG="$TARGET/release/komugate-loadgen"
mkdir -p "$OUT"
W="$(mktemp -d /tmp/komugate-memory.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
wait_port() {
  for _ in $(seq 1 600); do
    if (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on $1" >&2; return 1
}
set_key() { # file section key value: replace `key = ...` inside [section]
  awk -v s="[$2]" -v k="$3" -v v="$4" '
    /^\[/ { cur=$0 }
    cur==s && $0 ~ "^"k" *=" { print k" = "v; next }
    { print }' "$1" >"$1.tmp" && mv "$1.tmp" "$1"
}

ORIGIN_HTTPS=127.0.0.1:19543
ORIGIN_DNS=127.0.0.1:19553
KG_PLAIN=127.0.0.1:19528
M365=outlook.office365.com
"$LG" origin --https "$ORIGIN_HTTPS" --san "$M365" --dns "$ORIGIN_DNS" --ca-out "$W/origin-ca.pem" >"$W/origin.log" 2>&1 &
PIDS+=($!)
wait_port "$ORIGIN_HTTPS"
KCONF="$W/komugate.toml"
"$KG" config default >"$KCONF"
set_key "$KCONF" listen plain "\"$KG_PLAIN\""
set_key "$KCONF" listen mtls '""'
set_key "$KCONF" listen admin '""'
set_key "$KCONF" dns servers "[\"$ORIGIN_DNS\"]"
set_key "$KCONF" decision allowed_ports "[]"
set_key "$KCONF" limits idle_timeout_secs 3600
set_key "$KCONF" limits max_connections_per_device 100000
set_key "$KCONF" inspect upstream_ca "\"$W/origin-ca.pem\""
set_key "$KCONF" inspect hosts "[\"*.office365.com\"]"
"$KG" config check "$KCONF" >/dev/null

MD="$OUT/inspect-memory.md"
{ echo "| inner | sessions open | RSS before / idle / busy peak (MiB) | KiB per idle session | KiB per busy session | errors |"
  echo "|---|---:|---:|---:|---:|---|"; } >"$MD"
for inner in $INNER; do
  flag=()
  [ "$inner" = h2 ] && flag=(--inner-h2)
  # A fresh gateway per protocol: RSS before is its own.
  "$KG" serve --config "$KCONF" --data "$W/kg" >"$W/komugate-$inner.log" 2>&1 &
  kg=$!
  PIDS+=($kg)
  wait_port "$KG_PLAIN"
  "$LG" held --proxy "$KG_PLAIN" --target "$M365:${ORIGIN_HTTPS##*:}" --trust "$W/kg/pki/inspect-ca.pem" "${flag[@]}" \
    --sessions "$SESSIONS" --parallel "$PARALLEL" --busy-path "/bytes/1024?delay=$BUSY_MS" --proxy-pid "$kg" \
    --json "$OUT/held-$inner.json" >/dev/null 2>"$W/held-$inner.err" \
    || { cat "$W/held-$inner.err" >&2; exit 1; }
  python3 - "$OUT/held-$inner.json" "$inner" >>"$MD" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
mib = lambda k: k / 1024
errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
inner = "HTTP/2" if r["inner_h2"] else "HTTP/1.1"
print(f"| {inner} ({sys.argv[2]}) | {r['sessions_open']} of {r['sessions_requested']} | "
      f"{mib(r['rss_before_kib']):.1f} / {mib(r['rss_idle_kib']):.1f} / {mib(r['rss_busy_kib']):.1f} | "
      f"{r['kib_per_idle_session']:.1f} | {r['kib_per_busy_session']:.1f} | {errors} |")
EOF
  kill "$kg"; wait "$kg" 2>/dev/null || true
done
echo "$SESSIONS inspected sessions, $(nproc) cores, komugate $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- proxy || echo +dirty); command: SESSIONS=$SESSIONS INNER=\"$INNER\" benches/inspect-memory.sh" >>"$MD"
cat "$MD"
