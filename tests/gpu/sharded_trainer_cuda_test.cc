// sharded_trainer with its layer math on the GPU (--math=cuda: cuBLAS and
// small kernels over the acquired device memory, examples/mlp_cuda.h)
// against a tidepoold on the cuda backend. The trainer trains the same
// model in plain memory on the CPU alongside and exits 1 unless every
// step's loss matches within --cuda_tolerance, 2 on any error; so exit 0
// means the device math agrees with the CPU math step by step. Labelled
// `gpu`: it needs a CUDA device.
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/support/process.h"

namespace tidepool {
namespace {

using testing::ChildProcess;
using testing::DaemonOptions;
using testing::DaemonProcess;

class ShardedTrainerCudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DaemonOptions options;
    options.device = "cuda:0";
    options.host_pool = "1GiB";
    options.chunk_size = "2MiB";
    // Smaller than the model below's parameters + optimizer state, so
    // chunks page while the device math runs.
    options.extra_args = {"--device_pool=16MiB"};
    auto d = DaemonProcess::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
  }

  int Run(std::vector<std::string> args) {
    std::vector<std::string> argv = {
        testing::BinDir() + "/sharded_trainer", "--socket=" + daemon_->socket(),
        "--min_ratio=0", "--print_every=10", "--verify=true"};
    argv.insert(argv.end(), args.begin(), args.end());
    auto child = ChildProcess::Spawn(argv);
    EXPECT_TRUE(child.ok()) << child.status();
    return child.ok() ? child->Wait() : -1;
  }

  std::unique_ptr<DaemonProcess> daemon_;
};

// The demo's shape (bf16, 37 layers of width 256: 4.6 MiB of parameters +
// 27.9 MiB of master/m/v) for a few dozen steps.
const std::vector<std::string> kDemo = {"--layers=37", "--width=256",
                                        "--batch=4", "--steps=40"};

std::vector<std::string> With(std::vector<std::string> a,
                              std::vector<std::string> b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST_F(ShardedTrainerCudaTest, Bf16LossCurveMatchesCpuReference) {
  EXPECT_EQ(Run(With(kDemo,
                     {"--math=cuda", "--dtype=bf16", "--cuda_tolerance=1e-3"})),
            0);
}

// The policy that puts updates on the device (FusedAdamW) where they fit,
// and clipping (updates deferred to Step()).
TEST_F(ShardedTrainerCudaTest, Fp32ClippedAutoPolicyMatchesCpuReference) {
  EXPECT_EQ(
      Run(With(kDemo, {"--math=cuda", "--dtype=fp32", "--max_grad_norm=0.5",
                       "--policy=auto", "--cuda_tolerance=1e-3"})),
      0);
}

// fp16 with dynamic loss scaling, at a width that is no multiple of 32 and
// a batch of 8, the integration tests' small shape.
TEST_F(ShardedTrainerCudaTest, Fp16SmallShapeMatchesCpuReference) {
  EXPECT_EQ(
      Run({"--math=cuda", "--dtype=fp16", "--layers=4", "--width=48",
           "--batch=8", "--steps=30", "--lr=1e-2", "--cuda_tolerance=1e-3"}),
      0);
}

// auto picks the device math on the cuda backend; cpu still stages through
// host copies and stays bit-identical to the reference.
TEST_F(ShardedTrainerCudaTest, AutoAndCpuMath) {
  const std::vector<std::string> shape = {"--layers=37", "--width=256",
                                          "--batch=4", "--steps=20"};
  EXPECT_EQ(Run(shape), 0);
  EXPECT_EQ(Run(With(shape, {"--math=cpu", "--tolerance=1e-6"})), 0);
}

}  // namespace
}  // namespace tidepool
