#!/usr/bin/env bash
# Fetches into .whl/ the CPython 3.12 x86_64 wheels of every package this project needs that the
# GPU machine's image lacks (it cannot download), so a device call can carry `.whl` and install
# them offline (scripts/gpu_check.sh does). Runs here, where pip reaches the index; idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-python3}
DEST=.whl
# name==version: the versions the test suite passes with in .venv; constraints.txt wins where it
# pins the same name. Grouped by who needs them (the image has everything else they require).
PACKAGES=(
  # Hydra configs and the launchers (hydra_plugins/)
  hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3
  hydra-submitit-launcher==1.2.0 submitit==1.5.4
  # data.text (Hugging Face corpora)
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  # sweep.logger (wandb; runs and tests pass logging.wandb.mode=disabled, but imports must work)
  wandb==0.31.0 cwevals==0.0.1b1 distro==1.9.0 sniffio==1.3.1 platformdirs==4.14.7
  pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2
  opentelemetry-proto==1.45.2 opentelemetry-exporter-otlp-proto-http==1.45.2
  opentelemetry-exporter-otlp-proto-common==1.45.2 opentelemetry-exporter-otlp-common==0.66b2
  opentelemetry-exporter-http-transport==0.66b2 googleapis-common-protos==1.76.0
  # In the image, but possibly too old: pydantic-core needs typing-extensions>=4.16, and
  # googleapis-common-protos' generated code refuses a protobuf runtime older than 6.33.5.
  typing-extensions==4.16.0 protobuf==7.36.2
)
# Published only as an sdist: built here into a pure-Python (py3-none-any) wheel.
SDIST_ONLY=" antlr4-python3-runtime "
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64
           manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)

mkdir -p "$DEST"
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
shopt -s nullglob nocaseglob nocasematch

fetched=()
for spec in "${PACKAGES[@]}"; do
  name=${spec%%==*}
  version=${spec#*==}
  pinned=$(grep -iE "^${name}==" constraints.txt 2>/dev/null | head -1 | cut -d= -f3 || true)
  version=${pinned:-$version}
  stem=$(echo "$name" | tr 'A-Z.-' 'a-z__')  # wheel file names normalise - and . to _
  # One version of each package: a stale one (changed pin) would stop the offline install.
  for old in "$DEST/$stem"-*.whl; do
    [[ $old == "$DEST/$stem-$version-"* ]] || { echo "removing stale $old"; rm -f "$old"; }
  done
  have=("$DEST/$stem-$version-"*.whl)
  if (( ${#have[@]} )); then
    echo "have  $name==$version"
    continue
  fi
  if [[ $SDIST_ONLY == *" $name "* ]]; then
    "$PY" -m pip wheel -q --no-deps --no-cache-dir -w "$DEST" "$name==$version"
  else
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp "${PLATFORMS[@]/#/--platform=}" -d "$DEST" "$name==$version"
  fi
  fetched+=("$name==$version")
  echo "fetch $name==$version"
done

wheels=("$DEST"/*.whl)
echo "fetched this time: ${#fetched[@]} (${fetched[*]:-none}); in $DEST:"
du -b "${wheels[@]}" | awk '{printf "%8.2f MiB  %s\n", $1 / 1048576, $2}'
echo "total: $(du -cb "${wheels[@]}" | tail -1 | awk '{printf "%.1f MiB", $1 / 1048576}')" \
     "in ${#wheels[@]} wheels (a device call carries at most 64 MiB, repo included)"
