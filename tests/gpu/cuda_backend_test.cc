// The cuda backend on a real GPU, with real processes: the device pool is
// exported as a VMM fd and mapped by clients, the host pool is a memfd
// pinned in the daemon, and interprocess events order the daemon's copies
// against the clients' kernels. Labelled `gpu`.
#include <signal.h>

#include <chrono>
#include <thread>

#include "gtest/gtest.h"
#include "tests/support/process.h"
#include "tidepool/session.h"

namespace tidepool {
namespace {

using testing::ChildProcess;
using testing::DaemonOptions;
using testing::DaemonProcess;

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DaemonOptions options;
    options.device = "cuda:0";
    options.host_pool = "4GiB";
    options.chunk_size = "32MiB";
    options.extra_args = {"--device_pool=512MiB"};
    auto d = DaemonProcess::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
  }
  int Run(const std::string& program, std::vector<std::string> args) {
    std::vector<std::string> argv = {testing::BinDir() + "/" + program,
                                     "--socket=" + daemon_->socket()};
    argv.insert(argv.end(), args.begin(), args.end());
    auto c = ChildProcess::Spawn(argv);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? c->Wait() : -1;
  }
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(CudaBackendTest, SessionSeesTheGpuByUuid) {
  SessionOptions options;
  options.socket = daemon_->socket();
  auto s = Session::Open(options);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ((*s)->device().backend, "cuda");
  EXPECT_EQ((*s)->device().uuid.rfind("GPU-", 0), 0u);
  EXPECT_EQ((*s)->device().capacity_bytes, 512u << 20);
}

// VMM export/import, pinned host pool and paging across processes: a model
// 4x the pool keeps every byte (checked through cudaMemcpy of device
// addresses in the client).
TEST_F(CudaBackendTest, OversubscribedPatternSurvivesPaging) {
  EXPECT_EQ(Run("tidepool_pattern_client",
                {"--layers=64", "--layer_bytes=33554432", "--steps=2"}),
            0);
}

// Interprocess events: kernels on the client's stream, no CPU sync, 4x
// oversubscribed.
TEST_F(CudaBackendTest, StreamOrderedKernelsSeeEveryArrival) {
  EXPECT_EQ(Run("tidepool_stream_order_client",
                {"--layers=64", "--layer_bytes=33554432", "--steps=3"}),
            0);
}

TEST_F(CudaBackendTest, TwoClientsAndAKilledOne) {
  std::vector<std::string> base = {
      testing::BinDir() + "/tidepool_pattern_client",
      "--socket=" + daemon_->socket()};
  auto victim_args = base;
  victim_args.insert(victim_args.end(), {"--layers=16", "--hold"});
  auto victim = ChildProcess::Spawn(victim_args);
  ASSERT_TRUE(victim.ok());
  auto a = base, b = base;
  a.insert(a.end(), {"--layers=32", "--layer_bytes=16777216", "--seed=3"});
  b.insert(b.end(), {"--layers=32", "--layer_bytes=16777216", "--seed=4"});
  auto ca = ChildProcess::Spawn(a);
  auto cb = ChildProcess::Spawn(b);
  ASSERT_TRUE(ca.ok() && cb.ok());
  std::this_thread::sleep_for(std::chrono::seconds(2));
  victim->Kill(SIGKILL);
  victim->Wait();
  EXPECT_EQ(ca->Wait(), 0);
  EXPECT_EQ(cb->Wait(), 0);
}

TEST_F(CudaBackendTest, CudaPolicyKeepsEverythingResident) {
  EXPECT_EQ(Run("tidepool_pattern_client",
                {"--policy=cuda", "--layers=8", "--layer_bytes=16777216"}),
            0);
}

}  // namespace
}  // namespace tidepool
