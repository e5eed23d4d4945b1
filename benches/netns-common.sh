# Shared by the benches that build a laptop and a network namespace
# (home-link.sh, tun-client.sh). The caller sets LAPTOP, NET (namespace
# names), W (its temporary directory) and PIDS=() before sourcing; the
# namespaces are made afresh and everything is removed on exit.
# shellcheck shell=bash
netns_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  ip netns del "$LAPTOP" 2>/dev/null || true
  ip netns del "$NET" 2>/dev/null || true
  [ "${KEEP_TMP:-0}" = 1 ] && echo "kept $W" >&2 || rm -rf "$W"
}
trap netns_cleanup EXIT
in_laptop() { ip netns exec "$LAPTOP" "$@"; }
in_net() { ip netns exec "$NET" "$@"; }
# Starts a long-running command in namespace NS in the background (the
# caller's redirections apply) and records its pid in PIDS and SPAWNED.
# `in_net CMD &` would record the pid of a subshell: killing that leaves
# the command running (and holding its ports) after the bench.
spawn_in() { # ns cmd...
  local ns=$1
  shift
  ip netns exec "$ns" "$@" &
  SPAWNED=$!
  PIDS+=("$SPAWNED")
}
# Raises the open-file limit as far as this process may (the hard limit
# without CAP_SYS_RESOURCE) for commands run with `bash -c`.
RAISE_NOFILE='ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"'
wait_port() { # netns host:port
  for _ in $(seq 1 300); do
    if ip netns exec "$1" bash -c "exec 3<>/dev/tcp/${2%:*}/${2##*:}" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on $2 in $1" >&2; return 1
}
for ns in "$LAPTOP" "$NET"; do ip netns del "$ns" 2>/dev/null || true; ip netns add "$ns"; ip -n "$ns" link set lo up; done
