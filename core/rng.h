// Counter-based random numbers (Philox4x32-10, Salmon et al., SC'11).
//
// Every random draw in lockstep is a pure function of (seed, stream, index): initializers, dropout
// masks, RReLU slopes and data shuffling. So results do not depend on thread count, launch
// configuration or device, and a resumed run replays exactly the numbers the uninterrupted one drew:
// the only "RNG state" to checkpoint is the seed and the step counter the streams are derived from.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define LS_HD __host__ __device__ __forceinline__
#else
#define LS_HD inline
#endif

namespace lockstep::rng {

LS_HD std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> ctr, std::array<uint32_t, 2> key) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = static_cast<uint64_t>(kM0) * ctr[0];
    uint64_t p1 = static_cast<uint64_t>(kM1) * ctr[2];
    uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    ctr = {hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0};
    key[0] += kW0;
    key[1] += kW1;
  }
  return ctr;
}

// A stream of random numbers: (seed, stream) selects it, `index` addresses a block of 4 words.
struct Stream {
  uint64_t seed = 0;
  uint64_t stream = 0;

  LS_HD std::array<uint32_t, 4> block(uint64_t index, uint32_t attempt = 0) const {
    return philox4x32({static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), attempt,
                       static_cast<uint32_t>(stream)},
                      {static_cast<uint32_t>(seed) ^ static_cast<uint32_t>(stream >> 32),
                       static_cast<uint32_t>(seed >> 32)});
  }
  // Uniform in [0, 1) with 24 random bits (exactly representable in float).
  LS_HD static float to_unit(uint32_t w) { return static_cast<float>(w >> 8) * (1.0f / 16777216.0f); }
  // Uniform in [0, 1) with 53 random bits.
  LS_HD static double to_unit_double(uint32_t a, uint32_t b) {
    uint64_t v = (static_cast<uint64_t>(a) << 21) ^ static_cast<uint64_t>(b >> 11);
    return static_cast<double>(v & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
  }
  // Element i's uniform in [0, 1).
  LS_HD float uniform(uint64_t i) const { return to_unit(block(i >> 2)[i & 3]); }
  LS_HD double uniform_double(uint64_t i, uint32_t attempt = 0) const {
    auto b = block(i, attempt);
    return to_unit_double(b[0], b[1]);
  }
  // Element i's standard normal (Box-Muller on two 53-bit uniforms); `attempt` gives fresh draws.
  LS_HD double normal(uint64_t i, uint32_t attempt = 0) const {
    auto b = block(i, attempt);
    double u1 = to_unit_double(b[0], b[1]);
    double u2 = to_unit_double(b[2], b[3]);
    double r = std::sqrt(-2.0 * std::log(1.0 - u1));  // 1-u1 in (0, 1]
    return r * std::cos(6.283185307179586476925 * u2);
  }
  // Element i's normal truncated to [-2, 2] by redrawing (as Keras's truncated_normal).
  LS_HD double truncated_normal(uint64_t i) const {
    for (uint32_t attempt = 0;; ++attempt) {
      double z = normal(i, attempt);
      if (z >= -2.0 && z <= 2.0) return z;
    }
  }
};

// Mix several integers into one stream id (splitmix64 finaliser).
LS_HD uint64_t mix(uint64_t a, uint64_t b) {
  uint64_t z = a * 0x9E3779B97F4A7C15ull + b + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace lockstep::rng
