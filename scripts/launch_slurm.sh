#!/usr/bin/env bash
# Launches aum-jax training on a SLURM cluster: one process per node, every GPU of the node
# visible to it; jax.distributed.initialize() (--distributed) reads the SLURM environment.
#
#   sbatch --nodes=2 --gpus-per-node=8 scripts/launch_slurm.sh configs/audioset.py:base_scratch runs/as_base
#
# Extra arguments after the workdir go to aum_jax.main, e.g. --config.train.num_steps=1000.
#SBATCH --job-name=aum-jax
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --output=%x-%j.out
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: sbatch [sbatch options] $0 CONFIG WORKDIR [aum_jax.main flags...]" >&2
  exit 2
fi
config=$1
workdir=$2
shift 2

mkdir -p "$workdir"
# A requeued or restarted job resumes from the newest checkpoint in the workdir.
srun --kill-on-bad-exit=1 python -m aum_jax.main --distributed --config="$config" --workdir="$workdir" "$@"
