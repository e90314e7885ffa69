// Clocks and the median of the per-layer benchmarks (conv_gemm_bench, conv_onednn_bench).
#pragma once

#include <time.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace lockstep::bench {

inline double seconds_of(clockid_t clock) {
  timespec ts;
  clock_gettime(clock, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}
// CPU seconds of the calling thread: a 1-thread kernel's time on a shared machine.
inline double cpu_now() { return seconds_of(CLOCK_THREAD_CPUTIME_ID); }
inline double wall_now() { return seconds_of(CLOCK_MONOTONIC); }
// The upper median (NaN for no values).
inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? NAN : v[v.size() / 2];
}

}  // namespace lockstep::bench
