#!/usr/bin/env bash
# WSInfer, for real: export a histo run for WSInfer, run `wsinfer run` and `spotter histo slide` on the same
# slides, and compare their tiles one by one (scripts/wsinfer_check.py). Not part of CI: WSInfer needs PyPI's
# torch + torchvision, which cannot import beside the project's CPU torch, so it gets its own environment
# (several GB, built once).
#
#   bash scripts/wsinfer_check.sh [RUN]     # RUN: a histo run folder (default: a short resnet-plain run)
#
# Environment: WSINFER_ENV (default .wsinfer-venv), OUT (default wsinfer-check), SPOTTER_SHARED_DATA.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=${WSINFER_ENV:-.wsinfer-venv}
OUT=${OUT:-wsinfer-check}
DATA=${SPOTTER_SHARED_DATA:-../shared/data}
PY=.venv/bin/python
SPOTTER=.venv/bin/spotter
make install

if [ ! -x "$ENV/bin/wsinfer" ]; then
    python3 -m venv "$ENV"
    # PyPI's builds (not the machine's local CPU wheel), so the project's pip settings are bypassed here only.
    env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "$ENV/bin/pip" install -q \
        torch==2.13.0 torchvision==0.28.0 wsinfer==0.6.1 'zarr<3' 'tiffslide<3'
fi
# Offline: WSInfer reads its model-zoo list at start; an empty registry and HF_HUB_OFFLINE keep it local.
mkdir -p ~/.wsinfer-zoo
[ -f ~/.wsinfer-zoo/wsinfer-zoo-registry.json ] || echo '{"models": {}}' > ~/.wsinfer-zoo/wsinfer-zoo-registry.json
export HF_HUB_OFFLINE=1

rm -rf "$OUT" && mkdir -p "$OUT"
RUN=${1:-}
if [ -z "$RUN" ]; then
    RUN=$OUT/run
    $SPOTTER histo train --data "$DATA/histopathology" --model resnet-plain --epochs 3 --precision fp32 --out "$RUN"
fi
$SPOTTER histo export "$RUN" --format wsinfer --out "$OUT/model"
SPOTTER_SHARED_DATA=$DATA $PY scripts/wsinfer_check.py slides "$OUT/slides"
for kind in native fine; do
    # stride 96: WSInfer's grid (patches side by side); fp32 like the exported model.
    $SPOTTER histo slide "$RUN" --image "$OUT/slides/$kind" --stride 96 --out "$OUT/spotter-$kind"
    "$ENV/bin/wsinfer" run -i "$OUT/slides/$kind" -o "$OUT/wsinfer-$kind" \
        -c "$OUT/model/config.json" -p "$OUT/model/model.pt" --num-workers 1
done
$PY scripts/wsinfer_check.py compare "$OUT"
