#!/usr/bin/env bash
# The GPU checks, in stages, for a device call on a bare GPU machine (no Hydra, no network): the
# CUDA tests and a training smoke (plain vs 1-GPU torchrun), sweep.bench on the reference shapes,
# its variants and the ladder, each with a profile of where the time goes. Sequencing only: the
# logic lives in the project.
#
# Usage: bash scripts/gpu_check.sh STAGE [STAGE ...]   (in the repo root; run scripts/gpu_wheels.sh
# here first so .whl/ holds the packages the image lacks). Stages, with rough H100 times (a fresh
# machine compiles every shape anew, ~30-60 s each; the log prints each step's real time):
#   accept     issue 7's acceptance in the least device time, the goals still open first: versions
#              and the compiled-bf16-vs-fp32 CUDA test, then the bf16 variants that may meet a
#              goal, each shape timed in a process of its own with a profile: the "lean" step (a
#              bf16 residual stream, --residual-dtype bf16, with the fused loss kernel,
#              --loss-kernel fused, if its CUDA test GPU_CHECK_ACCEPT_FUSED_PYTEST_K passes, run
#              just before) at GPU_CHECK_ACCEPT_LEAN_SHAPES (24,1024,16 12,768,12 12,512,8: the
#              1.05x and MFU goals) and GPU_CHECK_ACCEPT_SMALL_LEAN_SHAPES (6,256,4 8,384,6: 1.3x),
#              the latter with CUDA graphs too (--compile-mode reduce-overhead) at
#              GPU_CHECK_ACCEPT_SMALL_LEAN_GRAPH_SHAPES (the same two); coordinate-descent tuning
#              of inductor's own kernels (TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1) on top of the
#              lean step at GPU_CHECK_ACCEPT_TUNED_SHAPES (24,1024,16 12,768,12). Then what meets
#              no goal alone: the lean step compiled by blocks (--compile-scope blocks) at
#              GPU_CHECK_ACCEPT_BLOCKS_SHAPES (24,1024,16); FP8 matmuls on top of the lean step
#              (--precision fp8) at GPU_CHECK_ACCEPT_FP8_SHAPES (the three largest) if FP8's CUDA
#              test passes (GPU_CHECK_ACCEPT_FP8_PYTEST_K); this project's GPT as it trains by
#              default at GPU_CHECK_ACCEPT_SHAPES (the three largest) and, on a card that
#              sweep/nanogpt.py has no nanoGPT numbers for (GPU_CHECK_ACCEPT_BASELINE=auto; 1 or 0
#              to force), nanoGPT's GPT (--arch nanogpt, the same-card baseline); the fused kernel
#              alone at GPU_CHECK_ACCEPT_FUSED_SHAPES (the same three: what the bf16 stream adds);
#              the three smallest shapes by default (GPU_CHECK_ACCEPT_SMALL_SHAPES, after the
#              loss as attention's kernel tests: it is 4x128's default loss); the loss as
#              attention at GPU_CHECK_ACCEPT_ATTENTION_SHAPES (6,256,4: cuDNN's kernel at d 256),
#              nanoGPT's GPT profiled at GPU_CHECK_ACCEPT_NANOGPT_PROFILE_SHAPES (12,768,12), the
#              CUDA run test (MFU logged), CUDA graphs (--compile-mode reduce-overhead) at
#              GPU_CHECK_ACCEPT_GRAPH_SHAPES (the three smallest), autotuned kernels
#              (max-autotune-no-cudagraphs) at GPU_CHECK_ACCEPT_AUTOTUNE_SHAPES (the three largest,
#              largest first). On an H200 (2026-12-04) a shape took 27-79 s with the default
#              compile, its compile included, so two calls reach about the FP8 units. Resumable:
#              a rerun on the same (warm) machine skips what is done (state in .gpu_check/,
#              compile caches in .gpu_cache/, both git-ignored and kept there between calls;
#              delete .gpu_check/ to start over)   ~10 min to the first pass's end
#   tests      nvidia-smi, versions, imports, the CUDA tests (-k), then sweep.train on the synthetic
#              corpus plain and under 1-GPU torchrun, with both tokens/s          ~5-6 min
#   reference  sweep.bench --shapes reference (6 shapes)                          ~4-6 min
#              Every bench step passes --profile GPU_CHECK_PROFILE_ROWS (40): after timing a shape
#              it profiles 3 more steps and prints (and keeps in the JSON) the top ops by device time.
#   baseline   reference shapes as nanoGPT's GPT (--arch nanogpt): the goals' baseline on a card
#              other than the H100 or H200 of sweep/nanogpt.py (an A100, say)   ~4-6 min
#   chunk      reference shapes with --loss-chunk-tokens N for N in GPU_CHECK_CHUNKS (8192 16384)
#              (~2-4 min each after `reference` in the same call: Triton kernels come from cache)
#   autotune   reference shapes with --compile-mode M for M in GPU_CHECK_COMPILE_MODES
#              (max-autotune-no-cudagraphs): autotuning is slow, likely a call of its own
#   variants   chunk, then autotune
#   copies     nanoGPT's three smallest shapes as K copies training at once (one process each),
#              for K in GPU_CHECK_COPIES (2 4): tokens/s of them together     ~3-5 min
#   ladder     sweep.bench --shapes ladder (11 presets up to 287M)                ~7-9 min
#   suite      the whole non-slow test suite with a GPU present (-n 8)            optional
# After the stages, sweep.bench_compare --check-goals goes over every bench-reference*.json in
# $WORK, and apart over every bench-accept-*.json: each a table of the variants per shape, the best
# against nanoGPT (timed here when an --arch nanogpt result is among them, else sweep/nanogpt.py's
# numbers for the card: H100, H200), and the goals met or missed (also in
# $WORK/compare-reference.md, compare-accept.md).
# A task lent a device gets 15 device minutes in all, machine starts (1-2 min) and idle waits
# (30 s after each call) included, so plan two calls, both `timeout_s: 600, carry: [".whl"]`
# (and ".gpu_cache_in" when an earlier session's compile-cache.tgz.part-* are copied there):
#   1. bash scripts/gpu_check.sh accept
#   2. at once after it, while the machine is warm (a fresh start costs 1-2 min and loses the
#      caches), with budget_left_s from `status`:
#      GPU_CHECK_DEADLINE_S=<budget_left_s - 60> bash scripts/gpu_check.sh accept
#      to finish what the first left; then give_back. With more time: reference baseline chunk,
#      ladder, autotune or copies (timings compare only within one machine).
# Everything a step writes goes to $GPU_CHECK_WORK (.gpu_check/), re-packed into
# $OUT/results.tgz after every step; the console goes to $OUT/log.txt; the compile caches to
# $OUT/compile-cache.tgz.part-* at the end (see pack_cache). Steps share a deadline
# (GPU_CHECK_DEADLINE_S=570 s after the start): a step that would run past it is stopped, the
# rest are skipped, and what finished still comes back. A failed step does not stop the others.
# With a shorter call limit than 600 s, lower GPU_CHECK_DEADLINE_S to match (keep ~30 s spare).
#
# CPU dry run of the sequencing (no wheels, tiny settings; tests take ~30 s, each bench
# step 1-2 min: --tiny shrinks the protocol, not the shapes):
#   GPU_CHECK_WHEELS=0 PY=.venv/bin/python GPU_CHECK_DEVICE=cpu GPU_CHECK_BENCH_ARGS=--tiny \
#   GPU_CHECK_SMOKE_ARGS="model=base budget.tokens=2e4 train.batch_tokens=1024 eval.points=2" \
#   GPU_CHECK_PYTEST_K=hardware OUT=/tmp/gpu_out bash scripts/gpu_check.sh tests
# Rehearsal of the device's image on the CPU (done 2026-11-23: `tests suite reference` passed,
# 699 tests): a Python 3.12 venv with only the image's packages (torch==2.11.0 numpy==2.5.2
# tokenizers==0.23.2 huggingface-hub==1.33.0 scipy pandas pyarrow matplotlib pytest pytest-xdist
# cloudpickle requests psutil pyyaml xxhash tqdm fsspec rich httpx aiohttp click), the project
# not installed, the wheels on: PY=that/venv/bin/python and the dry run's settings above.
# 2026-12-01, `accept` so (GPU_CHECK_BENCH_ARGS="--tiny --compile true", two tiny shapes): every
# bench step passed, without graph breaks or recompiles, and a rerun skipped them all (the pytest
# steps failed at collection only because that venv lacked matplotlib, which the image has).
# 2026-12-05, `accept` so again in the project's .venv, with every unit added since (the lean step,
# by blocks, FP8, tuned, fused, CUDA graphs, autotune): all 36 units and 5 pytest steps passed in
# 1358 s, with no graph break, recompile or warning in the log, and a rerun skipped them all (1 s).
# shellcheck disable=SC2329  # the stage_* functions are called by name from main
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

if [[ $# -eq 0 || $1 == -h || $1 == --help ]]; then
  sed -n '2,/^# shellcheck/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 0
fi

PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu_out}
# In the repo and git-ignored: the device keeps ignored files between calls to a warm machine
WORK=${GPU_CHECK_WORK:-$PWD/.gpu_check}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.gpu_cache/inductor}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/.gpu_cache/triton}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
DEADLINE_S=${GPU_CHECK_DEADLINE_S:-570}
BENCH_ARGS=${GPU_CHECK_BENCH_ARGS:-}
PROFILE_ROWS=${GPU_CHECK_PROFILE_ROWS:-40}
CHUNKS=${GPU_CHECK_CHUNKS-8192 16384}
COMPILE_MODES=${GPU_CHECK_COMPILE_MODES-max-autotune-no-cudagraphs}
COPIES=${GPU_CHECK_COPIES-2 4}
# accept's units. They run in the header's order, not in the order listed here (the goals still
# open first: a device session of 15 minutes, machine start included, does not reach the end).
# This project's GPT as it trains by default at the three largest shapes (1.05x nanoGPT, and MFU
# 50 % at 24x1024) and the three smallest (1.3x; 4x128 met it with the loss as attention)
ACCEPT_SHAPES=${GPU_CHECK_ACCEPT_SHAPES-24,1024,16 12,768,12 12,512,8}
ACCEPT_SMALL_SHAPES=${GPU_CHECK_ACCEPT_SMALL_SHAPES-4,128,2 6,256,4 8,384,6}
# The lean step: everything that cuts memory traffic without another kernel library, together.
# A bf16 residual stream (train.residual_dtype=bf16: 25 of the 147 [batch, seq, d] tensors a layer
# moves, by inductor's count) and the fused loss kernel (train.loss_kernel=fused: one pass over the
# logits fewer). At the large shapes, then the small ones but 4x128 (whose loss is attention)
ACCEPT_LEAN_SHAPES=${GPU_CHECK_ACCEPT_LEAN_SHAPES-24,1024,16 12,768,12 12,512,8}
ACCEPT_SMALL_LEAN_SHAPES=${GPU_CHECK_ACCEPT_SMALL_LEAN_SHAPES-6,256,4 8,384,6}
# ... and with CUDA graphs: at 6x256 the H200 idled about 0.9 ms of the 21.7 ms step between
# kernels, which the lean step's ~17 ms leaves nearer 1.3x nanoGPT's 20.6 ms (BENCHMARKS.md)
ACCEPT_SMALL_LEAN_GRAPH_SHAPES=${GPU_CHECK_ACCEPT_SMALL_LEAN_GRAPH_SHAPES-6,256,4 8,384,6}
# The lean step compiled by blocks (train.compile_scope=blocks: one graph for all the blocks): its
# compile and its speed at the deepest shape. If it runs as fast, later sessions can time every
# unit so, and spend the compile time saved (a third of the warm-up on the CPU) on more units
ACCEPT_BLOCKS_SHAPES=${GPU_CHECK_ACCEPT_BLOCKS_SHAPES-24,1024,16}
# FP8 matmuls (train.precision=fp8) on top of the lean step, where the matmuls weigh most (58 %
# of the 24x1024 step in aten::mm)
ACCEPT_FP8_SHAPES=${GPU_CHECK_ACCEPT_FP8_SHAPES-24,1024,16 12,768,12 12,512,8}
# Coordinate-descent tuning of inductor's own (pointwise and reduction) kernels on top of the
# lean step, without max-autotune's slow matmul search: at 12x768 those kernels took about 30 % of
# the step, and the H200 ran the GELU and rotary kernels of the 24x1024 step at about 2.5 TB/s,
# half its bandwidth
ACCEPT_TUNED_SHAPES=${GPU_CHECK_ACCEPT_TUNED_SHAPES-24,1024,16 12,768,12}
# The fused loss kernel alone (what the lean step owes to the bf16 stream), after the goals' units
ACCEPT_FUSED_SHAPES=${GPU_CHECK_ACCEPT_FUSED_SHAPES-24,1024,16 12,768,12 12,512,8}
# accept's later steps: the loss as attention where cuDNN now runs it at d 256 (flash did, 0.87x
# the plain loss), nanoGPT's GPT profiled, CUDA graphs (reduce-overhead), autotuned kernels
ACCEPT_ATTENTION_SHAPES=${GPU_CHECK_ACCEPT_ATTENTION_SHAPES-6,256,4}
ACCEPT_NANOGPT_PROFILE_SHAPES=${GPU_CHECK_ACCEPT_NANOGPT_PROFILE_SHAPES-12,768,12}
ACCEPT_GRAPH_SHAPES=${GPU_CHECK_ACCEPT_GRAPH_SHAPES-4,128,2 6,256,4 8,384,6}
ACCEPT_AUTOTUNE_SHAPES=${GPU_CHECK_ACCEPT_AUTOTUNE_SHAPES-24,1024,16 12,768,12 12,512,8}
# First the acceptance's correctness test (the compiled bf16 step against float32 eager, with
# each loss); the loss as attention's own kernel tests just before the small shapes, whose default
# (4x128) it is; the bf16 run that logs MFU (Hydra, data, a compile: about a minute) after them
ACCEPT_PYTEST_K=${GPU_CHECK_ACCEPT_PYTEST_K:-compiled_bf16_step_matches}
ACCEPT_ATTENTION_PYTEST_K=${GPU_CHECK_ACCEPT_ATTENTION_PYTEST_K:-attention_loss_on_cuda}
# The fused loss kernel's own CUDA test, just before its units, which run only if it passed: a
# kernel that fails on this card's Triton would fail each unit after its compile (~30 s a shape)
ACCEPT_FUSED_PYTEST_K=${GPU_CHECK_ACCEPT_FUSED_PYTEST_K:-autotuned_kernel_on_cuda}
# FP8's own CUDA test (the operand layouts _scaled_mm takes, a compiled fp8 step against float32)
ACCEPT_FP8_PYTEST_K=${GPU_CHECK_ACCEPT_FP8_PYTEST_K:-cuda_fp8_matmuls}
ACCEPT_LATE_PYTEST_K=${GPU_CHECK_ACCEPT_LATE_PYTEST_K:-cuda_run_uses_bf16}
PYTEST_K=${GPU_CHECK_PYTEST_K:-cuda or gpu or bf16 or compiled}
SUITE_ARGS=${GPU_CHECK_SUITE_ARGS:--n 8}
DATA_ARGS=${GPU_CHECK_DATA_ARGS:-data=synthetic}
# One run's shape and length: long enough (~760 steps of 64 x 1024 tokens, one eval window of
# ~0.5 min after compiling) for tokens/s to be compared within a few percent. That reads the
# synthetic corpus' 20M train tokens 2.5 times: a throughput check, so max_epochs allows it.
SMOKE_ARGS=${GPU_CHECK_SMOKE_ARGS:-model=gpt_25m budget.tokens=5e7 budget.max_epochs=3 \
train.seq_len=1024 train.batch_tokens=65536 train.micro_batch_size=32 eval.points=2}
SMOKE_FIXED="logging.progress=false logging.wandb.mode=disabled logging.interval=50 \
checkpoint.interval_s=inf train.device=$DEVICE"
# Run records (checkpoints included) stay out of the results; only their small files are copied.
# The tests stage deletes this folder first, so that the runs train instead of being skipped.
SMOKE_ROOT=${GPU_CHECK_SMOKE_ROOT:-/tmp/gpu_check_root}
export WANDB_MODE=disabled PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"

FAILED=()
pack() { tar czf "$OUT/results.tgz" -C "$(dirname "$WORK")" "$(basename "$WORK")"; }

# The compile caches across device sessions: a fresh machine compiles every shape anew (14-49 s
# each on an H200, a third of a call), but inductor's caches are keyed by the graph, torch and the
# card, so a later session whose model code is unchanged can load them. The end of a call packs
# .gpu_cache into $OUT/compile-cache.tgz.part-aa, -ab, ... (a returned file holds at most 16 MiB),
# unless they would pass CACHE_MAX_MIB together (the wheels and the tree travel too: 64 MiB in
# all); a later session copies those parts into .gpu_cache_in/ (git-ignored) and carries it, and
# the first call there unpacks them where .gpu_cache does not exist yet.
CACHE_IN=$PWD/.gpu_cache_in
CACHE_MAX_MIB=${GPU_CHECK_CACHE_MAX_MIB:-30}
unpack_cache() {
  compgen -G "$CACHE_IN/compile-cache.tgz.part-*" >/dev/null || return 0
  if [[ -d .gpu_cache ]]; then
    echo "compile cache: .gpu_cache is there already (a warm machine); $CACHE_IN left unread"
    return 0
  fi
  if cat "$CACHE_IN"/compile-cache.tgz.part-* | tar xzf -; then
    echo "compile cache: unpacked $(du -sh .gpu_cache | cut -f1) from $CACHE_IN"
  else
    echo "compile cache: $CACHE_IN did not unpack; compiling anew"
    rm -rf .gpu_cache
  fi
}
pack_cache() {
  [[ -d .gpu_cache ]] || return 0
  # after the steps' deadline, within the 30 s a call keeps spare: gzip's fastest level
  local tgz=/tmp/compile-cache.tgz mib left=$((DEADLINE_S + 20 - SECONDS))
  rm -f "$OUT"/compile-cache.tgz.part-*
  if ((left < 5)) || ! timeout "$left" bash -c 'tar cf - .gpu_cache | gzip -1 >"$1"' _ "$tgz"
  then
    echo "compile cache: no time left to pack it"
    rm -f "$tgz"
    return 0
  fi
  mib=$((($(stat -c %s "$tgz") + 1048575) / 1048576))
  echo "compile cache: $(du -sh .gpu_cache | cut -f1) in .gpu_cache, ${mib} MiB packed"
  if ((mib > CACHE_MAX_MIB)); then
    echo "compile cache: over GPU_CHECK_CACHE_MAX_MIB=$CACHE_MAX_MIB, not returned"
  else
    split -b 15m "$tgz" "$OUT/compile-cache.tgz.part-"
  fi
  rm -f "$tgz"
}

# step NAME CMD...: run CMD within the shared deadline, time it, record its status; returns CMD's
# (1 when skipped).
step() {
  local name=$1 start=$SECONDS left=$((DEADLINE_S - SECONDS)) rc
  shift
  echo
  echo "=== [$(date +%T), ${SECONDS}s] $name: $*"
  if ((left < 30)); then
    echo "=== $name: skipped, ${left}s left before the ${DEADLINE_S}s deadline"
    FAILED+=("$name(skipped)")
    printf '%s\tskipped\t0\n' "$name" >>"$WORK/steps.tsv"
    return 1
  fi
  if command -v timeout >/dev/null; then timeout -k 15 "$left" "$@"; else "$@"; fi
  rc=$?
  ((rc == 124)) && echo "=== $name: stopped at the deadline"
  ((rc != 0)) && FAILED+=("$name(rc=$rc)")
  echo "=== $name: rc=$rc in $((SECONDS - start))s"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >>"$WORK/steps.tsv"
  pack
  return "$rc"
}

bench() {  # bench NAME ARGS...: sweep.bench into $WORK/bench-NAME.json
  local name=$1
  shift
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
  step "bench-$name" "$PY" -m sweep.bench --device "$DEVICE" --profile "$PROFILE_ROWS" "$@" \
    $BENCH_ARGS --out "$WORK/bench-$name.json"
}

smoke() {  # smoke NAME LAUNCHER...: one sweep.train run of SMOKE_ARGS under experiment NAME
  local name=$1
  shift
  # shellcheck disable=SC2086  # the argument lists are Hydra overrides
  step "train-$name" "$@" -m sweep.train $DATA_ARGS $SMOKE_ARGS $SMOKE_FIXED \
    "paths.root_dir=$SMOKE_ROOT" "experiment_name=smoke_$name"
  mkdir -p "$WORK/runs"
  (cd "$SMOKE_ROOT/runs" 2>/dev/null &&
    cp --parents smoke_"$name"/*/{summary.json,metrics.jsonl,config.yaml} "$WORK/runs/" 2>/dev/null)
}

versions() {
  step versions "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__,
'cuda', torch.version.cuda, 'available', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
}

stage_tests() {
  step nvidia-smi nvidia-smi
  versions
  step imports "$PY" -c "from importlib.metadata import version as v
import hydra, omegaconf, submitit, datasets, wandb
for n in ('hydra-core omegaconf submitit hydra-submitit-launcher datasets wandb pydantic '
          'protobuf typing-extensions pyarrow fsspec huggingface-hub numpy pyyaml').split():
    print(n, v(n))"
  step pytest-cuda "$PY" -m pytest -q -rs -p no:cacheprovider tests -k "$PYTEST_K" \
    --junitxml "$WORK/pytest-cuda.xml"
  rm -rf "$SMOKE_ROOT"
  # shellcheck disable=SC2086
  step prepare "$PY" -m data.prepare $DATA_ARGS "paths.root_dir=$SMOKE_ROOT"
  smoke plain "$PY"
  smoke torchrun "$PY" -m torch.distributed.run --standalone --nproc_per_node=1
  step throughput "$PY" - "$SMOKE_ROOT/runs" <<'EOF'
import json, pathlib, sys
runs = pathlib.Path(sys.argv[1])
got = {}
for name in ("plain", "torchrun"):
    run = next((runs / f"smoke_{name}").glob("*/summary.json")).parent
    summary = json.loads((run / "summary.json").read_text())
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    got[name] = (summary["tokens_per_s"], last["tokens_per_s"])
    print(f"{name:9} summary tokens_per_s {got[name][0]:>12,.0f} (compile included), last eval "
          f"window {got[name][1]:>12,.0f}; world_size {summary.get('world_size')}, {run.name}")
ratio = [t / p for t, p in zip(got["torchrun"], got["plain"])]
print(f"torchrun / plain: summary {ratio[0]:.3f}, last window {ratio[1]:.3f} (goal: within 3%)")
EOF
}

stage_reference() { bench reference --shapes reference; }

stage_baseline() { bench reference-nanogpt --shapes reference --arch nanogpt; }

# once_pytest NAME ARGS...: pytest ARGS as step NAME, unless an earlier call on this machine ran it
# to the end: a failure is not run again (device minutes are few and a rerun says nothing new), but
# it stays in this call's list of failures; a run stopped at the deadline or skipped runs again.
once_pytest() {
  local name=$1 rc
  shift
  if [[ -f $WORK/$name.rc ]]; then
    rc=$(<"$WORK/$name.rc")
    echo "=== $name: ran in an earlier call, rc=$rc (the details: that call's log, $name.xml)"
    ((rc == 0)) || FAILED+=("$name(rc=$rc, earlier call)")
    return
  fi
  step "$name" "$PY" -m pytest -q -rs -p no:cacheprovider tests "$@" \
    --junitxml "$WORK/$name.xml"
  rc=$?
  if ((rc != 124)) && [[ -f $WORK/$name.xml ]]; then echo "$rc" >"$WORK/$name.rc"; fi
}

# accept_unit SHAPE VARIANT ARGS...: one shape of one variant in a process of its own, unless it
# was done already, in this call or an earlier one (a stopped step leaves no JSON: it runs again).
# Its JSON is bench-accept-VARIANT-SHAPE.json, which the comparison reads; profile_unit's is
# bench-profile-VARIANT-SHAPE.json, which it does not (a diagnosis, not a variant: e.g. nanoGPT's
# GPT at one shape, which would stand in for the card's stored nanoGPT numbers at every shape).
accept_unit() { unit accept "$@"; }
profile_unit() { unit profile "$@"; }
# UNIT_ENV (an array of NAME=VALUE) is set in the unit's environment: inductor's switches, which
# sweep.bench records in its JSON and bench_compare names in the variant's label.
UNIT_ENV=()
unit() {
  local name="$1-$3-${2//,/x}" shape=$2
  shift 3
  if [[ -s $WORK/bench-$name.json ]]; then
    echo "=== bench-$name: done already (its JSON is there)"
    return
  fi
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
  step "bench-$name" env "${UNIT_ENV[@]}" "$PY" -m sweep.bench --device "$DEVICE" \
    --shape "$shape" "$@" $BENCH_ARGS --out "$WORK/bench-$name.json"
}

# baseline_needed: whether accept times nanoGPT's GPT here: GPU_CHECK_ACCEPT_BASELINE 1 or 0, or
# auto (the default): only on a card sweep/nanogpt.py has no nanoGPT numbers for (not an H100 or
# an H200), which saves a shape's compile and timing each (~5 min of an H200's 15)
baseline_needed() {
  case ${GPU_CHECK_ACCEPT_BASELINE:-auto} in
    0) return 1 ;;
    1) return 0 ;;
  esac
  [[ $DEVICE == cuda ]] || return 0
  ! "$PY" -c "import sys, torch
from sweep.nanogpt import reference_for
sys.exit(0 if reference_for(torch.cuda.get_device_name())[1] else 1)"
}

stage_accept() {
  [[ -f $WORK/pytest-accept.rc ]] || versions
  once_pytest pytest-accept -k "$ACCEPT_PYTEST_K"
  local shape baseline=0
  baseline_needed && baseline=1
  echo "=== nanoGPT's GPT timed here: $( ((baseline)) && echo yes || echo "no: sweep/nanogpt.py" \
    "has its numbers for this card, or GPU_CHECK_ACCEPT_BASELINE=0")"
  # The units in the header's order, each unit's why beside its variable above. FP8's MFU is
  # against FP8's peak; the defaults' loss is what auto picks (as attention on cuDNN's kernel at
  # d_model <= 128, else plain).
  accept_lean "" $ACCEPT_LEAN_SHAPES $ACCEPT_SMALL_LEAN_SHAPES
  accept_lean graphs $ACCEPT_SMALL_LEAN_GRAPH_SHAPES
  accept_lean tuned $ACCEPT_TUNED_SHAPES
  accept_lean blocks $ACCEPT_BLOCKS_SHAPES
  if [[ -n $ACCEPT_FP8_SHAPES ]]; then
    once_pytest pytest-fp8 -k "$ACCEPT_FP8_PYTEST_K"
    if passed pytest-fp8; then
      accept_lean fp8 $ACCEPT_FP8_SHAPES
    else
      echo "=== the fp8 units skipped: its CUDA test failed or did not finish"
    fi
  fi
  accept_defaults "$baseline" $ACCEPT_SHAPES
  accept_fused $ACCEPT_FUSED_SHAPES
  # The small shapes: the loss as attention's kernel tests first (it is 4x128's default loss)
  [[ -n $ACCEPT_SMALL_SHAPES ]] && once_pytest pytest-attention -k "$ACCEPT_ATTENTION_PYTEST_K"
  accept_defaults "$baseline" $ACCEPT_SMALL_SHAPES
  for shape in $ACCEPT_ATTENTION_SHAPES; do
    accept_unit "$shape" attention --loss-attention --profile "$PROFILE_ROWS"
  done
  for shape in $ACCEPT_NANOGPT_PROFILE_SHAPES; do
    profile_unit "$shape" nanogpt --arch nanogpt --profile "$PROFILE_ROWS"
  done
  once_pytest pytest-accept-run -k "$ACCEPT_LATE_PYTEST_K"
  for shape in $ACCEPT_GRAPH_SHAPES; do
    accept_unit "$shape" graphs --compile-mode reduce-overhead
  done
  for shape in $ACCEPT_AUTOTUNE_SHAPES; do
    accept_unit "$shape" autotune --compile-mode max-autotune-no-cudagraphs
  done
}

# passed NAME: whether the pytest step NAME ran (in this call or an earlier one) and passed
passed() { [[ $(cat "$WORK/$1.rc" 2>/dev/null) == 0 ]]; }

# accept_defaults BASELINE SHAPE...: this project's GPT as it trains by default at each shape,
# profiled, and nanoGPT's GPT beside it when BASELINE is 1
accept_defaults() {
  local baseline=$1 shape
  shift
  for shape in "$@"; do
    accept_unit "$shape" default --profile "$PROFILE_ROWS"
    ((baseline)) && accept_unit "$shape" nanogpt --arch nanogpt
  done
}

# test_fused: the fused loss kernel's CUDA test, once a call (a second look would report, and
# count, a failure twice); true when it passed, in this call or an earlier one
test_fused() {
  [[ -n ${FUSED_TESTED:-} ]] || once_pytest pytest-fused-kernel -k "$ACCEPT_FUSED_PYTEST_K"
  FUSED_TESTED=1
  passed pytest-fused-kernel
}

# accept_lean PREFIX SHAPE...: the lean step at each shape (a bf16 residual stream, with the fused
# loss kernel once its CUDA test has passed, else without), profiled; PREFIX "fp8" adds FP8
# matmuls, "blocks" compiles the blocks and the output apart (--compile-scope blocks), "graphs"
# replays CUDA graphs (--compile-mode reduce-overhead), "tuned" tunes inductor's kernels by
# coordinate descent (UNIT_ENV, local here so that it ends with the call); PREFIX names the
# variant (fp8-lean, tuned-lean-nofused, ...)
accept_lean() {
  local prefix=$1 shape name=lean precision=bf16 more=() UNIT_ENV=()
  shift
  (($#)) || return 0
  case $prefix in
    tuned) UNIT_ENV=(TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1) ;;
    fp8) precision=fp8 ;;
    blocks) more=(--compile-scope blocks) ;;
    graphs) more=(--compile-mode reduce-overhead) ;;
  esac
  # bf16 named, though auto picks it on a GPU: a bf16 stream needs it, and a CPU dry run's auto is
  # fp32
  local args=(--precision "$precision" --residual-dtype bf16 --profile "$PROFILE_ROWS" "${more[@]}")
  if test_fused; then
    args+=(--loss-kernel fused)
  else
    name=lean-nofused
    echo "=== $name: the fused loss kernel left out: its test failed or did not finish"
  fi
  [[ -n $prefix ]] && name=$prefix-$name
  for shape in "$@"; do
    accept_unit "$shape" "$name" "${args[@]}"
  done
}

# accept_fused SHAPE...: the fused loss kernel alone at each shape, once its CUDA test has passed
accept_fused() {
  (($#)) || return 0
  if ! test_fused; then
    echo "=== the fused loss's units skipped: its kernel's test failed or did not finish"
    return 0
  fi
  local shape
  for shape in "$@"; do
    accept_unit "$shape" fused --loss-kernel fused --profile "$PROFILE_ROWS"
  done
}

stage_chunk() {
  local n
  for n in $CHUNKS; do bench "reference-chunk$n" --shapes reference --loss-chunk-tokens "$n"; done
}

stage_autotune() {
  local m
  for m in $COMPILE_MODES; do bench "reference-$m" --shapes reference --compile-mode "$m"; done
}

stage_variants() { stage_chunk; stage_autotune; }

stage_copies() {  # several small runs sharing the GPU: does it raise the sweep's tokens/s?
  local k
  for k in $COPIES; do
    bench "copies$k" --shape 4,128,2 --shape 6,256,4 --shape 8,384,6 --copies "$k" --profile 0
  done
}

stage_ladder() { bench ladder --shapes ladder; }

stage_suite() {
  # shellcheck disable=SC2086
  step pytest-suite "$PY" -m pytest -q -rs -p no:cacheprovider -m "not slow" $SUITE_ARGS tests \
    --junitxml "$WORK/pytest-suite.xml"
}

compare() {  # compare NAME FILE...: the files that exist, through sweep.bench_compare
  local name=$1 files=() file
  shift
  for file in "$@"; do [[ -f $file ]] && files+=("$file"); done
  ((${#files[@]} > 0)) || return 0
  echo
  echo "##### $name: nanoGPT's shapes, all variants (sweep.bench_compare --check-goals)"
  "$PY" -m sweep.bench_compare --check-goals "${files[@]}" | tee "$WORK/compare-$name.md"
}

main() {
  local stage
  for stage in "$@"; do
    if [[ $(type -t "stage_$stage") != function ]]; then
      echo "unknown stage '$stage': accept tests reference baseline chunk autotune variants" \
        "copies ladder suite"
      return 2
    fi
  done
  echo "gpu_check: stages $* on ${HOSTNAME:-?} at $(date -Is); results in $WORK, packed to $OUT"
  # The project is not installed there: the CLIs that tests start in a temporary directory
  # (python -m sweep.train ...) find it only through PYTHONPATH.
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  if [[ ${GPU_CHECK_WHEELS:-1} != 0 ]] && compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || { echo "wheel install failed"; return 1; }
    export PYTHONPATH=$PYTHONPATH:/tmp/site
    local wheels=(.whl/*.whl)
    echo "installed ${#wheels[@]} wheels into /tmp/site (PYTHONPATH) in ${SECONDS}s"
  fi
  unpack_cache
  for stage in "$@"; do
    echo
    echo "##### stage $stage"
    "stage_$stage"
  done
  # Every variant of nanoGPT's shapes so far, the plain one first, side by side with the goals
  # (not a step: it takes a fraction of a second, and a missed goal is a result, not a failure).
  compare reference "$WORK/bench-reference.json" "$WORK"/bench-reference-*.json
  compare accept "$WORK"/bench-accept-*.json
  pack
  pack_cache
  echo
  echo "steps (name, rc, seconds):"
  cat "$WORK/steps.tsv" 2>/dev/null
  echo "gpu_check: done in ${SECONDS}s; failed or skipped: ${FAILED[*]:-none}"
  ((${#FAILED[@]} == 0))
}

main "$@" 2>&1 | tee -a "$OUT/log.txt"
rc=${PIPESTATUS[0]}
pack
exit "$rc"
