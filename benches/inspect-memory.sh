#!/usr/bin/env bash
# Memory per open inspected HTTPS session: SESSIONS sessions held open at
# once through komugate's plain listener (CONNECT, TLS with the minted
# certificate, one 1 KiB GET each), the gateway's RSS with every session
# just idle (2 s after its answer: the upstream connection still pinned),
# then quiet for SETTLE s (past the gateway's upstream idle timeout
# UPSTREAM_IDLE, so the pinned upstream connections are closed), then its
# peak with one request in flight on every session (the origin holds each
# answer BUSY_MS, so every session also has an upstream TLS connection
# open). Per session = (RSS − RSS before) ÷ sessions.
#
# Usage:  benches/inspect-memory.sh
# Environment (defaults in brackets):
#   SESSIONS   inspected sessions held open [5000]
#   PARALLEL   sessions being opened at once [50]
#   INNER      inner protocols ["h1 h2"] (h2 = ALPN h2, http/1.1 offered)
#   BUSY_MS    how long the origin holds each busy answer [5000]
#   UPSTREAM_IDLE  the gateway's [limits] upstream_idle_secs [5; the default is 60]
#   SETTLE     seconds every session stays quiet before the idle sample [8]
# In service the gateway closes an HTTP/1.1 session that has been quiet for
# [limits] header_read_timeout_ms (10 s: hyper's wait for the next request
# head); here it is raised to an hour so that every session is still open
# when it is measured (opening 5,000 takes longer than 10 s). An HTTP/2
# session has no such limit: its quiet figure is what a browser's
# long-held session costs. UPSTREAM_IDLE=3600 keeps every pinned upstream
# connection (the behaviour before the idle close).
#   SKIP_BUILD 1 = use the release binaries already built [0]
# Prints a Markdown table (also written to $OUT/inspect-memory.md,
# OUT [target/inspect-memory]).
# Origin, config and clean-up: benches/inspect-common.sh (shared with profile-inspect.sh).
set -euo pipefail
ORIGIN_HTTPS=127.0.0.1:19543
ORIGIN_DNS=127.0.0.1:19553
KG_PLAIN=127.0.0.1:19528
source "$(dirname "$0")/inspect-common.sh"
SESSIONS="${SESSIONS:-5000}"
PARALLEL="${PARALLEL:-50}"
INNER="${INNER:-h1 h2}"
BUSY_MS="${BUSY_MS:-5000}"
UPSTREAM_IDLE="${UPSTREAM_IDLE:-5}"
SETTLE="${SETTLE:-8}"
OUT="${OUT:-$TARGET/inspect-memory}"
# Each session costs the gateway a client socket and, while busy, an
# upstream one; the origin and the load generator one each.
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $((2 * SESSIONS + 1000)) ]; then
  echo "open-file limit $(ulimit -n) is too low for $SESSIONS sessions (needs $((2 * SESSIONS + 1000))): raise it (ulimit -Hn as root) or lower SESSIONS" >&2
  exit 1
fi
build_release
mkdir -p "$OUT"
start_origin
write_config
set_key "$KCONF" limits max_connections_per_device 100000
set_key "$KCONF" limits upstream_idle_secs "$UPSTREAM_IDLE"
set_key "$KCONF" limits header_read_timeout_ms 3600000
"$KG" config check "$KCONF" >/dev/null

MD="$OUT/inspect-memory.md"
{ echo "| inner | sessions open | RSS before / just idle / quiet $SETTLE s / busy peak (MiB) | KiB per session just idle | KiB per session quiet $SETTLE s | KiB per busy session | errors |"
  echo "|---|---:|---:|---:|---:|---:|---|"; } >"$MD"
for inner in $INNER; do
  flag=()
  [ "$inner" = h2 ] && flag=(--inner-h2)
  # A fresh gateway per protocol: RSS before is its own.
  "$KG" serve --config "$KCONF" --data "$W/kg" >"$W/komugate-$inner.log" 2>&1 &
  kg=$!
  PIDS+=($kg)
  wait_port "$KG_PLAIN"
  "$LG" held --proxy "$KG_PLAIN" --target "$M365:${ORIGIN_HTTPS##*:}" --trust "$W/kg/pki/inspect-ca.pem" "${flag[@]}" \
    --sessions "$SESSIONS" --parallel "$PARALLEL" --busy-path "/bytes/1024?delay=$BUSY_MS" --settle "$SETTLE" --proxy-pid "$kg" \
    --json "$OUT/held-$inner.json" >/dev/null 2>"$W/held-$inner.err" \
    || { cat "$W/held-$inner.err" >&2; exit 1; }
  python3 - "$OUT/held-$inner.json" "$inner" >>"$MD" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
mib = lambda k: k / 1024
errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
inner = "HTTP/2" if r["inner_h2"] else "HTTP/1.1"
print(f"| {inner} ({sys.argv[2]}) | {r['sessions_open']} of {r['sessions_requested']} | "
      f"{mib(r['rss_before_kib']):.1f} / {mib(r['rss_fresh_kib']):.1f} / {mib(r['rss_idle_kib']):.1f} / {mib(r['rss_busy_kib']):.1f} | "
      f"{r['kib_per_fresh_session']:.1f} | {r['kib_per_idle_session']:.1f} | {r['kib_per_busy_session']:.1f} | {errors} |")
EOF
  kill "$kg"; wait "$kg" 2>/dev/null || true
done
echo "$SESSIONS inspected sessions, $(nproc) cores, komugate $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- proxy || echo +dirty); command: SESSIONS=$SESSIONS INNER=\"$INNER\" UPSTREAM_IDLE=$UPSTREAM_IDLE SETTLE=$SETTLE benches/inspect-memory.sh" >>"$MD"
cat "$MD"
