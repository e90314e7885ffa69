// Loader throughput: samples/s delivered to the training loop by ShardedLoader, at batch 32 and 256,
// for 1 and 4 simulated ranks (rank 0's loader; each rank is its own process in a real run),
// in-memory and streaming, on a Fashion-MNIST-sized file (60,000 x 28x28 uint8, generated) with
// per-pixel standardization. The consumer only touches each batch, so this is the loader's ceiling.
// Target: >= 10x the Fashion-MNIST MLP's training step rate (~80,000 samples/s at 1 thread).
//
//   build/tests/bench/loader_bench [FILE.h5]   (default: generates /tmp/lockstep-bench-fmnist.h5)
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>

#include "data/dataset.h"
#include "data/loader.h"

using namespace lockstep;
using namespace lockstep::data;

int main(int argc, char** argv) {
  std::string path = argc > 1 ? argv[1] : "/tmp/lockstep-bench-fmnist.h5";
  if (argc <= 1 && !std::filesystem::exists(path)) {
    RawDataset ds;
    ds.name = "bench";
    for (int k = 0; k < 10; ++k) ds.class_names.push_back(std::to_string(k));
    auto fill = [](RawSplit& s, int64_t n) {
      s.n = n, s.h = 28, s.w = 28, s.c = 1;
      s.x.resize(n * 784);
      s.y.resize(n);
      uint32_t v = 12345;
      for (auto& p : s.x) {
        v = v * 1664525u + 1013904223u;
        p = static_cast<uint8_t>((v >> 24) & 0xF0);  // compressible-ish, like real images
      }
      for (int64_t i = 0; i < n; ++i) s.y[i] = static_cast<int32_t>(i % 10);
    };
    fill(ds.train, 60000);
    fill(ds.test, 10000);
    write_dataset_file(ds, path);
  }
  std::printf("file %s\n%-8s %6s %5s %14s %10s\n", path.c_str(), "mode", "batch", "ranks", "samples/s", "steps");
  for (CacheMode mode : {CacheMode::Memory, CacheMode::Stream}) {
    DataConfig c;
    c.path = path;
    c.validation = {ValidationSpec::Kind::First, 5000, 0};
    c.scale = 255;
    c.standardize = Standardize::PerPixel;
    c.cache = mode;
    Dataset ds = open_dataset(c);
    for (int64_t batch : {32, 256}) {
      for (int world : {1, 4}) {
        ShardedLoader loader(ds.train, batch, 0, world, 42, true, LastBatch::Keep, 4);
        double best = 0;
        int64_t steps = 0;
        for (int epoch = 0; epoch < 3; ++epoch) {  // epoch 0 warms the chunk cache when streaming
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
        std::printf("%-8s %6ld %5d %14.0f %10ld\n", cache_mode_name(mode), static_cast<long>(batch), world, best,
                    static_cast<long>(steps));
      }
    }
  }
  std::printf("training step (Fashion-MNIST MLP, 1 thread): ~80000 samples/s; target loader >= 800000\n");
  return 0;
}
