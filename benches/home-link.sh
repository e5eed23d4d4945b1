#!/usr/bin/env bash
# A laptop at home: komugate client over an emulated home link vs direct over
# the same link. Two network namespaces joined by komugate-linkemu (packets
# carried in user space between two TUN devices: delay, random loss, a rate
# limit behind a drop-tail queue; this kernel has no netem), nginx and the
# gateway on the network side, curl and `komugate client` on the laptop side.
#
# Workloads, each BULK_ROUNDS times (median reported):
#   bulk   one BULK_MIB download
#   burst  a page-like burst: 60 fetches of 20 KiB over 6 hosts, 6 at a time
#   mixed  the burst while a bulk download runs (head-of-line and flow
#          control of the client's one HTTP/2 connection)
# Direct: curl to nginx over the link (a TCP connection per host). Through
# komugate: curl → `komugate client` (local proxy, CONNECT) → one HTTP/2
# connection over mutual TLS across the link → the gateway → nginx.
#
# Usage: benches/home-link.sh
#   PROFILES    ["home 4g"]  home: RTT 30 ms, 0.5 % loss, 100 Mbit/s;
#               4g: RTT 60 ms, 1 % loss, 30 Mbit/s down, 10 up
#   BULK_MIB    [100]   BULK_ROUNDS [3]
#   WRITE_RESULTS 1 = rewrite the "## A laptop at home" section of benches/RESULTS.md [1]
#   SKIP_BUILD  1 = use the release binaries already built [0]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PROFILES="${PROFILES:-home 4g}"
BULK_MIB="${BULK_MIB:-100}"
BULK_ROUNDS="${BULK_ROUNDS:-3}"
WRITE_RESULTS="${WRITE_RESULTS:-1}"
COMMAND="$(for v in PROFILES BULK_MIB BULK_ROUNDS; do [ -n "${!v:-}" ] && printf '%s=%q ' "$v" "${!v}"; done; echo "benches/home-link.sh")"
log() { printf '\n=== %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { echo "home-link.sh creates network namespaces: run it as root" >&2; exit 1; }
need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]}"
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "building komugate, komugate-loadgen and komugate-linkemu (release)"
  cargo build --release -q -p komugate -p komugate-benches --bin komugate --bin komugate-loadgen --bin komugate-linkemu
fi
TARGET="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
KG="$TARGET/release/komugate"
LG="$TARGET/release/komugate-loadgen"
EMU="$TARGET/release/komugate-linkemu"

LAPTOP=kghl-laptop
NET=kghl-net
GW_IP=10.77.0.1
LAPTOP_IP=10.77.0.2
W="$(mktemp -d /tmp/komugate-homelink.XXXXXX)"
chmod 755 "$W"   # nginx's workers read the files as an unprivileged user
PIDS=()
# shellcheck source=benches/netns-common.sh
. "$ROOT/benches/netns-common.sh"

log "namespaces $LAPTOP and $NET, TUN devices, link emulator"
ip -n "$LAPTOP" tuntap add dev emu0 mode tun
ip -n "$NET" tuntap add dev emu1 mode tun
ip -n "$LAPTOP" addr add "$LAPTOP_IP" peer "$GW_IP" dev emu0
ip -n "$NET" addr add "$GW_IP" peer "$LAPTOP_IP" dev emu1
ip -n "$LAPTOP" link set emu0 up
ip -n "$NET" link set emu1 up

log "network side: nginx, DNS, komugate"
mkdir -p "$W/www" "$W/nginx"
head -c "$((BULK_MIB * 1024 * 1024))" /dev/zero >"$W/www/big"
for i in $(seq 1 10); do head -c 20480 /dev/zero >"$W/www/small$i"; done
# shellcheck source=benches/reference-servers.sh
. "$ROOT/benches/reference-servers.sh"
write_nginx_conf "$W/nginx" "$W/www" "$GW_IP:80" 127.0.0.1:80
spawn_in "$NET" nginx -c "$W/nginx/nginx.conf" -p "$W/nginx" >"$W/nginx/stdout.log" 2>&1
# Every name resolves to the network side's loopback, where nginx listens too.
spawn_in "$NET" "$LG" origin --http 127.0.0.1:18080 --dns 127.0.0.1:53 >"$W/origin.log" 2>&1
# shellcheck source=benches/config-edit.sh
. "$ROOT/benches/config-edit.sh"
KCONF="$W/komugate.toml"
"$KG" config default >"$KCONF"
set_key "$KCONF" listen mtls "\"$GW_IP:8443\""
set_key "$KCONF" listen plain "\"127.0.0.1:3128\""
set_key "$KCONF" listen admin "\"127.0.0.1:9090\""
set_key "$KCONF" dns servers "[\"127.0.0.1:53\"]"
set_key "$KCONF" limits idle_timeout_secs 3600
"$KG" config check "$KCONF" >/dev/null
spawn_in "$NET" "$KG" serve --config "$KCONF" --data "$W/kg" >"$W/komugate.log" 2>&1
wait_port "$NET" "127.0.0.1:80"
wait_port "$NET" "$GW_IP:8443" || { tail -5 "$W/komugate.log" >&2; exit 1; }
PKI="$W/kg/pki"

log "laptop side: komugate client"
spawn_in "$LAPTOP" "$KG" client --server "$GW_IP:8443" --server-name localhost --cert "$PKI/demo-device.pem" \
  --key "$PKI/demo-device.key" --ca "$PKI/inspect-ca.pem" --http 127.0.0.1:3129 --socks "" --dns "" >"$W/client.log" 2>&1

HOSTS=(h1 h2 h3 h4 h5 h6)
DIRECT=(--noproxy '*')
for h in "${HOSTS[@]}"; do DIRECT+=(--resolve "$h.home.test:80:$GW_IP"); done
VIA=(-p -x http://127.0.0.1:3129)
burst_urls() { for i in $(seq 1 10); do for h in "${HOSTS[@]}"; do echo "url = \"http://$h.home.test/small$i\""; echo "output = \"/dev/null\""; done; done; }
burst_urls >"$W/burst.curl"
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
bulk() { # curl-args... → seconds
  local out
  out="$(in_laptop curl -s -o /dev/null -w '%{http_code} %{size_download} %{time_total}' "$@" "http://h1.home.test/big")"
  [ "${out% *}" = "200 $((BULK_MIB * 1024 * 1024))" ] || { echo "bulk download ($*): $out" >&2; return 1; }
  echo "${out##* }"
}
burst() { # curl-args... → seconds for all 60 fetches
  local t0 ok; t0="$(now)"
  ok="$(in_laptop curl -s --parallel --parallel-max 6 -K "$W/burst.curl" -w '%{http_code}\n' "$@" | grep -c '^200$' || true)"
  [ "$ok" = 60 ] || { echo "page burst ($*): $ok of 60 fetches answered 200" >&2; return 1; }
  elapsed "$t0" "$(now)"
}
mixed() { # curl-args... → burst seconds while a bulk download runs
  in_laptop curl -sf -o /dev/null "$@" "http://h1.home.test/big" &
  local bg=$!
  sleep 2
  burst "$@"
  wait "$bg"
}
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
measure() { # workload args... → "median|all rounds"
  local all=()
  for _ in $(seq 1 "$BULK_ROUNDS"); do all+=("$("$@")"); done
  echo "$(printf '%s\n' "${all[@]}" | median)|$(IFS=/; echo "${all[*]}")"
}

TABLES="$W/tables.md"
: >"$TABLES"
for profile in $PROFILES; do
  case "$profile" in
    home) shape=(--rtt-ms 30 --loss 0.005 --rate-mbit 100); what="home broadband: RTT 30 ms, 0.5 % loss each way, 100 Mbit/s both ways" ;;
    4g) shape=(--rtt-ms 60 --loss 0.01 --rate-mbit 30 --rate-up-mbit 10); what="4G-like: RTT 60 ms, 1 % loss each way, 30 Mbit/s down, 10 up" ;;
    *) echo "unknown profile $profile (home, 4g)" >&2; exit 1 ;;
  esac
  "$EMU" --a "$LAPTOP:emu0" --b "$NET:emu1" "${shape[@]}" >"$W/linkemu-$profile.log" 2>&1 &
  EMU_PID=$!
  PIDS+=($EMU_PID)
  wait_port "$LAPTOP" 127.0.0.1:3129 || { tail -5 "$W/client.log" >&2; exit 1; }
  # The client's link comes up over the emulated link; first fetch waits for it.
  for _ in $(seq 1 100); do in_laptop curl -sf -o /dev/null "${VIA[@]}" http://h1.home.test/small1 && break; sleep 0.2; done
  log "$profile: $what"
  d_bulk="$(measure bulk "${DIRECT[@]}")"; k_bulk="$(measure bulk "${VIA[@]}")"
  # Download rates for the table (MB/s from the median seconds).
  d_burst="$(measure burst "${DIRECT[@]}")"; k_burst="$(measure burst "${VIA[@]}")"
  d_mixed="$(measure mixed "${DIRECT[@]}")"; k_mixed="$(measure mixed "${VIA[@]}")"
  kill -TERM "$EMU_PID"; wait "$EMU_PID" 2>/dev/null || true
  row() { # label direct komugate goal kind(rate|time)
    local d="${2%%|*}" k="${3%%|*}" ratio
    if [ "$5" = rate ]; then ratio="$(awk -v d="$d" -v k="$k" 'BEGIN { printf "%.2f", d / k }')"
    else ratio="$(awk -v d="$d" -v k="$k" 'BEGIN { printf "%.2f", k / d }')"; fi
    echo "| $1 | ${2%%|*} (${2#*|}) | ${3%%|*} (${3#*|}) | $ratio | $4 |"
  }
  { echo "### $what"
    echo
    echo "| workload | direct, s (rounds) | komugate client, s (rounds) | ratio | goal |"
    echo "|---|---:|---:|---:|---|"
    row "$BULK_MIB MiB download (ratio: komugate throughput ÷ direct)" "$d_bulk" "$k_bulk" "≥ 0.9" rate
    row "page burst: 60 × 20 KiB over 6 hosts (ratio: komugate time ÷ direct)" "$d_burst" "$k_burst" "≤ 1.2" time
    row "the same burst during a $BULK_MIB MiB download" "$d_mixed" "$k_mixed" "no stall behind the download" time
    echo
    echo "Link emulator: $(tail -2 "$W/linkemu-$profile.log" 2>/dev/null | tr '\n' ' ')"
    echo; } >>"$TABLES"
  cat "$TABLES" >&2
done

SECTION="$W/section.md"
{ echo "## A laptop at home (emulated link)"
  echo
  echo "\`$COMMAND\` — $(date -u +%Y-%m-%d), komugate $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) cores. Two network namespaces joined by \`komugate-linkemu\` (user-space packet emulator between two TUN devices: half the RTT each way, random loss, pacing at the link rate behind a 50 ms drop-tail queue). Direct: curl to nginx over the link. komugate: curl → \`komugate client\` (CONNECT) → one HTTP/2 connection over mutual TLS across the link → the gateway → nginx on the network side. Medians of $BULK_ROUNDS rounds. The machine's load during the run: $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min). Tuning from these figures: the gateway's mTLS connections and the client's link keep their unsent queue short (\`TCP_NOTSENT_LOWAT\` 128 KiB, \`proxy/src/multiplexed_socket.rs\`); before that, the burst during a download took 1.97× direct's time on the home profile (one round at 49a64f8: 1.94 s against 0.99 s) because the page's answers queued behind megabytes of the download in the socket. hyper's HTTP/2 windows (client: 2 MiB per stream, 5 MiB per connection) already exceed both links' bandwidth-delay products and were left as they are."
  echo
  cat "$TABLES"; } >"$SECTION"
if [ "$WRITE_RESULTS" = 1 ]; then
  RES="$ROOT/benches/RESULTS.md"
  awk -v f="$SECTION" -v h="## A laptop at home (emulated link)" '
    BEGIN { while ((getline l < f) > 0) sec = sec l "\n" }
    /^## / { if (skip) skip = 0; if ($0 == h) { printf "%s", sec; done = 1; skip = 1; next } }
    !skip { print }
    END { if (!done) { print ""; printf "%s", sec } }' "$RES" >"$RES.tmp" && mv "$RES.tmp" "$RES"
  log "wrote the home-link section of $RES"
else
  cat "$SECTION"
fi
