#!/usr/bin/env bash
# The test suite, with a real napari viewer under Xvfb (pytest-xvfb). Extra args go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec .venv/bin/python -m pytest "$@"
