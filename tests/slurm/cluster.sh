#!/usr/bin/env bash
# A private single-node SLURM (slurmctld + slurmd + munged) for tests/slurm.rs, as root.
#
#   cluster.sh start DIR [--stop-on-eof]   start it; state, logs and slurm.conf under DIR
#   cluster.sh stop DIR                    stop its daemons (by their pid files), keep DIR
#   cluster.sh env DIR                     print `export SLURM_CONF=...` for a shell
#   cluster.sh crash-node DIR              the node dies: KILL to slurmd, its step daemons
#                                          and every job process, then the node is DOWN
#   cluster.sh restart-node DIR            the node comes back: slurmd again, until idle
#
# It never touches a real installation: its own munge key and socket, its own slurm.conf
# (clients find it through SLURM_CONF, the daemons through -f), its own ports, spool and
# state directories and pid files, all under DIR. `start` returns once the node is idle;
# on failure it prints the daemons' logs, stops what it started and exits non-zero.
# --stop-on-eof: a watcher stops the cluster and deletes DIR when its standard input reaches
# end of file, so a test process that holds the pipe's other end takes the cluster with it
# when it exits, however it exits.
#
# Choices that matter for mlckpt (see docs/slurm.md):
# - ProctrackType=proctrack/linuxproc, TaskPlugin=task/none: no cgroups needed, so it runs
#   in any container; slurmstepd finds a step's processes through their parent links, so a
#   process that leaves the tree escapes `scancel` (a restored process is a child of its
#   supervisor: it stays in the tree).
# - KillWait=30 (the default, written out): at a job's end (time limit, plain `scancel`,
#   requeue) SLURM sends TERM, then KILL 30 s later; a checkpoint on TERM must fit in it.
# - AuthInfo cred_expire=5 (default 120, least accepted 5): how long a requeued job waits
#   before it may start again; sched_interval=1,bf_interval=1 so it then starts at once.
# - MinJobAge=300: `scontrol show job` still shows a finished job's state and ExitCode.
# - JobRequeue=1: batch jobs may be requeued (`scontrol requeue`, node failure).
# - PreemptType=preempt/partition_prio, PreemptMode=REQUEUE: a job of partition `urgent`
#   preempts (requeues) the jobs of `test` it needs the node of, and cancels those of
#   `cancelable` (PreemptMode=CANCEL) after a GraceTime of 10 s.
set -euo pipefail

usage() {
    echo "usage: $0 start DIR [--stop-on-eof] | stop DIR | env DIR" >&2
    exit 2
}
[ $# -ge 2 ] || usage
cmd=$1
dir=$(realpath -m "$2")

stop() {
    # Jobs first, while the daemons can still end them: KILL to every step and batch shell.
    if [ -s "$dir/run/slurmctld.pid" ] && running "$(cat "$dir/run/slurmctld.pid")"; then
        SLURM_CONF=$dir/slurm.conf scancel --quiet --full --signal=KILL --user=root 2>/dev/null || true
        for _ in $(seq 60); do
            [ -z "$(SLURM_CONF=$dir/slurm.conf squeue -h -t R,CG -o %i 2>/dev/null)" ] && break
            sleep 0.05
        done
    fi
    local pidfile pid
    for pidfile in "$dir/run/slurmctld.pid" "$dir/run/slurmd.pid" "$dir/run/munged.pid"; do
        [ -s "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill -TERM "$pid" 2>/dev/null || { rm -f "$pidfile"; continue; }
        for _ in $(seq 100); do
            running "$pid" || break
            sleep 0.05
        done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$pidfile"
    done
    kill_step_daemons
}

# Step daemons outlive slurmd by design: ours (their environment names our slurm.conf) are
# killed with every process below them.
kill_step_daemons() {
    local p
    for p in /proc/[0-9]*; do
        [ "$(cat "$p/comm" 2>/dev/null)" = slurmstepd ] || continue
        if tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$dir/slurm.conf"; then
            kill_tree "${p#/proc/}"
        fi
    done
}

# The node's name, from slurm.conf.
node_name() {
    sed -n 's/^NodeName=\([^ ]*\).*/\1/p' "$dir/slurm.conf"
}

# Starts slurmd and waits until the node is idle.
start_node() {
    local host=$1
    slurmd -f "$SLURM_CONF" -N "$host" </dev/null >>"$dir/log/slurmd.out" 2>&1 ||
        fail "slurmd did not start"
    local state=""
    for _ in $(seq 300); do
        state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
        case $state in
        idle) break ;;
        down* | drain*) scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.05
    done
    [ "$state" = idle ] || fail "node $host is not idle after 15 s (sinfo says: ${state:-nothing})"
}

# A node failure as slurmctld sees it: no signal reaches the job, everything on the node
# is gone at once; the node is then marked DOWN (slurmctld would after SlurmdTimeout),
# which requeues its jobs that allow it.
crash_node() {
    export SLURM_CONF=$dir/slurm.conf
    [ -s "$dir/run/slurmd.pid" ] && kill -KILL "$(cat "$dir/run/slurmd.pid")" 2>/dev/null
    rm -f "$dir/run/slurmd.pid"
    kill_step_daemons
    scontrol update NodeName="$(node_name)" State=DOWN Reason=crash-node
}

# Whether PID runs: a zombie does not (a daemon's parent is gone, and whoever inherits it
# may be slow to reap it, or never do).
running() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    [ "$(cut -d' ' -f1 <<<"${stat##*) }")" != Z ]
}

# KILL to a process and all its descendants (found before any of them dies).
kill_tree() {
    local all=("$1") i=0 p
    while [ $i -lt ${#all[@]} ]; do
        for p in $(cat /proc/"${all[$i]}"/task/*/children 2>/dev/null); do all+=("$p"); done
        i=$((i + 1))
    done
    kill -KILL "${all[@]}" 2>/dev/null || true
}

logs() {
    local f
    for f in "$dir"/log/*.log; do
        [ -s "$f" ] || continue
        echo "===== $f (last 40 lines)"
        tail -n 40 "$f"
    done
}

fail() {
    echo "cluster.sh: $*" >&2
    logs >&2
    stop
    exit 1
}

# A TCP port nothing listens on, away from SLURM's defaults (6817-6819) and below Linux's
# ephemeral ports (32768 and up), which outgoing connections take.
free_port() {
    local port used
    used=$(ss -Htln 2>/dev/null | awk '{print $4}' | sed 's/.*://')
    while :; do
        port=$((20000 + RANDOM % 12000))
        grep -qx "$port" <<<"$used" || break
    done
    echo "$port"
}

start() {
    local stop_on_eof=$1
    [ "$(id -u)" = 0 ] || { echo "cluster.sh: must run as root" >&2; exit 1; }
    for bin in munged slurmctld slurmd sinfo; do
        command -v "$bin" >/dev/null || PATH=$PATH:/usr/sbin:/sbin
        command -v "$bin" >/dev/null || { echo "cluster.sh: $bin not found" >&2; exit 1; }
    done
    stop
    # A fresh state: no job of an earlier start comes back, job ids start at 1.
    rm -rf "$dir"/{state,spool,run}
    mkdir -p "$dir"/{munge,run,log,spool,state}
    chmod 700 "$dir/munge"
    local host cpus mem ctld_port slurmd_port
    host=$(hostname -s)
    # The CPUs this process may use: declaring more than slurmd finds would drain the node.
    cpus=$(nproc)
    # Declare less memory than the machine has, so slurmd never finds "low RealMemory".
    mem=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2))
    ctld_port=$(free_port)
    slurmd_port=$(free_port)
    [ "$ctld_port" != "$slurmd_port" ] || slurmd_port=$((ctld_port + 1))

    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$dir/munge/munge.key"
    munged --force --socket="$dir/run/munge.socket" --key-file="$dir/munge/munge.key" \
        --log-file="$dir/log/munged.log" --pid-file="$dir/run/munged.pid" \
        --seed-file="$dir/munge/munged.seed" </dev/null >>"$dir/log/munged.log" 2>&1 ||
        fail "munged did not start"

    cat >"$dir/slurm.conf" <<EOF
# Written by tests/slurm/cluster.sh: a private single-node cluster.
ClusterName=mlckpt-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/run/munge.socket,cred_expire=5
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# A requeued job becomes eligible cred_expire (see AuthInfo) seconds later; the scheduler
# must then notice it within a second, not at its default 60 s round.
SchedulerParameters=sched_interval=1,bf_interval=1
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=300
InactiveLimit=0
Waittime=0
MessageTimeout=10
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
# Preemption by partition: a job of urgent (higher PriorityTier) that needs the node
# requeues the jobs of test running there (TERM, KILL KillWait s later), as a site's
# preemptible partition does.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=1
PartitionName=cancelable Nodes=$host MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=1 PreemptMode=CANCEL GraceTime=10
PartitionName=urgent Nodes=$host MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=2 PreemptMode=OFF
EOF
    export SLURM_CONF=$dir/slurm.conf
        slurmctld -f "$SLURM_CONF" -c </dev/null >>"$dir/log/slurmctld.out" 2>&1 ||
        fail "slurmctld did not start"
    start_node "$host"

    if [ "$stop_on_eof" = yes ]; then
        # The watcher holds the caller's pipe (as fd 3: an asynchronous command's standard
        # input would be /dev/null) and nothing of the caller's output, which ends now.
        exec 3<&0
        (
            trap '' INT TERM HUP
            cat <&3 >/dev/null
            exec 3<&-
            stop
            rm -rf "$dir"
        ) </dev/null >/dev/null 2>&1 &
        exec 3<&-
    fi
    echo "export SLURM_CONF=$SLURM_CONF"
}

case $cmd in
start)
    eof=no
    [ "${3:-}" = --stop-on-eof ] && eof=yes
    start "$eof"
    ;;
stop) stop ;;
env) echo "export SLURM_CONF=$dir/slurm.conf" ;;
crash-node) crash_node ;;
restart-node)
    export SLURM_CONF=$dir/slurm.conf
    start_node "$(node_name)"
    ;;
*) usage ;;
esac
