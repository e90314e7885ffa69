// link_probe: the link parameters of the scaling model (core/scaling.h, docs/scaling.md), measured
// through lockstep's own all-reduce between ranks on different hosts (one rank per host):
//
//   mpirun -np 2 --host node0,node1 link_probe [--reps 9] [--min-ms 60] [--compression none|bf16|fp16] [--gap-us 0]
//              [--work-us 100]
//
// The buffer is the communicator's reduction buffer (allocate_reduction_buffer), so with one rank per
// node every all-reduce of a slice is the hierarchical path's inter-node stage alone: a ring over the
// nodes at any size (comm/mpi_communicator.cpp's RingAllReduceWork, 16-bit words with --compression).
// Without a reduction buffer (LOCKSTEP_SHARED_ALLREDUCE=0) it times Communicator::all_reduce of a plain
// buffer instead (the flat ring from 64 KiB, MPI_Iallreduce below). The path is printed.
// For 2 ranks the ring is 2 steps of s/2 bytes each way (x 1/2 compressed), so an all-reduce of s
// bytes takes t(s) = 2 alpha + s w / B. Per size (256 B .. 16 MiB of float32) it prints the median and
// best time over --reps repetitions (each: barrier, then k calls lasting >= --min-ms, timed by the
// slowest rank; --gap-us G: each call after G us of idle link, as in a training step, the calls
// alone timed), then alpha_us = half the median at 256 B (per ring step: latency, no bytes to speak
// of) and payload_gbit = the least-squares slope over 64 KiB .. 16 MiB (B, Gbit/s of payload on the
// wire). Then the trainer's pattern: 32 buckets of 4 KiB and of 40 KiB (model d's size) launched by a
// GradientBucketer (every one ready at once, then finish()), per bucket: bucket_us, and
// alpha_eff_us = what one ring step costs there beyond its bytes at B, with 2 buckets in flight
// (bucket_us = 2 alpha_eff + 2 (s/2)/B when the second bucket's steps wait for the first's).
// Last, what the all-reduce takes from the compute it overlaps (one CPU per host, as the simulated
// hosts have): 32 buckets made ready one by one, each after a fixed piece of work (a float loop that
// takes --work-us alone), as the backward pass makes them ready; stolen_us = (the marks phase's wall
// time - 32 x the work alone) / 32 per bucket, finish_us what is left after it; for 4 KiB buckets that
// is the CPU cost of a bucket's 2 ring steps beyond their bytes. Rank 0 prints key=value lines.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <thread>
#include <vector>

#include "comm/communicator.h"
#include "comm/gradient_bucketer.h"
#include "core/tensor.h"

using namespace lockstep;

namespace {
double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
}  // namespace

int main(int argc, char** argv) {
  int reps = 9, gap_us = 0, work_us = 100;
  double min_ms = 60;
  comm::ReductionOptions options;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--reps")) reps = std::max(1, std::atoi(argv[i + 1]));
    else if (!std::strcmp(argv[i], "--min-ms")) min_ms = std::atof(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--compression")) options.compression = comm::parse_compression(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--gap-us")) gap_us = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--work-us")) work_us = std::max(1, std::atoi(argv[i + 1]));
    else {
      std::fprintf(stderr, "unknown option %s (expected --reps N, --min-ms MS, --compression none|bf16|fp16, --gap-us US, --work-us US)\n",
                   argv[i]);
      return 2;
    }
  }
  auto comm = comm::make_communicator(comm::CommKind::Mpi);
  const int p = comm->size(), rank = comm->rank();
  const int64_t max_bytes = int64_t{16} << 20;
  Tensor arena = comm->allocate_reduction_buffer(max_bytes / 4, DType::F32, Device::CPU, options);
  const bool hierarchical = arena.defined();
  if (!hierarchical) arena = Tensor::full({max_bytes / 4}, 1e-3);
  if (rank == 0)
    std::printf("path=%s compression=%s\n",
                hierarchical ? ("\"" + comm->describe_reduction(arena) + "\"").c_str() : "\"plain buffer (flat ring)\"",
                comm::compression_name(options.compression));
  auto slowest = [&](double t) {
    comm->all_reduce(std::span<double>(&t, 1), comm::ReduceOp::Max);
    return t;
  };
  const double wire = options.compression == comm::Compression::None || !hierarchical ? 1.0 : 0.5;
  std::vector<double> xs, ys;
  double alpha = 0.0;
  for (int64_t bytes : {int64_t{256}, int64_t{4} << 10, int64_t{64} << 10, int64_t{256} << 10, int64_t{1} << 20,
                        int64_t{4} << 20, max_bytes}) {
    Tensor buf = arena.view(0, {bytes / 4});
    std::fill(buf.data(), buf.data() + buf.numel(), 1e-3f);
    for (int i = 0; i < 3; ++i) comm->all_reduce(buf);
    comm->barrier();
    double t0 = now();
    comm->all_reduce(buf);
    const long k = long(min_ms * 1e-3 / std::max(slowest(now() - t0), 1e-7)) + 1;
    std::vector<double> t;
    for (int r = 0; r < reps; ++r) {
      comm->barrier();
      t0 = now();
      if (gap_us <= 0) {
        for (long i = 0; i < k; ++i) comm->all_reduce(buf);
        t.push_back(slowest((now() - t0) / double(k)));
      } else {  // an idle link before each call (a shaper's tokens refill), the calls alone timed
        double sum = 0.0;
        for (long i = 0; i < k; ++i) {
          std::this_thread::sleep_for(std::chrono::microseconds(gap_us));
          const double t1 = now();
          comm->all_reduce(buf);
          sum += now() - t1;
        }
        t.push_back(slowest(sum / double(k)));
      }
      std::fill(buf.data(), buf.data() + buf.numel(), 1e-3f);
    }
    std::sort(t.begin(), t.end());
    const double med = t[t.size() / 2];
    if (bytes == 256) alpha = med / (2.0 * (p - 1));
    if (bytes >= (int64_t{64} << 10)) xs.push_back(double(bytes)), ys.push_back(med);
    if (rank == 0)
      std::printf("ranks=%d bytes=%lld median_us=%.1f best_us=%.1f payload_gbit=%.3f\n", p,
                  static_cast<long long>(bytes), med * 1e6, t.front() * 1e6,
                  double(bytes) * 2.0 * (p - 1) / p / med * 8e-9 * wire);
  }
  // t = a + b s: b = 2(p-1)/p w / B.
  const double n = double(xs.size());
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < xs.size(); ++i) sx += xs[i], sy += ys[i], sxx += xs[i] * xs[i], sxy += xs[i] * ys[i];
  const double b = (n * sxy - sx * sy) / (n * sxx - sx * sx), a = (sy - b * sx) / n;
  const double payload = 2.0 * (p - 1) / p * wire / b;  // bytes/s on the wire (16-bit words when compressed)
  if (rank == 0)
    std::printf("fit ranks=%d alpha_us=%.1f payload_gbit=%.3f intercept_us=%.1f\n", p, alpha * 1e6, payload * 8e-9,
                a * 1e6);
  // The trainer's pattern: many small buckets back to back through the bucketer.
  for (int64_t bucket_bytes : {int64_t{4} << 10, int64_t{40} << 10}) {
    const int nb = 32;
    std::vector<comm::GradientSegment> segs;
    for (int i = 0; i < nb; ++i) segs.push_back({int64_t(i) * bucket_bytes / 4, bucket_bytes / 4, i});
    comm::BucketOptions opts;
    opts.first_bucket_bytes = opts.bucket_cap_bytes = bucket_bytes;
    Tensor slice = arena.view(0, {int64_t(nb) * bucket_bytes / 4});
    comm::GradientBucketer bucketer(*comm, slice, segs, opts);
    auto once = [&] {
      for (int i = nb - 1; i >= 0; --i) bucketer.mark_ready(i);
      bucketer.finish();
    };
    for (int i = 0; i < 3; ++i) once();
    std::vector<double> t;
    for (int r = 0; r < reps; ++r) {
      std::fill(slice.data(), slice.data() + slice.numel(), 1e-3f);
      comm->barrier();
      const double t0 = now();
      int k = 0;
      do {
        once();
        ++k;
      } while (now() - t0 < min_ms * 1e-3);
      t.push_back(slowest((now() - t0) / double(k * nb)));
    }
    std::sort(t.begin(), t.end());
    const double med = t[t.size() / 2];
    const double bytes_time = double(bucket_bytes) * wire / payload;  // 2 steps of s/2 (x w)
    if (rank == 0)
      std::printf("buckets=%d bucket_bytes=%lld bucket_us=%.1f best_us=%.1f alpha_eff_us=%.1f\n", nb,
                  static_cast<long long>(bucket_bytes), med * 1e6, t.front() * 1e6, (med - bytes_time) / 2.0 * 1e6);
  }
  // Compute with buckets made ready in between: a fixed amount of float work per bucket.
  std::vector<float> v(4096, 1.0f);
  auto work = [&](long n) {
    float acc = 0.0f;
    for (long i = 0; i < n; ++i)
      for (size_t j = 0; j < v.size(); ++j) acc += v[j] * 1.0001f, v[j] = acc * 1e-7f + 1.0f;
    return acc;
  };
  volatile float sink = 0.0f;
  long loops = 1;  // loops of `work` that take work_us alone
  for (;;) {
    const double t0 = now();
    sink = sink + work(loops);
    if (now() - t0 > work_us * 1e-6 || loops > (1L << 30)) {
      loops = std::max(1L, long(double(loops) * work_us * 1e-6 / (now() - t0)));
      break;
    }
    loops *= 2;
  }
  for (int64_t bucket_bytes : {int64_t{4} << 10, int64_t{40} << 10}) {
    const int nb = 32;
    std::vector<comm::GradientSegment> segs;
    for (int i = 0; i < nb; ++i) segs.push_back({int64_t(i) * bucket_bytes / 4, bucket_bytes / 4, i});
    comm::BucketOptions opts;
    opts.first_bucket_bytes = opts.bucket_cap_bytes = bucket_bytes;
    Tensor slice = arena.view(0, {int64_t(nb) * bucket_bytes / 4});
    comm::GradientBucketer bucketer(*comm, slice, segs, opts);
    std::vector<double> alone, marks, fin;
    for (int r = 0; r < reps + 2; ++r) {
      std::fill(slice.data(), slice.data() + slice.numel(), 1e-3f);
      comm->barrier();
      double t0 = now();
      for (int i = 0; i < nb; ++i) sink = sink + work(loops);
      const double a = now() - t0;
      comm->barrier();
      t0 = now();
      for (int i = nb - 1; i >= 0; --i) {
        sink = sink + work(loops);
        bucketer.mark_ready(i);
      }
      const double m = now() - t0;
      t0 = now();
      bucketer.finish();
      const double f = now() - t0;
      if (r >= 2) alone.push_back(slowest(a)), marks.push_back(slowest(m)), fin.push_back(slowest(f));
    }
    auto med = [](std::vector<double> x) {
      std::sort(x.begin(), x.end());
      return x[x.size() / 2];
    };
    if (rank == 0)
      std::printf("overlap buckets=%d bucket_bytes=%lld work_us=%.1f stolen_us=%.1f finish_us=%.1f\n", nb,
                  static_cast<long long>(bucket_bytes), med(alone) / nb * 1e6, (med(marks) - med(alone)) / nb * 1e6,
                  med(fin) * 1e6);
  }
  return 0;
}
