#!/usr/bin/env bash
# Run every (method, seed) of a comparison table on one stream, resumably, then compare them.
#
#   scripts/stream_table.sh OUT_DIR "lora-ft replay ewc quad unifier joint" "0 1 2" [CONFIG ...]
#
# Each run goes to OUT_DIR/<method>-s<seed>; a finished run is skipped and an interrupted one is
# continued with --resume, so the table can be filled over several sessions. Two runs go side by
# side with one thread each (on 2 cores this finishes sooner than one run with two threads);
# JOBS=1 runs them one after another (to leave a core free for other work).
# Overrides for one method only go in MMCL_SET_<method, - as _>, e.g.
#   MMCL_SET_mr_lora="method.router_epochs=10" scripts/stream_table.sh ...
# A variant of a method is written VARIANT:METHOD (its runs are named VARIANT and grouped apart),
# e.g. "mage-ew:mage" with MMCL_SET_mage_ew="method.gating=false method.aggregation=false".
# At the end: mmcl compare (the table of docs/results-*.md), and mmcl compare --protocol msvqa for an MSVQA stream.
# INTRUSION=1 adds the intrusion tracks (mmcl rescore RUN --intrusion) to every finished sequential run
# before it is kept, and intrusion columns to the final table (intrusion_form where a run has it:
# runs kept before it existed have no predictions left to read it from).
# ALSO="vqa_score drift_probe" adds those tracks' last scores as columns of the final table
# (mmcl compare --also TRACK[:METRIC] each), e.g. the README's generalist table.
#
# KEEP_DIR=results/<table> keeps each finished run's results.json, config.yaml and matrix.csv in a
# folder that is committed (OUT_DIR, with its checkpoints and predictions, is not), skips a run
# already kept there, and compares the kept runs. A table that takes longer than one working
# session is filled this way across sessions on machines whose run folders do not survive.
#
#   KEEP_DIR=results/<table> scripts/stream_table.sh --park OUT_DIR
#
# parks every unfinished run of OUT_DIR before such a session ends: its process is paused while the
# run folder (checkpoint, predictions, stage markers; not the report) is packed into
# KEEP_DIR/partial/<run>.tar.gz, then let go on. The next table command with the same OUT_DIR and
# KEEP_DIR unpacks a parked run whose folder is missing and resumes it from its last finished stage
# (mmcl run --resume); the pack is deleted once the run is kept.
set -euo pipefail
export OMP_NUM_THREADS=1 TRANSFORMERS_VERBOSITY=error

if [ "${1:-}" = "--park" ]; then
  out=${2:?OUT_DIR}; : "${KEEP_DIR:?--park needs KEEP_DIR}"
  mkdir -p "$KEEP_DIR/partial"
  for dir in "$out"/*-s*/; do
    dir=${dir%/}; name=${dir##*/}
    { [ -f "$dir/config.yaml" ] && [ ! -f "$KEEP_DIR/$name/results.json" ]; } || continue
    pids=$(pgrep -f -- "--output $dir( |\$)" || true)
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill -STOP $pids
    tar czf "$KEEP_DIR/partial/$name.tar.gz.part" -C "$out" \
      --exclude="$name/report*" --exclude="$name/heatmap-*" "$name"
    mv "$KEEP_DIR/partial/$name.tar.gz.part" "$KEEP_DIR/partial/$name.tar.gz"
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill -CONT $pids
    echo "parked $dir -> $KEEP_DIR/partial/$name.tar.gz"
  done
  exit 0
fi

out=${1:?OUT_DIR}; methods=${2:?methods}; seeds=${3:?seeds}; shift 3
[[ ${JOBS:-2} =~ ^[1-9][0-9]*$ ]] || { echo "JOBS must be a whole number >= 1, got '$JOBS'" >&2; exit 2; }
configs=("$@")
mkdir -p "$out"

one() {  # method[:base method] seed
  local variant=${1%%:*} method=${1##*:}
  local dir="$out/$variant-s$2" layer=() named=()
  [ -f "configs/$method.yaml" ] && layer=("configs/$method.yaml")
  [ "$variant" != "$method" ] && named=(--set name="$variant")
  local kept=${KEEP_DIR:+$KEEP_DIR/$variant-s$2} parked=${KEEP_DIR:+$KEEP_DIR/partial/$variant-s$2.tar.gz}
  [ -n "$kept" ] && [ -f "$kept/results.json" ] && return 0
  if [ -n "$parked" ] && [ -f "$parked" ] && [ ! -d "$dir" ]; then tar xzf "$parked" -C "$out"; fi
  if ! { [ -f "$dir/results.json" ] && grep -q '"complete": true' "$dir/checkpoint/manifest.json" 2>/dev/null; }; then
    local resume=() extra=() var="MMCL_SET_${variant//-/_}"
    [ -f "$dir/config.yaml" ] && resume=(--resume)
    for o in ${!var:-}; do extra+=(--set "$o"); done
    mmcl run "${configs[@]}" "${layer[@]}" --set method.name="$method" --set seed="$2" --set train.num_threads=1 \
      "${named[@]}" "${extra[@]}" --output "$dir" "${resume[@]}" > "$dir.log" 2>&1 || { echo "FAILED: $1 seed $2 (see $dir.log)"; return 0; }
  fi
  if [ "${INTRUSION:-0}" = 1 ] && [[ ! $method =~ ^(joint|zero-shot)$ ]]; then  # those two learn no stages
    mmcl rescore "$dir" --intrusion >> "$dir.log" 2>&1 || { echo "FAILED: intrusion of $1 seed $2 (see $dir.log)"; return 0; }
  fi
  if [ -n "$kept" ]; then
    mkdir -p "$kept" && cp "$dir/results.json" "$dir/config.yaml" "$dir/matrix.csv" "$kept/"
    rm -f "$parked"
  fi
}

jobs_list=()
for s in $seeds; do for m in $methods; do jobs_list+=("$m $s"); done; done
for job in "${jobs_list[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-2}" ]; do sleep 5; done
  # shellcheck disable=SC2086
  one $job &
done
wait
runs=${KEEP_DIR:-$out}; cmp="$runs/compare"; also=()
for track in ${ALSO:-}; do also+=(--also "$track"); done
if [ "${INTRUSION:-0}" = 1 ]; then
  also+=(--also intrusion)
  grep -q '"intrusion_form"' "$runs"/*-s*/results.json 2>/dev/null && also+=(--also intrusion_form)
fi
mmcl compare "$runs"/*-s*/ "${also[@]}" -o "$cmp"
# the benchmark as the runs resolved it (their config.yaml), so a layer such as configs/caption.yaml counts too
bench=$(sed -n '/^benchmark:/,/^[^ ]/s/^  name: //p' "$runs"/*-s*/config.yaml | sort -u)
if grep -q "^continual-next" <<< "$bench"; then  # Avg.ACC, Forgetting, New.ACC, Avg.HAL/IUF/OTH, transfer
  mmcl compare "$runs"/*-s*/ --protocol cnext -o "$cmp"
fi
if grep -q "^msvqa" <<< "$bench"; then  # the MSVQA protocol table (per scenario, VQA score and F1)
  mmcl compare "$runs"/*-s*/ --protocol msvqa -o "$cmp"
fi
