#!/usr/bin/env bash
# sbatch script: `python -m r1jax.train` on every node of a GPU allocation, one process per node
# (default) or one per GPU, started by srun. JAX joins the processes (r1jax/parallel/distributed.py): the
# coordinator is the allocation's first node, the process count and ids come from SLURM_NTASKS /
# SLURM_PROCID. Not run on a real SLURM cluster while it was written; see BUILD.md "Multi-host".
#
#SBATCH --job-name=r1jax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --output=r1jax-%j.out
set -euo pipefail

usage() {
  cat <<'EOF'
usage: sbatch [SBATCH_OPTIONS] tools/launch_slurm.sh [--per-gpu] [--port P] [-- TRAIN_FLAGS...]

  --per-gpu   one process per GPU (srun --ntasks-per-node=GPUS; JAX gives each process the GPU
              of its SLURM_LOCALID). Default: one process per node driving all of its GPUs.
  --port P    the coordinator's TCP port on the first node (default: 12000 + job id % 20000)
  -h, --help  this text

TRAIN_FLAGS go to `python -m r1jax.train` unchanged (default: --config=configs/code.py).
Run from the repository root on a filesystem every node sees; output_dir and data.cache_dir must be
there too. Environment: R1JAX_PYTHON (default: python3) is the interpreter of an environment made
once with `pip install -e ".[cuda]"`; GPUS_PER_NODE (default: SLURM_GPUS_ON_NODE, else 8).

examples:
  sbatch --nodes=4 tools/launch_slurm.sh -- --config=configs/code.py --config.mesh.expert=8
  sbatch --nodes=2 tools/launch_slurm.sh --per-gpu -- --config=configs/code.py
EOF
}

PER_GPU=0 PORT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --per-gpu) PER_GPU=1; shift ;;
    --port) PORT=${2:?--port needs a value}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "launch_slurm.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
TRAIN_FLAGS=("$@")
[[ ${#TRAIN_FLAGS[@]} -gt 0 ]] || TRAIN_FLAGS=(--config=configs/code.py)
if [[ -z "${SLURM_JOB_ID:-}" ]]; then
  echo "launch_slurm.sh: not inside a SLURM allocation; submit it with sbatch (see --help)" >&2
  exit 2
fi

PYTHON=${R1JAX_PYTHON:-python3}
GPUS=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
NODES=${SLURM_JOB_NUM_NODES:-1}
PORT=${PORT:-$((12000 + SLURM_JOB_ID % 20000))}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
if [[ $PER_GPU -eq 1 ]]; then
  TASKS_PER_NODE=$GPUS
else
  TASKS_PER_NODE=1
  # JAX's SLURM detection would give each process only the GPU of its SLURM_LOCALID (0): name them all.
  JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((GPUS - 1)))
  export JAX_LOCAL_DEVICE_IDS
fi
export PYTHONUNBUFFERED=1
echo "r1jax: $NODES node(s) x $TASKS_PER_NODE process(es), $GPUS GPU(s) per node, coordinator $HEAD:$PORT" >&2

# Every task runs the same command; SLURM_PROCID / SLURM_NTASKS give its id and the count.
srun --nodes="$NODES" --ntasks-per-node="$TASKS_PER_NODE" --ntasks=$((NODES * TASKS_PER_NODE)) \
  --kill-on-bad-exit=1 \
  "$PYTHON" -m r1jax.train "${TRAIN_FLAGS[@]}" "--config.dist.coordinator=$HEAD:$PORT"
