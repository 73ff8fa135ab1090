#!/usr/bin/env bash
# Bring up one phase of the local lab: `up.sh network|munge|accounting|slurm|login|wait`.
# Each phase is idempotent: what already runs or exists is left as it is.
#
# Environment (set by hpcserve.lab.cluster): LAB_STATE, LAB_NODES, LAB_PREFIX (e.g. 10.77.0),
# LAB_BRIDGE, LAB_NS_PREFIX, LAB_VETH_PREFIX, LAB_IFNAME, LAB_SSH_HOST, LAB_SSH_PORT.
# The config files (slurm.conf, cgroup.conf, gres.conf, sshd_config) were written by Python.
set -euo pipefail

: "${LAB_STATE:?}" "${LAB_NODES:?}" "${LAB_PREFIX:?}" "${LAB_BRIDGE:?}" "${LAB_NS_PREFIX:?}"
: "${LAB_VETH_PREFIX:?}" "${LAB_IFNAME:?}" "${LAB_SSH_HOST:?}" "${LAB_SSH_PORT:?}"
CONF="$LAB_STATE/etc/slurm.conf"
RUN="$LAB_STATE/run"
LOG="$LAB_STATE/log"

# alive PIDFILE: its process runs (a zombie waiting for init to reap it does not count).
alive() {
    local p
    p=$(cat "$1" 2>/dev/null) || return 1
    kill -0 "$p" 2>/dev/null || return 1
    [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ]
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local t=$1 what=$2
    shift 2
    for _ in $(seq $((t * 5))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "error: $what did not come up in ${t}s" >&2
    return 1
}

phase_network() {
    ip link show "$LAB_BRIDGE" >/dev/null 2>&1 || ip link add "$LAB_BRIDGE" type bridge
    ip addr replace "$LAB_PREFIX.1/24" dev "$LAB_BRIDGE"
    ip link set "$LAB_BRIDGE" up
    for k in $(seq 1 "$LAB_NODES"); do
        local ns="$LAB_NS_PREFIX$k" host_if="$LAB_VETH_PREFIX$k" addr="$LAB_PREFIX.$((10 + k))"
        ip netns list | grep -qw "^$ns" || ip netns add "$ns"
        if ! ip netns exec "$ns" ip link show "$LAB_IFNAME" >/dev/null 2>&1; then
            ip link del "$host_if" >/dev/null 2>&1 || true
            ip link add "$host_if" type veth peer name "${host_if}p"
            ip link set "${host_if}p" netns "$ns"
            ip netns exec "$ns" ip link set "${host_if}p" name "$LAB_IFNAME"
        fi
        ip link set "$host_if" master "$LAB_BRIDGE"
        ip link set "$host_if" up
        ip netns exec "$ns" ip link set lo up
        ip netns exec "$ns" ip addr replace "$addr/24" dev "$LAB_IFNAME"
        ip netns exec "$ns" ip link set "$LAB_IFNAME" up
        ip netns exec "$ns" ip route replace default via "$LAB_PREFIX.1"
        echo "    $ns: $LAB_IFNAME $addr"
    done
}

phase_munge() {
    local m="$LAB_STATE/munge"
    mkdir -p "$m" "$LOG"
    chmod 700 "$m"
    if [ ! -s "$m/munge.key" ]; then
        head -c 1024 /dev/urandom >"$m/munge.key"
        chmod 400 "$m/munge.key"
    fi
    if ! alive "$m/munged.pid"; then
        munged --force --socket="$m/munge.socket" --key-file="$m/munge.key" \
            --pid-file="$m/munged.pid" --log-file="$LOG/munged.log" --seed-file="$m/munge.seed"
    fi
    wait_for 10 munged munge -S "$m/munge.socket" -n
    echo "    munged: socket $m/munge.socket"
}

# Accounting: a private MariaDB (datadir in the state dir, loopback port LAB_DB_PORT), slurmdbd
# on the bridge, and the cluster, account and user that AccountingStorageEnforce asks for.
DB="$LAB_STATE/mysql"
db_sql() { mariadb --no-defaults -S "$RUN/mysqld.sock" -u root "$@"; }
# sacctmgr asks "Are you sure?" on a terminal for some queries: never let it read one.
sacctmgr() { command sacctmgr "$@" </dev/null; }
phase_accounting() {
    if [ "$LAB_ACCOUNTING" != 1 ]; then
        echo "    accounting off (HPCSERVE_LAB_ACCOUNTING=0): no slurmdbd, sacct answers nothing"
        return 0
    fi
    mkdir -p "$RUN" "$LOG"
    if [ ! -d "$DB/mysql" ]; then
        mariadb-install-db --no-defaults --datadir="$DB" --user=root --skip-test-db \
            --auth-root-authentication-method=normal >"$LOG/mariadb-install.log" 2>&1
    fi
    if ! alive "$RUN/mysqld.pid"; then
        mariadbd --no-defaults --user=root --datadir="$DB" --socket="$RUN/mysqld.sock" \
            --pid-file="$RUN/mysqld.pid" --bind-address=127.0.0.1 --port="$LAB_DB_PORT" \
            --log-error="$LOG/mariadb.log" --innodb-buffer-pool-size=64M \
            --innodb-log-file-size=64M --innodb-lock-wait-timeout=900 --skip-name-resolve >/dev/null 2>&1 &
    fi
    wait_for 30 mariadb db_sql -e 'select 1'
    echo "    mariadb: 127.0.0.1:$LAB_DB_PORT, datadir $DB"
    if ! alive "$RUN/slurmdbd.pid"; then
        slurmdbd
    fi
    wait_for 20 slurmdbd sacctmgr -n -P list cluster
    echo "    slurmdbd: pid $(cat "$RUN/slurmdbd.pid")"
    if [ -z "$(sacctmgr -n -P list cluster "$LAB_CLUSTER" format=cluster)" ]; then
        sacctmgr -i -Q add cluster "$LAB_CLUSTER" >/dev/null
    fi
    if [ -z "$(sacctmgr -n -P list account "$LAB_ACCOUNT" format=account)" ]; then
        sacctmgr -i -Q add account "$LAB_ACCOUNT" cluster="$LAB_CLUSTER" \
            description="hpcserve lab" organization=hpcserve >/dev/null
    fi
    if [ -z "$(sacctmgr -n -P list assoc user=root account="$LAB_ACCOUNT" format=user </dev/null)" ]
    then
        sacctmgr -i -Q add user root account="$LAB_ACCOUNT" defaultaccount="$LAB_ACCOUNT" \
            cluster="$LAB_CLUSTER" >/dev/null
    fi
    echo "    accounts: cluster $LAB_CLUSTER, account $LAB_ACCOUNT (user root)"
}

# The GRES devices: character devices (major 195, NVIDIA's) with no driver behind them;
# slurmd only needs them to exist to count the GPUs and hand out CUDA_VISIBLE_DEVICES.
make_gpu_devices() {
    mkdir -p "$LAB_STATE/dev"
    for i in $(seq 0 $((LAB_GPUS - 1))); do
        [ -c "$LAB_STATE/dev/gpu$i" ] || mknod -m 666 "$LAB_STATE/dev/gpu$i" c 195 "$i"
    done
}

# start_slurmd NODE NAMESPACE: slurmd in the node's network namespace and in its own UTS and
# mount namespaces, with its own hostname, /tmp, /dev/shm and /etc/hosts (the job dir stays
# shared, as a parallel filesystem is).
start_slurmd() {
    local node=$1 ns=$2 tmp="$LAB_STATE/node/$1/tmp"
    mkdir -p "$tmp" "$LAB_STATE/slurmd/$node"
    chmod 1777 "$tmp"
    # shellcheck disable=SC2016
    ip netns exec "$ns" unshare --uts --mount --propagation private -- bash -c '
        set -e
        hostname "$1"
        mount --bind "$2" /tmp
        mount --bind "$3" /etc/hosts
        mount -t tmpfs -o mode=1777 shm /dev/shm
        # `ip netns exec` mounted a fresh /sys (the namespace'"'"'s own /sys/class/net), which has
        # no cgroup hierarchies; mount the host'"'"'s v1 controllers again for task/cgroup.
        mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
        for c in cpuset cpu cpuacct memory devices freezer pids; do
            mkdir -p "/sys/fs/cgroup/$c"
            mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c"
        done
        exec slurmd -f "$4" -N "$1"' _ "$node" "$tmp" "$LAB_STATE/etc/hosts" "$CONF"
}

phase_slurm() {
    mkdir -p "$RUN" "$LOG" "$LAB_STATE/slurmctld" "$LAB_STATE/jobs"
    make_gpu_devices
    if ! alive "$RUN/slurmctld.pid"; then
        slurmctld -f "$CONF"
    fi
    wait_for 20 slurmctld scontrol -Q ping
    echo "    slurmctld: pid $(cat "$RUN/slurmctld.pid")"
    for k in $(seq 1 "$LAB_NODES"); do
        local ns="$LAB_NS_PREFIX$k" node="node$k"
        if ! alive "$RUN/slurmd-$node.pid"; then
            start_slurmd "$node" "$ns"
        fi
        wait_for 10 "slurmd $node" test -s "$RUN/slurmd-$node.pid"
        echo "    slurmd $node in $ns (hostname $node): pid $(cat "$RUN/slurmd-$node.pid")"
    done
}

phase_login() {
    local d="$LAB_STATE/login"
    mkdir -p "$d"
    chmod 700 "$d"
    [ -f "$d/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C hpcserve-lab-host \
        -f "$d/ssh_host_ed25519_key"
    [ -f "$d/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C hpcserve-lab-user -f "$d/id_ed25519"
    install -m 600 "$d/id_ed25519.pub" "$d/authorized_keys"
    # The pinned host key: clients use this file with StrictHostKeyChecking=yes.
    local hostpart="$LAB_SSH_HOST"
    [ "$LAB_SSH_PORT" = 22 ] || hostpart="[$LAB_SSH_HOST]:$LAB_SSH_PORT"
    printf '%s %s\n' "$hostpart" "$(cut -d' ' -f1,2 "$d/ssh_host_ed25519_key.pub")" \
        >"$d/known_hosts"
    mkdir -p /run/sshd # privilege separation directory sshd insists on (Debian creates it at boot)
    if ! alive "$RUN/sshd.pid"; then
        /usr/sbin/sshd -t -f "$LAB_STATE/etc/sshd_config"
        /usr/sbin/sshd -f "$LAB_STATE/etc/sshd_config" -E "$LOG/sshd.log"
    fi
    wait_for 10 sshd bash -c "exec 3<>/dev/tcp/$LAB_SSH_HOST/$LAB_SSH_PORT"
    echo "    sshd: $LAB_SSH_HOST:$LAB_SSH_PORT (key only), known_hosts $d/known_hosts"
}

all_idle() {
    local n
    n=$(sinfo -h -N -t idle -o '%N' | sort -u | wc -l)
    [ "$n" -ge "$LAB_NODES" ]
}

phase_wait() {
    for k in $(seq 1 "$LAB_NODES"); do
        scontrol update nodename="node$k" state=resume >/dev/null 2>&1 || true
    done
    wait_for 60 "$LAB_NODES idle nodes" all_idle
    sinfo -h -N -o '    %N %T %c cpus'
}

export SLURM_CONF="$CONF"
case "${1:-}" in
network | munge | accounting | slurm | login | wait) "phase_$1" ;;
*)
    echo "usage: up.sh network|munge|accounting|slurm|login|wait" >&2
    exit 2
    ;;
esac
