// The NCCL communicator in one process (label gpu): GPU collectives on a one-rank job are identities
// ordered on the compute stream, CPU collectives go through the MPI bootstrap, and the watchdog
// thread starts and stops cleanly. Several ranks need one GPU each (mpirun -np N with N GPUs, e.g.
// LOCKSTEP_COMM=nccl mpirun -np 2 lockstep train RUN.yaml --device cuda); not covered here.
#include "comm/communicator.h"
#include "tests/gpu/gpu_test_util.h"

namespace lockstep::gpu_test {
namespace {

TEST_F(Gpu, NcclCommunicatorOneRank) {
#ifdef LOCKSTEP_HAVE_CUDA
  auto c = comm::make_communicator(comm::CommKind::Nccl);
  ASSERT_EQ(c->name(), "nccl");
  ASSERT_EQ(c->size(), 1);
  EXPECT_TRUE(c->supports(Device::CUDA));
  EXPECT_TRUE(c->supports(Device::CPU));
  Tensor x = cpu_uniform({1000}, 40);
  Tensor g = on_gpu(x);
  ops::scale(g, 2.0);                // queued on the compute stream before the collective
  c->all_reduce(g);                  // ordered after it, and the compute stream after the collective
  Tensor x2 = x.clone();
  ops::scale(x2, 2.0);
  EXPECT_GPU_BITWISE(g, x2);
  ops::fill(g, 1.0);
  c->broadcast(g, 0);
  EXPECT_EQ(ops::sum(g), 1000.0);
  Tensor recv({1000}, Device::CUDA);
  c->all_gather(comm::make_buffer(g), comm::make_buffer(recv));
  EXPECT_GPU_BITWISE(recv, Tensor::full({1000}, 1.0));
  auto w = c->all_reduce_async(g);
  while (!w->test()) {
  }
  w->wait();
  double host[2] = {1.5, 2.5};
  c->all_reduce(std::span<double>(host, 2));  // CPU buffer: through MPI
  EXPECT_EQ(host[0], 1.5);
  c->barrier();
  EXPECT_FALSE(c->poisoned());
#endif
}

}  // namespace
}  // namespace lockstep::gpu_test
