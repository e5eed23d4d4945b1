#!/usr/bin/env bash
# School-morning load test: komugate side by side with Squid, in one run, on
# this machine. Installs what is missing (squid-openssl from the distribution),
# builds komugate and komugate-loadgen (release), starts the fast local origin,
# komugate and Squid on loopback ports with configs in a temp dir, runs the
# identical workloads through both, then the like-for-like URL-filtering
# comparison (Squid + squidGuard vs komugate's policy engine, the same UT1
# categories; SCENARIO `filtered`), then the scale scenarios against
# komugate, and writes the "## Load test" section of benches/RESULTS.md.
#
# Usage:  benches/compare-squid.sh
# Environment (defaults in brackets):
#   SCENARIOS  which parts to run ["compare keepalive bulk filtered morning idle"]; also: prefecture soak,
#              inspect (only the handshake-heavy inspected workload of compare: 4 GETs per tunnel)
#              (bulk: one BULK_MIB download through CONNECT tunnels from nginx
#              on 127.0.0.3, direct vs Squid vs komugate plain and mTLS
#              listeners, and HTTP/2 CONNECT through `komugate client`)
#              (keepalive: inspected HTTPS in steady state, KA_REQUESTS GETs per
#              tunnel, inner HTTP/1.1 and HTTP/2, Squid ssl-bump vs komugate)
#   DUR        seconds per side-by-side workload [20]
#   CLIENTS    concurrent clients per side-by-side workload [50]
#   KA_CLIENTS concurrent keep-alive inspected sessions (keepalive) [8]
#   KA_REQUESTS GETs of 1 KiB per inspected tunnel (keepalive) ["100 1000"]
#   KA_INNER   inner protocols offered (keepalive) ["h1 h2"]; h2 = ALPN
#              "h2, http/1.1" as a browser offers (Squid answers http/1.1)
#   MORNING_DEVICES / MORNING_RAMP        [800 / 60]   this board
#   PREF_DEVICES / PREF_RAMP              [8000 / 300] a prefecture
#   IDLE_TUNNELS                          [50000] (over several komugate replicas if one process may not open enough files)
#   SOAK_MINUTES                          [30]
#   UT1_DIR        UT1/squidGuard blocklist dir [/work/shared/blocklists/ut1,
#                  else the excerpt examples/lists/ut1]               (filtered)
#   FILTER_CATEGORIES  UT1 categories both filters block ["adult gambling
#                  malware phishing": the board's rule in examples/policy.toml]
#   FILTER_HOSTS   allowed host names in the workload [2000]
#   FILTER_BLOCKED host names drawn from the blocked categories [1500]
#   BLOCKED_SHARE  share of operations addressed to a blocked name [0.05]
#   FILTER_ROUNDS  rounds of the filter's control (komugate without and with
#                  the policy, 1 and FILTER_HOSTS hosts, alternating) [3]
#   SG_CHILDREN    Squid url_rewrite_children for squidGuard
#                  ["8 startup=4 idle=2 concurrency=0"]
#   WRITE_RESULTS  1 = rewrite "## Load test" in benches/RESULTS.md [1]
#   KEEP_TMP       1 = keep the temp dir (configs, logs, JSON) [0]
#   PORT_SHIFT     added to every port the run uses (side-by-side runs) [0]
#   SKIP_BUILD     1 = use the release binaries already in the target dir [0]
#   UPSTREAM_IDLE_TOTAL  komugate [limits] upstream_idle_total, the cap on idle
#                  pooled upstream connections [unset: the default, derived from memory]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
COMMAND="$(for v in SCENARIOS BULK_MIB BULK_ROUNDS DUR CLIENTS KA_CLIENTS KA_REQUESTS KA_INNER MORNING_DEVICES MORNING_RAMP PREF_DEVICES PREF_RAMP IDLE_TUNNELS SOAK_MINUTES UT1_DIR FILTER_CATEGORIES FILTER_HOSTS FILTER_BLOCKED BLOCKED_SHARE FILTER_ROUNDS SG_CHILDREN UPSTREAM_IDLE_TOTAL MIMALLOC_PURGE_DELAY MALLOC_ARENA_MAX; do [ -n "${!v:-}" ] && printf '%s=%q ' "$v" "${!v}"; done; echo "benches/compare-squid.sh")"
SCENARIOS="${SCENARIOS:-compare keepalive bulk filtered morning idle}"
BULK_MIB="${BULK_MIB:-512}"
BULK_ROUNDS="${BULK_ROUNDS:-3}"
DUR="${DUR:-20}"
CLIENTS="${CLIENTS:-50}"
KA_CLIENTS="${KA_CLIENTS:-8}"
KA_REQUESTS="${KA_REQUESTS:-100 1000}"
KA_INNER="${KA_INNER:-h1 h2}"
MORNING_DEVICES="${MORNING_DEVICES:-800}"
MORNING_RAMP="${MORNING_RAMP:-60}"
PREF_DEVICES="${PREF_DEVICES:-8000}"
PREF_RAMP="${PREF_RAMP:-300}"
IDLE_TUNNELS="${IDLE_TUNNELS:-50000}"
SOAK_MINUTES="${SOAK_MINUTES:-30}"
WRITE_RESULTS="${WRITE_RESULTS:-1}"
FILTER_CATEGORIES="${FILTER_CATEGORIES:-adult gambling malware phishing}"
FILTER_HOSTS="${FILTER_HOSTS:-2000}"
FILTER_BLOCKED="${FILTER_BLOCKED:-1500}"
BLOCKED_SHARE="${BLOCKED_SHARE:-0.05}"
FILTER_ROUNDS="${FILTER_ROUNDS:-3}"
SG_CHILDREN="${SG_CHILDREN:-8 startup=4 idle=2 concurrency=0}"
has() { [[ " $SCENARIOS " == *" $1 "* ]]; }
log() { printf '\n=== %s\n' "$*" >&2; }

# ---------------------------------------------------------------- fd limits
# Raise the soft limit as far as the hard limit allows; try to raise the hard
# limit too (works as root with CAP_SYS_RESOURCE, not in every container).
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
FD_LIMIT="$(ulimit -n)"
log "open-file limit: $FD_LIMIT"

# ---------------------------------------------------------------- packages
need=()
if ! command -v squid >/dev/null 2>&1; then need+=(squid-openssl); fi
if ! command -v getconf >/dev/null 2>&1; then need+=(libc-bin); fi
if has filtered && ! command -v squidGuard >/dev/null 2>&1; then need+=(squidguard); fi
if has filtered && ! command -v jq >/dev/null 2>&1; then need+=(jq); fi
if has bulk && ! command -v nginx >/dev/null 2>&1; then need+=(nginx-light); fi
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  made_policy=0
  # Do not let the package start a system-wide Squid on :3128.
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1; fi
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
SQUID_VERSION="$(squid -v | head -1)"
SSL_BUMP=0
if squid -v | grep -q -- '--with-openssl' && [ -x /usr/lib/squid/security_file_certgen ]; then SSL_BUMP=1; fi

# ---------------------------------------------------------------- build
log "building komugate and komugate-loadgen (release)"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -q -p komugate -p komugate-benches --bin komugate --bin komugate-loadgen
fi
TARGET="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
KG="$TARGET/release/komugate"
LG="$TARGET/release/komugate-loadgen"
KG_VERSION="$("$KG" --version 2>/dev/null || echo komugate) ($(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- proxy 2>/dev/null || echo '+dirty'))"

# ---------------------------------------------------------------- temp dir
W="$(mktemp -d /tmp/komugate-load.XXXXXX)"
chmod 755 "$W"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if [ "${KEEP_TMP:-0}" != 1 ]; then rm -rf "$W"; else echo "kept $W" >&2; fi
}
trap cleanup EXIT

# PORT_SHIFT moves every port of the run, so a second run (another
# worktree's) can go side by side with this one.
P=${PORT_SHIFT:-0}
ORIGIN_HTTP=127.0.0.1:$((18080 + P))
ORIGIN_HTTPS=127.0.0.1:$((18443 + P))
ORIGIN_DNS=127.0.0.1:$((15353 + P))
KG_PLAIN=127.0.0.1:$((23128 + P))
KG_MTLS=127.0.0.1:$((28443 + P))
KG_ADMIN=127.0.0.1:$((29090 + P))
# Every listener sits below the ephemeral range (32768-60999): a client
# socket of a run that just ended can hold a port up there.
SQ_PLAIN=127.0.0.1:$((31128 + P))
SQ_BUMP=127.0.0.1:$((31129 + P))
M365=outlook.office365.com

# shellcheck source=benches/ports.sh
. "$ROOT/benches/ports.sh"
require_free_ports "$ORIGIN_HTTP" 127.0.0.1:$((18081 + P)) 127.0.0.1:$((18082 + P)) 127.0.0.1:$((18083 + P)) "$ORIGIN_HTTPS" \
  "$KG_PLAIN" "$KG_MTLS" "$KG_ADMIN" "$SQ_PLAIN" "$SQ_BUMP"

# ---------------------------------------------------------------- filtered: lists
# The UT1 categories both filters block, the host names of the workload, and
# a check that squidGuard and komugate classify every one of them the same way.
ORIGIN_EXTRA=()
if has filtered; then
  FL="$W/filtered"
  mkdir -p "$FL"
  if [ -z "${UT1_DIR:-}" ]; then
    UT1_DIR=/work/shared/blocklists/ut1
    if [ ! -d "$UT1_DIR" ]; then
      UT1_DIR="$ROOT/examples/lists/ut1"
      log "no full UT1 copy in /work/shared/blocklists/ut1: using the excerpt $UT1_DIR (40 lines per category; set UT1_DIR to a full UT1 download for meaningful filter sizes)"
    fi
  fi
  [ -d "$UT1_DIR" ] || { echo "UT1_DIR=$UT1_DIR is not a directory: point it at a UT1/squidGuard blocklist directory (one sub-directory per category)" >&2; exit 1; }
  log "filtered: preparing UT1 categories ($FILTER_CATEGORIES) from $UT1_DIR"
  # One copy both filters read: squidGuard builds its .db files next to the
  # lists (dbhome), komugate imports the same directory. Files split by bytes
  # upstream (domains.0, domains.1, ...) are joined in order before use.
  UT1W="$FL/ut1"
  for c in $FILTER_CATEGORIES; do
    [ -d "$UT1_DIR/$c" ] || { echo "category $c (FILTER_CATEGORIES) is not a directory in $UT1_DIR; available: $(cd "$UT1_DIR" && ls -d */ | tr -d / | tr '\n' ' ')" >&2; exit 1; }
    mkdir -p "$UT1W/$c"
    for f in domains urls; do
      mapfile -t parts < <(cd "$UT1_DIR/$c" && ls -1 | grep -E "^$f(\.[0-9]+)?\$" | sort -V)
      [ "${#parts[@]}" -gt 0 ] && (cd "$UT1_DIR/$c" && cat "${parts[@]}") >"$UT1W/$c/$f"
    done
    [ -e "$UT1W/$c/domains" ] || [ -e "$UT1W/$c/urls" ] || { echo "category $c in $UT1_DIR has neither domains nor urls" >&2; exit 1; }
  done
  UT1_LINES="$(cat "$UT1W"/*/domains "$UT1W"/*/urls 2>/dev/null | wc -l || true)"
  # squidGuard: config and Berkeley DB files (squidGuard -C all).
  SGD="$FL/squidguard"
  mkdir -p "$SGD/log"
  SG_BLOCK_URL="http://$ORIGIN_HTTP/blocked?category=%t&url=%u"
  { echo "dbhome $UT1W"; echo "logdir $SGD/log"
    for c in $FILTER_CATEGORIES; do
      echo "dest $c {"
      [ -e "$UT1W/$c/domains" ] && echo "	domainlist $c/domains"
      [ -e "$UT1W/$c/urls" ] && echo "	urllist $c/urls"
      echo "}"
    done
    echo "acl {"; echo "	default {"
    echo "		pass $(for c in $FILTER_CATEGORIES; do printf '!%s ' "$c"; done)all"
    echo "		redirect 302:$SG_BLOCK_URL"
    echo "	}"; echo "}"; } >"$SGD/squidGuard.conf"
  log "filtered: squidGuard -C all (building the Berkeley DB files)"
  squidGuard -c "$SGD/squidGuard.conf" -C all >"$SGD/build.log" 2>&1 \
    || { echo "squidGuard -C all failed (config $SGD/squidGuard.conf):" >&2; tail -5 "$SGD/build.log" "$SGD/log/squidGuard.log" >&2; exit 1; }
  # Allowed names: random, reproducible (seeded), on common TLDs.
  awk -v n="$FILTER_HOSTS" 'BEGIN { srand(7); split("jp ed.jp ac.jp go.jp com net org", t, " ")
      c = "abcdefghijklmnopqrstuvwxyz0123456789"
      for (i = 0; i < n; i++) { s = ""; for (j = 0; j < 10; j++) s = s substr(c, int(rand() * 36) + 1, 1)
        print "www." s "." t[int(rand() * 7) + 1] } }' | sort -u >"$FL/allowed.cand"
  # Blocked names: an equal share from each category that has a domains list
  # (plain DNS names only, no IP literals), every second one as www.<domain>
  # so subdomain matching is exercised too.
  dcats=(); for c in $FILTER_CATEGORIES; do [ -s "$UT1W/$c/domains" ] && dcats+=("$c"); done
  [ "${#dcats[@]}" -gt 0 ] || { echo "none of FILTER_CATEGORIES ($FILTER_CATEGORIES) has a domains list in $UT1_DIR: nothing to draw blocked names from" >&2; exit 1; }
  per=$(( (FILTER_BLOCKED + ${#dcats[@]} - 1) / ${#dcats[@]} ))
  for c in "${dcats[@]}"; do
    grep -E '^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.[a-z][a-z0-9-]*[a-z0-9]$' "$UT1W/$c/domains" | awk 'length($0) < 200' \
      | shuf -n "$per" --random-source=<(yes "$c") || true
  done | awk 'NR % 2 == 0 && !/^www\./ { $0 = "www." $0 } { print }' | sort -u | awk -v n="$FILTER_BLOCKED" 'NR <= n' >"$FL/blocked.cand"
  # Keep only the names both filters agree on (allowed: neither blocks;
  # blocked: both block); say how many were dropped.
  sg_verdicts() { # file → one line per name: OK (blocked) or ERR (passed)
    sed "s|^\(.*\)\$|http://\1:${ORIGIN_HTTP##*:}/ 127.0.0.1/- - GET myip=127.0.0.1 myport=0|" "$1" \
      | squidGuard -c "$SGD/squidGuard.conf" | awk '{ print $1 }'
  }
  kg_verdicts() { # file → one line per name: its categories or -
    local urls=(); mapfile -t urls < <(sed 's|^\(.*\)$|http://\1/|' "$1")
    "$KG" categories lookup --lists "$UT1W" "${urls[@]}" 2>/dev/null | cut -f2
  }
  paste "$FL/allowed.cand" <(sg_verdicts "$FL/allowed.cand") <(kg_verdicts "$FL/allowed.cand") \
    | awk -F'\t' '$2 == "ERR" && $3 == "-" { print $1 }' >"$FL/hosts.txt"
  paste "$FL/blocked.cand" <(sg_verdicts "$FL/blocked.cand") <(kg_verdicts "$FL/blocked.cand") \
    | awk -F'\t' '$2 == "OK" && $3 != "-" && $3 != "" { print $1 }' >"$FL/blocked.txt"
  N_ALLOWED="$(wc -l <"$FL/hosts.txt")"; N_BLOCKED="$(wc -l <"$FL/blocked.txt")"
  DROPPED=$(( $(wc -l <"$FL/allowed.cand") + $(wc -l <"$FL/blocked.cand") - N_ALLOWED - N_BLOCKED ))
  log "filtered: $N_ALLOWED allowed and $N_BLOCKED blocked host names ($DROPPED candidates dropped: the two filters disagreed or did not block them)"
  [ "$N_ALLOWED" -gt 0 ] && [ "$N_BLOCKED" -gt 0 ] || { echo "filtered: empty host list ($FL/hosts.txt, $FL/blocked.txt); see $SGD/log/squidGuard.log" >&2; exit 1; }
  ORIGIN_EXTRA=(--cert-hosts "$FL/hosts.txt")
fi

log "origin"
"$LG" origin --http "$ORIGIN_HTTP" --http 127.0.0.1:$((18081 + P)) --http 127.0.0.1:$((18082 + P)) --http 127.0.0.1:$((18083 + P)) \
  --https "$ORIGIN_HTTPS" --san "$M365" --dns "$ORIGIN_DNS" --ca-out "$W/origin-ca.pem" "${ORIGIN_EXTRA[@]}" >"$W/origin.log" 2>&1 &
PIDS+=($!)
wait_port "$ORIGIN_HTTPS"

# ---------------------------------------------------------------- komugate
log "komugate"
# shellcheck source=benches/config-edit.sh
. "$ROOT/benches/config-edit.sh"
# shellcheck source=benches/reference-servers.sh
. "$ROOT/benches/reference-servers.sh"
KCONF="$W/komugate.toml"
"$KG" config default >"$KCONF"
set_key "$KCONF" listen plain "\"$KG_PLAIN\""
set_key "$KCONF" listen mtls "\"$KG_MTLS\""
set_key "$KCONF" listen admin "\"$KG_ADMIN\""
set_key "$KCONF" data demo_origin '""'
set_key "$KCONF" dns servers "[\"$ORIGIN_DNS\"]"
set_key "$KCONF" decision allowed_ports "[]"
set_key "$KCONF" limits idle_timeout_secs 3600
if [ -n "${UPSTREAM_IDLE_TOTAL:-}" ]; then set_key "$KCONF" limits upstream_idle_total "$UPSTREAM_IDLE_TOTAL"; fi
set_key "$KCONF" limits max_streams_per_connection 256
set_key "$KCONF" inspect upstream_ca "\"$W/origin-ca.pem\""
set_key "$KCONF" inspect hosts "[\"*.office365.com\"]"
INSPECT=0
if grep -q '^\[inspect\]' "$KCONF"; then INSPECT=1; fi
"$KG" config check "$KCONF" >/dev/null
"$KG" serve --config "$KCONF" --data "$W/kg" >"$W/komugate.log" 2>&1 &
KG_PID=$!
PIDS+=($KG_PID)
wait_port "$KG_MTLS"
wait_port "$KG_PLAIN"
kill -0 "$KG_PID" 2>/dev/null || { echo "komugate exited at start; last lines of $W/komugate.log:" >&2; tail -5 "$W/komugate.log" >&2; exit 1; }
PKI="$W/kg/pki"

# ---------------------------------------------------------------- squid
log "squid ($SQUID_VERSION, ssl-bump: $SSL_BUMP)"
SQ="$W/squid"
mkdir -p "$SQ"
printf '127.0.0.1 %s\n' "$M365" >"$SQ/hosts"
cat "$PKI/inspect-ca.pem" "$PKI/inspect-ca.key" >"$SQ/bump.pem"
write_squid_conf "$SQ" "$SQ_PLAIN" "$FD_LIMIT" "acl blocked dstdomain blocked.example
http_access deny blocked"
if [ "$SSL_BUMP" = 1 ]; then
  /usr/lib/squid/security_file_certgen -c -s "$SQ/ssl_db" -M 16MB >/dev/null
  cat >>"$SQ/squid.conf" <<EOF
# ssl-bump with the same inspection CA komugate uses.
http_port $SQ_BUMP ssl-bump tls-cert=$SQ/bump.pem generate-host-certificates=on dynamic_cert_mem_cache_size=16MB
sslcrtd_program /usr/lib/squid/security_file_certgen -s $SQ/ssl_db -M 16MB
sslcrtd_children 5
acl step1 at_step SslBump1
ssl_bump peek step1
ssl_bump bump all
tls_outgoing_options cafile=$W/origin-ca.pem
EOF
fi
chown -R proxy:proxy "$SQ" 2>/dev/null || true
squid -N -f "$SQ/squid.conf" >"$SQ/stdout.log" 2>&1 &
SQ_PID=$!
PIDS+=($SQ_PID)
# Squid's own reason (a port taken by another Squid with the same service
# name still stopping) is in its cache.log.
(wait_port "$SQ_PLAIN") || { echo "squid did not start; its cache.log ends with:" >&2; tail -5 "$SQ/cache.log" >&2; exit 1; }

# ---------------------------------------------------------------- workloads
OUT="$W/out"
mkdir -p "$OUT"
COMMON=(--trust "$W/origin-ca.pem" --trust "$PKI/inspect-ca.pem" --origin-http "$ORIGIN_HTTP" --origin-https "$ORIGIN_HTTPS"
        --inspect-target "$M365:${ORIGIN_HTTPS##*:}" --pki "$PKI")
TABLES="$W/tables.md"
: >"$TABLES"

loadgen() { # name proxy pid args...
  local name="$1" proxy="$2" pid="$3"; shift 3
  "$LG" run --label "$name" --proxy "$proxy" --proxy-pid "$pid" "${COMMON[@]}" --json "$OUT/$name.json" "$@" >/dev/null 2>"$OUT/$name.err" \
    || { echo "loadgen $name failed:" >&2; tail -5 "$OUT/$name.err" >&2; return 1; }
  tail -n +2 "$OUT/$name.err" | grep -v '^$' >&2 || true
}

side_by_side() { # title name args...  (Squid first, then komugate, same args)
  local title="$1" name="$2"; shift 2
  log "$title"
  loadgen "$name-squid" "plain://$SQ_PLAIN" "$SQ_PID" "$@"
  loadgen "$name-komugate" "plain://$KG_PLAIN" "$KG_PID" "$@"
  "$LG" compare --title "$title" --left "$OUT/$name-squid.json" --right "$OUT/$name-komugate.json" >>"$TABLES"
  echo >>"$TABLES"
}

if has compare; then
  echo "### Side by side with Squid ($CLIENTS clients, $DUR s per workload, closed loop)" >>"$TABLES"
  echo >>"$TABLES"
  SB=(--devices "$CLIENTS" --duration "$DUR" --size 4096)
  side_by_side "Plain HTTP forward, 4 KiB responses, keep-alive" forward "${SB[@]}" --mix http=1
  side_by_side "CONNECT (bypassed HTTPS): new tunnel + TLS handshake + one 4 KiB GET per operation" connect "${SB[@]}" --mix connect=1
  side_by_side "Morning mix: http 5 : CONNECT 3 : blocked 1" mix "${SB[@]}" --mix http=5,connect=3,blocked=1
  side_by_side "Large bodies: 10 MiB down and 10 MiB up (4 clients)" large --devices 4 --duration "$DUR" --mix download=1,upload=1
fi

# The handshake-heavy inspected workload (a new tunnel, two TLS handshakes
# and 4 GETs per tunnel): part of `compare`, or alone as `inspect`.
if has compare || has inspect; then
  if [ "$INSPECT" = 1 ] && [ "$SSL_BUMP" = 1 ]; then
    SB=(--devices "$CLIENTS" --duration "$DUR" --size 4096)
    log "Inspected HTTPS"
    loadgen inspect-squid "plain://$SQ_BUMP" "$SQ_PID" "${SB[@]}" --mix inspect=1 --requests-per-tunnel 4
    loadgen inspect-komugate "plain://$KG_PLAIN" "$KG_PID" "${SB[@]}" --mix inspect=1 --requests-per-tunnel 4
    "$LG" compare --title "Inspected HTTPS ($M365 → local origin): CONNECT + TLS MITM + 4 GETs per tunnel (Squid ssl-bump vs komugate inspect)" \
      --left "$OUT/inspect-squid.json" --right "$OUT/inspect-komugate.json" >>"$TABLES"
    echo >>"$TABLES"
  else
    printf '#### Inspected HTTPS\n\nnot available yet (komugate [inspect]: %s, Squid ssl-bump: %s)\n\n' "$INSPECT" "$SSL_BUMP" >>"$TABLES"
  fi
fi

# ---------------------------------------------------------------- keepalive
# Inspected HTTPS in steady state: browsers and Office apps keep an inspected
# session for many requests, so handshakes and certificate minting are
# amortised and the per-request path (TLS records on both sides, the inner
# HTTP server, the stages, the upstream client, the log) is what is measured.
if has keepalive; then
  if [ "$INSPECT" = 1 ] && [ "$SSL_BUMP" = 1 ]; then
    { echo "### Inspected HTTPS in steady state: keep-alive sessions, Squid ssl-bump vs komugate inspect"
      echo
      echo "$KA_CLIENTS clients, $DUR s per workload, closed loop; each operation is a CONNECT to $M365 (the local origin) through the plain listener, TLS with the proxy's minted certificate (both proxies re-sign with the same inspection CA), then N keep-alive GETs of 1 KiB on that session. Inner HTTP/2: the client offers ALPN \`h2, http/1.1\` as a browser does and speaks what the proxy's session negotiates (Squid 5 does not speak HTTP/2, so its sessions are HTTP/1.1; the row \`tunnels with inner HTTP/2\` shows it). CPU µs per request = the proxy's CPU over the run ÷ requests completed."
      echo; } >>"$TABLES"
    KA=(--devices "$KA_CLIENTS" --duration "$DUR" --size 1024 --mix inspect=1)
    for rpt in $KA_REQUESTS; do
      for inner in $KA_INNER; do
        flag=(); what="HTTP/1.1"
        if [ "$inner" = h2 ]; then flag=(--inner-h2); what="HTTP/2 offered (ALPN h2, http/1.1)"; fi
        name="inspect-ka$rpt-$inner"
        log "Inspected keep-alive: $rpt GETs per tunnel, inner $what"
        loadgen "$name-squid" "plain://$SQ_BUMP" "$SQ_PID" "${KA[@]}" --requests-per-tunnel "$rpt" "${flag[@]}"
        loadgen "$name-komugate" "plain://$KG_PLAIN" "$KG_PID" "${KA[@]}" --requests-per-tunnel "$rpt" "${flag[@]}"
        "$LG" compare --title "Inspected HTTPS keep-alive: CONNECT + TLS MITM + $rpt GETs of 1 KiB per tunnel, inner $what" \
          --left "$OUT/$name-squid.json" --left-name "Squid ssl-bump" --right "$OUT/$name-komugate.json" --right-name "komugate inspect" >>"$TABLES"
        echo >>"$TABLES"
      done
    done
  else
    printf '#### Inspected HTTPS keep-alive\n\nnot available (komugate [inspect]: %s, Squid ssl-bump: %s)\n\n' "$INSPECT" "$SSL_BUMP" >>"$TABLES"
  fi
fi

# ---------------------------------------------------------------- bulk
# Bulk downloads through CONNECT tunnels (almost all staff traffic is HTTPS,
# i.e. tunnels): nginx serves one file on 127.0.0.3; curl fetches it directly
# and through each proxy's tunnel (plain HTTP inside, so the figure is the
# proxy's relay, not TLS at the ends). HTTP/2 CONNECT is the laptop's real
# path: curl → `komugate client` (local proxy) → one HTTP/2 connection over
# mutual TLS → the gateway. Each figure is the median of BULK_ROUNDS
# downloads; CPU is the proxy process's user + system time per GiB moved.
if has bulk; then
  BK="$W/bulk"
  mkdir -p "$BK/www" "$BK/nginx"
  BULK_ORIGIN=127.0.0.3:$((18090 + P))
  head -c "$((BULK_MIB * 1024 * 1024))" /dev/zero >"$BK/www/big"
  write_nginx_conf "$BK/nginx" "$BK/www" "$BULK_ORIGIN"
  nginx -c "$BK/nginx/nginx.conf" -p "$BK/nginx" >"$BK/nginx/stdout.log" 2>&1 &
  PIDS+=($!)
  wait_port "$BULK_ORIGIN"
  KC_HTTP=127.0.0.1:$((23180 + P))
  "$KG" client --server "$KG_MTLS" --server-name localhost --cert "$PKI/demo-device.pem" --key "$PKI/demo-device.key" \
    --ca "$PKI/inspect-ca.pem" --http "$KC_HTTP" --socks "" --dns "" >"$BK/client.log" 2>&1 &
  KC_PID=$!
  PIDS+=($KC_PID)
  wait_port "$KC_HTTP" || { tail -5 "$BK/client.log" >&2; exit 1; }
  cpu_ticks() { # pid → user + system clock ticks so far
    awk '{ print $14 + $15 }' "/proc/$1/stat"
  }
  machine_ticks() { # whole machine: busy clock ticks so far (user nice system irq softirq steal)
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat
  }
  median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
  bulk_row() { # label pids(comma-separated, "" = none) curl-args... → one table row
    local label="$1" pids="$2"; shift 2
    local rates=() cpus=() busy=() machine=() p t0 t1 m0 m1 out secs bytes hz
    hz="$(getconf CLK_TCK)"
    for _ in $(seq 1 "$BULK_ROUNDS"); do
      t0=0; for p in ${pids//,/ }; do t0=$((t0 + $(cpu_ticks "$p"))); done
      m0="$(machine_ticks)"
      out="$(curl -s -o /dev/null -w '%{time_total} %{size_download}' "$@" "http://$BULK_ORIGIN/big")" \
        || { echo "bulk: curl $* failed" >&2; return 1; }
      m1="$(machine_ticks)"
      t1=0; for p in ${pids//,/ }; do t1=$((t1 + $(cpu_ticks "$p"))); done
      secs="${out% *}"; bytes="${out#* }"
      [ "$bytes" = "$((BULK_MIB * 1024 * 1024))" ] || { echo "bulk $label: got $bytes bytes" >&2; return 1; }
      rates+=("$(awk -v b="$bytes" -v s="$secs" 'BEGIN { printf "%.2f", b / s / 1e9 }')")
      cpus+=("$(awk -v t="$((t1 - t0))" -v hz="$hz" -v b="$bytes" 'BEGIN { printf "%.0f", t * 1000 / hz / (b / 1073741824) }')")
      # The whole machine's busy time (curl, nginx and the proxy, plus
      # anything else running): whether the cores, not the proxy, set the rate.
      busy+=("$(awk -v t="$((m1 - m0))" -v hz="$hz" -v s="$secs" 'BEGIN { printf "%.2f", t / hz / s }')")
      machine+=("$(awk -v t="$((m1 - m0))" -v hz="$hz" -v b="$bytes" 'BEGIN { printf "%.0f", t * 1000 / hz / (b / 1073741824) }')")
    done
    local rate cpu
    rate="$(printf '%s\n' "${rates[@]}" | median)"
    cpu="$(printf '%s\n' "${cpus[@]}" | median)"
    [ -n "$pids" ] || cpu="–"
    echo "$label|$rate|$(IFS=/; echo "${rates[*]}")|$cpu|$(printf '%s\n' "${busy[@]}" | median)|$(printf '%s\n' "${machine[@]}" | median)"
  }
  log "bulk: $BULK_MIB MiB through tunnels, $BULK_ROUNDS rounds each"
  MTLS_CURL=(--proxy "https://localhost:${KG_MTLS##*:}" --connect-to "localhost:${KG_MTLS##*:}:$KG_MTLS"
             --proxy-cacert "$PKI/inspect-ca.pem" --proxy-cert "$PKI/demo-device.pem" --proxy-key "$PKI/demo-device.key")
  rows=(
    "$(bulk_row "direct (no proxy)" "" --noproxy '*')"
    "$(bulk_row "Squid, plain forward" "$SQ_PID" -x "http://$SQ_PLAIN")"
    "$(bulk_row "komugate, plain forward" "$KG_PID" -x "http://$KG_PLAIN")"
    "$(bulk_row "Squid, CONNECT tunnel (plain listener)" "$SQ_PID" -p -x "http://$SQ_PLAIN")"
    "$(bulk_row "komugate, CONNECT tunnel (plain listener)" "$KG_PID" -p -x "http://$KG_PLAIN")"
    "$(bulk_row "komugate, CONNECT tunnel (mTLS listener, HTTP/1.1)" "$KG_PID" -p "${MTLS_CURL[@]}")"
    "$(bulk_row "komugate, HTTP/2 CONNECT via komugate client (gateway + client CPU)" "$KG_PID,$KC_PID" -p -x "http://$KC_HTTP")"
  )
  direct="$(echo "${rows[0]}" | cut -d'|' -f2)"
  squid_tunnel="$(echo "${rows[3]}" | cut -d'|' -f2)"
  squid_tunnel_cpu="$(echo "${rows[3]}" | cut -d'|' -f4)"
  { echo "### Bulk download through tunnels ($BULK_MIB MiB from nginx on $BULK_ORIGIN, median of $BULK_ROUNDS)"
    echo
    echo "curl fetches one file of $BULK_MIB MiB over plain HTTP, directly and through each path (\`-p\`: a CONNECT tunnel). CPU = the proxy process's user + system time per GiB moved (HTTP/2 row: the gateway and \`komugate client\` together). Machine: all $(nproc) cores' busy time during the download (curl, nginx, the proxy and anything else), as cores busy on average and as CPU per GiB; when direct already keeps the cores busy, a proxied path's rate is set by what the cores have left, and the proxy's own CPU per GiB is the comparable figure."
    echo
    echo "| path | GB/s | rounds | × direct | × Squid's tunnel | proxy CPU ms per GiB | CPU × Squid's tunnel | machine: cores busy | machine CPU ms per GiB |"
    echo "|---|---:|---|---:|---:|---:|---:|---:|---:|"
    for r in "${rows[@]}"; do
      IFS='|' read -r label rate all cpu busy machine <<<"$r"
      xd="$(awk -v a="$rate" -v b="$direct" 'BEGIN { printf "%.2f", a / b }')"
      xs="$(awk -v a="$rate" -v b="$squid_tunnel" 'BEGIN { printf "%.2f", a / b }')"
      xc="–"; [ "$cpu" != "–" ] && xc="$(awk -v a="$cpu" -v b="$squid_tunnel_cpu" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "–" }')"
      echo "| $label | $rate | $all | $xd | $xs | $cpu | $xc | $busy | $machine |"
    done
    echo; } >>"$TABLES"
fi

# ---------------------------------------------------------------- filtered
# Like for like: both proxies filter URLs with the same UT1 categories.
# Squid + squidGuard (url_rewrite_program, 302 redirect to a block URL) on its
# own port, komugate with a policy file (category rule for everyone) on its
# own port; the unfiltered instances above keep their simple lists.
if has filtered; then
  KGF_PLAIN=127.0.0.1:$((24128 + P))
  SQF_PLAIN=127.0.0.1:$((31328 + P))  # below the ephemeral port range (32768+), like KGF_PLAIN
  log "filtered: komugate with the UT1 policy"
  KGF="$W/kgf"
  mkdir -p "$KGF"
  cats_toml="$(for c in $FILTER_CATEGORIES; do printf '"%s", ' "$c"; done | sed 's/, $//')"
  cat >"$KGF/policy.toml" <<EOF
# Written by benches/compare-squid.sh: block the UT1 categories ($FILTER_CATEGORIES)
# for everyone, as the board's "UT1 有害カテゴリ" rule (examples/policy.toml) does.
version = 1

[defaults]
action = "allow"

[[categories.source]]
format = "squidguard"
path = "$UT1W"
only = [$cats_toml]

[[rule]]
name = "UT1 categories"
categories = [$cats_toml]
action = "block"
EOF
  "$KG" policy check "$KGF/policy.toml" >"$KGF/policy-check.log" 2>&1 \
    || { echo "komugate policy check $KGF/policy.toml failed:" >&2; cat "$KGF/policy-check.log" >&2; exit 1; }
  KFCONF="$KGF/komugate.toml"
  cp "$KCONF" "$KFCONF"
  set_key "$KFCONF" listen plain "\"$KGF_PLAIN\""
  set_key "$KFCONF" listen mtls '""'
  set_key "$KFCONF" listen admin '""'
  set_key "$KFCONF" policy file "\"$KGF/policy.toml\""
  grep -q "^file = \"$KGF/policy.toml\"" "$KFCONF" || { echo "could not set [policy] file in $KFCONF (has the embedded default config changed?)" >&2; exit 1; }
  "$KG" config check "$KFCONF" >"$KGF/config-check.log" 2>&1 \
    || { echo "komugate config check $KFCONF failed:" >&2; cat "$KGF/config-check.log" >&2; exit 1; }
  "$KG" serve --config "$KFCONF" --data "$KGF/data" >"$KGF/komugate.log" 2>&1 &
  KGF_PID=$!
  PIDS+=($KGF_PID)
  # Importing ~500,000 list lines takes a few seconds before the listener opens.
  for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/${KGF_PLAIN%:*}/${KGF_PLAIN##*:}") 2>/dev/null && break; sleep 0.1; done
  wait_port "$KGF_PLAIN" || { tail -5 "$KGF/komugate.log" >&2; exit 1; }

  log "filtered: Squid + squidGuard (url_rewrite_children $SG_CHILDREN)"
  SQF="$W/squid-filtered"
  mkdir -p "$SQF"
  # Squid resolves the workload's names from a hosts file (komugate asks the
  # origin's DNS responder, which answers 127.0.0.1 for every name).
  { printf '127.0.0.1 %s\n' "$M365"; sed 's/^/127.0.0.1 /' "$FL/hosts.txt" "$FL/blocked.txt"; } >"$SQF/hosts"
  # Every request (CONNECT included) is checked by squidGuard; blocked ones
  # get squidGuard's 302 redirect.
  write_squid_conf "$SQF" "$SQF_PLAIN" "$FD_LIMIT" "url_rewrite_program /usr/bin/squidGuard -c $SGD/squidGuard.conf
url_rewrite_children $SG_CHILDREN"
  chown -R proxy:proxy "$SQF" "$FL" 2>/dev/null || true
  squid -k parse -f "$SQF/squid.conf" >"$SQF/parse.log" 2>&1 \
    || { echo "squid -k parse $SQF/squid.conf failed:" >&2; grep -iE 'error|fatal|bungled' "$SQF/parse.log" >&2; exit 1; }
  squid -N -n komugatefilter -f "$SQF/squid.conf" >"$SQF/stdout.log" 2>&1 &
  SQF_PID=$!
  PIDS+=($SQF_PID)
  wait_port "$SQF_PLAIN" || { tail -5 "$SQF/cache.log" >&2; exit 1; }

  alive() { # pid name log: a proxy that died during a workload makes its figures meaningless
    kill -0 "$1" 2>/dev/null && return 0
    echo "$2 (pid $1) exited during the workload; last lines of $3:" >&2; tail -5 "$3" >&2; exit 1
  }
  pair() { # title name args...  (Squid + squidGuard first, then komugate, same args)
    local title="$1" name="$2"; shift 2
    log "$title"
    loadgen "$name-squid" "plain://$SQF_PLAIN" "$SQF_PID" "$@"
    alive "$SQF_PID" "Squid + squidGuard" "$SQF/cache.log"
    loadgen "$name-komugate" "plain://$KGF_PLAIN" "$KGF_PID" "$@"
    alive "$KGF_PID" "komugate (filtered)" "$KGF/komugate.log"
    "$LG" compare --title "$title" --left "$OUT/$name-squid.json" --left-name "Squid + squidGuard" \
      --right "$OUT/$name-komugate.json" --right-name komugate >>"$TABLES"
    { echo; echo "| operation kind | Squid + squidGuard: ok, p50 / p99 (ms) | komugate: ok, p50 / p99 (ms) |"; echo "|---|---:|---:|"
      for k in http http_blocked connect connect_blocked; do
        l="$(grep -F "| \`$k\`:" "$OUT/$name-squid.err" | cut -d'|' -f3 | sed 's/^ *//; s/ *$//' || true)"
        r="$(grep -F "| \`$k\`:" "$OUT/$name-komugate.err" | cut -d'|' -f3 | sed 's/^ *//; s/ *$//' || true)"
        if [ -n "$l$r" ]; then echo "| \`$k\` | ${l:-0} | ${r:-0} |"; fi
      done; echo
      procs="$(sed -n 's/.*descendants (up to \([0-9]*\) processes).*/\1/p' "$OUT/$name-squid.err" | tail -1)"
      echo "Squid + squidGuard CPU and RSS: summed over up to ${procs:-1} processes (squid and its squidGuard helpers)."
      echo; } >>"$TABLES"
  }
  FB=(--devices "$CLIENTS" --duration "$DUR" --size 4096 --hosts "$FL/hosts.txt" --blocked-hosts "$FL/blocked.txt"
      --blocked-share "$BLOCKED_SHARE" --blocked-status 403,302)
  {
    echo "### Like for like: URL filtering with the UT1 categories (Squid + squidGuard vs komugate)"
    echo
    echo "- Both filters block the UT1 categories $(echo $FILTER_CATEGORIES | sed 's/ /, /g') (the board's \"UT1 有害カテゴリ\" rule in examples/policy.toml) from one copy of $UT1_DIR ($UT1_LINES domain and URL lines; files split upstream as domains.N would be joined first); expression lists are off on both sides."
    echo "- Squid + squidGuard: $SQUID_VERSION, 1 worker, \`url_rewrite_program /usr/bin/squidGuard\` ($(squidGuard -v 2>&1 | head -1 | sed 's/^ *//')), \`url_rewrite_children $SG_CHILDREN\`, Berkeley DB files built with \`squidGuard -C all\`; a blocked request gets squidGuard's \`redirect 302:\` to a block URL on the origin (plain HTTP and CONNECT alike); names resolved from a Squid \`hosts_file\`."
    echo "- komugate: a policy file with one \`[[categories.source]] format = \"squidguard\"\` source (\`only\` = the same categories) and one block rule for everyone; a blocked request gets the 403 block page; names resolved through the origin's DNS responder (answers cached for their TTL)."
    echo "- Workload: $CLIENTS clients, $DUR s, closed loop; each operation addresses one of $N_ALLOWED random host names that neither filter lists, or with probability $BLOCKED_SHARE one of $N_BLOCKED names drawn evenly from the categories' domains lists (every second one as www.<domain>); candidates on which squidGuard and komugate disagreed were dropped before the run ($DROPPED dropped). The load generator counts a 302 or 403 on a blocked name as success and anything else (a blocked name that goes through) as an error. HTTPS inside CONNECT tunnels is verified against each host name (the origin mints a certificate per name from its CA before the run)."
    echo "- Proxy CPU and peak RSS are summed over the proxy's process tree: for Squid the main process and its squidGuard helpers, for komugate its single process."
    echo
  } >>"$TABLES"
  pair "Filtered plain HTTP forward (UT1 categories), 4 KiB responses, keep-alive" filtered-forward "${FB[@]}" --mix http=1
  pair "Filtered CONNECT (UT1 categories): new tunnel + TLS handshake + one 4 KiB GET per allowed operation" filtered-connect "${FB[@]}" --mix connect=1

  # Control: what the filter itself costs. The filtered forward above
  # differs from the unfiltered side-by-side forward in two ways: the
  # filter, and N_ALLOWED upstream host names (as many pooled upstream
  # connections, DNS answers, ...) instead of one origin. komugate without a
  # policy (the instance of the side-by-side tables) and the filtered one
  # take the same workloads, alternating, FILTER_ROUNDS times: one origin,
  # and the N_ALLOWED allowed names (no blocked share: the unfiltered
  # gateway would pass those).
  log "filtered: control, komugate without and with the UT1 policy, 1 and $N_ALLOWED hosts, $FILTER_ROUNDS rounds"
  CB=(--devices "$CLIENTS" --duration "$DUR" --size 4096 --mix http=1)
  cpu_us() { jq -r '.proxy_usage.cpu_seconds * 1e6 / .requests' "$OUT/$1.json"; }
  rps() { jq -r '.requests_per_second' "$OUT/$1.json"; }
  CTRL="$OUT/control.tsv"
  : >"$CTRL"
  for r in $(seq 1 "$FILTER_ROUNDS"); do
    loadgen "ctl-unf1-$r" "plain://$KG_PLAIN" "$KG_PID" "${CB[@]}"
    loadgen "ctl-filt1-$r" "plain://$KGF_PLAIN" "$KGF_PID" "${CB[@]}"
    loadgen "ctl-unfN-$r" "plain://$KG_PLAIN" "$KG_PID" "${CB[@]}" --hosts "$FL/hosts.txt"
    loadgen "ctl-filtN-$r" "plain://$KGF_PLAIN" "$KGF_PID" "${CB[@]}" --hosts "$FL/hosts.txt"
    alive "$KGF_PID" "komugate (filtered)" "$KGF/komugate.log"
    printf '%s' "$r" >>"$CTRL"
    for n in unf1 filt1 unfN filtN; do printf '\t%s\t%s' "$(cpu_us "ctl-$n-$r")" "$(rps "ctl-$n-$r")" >>"$CTRL"; done
    echo >>"$CTRL"
  done
  {
    echo "#### Control: the filter's own cost (komugate without and with the UT1 policy, the same workloads)"
    echo
    echo "Plain HTTP forward, 4 KiB responses, keep-alive, $CLIENTS clients, $DUR s per run, the four runs of a round back to back, $FILTER_ROUNDS rounds. \"1 host\": the one local origin of the side-by-side tables; \"$N_ALLOWED hosts\": the filtered workload's allowed names (no blocked share). Cells: proxy CPU µs per request (requests/s)."
    echo
    echo "| round | unfiltered, 1 host | filtered, 1 host | unfiltered, $N_ALLOWED hosts | filtered, $N_ALLOWED hosts |"
    echo "|---|---:|---:|---:|---:|"
    awk -F'\t' '{ printf "| %s | %.1f (%.0f) | %.1f (%.0f) | %.1f (%.0f) | %.1f (%.0f) |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9 }' "$CTRL"
    med() { cut -f"$1" "$CTRL" | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
    m1="$(med 2)"; m2="$(med 4)"; m3="$(med 6)"; m4="$(med 8)"
    printf '| median | %.1f | %.1f | %.1f | %.1f |\n' "$m1" "$m2" "$m3" "$m4"
    echo
    awk -v n="$N_ALLOWED" -v a="$m1" -v b="$m2" -v c="$m3" -v d="$m4" 'BEGIN { printf "Filtered ÷ unfiltered, CPU per request: %.2f with 1 host, %.2f with %s hosts; %s hosts ÷ 1 host, unfiltered: %.2f.\n", b / a, d / c, n, n, c / a }'
    echo
  } >>"$TABLES"
fi

MIX_MORNING="http=40,connect=30,blocked=10,download=1,upload=1"
[ "$INSPECT" = 1 ] && MIX_MORNING="$MIX_MORNING,inspect=15"

scenario() { # title name devices ramp ops args...
  local title="$1" name="$2" devices="$3" ramp="$4" ops="$5"; shift 5
  log "$title"
  loadgen "$name" "mtls://$KG_MTLS" "$KG_PID" --devices "$devices" --ramp "$ramp" --ops-per-device "$ops" \
    --concurrency 4 --h2-share 0.5 --mix "$MIX_MORNING" "$@"
  { echo "#### $title"; echo; sed -n '/^\*\*/,$p' "$OUT/$name.err"; echo; } >>"$TABLES"
}

if has morning; then
  scenario "Scale point: $MORNING_DEVICES devices waking within $MORNING_RAMP s (this board), mTLS device certs, half HTTP/1.1 CONNECT, half HTTP/2 multiplexed CONNECT, 20 operations per device (mix $MIX_MORNING, large = 10 MiB)" \
    morning "$MORNING_DEVICES" "$MORNING_RAMP" 20
fi
if has prefecture; then
  scenario "Scale point: $PREF_DEVICES devices waking within $PREF_RAMP s (a prefecture), same device behaviour" \
    prefecture "$PREF_DEVICES" "$PREF_RAMP" 20
fi

if has idle; then
  # Each idle tunnel costs a komugate process one upstream socket (the client
  # side is multiplexed over HTTP/2) and the origin one socket, so one process
  # holds at most PER tunnels under the open-file limit. Past that the tunnels
  # are spread over komugate replicas, as horizontal replicas on Kubernetes:
  # same config, own listener/admin ports and data dir (a copy of the same
  # PKI), each with its own origin process. Where the hard limit could be
  # raised above, this is one process.
  n="$IDLE_TUNNELS"
  if [ "$FD_LIMIT" -gt 4000 ]; then per=$((FD_LIMIT - 2000)); else per=$((FD_LIMIT / 2)); fi
  replicas=$(((n + per - 1) / per))
  max_replicas=8
  note=""
  if [ "$replicas" -gt "$max_replicas" ]; then
    note=" (asked for $n; capped to $((max_replicas * per)): $max_replicas processes of $per tunnels under the open-file limit $FD_LIMIT)"
    replicas=$max_replicas; n=$((max_replicas * per))
  fi
  IDLE_PIDS=()
  REPLICA_ARGS=()
  first=$((n < per ? n : per))
  left=$((n - first))
  for r in $(seq 1 $((replicas - 1))); do
    t=$((left < per ? left : per)); left=$((left - t))
    base=$((${ORIGIN_HTTP##*:} + 10 * r))
    "$LG" origin --http "127.0.0.1:$base" --http "127.0.0.1:$((base + 1))" --http "127.0.0.1:$((base + 2))" --http "127.0.0.1:$((base + 3))" \
      >"$W/origin-$r.log" 2>&1 &
    PIDS+=($!); IDLE_PIDS+=($!)
    RCONF="$W/komugate-$r.toml"
    cp "$KCONF" "$RCONF"
    set_key "$RCONF" listen plain "\"127.0.0.1:$((${KG_PLAIN##*:} + r))\""
    set_key "$RCONF" listen mtls "\"127.0.0.1:$((${KG_MTLS##*:} + r))\""
    set_key "$RCONF" listen admin "\"127.0.0.1:$((${KG_ADMIN##*:} + r))\""
    mkdir -p "$W/kg-$r"
    cp -r "$PKI" "$W/kg-$r/pki"
    "$KG" serve --config "$RCONF" --data "$W/kg-$r" >"$W/komugate-$r.log" 2>&1 &
    rpid=$!
    PIDS+=($rpid); IDLE_PIDS+=($rpid)
    wait_port "127.0.0.1:$base"
    wait_port "127.0.0.1:$((${KG_MTLS##*:} + r))"
    REPLICA_ARGS+=(--replica "mtls://127.0.0.1:$((${KG_MTLS##*:} + r)),pid=$rpid,tunnels=$t,targets=127.0.0.1:$base+127.0.0.1:$((base + 1))+127.0.0.1:$((base + 2))+127.0.0.1:$((base + 3))")
  done
  log "idle tunnels: $n over $replicas komugate process(es) of at most $per tunnels$note"
  op=${ORIGIN_HTTP##*:}
  "$LG" idle --proxy "mtls://$KG_MTLS" --proxy-pid "$KG_PID" "${COMMON[@]}" --tunnels "$first" --per-conn 200 \
    --targets "127.0.0.1:$op,127.0.0.1:$((op + 1)),127.0.0.1:$((op + 2)),127.0.0.1:$((op + 3))" "${REPLICA_ARGS[@]}" --hold 5 --json "$OUT/idle.json" >/dev/null 2>"$OUT/idle.err" \
    || { tail -5 "$OUT/idle.err" >&2; exit 1; }
  for p in "${IDLE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ "$replicas" -gt 1 ]; then
    how="$replicas komugate processes (replicas: same config, own ports, data dir and origin process) because one process may open only $FD_LIMIT files here; process 1 is the single-process figure"
  else
    how="one komugate process"
  fi
  { echo "#### Scale point: idle tunnels held open$note"; echo; echo "$n tunnels on $how."; echo
    echo "| figure | value |"; echo "|---|---|"
    grep '^|' "$OUT/idle.err"; echo; echo "Target: ≤ 20 KiB per tunnel."; echo; } >>"$TABLES"
fi

if has soak; then
  log "soak: $SOAK_MINUTES minutes at the board's peak"
  RSSLOG="$OUT/soak-rss.tsv"
  ( for m in $(seq 0 "$SOAK_MINUTES"); do
      printf '%s\t%s\n' "$m" "$(awk '/VmRSS/ {print $2}' "/proc/$KG_PID/status")" >>"$RSSLOG"; sleep 60; done ) &
  SAMPLER=$!
  PIDS+=($SAMPLER)
  # The board's peak: 800 devices active, 4 concurrent operations each, closed loop.
  loadgen soak "mtls://$KG_MTLS" "$KG_PID" --devices "$MORNING_DEVICES" --ramp 60 --duration "$((SOAK_MINUTES * 60))" \
    --concurrency 1 --h2-share 0.5 --mix "$MIX_MORNING"
  kill "$SAMPLER" 2>/dev/null || true
  { echo "#### Soak: $SOAK_MINUTES minutes, $MORNING_DEVICES devices in a closed loop"; echo
    sed -n '/^\*\*/,$p' "$OUT/soak.err"; echo; echo "| minute | komugate RSS (MiB) |"; echo "|---:|---:|"
    awk -F'\t' '{ printf "| %s | %.1f |\n", $1, $2/1024 }' "$RSSLOG"; echo; } >>"$TABLES"
fi

# ---------------------------------------------------------------- report
CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
SECTION="$W/section.md"
{
  echo "## Load test"
  echo
  echo "Produced by \`benches/compare-squid.sh\` on $(date -u +%Y-%m-%dT%H:%MZ). Exact command:"
  echo
  echo '```'
  echo "$COMMAND"
  echo '```'
  echo
  echo "- Machine: $(nproc) cores, $CPU_MODEL, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, $(uname -sr); open-file limit $FD_LIMIT"
  echo "- komugate: $KG_VERSION, release build; Squid: $SQUID_VERSION (Debian package, 1 worker, no disk cache, ssl-bump: $([ "$SSL_BUMP" = 1 ] && echo yes || echo no))"
  echo "- Load generator: \`komugate-loadgen\` (same binary, same arguments for both proxies; only \`--proxy\` differs); origin: \`komugate-loadgen origin\` (hyper, loopback)"
  echo "- Everything (load generator, origin, proxy) shares the same cores, so absolute figures understate both proxies; compare the ratios, which come from one run."
  echo "- Side-by-side workloads use each proxy's plain listener (Squid has no device-certificate mTLS listener); the scale points use komugate's mTLS listener with one device certificate per device."
  echo "- Latency = one operation, from its start to the last body byte (a CONNECT operation includes the tunnel set-up and the TLS handshake to the origin)."
  echo
  cat "$TABLES"
} >"$SECTION"
cat "$SECTION"
if [ "$WRITE_RESULTS" = 1 ]; then
  RES="$ROOT/benches/RESULTS.md"
  touch "$RES"
  # Replace the "## Load test" section (up to the next "## " heading), keep the others.
  awk -v f="$SECTION" '
    BEGIN { while ((getline l < f) > 0) sec = sec l "\n" }
    /^## / { if (skip) skip = 0; if ($0 == "## Load test") { printf "%s", sec; done = 1; skip = 1; next } }
    !skip { print }
    END { if (!done) { print ""; printf "%s", sec } }' "$RES" >"$RES.tmp" && mv "$RES.tmp" "$RES"
  log "wrote the Load test section of $RES"
fi
