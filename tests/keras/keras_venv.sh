#!/usr/bin/env bash
# The Python that the `keras` tests use: a virtual environment with TensorFlow (CPU), tf_keras (tf.keras
# 2.x, the chapter's Keras), Keras 3 (TensorFlow's dependency) and h5py from the Python package index,
# cached at VENV_DIR (under the build directory) and reused. Prints the venv's python on stdout.
# Exit 77 (CTest: skipped) with a message on stderr when it cannot be made (PyPI unreachable); a failed
# attempt is remembered for an hour (VENV_DIR.pip-failed) so that an offline machine skips at once.
#   py=$(bash tests/keras/keras_venv.sh BUILD/keras-venv) || exit $?
set -uo pipefail
venv=${1:?usage: keras_venv.sh VENV_DIR}
py=$venv/bin/python
want="tensorflow-cpu==2.21.0 tf-keras==2.21.0 h5py"
check() { "$py" -c 'import tensorflow, tf_keras, keras, h5py' >/dev/null 2>&1; }
if [ -x "$py" ] && check; then echo "$py"; exit 0; fi
marker=$venv.pip-failed
if [ -f "$marker" ] && [ -n "$(find "$marker" -mmin -60 2>/dev/null)" ]; then
  echo "SKIP: pip could not install $want within the last hour ($marker; delete it to retry)" >&2
  exit 77
fi
base=$(command -v python3)
if ! { [ -x "$py" ] || "$base" -m venv "$venv" >&2; }; then
  echo "SKIP: cannot create a virtual environment with $base" >&2; exit 77
fi
# shellcheck disable=SC2086
if ! timeout 900 "$py" -m pip install --disable-pip-version-check --quiet --timeout 30 --retries 2 $want >&2 || ! check; then
  touch "$marker"
  echo "SKIP: pip cannot install $want (is the Python package index reachable?)" >&2
  exit 77
fi
rm -f "$marker"
echo "$py"
