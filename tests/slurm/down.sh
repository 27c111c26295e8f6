#!/usr/bin/env bash
# Stop the private cluster that tests/slurm/up.sh started in STATE_DIR, and nothing else.
#
#   tests/slurm/down.sh STATE_DIR
#
# Jobs still queued or running on it are cancelled first. Each daemon is stopped by the pid that
# up.sh recorded, and only if that process still runs with this STATE_DIR on its command line
# (a recycled pid or a daemon started by someone else is never signalled).
set -uo pipefail

STATE=${1:?usage: down.sh STATE_DIR}
[ -d "$STATE" ] || { echo "no state dir $STATE: nothing to stop"; exit 0; }
STATE=$(cd "$STATE" && pwd)
[ -s "$STATE/pids" ] || { echo "no pids recorded in $STATE: nothing to stop"; exit 0; }
export PATH="$PATH:/usr/sbin" SLURM_CONF="$STATE/slurm.conf"

ours() { # pid -> true if it is alive and was started with this state dir
  [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF "$STATE"
}

# shellcheck disable=SC1091
. "$STATE/pids"
if [ -n "${SLURMCTLD_PID:-}" ] && ours "$SLURMCTLD_PID"; then
  scancel --user="$(id -un)" 2>/dev/null
  for _ in $(seq 60); do
    [ -z "$(squeue -h -t PENDING,RUNNING,COMPLETING,CONFIGURING -o %i 2>/dev/null)" ] && break
    sleep 0.5
  done
fi

status=0
for name in SLURMD SLURMCTLD MUNGED; do
  var="${name}_PID"
  pid=${!var:-}
  [ -n "$pid" ] || continue
  if ! ours "$pid"; then
    echo "not running: ${name,,} $pid"
    continue
  fi
  kill -TERM "$pid"
  for _ in $(seq 100); do ours "$pid" || break; sleep 0.1; done
  if ours "$pid"; then
    kill -KILL "$pid"
    sleep 0.2
  fi
  if ours "$pid"; then
    echo "could not stop ${name,,} $pid" >&2
    status=1
  else
    echo "stopped ${name,,} $pid"
  fi
done
[ $status = 0 ] && rm -f "$STATE/env"
exit $status
