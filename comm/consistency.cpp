#include "comm/consistency.h"

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <vector>

namespace lockstep::comm {
namespace {

std::string hex(uint64_t h) {
  char s[24];
  std::snprintf(s, sizeof s, "%016" PRIx64, h);
  return s;
}

// Every rank's value, via one all_gather.
std::vector<int64_t> gather_hashes(Communicator& comm, uint64_t mine) {
  std::vector<int64_t> all(static_cast<size_t>(comm.size()));
  const int64_t v = static_cast<int64_t>(mine);
  comm.all_gather(std::span<const int64_t>(&v, 1), std::span<int64_t>(all));
  return all;
}

// The ranks whose hash differs from rank 0's, as "1, 3" (at most 8 listed), and how many.
std::string differing_ranks(const std::vector<int64_t>& all, int* count, int* first) {
  std::string out;
  *count = 0;
  *first = -1;
  for (size_t r = 1; r < all.size(); ++r) {
    if (all[r] == all[0]) continue;
    if (*first < 0) *first = static_cast<int>(r);
    if (++*count <= 8) out += (out.empty() ? "" : ", ") + std::to_string(r);
  }
  if (*count > 8) out += str_cat(" and ", *count - 8, " more");
  return out;
}

uint64_t mix_words(const unsigned char* p, size_t n) {
  // 64-bit multiply-xorshift over 8-byte words (a simplified wyhash/xxh64-style mix), then the tail.
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h ^= w * 0xC2B2AE3D27D4EB4Full;
    h = ((h << 31) | (h >> 33)) * 0x9E3779B97F4A7C15ull;
  }
  for (; i < n; ++i) h = (h ^ p[i]) * 0x100000001B3ull;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h;
}

}  // namespace

uint64_t fnv1a64(std::string_view bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

void check_same_on_all_ranks(Communicator& comm, const std::string& what, const std::string& value_or_hash) {
  const uint64_t mine = fnv1a64(value_or_hash);
  const std::vector<int64_t> all = gather_hashes(comm, mine);
  int count = 0, first = -1;
  const std::string ranks = differing_ranks(all, &count, &first);
  if (count == 0) return;
  throw CommError(str_cat(
      "rank ", comm.rank(), ": ranks launched with different run files or seeds: '", what, "' on rank",
      count > 1 ? "s " : " ", ranks, " (hash ", hex(static_cast<uint64_t>(all[static_cast<size_t>(first)])),
      ") differs from rank 0 (hash ", hex(static_cast<uint64_t>(all[0])), ")",
      comm.rank() == first ? str_cat("; this rank has '", what, "' = '", value_or_hash.substr(0, 200), "'") : "",
      ". Launch every rank with the same run file, seed and options"));
}

uint64_t checksum(std::span<const float> values) {
  return mix_words(reinterpret_cast<const unsigned char*>(values.data()), values.size_bytes());
}
uint64_t checksum(std::span<const double> values) {
  return mix_words(reinterpret_cast<const unsigned char*>(values.data()), values.size_bytes());
}

uint64_t checksum(const Tensor& t) {
  if (t.numel() == 0) return mix_words(nullptr, 0);
  const Tensor host = t.device() == Device::CPU ? t : t.to(Device::CPU);
  return mix_words(static_cast<const unsigned char*>(host.raw()),
                   static_cast<size_t>(host.numel() * dtype_size(host.dtype())));
}

void check_replicas_identical(Communicator& comm, std::span<const float> params, int64_t step) {
  const std::vector<int64_t> all = gather_hashes(comm, checksum(params));
  int count = 0, first = -1;
  const std::string ranks = differing_ranks(all, &count, &first);
  if (count == 0) return;
  throw CommError(str_cat("rank ", comm.rank(), ": replicas diverged at step ", step, ": the parameters (",
                          params.size(), " floats) on rank", count > 1 ? "s " : " ", ranks,
                          " differ from rank 0's (checksum ", hex(static_cast<uint64_t>(all[static_cast<size_t>(first)])),
                          " on rank ", first, " vs ", hex(static_cast<uint64_t>(all[0])),
                          "); first differing rank: ", first,
                          ". Causes: a non-deterministic kernel, a missed gradient all-reduce, or a rank restored "
                          "from a different checkpoint"));
}

}  // namespace lockstep::comm
