// comm_allreduce_bench: lockstep's gradient all-reduce against a bare MPI_Allreduce of the same size.
//
//   mpirun --allow-run-as-root --timeout 120 -np 2 build/tests/comm/comm_allreduce_bench [--reps 7] [--min-ms 40]
//
// Per size (266,610 floats = the MLP's gradient; 500,210; 1,256,410) and path:
//   mpi       MPI_Allreduce(MPI_IN_PLACE, SUM, float) on MPI_COMM_WORLD (the reference, as in
//             /work/shared/bench/limits/allreduce_bench.c)
//   ls-one    Communicator::all_reduce of the whole buffer (one collective, polled wait)
//   ls-bucket GradientBucketer with default buckets over layer-like segments: mark_ready per segment
//             in backward order, then finish()
//   ls-spin   ls-bucket with a pure-spin wait policy (to price the sleep/yield back-off)
//   ls-concur ls-bucket with every ready bucket in flight at once (BucketOptions::one_in_flight off)
//   mpi-bucket MPI_Allreduce over ls-bucket's buckets, one after another (the reference for ls-bucket)
//   sh-one    Communicator::all_reduce of the whole buffer in the communicator's reduction buffer
//             (allocate_reduction_buffer: shared memory with every rank on one node)
//   sh-bucket ls-bucket over the reduction buffer: the trainer's path on one node (UpdateStep places the
//             gradients there); every ready bucket is launched at once and reduced in launch order
//   skew      rank 0 busy for 1/5/20 ms before ls-bucket: back-off vs pure spin when waits are long
// Methodology as in BASELINE.md §8: 2 warm-up calls; each repetition is barrier + k calls lasting
// >= --min-ms, timed by the slowest rank; median and best over --reps, the paths interleaved. busbw = bytes/t * 2(p-1)/p.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/gradient_bucketer.h"
#include "comm/mpi_communicator.h"

using namespace lockstep;
using namespace lockstep::comm;

namespace {

struct Timing {
  double median = 0, best = 0;  // seconds per call
};

// The paths are timed interleaved (rep 1 of every path, then rep 2, ...) so that load from other
// processes on this shared machine hits them alike.
std::vector<Timing> time_interleaved(const std::vector<std::function<void()>>& fns, int reps, double min_ms) {
  std::vector<long> k(fns.size());
  for (size_t f = 0; f < fns.size(); ++f) {
    fns[f]();
    fns[f]();
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    fns[f]();
    double t = MPI_Wtime() - t0, per = 0;
    MPI_Allreduce(&t, &per, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    k[f] = static_cast<long>(min_ms * 1e-3 / std::max(per, 1e-7)) + 1;
  }
  std::vector<std::vector<double>> v(fns.size(), std::vector<double>(static_cast<size_t>(reps)));
  for (int r = 0; r < reps; ++r)
    for (size_t f = 0; f < fns.size(); ++f) {
      MPI_Barrier(MPI_COMM_WORLD);
      const double t0 = MPI_Wtime();
      for (long i = 0; i < k[f]; ++i) fns[f]();
      const double t = (MPI_Wtime() - t0) / static_cast<double>(k[f]);
      MPI_Allreduce(&t, &v[f][static_cast<size_t>(r)], 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    }
  std::vector<Timing> out;
  for (auto& x : v) {
    std::sort(x.begin(), x.end());
    out.push_back({x[x.size() / 2], x[0]});
  }
  return out;
}

// Layer-like segments: alternating weight/bias pairs shrinking towards the output.
std::vector<GradientSegment> layer_segments(int64_t n) {
  std::vector<GradientSegment> segs;
  const double share[] = {0.70, 0.001, 0.22, 0.001, 0.07, 0.008};
  int64_t off = 0;
  for (size_t i = 0; i < 6; ++i) {
    const int64_t c = i == 5 ? n - off : std::max<int64_t>(1, static_cast<int64_t>(share[i] * static_cast<double>(n)));
    segs.push_back({off, c});
    off += c;
  }
  return segs;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 7;
  double min_ms = 40;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--min-ms")) min_ms = std::atof(argv[i + 1]);
  }
  auto comm = make_communicator(CommKind::Mpi);  // initialises MPI
  const int p = comm->size(), rank = comm->rank();
  const WaitPolicy def = wait_policy();
  WaitPolicy spin;
  spin.spin = std::chrono::hours(1);

  if (rank == 0)
    std::printf("ranks=%d threads_per_rank=%d  (lat_us / busbw GB/s; ratio = busbw vs mpi)\n", p,
                default_threads_per_rank(*comm));
  for (int64_t n : {int64_t{266610}, int64_t{500210}, int64_t{1256410}}) {
    Tensor arena = Tensor::full({n}, 1.0);
    float* a = arena.data();
    const double bytes = static_cast<double>(n) * 4;
    auto report = [&](const char* name, Timing t, Timing ref) {
      auto busbw = [&](double sec) { return bytes / sec * 2.0 * (p - 1) / p / 1e9; };
      if (rank == 0)
        std::printf("floats=%-8lld path=%-10s median lat_us=%8.1f busbw=%6.2f ratio=%.2f | best lat_us=%8.1f "
                    "busbw=%6.2f ratio=%.2f\n",
                    static_cast<long long>(n), name, t.median * 1e6, busbw(t.median), ref.median / t.median,
                    t.best * 1e6, busbw(t.best), ref.best / t.best);
    };
    GradientBucketer bucketer(*comm, arena, layer_segments(n));
    BucketOptions all_at_once;
    all_at_once.one_in_flight = false;
    GradientBucketer concurrent(*comm, arena, layer_segments(n), all_at_once);
    auto run_buckets = [](GradientBucketer& b) {
      for (int s = static_cast<int>(b.segments().size()) - 1; s >= 0; --s) b.mark_ready(s);
      b.finish();
    };
    auto bucketed = [&] { run_buckets(bucketer); };
    auto with_spin = [&] {
      set_wait_policy(spin);
      bucketed();
      set_wait_policy(def);
    };
    // The reference for the bucketed path: bare MPI_Allreduce over the same buckets, one after another.
    auto mpi_buckets = [&] {
      for (const auto& b : bucketer.buckets())
        MPI_Allreduce(MPI_IN_PLACE, a + b.offset, static_cast<int>(b.count), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    };
    // The reduction buffer (collective; undefined with LOCKSTEP_SHARED_ALLREDUCE=0 or over several nodes).
    Tensor shared = comm->allocate_reduction_buffer(n, DType::F32, Device::CPU);
    std::unique_ptr<GradientBucketer> shared_bucketer;
    std::vector<std::function<void()>> paths = {
        [&] { MPI_Allreduce(MPI_IN_PLACE, a, static_cast<int>(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); },
        [&] { comm->all_reduce(arena); }, bucketed, with_spin, mpi_buckets, [&] { run_buckets(concurrent); }};
    if (shared.defined()) {
      shared.copy_from(arena);
      shared_bucketer = std::make_unique<GradientBucketer>(*comm, shared, layer_segments(n));
      paths.push_back([&] { comm->all_reduce(shared); });
      paths.push_back([&] { run_buckets(*shared_bucketer); });
    }
    const std::vector<Timing> t = time_interleaved(paths, reps, min_ms);
    report("mpi", t[0], t[0]);
    report("ls-one", t[1], t[0]);
    report("ls-bucket", t[2], t[0]);
    report("ls-spin", t[3], t[0]);
    report("mpi-bucket", t[4], t[0]);
    report("ls-concur", t[5], t[0]);
    if (shared.defined()) {
      report("sh-one", t[6], t[0]);
      report("sh-bucket", t[7], t[0]);
    } else if (rank == 0) {
      std::printf("  (no reduction buffer in shared memory here: sh-one and sh-bucket not measured)\n");
    }
    if (rank == 0)
      std::printf("  (%zu buckets; ls-bucket against mpi-bucket: median %.2f, best %.2f)\n", bucketer.buckets().size(),
                  t[4].median / t[2].median, t[4].best / t[2].best);
    // Skewed arrival: rank 0 computes for `skew` before joining, so the others wait past the spin
    // phase into yield/sleep. The difference to pure spin is the back-off's latency cost.
    if (n == 266610) {
      for (int skew_us : {1000, 5000, 20000}) {
        auto busy_then_reduce = [&] {
          if (rank == 0) {
            const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(skew_us);
            while (std::chrono::steady_clock::now() < until) {
            }
          }
          bucketed();
        };
        auto busy_then_reduce_spin = [&] {
          set_wait_policy(spin);
          busy_then_reduce();
          set_wait_policy(def);
        };
        const std::vector<Timing> ts = time_interleaved({busy_then_reduce, busy_then_reduce_spin}, reps, min_ms);
        if (rank == 0)
          std::printf("floats=%-8lld skew_us=%-6d back-off lat_us=%9.1f  pure-spin lat_us=%9.1f  cost=%+.1f us "
                      "(best: %+.1f us)\n",
                      static_cast<long long>(n), skew_us, ts[0].median * 1e6, ts[1].median * 1e6,
                      (ts[0].median - ts[1].median) * 1e6, (ts[0].best - ts[1].best) * 1e6);
      }
    }
    // Keep the values bounded (they double every SUM).
    std::fill(a, a + n, 1.0f);
  }
  return 0;
}
