#include "comm/local_communicator.h"

#include <cstdio>
#include <cstdlib>

namespace lockstep::comm {
namespace {

class CompletedWork final : public Work {
 public:
  CompletedWork(std::string description, std::chrono::milliseconds timeout)
      : description_(std::move(description)), timeout_(timeout) {}
  using Work::wait;
  bool test() override { return true; }
  void wait(std::chrono::milliseconds) override {}
  std::string description() const override { return description_; }

 protected:
  std::chrono::milliseconds default_timeout() const override { return timeout_; }

 private:
  std::string description_;
  std::chrono::milliseconds timeout_;
};

}  // namespace

std::unique_ptr<Work> LocalCommunicator::done(std::string description) {
  const int64_t seq = next_sequence();
  return std::make_unique<CompletedWork>(
      str_cat(description, " #", seq, label().empty() ? "" : " [" + label() + "]"), timeout());
}

std::unique_ptr<Work> LocalCommunicator::all_reduce_async(Buffer buf, ReduceOp op) {
  check_buffer("all_reduce", buf);
  return done(str_cat("all_reduce(", reduce_op_name(op), ", ", buf.describe(), ")"));
}

std::unique_ptr<Work> LocalCommunicator::broadcast_async(Buffer buf, int root) {
  check_buffer("broadcast", buf);
  LS_REQUIRE(root == 0, CommError, "rank 0: broadcast from root ", root, " but the job has 1 rank");
  return done(str_cat("broadcast(root ", root, ", ", buf.describe(), ")"));
}

std::unique_ptr<Work> LocalCommunicator::all_gather_async(Buffer send, Buffer recv) {
  check_buffer("all_gather", send);
  check_buffer("all_gather", recv);
  LS_REQUIRE(send.type == recv.type, CommError, "rank 0: all_gather from ", send.describe(), " into ",
             recv.describe(), ": element types differ");
  LS_REQUIRE(recv.count == send.count, CommError, "rank 0: all_gather of ", send.describe(), " into ",
             recv.describe(), ": the receive buffer must hold size() x send.count = ", send.count, " elements");
  if (send.count > 0 && send.data != recv.data)
    device_copy(recv.data, recv.device, send.data, send.device, send.bytes());
  return done(str_cat("all_gather(", send.describe(), ")"));
}

std::unique_ptr<Work> LocalCommunicator::barrier_async() {
  check_not_poisoned("barrier");
  return done("barrier");
}

void LocalCommunicator::abort(int code, const std::string& message) {
  std::fflush(stdout);
  std::fprintf(stderr, "lockstep: rank 0: aborting (exit %d): %s\n", code, message.c_str());
  std::fflush(stderr);
  std::_Exit(code);
}

}  // namespace lockstep::comm
