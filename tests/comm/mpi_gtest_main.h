// The main() of the GoogleTest programs that run under mpirun (comm_mpi_tests, comm_hier_tests):
// starts the MPI communicator (a failure to start fails the program: a broken launch must not look
// green), requires at least 2 ranks, runs every test on every rank with only rank 0's full printer
// (the others print their failures with their rank), and makes every rank exit with the worst verdict.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>

#include "comm/communicator.h"

namespace lockstep::comm::testing {

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (r.failed())
      std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?", r.line_number(),
                   r.summary());
  }

 private:
  int rank_;
};

// `*global` points at the communicator while the tests run; `before_tests` runs once it exists.
inline int run_mpi_gtests(int argc, char** argv, const char* program, Communicator** global,
                          const std::function<void(Communicator&)>& before_tests = {}) {
  ::testing::InitGoogleTest(&argc, argv);
  std::unique_ptr<Communicator> c;
  try {
    c = make_communicator(CommKind::Mpi);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: cannot start MPI: %s\n", program, e.what());
    return 1;
  }
  *global = c.get();
  if (c->size() < 2) {
    std::fprintf(stderr, "%s: needs at least 2 ranks (got %d); run under mpirun -np 2\n", program, c->size());
    return 1;
  }
  c->set_timeout(std::chrono::seconds(30));
  if (before_tests) before_tests(*c);
  if (c->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(c->rank()));
  }
  int rc = RUN_ALL_TESTS();
  rc = static_cast<int>(c->all_reduce_value<int64_t>(rc, ReduceOp::Max));  // the worst verdict everywhere
  *global = nullptr;
  c.reset();
  return rc;
}

}  // namespace lockstep::comm::testing
