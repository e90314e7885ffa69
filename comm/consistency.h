// Making disagreement between ranks visible instead of a hang or a silent divergence (style habit 12).
//
// Both checks are collectives (they follow the ordering contract of communicator.h) and both use one
// all_gather of 64-bit hashes, so every rank sees every rank's hash, reaches the same verdict, and
// throws the same CommError naming the differing ranks: nobody is left waiting in a later collective.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "comm/communicator.h"

namespace lockstep::comm {

// 64-bit FNV-1a of a byte string: stable across runs, compilers and machines (std::hash is not).
uint64_t fnv1a64(std::string_view bytes);

// Start-up check: every rank passes its own `value_or_hash` for the field `what` (the resolved config
// text, the world size, the parameter count, a seed...). Strings are hashed with fnv1a64. If any rank
// differs from rank 0, every rank throws CommError:
//   "ranks launched with different run files or seeds: 'config' on rank 1 (hash ...) differs from
//    rank 0 (hash ...)".
void check_same_on_all_ranks(Communicator& comm, const std::string& what, const std::string& value_or_hash);

// A checksum of a float array's exact bits (not its values: -0.0 and 0.0 differ), 8 bytes at a time;
// ~1 ms per 4 MB. Replicas that ran the same steps on the same data have equal checksums.
uint64_t checksum(std::span<const float> values);
uint64_t checksum(std::span<const double> values);
// Any tensor (a CUDA tensor is copied to the host first).
uint64_t checksum(const Tensor& t);

// Replica-desync check (every N steps, or after a restore): compares checksum(params) across ranks
// and, if they differ, throws CommError on every rank naming the step and the first rank that differs
// from rank 0.
void check_replicas_identical(Communicator& comm, std::span<const float> params, int64_t step);

}  // namespace lockstep::comm
