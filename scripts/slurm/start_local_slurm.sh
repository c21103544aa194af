#!/usr/bin/env bash
# Start a single-node SLURM (Debian's slurm-wlm + munge) on this machine, for the end-to-end
# test tests/batch/test_slurm_e2e.py. Needs root and `apt-get install slurm-wlm`. Idempotent.
set -euo pipefail
command -v slurmctld >/dev/null || { echo "slurm-wlm is not installed (apt-get install slurm-wlm)" >&2; exit 2; }
if sinfo -h -o %t 2>/dev/null | grep -qE 'idle|mix|alloc'; then exit 0; fi
H=$(hostname)
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=$H
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
NodeName=$H CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$H Default=YES MaxTime=INFINITE State=UP
CONF
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chmod 400 /etc/munge/munge.key; }
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
pgrep -x munged >/dev/null || /usr/sbin/munged --force
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 30); do
    sinfo -h -o %t 2>/dev/null | grep -qE 'idle|mix' && exit 0
    sleep 1
done
echo "SLURM did not come up: see /var/log/slurm/" >&2
exit 1
