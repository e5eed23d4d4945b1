#!/usr/bin/env bash
# Bulk lookup throughput: `komugate categories lookup --stdin` against
# squidGuard's helper (`squidGuard -c CONF` reading Squid's redirector
# lines on stdin), same UT1 categories, same URLs.
#
#   benches/lookup-stdin.sh            # prints a Markdown table for RESULTS.md
#
# Environment:
#   UT1_DIR     UT1 directory [/work/shared/blocklists/ut1]
#   CATEGORIES  categories to load [adult gambling malware phishing dating]
#   N           URLs per run [200000]
#   KG          komugate binary [target/release/komugate, built if missing]
#
# Both tools are run with an empty input first: that time (loading the
# lists: squidGuard opens its Berkeley DB files, komugate reads its
# compiled snapshot) is subtracted, so the figures are lookups per second.
# Installs squidguard (Debian) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
UT1_DIR="${UT1_DIR:-/work/shared/blocklists/ut1}"
CATEGORIES="${CATEGORIES:-adult gambling malware phishing dating}"
N="${N:-200000}"
KG="${KG:-target/release/komugate}"
log() { echo "[lookup-stdin] $*" >&2; }

command -v squidGuard >/dev/null 2>&1 || { export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq squidguard; }
[ -x "$KG" ] || cargo build --release -p komugate
W="$(mktemp -d)"; trap 'rm -rf "$W"' EXIT

# One copy of the lists, split parts joined (squidGuard reads one file).
for c in $CATEGORIES; do
  mkdir -p "$W/ut1/$c"
  for f in domains urls; do
    mapfile -t parts < <(cd "$UT1_DIR/$c" && ls -1 | grep -E "^$f(\.[0-9]+)?\$" | sort -V)
    [ "${#parts[@]}" -gt 0 ] && (cd "$UT1_DIR/$c" && cat "${parts[@]}") >"$W/ut1/$c/$f"
  done
done
mkdir -p "$W/log"
{ echo "dbhome $W/ut1"; echo "logdir $W/log"
  for c in $CATEGORIES; do
    echo "dest $c {"
    [ -e "$W/ut1/$c/domains" ] && echo "	domainlist $c/domains"
    [ -e "$W/ut1/$c/urls" ] && echo "	urllist $c/urls"
    echo "}"
  done
  echo "acl {"; echo "	default {"
  echo "		pass $(for c in $CATEGORIES; do printf '!%s ' "$c"; done)all"
  echo "		redirect 302:http://block.invalid/?c=%t"
  echo "	}"; echo "}"; } >"$W/sg.conf"
log "squidGuard -C all"
squidGuard -c "$W/sg.conf" -C all >/dev/null 2>&1
log "komugate categories compile"
"$KG" categories compile "$W/ut1" --out "$W/ut1.snap" 2>/dev/null

# URLs: half listed names (every second one www.), half random names, with paths.
cat "$W"/ut1/*/domains | grep -E '^[a-z0-9.-]+\.[a-z]+$' | shuf -n $((N / 2)) --random-source=<(yes 1) \
  | awk 'NR % 2 { $0 = "www." $0 } { print "http://" $0 "/index.html?q=" NR }' >"$W/urls"
awk -v n=$((N - N / 2)) 'BEGIN { srand(7); c = "abcdefghijklmnopqrstuvwxyz0123456789"
  for (i = 0; i < n; i++) { s = ""; for (j = 0; j < 12; j++) s = s substr(c, int(rand() * 36) + 1, 1)
    print "https://www." s ".jp/a/b/" i } }' >>"$W/urls"
shuf --random-source=<(yes 2) -o "$W/urls" "$W/urls"
n=$(wc -l <"$W/urls")
sed 's|$| 127.0.0.1/- - GET|' "$W/urls" >"$W/sg-input"
: >"$W/empty"

secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }
sg0=$(secs sh -c "squidGuard -c '$W/sg.conf' <'$W/empty'")
sg=$(secs sh -c "squidGuard -c '$W/sg.conf' <'$W/sg-input'")
kg0=$(secs sh -c "'$KG' categories lookup --lists '$W/ut1.snap' --stdin <'$W/empty'")
kg=$(secs sh -c "'$KG' categories lookup --lists '$W/ut1.snap' --stdin <'$W/urls'")
kgj=$(secs sh -c "'$KG' categories lookup --lists '$W/ut1.snap' --stdin --json <'$W/urls'")
rate() { echo "scale=0; $n / ($1 - $2)" | bc; }
sgr=$(rate "$sg" "$sg0"); kgr=$(rate "$kg" "$kg0"); kgjr=$(rate "$kgj" "$kg0")
echo "| tool | load (s) | $n URLs (s) | URLs/s (load subtracted) |"
echo "|---|---:|---:|---:|"
echo "| squidGuard $(squidGuard -v 2>&1 | head -1 | awk '{print $2}') helper (\`squidGuard -c CONF\`) | $sg0 | $sg | $sgr |"
echo "| \`komugate categories lookup --stdin\` (snapshot) | $kg0 | $kg | $kgr |"
echo "| \`komugate categories lookup --stdin --json\` | $kg0 | $kgj | $kgjr |"
# Same verdicts? squidGuard 1.6 answers `OK status=302 url=…` for a blocked
# URL and `ERR` (no change) for a passed one; komugate `URL<TAB>categories` (`-` for none).
squidGuard -c "$W/sg.conf" <"$W/sg-input" | awk '{ print ($1 == "OK" ? "block" : "pass") }' >"$W/sg-verdicts"
"$KG" categories lookup --lists "$W/ut1.snap" --stdin <"$W/urls" 2>/dev/null \
  | awk -F'\t' '{ print ($2 == "-" ? "pass" : "block") }' >"$W/kg-verdicts"
agree=$(paste -d' ' "$W/sg-verdicts" "$W/kg-verdicts" | awk '$1 == $2' | wc -l)
blocked=$(grep -c block "$W/kg-verdicts" || true)
echo
echo "komugate / squidGuard: $(echo "scale=2; $kgr / $sgr" | bc)× (categories: $CATEGORIES; $(cat "$W"/ut1/*/domains "$W"/ut1/*/urls | wc -l) list lines)."
echo "Same verdict on $agree of $n URLs ($blocked blocked by komugate)."
