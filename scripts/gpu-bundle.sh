#!/usr/bin/env bash
# Builds gpu-bundle/ (git-ignored): the release `flyt` binary and run.sh, which points LD_LIBRARY_PATH at the
# torch 2.11.0 lib dir of the machine it runs on. Small enough to carry to a GPU machine (< 64 MiB).
#   ./x gpu-bundle, then on the GPU machine: gpu-bundle/run.sh doctor
set -euo pipefail
cd "$(dirname "$0")/.."
# without language detection: lingua's model data would put the binary over the carry limit
cargo build --release -p flyt-cli --bin flyt --no-default-features
bench=$(cargo bench --bench flyt_step --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
curate=$(cargo bench -p flyt-pipelines --no-default-features --bench curate --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
rm -rf gpu-bundle
mkdir -p gpu-bundle
cp target/release/flyt gpu-bundle/flyt
cp "$bench" gpu-bundle/flyt_step
cp "$curate" gpu-bundle/curate_bench
strip gpu-bundle/flyt gpu-bundle/flyt_step gpu-bundle/curate_bench 2>/dev/null || true
cat > gpu-bundle/run.sh <<'RUN'
#!/usr/bin/env bash
# Runs the bundled flyt against this machine's torch (its python3's torch package, 2.11.0 expected).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python3}
lib=$("$PY" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
ver=$("$PY" -c 'import torch; print(torch.__version__)')
case "$ver" in 2.11.0*) ;; *) echo "run.sh: warning: torch $ver here, flyt was built against 2.11.0" >&2 ;; esac
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$here/${FLYT_BIN:-flyt}" "$@"
RUN
chmod +x gpu-bundle/run.sh
mkdir -p gpu-bundle/py
cp scripts/py/*.py gpu-bundle/py/
cp .venv/clip/bpe_simple_vocab_16e6.txt.gz gpu-bundle/py/
size=$(du -sm gpu-bundle | cut -f1)
echo "gpu-bundle/: ${size} MiB (flyt, flyt_step and curate benches, run.sh, py/ check scripts). On a GPU machine: bash scripts/gpu-check.sh"
[ "$size" -lt 64 ] || { echo "gpu-bundle is over 64 MiB" >&2; exit 1; }
