// LocalCommunicator: the communicator of a job with one rank. Every collective is the identity
// (all_gather copies send to recv), completes at once, and needs no MPI at run time, so the whole
// trainer runs in a single process and in unit tests. Accepts buffers on any device (it only ever
// copies memory). Arguments are checked exactly as a multi-rank communicator would check them.
#pragma once

#include "comm/communicator.h"

namespace lockstep::comm {

class LocalCommunicator final : public Communicator {
 public:
  LocalCommunicator() = default;

  int rank() const override { return 0; }
  int size() const override { return 1; }
  int local_rank() const override { return 0; }
  int local_size() const override { return 1; }
  std::string name() const override { return "local"; }
  bool supports(Device) const override { return true; }

  // The typed overloads of the base stay visible.
  using Communicator::all_reduce_async;
  std::unique_ptr<Work> all_reduce_async(Buffer buf, ReduceOp op) override;
  std::unique_ptr<Work> broadcast_async(Buffer buf, int root) override;
  std::unique_ptr<Work> all_gather_async(Buffer send, Buffer recv) override;
  std::unique_ptr<Work> barrier_async() override;
  [[noreturn]] void abort(int code, const std::string& message) override;

 private:
  std::unique_ptr<Work> done(std::string description);
};

}  // namespace lockstep::comm
