# The PyTorch peer's interpreter for the benchmark scripts (run_train_bench.sh, run_dist_bench.sh,
# run_graph_bench.sh source this file). The peer is the PyTorch a user would install today: the CPU
# wheel of torch 2.13.0 in a virtual environment, not Debian's python3-torch (1.13).
#
#   . tests/bench/peer_python.sh
#   peer_python BUILD_DIR     # sets PYTHON, TORCH_VERSION, TORCH_BUILD; prints one "peer: ..." line to stderr
#
# By default the interpreter is BUILD_DIR/venv-torch/bin/python. The venv is reused when its torch has
# the wanted version, otherwise created with `python3 -m venv` and `pip install torch==2.13.0+cpu numpy`
# (the CPU build of 2.13.0: from the pip configuration's own indexes first, then from PyTorch's CPU
# index, https://download.pytorch.org/whl/cpu; plain PyPI's Linux wheel of 2.13.0 is the CUDA build,
# which pulls in gigabytes of CUDA libraries).
#
#   PYTHON=/path/to/python    use this interpreter as it is (no venv, nothing installed)
#   LOCKSTEP_TORCH_VENV=DIR   the venv's location (default BUILD_DIR/venv-torch)
#   LOCKSTEP_TORCH=2.13.0     the torch version to install
#   TORCH_PIP_ARGS="..."      pip arguments for the install (e.g. --index-url URL); when set, used alone
#   LOCKSTEP_NO_PEER=1        no peer: TORCH_VERSION stays empty and the peer columns read "-"
#
# TORCH_VERSION is torch.__version__ (e.g. 2.13.0+cpu), empty when no torch could be had (the scripts
# then skip the peer); TORCH_BUILD is the BLAS and CPU capability torch reports (e.g. "mkl AVX512").
peer_python() {
  local build=$1
  TORCH_VERSION="" TORCH_BUILD=""
  if [ "${LOCKSTEP_NO_PEER:-0}" = 1 ]; then
    echo "peer: none (LOCKSTEP_NO_PEER=1)" >&2
    return 0
  fi
  if [ -z "${PYTHON:-}" ]; then
    local venv=${LOCKSTEP_TORCH_VENV:-$build/venv-torch} want=${LOCKSTEP_TORCH:-2.13.0}
    if ! "$venv/bin/python" -c "import sys, numpy, torch; sys.exit(torch.__version__.split('+')[0] != '$want')" \
        2>/dev/null; then
      echo "peer: installing torch==$want (CPU build) and numpy into $venv" >&2
      if python3 -m venv "$venv" >&2; then
        if [ -n "${TORCH_PIP_ARGS+x}" ]; then
          # shellcheck disable=SC2086
          "$venv/bin/python" -m pip install -q $TORCH_PIP_ARGS "torch==$want" numpy >&2 || true
        else
          "$venv/bin/python" -m pip install -q --retries 0 "torch==$want+cpu" numpy >/dev/null 2>&1 ||
            "$venv/bin/python" -m pip install -q --extra-index-url https://download.pytorch.org/whl/cpu \
                "torch==$want+cpu" numpy >&2 || true
        fi
      fi
    fi
    PYTHON=$venv/bin/python
  fi
  local info
  info=$("$PYTHON" - 2>/dev/null <<'PY' || true
import re, torch
cfg = torch.__config__.show()
blas = re.search(r"BLAS_INFO=(\w+)", cfg)
cap = re.search(r"CPU capability usage: (\w+)", cfg)
print(torch.__version__, blas.group(1) if blas else "?", cap.group(1) if cap else "?")
PY
)
  if [ -n "$info" ]; then
    TORCH_VERSION=${info%% *}
    TORCH_BUILD=${info#* }
    echo "peer: $PYTHON torch=$TORCH_VERSION (BLAS, CPU capability: $TORCH_BUILD)" >&2
  else
    echo "peer: no torch in $PYTHON: the PyTorch columns will read '-'" >&2
  fi
  export PYTHON TORCH_VERSION TORCH_BUILD
}

# One line about the machine for the reports: lscpu's model name, the CPU family and model (family 25
# is Zen 3/Zen 4, 26 Zen 5: the FMA peak differs), and the vCPU count.
bench_cpu_line() {
  local cpu fam mod
  cpu=$( (lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1) || true)
  [ -n "$cpu" ] || cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
  fam=$(sed -n 's/^cpu family[[:space:]]*: //p' /proc/cpuinfo | head -1)
  mod=$(sed -n 's/^model[[:space:]]*: //p' /proc/cpuinfo | head -1)
  echo "$cpu (family $fam, model $mod), $(nproc) vCPUs"
}
