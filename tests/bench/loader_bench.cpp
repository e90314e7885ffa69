// Loader throughput: samples/s delivered to the training loop by ShardedLoader, at batch 32 and 256,
// for 1 and 4 simulated ranks (rank 0's loader; each rank is its own process in a real run),
// in-memory and streaming, on a Fashion-MNIST-sized file (60,000 x 28x28 uint8, generated) with
// per-pixel standardization. The consumer only touches each batch, so this is the loader's ceiling.
// Target: >= 10x the Fashion-MNIST MLP's training step rate (~90,000 samples/s, batch 32, 2 threads).
//
//   build/tests/bench/loader_bench [--stream-cache-mb MB] [--epochs E] [--cifar] [--augment] [FILE.h5]
//     FILE.h5 defaults to /tmp/lockstep-bench-fmnist.h5, generated when absent.
//     --cifar: a CIFAR-10-shaped file instead (/tmp/lockstep-bench-cifar.h5, 50,000 x 32x32x3 generated,
//     per-channel standardization). Target there: >= 10x a ResNet-20 step on 2 cores (a few hundred
//     samples/s), i.e. a few thousand samples/s.
//     --augment: measure every row also with data.augment = {random_crop: {padding: 4},
//     horizontal_flip: true} (data/augment.h), applied in the producer thread.
//     --stream-cache-mb: data.stream_cache_mb of the streaming runs (default 256: the whole file's
//     decoded blocks fit, so epochs after the first are served from the cache; a small value such
//     as 8 measures the decode-bound rate of a dataset much larger than the cache).
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/loader.h"

using namespace lockstep;
using namespace lockstep::data;

int main(int argc, char** argv) {
  std::string path = "/tmp/lockstep-bench-fmnist.h5";
  bool given = false;
  int64_t stream_cache_mb = 256;
  int epochs = 3;
  bool cifar = false, augment = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf("usage: loader_bench [--stream-cache-mb MB] [--epochs E] [--cifar] [--augment] [FILE.h5]\n"
                  "  samples/s delivered by ShardedLoader (rank 0 of 1 and 4), batch 32 and 256, memory and\n"
                  "  stream modes, best of E epochs (default 3; the first warms the stream cache).\n"
                  "  FILE.h5 defaults to /tmp/lockstep-bench-fmnist.h5 (generated, 60000 x 28x28).\n"
                  "  --cifar: /tmp/lockstep-bench-cifar.h5 instead (generated, 50000 x 32x32x3, per-channel\n"
                  "  standardization). --augment: every row also with random_crop {padding: 4} + horizontal_flip.\n");
      return 0;
    } else if (a == "--stream-cache-mb" && i + 1 < argc) {
      stream_cache_mb = std::stoll(argv[++i]);
    } else if (a == "--epochs" && i + 1 < argc) {
      epochs = std::max(1, std::stoi(argv[++i]));
    } else if (a == "--cifar") {
      cifar = true;
    } else if (a == "--augment") {
      augment = true;
    } else if (!a.empty() && a[0] != '-') {
      path = a;
      given = true;
    } else {
      std::fprintf(stderr, "loader_bench: unknown argument %s (see --help)\n", a.c_str());
      return 2;
    }
  }
  if (!given && cifar) path = "/tmp/lockstep-bench-cifar.h5";
  const int64_t gh = cifar ? 32 : 28, gw = gh, gc = cifar ? 3 : 1, gd = gh * gw * gc;
  if (!given && !std::filesystem::exists(path)) {
    RawDataset ds;
    ds.name = "bench";
    for (int k = 0; k < 10; ++k) ds.class_names.push_back(std::to_string(k));
    auto fill = [&](RawSplit& s, int64_t n) {
      s.n = n, s.h = gh, s.w = gw, s.c = gc;
      s.x.resize(n * gd);
      s.y.resize(n);
      uint32_t v = 12345;
      for (auto& p : s.x) {
        v = v * 1664525u + 1013904223u;
        p = static_cast<uint8_t>((v >> 24) & 0xF0);  // compressible-ish, like real images
      }
      for (int64_t i = 0; i < n; ++i) s.y[i] = static_cast<int32_t>(i % 10);
    };
    fill(ds.train, cifar ? 50000 : 60000);
    fill(ds.test, 10000);
    write_dataset_file(ds, path);
  }
  std::printf("file %s, stream cache %ld MiB\n%-8s %-11s %6s %5s %14s %10s\n", path.c_str(),
              static_cast<long>(stream_cache_mb), "mode", "augment", "batch", "ranks", "samples/s", "steps");
  std::vector<bool> augment_rows = {false};
  if (augment) augment_rows.push_back(true);
  for (CacheMode mode : {CacheMode::Memory, CacheMode::Stream}) {
    DataConfig c;
    c.path = path;
    c.validation = {ValidationSpec::Kind::First, 5000, 0};
    c.scale = 255;
    c.standardize = cifar ? Standardize::PerChannel : Standardize::PerPixel;
    c.cache = mode;
    c.stream_cache_mb = stream_cache_mb;
    if (augment) {
      AugmentSpec a;
      a.crop_padding = 4;
      a.horizontal_flip = true;
      c.augment = a;
    }
    Dataset ds = open_dataset(c);
    for (int64_t batch : {32, 256}) {
      for (int world : {1, 4}) {
        for (bool aug : augment_rows) {
          ShardedLoader loader(ds.train, batch, 0, world, 42, true, LastBatch::Keep, 4,
                               aug ? Augment::On : Augment::Off);
          double best = 0;
          int64_t steps = 0;
          for (int epoch = 0; epoch < epochs; ++epoch) {  // epoch 0 warms the chunk cache when streaming
            loader.start_epoch(epoch);
            Batch b;
            int64_t samples = 0;
            double sink = 0;
            steps = 0;
            auto t0 = std::chrono::steady_clock::now();
            while (loader.next(b)) {
              samples += b.local_count;
              if (b.local_count) sink += b.x.data()[0];
              ++steps;
            }
            double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            best = std::max(best, samples / s);
            if (sink == 12345.678) std::printf(" ");
          }
          StreamStats st = ds.train->stream_stats();
          std::printf("%-8s %-11s %6ld %5d %14.0f %10ld", cache_mode_name(mode), aug ? "crop4+flip" : "none",
                      static_cast<long>(batch), world, best, static_cast<long>(steps));
          if (mode == CacheMode::Stream)
            std::printf("   (blocks of %ld rows so far: %ld decoded here, %ld via H5Dread, %ld cache hits)",
                        static_cast<long>(st.block_rows), static_cast<long>(st.raw_blocks),
                        static_cast<long>(st.hdf5_blocks), static_cast<long>(st.cache_hits));
          std::printf("\n");
        }
      }
    }
  }
  if (cifar)
    std::printf("training step (ResNet-20 on CIFAR-10, 2 cores): a few hundred samples/s; target loader >= 10x that\n");
  else
    std::printf("training step (Fashion-MNIST MLP, batch 32, 2 threads): ~90000 samples/s; target loader >= 900000\n");
  return 0;
}
