#!/usr/bin/env bash
# The main job in one command: installs what is missing, builds, converts Fashion-MNIST (from
# ../shared/datasets when present, else downloads the official files), shows the chapter's MLP and trains
# it (extra arguments go to `lockstep train`, e.g. `bash launch/quickstart.sh --set train.epochs=1`).
# The chapter's other experiments: launch/configs/ (README, "Examples").
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash launch/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DLOCKSTEP_NATIVE=ON
cmake --build build -j "$(nproc)" --target lockstep
mkdir -p runs/data
if [ ! -f runs/data/fashion-mnist.h5 ]; then
  src=../shared/datasets/fashion-mnist
  if [ ! -d "$src" ]; then
    ./build/launch/lockstep data fetch fashion-mnist --dir runs/data/fashion-mnist-src
    src=runs/data/fashion-mnist-src
  fi
  ./build/launch/lockstep data convert --format fashion-mnist --src "$src" --out runs/data/fashion-mnist.h5
fi
./build/launch/lockstep summary launch/configs/fashion_mnist_mlp.yaml
if ./build/launch/lockstep --help | grep -q "^  train"; then
  ./build/launch/lockstep train launch/configs/fashion_mnist_mlp.yaml "$@"
fi
