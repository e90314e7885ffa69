#!/usr/bin/env bash
# Installs lockstep's build and test dependencies from Debian's packages (Debian 12), only those
# missing. Needs root (or sudo). The CUDA toolkit (nvcc, cuBLAS, NCCL under /usr/local/cuda) is optional
# and never installed here. LOCKSTEP_WITH_SLURM=1 adds Slurm and munge, iproute2 and util-linux (the
# cluster/ tests, with the simulated hosts of label multinode; tests/run sets it), LOCKSTEP_WITH_PEERS=1
# the benchmark peers.
set -euo pipefail
pkgs=(
  build-essential cmake pkg-config git
  libopenmpi-dev openmpi-bin          # MPI
  libhdf5-dev                         # HDF5 C API
  libboost-program-options-dev        # the lockstep command's flags
  libopenblas-dev                     # CBLAS
  libxsmm-dev                         # small-matrix products (JIT)
  libdnnl-dev                         # oneDNN: convolutions where it beats lockstep's own (2.6 on Debian 12, 3.x on 13)
  libyaml-cpp-dev                     # run files
  nlohmann-json3-dev                  # Keras model JSON (lockstep export, from_keras import)
  libgtest-dev libgmock-dev           # tests
  zlib1g-dev                          # gzipped IDX files
  libcurl4-openssl-dev libssl-dev libarchive-dev   # lockstep data fetch
  python3 python3-h5py python3-numpy  # h5py compatibility tests
  graphviz                            # lockstep summary --plot (dot)
  librsvg2-bin                        # lockstep plot: the PNG next to the SVG (rsvg-convert)
)
if [ "${LOCKSTEP_WITH_SLURM:-0}" = 1 ]; then
  pkgs+=(slurmctld slurmd slurm-client munge)   # tests/cluster: a one-node Slurm on localhost (tests/run sets this)
  # tests/cluster's simulated hosts (label multinode): network namespaces, veths, a bridge and tc
  # (iproute2); unshare, nsenter, mountpoint, flock (util-linux, essential today, named in case it stops being so)
  pkgs+=(iproute2 util-linux)
fi
if [ "${LOCKSTEP_WITH_PEERS:-0}" = 1 ]; then
  # benchmark peers: PyTorch is not Debian's python3-torch (1.13) but the current CPU wheel
  # (torch==2.13.0), which tests/bench/peer_python.sh installs with pip into BUILD_DIR/venv-torch on the
  # benchmarks' first run; python3-venv gives Debian's python3 its `-m venv`.
  pkgs+=(python3-venv hyperfine)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
