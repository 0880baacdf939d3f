#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, with accounting and two fake GPUs, for the real-SLURM
# test (tests/cluster/test_real_slurm.py; `make test-cluster`).
#
#   tests/cluster/slurm_cluster.sh start STATE_DIR   install the packages if missing, write the
#                                                    configuration under STATE_DIR, start the daemons
#   tests/cluster/slurm_cluster.sh stop STATE_DIR    stop the daemons this script started, by pid
#
# Clients find the cluster through SLURM_CONF=STATE_DIR/etc/slurm.conf (printed by `start`). Job steps
# (the `srun` inside each Snakemake job) get no SLURM_CONF from slurmstepd and read
# /etc/slurm/slurm.conf: `start` links it to this configuration and `stop` removes the link. A machine
# with its own /etc/slurm/slurm.conf (a real cluster node) is refused. Needs root and Debian's
# slurm-wlm, munge, slurmdbd and mariadb-server (installed offline from the package registry when
# missing).
set -euo pipefail

command=${1:?usage: slurm_cluster.sh start|stop STATE_DIR}
STATE=$(realpath -m "${2:?usage: slurm_cluster.sh start|stop STATE_DIR}")
HOST=$(hostname -s)
export SLURM_CONF="$STATE/etc/slurm.conf"
PIDS="$STATE/pids"
DB_PASSWORD=marsdiff-test
# The node declares more than a 2-core laptop has (SlurmdParameters=config_overrides): the profile's
# GPU stages ask for 8 CPUs, and a retry for twice a stage's memory; nothing here really uses them.
NODE_CPUS=8
NODE_MEMORY_MB=140000

log() { echo "[slurm_cluster] $*" >&2; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq "$((seconds * 5))"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    log "timed out after ${seconds}s waiting for $what"
    return 1
}

started() {  # started NAME PID: remember a daemon this script started, to stop exactly it
    echo "$1 $2" >>"$PIDS"
}

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurm-wlm)
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmdbd >/dev/null || missing+=(slurmdbd)
    command -v mariadbd >/dev/null || missing+=(mariadb-server)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get -o DPkg::Lock::Timeout=900 update -qq
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq "${missing[@]}" >/dev/null
    fi
}

write_config() {
    mkdir -p "$STATE"/{etc,spool/ctld,spool/d,log,run,gpu}
    for i in 0 1; do
        [[ -e "$STATE/gpu/nvidia$i" ]] || mknod "$STATE/gpu/nvidia$i" c 1 3  # a /dev/null per fake GPU
    done
    cat >"$STATE/etc/slurm.conf" <<EOF
ClusterName=marsdiff
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
# finished jobs stay visible to the status polls for 5 minutes
MinJobAge=300
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$NODE_CPUS RealMemory=$NODE_MEMORY_MB Gres=gpu:v100:1,gpu:h100:1 State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu-v100 Nodes=$HOST MaxTime=INFINITE State=UP
PartitionName=gpu-h100 Nodes=$HOST MaxTime=INFINITE State=UP
EOF
    cat >"$STATE/etc/gres.conf" <<EOF
AutoDetect=off
NodeName=$HOST Name=gpu Type=v100 File=$STATE/gpu/nvidia0
NodeName=$HOST Name=gpu Type=h100 File=$STATE/gpu/nvidia1
EOF
    cat >"$STATE/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$STATE/etc/slurmdbd.conf"
}

start() {
    install_packages
    if [[ -s "$PIDS" ]]; then
        log "a cluster started from $STATE is still recorded in $PIDS: stop it first"
        exit 1
    fi
    if [[ -e /etc/slurm/slurm.conf && ! -L /etc/slurm/slurm.conf ]]; then
        log "/etc/slurm/slurm.conf exists: this machine has its own SLURM; not starting a test cluster here"
        exit 1
    fi
    write_config
    : >"$PIDS"
    mkdir -p /etc/slurm
    ln -sfn "$STATE/etc/slurm.conf" /etc/slurm/slurm.conf
    trap 'log "start failed: stopping what it started (logs in $STATE/log)"; stop; exit 1' ERR

    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        mkdir -p /run/munge && chown munge:munge /run/munge
        runuser -u munge -- /usr/sbin/munged
        wait_for 10 munged sh -c 'munge -n | unmunge'
        started munged "$(cat /run/munge/munged.pid)"
    fi

    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    fi
    mariadbd --user=mysql --bind-address=127.0.0.1 --socket=/run/mysqld/mysqld.sock \
        --pid-file=/run/mysqld/marsdiff-test.pid >"$STATE/log/mariadbd.log" 2>&1 &
    started mariadbd $!
    wait_for 60 MariaDB mariadb -e "select 1"
    mariadb -e "create database if not exists slurm_acct_db;
        create user if not exists 'slurm'@'localhost' identified by '$DB_PASSWORD';
        create user if not exists 'slurm'@'127.0.0.1' identified by '$DB_PASSWORD';
        grant all on slurm_acct_db.* to 'slurm'@'localhost';
        grant all on slurm_acct_db.* to 'slurm'@'127.0.0.1';"

    slurmdbd -D >"$STATE/log/slurmdbd.out" 2>&1 &
    started slurmdbd $!
    wait_for 60 slurmdbd sacctmgr -n list cluster
    sacctmgr -i add cluster marsdiff >/dev/null 2>&1 || true

    slurmctld -D >"$STATE/log/slurmctld.out" 2>&1 &
    started slurmctld $!
    # jobs inherit slurmd's niceness: the machine stays responsive under a busy test
    nice -n 10 slurmd -D >"$STATE/log/slurmd.out" 2>&1 &
    started slurmd $!
    wait_for 60 "the node to be idle" sh -c 'sinfo -h -o %T | grep -qx idle'

    sacctmgr -i add account marsdiff Description=test Organization=test >/dev/null 2>&1 || true
    sacctmgr -i add user root Account=marsdiff DefaultAccount=marsdiff >/dev/null 2>&1 || true
    srun -p cpu --time=1 true
    srun -p gpu-h100 --gpus=h100:1 --time=1 true
    trap - ERR
    log "up: export SLURM_CONF=$SLURM_CONF"
}

stop() {
    [[ -f "$PIDS" ]] || { log "nothing recorded in $PIDS"; return 0; }
    # reverse order: slurmd, slurmctld, slurmdbd, mariadbd, munged
    tac "$PIDS" | while read -r name pid; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid"
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
            log "stopped $name ($pid)"
        fi
    done
    rm -f "$PIDS"
    if [[ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" == "$STATE/etc/slurm.conf" ]]; then
        rm -f /etc/slurm/slurm.conf
    fi
}

case "$command" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: slurm_cluster.sh start|stop STATE_DIR" >&2; exit 2 ;;
esac
