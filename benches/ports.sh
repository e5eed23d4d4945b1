# Sourced by the bench scripts that run servers on loopback ports: waiting
# for a listener, and refusing to start on ports something else holds.

# wait_port HOST:PORT [TRIES]: returns once something accepts on HOST:PORT;
# after TRIES × 0.1 s (default 600) says so and returns 1.
wait_port() {
  for _ in $(seq 1 "${2:-600}"); do
    if (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$(basename "$0"): nothing listens on $1" >&2; return 1
}

# require_free_ports HOST:PORT...: exits when any of them already accepts.
# A second benchmark (or a stray process) on the same port would answer for
# the one under test and turn its figures into errors or someone else's
# numbers.
require_free_ports() {
  local busy=() hp
  for hp in "$@"; do
    if (exec 3<>"/dev/tcp/${hp%:*}/${hp##*:}") 2>/dev/null; then busy+=("$hp"); fi
  done
  [ ${#busy[@]} -eq 0 ] && return 0
  echo "$(basename "$0"): already in use: ${busy[*]} (another benchmark running? see: ss -ltnp | grep -E '${busy[*]// /|}'); stop it, or move this run's ports, and run again" >&2
  exit 1
}
