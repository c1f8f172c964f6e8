#!/usr/bin/env bash
# A one-node Slurm in a folder: munged, slurmctld and slurmd from Debian's
# slurm-wlm, started directly (no systemd), with a generated slurm.conf.
# Source it, then: slurm_start DIR (returns 77 with one line when it cannot),
# slurm_stop. Clients find the cluster through SLURM_CONF.
#
# The node claims 8 CPUs (SlurmdParameters=config_overrides) so that four
# 2-rank jobs run side by side on a small machine. Partitions: low (the
# default, PreemptMode=REQUEUE), lowc (PreemptMode=CANCEL), both preempted
# by high (PriorityTier 2); preempt/partition_prio. KillWait=60 is the time
# a job has between SIGTERM and SIGKILL (30 was once too short for the
# time-limit job's stop while three other jobs shared 2 cores). Completed jobs are written to
# DIR/jobcomp.txt (jobcomp/filetxt; no accounting database).

slurm_free_port() {
  local p
  for p in $(seq "$1" $(($1 + 200))); do
    ss -ltnH "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return 0; }
  done
  return 1
}

slurm_start() {
  SLURM_DIR=$1
  local need
  [ "$(id -u)" = 0 ] || { echo "skipped: the Slurm test runs daemons as root (not root here)"; return 77; }
  for need in munged slurmctld slurmd sbatch scontrol ss; do
    command -v "$need" >/dev/null || { echo "skipped: '$need' not found (apt-get install slurm-wlm munge)"; return 77; }
  done
  mkdir -p "$SLURM_DIR"/{state,spool,munge}
  chmod 700 "$SLURM_DIR/munge"
  head -c 1024 /dev/urandom >"$SLURM_DIR/munge/munge.key"
  chmod 400 "$SLURM_DIR/munge/munge.key"
  local sock=$SLURM_DIR/munge/munge.sock
  munged --force --key-file="$SLURM_DIR/munge/munge.key" --socket="$sock" \
    --pid-file="$SLURM_DIR/munge/munged.pid" --log-file="$SLURM_DIR/munge/munged.log" \
    --seed-file="$SLURM_DIR/munge/munged.seed" >"$SLURM_DIR/munge/start.log" 2>&1 \
    || { echo "skipped: munged does not start: $(tail -1 "$SLURM_DIR/munge/start.log")"; return 77; }
  local host ctld_port slurmd_port
  host=$(hostname -s)
  ctld_port=$(slurm_free_port 16817) && slurmd_port=$(slurm_free_port $((ctld_port + 1))) \
    || { echo "skipped: no free port for slurmctld/slurmd"; return 77; }
  export SLURM_CONF=$SLURM_DIR/slurm.conf
  cat >"$SLURM_CONF" <<CONF
ClusterName=basintest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock,cred_expire=5
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/slurmctld.log
SlurmdLogFile=$SLURM_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$SLURM_DIR/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=60
MinJobAge=3600
InactiveLimit=0
MessageTimeout=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=8 RealMemory=1000 State=UNKNOWN
PartitionName=low Nodes=$host Default=YES PriorityTier=1 PreemptMode=REQUEUE MaxTime=INFINITE State=UP
PartitionName=lowc Nodes=$host PriorityTier=1 PreemptMode=CANCEL MaxTime=INFINITE State=UP
PartitionName=high Nodes=$host PriorityTier=2 PreemptMode=OFF MaxTime=INFINITE State=UP
CONF
  slurmctld -f "$SLURM_CONF" -i >"$SLURM_DIR/slurmctld.start" 2>&1 \
    || { echo "skipped: slurmctld does not start: $(tail -1 "$SLURM_DIR/slurmctld.start")"; return 77; }
  slurmd -f "$SLURM_CONF" >"$SLURM_DIR/slurmd.start" 2>&1 \
    || { echo "skipped: slurmd does not start: $(tail -1 "$SLURM_DIR/slurmd.start")"; return 77; }
  local i
  for i in $(seq 300); do
    sinfo -h -o %t 2>/dev/null | grep -qx idle && return 0
    sleep 0.2
  done
  echo "skipped: the Slurm node did not come up: $(sinfo -h -o '%t %E' 2>&1 | head -1); $(tail -1 "$SLURM_DIR/slurmd.log" 2>/dev/null)"
  return 77
}

slurm_stop() {
  [ -n "${SLURM_DIR:-}" ] || return 0
  local f pid
  for f in slurmd.pid slurmctld.pid munge/munged.pid; do
    pid=$(cat "$SLURM_DIR/$f" 2>/dev/null) || continue
    [ -n "$pid" ] && kill "$pid" 2>/dev/null
  done
  for f in slurmd.pid slurmctld.pid munge/munged.pid; do
    pid=$(cat "$SLURM_DIR/$f" 2>/dev/null) || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
  done
  return 0
}
