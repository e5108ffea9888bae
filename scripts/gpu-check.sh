#!/usr/bin/env bash
# The GPU check, run on a GPU machine from the repository root with gpu-bundle/ carried there
# (build it here with ./x gpu-bundle). Prints every figure with the card's name. About 8 minutes on an H100.
#   device run: bash scripts/gpu-check.sh      (carry: gpu-bundle)
set -uo pipefail
B=gpu-bundle
OUT=${OUT:-/tmp/flyt-gpu-check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== doctor"; $B/run.sh doctor
for spec in "b32 1024" "l14 512"; do
  set -- $spec
  echo "== image tower $1, batch $2 (bf16)"
  python3 $B/py/torch_tower.py --arch "$1" --batch "$2" --iters 20
  $B/run.sh embed-bench --arch "$1" --batch "$2" --iters 20 --device cuda --json
done
echo "== end to end: tar -> embeddings, 10k samples of 256-px JPEGs, random ViT-B/32"
python3 $B/py/make_model.py /tmp/flyt-b32 $B/py/bpe_simple_vocab_16e6.txt.gz
$B/run.sh synth --out /tmp/flyt-pool --shards 1 --samples-per-shard 10000 --image jpeg --side 256
nproc
for bs in 512 1024; do
  rm -rf /tmp/flyt-emb
  /usr/bin/time -v $B/run.sh embed --model /tmp/flyt-b32 --out /tmp/flyt-emb --device cuda --batch-size $bs /tmp/flyt-pool 2>&1 \
    | grep -E "embedded|Elapsed|Maximum resident|Percent of CPU"
done

echo "== curate end to end (issue 6): 8 x 1250 JPEGs (256 px) -> decode -> ViT-B/32 (random, bf16) -> score -> SCS,"
echo "   against embedding alone and the image tower alone in the same run"
for w in 1 2; do
  FLYT_CLIP_BPE=$B/py/bpe_simple_vocab_16e6.txt.gz FLYT_BIN=curate_bench timeout 300 $B/run.sh --bench e2e 8 1250 b32 cuda 512 $w
done

echo "== FLYT step vs plain CLIP step (issue 5), embedding mode at the paper's batch sizes"
FLYT_BIN=flyt_step timeout 300 $B/run.sh --bench 4096 3072 1000 512 cuda
echo "== FLYT step vs plain CLIP step, full mode, random ViT-B/32 (f32, double-backward JVP)"
# peak GPU memory: nvidia-smi sampled every 100 ms while each run lasts (tch exposes no allocator statistics)
for spec in "256 192 100 -" "1024 768 1000 -" "1024 768 1000 256" "4096 3072 1000 512"; do
  set -- $spec
  chunk=$4; [ "$chunk" = "-" ] && chunk=""
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$OUT/mem.txt" 2>/dev/null &
  smi=$!
  FLYT_BIN=flyt_step timeout 240 $B/run.sh --bench full "$1" "$2" "$3" b32 cuda $chunk || echo "(batch $1 chunk ${chunk:-none} failed: see above)"
  kill $smi 2>/dev/null; wait $smi 2>/dev/null
  echo "peak GPU memory (batch $1, chunk ${chunk:-none}): $(sort -n "$OUT/mem.txt" | tail -1) MiB"
done
echo "== FLYT step under --amp (fp16 autocast + loss scaling) against f32, full mode, random ViT-B/32"
for spec in "1024 768 1000 256" "4096 3072 1000 512"; do
  set -- $spec
  FLYT_BIN=flyt_step timeout 300 $B/run.sh --bench full "$1" "$2" "$3" b32 cuda "$4" amp || echo "(amp, batch $1 failed: see above)"
done
