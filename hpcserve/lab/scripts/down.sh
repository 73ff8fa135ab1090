#!/usr/bin/env bash
# Tear the local lab down: jobs, every process in the node namespaces (slurmd, slurmstepd, vLLM),
# slurmctld, slurmdbd and its MariaDB, sshd (and its sessions), munged, the namespaces, veths, bridge, the /run/netns mount,
# and the state directory (a copy of slurmctld's job_state goes to the cache first). Idempotent: safe when the lab is half up or already down.
# Processes are found by their pid files and namespaces, never by name.
#
# Environment: LAB_STATE, LAB_BRIDGE, LAB_NS_PREFIX, LAB_VETH_PREFIX; LAB_CACHE (optional).
set -uo pipefail

: "${LAB_STATE:?}" "${LAB_BRIDGE:?}" "${LAB_NS_PREFIX:?}" "${LAB_VETH_PREFIX:?}"
RUN="$LAB_STATE/run"
CONF="$LAB_STATE/etc/slurm.conf"

# descendants PID: PID and all its descendants, children first.
descendants() {
    local c
    for c in $(pgrep -P "$1" 2>/dev/null); do descendants "$c"; done
    echo "$1"
}

# running PID: alive and not a zombie waiting to be reaped.
running() {
    kill -0 "$1" 2>/dev/null || return 1
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [ "$state" != Z ]
}

# stop PIDS...: TERM, wait up to 10 s, then KILL what is left.
stop() {
    local pids=("$@") left=() p
    [ ${#pids[@]} -eq 0 ] && return 0
    kill -TERM "${pids[@]}" 2>/dev/null
    for _ in $(seq 50); do
        left=()
        for p in "${pids[@]}"; do running "$p" && left+=("$p"); done
        [ ${#left[@]} -eq 0 ] && return 0
        sleep 0.2
    done
    kill -KILL "${left[@]}" 2>/dev/null
    sleep 0.2
}

pidfile_tree() { # the process of a pid file and its descendants
    [ -f "$1" ] || return 0
    local p
    p=$(cat "$1" 2>/dev/null) || return 0
    kill -0 "$p" 2>/dev/null && descendants "$p"
}

namespaces() { ip netns list 2>/dev/null | awk '{print $1}' | grep "^$LAB_NS_PREFIX" || true; }

# 1. Jobs: let SLURM cancel them (runs epilogs, ends steps) while the daemons still run.
if [ -f "$CONF" ] && SLURM_CONF="$CONF" scontrol -Q ping >/dev/null 2>&1; then
    jobs=$(SLURM_CONF="$CONF" squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
        echo "    scancel $jobs"
        # shellcheck disable=SC2086
        SLURM_CONF="$CONF" scancel $jobs 2>/dev/null
        for _ in $(seq 25); do
            [ -z "$(SLURM_CONF="$CONF" squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
fi

# 2. Every process inside a node namespace (slurmd, slurmstepd, job steps, vLLM) and the
#    host-side daemons by pid file with their children (sshd sessions): all stopped together.
all=()
for ns in $(namespaces); do
    mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null)
    [ ${#pids[@]} -gt 0 ] && echo "    $ns: ${#pids[@]} process(es)"
    all+=("${pids[@]}")
done
for f in "$RUN/slurmctld.pid" "$RUN/sshd.pid" "$RUN/slurmdbd.pid" "$RUN/mysqld.pid" \
    "$LAB_STATE/munge/munged.pid"; do
    mapfile -t pids < <(pidfile_tree "$f")
    [ ${#pids[@]} -gt 0 ] && echo "    $(basename "$f" .pid): pid(s) ${pids[*]}"
    all+=("${pids[@]}")
done
if [ ${#all[@]} -gt 0 ]; then
    echo "    stopping ${#all[@]} process(es)"
    stop "${all[@]}"
fi

# 4. Network: namespaces (their veth ends go with them), host veths, bridge, /run/netns mount.
for ns in $(namespaces); do
    ip netns del "$ns" && echo "    ip netns del $ns"
done
for l in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 |
    grep "^$LAB_VETH_PREFIX" || true); do
    ip link del "$l" 2>/dev/null && echo "    ip link del $l"
done
if ip link show "$LAB_BRIDGE" >/dev/null 2>&1; then
    ip link del "$LAB_BRIDGE" && echo "    ip link del $LAB_BRIDGE"
fi
# `ip netns add` bind-mounts /run/netns onto itself; undo it when no namespace is left in it.
if mountpoint -q /run/netns 2>/dev/null && [ -z "$(ls -A /run/netns 2>/dev/null)" ]; then
    umount /run/netns && echo "    umount /run/netns"
fi

# 5. The job-id counter: slurmctld wrote job_state when it stopped. A copy goes to the cache,
#    where `lab down` keeps only the next job id from its header (the next `lab up` starts
#    there: FirstJobId) and removes the copy.
if [ -s "$LAB_STATE/slurmctld/job_state" ] && [ -n "${LAB_CACHE:-}" ]; then
    mkdir -p "$LAB_CACHE/slurmctld"
    cp "$LAB_STATE/slurmctld/job_state" "$LAB_CACHE/slurmctld/job_state"
fi

# 6. State: config, logs, pid files, keys, job directories.
if [ -e "$LAB_STATE" ]; then
    rm -rf "$LAB_STATE" && echo "    rm -rf $LAB_STATE"
fi
exit 0
