#!/usr/bin/env bash
# The demo on built-in synthetic data; writes its results to demo_output/. Extra args go to `sedclassify demo`.
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec xvfb-run -a .venv/bin/sedclassify demo --out demo_output "$@"
