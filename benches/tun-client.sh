#!/usr/bin/env bash
# Full-device mode (komugate client --tun) vs the SOCKS5 path vs direct, in
# two network namespaces joined by a veth pair (no link emulation: this
# measures the client's own cost). The "net" namespace holds nginx and the
# gateway (`komugate serve`); the "laptop" namespace holds curl, a small
# Python connection holder and `komugate client`.
#
# Figures (median of ROUNDS):
#   bulk    one BULK_MIB download, MB/s
#   rate    REQS small GETs, each on a new TCP connection, 8 at a time, req/s
#   flows   FLOWS TCP connections held open at once: the client's resident
#           memory and CPU time per 1,000 flows (SOCKS5 path vs --tun)
#   UDP     to a UDP echo origin in the net namespace (benches/udp-probe.py):
#           round trip p50/p99 one datagram at a time (PINGS), echoed
#           datagrams/s with UDP_WINDOW in flight for UDP_SECS, and
#           UDP_FLOWS flows (a socket each, one echoed datagram) held at
#           once: the client's memory and CPU per 1,000 (--tun vs direct;
#           the SOCKS5 path carries no UDP)
# Direct: curl to nginx over the veth. SOCKS5: curl --socks5-hostname to the
# client (CONNECT streams on its one mTLS HTTP/2 link). TUN: plain curl, the
# TUN device and the user-space stack in front of the same link; UDP as
# CONNECT-UDP (RFC 9298) flows on it.
#
# Usage: benches/tun-client.sh
#   BULK_MIB [200]  REQS [1000]  FLOWS [1000]  ROUNDS [3]
#   PINGS [2000]  UDP_WINDOW [32]  UDP_SECS [5]  UDP_SIZE [200]  UDP_FLOWS [1000]
#   TUN_MTU  the TUN device's MTU ([tun] mtu in a client config file) [the client's default]
#   SKIP_BUILD 1 = use the release binary already built [0]
#   KEEP_TMP 1 = keep the work directory (nginx, gateway and client logs)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BULK_MIB="${BULK_MIB:-200}"
REQS="${REQS:-1000}"
FLOWS="${FLOWS:-1000}"
ROUNDS="${ROUNDS:-3}"
PINGS="${PINGS:-2000}"
UDP_WINDOW="${UDP_WINDOW:-32}"
UDP_SECS="${UDP_SECS:-5}"
UDP_SIZE="${UDP_SIZE:-200}"
UDP_FLOWS="${UDP_FLOWS:-1000}"
TUN_MTU="${TUN_MTU:-}"
UDP_PORT=7007
log() { printf '\n=== %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { echo "tun-client.sh creates network namespaces and a TUN device: run it as root" >&2; exit 1; }
for t in nginx curl python3 ip; do command -v "$t" >/dev/null || { echo "tun-client.sh needs $t (apt-get install nginx-light curl python3 iproute2)" >&2; exit 1; }; done
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "building komugate (release)"
  cargo build --release -q -p komugate --bin komugate
fi
TARGET="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
KG="${KOMUGATE_BIN:-$TARGET/release/komugate}"

LAPTOP=kgtb-laptop
NET=kgtb-net
GW_IP=10.78.0.1
LAPTOP_IP=10.78.0.2
ORIGIN_IP=10.78.1.1
W="$(mktemp -d /tmp/komugate-tunbench.XXXXXX)"
chmod 755 "$W"
PIDS=()
CLIENT_PID=
# shellcheck source=benches/netns-common.sh
. "$ROOT/benches/netns-common.sh"

log "namespaces $LAPTOP and $NET"
ip link add kgtb-l type veth peer name kgtb-n
ip link set kgtb-l netns "$LAPTOP"
ip link set kgtb-n netns "$NET"
ip -n "$LAPTOP" addr add "$LAPTOP_IP/24" dev kgtb-l
ip -n "$NET" addr add "$GW_IP/24" dev kgtb-n
ip -n "$NET" addr add "$ORIGIN_IP/32" dev lo
ip -n "$LAPTOP" link set kgtb-l up
ip -n "$NET" link set kgtb-n up
# Direct runs reach the origin over the veth (the TUN runs take it into the device).
ip -n "$LAPTOP" route add default via "$GW_IP"

log "net side: nginx, komugate serve"
mkdir -p "$W/www" "$W/nginx"
head -c "$((BULK_MIB * 1024 * 1024))" /dev/zero >"$W/www/big"
head -c 2048 /dev/zero >"$W/www/small"
cat >"$W/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log;
events { worker_connections 16384; }
http {
  access_log off;
  sendfile on;
  keepalive_timeout 300s;
  client_header_timeout 300s;
  server { listen $ORIGIN_IP:80 backlog=4096; root $W/www; }
}
EOF
spawn_in "$NET" nginx -c "$W/nginx/nginx.conf" -p "$W/nginx" >"$W/nginx/stdout.log" 2>&1
spawn_in "$NET" python3 "$ROOT/benches/udp-probe.py" echo "$ORIGIN_IP" "$UDP_PORT" >"$W/udp-echo.log" 2>&1
. "$ROOT/benches/config-edit.sh"
KCONF="$W/komugate.toml"
"$KG" config default >"$KCONF"
set_key "$KCONF" listen mtls "\"$GW_IP:8443\""
set_key "$KCONF" listen plain "\"127.0.0.1:3128\""
set_key "$KCONF" listen admin "\"127.0.0.1:9090\""
set_key "$KCONF" limits idle_timeout_secs 3600
set_key "$KCONF" egress allow_destinations "[\"10.78.0.0/16\"]"
# The per-device UDP limits (64 flows, 2,000 datagrams/s) would measure the
# limits, not the path.
set_key "$KCONF" decision allowed_ports "[80, $UDP_PORT]"
set_key "$KCONF" udp max_flows_per_device $((UDP_FLOWS + 100))
set_key "$KCONF" udp datagrams_per_second 10000000
set_key "$KCONF" udp datagram_burst 10000000
"$KG" config check "$KCONF" >/dev/null
spawn_in "$NET" bash -c "$RAISE_NOFILE; exec \"\$0\" serve --config \"\$1\" --data \"\$2\"" "$KG" "$KCONF" "$W/kg" >"$W/komugate.log" 2>&1
wait_port "$NET" "$ORIGIN_IP:80"
wait_port "$NET" "$GW_IP:8443" || { tail -5 "$W/komugate.log" >&2; exit 1; }
PKI="$W/kg/pki"

start_client() { # extra args...
  spawn_in "$LAPTOP" bash -c "$RAISE_NOFILE; exec \"\$@\"" _ "$KG" client --server "$GW_IP:8443" --server-name localhost \
    --cert "$PKI/demo-device.pem" --key "$PKI/demo-device.key" --ca "$PKI/inspect-ca.pem" \
    --http 127.0.0.1:3129 --socks 127.0.0.1:1080 --dns "" "$@" >>"$W/client.log" 2>&1
  CLIENT_PID=$SPAWNED
  for _ in $(seq 1 100); do
    kill -0 "$CLIENT_PID" 2>/dev/null || break
    in_laptop curl -sf http://127.0.0.1:3129/.komugate/client/status 2>/dev/null | grep -q '"link_up":true' && return 0
    sleep 0.1
  done
  echo "the client's link did not come up" >&2; tail -20 "$W/client.log" >&2; return 1
}
stop_client() {
  kill -0 "$CLIENT_PID" 2>/dev/null || { echo "the client exited during the run:" >&2; tail -20 "$W/client.log" >&2; return 1; }
  kill "$CLIENT_PID"
  wait "$CLIENT_PID" 2>/dev/null || true
  CLIENT_PID=
}

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
bulk() { # curl-args... → MB/s
  local out
  out="$(in_laptop curl -s -o /dev/null -w '%{http_code} %{size_download} %{speed_download}' "$@" "http://$ORIGIN_IP/big")"
  [ "$(echo "$out" | cut -d' ' -f1-2)" = "200 $((BULK_MIB * 1024 * 1024))" ] || { echo "bulk ($*): $out" >&2; return 1; }
  awk -v s="${out##* }" 'BEGIN { printf "%.0f", s / 1e6 }'
}
for i in $(seq 1 "$REQS"); do echo "url = \"http://$ORIGIN_IP/small\""; echo 'output = "/dev/null"'; done >"$W/rate.curl"
rate() { # curl-args... → requests/s, a new connection each
  local t0 t1 ok
  t0="$(date +%s.%N)"
  ok="$(in_laptop curl -s --parallel --parallel-max 8 -H 'Connection: close' -K "$W/rate.curl" -w '%{http_code}\n' "$@" | grep -c '^200$' || true)"
  t1="$(date +%s.%N)"
  [ "$ok" = "$REQS" ] || { echo "rate ($*): $ok of $REQS answered 200" >&2; return 1; }
  awk -v a="$t0" -v b="$t1" -v n="$REQS" 'BEGIN { printf "%.0f", n / (b - a) }'
}
measure() { local all=(); for _ in $(seq 1 "$ROUNDS"); do all+=("$("$@")"); done; echo "$(printf '%s\n' "${all[@]}" | median) ($(IFS=/; echo "${all[*]}"))"; }

# Holds FLOWS connections open (optionally through SOCKS5), prints when all are up.
cat >"$W/hold.py" <<'EOF'
import socket, struct, sys, time
n, dst, socks = int(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else ""
host, port = dst.split(":")
conns = []
for i in range(n):
    if socks:
        sh, sp = socks.split(":")
        s = socket.create_connection((sh, int(sp)), timeout=20)
        s.sendall(b"\x05\x01\x00"); s.recv(2)
        s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack(">H", int(port)))
        r = s.recv(10)
        assert r[1] == 0, r
    else:
        s = socket.create_connection((host, int(port)), timeout=20)
    conns.append(s)
print("up", flush=True)
sys.stdin.read()
EOF
proc_mem_cpu() { # pid → "rss_kib cpu_ticks"
  echo "$(awk '/VmRSS/ { print $2 }' /proc/"$1"/status) $(awk '{ print $14 + $15 }' /proc/"$1"/stat)"
}
held() { # n holder-command... → "KiB per 1,000 flows|CPU ms per 1,000 flows"
  # The holder prints "up" once its n flows are open and holds them until
  # its standard input closes.
  local n=$1 before after fifo="$W/hold.in" hold
  shift
  sleep 1
  before="$(proc_mem_cpu "$CLIENT_PID")"
  rm -f "$fifo"; mkfifo "$fifo"
  : >"$W/hold.out"
  in_laptop bash -c "$RAISE_NOFILE; exec \"\$@\"" _ "$@" <"$fifo" >"$W/hold.out" &
  hold=$!
  exec 7>"$fifo"
  for _ in $(seq 1 600); do grep -q up "$W/hold.out" 2>/dev/null && break; sleep 0.1; done
  grep -q up "$W/hold.out" || { echo "the holder did not get $n flows up ($*)" >&2; exec 7>&-; return 1; }
  sleep 2
  after="$(proc_mem_cpu "$CLIENT_PID")"
  exec 7>&-
  wait "$hold" 2>/dev/null || true
  local tick; tick="$(getconf CLK_TCK)"
  awk -v b="$before" -v a="$after" -v n="$n" -v t="$tick" 'BEGIN { split(b, x, " "); split(a, y, " "); printf "%.0f|%.0f", (y[1] - x[1]) * 1000 / n, (y[2] - x[2]) * 1000 / t * 1000 / n }'
}
flows() { held "$FLOWS" python3 "$W/hold.py" "$FLOWS" "$ORIGIN_IP:80" "$@"; }
udp() { in_laptop python3 "$ROOT/benches/udp-probe.py" "$1" "$ORIGIN_IP" "$UDP_PORT" "$UDP_SIZE" "${@:2}"; }
# → "p50_us p99_us lost_pings|datagrams_per_s lost_pct" (one run each: the
# ping run is PINGS samples already)
udp_all() { echo "$(udp ping "$PINGS")|$(udp rate "$UDP_WINDOW" "$UDP_SECS")"; }
udp_flows() { held "$UDP_FLOWS" python3 "$ROOT/benches/udp-probe.py" hold "$ORIGIN_IP" "$UDP_PORT" "$UDP_SIZE" "$UDP_FLOWS"; }

log "direct"
d_bulk="$(measure bulk)"; d_rate="$(measure rate)"; d_udp="$(udp_all)"
log "SOCKS5 path"
start_client
s_bulk="$(measure bulk --socks5-hostname 127.0.0.1:1080)"; s_rate="$(measure rate --socks5-hostname 127.0.0.1:1080)"
s_flows="$(flows 127.0.0.1:1080)"
stop_client
log "full-device mode (--tun)"
TUN_ARGS=(--tun)
if [ -n "$TUN_MTU" ]; then
  printf '[tun]\nmtu = %s\n' "$TUN_MTU" >"$W/client.toml"
  TUN_ARGS+=(--config "$W/client.toml")
fi
start_client "${TUN_ARGS[@]}"
t_bulk="$(measure bulk)"; t_rate="$(measure rate)"
t_flows="$(flows)"
t_udp="$(udp_all)"
t_udp_flows="$(udp_flows)"
t_status="$(in_laptop curl -s http://127.0.0.1:3129/.komugate/client/status)"
stop_client

udp_row() { # label "p50 p99 lost|rate loss" "kib|ms"
  local ping="${2%%|*}" rate="${2##*|}"
  read -r p50 p99 lost <<<"$ping"
  read -r dps loss <<<"$rate"
  echo "| $1 | $p50 / $p99 (lost $lost) | $dps | $loss % | ${3%%|*} | ${3##*|} |"
}
udp_added() { awk -v d="${1%% *}" -v t="${2%% *}" 'BEGIN { print t - d }'; }
udp_ratio() { awk -v d="${1##*|}" -v t="${2##*|}" 'BEGIN { split(d, x, " "); split(t, y, " "); printf "%.2f", y[1] / x[1] }'; }
LOAD="$(cut -d' ' -f1-3 /proc/loadavg)"
cat <<EOF

## Full-device mode (komugate client --tun)

Command: \`${TUN_MTU:+TUN_MTU=$TUN_MTU }BULK_MIB=$BULK_MIB REQS=$REQS FLOWS=$FLOWS ROUNDS=$ROUNDS PINGS=$PINGS UDP_WINDOW=$UDP_WINDOW UDP_SECS=$UDP_SECS UDP_SIZE=$UDP_SIZE UDP_FLOWS=$UDP_FLOWS benches/tun-client.sh\`
($(date -u +%Y-%m-%d), $(nproc) cores, load average at the end $LOAD — the machine was shared).
Laptop and net namespaces joined by a veth pair; nginx and \`komugate serve\` in the net namespace;
median (rounds).

| path | $BULK_MIB MiB download, MB/s | $REQS GETs, new connection each, 8 at a time, req/s | client RSS per 1,000 open flows, KiB | client CPU per 1,000 flows opened, ms |
|---|---:|---:|---:|---:|
| direct | $d_bulk | $d_rate | – | – |
| SOCKS5 → client → gateway | $s_bulk | $s_rate | ${s_flows%%|*} | ${s_flows##*|} |
| --tun → client → gateway | $t_bulk | $t_rate | ${t_flows%%|*} | ${t_flows##*|} |

UDP to an echo origin in the net namespace ($UDP_SIZE-byte datagrams; Python prober and echo, \`benches/udp-probe.py\`):

| path | round trip p50 / p99, µs ($PINGS, one at a time) | echoed datagrams/s ($UDP_WINDOW in flight, ${UDP_SECS} s) | loss | client RSS per 1,000 UDP flows, KiB | client CPU per 1,000 UDP flows opened, ms |
|---|---:|---:|---:|---:|---:|
$(udp_row direct "$d_udp" "–|–")
$(udp_row "--tun → CONNECT-UDP → gateway" "$t_udp" "$t_udp_flows")

Added latency through CONNECT-UDP (p50): $(udp_added "$d_udp" "$t_udp") µs; rate through it ÷ direct: $(udp_ratio "$d_udp" "$t_udp").

TUN counters after the run: \`$t_status\`
EOF
