#!/usr/bin/env bash
# CI: a non-editable `pip install .` works from any folder: configs/ and baselines/ ship as
# package data. Installs into a throwaway venv that sees the system's packages (torch is not
# downloaded again), then, from a folder outside the checkout, runs a tiny competition given as
# an overrides-only YAML (so the embedded default config must be found), dry-runs a shipped
# baseline, and checks that the shipped expected file names its config. About a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

# not under /tmp: the sandbox runs this venv's python, and bubblewrap mounts its own /tmp over
# it; readable by all: a root host runs the sandbox as an unprivileged uid
cache=${XDG_CACHE_HOME:-$HOME/.cache}
mkdir -p "$cache"
venv=$(mktemp -d "$cache/unlearn-install-check.XXXXXX")
chmod 755 "$venv"
work=$(mktemp -d /tmp/unlearn-install-run.XXXXXX)
trap 'rm -rf "$venv" "$work"' EXIT
step() { echo "install check: $1 (${SECONDS}s)" >&2; }
"$PY" -m venv --system-site-packages "$venv"
# from a copy of the checkout's files (tracked, and new ones not ignored): a build in place would
# leave build/ behind, whose stale files a later wheel could pick up
mkdir "$work/src"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    if [ -e "$f" ]; then printf '%s\0' "$f"; fi
  done | xargs -0 cp --parents -t "$work/src"
else
  cp -r . "$work/src" && rm -rf "$work/src/build"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$work/src"
rm -rf "$work/src"
step "installed"

cd "$work"
installed=$("$venv/bin/python" -c 'import harness; print(harness.__file__)')
case "$installed" in
  "$venv"/*) ;;
  *) echo "install check: harness imports from $installed, not from the venv $venv" >&2; exit 1 ;;
esac

cat > tiny.yaml <<'YAML'
# overrides only: everything else comes from the embedded default shipped in the package
name: install-check
device: cpu
task: {options: {n_persons: 40, images_per_person: [4, 6]}, forget: {count: 3}}
recipe: {epochs: 1}
references: {n_models: 2, solo_first: 0}
time_cap: {seconds: 60}
submissions: {n_runs: 2, dir: null, baselines: [do_nothing]}
executor: {workers: 1}  # one pool worker: fewer torch imports on a small CI machine
YAML
"$venv/bin/unlearn" run tiny.yaml --quiet >/dev/null
step "ran a competition"
"$venv/bin/python" - <<'PY'
import csv
rows = list(csv.DictReader(open("runs/install-check/leaderboard_public.csv")))
bad = [(r["team"], r["status"], r["reason"]) for r in rows if r["status"] != "ok"]
if not rows or bad:
    raise SystemExit(f"install check: unlearn run scored {bad or 'nothing'}")
PY
finetune=$("$venv/bin/python" -c 'from harness.compete.baselines import baseline_path; print(baseline_path("finetune"))')
case "$finetune" in
  "$venv"/*) ;;
  *) echo "install check: the baselines come from $finetune, not from the installed package" >&2; exit 1 ;;
esac
"$venv/bin/unlearn" dry-run "$finetune" --config tiny.yaml --json >/dev/null 2>dry-run.log || { cat dry-run.log >&2; exit 1; }
step "dry-ran a shipped baseline"
"$venv/bin/unlearn" data describe --config configs/ci.yaml --no-measure >/dev/null  # a shipped config, by its documented path
if "$venv/bin/unlearn" check-baselines --config tiny.yaml 2>err.txt; then
  echo "install check: check-baselines accepted a config the expected file was not made for" >&2; exit 1
fi
grep -q "was made for configs/ci.yaml" err.txt || { echo "install check: expected file not found: $(cat err.txt)" >&2; exit 1; }
echo "install check: ok (harness from $installed, run from $work)"
