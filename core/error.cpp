#include "core/error.h"

#include <atomic>

namespace lockstep {

namespace {
std::atomic<int> g_rank{-1};
}

int error_rank() { return g_rank.load(); }
void set_error_rank(int rank) { g_rank.store(rank); }

void throw_internal(const char* file, int line, const char* cond, const std::string& msg) {
  std::ostringstream os;
  os << "internal error";
  if (g_rank.load() >= 0) os << " on rank " << g_rank.load();
  os << " (" << file << ":" << line << "): check '" << cond << "' failed";
  if (!msg.empty()) os << ": " << msg;
  throw Error(os.str());
}

}  // namespace lockstep
