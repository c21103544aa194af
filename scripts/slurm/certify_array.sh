#!/usr/bin/env bash
# Certify a test set on SLURM: an array job (one shard per task), then a merge job.
#
#   bash scripts/slurm/certify_array.sh models/net.mat 0.1 [N] [SHARDS]
#
# submits the array with sbatch and a merge job that waits for it (afterok). Each task writes
# its own results store runs/<name>/shard.<i>.sqlite; a pre-empted or failed task can be
# resubmitted as it is: it skips the examples already in its store.
#SBATCH --job-name=relu-verify
#SBATCH --cpus-per-task=1
#SBATCH --mem=4G
#SBATCH --time=04:00:00
set -euo pipefail

MODEL=${1:?usage: certify_array.sh MODEL EPS [N] [SHARDS]}
EPS=${2:?usage: certify_array.sh MODEL EPS [N] [SHARDS]}
N=${3:-1000}
SHARDS=${4:-8}
OUT=runs/$(basename "${MODEL%.*}")_eps${EPS}
export OMP_NUM_THREADS=1

if [ -n "${RELU_VERIFY_MERGE:-}" ]; then                      # the merge job
    verify merge "$OUT"/shard.*.sqlite --out "$OUT/all.sqlite"
    verify summary "$OUT/all.sqlite" --csv "$OUT/all.csv" --json "$OUT/all.json" --plot "$OUT/all.png"
elif [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then                   # one array task: one shard
    verify certify --model "$MODEL" --p inf --eps "$EPS" --dataset mnist -n "$N" --timeout 120 --quiet \
        --shard "$SLURM_ARRAY_TASK_ID/$SHARDS" --output "$OUT/shard.$SLURM_ARRAY_TASK_ID.sqlite"
else                                                           # on the login node: submit both
    mkdir -p "$OUT"
    array=$(sbatch --parsable --array=1-"$SHARDS" --output="$OUT/slurm-%A_%a.out" "$0" "$@")
    sbatch --dependency=afterok:"$array" --export=ALL,RELU_VERIFY_MERGE=1 --output="$OUT/merge-%j.out" "$0" "$@"
    echo "submitted array $array ($SHARDS shards) and its merge; results in $OUT/all.sqlite"
fi
