#!/usr/bin/env bash
# Runs `python -m r1jax.train` on every worker of a Cloud TPU VM slice: the same command on all hosts
# (gcloud compute tpus tpu-vm ssh --worker=all); JAX joins them (r1jax/parallel/distributed.py asks the VM's
# metadata for the coordinator and each worker's id). Setup included: the code is cloned (--repo) or
# copied from this checkout (git archive of HEAD), then `pip install -e ".[tpu]"` on every worker.
# Not run on real TPU hardware while it was written; see BUILD.md "Multi-host".
set -euo pipefail

usage() {
  cat <<'EOF'
usage: tools/launch_tpu_pod.sh --tpu NAME --zone ZONE [options] [-- TRAIN_FLAGS...]

  --tpu NAME        the TPU VM (slice) name, as in `gcloud compute tpus tpu-vm list`
  --zone ZONE       its zone, e.g. us-east5-a
  --project ID      gcloud project (default: gcloud's configured one)
  --workers N       hosts in the slice (default: counted from `gcloud ... describe`)
  --repo URL        git clone URL on the workers (default: copy this checkout's HEAD to them)
  --ref REF         branch or tag to clone with --repo (default: the remote's default)
  --dir DIR         code directory on the workers (default: r1jax, under the home directory)
  --no-setup        skip the copy/clone and pip install (already set up)
  --setup-only      set up, do not train
  --detach          start training in the background on every worker (log: DIR/train-HOST.log)
                    and return; without it the ssh session streams all workers' output
  --dry-run         print the gcloud commands instead of running them
  -h, --help        this text

TRAIN_FLAGS go to `python -m r1jax.train` unchanged (default: --config=configs/code.py). The launcher
adds --config.dist.num_processes=N. output_dir and data.cache_dir must be a directory every worker
sees (a Filestore/NFS mount or a gcsfuse-mounted bucket); a per-worker local disk would give each
worker its own checkpoints.

example:
  tools/launch_tpu_pod.sh --tpu r1-v5p-64 --zone us-east5-a -- --config=configs/r1_671b.py \
      --config.output_dir=/mnt/shared/runs/r1 --config.model.checkpoint=/mnt/shared/ckpt/r1
EOF
}

TPU="" ZONE="" PROJECT="" WORKERS="" REPO="" REF="" DIR="r1jax" SETUP=1 TRAIN=1 DETACH=0 DRY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) TPU=${2:?--tpu needs a value}; shift 2 ;;
    --zone) ZONE=${2:?--zone needs a value}; shift 2 ;;
    --project) PROJECT=${2:?--project needs a value}; shift 2 ;;
    --workers) WORKERS=${2:?--workers needs a value}; shift 2 ;;
    --repo) REPO=${2:?--repo needs a value}; shift 2 ;;
    --ref) REF=${2:?--ref needs a value}; shift 2 ;;
    --dir) DIR=${2:?--dir needs a value}; shift 2 ;;
    --no-setup) SETUP=0; shift ;;
    --setup-only) TRAIN=0; shift ;;
    --detach) DETACH=1; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "launch_tpu_pod.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
TRAIN_FLAGS=("$@")
[[ ${#TRAIN_FLAGS[@]} -gt 0 ]] || TRAIN_FLAGS=(--config=configs/code.py)
if [[ -z "$TPU" || -z "$ZONE" ]]; then
  echo "launch_tpu_pod.sh: --tpu and --zone are required (see --help)" >&2
  exit 2
fi
if [[ -n "$WORKERS" && ! "$WORKERS" =~ ^[1-9][0-9]*$ ]]; then
  echo "launch_tpu_pod.sh: --workers $WORKERS is not a positive integer" >&2
  exit 2
fi

GCLOUD=(gcloud compute tpus tpu-vm)
LOC=(--zone "$ZONE")
[[ -n "$PROJECT" ]] && LOC+=(--project "$PROJECT")

run() {  # a gcloud command, or its text with --dry-run
  if [[ $DRY -eq 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

on_all_workers() {  # the same shell command on every worker of the slice
  run "${GCLOUD[@]}" ssh "$TPU" "${LOC[@]}" --worker=all --command "$1"
}

if [[ -z "$WORKERS" ]]; then
  if [[ $DRY -eq 1 ]]; then
    WORKERS=N
  else
    # One network endpoint per host; gcloud prints a list as values separated by ';'.
    endpoints=$("${GCLOUD[@]}" describe "$TPU" "${LOC[@]}" --format='value(networkEndpoints[].ipAddress)')
    WORKERS=$(tr ';' '\n' <<<"$endpoints" | grep -c .)
  fi
fi
echo "TPU $TPU ($ZONE): $WORKERS worker(s)" >&2

qdir=$(printf '%q' "$DIR")
if [[ $SETUP -eq 1 ]]; then
  if [[ -n "$REPO" ]]; then
    clone="git clone$([[ -n "$REF" ]] && printf ' --branch %q' "$REF") $(printf '%q' "$REPO") $qdir"
    on_all_workers "set -e; if [ -d $qdir/.git ]; then git -C $qdir pull --ff-only; else $clone; fi"
  else
    root=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
    tarball=$(mktemp /tmp/r1jax-XXXXXX.tar.gz)
    trap 'rm -f "$tarball"' EXIT
    git -C "$root" archive --format=tar.gz -o "$tarball" HEAD
    run "${GCLOUD[@]}" scp "$tarball" "$TPU:/tmp/r1jax-src.tar.gz" "${LOC[@]}" --worker=all
    on_all_workers "set -e; mkdir -p $qdir; tar -xzf /tmp/r1jax-src.tar.gz -C $qdir"
  fi
  on_all_workers "set -e; cd $qdir; python3 -m pip install -q --upgrade pip; python3 -m pip install -q -e '.[tpu]'"
fi

if [[ $TRAIN -eq 1 ]]; then
  flags=$(printf '%q ' "${TRAIN_FLAGS[@]}" "--config.dist.num_processes=$WORKERS")
  train="python3 -m r1jax.train $flags"
  if [[ $DETACH -eq 1 ]]; then
    train="nohup setsid $train > train-\$(hostname).log 2>&1 < /dev/null & echo started on \$(hostname)"
  fi
  on_all_workers "cd $qdir && $train"
fi
