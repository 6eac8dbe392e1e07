#!/usr/bin/env bash
# Creates .venv and installs plan-job into it (editable). `--test` adds the test tools.
#
# TORCH_REQUIREMENT picks the torch build. The default, torch==2.13.0, is the CPU build this
# project's CI machines carry on disk; on a GPU cluster set it to the build your CUDA needs
# (or "torch" for the newest), since plan-job itself only asks for torch>=2.1.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
python=${PYTHON:-python3}
torch_req=${TORCH_REQUIREMENT:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  echo "install: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  echo "install: $torch_req"
  "${pip[@]}" "$torch_req"
fi
echo "install: plan-job$extras"
"${pip[@]}" -e ".$extras"
echo "install: done ($(.venv/bin/plan-job --version))"
