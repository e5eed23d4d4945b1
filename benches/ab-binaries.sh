#!/usr/bin/env bash
# Before/after on a shared machine: two komugate binaries run side by side
# (the same embedded-default config, one local origin) and the same
# workloads go through each in turn, alternating which goes first, for
# several rounds. Load from other processes then hits both alike; the
# medians and the per-round spread say what is signal and what is noise.
#
#   benches/ab-binaries.sh BEFORE_BIN AFTER_BIN [LOADGEN_BIN]
#
# Environment: ROUNDS [4], DUR seconds per run [8], CLIENTS [50],
#   ONLY one workload, e.g. ONLY="forward --mix http=1" [forward, connect, inspect],
#   TOGETHER=1 drives both gateways at the same time in each round (CLIENTS
#   each), so a burst of load from elsewhere hits both runs alike.
# Prints per-round requests/s and proxy CPU µs per request, then medians.
set -euo pipefail
A_BIN=$1; B_BIN=$2; LG=${3:-target/release/komugate-loadgen}
ROUNDS=${ROUNDS:-4}; DUR=${DUR:-8}; CLIENTS=${CLIENTS:-50}
W="$(mktemp -d /tmp/komugate-ab.XXXXXX)"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"' EXIT
# shellcheck source=benches/ports.sh
. "$(dirname "$0")/ports.sh"
# shellcheck source=benches/config-edit.sh
. "$(dirname "$0")/config-edit.sh"

"$LG" origin --http 127.0.0.1:18080 --https 127.0.0.1:18443 --san outlook.office365.com \
  --dns 127.0.0.1:15353 --ca-out "$W/origin-ca.pem" >"$W/origin.log" 2>&1 &
PIDS+=($!); wait_port 127.0.0.1:18443
start() { # side binary plain mtls admin
  local c="$W/$1.toml"
  "$2" config default >"$c"
  set_key "$c" listen plain "\"$3\""; set_key "$c" listen mtls "\"$4\""; set_key "$c" listen admin "\"$5\""
  set_key "$c" data demo_origin '""'
  set_key "$c" dns servers '["127.0.0.1:15353"]'; set_key "$c" decision allowed_ports "[]"
  set_key "$c" limits idle_timeout_secs 3600; set_key "$c" limits max_streams_per_connection 256
  set_key "$c" inspect upstream_ca "\"$W/origin-ca.pem\""; set_key "$c" inspect hosts '["*.office365.com"]'
  "$2" serve --config "$c" --data "$W/$1" >"$W/$1.log" 2>&1 &
  PIDS+=($!); echo $! >"$W/$1.pid"
  wait_port "$3"; wait_port "$4"
}
start A "$A_BIN" 127.0.0.1:23128 127.0.0.1:28443 127.0.0.1:29090
start B "$B_BIN" 127.0.0.1:24128 127.0.0.1:29443 127.0.0.1:30090
if [ -n "${ONLY:-}" ]; then WL=("$ONLY"); else
  WL=("forward --mix http=1" "connect --mix connect=1" "inspect --mix inspect=1 --requests-per-tunnel 4"); fi
for r in $(seq "$ROUNDS"); do
  for wl in "${WL[@]}"; do
    read -r -a args <<<"$wl"; name=${args[0]}; args=("${args[@]:1}")
    if [ $((r % 2)) = 0 ]; then order="B A"; else order="A B"; fi
    LGP=()
    for side in $order; do
      if [ "$side" = A ]; then px=127.0.0.1:23128; else px=127.0.0.1:24128; fi
      "$LG" run --label "$name-$side-$r" --proxy "plain://$px" --proxy-pid "$(cat "$W/$side.pid")" \
        --trust "$W/origin-ca.pem" --trust "$W/$side/pki/inspect-ca.pem" \
        --origin-http 127.0.0.1:18080 --origin-https 127.0.0.1:18443 \
        --inspect-target outlook.office365.com:18443 --pki "$W/$side/pki" \
        --json "$W/$name-$side-$r.json" --devices "$CLIENTS" --duration "$DUR" --size 4096 "${args[@]}" \
        >/dev/null 2>"$W/$name-$side-$r.err" &
      if [ "${TOGETHER:-0}" = 1 ]; then LGP+=($!); else wait $!; fi
    done
    [ ${#LGP[@]} = 0 ] || wait "${LGP[@]}"
  done
done
python3 - "$W" <<'PY'
import collections, glob, json, statistics, sys
runs = collections.defaultdict(lambda: collections.defaultdict(list))
for f in sorted(glob.glob(sys.argv[1] + "/*-*-*.json")):
    name, side, _ = f.rsplit("/", 1)[1][:-5].rsplit("-", 2)
    d = json.load(open(f))
    cpu = d["proxy_usage"]["cpu_seconds"] * 1e6 / max(d["requests"], 1)
    runs[name][side].append((d["requests_per_second"], cpu, d["errors_total"]))
print("| workload | before req/s (rounds) | after req/s (rounds) | after ÷ before req/s | before CPU µs/req | after CPU µs/req | after ÷ before CPU |")
print("|---|---|---|---:|---:|---:|---:|")
for name, s in runs.items():
    a, b = s["A"], s["B"]
    med = lambda xs, i: statistics.median(x[i] for x in xs)
    rounds = lambda xs, i: " ".join(str(round(x[i])) for x in xs)
    print(f"| {name} | {med(a,0):.0f} ({rounds(a,0)}) | {med(b,0):.0f} ({rounds(b,0)}) | {med(b,0)/med(a,0):.2f} "
          f"| {med(a,1):.1f} | {med(b,1):.1f} | {med(b,1)/med(a,1):.2f} |")
    errs = sum(x[2] for x in a + b)
    if errs:
        print(f"\n{name}: {errs} errors (see the .err files)")
PY
