#!/usr/bin/env bash
# Where a proxy's CPU per operation goes: user time, kernel time and
# system calls per operation, Squid and komugate side by side on the same
# workloads (plain forward of 4 KiB over keep-alive; CONNECT with a TLS
# handshake and one GET per tunnel). The "kernel floor" column is
# komugate's kernel time alone divided by Squid's whole CPU per operation:
# the ratio komugate would reach if its own code cost nothing. It says
# which CPU-per-operation targets (issue 20, point 6) user-space work can
# still reach on loopback, where every write also pays for the receiving
# side's TCP processing.
#
#   benches/cpu-split.sh
#
# Environment: ROUNDS [3], DUR seconds per run [10], CLIENTS [50],
#   KOMUGATE [target/release/komugate], LOADGEN [target/release/komugate-loadgen],
#   PORT_BASE [26000] (uses PORT_BASE..PORT_BASE+6 on 127.0.0.1; below Linux's
#   ephemeral range, where a previous run's client sockets can hold a port).
# Needs squid; perf (linux-perf) for the system-call counts, else "–".
# Prints per-round figures, then a Markdown table of medians.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}; DUR=${DUR:-10}; CLIENTS=${CLIENTS:-50}
KG=${KOMUGATE:-target/release/komugate}; LG=${LOADGEN:-target/release/komugate-loadgen}
P=${PORT_BASE:-26000}
for bin in "$KG" "$LG"; do [ -x "$bin" ] || { echo "cpu-split: $bin is missing: cargo build --release -p komugate -p komugate-benches" >&2; exit 1; }; done
command -v squid >/dev/null || { echo "cpu-split: squid is not installed (apt-get install squid)" >&2; exit 1; }
HAVE_PERF=0; perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1 && HAVE_PERF=1

W="$(mktemp -d /tmp/komugate-cpusplit.XXXXXX)"; chmod 755 "$W"; chown proxy "$W" 2>/dev/null || true
PIDS=()
# Wait for Squid to be gone: a second Squid with the same service name
# started right after (compare-squid.sh) would not come up.
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
      for p in "${PIDS[@]}"; do for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; done
      rm -rf "$W"' EXIT
# shellcheck source=benches/ports.sh
. benches/ports.sh
# shellcheck source=benches/config-edit.sh
. benches/config-edit.sh
# shellcheck source=benches/reference-servers.sh
. benches/reference-servers.sh
ORIGIN_HTTP=127.0.0.1:$P; ORIGIN_HTTPS=127.0.0.1:$((P + 1)); DNS=127.0.0.1:$((P + 2))
SQ=127.0.0.1:$((P + 3)); KGP=127.0.0.1:$((P + 4))
require_free_ports $(for i in $(seq 0 6); do echo "127.0.0.1:$((P + i))"; done)

"$LG" origin --http "$ORIGIN_HTTP" --https "$ORIGIN_HTTPS" --dns "$DNS" --ca-out "$W/origin-ca.pem" >"$W/origin.log" 2>&1 &
PIDS+=($!); wait_port "$ORIGIN_HTTPS"

write_squid_conf "$W" "$SQ" 20000
# The origin's names are IP literals here: Squid resolves nothing.
squid -N -f "$W/squid.conf" >"$W/squid.out" 2>&1 &
SQ_PID=$!; PIDS+=("$SQ_PID")

c="$W/komugate.toml"; "$KG" config default >"$c"
set_key "$c" listen plain "\"$KGP\""; set_key "$c" listen mtls "\"127.0.0.1:$((P + 5))\""
set_key "$c" listen admin "\"127.0.0.1:$((P + 6))\""; set_key "$c" data demo_origin '""'
set_key "$c" dns servers "[\"$DNS\"]"; set_key "$c" decision allowed_ports "[]"
"$KG" serve --config "$c" --data "$W/kg" >"$W/komugate.log" 2>&1 &
KG_PID=$!; PIDS+=("$KG_PID")
wait_port "$SQ"; wait_port "$KGP"; sleep 1

ticks() { awk '{print $14, $15}' "/proc/$1/stat"; } # utime stime, whole process
HZ=$(getconf CLK_TCK)
echo "workload proxy round ops user_us sys_us syscalls ctxsw" >"$W/rows"
for r in $(seq "$ROUNDS"); do
  for wl in "forward http=1" "connect connect=1"; do
    read -r name mix <<<"$wl"
    if [ $((r % 2)) = 0 ]; then order="komugate squid"; else order="squid komugate"; fi
    for side in $order; do
      if [ "$side" = squid ]; then px=$SQ; pid=$SQ_PID; else px=$KGP; pid=$KG_PID; fi
      read -r u0 s0 < <(ticks "$pid")
      if [ "$HAVE_PERF" = 1 ]; then
        perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$pid" -o "$W/perf" &
        PERF_PID=$!
      fi
      "$LG" run --label "$name-$side-$r" --proxy "plain://$px" --proxy-pid "$pid" \
        --trust "$W/origin-ca.pem" --origin-http "$ORIGIN_HTTP" --origin-https "$ORIGIN_HTTPS" \
        --json "$W/run.json" --devices "$CLIENTS" --duration "$DUR" --size 4096 --mix "$mix" \
        >/dev/null 2>"$W/run.err" || { echo "cpu-split: the load generator failed:" >&2; cat "$W/run.err" >&2; exit 1; }
      read -r u1 s1 < <(ticks "$pid")
      sc=-; cs=-
      if [ "$HAVE_PERF" = 1 ]; then
        kill -INT "$PERF_PID"; wait "$PERF_PID" || true
        sc=$(awk -F, '/raw_syscalls:sys_enter/ {print $1}' "$W/perf"); cs=$(awk -F, '/context-switches/ {print $1}' "$W/perf")
      fi
      read -r ops errs < <(python3 -c "import json; d=json.load(open('$W/run.json')); print(d['operations_ok'], d['errors_total'])")
      [ "$errs" = 0 ] || echo "cpu-split: $name through $side had $errs errors (see the load generator's JSON)" >&2
      user_us=$(python3 -c "print(($u1 - $u0) / $HZ * 1e6 / $ops)")
      sys_us=$(python3 -c "print(($s1 - $s0) / $HZ * 1e6 / $ops)")
      echo "$name $side $r $ops $user_us $sys_us $sc $cs" | tee -a "$W/rows"
    done
  done
done

python3 - "$W/rows" "$ROUNDS" "$DUR" "$CLIENTS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
med = lambda xs: statistics.median(xs) if xs else float("nan")
def fig(wl, side):
    rs = [r for r in rows if r[0] == wl and r[1] == side]
    ops = [int(r[3]) for r in rs]
    user = med([float(r[4]) for r in rs]); sys_ = med([float(r[5]) for r in rs])
    calls = [int(r[6]) / int(r[3]) for r in rs if r[6] != "-"]
    return user, sys_, (med(calls) if calls else None), med(ops)
print(f"\nMedians of {sys.argv[2]} rounds, {sys.argv[4]} clients, {sys.argv[3]} s per run; µs of proxy CPU per operation.\n")
print("| workload | proxy | user µs | kernel µs | total µs | system calls | komugate ÷ Squid (total) | kernel floor (komugate kernel ÷ Squid total) |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for wl, label in (("forward", "plain forward, 4 KiB, keep-alive"), ("connect", "CONNECT + TLS handshake + one GET")):
    su, ss, sc, _ = fig(wl, "squid"); ku, ks, kc, _ = fig(wl, "komugate")
    c = lambda x: "–" if x is None else f"{x:.1f}"
    print(f"| {label} | Squid | {su:.1f} | {ss:.1f} | {su+ss:.1f} | {c(sc)} | | |")
    print(f"| | komugate | {ku:.1f} | {ks:.1f} | {ku+ks:.1f} | {c(kc)} | {(ku+ks)/(su+ss):.2f} | {ks/(su+ss):.2f} |")
PY
