#include "core/scaling.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <limits>

#include "core/error.h"

namespace lockstep::scaling {

namespace {
// "25gbit" -> 25 and "gbit" (the unit lower-cased); false unless it starts with a decimal number.
bool split_number_unit(const std::string& text, double* value, std::string* unit) {
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
  if (i == 0) return false;
  try {
    size_t used = 0;
    *value = std::stod(text.substr(0, i), &used);
    if (used != i) return false;
  } catch (const std::exception&) {
    return false;
  }
  unit->clear();
  for (size_t k = i; k < text.size(); ++k) *unit += char(std::tolower(static_cast<unsigned char>(text[k])));
  return true;
}
}  // namespace

double parse_link_rate(const std::string& text, const std::string& flag) {
  auto bad = [&]() -> double {
    throw UserError(str_cat(flag, ": expected a link rate such as 25gbit, 10gbit, 2.5gbit or 100mbit (a positive number, "
                            "then bit, kbit, mbit, gbit or tbit: bits per second, as tc writes rates), got '",
                            text, "'"));
  };
  double value = 0.0;
  std::string unit;
  if (!split_number_unit(text, &value, &unit)) return bad();
  if (unit.size() > 2 && unit.compare(unit.size() - 2, 2, "/s") == 0) unit.resize(unit.size() - 2);  // "25gbit/s"
  double scale = 0.0;
  if (unit == "bit") scale = 1.0;
  else if (unit == "kbit") scale = 1e3;
  else if (unit == "mbit") scale = 1e6;
  else if (unit == "gbit") scale = 1e9;
  else if (unit == "tbit") scale = 1e12;
  else return bad();
  if (!(value > 0.0) || !std::isfinite(value)) return bad();
  return value * scale;
}

double parse_size_bytes(const std::string& text, const std::string& flag) {
  auto bad = [&]() -> double {
    throw UserError(str_cat(flag, ": expected a size such as 640kb, 1mb or 4096 (bytes; b, kb, mb or gb as tc writes "
                            "them, 1024-based), got '", text, "'"));
  };
  double value = 0.0;
  std::string unit;
  if (!split_number_unit(text, &value, &unit)) return bad();
  const double scale = unit.empty() || unit == "b" ? 1.0 : unit == "kb" || unit == "k" ? 1024.0
                       : unit == "mb" || unit == "m"                                   ? 1048576.0
                       : unit == "gb" || unit == "g"                                   ? 1073741824.0
                                                                                       : 0.0;
  if (scale == 0.0 || !std::isfinite(value) || value < 0.0) return bad();
  return value * scale;
}

std::string rate_str(double bits_per_s) {
  char s[64];
  if (bits_per_s >= 1e9) std::snprintf(s, sizeof s, "%g Gbit/s", bits_per_s / 1e9);
  else if (bits_per_s >= 1e6) std::snprintf(s, sizeof s, "%g Mbit/s", bits_per_s / 1e6);
  else std::snprintf(s, sizeof s, "%g kbit/s", bits_per_s / 1e3);
  return s;
}

double SharedMemoryCost::per_byte(int ranks_per_node) const {
  if (ranks_per_node <= 1 || per_byte_s.empty()) return 0.0;
  auto hi = per_byte_s.lower_bound(ranks_per_node);
  if (hi == per_byte_s.end()) return std::prev(hi)->second;
  if (hi->first == ranks_per_node || hi == per_byte_s.begin()) return hi->second;
  auto lo = std::prev(hi);
  const double x0 = std::log2(double(lo->first)), x1 = std::log2(double(hi->first)), x = std::log2(double(ranks_per_node));
  return lo->second + (hi->second - lo->second) * (x - x0) / (x1 - x0);
}

double SharedMemoryCost::seconds(double bucket_bytes, int ranks_per_node) const {
  if (ranks_per_node <= 1) return 0.0;
  return alpha_s + bucket_bytes * per_byte(ranks_per_node);
}

double LinkCost::wire_bytes_per_s(double message_bytes) const {
  const double wire = (message_bytes > eager_limit_bytes ? efficiency_large : efficiency) * rate_bits_per_s / 8.0;
  return ceiling_bytes_per_s > 0.0 ? std::min(wire, ceiling_bytes_per_s) : wire;
}

// One rank's message of a ring step: its share / n, on the wire.
static double message_bytes(const CommModel& m, double bucket_bytes, Placement p) {
  return bucket_bytes / (double(p.nodes) * p.ranks_per_node) * m.wire_factor;
}

double ring_step_tcp_cpu_seconds(const CommModel& m, double bucket_bytes, Placement p) {
  const double mine = bucket_bytes / (double(p.nodes) * p.ranks_per_node) * m.wire_factor;  // sent, and received
  return m.link.step_cpu_s + 2.0 * mine * m.link.cpu_s_per_byte;
}

double ring_step_seconds(const CommModel& m, double bucket_bytes, Placement p) {
  const double on_link = bucket_bytes / p.nodes * m.wire_factor;  // the L rings' chunks together
  const double rate = m.link.wire_bytes_per_s(message_bytes(m, bucket_bytes, p));
  return m.link.alpha_s + std::max(on_link / rate, ring_step_tcp_cpu_seconds(m, bucket_bytes, p));
}

double ring_step_cpu_seconds(const CommModel& m, double bucket_bytes, Placement p, int step) {
  const double chunk = bucket_bytes / (double(p.nodes) * p.ranks_per_node);  // this rank's share / n
  const bool scatter = step < p.nodes - 1, compressed = m.wire_factor < 1.0;
  if (!compressed) return scatter ? chunk * m.reduce_s_per_byte : 0.0;
  if (scatter) return chunk * (m.encode_s_per_byte + m.decode_s_per_byte);
  return chunk * (step == p.nodes - 1 ? m.encode_s_per_byte + 2.0 * m.decode_s_per_byte : m.decode_s_per_byte);
}

double allreduce_seconds(const CommModel& m, double bucket_bytes, Placement p) {
  double t = m.shm.seconds(bucket_bytes, p.ranks_per_node);
  if (p.nodes > 1) {
    // Stages 1 and 3 move (L+1)/(2L) + 1/2 of the one-node pass's bytes: a little more.
    const int L = p.ranks_per_node;
    if (L > 1) t += bucket_bytes * m.shm.per_byte(L) / (2.0 * L);
    for (int k = 0; k < 2 * (p.nodes - 1); ++k)
      t += ring_step_seconds(m, bucket_bytes, p) + ring_step_cpu_seconds(m, bucket_bytes, p, k);
  }
  return t;
}

namespace {

// One rank's step, bucket by bucket, as GradientBucketer + SharedReduction (+ the ring) run it.
class StepSimulation {
 public:
  // `link_free` and `tokens`: when the link last sent (from the start of the backward pass, negative:
  // before it) and the shaper's tokens then.
  StepSimulation(const std::vector<BucketSpec>& buckets, const CommModel& m, Placement p, double link_free,
                 double tokens)
      : buckets_(buckets), m_(m), p_(p), across_(p.nodes > 1), steps_(2 * (p.nodes - 1)),
        state_(buckets.size()), link_free_(link_free), tokens_(tokens) {}
  double link_free() const { return link_free_; }
  double tokens() const { return tokens_; }

  // Runs the backward pass with its progress points, then finish(); returns the time (from the
  // start of the backward pass) at which every bucket is complete, and the CPU work inserted.
  double run(const BackwardProfile& prof, double* comm_cpu) {
    double prev = 0.0;
    size_t next_ready = 0;  // buckets are launched in order once ready
    for (size_t j = 0; j < prof.progress_s.size(); ++j) {
      cpu_ += std::max(0.0, prof.progress_s[j] - prev);  // the layer's backward
      prev = std::max(prev, prof.progress_s[j]);
      while (next_ready < buckets_.size() && buckets_[next_ready].ready_at <= int(j)) ++next_ready;
      launched_ = next_ready;
      progress();
    }
    cpu_ += std::max(0.0, prof.backward_s - prev);
    launched_ = buckets_.size();  // finish(): whatever was not marked is launched now
    for (;;) {
      progress();
      if (completed_ == buckets_.size()) break;
      // Wait (continuous progress) for the oldest bucket's next ring step, the only one progress() advances.
      if (completed_ >= summed_ || !across_) break;  // (cannot happen: progress() would have moved)
      cpu_ = std::max(cpu_, state_[completed_].arrival);
    }
    *comm_cpu = inserted_;
    return cpu_;
  }

 private:
  struct State {
    int steps_done = 0;
    double arrival = 0.0;  // when the step in flight has arrived
  };

  void work(double s) {
    cpu_ += s;
    inserted_ += s;
  }
  void post_step(size_t k) {
    const double bytes = buckets_[k].bytes / p_.nodes * m_.wire_factor;
    const double rate = m_.link.wire_bytes_per_s(message_bytes(m_, buckets_[k].bytes, p_));
    const double start = std::max(cpu_, link_free_);
    double tx = bytes / rate;
    if (m_.link.burst_bytes > 0.0) {
      // Token bucket: tokens saved since the link last sent (at the shaped rate, up to the burst) let
      // that many bytes through at the TCP path's own speed (its ceiling) instead of the rate.
      tokens_ = std::min(m_.link.burst_bytes, tokens_ + (start - link_free_) * m_.link.rate_bits_per_s / 8.0);
      const double quick = std::min(bytes, tokens_);
      tx = (m_.link.ceiling_bytes_per_s > 0.0 ? quick / m_.link.ceiling_bytes_per_s : 0.0) + (bytes - quick) / rate;
      tokens_ -= quick;
    }
    link_free_ = start + tx;
    // The TCP path's CPU work for this step runs on the rank's CPU now, beside the bytes on the wire.
    work(ring_step_tcp_cpu_seconds(m_, buckets_[k].bytes, p_));
    state_[k].arrival = std::max(link_free_, cpu_) + m_.link.alpha_s;
  }
  // Advance bucket k's ring as far as the steps that have arrived allow (posting each next step now).
  bool advance_ring(size_t k) {
    bool moved = false;
    State& s = state_[k];
    while (s.steps_done < steps_ && s.arrival <= cpu_) {
      work(ring_step_cpu_seconds(m_, buckets_[k].bytes, p_, s.steps_done));
      ++s.steps_done;
      if (s.steps_done < steps_) post_step(k);
      moved = true;
    }
    return moved;
  }
  // SharedReduction::progress(): stage 1 (+ start of the ring) in launch order, then completions in order.
  void progress() {
    const int L = p_.ranks_per_node;
    const double c = m_.shm.per_byte(L);
    for (bool moved = true; moved;) {
      moved = false;
      while (summed_ < launched_) {
        if (across_ && in_flight_ >= std::max(1, m_.in_flight)) break;
        const double s = buckets_[summed_].bytes;
        if (L > 1) work(across_ ? m_.shm.alpha_s + s * c * (L + 1) / (2.0 * L) : m_.shm.seconds(s, L));
        if (across_) {
          post_step(summed_);
          ++in_flight_;
        }
        ++summed_;
        moved = true;
      }
      while (completed_ < summed_) {
        if (across_) {
          // Only the oldest bucket's ring is tested (complete_ready stops at the first unfinished one);
          // the later ones' posted steps still move in the background.
          moved |= advance_ring(completed_);
          if (state_[completed_].steps_done < steps_) break;
          --in_flight_;
          if (L > 1) work(buckets_[completed_].bytes * c / 2.0);
        }
        ++completed_;
        moved = true;
      }
    }
  }

  const std::vector<BucketSpec>& buckets_;
  const CommModel& m_;
  const Placement p_;
  const bool across_;
  const int steps_;
  std::vector<State> state_;
  double cpu_ = 0.0, inserted_ = 0.0;
  double link_free_, tokens_;
  size_t launched_ = 0, summed_ = 0, completed_ = 0;
  int in_flight_ = 0;
};

}  // namespace

StepEstimate estimate_step(const BackwardProfile& prof, const std::vector<BucketSpec>& buckets, const CommModel& m,
                           Placement p) {
  LS_REQUIRE(p.nodes >= 1 && p.ranks_per_node >= 1, UserError, "scaling: a placement needs >= 1 node and >= 1 rank per node");
  StepEstimate e;
  for (const BucketSpec& b : buckets) e.allreduce_s += allreduce_seconds(m, b.bytes, p);
  if (p.ranks() == 1) {
    e.step_s = e.compute_s = prof.single_rank_step_s > 0.0 ? prof.single_rank_step_s : prof.compute_s();
    e.allreduce_s = 0.0;
    return e;
  }
  e.compute_s = prof.compute_s();
  // Steady state: a shaper's tokens at the start of a step are what the step before left plus what the
  // idle link saved since (the first step starts with a full bucket; a few rounds converge).
  double link_free = -1e9, tokens = m.link.burst_bytes;
  for (int round = 0; round < (m.link.burst_bytes > 0.0 ? 4 : 1); ++round) {
    StepSimulation sim(buckets, m, p, link_free, tokens);
    const double backward_end = sim.run(prof, &e.comm_cpu_s);
    e.step_s = prof.forward_s + backward_end + prof.update_s;
    // The next step's backward pass starts a step later: its clock is this one's minus step_s.
    link_free = std::min(sim.link_free(), backward_end) - e.step_s;
    tokens = sim.tokens();
  }
  e.exposed_s = e.step_s - e.compute_s;
  return e;
}

BackwardProfile apportioned_profile(double step_s, double forward_flops, const std::vector<double>& layer_backward_flops) {
  BackwardProfile prof;
  double backward_flops = 0.0;
  for (double f : layer_backward_flops) backward_flops += f;
  const double total = forward_flops + backward_flops;
  if (!(total > 0.0)) {  // no products at all: half and half, the layers alike
    prof.forward_s = prof.backward_s = step_s / 2.0;
    for (size_t j = 0; j < layer_backward_flops.size(); ++j)
      prof.progress_s.push_back(prof.backward_s * double(j + 1) / double(layer_backward_flops.size()));
    return prof;
  }
  prof.forward_s = step_s * forward_flops / total;
  prof.backward_s = step_s - prof.forward_s;
  double done = 0.0;
  for (double f : layer_backward_flops) {
    done += f;
    prof.progress_s.push_back(backward_flops > 0.0 ? prof.backward_s * done / backward_flops : prof.backward_s);
  }
  prof.single_rank_step_s = step_s;
  return prof;
}

}  // namespace lockstep::scaling
