// The sharded optimizer end to end with real processes: one tidepoold on
// the sim backend, sharded_trainer ranks as separate processes talking
// through Gloo. 2 and 4 ranks end with the parameters of 1 rank; every
// rank holds the same bytes; per-rank checkpoints resume bit-identically;
// the trainer's loss curve equals in-memory training (bf16, fp16 with loss
// scaling, clipping); --math=cuda is refused on sim.
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include "gtest/gtest.h"
#include "tests/support/process.h"

namespace tidepool {
namespace {

using testing::ChildProcess;
using testing::DaemonOptions;
using testing::DaemonProcess;

class ShardedTrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DaemonOptions options;  // 64 MiB sim device
    options.chunk_size = "2MiB";
    auto d = DaemonProcess::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
    dir_ = std::filesystem::temp_directory_path() /
           ("tidepool-sharded-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Runs `world` ranks with the same arguments; returns true if all exit 0.
  bool Run(int world, std::vector<std::string> args, const std::string& tag) {
    std::vector<ChildProcess> ranks;
    const std::string store = (dir_ / ("gloo-" + tag)).string();
    for (int r = 0; r < world; ++r) {
      std::vector<std::string> argv = {testing::BinDir() + "/sharded_trainer",
                                       "--socket=" + daemon_->socket(),
                                       "--rank=" + std::to_string(r),
                                       "--world=" + std::to_string(world),
                                       "--gloo_store=" + store,
                                       "--min_ratio=0",
                                       "--print_every=1000"};
      argv.insert(argv.end(), args.begin(), args.end());
      auto child = ChildProcess::Spawn(argv);
      EXPECT_TRUE(child.ok()) << child.status();
      if (!child.ok()) return false;
      ranks.push_back(std::move(*child));
    }
    bool ok = true;
    for (int r = 0; r < world; ++r) {
      const int code = ranks[r].Wait();
      EXPECT_EQ(code, 0) << tag << " rank " << r;
      ok &= code == 0;
    }
    return ok;
  }

  std::vector<char> Dump(const std::string& tag, int rank) {
    std::ifstream in(dir_ / (tag + ".rank" + std::to_string(rank)),
                     std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
  }

  std::string DumpArg(const std::string& tag) {
    return "--dump_params=" + (dir_ / tag).string();
  }

  std::unique_ptr<DaemonProcess> daemon_;
  std::filesystem::path dir_;
};

const std::vector<std::string> kSmall = {
    "--layers=4", "--width=48", "--batch=8", "--steps=12", "--lr=5e-3"};

std::vector<std::string> With(std::vector<std::string> a,
                              std::vector<std::string> b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST_F(ShardedTrainerTest, TwoAndFourRanksMatchOneRank) {
  const auto args = With(kSmall, {"--dtype=fp32", "--verify=false"});
  ASSERT_TRUE(Run(1, With(args, {DumpArg("w1")}), "w1"));
  const std::vector<char> one = Dump("w1", 0);
  ASSERT_FALSE(one.empty());
  for (int world : {2, 4}) {
    const std::string tag = "w" + std::to_string(world);
    ASSERT_TRUE(Run(world, With(args, {DumpArg(tag)}), tag));
    const std::vector<char> first = Dump(tag, 0);
    ASSERT_EQ(first.size(), one.size());
    // Every rank holds the very same parameters after the all-gather.
    for (int r = 1; r < world; ++r) {
      EXPECT_TRUE(Dump(tag, r) == first) << tag << " rank " << r;
    }
    // And they are 1 rank's, up to the order of the gradient sums.
    std::vector<float> a(one.size() / 4), b(one.size() / 4);
    std::memcpy(a.data(), one.data(), one.size());
    std::memcpy(b.data(), first.data(), first.size());
    double max_diff = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      max_diff = std::max<double>(max_diff, std::fabs(a[i] - b[i]));
    }
    EXPECT_LT(max_diff, 1e-4) << tag;
    RecordProperty(tag + "_max_diff", std::to_string(max_diff));
  }
}

TEST_F(ShardedTrainerTest, PerRankCheckpointsResumeBitIdentically) {
  for (int world : {1, 2}) {
    const std::string w = std::to_string(world);
    const std::string ckpt = (dir_ / ("ckpt" + w)).string();
    const auto args = With(kSmall, {"--dtype=bf16", "--max_grad_norm=0.5"});
    ASSERT_TRUE(Run(world, With(args, {DumpArg("full" + w)}), "full" + w));
    auto half = args;
    half[3] = "--steps=5";
    ASSERT_TRUE(Run(world, With(half, {"--save_dir=" + ckpt}), "a" + w));
    for (int r = 0; r < world; ++r) {  // each rank wrote its own shards
      EXPECT_TRUE(std::filesystem::exists(
          std::filesystem::path(ckpt) /
          ("optimizer-rank" + std::to_string(r) + "-of-" + w + ".tpck")));
    }
    ASSERT_TRUE(Run(world,
                    With(args, {"--load_dir=" + ckpt, DumpArg("resumed" + w)}),
                    "b" + w));
    for (int r = 0; r < world; ++r) {
      const auto full = Dump("full" + w, r);
      ASSERT_FALSE(full.empty());
      EXPECT_TRUE(full == Dump("resumed" + w, r))
          << "world " << world << " rank " << r;
    }
  }
}

TEST_F(ShardedTrainerTest, LossCurveEqualsInMemoryTraining) {
  // The trainer exits 1 unless every step's loss matches the in-memory
  // model within the tolerance (bit-identical in practice).
  const auto base = With(kSmall, {"--verify=true", "--tolerance=1e-6"});
  EXPECT_TRUE(Run(1, With(base, {"--dtype=bf16"}), "bf16"));
  EXPECT_TRUE(Run(1, With(base, {"--dtype=bf16", "--overlap=false"}), "inl"));
  EXPECT_TRUE(Run(1, With(base, {"--dtype=fp16", "--lr=1e-2"}), "fp16"));
  EXPECT_TRUE(
      Run(1, With(base, {"--dtype=fp32", "--max_grad_norm=0.2"}), "clip"));
}

// --math: auto is cpu on sim (the tests above), cpu by name is the same,
// and cuda is refused on sim (exit 2) before any training step.
TEST_F(ShardedTrainerTest, MathFlag) {
  const auto base = With(kSmall, {"--verify=true", "--tolerance=1e-6"});
  EXPECT_TRUE(Run(1, With(base, {"--math=cpu"}), "cpu"));
  for (const char* bad : {"--math=cuda", "--math=gpu"}) {
    auto child = ChildProcess::Spawn(
        {testing::BinDir() + "/sharded_trainer",
         "--socket=" + daemon_->socket(), "--min_ratio=0", "--layers=4",
         "--width=48", "--batch=8", "--steps=2", bad});
    ASSERT_TRUE(child.ok()) << child.status();
    EXPECT_EQ(child->Wait(), 2) << bad;
  }
}

}  // namespace
}  // namespace tidepool
