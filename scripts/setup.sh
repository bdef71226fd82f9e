#!/usr/bin/env bash
# Creates or updates ./.venv with the pinned environment (requirements/constraints.txt) and
# installs the JMIDAnomalyLib core with the `jmid` command in editable mode.
# Idempotent: a second run with unchanged pins only checks a stamp file.
set -euo pipefail
cd "$(dirname "$0")/.."
# The browser review's test needs Debian packages: Chromium (Playwright drives it; nothing is
# downloaded by Playwright), a Japanese font for report text, Mesa's EGL for offscreen VTK.
system_packages="chromium chromium-driver fonts-ipafont-gothic libegl1 libegl-mesa0 libgl1-mesa-dri"
if ! dpkg -s $system_packages >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian packages: $system_packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q $system_packages >/dev/null \
      || { apt-get update -q >/dev/null && apt-get install -y -q $system_packages >/dev/null; }
  else
    echo "setup: missing Debian packages ($system_packages) need root; the browser test" \
      "will be skipped" >&2
  fi
fi
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.jmid-env
want=$(cat requirements/constraints.txt pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing the pinned environment into .venv (first run takes a few minutes)" >&2
  # torch and torchvision first, from the pins, so no other package can pull a second torch.
  .venv/bin/python -m pip install --disable-pip-version-check -q -c requirements/constraints.txt torch torchvision
  .venv/bin/python -m pip install --disable-pip-version-check -q -c requirements/constraints.txt -e ".[all,test]"
  .venv/bin/python -m pip check
  echo "$want" > "$stamp"
fi
