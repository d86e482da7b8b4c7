#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for tests/test_slurm.py: installs Debian's Slurm
# (22.05) and MUNGE, writes slurm.conf for this host and starts munged, slurmctld and slurmd as root
# in the background (no systemd). Idempotent: a cluster that is already up and configured the same
# way is left alone. Prints one line when the node is idle; exits non-zero with a message otherwise.
#
# No accounting database: sacct has nothing to answer, so the workflow profile polls with squeue,
# which sees a finished job for MinJobAge seconds (set here well above the profile's first
# status-check delay, which the SLURM executor plugin requires: MinJobAge >= 3 x that delay).
set -euo pipefail

die() {
    echo "slurm-up: $*" >&2
    exit 1
}
[[ $(id -u) -eq 0 ]] || die "must run as root (installs packages, starts daemons)"

CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
HOST=$(hostname -s)
PARTITION=main
MIN_JOB_AGE=600 # seconds a finished job stays visible to squeue

# 1. packages (skipped when already installed)
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sinfo >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null || die "apt-get install slurmctld slurmd slurm-client munge failed"
fi

# 2. MUNGE: key, runtime dir (systemd's tmpfiles would create it), daemon as the munge user
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key && chmod 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    rm -f /run/munge/munged.pid /run/munge/munge.socket.2*
    runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
    for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break || sleep 0.5; done
    munge -n | unmunge >/dev/null 2>&1 || die "munge credential round trip failed (see /var/log/munge/munged.log)"
fi

# 3. slurm.conf for this host: CPUs from nproc, RealMemory ~95 % of MemTotal (slurmd drains a node
#    that reports less memory than configured)
CPUS=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.95)}' /proc/meminfo)
mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
NEW_CONF=$(
    cat <<EOF
# Written by .ci/slurm-up.sh: single-node test cluster, root daemons, no systemd, no accounting.
ClusterName=ulm
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# no cgroups without systemd: plain process tracking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# cores and memory are the consumable resources (a job asking for more than the node has is rejected)
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# no accounting database: sacct cannot answer, squeue keeps finished jobs for MinJobAge seconds
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=$MIN_JOB_AGE
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
)
CHANGED=0
if [[ ! -f $CONF_DIR/slurm.conf ]] || [[ "$(cat "$CONF_DIR/slurm.conf")" != "$NEW_CONF" ]]; then
    printf '%s\n' "$NEW_CONF" >"$CONF_DIR/slurm.conf"
    CHANGED=1
fi

# 4. daemons: (re)start when not running or the configuration changed
running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop() {
    if running "$1"; then
        local pid
        pid=$(cat "$1")
        kill "$pid"
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
}
if [[ $CHANGED -eq 1 ]]; then
    stop /run/slurmd.pid
    stop /run/slurmctld.pid
fi
if ! running /run/slurmctld.pid; then
    slurmctld || die "slurmctld did not start (see $LOG_DIR/slurmctld.log)"
fi
for _ in $(seq 30); do scontrol ping 2>/dev/null | grep -q UP && break || sleep 1; done
scontrol ping 2>/dev/null | grep -q UP || die "slurmctld does not answer (see $LOG_DIR/slurmctld.log)"
if ! running /run/slurmd.pid; then
    slurmd || die "slurmd did not start (see $LOG_DIR/slurmd.log)"
fi

# 5. wait for the node to be idle (resume it if an earlier run left it down or drained)
STATE=
for i in $(seq 60); do
    STATE=$(sinfo -h -N -n "$HOST" -o %t 2>/dev/null | head -1)
    case $STATE in
    idle | mix | alloc) break ;;
    down* | drain* | drng*) [[ $i -gt 5 ]] && scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 1
done
case $STATE in
idle | mix | alloc) ;;
*) die "node $HOST is '${STATE:-unknown}' after 60 s, not idle (see $LOG_DIR/slurmd.log, scontrol show node $HOST)" ;;
esac
echo "slurm-up: ready: node $HOST ($CPUS CPUs, $MEM_MB MB) $STATE in partition $PARTITION, MinJobAge=${MIN_JOB_AGE}s, Slurm $(sinfo -V | awk '{print $2}')"
