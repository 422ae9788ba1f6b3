#!/usr/bin/env bash
# A small SLURM cluster on this machine (slurmctld + slurmd + munge), for tests and for trying the
# launcher without a real cluster.
#
#   bash slurm/local-cluster.sh [--nodes N] [--no-install]   install (Debian/Ubuntu, root) if missing; start
#   bash slurm/local-cluster.sh --stop                        stop the daemons this script started
#
# --nodes 1 is one node named after this host. --nodes N > 1 (default 2) runs N slurmd daemons on
# this host as nodes lw1..lwN (own port, spool and log each; CPUs split between them), so a job
# really spans N SLURM nodes: N launchers, SLURM_NODEID 0..N-1, a c10d rendezvous across them.
# Their names do not resolve, so jobs on them set MASTER_ADDR=127.0.0.1 (launch slurm --export).
# Exit 0 when `sinfo` shows idle nodes; non-zero (with the reason on stderr) otherwise.
# The set-up is deliberately plain: proctrack/linuxproc and task/none need no cgroups or
# systemd (containers rarely have either); no accounting database; JobRequeue=1; KillWait=30.
set -uo pipefail

STATE=${LONGWEAVE_SLURM_STATE:-/var/tmp/longweave-slurm}
CONF_DIR=/etc/slurm
NODE=$(hostname -s)
say() { echo "[local-cluster] $*" >&2; }

stop() {
  for pidfile in "$STATE"/slurmd*.pid "$STATE"/slurmctld.pid; do
    if [ -f "$pidfile" ]; then
      kill "$(cat "$pidfile")" 2>/dev/null && say "stopped $(basename "$pidfile" .pid)"
      rm -f "$pidfile"
    fi
  done
  sleep 1
}

NODES=2
INSTALL=1
while [ $# -gt 0 ]; do
  case "$1" in
    --stop) stop; exit 0 ;;
    --no-install) INSTALL=0 ;;
    --nodes) NODES=${2:?--nodes needs a number}; shift ;;
    *) say "unknown argument $1 (use --nodes N, --no-install or --stop)"; exit 2 ;;
  esac
  shift
done

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  if [ "$INSTALL" -eq 0 ]; then say "SLURM is not installed"; exit 3; fi
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    say "SLURM is not installed and this is not a root Debian/Ubuntu machine; install slurm-wlm and munge"
    exit 3
  fi
  say "installing slurm-wlm and munge (apt-get) ..."
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq slurm-wlm munge; } >"/tmp/longweave-slurm-apt.log" 2>&1 \
    || { say "apt-get failed; see /tmp/longweave-slurm-apt.log"; exit 3; }
fi
if [ "$(id -u)" -ne 0 ]; then say "starting slurmctld/slurmd needs root"; exit 3; fi

if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
  say "a cluster is already up: $(sinfo -h -o '%P %D %t' | head -1)"
  exit 0
fi

mkdir -p "$STATE"/{ctld,d,log} /run/munge /var/log/munge /var/lib/munge "$CONF_DIR"
# munge: a key (the Debian package usually makes one) and the daemon, as the munge user
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- munged --force 2>/dev/null || munged --force
  sleep 1
fi
munge -n | unmunge >/dev/null 2>&1 || { say "munge does not work (munged failed to start)"; exit 4; }

CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
if [ "$NODES" -le 1 ]; then
  NODE_LINES="NodeName=$NODE CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN"
  NODE_NAMES=$NODE
  SLURMD_ARGS=("")
else
  per=$(( CPUS / NODES > 0 ? CPUS / NODES : 1 ))
  NODE_LINES=""
  SLURMD_ARGS=()
  for i in $(seq "$NODES"); do
    NODE_LINES+="NodeName=lw$i NodeHostname=$NODE NodeAddr=127.0.0.1 Port=$((17000 + i)) CPUs=$per RealMemory=$((MEM_MB / NODES)) State=UNKNOWN"$'\n'
    SLURMD_ARGS+=("-N lw$i")
  done
  NODE_NAMES="lw[1-$NODES]"
fi
cat >"$CONF_DIR/slurm.conf" <<EOF
# written by longweave slurm/local-cluster.sh: a one-node test cluster
ClusterName=longweave
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=600
SchedulerParameters=sched_interval=2
SlurmdTimeout=60
$NODE_LINES
PartitionName=debug Nodes=$NODE_NAMES Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
: >"$CONF_DIR/cgroup.conf"

stop
slurmctld -i -c 2>>"$STATE/log/start.err" || { say "slurmctld failed: $(tail -3 "$STATE/log/slurmctld.log")"; exit 5; }
for args in "${SLURMD_ARGS[@]}"; do
  # shellcheck disable=SC2086
  slurmd $args 2>>"$STATE/log/start.err" || { say "slurmd $args failed: $(tail -3 "$STATE/log/start.err")"; exit 5; }
done
for _ in $(seq 30); do
  if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
    sleep 2   # let every slurmd register
    say "cluster up: $(sinfo -h -o 'partition %P, %D node(s) %N, %c CPUs each, %t')"
    exit 0
  fi
  sleep 1
done
say "the node did not become idle: $(sinfo -h 2>&1 | head -2); logs in $STATE/log"
exit 6
