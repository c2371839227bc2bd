#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for trying the recipe and for `make test-slurm`.
#
#   deploy/slurm/local-cluster.sh install   # apt-get install munge slurmctld slurmd slurm-client (root)
#   deploy/slurm/local-cluster.sh start     # munged + slurmctld + slurmd; waits until the node is idle
#   deploy/slurm/local-cluster.sh env       # prints `export SLURM_CONF=...` for sbatch/squeue/scancel
#   deploy/slurm/local-cluster.sh status    # sinfo, or exit 1 when not running
#   deploy/slurm/local-cluster.sh stop      # stops what `start` started (by its recorded pids)
#
# Everything lives in $CODEXDASK_SLURM_DIR (default /tmp/codexdask-slurm): slurm.conf, the munge key
# and socket, state, spool, logs and pid files. Nothing in /etc is changed. The daemons run as
# root (munged as `munge` when that user exists), so `start` needs root. The node is described by
# `slurmd -C` (its real cores and memory, less 1 GiB for the system); partitions: `debug` (default)
# and `gpu` (the same node, with `gres/gpu` only where nvidia-smi lists GPUs).
set -euo pipefail

DIR="${CODEXDASK_SLURM_DIR:-/tmp/codexdask-slurm}"
CONF="$DIR/slurm.conf"
SOCKET="$DIR/munge/munge.socket"
PACKAGES=(munge slurmctld slurmd slurm-client)
TOOLS=(munged mungekey slurmctld slurmd sinfo sbatch)   # what PACKAGES give that this script runs

die() { echo "local-cluster.sh: error: $*" >&2; exit 2; }

require_tools() {
  local missing=()
  for tool in "${TOOLS[@]}"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  [ ${#missing[@]} -eq 0 ] || die "not installed: ${missing[*]}; run '$0 install' as root (Debian/Ubuntu: apt-get install ${PACKAGES[*]})"
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

installed() {
  for tool in "${TOOLS[@]}"; do command -v "$tool" >/dev/null || return 1; done
}

cmd_install() {
  if installed; then echo "already installed: ${PACKAGES[*]}"; return 0; fi
  [ "$(id -u)" -eq 0 ] || die "installing needs root: sudo apt-get install ${PACKAGES[*]}"
  command -v apt-get >/dev/null || die "no apt-get here; install SLURM (slurmctld, slurmd, client tools) and munge with your system's package manager"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null
  echo "installed: ${PACKAGES[*]}"
}

write_conf() {
  local host node gpus gres_line=""
  host="$(hostname -s)"
  # slurmd -C: "NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105"; keep 1 GiB for the system.
  node="$(slurmd -C | head -1)"
  local mem="${node##*RealMemory=}"; mem="${mem%% *}"
  node="${node% RealMemory=*} RealMemory=$(( mem > 2048 ? mem - 1024 : mem ))"
  gpus="$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU ' || true)"
  if [ "${gpus:-0}" -gt 0 ]; then
    gres_line="GresTypes=gpu"
    node="$node Gres=gpu:$gpus"
    echo "Name=gpu File=/dev/nvidia[0-$(( gpus - 1 ))]" > "$DIR/gres.conf"
  fi
  cat > "$CONF" <<EOF
# Written by deploy/slurm/local-cluster.sh: one node, no accounting, no cgroups; daemons reached
# on 127.0.0.1, so the host name need not resolve.
ClusterName=codexdask-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$SOCKET
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=${CODEXDASK_SLURMCTLD_PORT:-6817}
SlurmdPort=${CODEXDASK_SLURMD_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
$gres_line
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
PartitionName=gpu Nodes=ALL MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
}

start_munge() {
  mkdir -p "$DIR/munge"
  local user=root
  id munge >/dev/null 2>&1 && user=munge
  [ -f "$DIR/munge/munge.key" ] || mungekey --create --keyfile="$DIR/munge/munge.key"
  chown -R "$user" "$DIR/munge"
  chmod 755 "$DIR/munge"; chmod 600 "$DIR/munge/munge.key"   # clients reach the socket through it
  local args=(--key-file="$DIR/munge/munge.key" --socket="$SOCKET" --pid-file="$DIR/munge/munged.pid"
              --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed")
  if [ "$user" = munge ]; then runuser -u munge -- munged "${args[@]}"; else munged --force "${args[@]}"; fi
  cp "$DIR/munge/munged.pid" "$DIR/munged.pid"
}

cmd_start() {
  [ "$(id -u)" -eq 0 ] || die "starting SLURM daemons needs root (they run jobs as their users)"
  require_tools
  if alive "$DIR/slurmctld.pid"; then echo "already running (SLURM_CONF=$CONF)"; return 0; fi
  mkdir -p "$DIR"/{state,spool,log}
  write_conf
  start_munge
  slurmctld -f "$CONF"
  slurmd -f "$CONF"
  export SLURM_CONF="$CONF"
  local state=""
  for _ in $(seq 1 60); do
    state="$(sinfo -h -N -o '%t' 2>/dev/null | head -1 || true)"
    [ "$state" = idle ] && break
    sleep 1
  done
  if [ "$state" != idle ]; then
    echo "node not idle after 60 s (state: '${state:-none}'); logs in $DIR/log" >&2
    tail -5 "$DIR"/log/*.log >&2 || true
    cmd_stop >/dev/null
    exit 1
  fi
  echo "SLURM up: $(sinfo -h -o '%P %D %c cpus %m MB' | tr '\n' ';') SLURM_CONF=$CONF"
}

cmd_stop() {
  export SLURM_CONF="$CONF"
  if alive "$DIR/slurmctld.pid"; then scancel --user="$(id -un)" 2>/dev/null || true; fi
  for daemon in slurmd slurmctld munged; do
    if alive "$DIR/$daemon.pid"; then
      local pid; pid="$(cat "$DIR/$daemon.pid")"
      kill "$pid"
      for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$DIR/$daemon.pid"
  done
  rm -rf "$DIR/state" "$DIR/spool"
  echo "SLURM stopped"
}

cmd_status() {
  alive "$DIR/slurmctld.pid" || { echo "not running"; exit 1; }
  SLURM_CONF="$CONF" sinfo
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 install|start|stop|status|env" >&2; exit 2 ;;
esac
