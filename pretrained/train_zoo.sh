#!/usr/bin/env bash
# Reproduce the shipped zoo on scenes v2 (both tasks), then evaluate every model per background family.
#
#   bash pretrained/train_zoo.sh            # two jobs at a time, one CPU thread each (how the shipped weights were made)
#   JOBS=1 THREADS=2 bash pretrained/train_zoo.sh
#
# Stage 1 trains one shared backbone per task from scratch (easy→full-scene curriculum): plain_resnet
# (classification) and fcn_seg (segmentation), into runs/. Stage 2 fine-tunes every shipped model from
# it on full scenes with one recipe per task — the baselines plain_resnet and fcn_seg too, so that every model
# of a task has seen the same data and differences against the baseline compare like with like. Attention starts
# at or near the identity and is never supervised. The STN first trains its localiser alone with the box loss, then
# jointly. Zoo v3 (issue 23): nonlocal_resnet and stn_resnet start from plain_resnet's fine-tune (the block at 10× the
# learning rate; the STN with the map localiser). vit_tiny (a small ViT with a convolutional stem) trains from scratch in one run: a transformer has no
# backbone to share with the ResNets. The held-out background families (checks,
# speckle, cells) and the held-out photos are never seen. Runs are resumable (runs/NAME*/last.pt).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p runs
PY=${PYTHON:-python}
JOBS=${JOBS:-2}
THREADS=${THREADS:-1}
T=(--threads "$THREADS")
CLS=(plain_resnet se_resnet eca_resnet cbam_resnet scse_resnet gc_resnet sk_resnet ccnet_resnet danet_resnet)
SEG=(nonlocal_seg ccnet_seg danet_seg gc_seg ocr_seg fcn_seg)

backbones() {
  "$PY" -m attnviz train --model plain_resnet --steps 7000 --batch 128 --lr 2e-3 --warmup 100 --curriculum 0.3 --seed 0 "${T[@]}" \
    --ckpt-every 250 --out runs/stage1 > runs/plain_resnet.train.log 2>&1 &
  "$PY" -m attnviz train --model fcn_seg --steps 8000 --batch 16 --lr 2e-3 --warmup 200 --curriculum 0.2 --seed 0 "${T[@]}" \
    --ckpt-every 250 --out runs/seg1 > runs/fcn_seg.train.log 2>&1 &
  wait
}
cls_variant() {
  "$PY" -m attnviz train --model "$1" --init runs/stage1/plain_resnet.safetensors --steps 2000 --batch 128 --lr 1e-3 --warmup 50 \
    --curriculum 0 --seed 1 "${T[@]}" --ckpt-every 250 --workdir "runs/$1-ft" --out pretrained
}
nonlocal() {  # v3: from the fine-tuned baseline, the fresh block at 10× the learning rate (at 1× its zero-γ start never left
  # the identity: a flat, query-independent softmax; BENCHMARKS.md, "Zoo v3 experiments")
  "$PY" -m attnviz train --model nonlocal_resnet --init pretrained/plain_resnet.safetensors --steps 2000 --batch 128 --lr 1e-3 --warmup 50 \
    --curriculum 0 --seed 1 "${T[@]}" --ckpt-every 250 --new-lr-mult 10 --workdir runs/nonlocal_resnet-v3 --out pretrained
}
stn() {  # v3: the map localiser (soft-argmax centre, bounded anisotropic zoom), alone first, from the fine-tuned baseline
  "$PY" -m attnviz train --model stn_resnet --init pretrained/plain_resnet.safetensors --stn-only --steps 3000 --batch 128 --lr 1e-3 \
    --stn-lr-mult 1.0 --warmup 50 --curriculum 0 --seed 3 "${T[@]}" --ckpt-every 250 --workdir runs/stn-loc --out runs/stn-loc
  "$PY" -m attnviz train --model stn_resnet --init runs/stn-loc/stn_resnet.safetensors --steps 1500 --batch 128 --lr 5e-4 \
    --stn-lr-mult 1.0 --stn-box-weight 10 --warmup 50 --curriculum 0 --seed 4 "${T[@]}" --ckpt-every 250 --workdir runs/stn-joint --out pretrained
}
seg_variant() {
  "$PY" -m attnviz train --model "$1" --init runs/seg1/fcn_seg.safetensors --steps 5000 --batch 16 --lr 1e-3 --warmup 100 \
    --curriculum 0 --seed 1 "${T[@]}" --ckpt-every 250 --workdir "runs/$1-ft" --out pretrained
}
vit() {
  "$PY" -m attnviz train --model vit_tiny --steps 4000 --batch 128 --lr 1e-3 --warmup 200 --curriculum 0.3 --weight-decay 0.05 \
    --seed 0 "${T[@]}" --ckpt-every 250 --workdir runs/vit_tiny --out pretrained
}
queue() {  # run "$@" with at most JOBS at a time
  "$@" > "runs/$2.train.log" 2>&1 &
  while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n; done
}

main() {
  [[ "${SKIP_BACKBONES:-0}" == 1 ]] || backbones  # set when the two backbones already exist
  for m in "${SEG[@]}"; do queue seg_variant "$m"; done
  for m in "${CLS[@]}"; do queue cls_variant "$m"; done
  wait  # nonlocal_resnet and stn_resnet start from plain_resnet's fine-tune
  queue nonlocal nonlocal_resnet
  queue stn stn_resnet
  queue vit vit_tiny
  wait
  for m in "${CLS[@]}" nonlocal_resnet stn_resnet; do
    "$PY" -m attnviz evaluate --model "$m" --per-family 200 --write-card > "runs/$m.eval.json"
  done
  "$PY" -m attnviz evaluate --model vit_tiny --per-family 200 --random-weights --write-card > runs/vit_tiny.eval.json
  for m in fcn_seg "${SEG[@]}"; do
    "$PY" -m attnviz evaluate --model "$m" --per-family 60 --baseline fcn_seg --write-card > "runs/$m.eval.json"
  done
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main; fi  # sourcing only defines the steps
