# Sourced (not run) by benches/inspect-memory.sh and benches/profile-inspect.sh:
# the start-up both share. The local origin (HTTPS for outlook.office365.com
# with its own CA, and a DNS responder answering 127.0.0.1), and a komugate
# config that inspects *.office365.com through the plain listener, trusting
# the origin's CA upstream.
#
# Set before sourcing: ORIGIN_HTTPS, ORIGIN_DNS, KG_PLAIN (loopback host:port,
# each script its own so they can run side by side). Environment:
# SKIP_BUILD=1 (use the release binaries already built), KG_BIN / LG_BIN.
# Defines: ROOT (and cd there), TARGET, KG, LG, M365, W (temp dir, removed at
# exit), PIDS (killed at exit: add every process started), KCONF (written;
# the caller adds its own keys with set_key, then runs `config check`), and
# the functions build_release, wait_port, set_key, start_origin, write_config.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
KG="${KG_BIN:-$TARGET/release/komugate}"
LG="${LG_BIN:-$TARGET/release/komugate-loadgen}"
M365=outlook.office365.com

# The release profile keeps line tables (Cargo.toml: [profile.release] debug = 1).
build_release() {
  if [ "${SKIP_BUILD:-0}" != 1 ]; then
    cargo build --release -q -p komugate -p komugate-benches --bin komugate --bin komugate-loadgen
  fi
  [ -x "$KG" ] && [ -x "$LG" ] || { echo "no release binaries $KG, $LG: run without SKIP_BUILD=1 once" >&2; exit 1; }
}

W="$(mktemp -d /tmp/komugate-inspect.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

# shellcheck source=benches/ports.sh
. "$ROOT/benches/ports.sh"

# shellcheck source=benches/config-edit.sh
. "$ROOT/benches/config-edit.sh"

start_origin() {
  "$LG" origin --https "$ORIGIN_HTTPS" --san "$M365" --dns "$ORIGIN_DNS" --ca-out "$W/origin-ca.pem" >"$W/origin.log" 2>&1 &
  PIDS+=($!)
  wait_port "$ORIGIN_HTTPS"
}

KCONF="$W/komugate.toml"
write_config() {
  "$KG" config default >"$KCONF"
  set_key "$KCONF" listen plain "\"$KG_PLAIN\""
  set_key "$KCONF" listen mtls '""'
  set_key "$KCONF" listen admin '""'
  set_key "$KCONF" dns servers "[\"$ORIGIN_DNS\"]"
  set_key "$KCONF" decision allowed_ports "[]"
  set_key "$KCONF" limits idle_timeout_secs 3600
  set_key "$KCONF" inspect upstream_ca "\"$W/origin-ca.pem\""
  set_key "$KCONF" inspect hosts "[\"*.office365.com\"]"
}
