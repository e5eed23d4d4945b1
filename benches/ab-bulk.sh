#!/usr/bin/env bash
# Before/after for bulk downloads through the mTLS listener: two komugate
# binaries side by side (each with its own `komugate client`), one file of
# BULK_MIB from nginx on 127.0.0.3, fetched by curl through each path in
# alternating order for ROUNDS rounds:
#   h1 — curl's HTTPS proxy with the device certificate (HTTP/1.1 CONNECT
#        on the mTLS listener: the buffered relay behind TLS);
#   h2 — curl → `komugate client` → one HTTP/2 connection → the gateway.
# Load from elsewhere then hits both binaries alike; the per-round figures
# show the spread. CPU = user + system time of the gateway (h2: gateway and
# client) per GiB. With PERF=1, each binary's first h1 download is also
# counted by `perf stat` (reads, writes, epoll waits, context switches).
#
#   benches/ab-bulk.sh BEFORE_BIN AFTER_BIN
#
# Environment: ROUNDS [5], BULK_MIB [512], PATHS ["h2 h1"], PORT_BASE [21000]
#   (uses PORT_BASE+128/+443/+90/+180 and +1000 for the second binary).
set -euo pipefail
cd "$(dirname "$0")/.."
A_BIN=$1; B_BIN=$2
ROUNDS=${ROUNDS:-5}; BULK_MIB=${BULK_MIB:-512}; PATHS=${PATHS:-h2 h1}; P=${PORT_BASE:-21000}
for bin in "$A_BIN" "$B_BIN"; do [ -x "$bin" ] || { echo "ab-bulk: $bin is not an executable" >&2; exit 1; }; done
for tool in nginx curl; do command -v $tool >/dev/null || { echo "ab-bulk: $tool is not installed (apt-get install nginx-light curl)" >&2; exit 1; }; done
W="$(mktemp -d /tmp/komugate-abbulk.XXXXXX)"; chmod 755 "$W" # nginx's worker reads the file
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"' EXIT
# shellcheck source=benches/ports.sh
. benches/ports.sh
# shellcheck source=benches/config-edit.sh
. benches/config-edit.sh
# shellcheck source=benches/reference-servers.sh
. benches/reference-servers.sh

ORIGIN=127.0.0.3:$((P + 190))
mkdir -p "$W/www" "$W/nginx"
head -c "$((BULK_MIB * 1024 * 1024))" /dev/zero >"$W/www/big"
write_nginx_conf "$W/nginx" "$W/www" "$ORIGIN"
nginx -c "$W/nginx/nginx.conf" -p "$W/nginx" >"$W/nginx/stdout.log" 2>&1 &
PIDS+=($!)

port() { # side offset → port of that side
  if [ "$1" = A ]; then echo $((P + $2)); else echo $((P + 1000 + $2)); fi
}
for side in A B; do
  bin="${side}_BIN"; bin=${!bin}
  c="$W/$side.toml"; "$bin" config default >"$c"
  set_key "$c" listen plain "\"127.0.0.1:$(port $side 128)\""
  set_key "$c" listen mtls "\"127.0.0.1:$(port $side 443)\""
  set_key "$c" listen admin "\"127.0.0.1:$(port $side 90)\""
  set_key "$c" data demo_origin '""'; set_key "$c" decision allowed_ports "[]"
  "$bin" serve --config "$c" --data "$W/$side" >"$W/$side.log" 2>&1 &
  PIDS+=($!); echo $! >"$W/$side.pid"
  wait_port "127.0.0.1:$(port $side 443)"
  PKI="$W/$side/pki"
  "$bin" client --server "127.0.0.1:$(port $side 443)" --server-name localhost --cert "$PKI/demo-device.pem" \
    --key "$PKI/demo-device.key" --ca "$PKI/inspect-ca.pem" --http "127.0.0.1:$(port $side 180)" --socks "" --dns "" \
    >"$W/$side.client.log" 2>&1 &
  PIDS+=($!); echo $! >"$W/$side.client.pid"
  wait_port "127.0.0.1:$(port $side 180)"
done
wait_port "$ORIGIN"

ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done; echo "$t"; }
download() { # side path → "side path GB/s CPU-ms-per-GiB"
  local side=$1 path=$2 pids args PKI="$W/$1/pki" t0 t1 out mtls
  mtls=$(port "$side" 443)
  if [ "$path" = h2 ]; then
    pids="$(cat "$W/$side.pid") $(cat "$W/$side.client.pid")"; args=(-x "http://127.0.0.1:$(port "$side" 180)")
  else
    pids="$(cat "$W/$side.pid")"
    args=(--proxy "https://localhost:$mtls" --connect-to "localhost:$mtls:127.0.0.1:$mtls" --proxy-cacert "$PKI/inspect-ca.pem"
          --proxy-cert "$PKI/demo-device.pem" --proxy-key "$PKI/demo-device.key")
  fi
  # shellcheck disable=SC2086
  t0=$(ticks $pids)
  out=$(curl -s -o /dev/null -w '%{speed_download} %{size_download}' -p "${args[@]}" "http://$ORIGIN/big") \
    || { echo "ab-bulk: curl through $side ($path) failed" >&2; exit 1; }
  # shellcheck disable=SC2086
  t1=$(ticks $pids)
  [ "${out#* }" = "$((BULK_MIB * 1024 * 1024))" ] \
    || { echo "ab-bulk: $side ($path) got ${out#* } bytes:" >&2; curl -s -p "${args[@]}" "http://$ORIGIN/big" | head -c 300 >&2; exit 1; }
  awk -v side="$side" -v path="$path" -v r="${out% *}" -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v mib="$BULK_MIB" \
    'BEGIN { printf "%s %s %.2f %.0f\n", side, path, r / 1e9, t * 1000 / hz / (mib / 1024) }'
}

if [ "${PERF:-0}" = 1 ]; then
  for side in A B; do
    perf stat -x, -e 'syscalls:sys_enter_recvfrom,syscalls:sys_enter_writev,syscalls:sys_enter_epoll_wait,context-switches' \
      -p "$(cat "$W/$side.pid")" -o "$W/perf.$side" &
    pp=$!; sleep 0.3
    download "$side" h1 >/dev/null
    kill -INT "$pp"; wait "$pp" || true
    echo "$side, one h1 download (perf stat): $(awk -F, '/^[0-9]/ { printf "%s %s; ", $1, $3 }' "$W/perf.$side")"
  done
fi

for r in $(seq "$ROUNDS"); do
  for path in $PATHS; do
    if [ $((r % 2)) = 1 ]; then order="A B"; else order="B A"; fi
    for side in $order; do download "$side" "$path"; done
  done
done | tee "$W/rows"

python3 - "$W/rows" "$A_BIN" "$B_BIN" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
print(f"\nA = {sys.argv[2]}, B = {sys.argv[3]}; medians (rounds)\n")
print("| path | A GB/s | B GB/s | B ÷ A | A CPU ms/GiB | B CPU ms/GiB | B ÷ A |")
print("|---|---:|---:|---:|---:|---:|---:|")
for path, label in (("h1", "mTLS listener, HTTP/1.1 CONNECT"), ("h2", "HTTP/2 CONNECT via komugate client")):
    fig = {}
    for side in "AB":
        rs = [r for r in rows if r[0] == side and r[1] == path]
        if not rs:
            continue
        fig[side] = (statistics.median(float(r[2]) for r in rs), statistics.median(float(r[3]) for r in rs),
                     "/".join(r[2] for r in rs))
    if len(fig) == 2:
        (ar, ac, aa), (br, bc, ba) = fig["A"], fig["B"]
        print(f"| {label} | {ar:.2f} ({aa}) | {br:.2f} ({ba}) | {br / ar:.2f} | {ac:.0f} | {bc:.0f} | {bc / ac:.2f} |")
PY
