#!/usr/bin/env bash
# Reproduce the shipped zoo: every model trained from scratch with one two-stage recipe, then evaluated.
# Stage 1: 6000 steps of 256 scenes, clutter curriculum. Stage 2: a warm restart from stage 1 at a
# third of the learning rate, 2500 steps, always cluttered. Each model card records both commands.
#
#   bash pretrained/train_zoo.sh            # one model at a time (CPU or GPU, picked automatically)
#   JOBS=11 bash pretrained/train_zoo.sh    # all at once (how the shipped weights were made, one GPU)
#
# Runs are resumable: re-running continues each model from runs/NAME/last.pt.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs
PY=${PYTHON:-python}
JOBS=${JOBS:-1}
MODELS=(plain_resnet se_resnet eca_resnet cbam_resnet scse_resnet gc_resnet sk_resnet
        nonlocal_resnet ccnet_resnet danet_resnet)
STAGE1=(--steps 6000 --batch 256 --lr 3e-3 --warmup 200 --curriculum 0.3 --seed 0 --ckpt-every 250 --out runs/stage1)
STAGE2=(--steps 2500 --batch 256 --lr 1e-3 --warmup 100 --curriculum 0 --seed 1 --ckpt-every 250 --out pretrained)
if (( JOBS > 1 )); then export OMP_NUM_THREADS=1; fi
run_model() {
  "$PY" -m attnviz train --model "$1" "${STAGE1[@]}"
  "$PY" -m attnviz train --model "$1" --init "runs/stage1/$1.safetensors" "${STAGE2[@]}" --workdir "runs/$1-ft"
}
# stn_resnet: with the shared recipe its localiser never moved (IoU 0.08 with the box: one fixed
# window for every image). It starts from plain_resnet's weights instead, then the localiser alone
# learns the box loss, then two joint stages with the box loss weighted 10× (see its model card).
run_stn() {
  "$PY" -m attnviz train --model stn_resnet --init pretrained/plain_resnet.safetensors --steps 2500 --batch 256 --lr 1e-3 --warmup 100 \
    --curriculum 0 --seed 2 --stn-lr-mult 1.0 --stn-box-weight 1.0 --ckpt-every 250 --workdir runs/stn_resnet-init --out runs/stn1
  "$PY" -m attnviz train --model stn_resnet --init runs/stn1/stn_resnet.safetensors --stn-only --steps 1500 --batch 128 --lr 1e-3 \
    --stn-lr-mult 1.0 --warmup 50 --curriculum 0 --seed 3 --workdir runs/stn-loc --out runs/stn-loc
  "$PY" -m attnviz train --model stn_resnet --init runs/stn-loc/stn_resnet.safetensors --steps 600 --batch 64 --lr 3e-4 \
    --stn-lr-mult 1.0 --stn-box-weight 10 --warmup 20 --curriculum 0 --seed 4 --workdir runs/stn-joint --out runs/stn-joint
  "$PY" -m attnviz train --model stn_resnet --init runs/stn-joint/stn_resnet.safetensors --steps 1200 --batch 64 --lr 5e-4 \
    --stn-lr-mult 1.0 --stn-box-weight 10 --warmup 20 --curriculum 0 --seed 5 --workdir runs/stn-joint2 --out pretrained
}
for m in "${MODELS[@]}"; do
  run_model "$m" > "runs/$m.train.log" 2>&1 &
  while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n; done
done
wait
run_stn > runs/stn_resnet.train.log 2>&1
MODELS+=(stn_resnet)
for m in "${MODELS[@]}"; do
  "$PY" -m attnviz evaluate --model "$m" --n 2000 --write-card > "runs/$m.eval.json"
done
