#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for trying the sweep script (sweep.sbatch)
# before renting nodes, and for tests/test_slurm.py:
#
#   bash experiments/cluster/local_slurm.sh start DIR   # munged, slurmctld, slurmd; prints
#   export SLURM_CONF=DIR/slurm.conf                    #   this line to paste
#   bash experiments/cluster/local_slurm.sh stop DIR    # stop the three daemons
#
# Everything lives in DIR (an absolute or relative path, created if missing): its own munge
# key and socket, slurm.conf, state, spool, logs and pid files, on free ports; nothing in
# /etc is read or changed, so it runs beside a machine's own munge or Slurm. The node is
# this machine as `slurmd -C` describes it (CPUs, memory), partition `sigsim`, no GPUs.
# Plugins that need cgroups or accounting are off (proctrack/linuxproc, task/none), so it
# runs in containers. Needs root (the daemons run as root) and Slurm installed
# (experiments/cluster/install_slurm.sh). `start` waits at most 60 s for the node to be idle.
set -euo pipefail
usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
mkdir -p "$2"
dir=$(cd "$2" && pwd)
conf=$dir/slurm.conf

stop() {
    local name pid
    for name in slurmd slurmctld munged; do
        [ -s "$dir/$name.pid" ] || continue
        pid=$(cat "$dir/$name.pid")
        kill -TERM "$pid" 2>/dev/null || continue
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$dir/$name.pid"
    done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'; }

start() {
    [ "$(id -u)" -eq 0 ] || { echo "local_slurm: needs root" >&2; exit 1; }
    for p in munged mungekey slurmctld slurmd sinfo; do
        command -v "$p" >/dev/null || { echo "local_slurm: $p not found (install_slurm.sh)" >&2; exit 1; }
    done
    stop  # a previous start in the same DIR
    mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
    chmod 700 "$dir/munge"
    [ -s "$dir/munge/munge.key" ] || mungekey --create --keyfile="$dir/munge/munge.key"
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/seed"
    local host node
    host=$(hostname -s)
    node=$(slurmd -C | head -n 1)  # NodeName=<host> CPUs=... RealMemory=...
    cat >"$conf" <<EOF
ClusterName=sigsim-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
KillWait=5
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=sigsim Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    slurmctld -c -f "$conf"
    slurmd -f "$conf"
    for _ in $(seq 120); do
        if [ "$(SLURM_CONF=$conf sinfo -h -o %t 2>/dev/null)" = idle ]; then
            echo "export SLURM_CONF=$conf"
            return 0
        fi
        sleep 0.5
    done
    echo "local_slurm: node not idle after 60 s; see $dir/slurmctld.log and $dir/slurmd.log" >&2
    SLURM_CONF=$conf sinfo >&2 || true
    exit 1
}

case $action in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
