#!/usr/bin/env bash
# Install Slurm and munge from Debian's packages (slurm-wlm: slurmctld, slurmd, the client
# commands; munge), without recommends and without starting any service: the tests and
# experiments/cluster/local_slurm.sh start their own daemons with their own configuration.
# Idempotent: a machine that has slurmctld, slurmd, sbatch and munged already does nothing.
# Needs root (or sudo) and a Debian/Ubuntu package source; prints one line and exits 1 if not.
set -euo pipefail
have_all() { command -v slurmctld && command -v slurmd && command -v sbatch && command -v munged; }
if have_all >/dev/null 2>&1; then
    echo "slurm: already installed ($(slurmctld -V))"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "slurm: need root or sudo to install" >&2; exit 1; }
    SUDO="sudo"
fi
command -v apt-get >/dev/null || { echo "slurm: no apt-get (not Debian/Ubuntu)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d answering 101 keeps the packages' postinst from starting services here.
policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    added_policy=1
fi
trap '[ "$added_policy" -eq 1 ] && $SUDO rm -f "$policy"' EXIT
if ! apt-cache show slurm-wlm >/dev/null 2>&1; then
    $SUDO apt-get update -qq
fi
$SUDO apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
have_all >/dev/null || { echo "slurm: install finished but a daemon is missing" >&2; exit 1; }
echo "slurm: installed ($(slurmctld -V))"
