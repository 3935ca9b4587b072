#!/usr/bin/env bash
# A real single-node Slurm (with accounting) on this machine, for tests: NOT a production cluster.
#
#   sudo scripts/local_slurm.sh start    # install what is missing (apt), configure, start, wait for the node
#   sudo scripts/local_slurm.sh status   # which daemons run, sinfo, squeue
#   sudo scripts/local_slurm.sh stop     # cancel this cluster's jobs, end the daemons started here (by PID)
#   scripts/local_slurm.sh start --dry-run   # check the command only: install, start and stop nothing
#
# Debian/Ubuntu, as root. Installs `slurm-wlm slurmdbd munge mariadb-server mariadb-client` with apt if
# any is missing (keeping the packages' own service scripts from starting system-wide daemons).
# Everything it writes (config, munge key, MariaDB data, Slurm state, logs, PID files) lives in
# $LOCAL_SLURM_DIR (default /tmp/local-slurm), except munged's socket, which stays where Slurm's commands
# look for it (/run/munge/munge.socket.2), and the /etc/slurm/slurm.conf link below. The daemons are
# started by this script, not by the system's service manager; `stop` cancels this cluster's jobs and
# ends exactly those daemons, by the PIDs in their PID files. Accounting (MariaDB on 127.0.0.1 + slurmdbd)
# is part of it because submitit asks `sacct` about a job that ended without writing its result (scancel,
# time limit, OOM): without accounting such a job stays UNKNOWN and a sweep waits for ever.
# Start twice: the second start finds it running (or starts only what is missing). Timings on a 2-core
# Debian bookworm machine: 18 s with nothing installed (13 s of apt), 2.5 s when installed, stop 1.5-3 s.
#
# Where the Slurm commands find the config: the config is $LOCAL_SLURM_DIR/etc/slurm.conf. `start` links
# /etc/slurm/slurm.conf to it (only if that path is free or already such a link; `stop` removes the link),
# so `sbatch`, `squeue`, `sacct`, and the processes submitit starts (in the sweep and inside the jobs,
# e.g. `scontrol requeue`) find it without any environment. Where /etc/slurm/slurm.conf is someone
# else's file (or LOCAL_SLURM_LINK_ETC=0), export SLURM_CONF=$LOCAL_SLURM_DIR/etc/slurm.conf instead:
# children inherit it, and sbatch passes the environment on to the job.
#
# Settings (environment): LOCAL_SLURM_DIR, LOCAL_SLURM_CLUSTER (localslurm), LOCAL_SLURM_PARTITION (debug),
# LOCAL_SLURM_MEM_HEADROOM_MB (memory kept from Slurm: max(1024, 10% of RAM)), LOCAL_SLURM_TIMEOUT
# (seconds to wait for the node, 60), ports LOCAL_SLURM_{CTLD,SLURMD,DBD,DB}_PORT
# (6817, 6818, 6819, 3307), LOCAL_SLURM_LINK_ETC (1).
set -euo pipefail

DIR=${LOCAL_SLURM_DIR:-/tmp/local-slurm}
CLUSTER=${LOCAL_SLURM_CLUSTER:-localslurm}
PARTITION=${LOCAL_SLURM_PARTITION:-debug}
TIMEOUT=${LOCAL_SLURM_TIMEOUT:-60}
CTLD_PORT=${LOCAL_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${LOCAL_SLURM_SLURMD_PORT:-6818}
DBD_PORT=${LOCAL_SLURM_DBD_PORT:-6819}
DB_PORT=${LOCAL_SLURM_DB_PORT:-3307}
LINK_ETC=${LOCAL_SLURM_LINK_ETC:-1}
ETC_LINK=/etc/slurm/slurm.conf
CONF=$DIR/etc/slurm.conf
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server mariadb-client)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)  # start order; stop goes backwards
T0=$(date +%s.%N)

export SLURM_CONF=$CONF  # the daemons find slurmdbd.conf and cgroup.conf next to it

say() { printf 'local_slurm: %s\n' "$*"; }
die() { printf 'local_slurm: error: %s\n' "$*" | fold -s -w 110 >&2; exit 1; }
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

pidfile() { if [[ $1 == munged ]]; then echo "$DIR/run/munge/munged.pid"; else echo "$DIR/run/$1.pid"; fi; }

alive() {  # alive PID NAME: that process still runs (a zombie waiting for its parent does not count)
    [[ $(cat "/proc/$1/comm" 2>/dev/null) == "$2" ]] || return 1
    [[ $(sed 's/.*) \(.\).*/\1/' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

# The PID of our running daemon $1, or nothing: the PID file's process must still be that program.
running_pid() {
    local f pid
    f=$(pidfile "$1")
    [[ -s $f ]] || return 0
    pid=$(tr -dc '0-9' <"$f")
    [[ -n $pid ]] && alive "$pid" "$1" && echo "$pid"
    return 0
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
    local deadline=$((SECONDS + $1))
    shift 2  # $2 names what is awaited, for the reader
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

log_tail() { [[ -f $DIR/log/$1.log ]] && { echo "--- last lines of $DIR/log/$1.log:"; tail -n 15 "$DIR/log/$1.log"; } >&2; return 0; }

# ---------------------------------------------------------------------------------------------- install
install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null || die "the packages ${missing[*]} are missing and this machine has no apt-get. This script brings up a test Slurm on Debian or Ubuntu only; elsewhere install Slurm (slurmctld, slurmd, slurmdbd, client commands), MUNGE and MariaDB with the system's package manager, then run it again."
    say "installing ${missing[*]} with apt-get"
    local t=$SECONDS policy_added=0
    # Keep the packages' maintainer scripts from starting system-wide daemons: we start our own.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && policy_added=1
    fi
    local apt=(apt-get -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    export DEBIAN_FRONTEND=noninteractive
    if ! "${apt[@]}" install --no-install-recommends "${missing[@]}" >"$DIR/log/apt.log" 2>&1; then
        say "apt-get install failed; updating the package lists and trying again"
        if ! { apt-get -q update && "${apt[@]}" install --no-install-recommends "${missing[@]}"; } >>"$DIR/log/apt.log" 2>&1; then
            ((policy_added)) && rm -f /usr/sbin/policy-rc.d
            tail -n 20 "$DIR/log/apt.log" >&2
            die "apt-get could not install ${missing[*]} (log: $DIR/log/apt.log, last lines above). Check that the Debian/Ubuntu package archive is reachable and that no other apt/dpkg process holds the lock."
        fi
    fi
    ((policy_added)) && rm -f /usr/sbin/policy-rc.d
    say "installed in $((SECONDS - t)) s"
}

# ----------------------------------------------------------------------------------------------- config
detect_node() {  # sets NODE, CPUS, SOCKETS, CORES, THREADS, MEM
    NODE=$(uname -n)
    NODE=${NODE%%.*}
    local hw
    hw=$(slurmd -C 2>/dev/null | head -n 1 || true)
    field() { sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<<"$hw"; }
    CPUS=$(field CPUs); SOCKETS=$(field SocketsPerBoard); CORES=$(field CoresPerSocket); THREADS=$(field ThreadsPerCore)
    local total_mb
    total_mb=$(field RealMemory)
    [[ -n $CPUS ]] || { CPUS=$(nproc); SOCKETS=1; CORES=$CPUS; THREADS=1; }
    [[ -n $total_mb ]] || total_mb=$(awk '/MemTotal/ { print int($2 / 1024) }' /proc/meminfo)
    local headroom=${LOCAL_SLURM_MEM_HEADROOM_MB:-$((total_mb / 10 > 1024 ? total_mb / 10 : 1024))}
    MEM=$((total_mb - headroom))
    ((MEM >= 512)) || die "this machine has ${total_mb} MB of memory; after ${headroom} MB of headroom too little is left for Slurm jobs (set LOCAL_SLURM_MEM_HEADROOM_MB lower)."
}

write_config() {
    detect_node
    local ctld_host
    ctld_host="$NODE(127.0.0.1)"
    mkdir -p "$DIR/etc"
    cat >"$CONF.new" <<EOF
# Written by scripts/local_slurm.sh: a single-node TEST cluster, not a production configuration.
ClusterName=$CLUSTER
SlurmctldHost=$ctld_host
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job that gives no --mem is allocated the whole node's memory and runs alone.
DefMemPerCPU=1024
# A request no node can ever satisfy (CPUs, memory, time) fails at sbatch instead of pending for ever.
EnforcePartLimits=ALL
ReturnToService=2
JobRequeue=1
MailProg=/bin/true
StateSaveLocation=$DIR/state/slurmctld
SlurmdSpoolDir=$DIR/state/slurmd
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile slurmd)
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$DIR/etc/slurmdbd.conf.new" <<EOF
# Written by scripts/local_slurm.sh (test cluster).
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$(pidfile slurmdbd)
LogFile=$DIR/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(cat "$DIR/etc/db-password")
StorageLoc=slurm_acct_db
EOF
    # slurmd 22.05 reads cgroup.conf even without cgroup plugins; "autodetect" is its default anyway.
    printf '# Written by scripts/local_slurm.sh\nCgroupPlugin=autodetect\n' >"$DIR/etc/cgroup.conf.new"
    local f
    for f in slurm.conf slurmdbd.conf cgroup.conf; do
        if [[ -f $DIR/etc/$f ]] && cmp -s "$DIR/etc/$f.new" "$DIR/etc/$f"; then
            rm -f "$DIR/etc/$f.new"
        else
            mv -f "$DIR/etc/$f.new" "$DIR/etc/$f"
            CONFIG_CHANGED=1
        fi
    done
    chmod 600 "$DIR/etc/slurmdbd.conf"
    chmod 644 "$CONF" "$DIR/etc/cgroup.conf"
}

link_etc() {
    [[ $LINK_ETC == 1 ]] || return 0
    mkdir -p /etc/slurm
    if [[ -L $ETC_LINK ]]; then
        [[ $(readlink "$ETC_LINK") == "$CONF" ]] && return 0
        [[ $(readlink "$ETC_LINK") == */local-slurm*/etc/slurm.conf || ! -e $ETC_LINK ]] || {
            say "warning: $ETC_LINK links to $(readlink "$ETC_LINK"), not ours; export SLURM_CONF=$CONF"; return 0; }
        ln -sfn "$CONF" "$ETC_LINK"
    elif [[ -e $ETC_LINK ]]; then
        say "warning: $ETC_LINK is a file of this machine's own; left alone. Use: export SLURM_CONF=$CONF"
    else
        ln -s "$CONF" "$ETC_LINK"
    fi
}

# ------------------------------------------------------------------------------------------------ start
preflight() {
    [[ $(id -u) == 0 ]] || die "this needs root: it installs packages and runs slurmctld, slurmd (which starts jobs as their users), slurmdbd, MariaDB and munged. Run it with sudo, on a machine or container you may change (it is meant for CI and test machines, not a shared cluster)."
    [[ $(uname -s) == Linux ]] || die "Slurm's daemons run on Linux only."
    mkdir -p "$DIR"/{etc,run,log,state/slurmctld,state/slurmd,munge,mysql}
    chmod 755 "$DIR"
}

check_cgroup() {
    # slurmd 22.05 refuses to start without a cgroup filesystem, even with no cgroup plugin configured.
    if ! grep -qE '^[^ ]+ /sys/fs/cgroup[/ ]' /proc/mounts; then
        mkdir -p /sys/fs/cgroup 2>/dev/null || true
        mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null ||
            die "slurmd needs a cgroup filesystem at /sys/fs/cgroup and none is mounted (mounting cgroup2 there failed too). In a container, run it with the host's cgroups (e.g. docker --privileged or -v /sys/fs/cgroup:/sys/fs/cgroup:rw)."
        say "mounted cgroup2 at /sys/fs/cgroup"
    fi
    # Slurm picks its node address from a non-loopback interface; without one it may not resolve itself.
    local nic up=0
    for nic in /sys/class/net/*; do
        [[ ${nic##*/} != lo && $(cat "$nic/operstate" 2>/dev/null) =~ ^(up|unknown)$ ]] && up=1
    done
    if ((!up)); then
        say "warning: no network interface besides loopback is up; slurmd may fail to register"
    fi
}

# Slurm's commands reach munged at its compiled-in socket (sacctmgr ignores slurm.conf's AuthInfo in
# 22.05), so our munged serves the standard socket. A munged already answering there (the machine's
# own) is used as it is; everything here runs on this one machine, so its key is as good as ours.
MUNGE_SOCKET=/run/munge/munge.socket.2
munge_ok() { munge -S "$MUNGE_SOCKET" -n | unmunge -S "$MUNGE_SOCKET"; }

start_munged() {
    [[ -n $(running_pid munged) ]] && return 0
    if munge_ok >/dev/null 2>&1; then
        say "using the munged already running on this machine (socket $MUNGE_SOCKET)"
        return 0
    fi
    local key=$DIR/munge/munge.key
    if [[ ! -s $key ]]; then
        dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
    fi
    mkdir -p /run/munge
    chown munge:munge "$DIR/munge" "$key" /run/munge
    chmod 700 "$DIR/munge"  # the key's folder: munge's alone
    chmod 755 /run/munge    # the socket's folder: every user's jobs and commands connect to it
    chmod 400 "$key"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    touch "$DIR/log/munged.log" && chown munge:munge "$DIR/log/munged.log"
    mkdir -p "$DIR/run/munge" && chown munge:munge "$DIR/run/munge"  # munged writes its PID file as user munge
    rm -f "$(pidfile munged)"
    runuser -u munge -- munged --key-file="$key" --socket="$MUNGE_SOCKET" \
        --pid-file="$(pidfile munged)" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" ||
        { log_tail munged; die "munged did not start (log above)."; }
    wait_for 10 munged munge_ok || { log_tail munged; die "munged started but a credential could not be encoded and decoded within 10 s (log above)."; }
}

db() { mariadb --no-defaults --socket="$DIR/mysql/mysqld.sock" -u root "$@"; }

start_mariadb() {
    [[ -n $(running_pid mariadbd) ]] && return 0
    port_busy "$DB_PORT" && die "port $DB_PORT on 127.0.0.1 is taken, so our MariaDB cannot listen there; set LOCAL_SLURM_DB_PORT to a free port."
    if [[ ! -d $DIR/mysql/data/mysql ]]; then
        mariadb-install-db --no-defaults --user=root --datadir="$DIR/mysql/data" --auth-root-authentication-method=socket \
            --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 ||
            { tail -n 20 "$DIR/log/mariadb-install.log" >&2; die "mariadb-install-db failed (log: $DIR/log/mariadb-install.log)."; }
    fi
    # Small footprint; lock timeout as slurmdbd recommends. Listens on 127.0.0.1 only.
    setsid mariadbd --no-defaults --user=root --datadir="$DIR/mysql/data" --socket="$DIR/mysql/mysqld.sock" \
        --pid-file="$(pidfile mariadbd)" --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
        --log-error="$DIR/log/mariadbd.log" --innodb-buffer-pool-size=128M --innodb-log-file-size=64M \
        --innodb-lock-wait-timeout=900 --performance-schema=OFF </dev/null >/dev/null 2>&1 &
    wait_for 30 mariadb db -e 'select 1' || { log_tail mariadbd; die "MariaDB did not answer within 30 s (log above)."; }
    if [[ ! -s $DIR/etc/db-password ]]; then
        (umask 077; head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$DIR/etc/db-password")
    fi
    local pw
    pw=$(cat "$DIR/etc/db-password")
    db -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
           CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
           ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
           GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" ||
        die "could not create the accounting database and its user in MariaDB."
}

start_slurm_daemon() {  # start_slurm_daemon NAME PORT
    local name=$1 port=$2
    [[ -n $(running_pid "$name") ]] && return 0
    port_busy "$port" && die "port $port on 127.0.0.1 is taken (another Slurm?), so $name cannot listen there; stop that one or set LOCAL_SLURM_*_PORT (see the top of this script)."
    rm -f "$(pidfile "$name")"
    "$name" >>"$DIR/log/$name.start.log" 2>&1 || { log_tail "$name.start"; log_tail "$name"; die "$name did not start (logs above)."; }
    wait_for 15 "$name" running_pid_ok "$name" || { log_tail "$name"; die "$name exited right after starting (log above)."; }
}
running_pid_ok() { [[ -n $(running_pid "$1") ]]; }

register_accounting() {
    wait_for 30 slurmdbd sacctmgr -n list cluster ||
        { log_tail slurmdbd; die "slurmdbd does not answer sacctmgr within 30 s (log above)."; }
    if [[ -z $(sacctmgr -n -P list cluster "$CLUSTER" format=cluster) ]]; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
    if [[ -z $(sacctmgr -n -P list account local format=account) ]]; then
        sacctmgr -i add account local cluster="$CLUSTER" description="local test cluster" organization=local >/dev/null
    fi
    if [[ -z $(sacctmgr -n -P list user root format=user) ]]; then
        sacctmgr -i add user root account=local cluster="$CLUSTER" >/dev/null
    fi
}

node_state() { sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -n 1; }

wait_idle() {
    local deadline=$((SECONDS + TIMEOUT)) state=""
    while ((SECONDS < deadline)); do
        state=$(node_state || true)
        case $state in
            idle | mixed | allocated | completing) return 0 ;;
        esac
        sleep 0.3
    done
    {
        echo "--- sinfo:"; sinfo -N -l 2>&1 || true
        echo "--- scontrol show node:"; scontrol show node "$NODE" 2>&1 | grep -E 'State|Reason|CPUTot|RealMemory' || true
    } >&2
    log_tail slurmd; log_tail slurmctld
    die "the node $NODE is not idle after ${TIMEOUT} s (state: '${state:-no answer}'; details above). A node that is DRAIN/INVALID with a reason like 'Low RealMemory' or 'Low socket*core*thread count' means slurm.conf promises more than slurmd finds: set LOCAL_SLURM_MEM_HEADROOM_MB higher, or stop, delete $DIR and start again."
}

cmd_start() {
    preflight
    install_packages
    check_cgroup
    local all_running=1 d
    for d in "${DAEMONS[@]}"; do [[ -n $(running_pid "$d") ]] || all_running=0; done
    [[ -s $DIR/etc/db-password ]] || (umask 077; head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$DIR/etc/db-password")
    CONFIG_CHANGED=0
    write_config
    if ((all_running)); then
        ((CONFIG_CHANGED)) && say "warning: the config changed while the cluster runs; run stop, then start, to use it"
        say "already running"
    else
        start_munged
        start_mariadb
        start_slurm_daemon slurmdbd "$DBD_PORT"
        register_accounting
        start_slurm_daemon slurmctld "$CTLD_PORT"
        start_slurm_daemon slurmd "$SLURMD_PORT"
    fi
    link_etc
    wait_idle
    say "up in $(elapsed) s: node $NODE ($CPUS CPUs, $MEM MB), partition $PARTITION, cluster $CLUSTER, accounting on"
    say "config $CONF$([[ -L $ETC_LINK && $(readlink $ETC_LINK) == "$CONF" ]] && echo " (linked from $ETC_LINK)"); logs in $DIR/log"
    [[ -L $ETC_LINK && $(readlink $ETC_LINK) == "$CONF" ]] || say "export SLURM_CONF=$CONF  # for sbatch, sinfo, squeue, sacct and submitit"
}

# ------------------------------------------------------------------------------------------------- stop
stop_daemon() {
    local name=$1 pid i t=$SECONDS
    pid=$(running_pid "$name")
    if [[ -z $pid ]]; then
        rm -f "$(pidfile "$name")"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        alive "$pid" "$name" || break
        sleep 0.1
    done
    if alive "$pid" "$name"; then
        say "$name (PID $pid) still runs 15 s after SIGTERM: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$(pidfile "$name")"
    STOPPED+=("$name (PID $pid, $((SECONDS - t)) s)")
}

cmd_stop() {
    [[ $(id -u) == 0 ]] || die "stopping the local Slurm needs root (its daemons run as root and munge)."
    [[ -d $DIR ]] || { say "nothing to stop: $DIR does not exist"; return 0; }
    STOPPED=()
    if [[ -n $(running_pid slurmctld) ]]; then
        local jobs=()
        mapfile -t jobs < <(squeue -h -o %A 2>/dev/null | sort -u)
        if ((${#jobs[@]})); then
            say "cancelling this cluster's jobs: ${jobs[*]}"
            scancel "${jobs[@]}" 2>/dev/null || true
            local deadline=$((SECONDS + 45))
            while [[ -n $(squeue -h -o %A 2>/dev/null) ]] && ((SECONDS < deadline)); do sleep 0.5; done
        fi
    fi
    local i
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do stop_daemon "${DAEMONS[i]}"; done
    if [[ -L $ETC_LINK && $(readlink "$ETC_LINK") == "$CONF" ]]; then rm -f "$ETC_LINK"; fi
    if ((${#STOPPED[@]})); then say "stopped ${STOPPED[*]} in $(elapsed) s"; else say "nothing was running"; fi
    say "state and logs kept in $DIR (delete it for a fresh cluster)"
}

# ----------------------------------------------------------------------------------------------- status
cmd_status() {
    local d pid any=0
    for d in "${DAEMONS[@]}"; do
        pid=$(running_pid "$d")
        if [[ -n $pid ]]; then printf '  %-10s running, PID %s\n' "$d" "$pid"; any=1; else printf '  %-10s stopped\n' "$d"; fi
    done
    echo "  config     $CONF$([[ -L $ETC_LINK && $(readlink $ETC_LINK) == "$CONF" ]] && echo " (linked from $ETC_LINK)")"
    if [[ -n $(running_pid slurmctld) ]]; then
        sinfo -N -o '%N %P %T %c %m %E' || true
        squeue -o '%.8i %.9P %.30j %.2t %.10M %R' || true
    fi
    ((any)) || return 3
}

if [[ ${2:-} == --dry-run ]]; then
    case ${1:-} in
        start|stop|status) say "dry run: would $1 the local Slurm in $DIR"; exit 0 ;;
    esac
fi
case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status   (a single-node test Slurm with accounting; see the top of this file)" >&2; exit 2 ;;
esac
