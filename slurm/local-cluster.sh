#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (slurmctld + slurmd + munge), for tests and trying
# the launcher without a real cluster.
#
#   bash slurm/local-cluster.sh            install (Debian/Ubuntu, needs root) if missing, then start
#   bash slurm/local-cluster.sh --no-install   start only if SLURM is already installed
#   bash slurm/local-cluster.sh --stop     stop the daemons this script started
#
# Exit 0 when `sinfo` shows the node idle; non-zero (with the reason on stderr) otherwise.
# The set-up is deliberately plain: proctrack/linuxproc and task/none need no cgroups or
# systemd (containers rarely have either); no accounting database; JobRequeue=1; KillWait=30.
set -uo pipefail

STATE=${LONGWEAVE_SLURM_STATE:-/var/tmp/longweave-slurm}
CONF_DIR=/etc/slurm
NODE=$(hostname -s)
say() { echo "[local-cluster] $*" >&2; }

stop() {
  for name in slurmd slurmctld; do
    if [ -f "$STATE/$name.pid" ]; then
      kill "$(cat "$STATE/$name.pid")" 2>/dev/null && say "stopped $name"
      rm -f "$STATE/$name.pid"
    fi
  done
}

if [ "${1:-}" = "--stop" ]; then stop; exit 0; fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  if [ "${1:-}" = "--no-install" ]; then say "SLURM is not installed"; exit 3; fi
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
cat >"$CONF_DIR/slurm.conf" <<EOF
# written by longweave slurm/local-cluster.sh: a one-node test cluster
ClusterName=longweave
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
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
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
: >"$CONF_DIR/cgroup.conf"

stop
slurmctld -i -c 2>>"$STATE/log/start.err" || { say "slurmctld failed: $(tail -3 "$STATE/log/slurmctld.log")"; exit 5; }
slurmd 2>>"$STATE/log/start.err" || { say "slurmd failed: $(tail -3 "$STATE/log/slurmd.log")"; exit 5; }
for _ in $(seq 30); do
  if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
    say "cluster up: $(sinfo -h -o 'partition %P, %D node(s) %N, %c CPUs, %t')"
    exit 0
  fi
  sleep 1
done
say "the node did not become idle: $(sinfo -h 2>&1 | head -2); logs in $STATE/log"
exit 6
