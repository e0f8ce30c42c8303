// End-to-end tests with real processes: a tidepoold on the sim backend and
// client processes (tidepool_pattern_client) or in-test sessions moving real
// bytes through it.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/unix_socket.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/tidepool.grpc.pb.h"
#include "proto/wire.h"
#include "tests/support/process.h"
#include "tidepool/session.h"

namespace tidepool {
namespace {

using testing::ChildProcess;
using testing::DaemonOptions;
using testing::DaemonProcess;
using ::testing::HasSubstr;

constexpr uint64_t kMiB = 1 << 20;

// A release and its outcome: over the hot path a release is only posted,
// and its failure comes back from the next call that waits (Flush here).
absl::Status ReleaseAndFlush(Session& s, uint64_t id) {
  absl::Status r = s.Release({&id, 1}, TensorState::kHold);
  return r.ok() ? s.Flush() : r;
}

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DaemonOptions options;  // 64 MiB sim device, 4 MiB chunks
    auto d = DaemonProcess::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
  }

  std::unique_ptr<Session> Open(Policy policy) {
    SessionOptions options;
    options.socket = daemon_->socket();
    options.policy = policy;
    auto s = Session::Open(options);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }

  absl::StatusOr<ChildProcess> PatternClient(std::vector<std::string> args) {
    std::vector<std::string> argv = {
        testing::BinDir() + "/tidepool_pattern_client",
        "--socket=" + daemon_->socket()};
    argv.insert(argv.end(), args.begin(), args.end());
    return ChildProcess::Spawn(argv);
  }

  // Waits until `probe` sees `sessions` sessions and `host_used` bytes in
  // use in the host pool (reclaim is asynchronous to the client's death).
  void WaitForPools(Session& probe, uint32_t sessions, uint64_t host_used) {
    for (int i = 0; i < 500; ++i) {
      auto st = probe.Stats();
      ASSERT_TRUE(st.ok()) << st.status();
      if (st->sessions == sessions && st->host_pool_used == host_used) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    auto st = probe.Stats();
    FAIL() << "pools did not settle: sessions " << st->sessions
           << ", host pool used " << st->host_pool_used << " (want " << sessions
           << ", " << host_used << ")";
  }

  std::unique_ptr<DaemonProcess> daemon_;
};

// 1. A model 4x the device, streamed forward and backward for several steps
// under `cpu`: every byte checks out, and it really did page.
TEST_F(DaemonTest, OversubscribedModelKeepsEveryByte) {
  // 64 layers of ~4 MiB plus 16 tensors of 6 MiB: about 4.5x the 64 MiB device.
  auto client = PatternClient(
      {"--layers=64", "--layer_bytes=4194304", "--steps=3", "--seed=7"});
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ(client->Wait(), 0);
}

// The same through gRPC alone (the path for requests too big for the
// shared-memory hot path).
TEST_F(DaemonTest, OversubscribedModelKeepsEveryByteOverGrpc) {
  auto client = PatternClient({"--layers=32", "--layer_bytes=4194304",
                               "--steps=2", "--seed=8", "--hot_path=false"});
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ(client->Wait(), 0);
}

TEST_F(DaemonTest, OversubscriptionMovesBytesAndEvictsCleanChunksForFree) {
  auto s = Open(Policy::kCpu);
  ASSERT_NE(s, nullptr);
  const uint64_t capacity = s->device().capacity_bytes;
  std::vector<TensorSpec> specs;
  for (int i = 0; i < 64; ++i) {  // 64 x 4 MiB = 4x the device
    specs.push_back({"t" + std::to_string(i),
                     DType::kU8,
                     {static_cast<int64_t>(4 * kMiB)},
                     Group::kParam});
  }
  auto t = s->Register(specs);
  ASSERT_TRUE(t.ok()) << t.status();
  for (int pass = 0; pass < 2; ++pass) {
    for (const auto& info : *t) {
      const uint64_t id = info.id;
      auto got = s->Acquire({&id, 1}, AccessMode::kRead);
      ASSERT_TRUE(got.ok()) << got.status();
      ASSERT_TRUE(s->Release({&id, 1}, TensorState::kHold).ok());
    }
  }
  auto st = s->Stats();
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->bytes_to_device, 2 * 64 * 4 * kMiB);
  // Read-only use: every eviction was of a clean chunk and moved nothing.
  EXPECT_GT(st->evictions, 0u);
  EXPECT_EQ(st->evictions, st->clean_evictions);
  EXPECT_EQ(st->bytes_to_host, 0u);
  EXPECT_LE(st->peak_device_bytes, capacity);
}

// 2. `cuda` refuses what does not fit, clearly, and keeps nothing of it.
TEST_F(DaemonTest, CudaPolicyRefusesOverCapacityRegistration) {
  auto s = Open(Policy::kCuda);
  ASSERT_NE(s, nullptr);
  std::vector<TensorSpec> specs;
  for (int i = 0; i < 32; ++i) {  // 128 MiB on a 64 MiB device
    specs.push_back({"w" + std::to_string(i),
                     DType::kF32,
                     {static_cast<int64_t>(kMiB)},
                     Group::kParam});
  }
  auto t = s->Register(specs);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(t.status().message(), HasSubstr("does not fit"));
  EXPECT_THAT(t.status().message(), HasSubstr("policy 'cpu'"));
  auto st = s->Stats();
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->chunks, 0u);
  EXPECT_EQ(st->device_pool_used, 0u);
  // What fits still registers, and its bytes are on the device, zeroed.
  specs.resize(8);
  t = s->Register(specs);
  ASSERT_TRUE(t.ok()) << t.status();
  const uint64_t id = (*t)[3].id;
  auto got = s->Acquire({&id, 1}, AccessMode::kRead);
  ASSERT_TRUE(got.ok()) << got.status();
  const auto* p = static_cast<const uint8_t*>((*got)[0].data);
  EXPECT_TRUE(
      std::all_of(p, p + (*got)[0].bytes, [](uint8_t b) { return b == 0; }));
}

// 3. Two clients at once, each with its own memory.
TEST_F(DaemonTest, TwoClientsAtOnceEachKeepTheirBytes) {
  auto a = PatternClient({"--layers=24", "--steps=3", "--seed=11"});
  auto b = PatternClient({"--layers=24", "--steps=3", "--seed=12"});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->Wait(), 0);
  EXPECT_EQ(b->Wait(), 0);
}

TEST_F(DaemonTest, SessionsCannotReachEachOthersTensors) {
  auto a = Open(Policy::kCpu);
  auto b = Open(Policy::kCpu);
  ASSERT_TRUE(a && b);
  auto ta = a->Register({{"secret", DType::kU8, {4096}, Group::kParam}});
  ASSERT_TRUE(ta.ok());
  const uint64_t id = (*ta)[0].id;
  auto got = b->Acquire({&id, 1}, AccessMode::kRead);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ReleaseAndFlush(*b, id).code(), absl::StatusCode::kNotFound);
  // A's tensor is untouched by B's attempts.
  EXPECT_TRUE(a->Acquire({&id, 1}, AccessMode::kRead).ok());
}

// 4. A client SIGKILLed mid-step: its memory returns, the other finishes.
TEST_F(DaemonTest, KilledClientIsReclaimedAndOthersFinish) {
  auto probe = Open(Policy::kCpu);
  ASSERT_NE(probe, nullptr);
  auto victim = PatternClient({"--layers=24", "--hold"});
  ASSERT_TRUE(victim.ok());
  auto survivor = PatternClient({"--layers=24", "--steps=4", "--seed=5"});
  ASSERT_TRUE(survivor.ok());
  // Wait until the victim holds a layer, then kill it without warning.
  for (int i = 0; i < 500; ++i) {
    auto st = probe->Stats();
    ASSERT_TRUE(st.ok());
    if (st->host_pool_used > 0 && st->sessions == 3) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  victim->Kill(SIGKILL);
  EXPECT_EQ(victim->Wait(), 128 + SIGKILL);
  EXPECT_EQ(survivor->Wait(), 0);
  WaitForPools(*probe, 1, 0);
  auto st = probe->Stats();
  EXPECT_EQ(st->device_pool_used, 0u);
}

// 5. Bad input: each gets a clear error and the daemon keeps serving.
TEST_F(DaemonTest, BadRequestsGetClearErrors) {
  auto s = Open(Policy::kCpu);
  ASSERT_NE(s, nullptr);
  auto t = s->Register({{"a", DType::kF32, {1024}, Group::kParam},
                        {"b", DType::kF32, {1024}, Group::kParam}});
  ASSERT_TRUE(t.ok());
  const uint64_t a = (*t)[0].id;
  const uint64_t unknown = 999999;

  auto got = s->Acquire({&unknown, 1}, AccessMode::kRead);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(got.status().message(), HasSubstr("not registered"));

  // Release of a tensor never acquired, and double release.
  EXPECT_EQ(ReleaseAndFlush(*s, a).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(s->Acquire({&a, 1}, AccessMode::kRead).ok());
  auto twice = s->Acquire({&a, 1}, AccessMode::kRead);
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(twice.status().message(), HasSubstr("already acquired"));
  ASSERT_TRUE(s->Release({&a, 1}, TensorState::kHold).ok());
  absl::Status again = ReleaseAndFlush(*s, a);
  EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(again.message(), HasSubstr("double release"));

  // Malformed registrations; none leaves anything behind.
  EXPECT_EQ(s->Register({{"", DType::kF32, {4}}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s->Register({{"neg", DType::kF32, {-4}}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      s->Register({{"huge", DType::kF64, {1 << 30, 1 << 30}}}).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s->Register({}).status().code(),
            absl::StatusCode::kInvalidArgument);

  // Acquire beyond capacity: 80 MiB at once on a 64 MiB device.
  std::vector<TensorSpec> big;
  for (int i = 0; i < 20; ++i) {
    big.push_back({"big" + std::to_string(i),
                   DType::kU8,
                   {static_cast<int64_t>(4 * kMiB)},
                   Group::kOther});
  }
  auto tb = s->Register(big);
  ASSERT_TRUE(tb.ok()) << tb.status();
  std::vector<uint64_t> ids;
  for (const auto& x : *tb) ids.push_back(x.id);
  auto too_much = s->Acquire(ids, AccessMode::kRead);
  EXPECT_EQ(too_much.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(too_much.status().message(), HasSubstr("acquire fewer"));
  // Nothing of the failed acquire stuck: each tensor can still be acquired.
  ids.resize(8);
  EXPECT_TRUE(s->Acquire(ids, AccessMode::kRead).ok());
  EXPECT_TRUE(s->Release(ids, TensorState::kHold).ok());

  auto st = s->Stats();
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->tensors, 22u);
}

TEST_F(DaemonTest, RawProtocolAbuseIsRefusedAndDaemonKeepsServing) {
  auto s = Open(Policy::kCpu);
  ASSERT_NE(s, nullptr);

  // Wrong token on the fd socket.
  {
    auto conn = ConnectUnix(daemon_->fd_socket());
    ASSERT_TRUE(conn.ok());
    wire::AttachRequest req{};
    req.magic = wire::kAttachMagic;
    req.version = wire::kAttachVersion;
    req.session_id = s->id();
    std::memset(req.token, 0xAB, sizeof(req.token));
    ASSERT_TRUE(SendMessage(conn->get(), &req, sizeof(req)).ok());
    wire::AttachReply reply{};
    std::vector<UniqueFd> fds;
    ASSERT_TRUE(
        ReceiveMessage(conn->get(), &reply, sizeof(reply), &fds, 3).ok());
    EXPECT_EQ(reply.status_code,
              static_cast<int>(absl::StatusCode::kPermissionDenied));
    EXPECT_THAT(reply.message, HasSubstr("wrong token"));
    EXPECT_TRUE(fds.empty());
  }
  // Garbage and a truncated message on the fd socket.
  for (const std::string& junk :
       {std::string(sizeof(wire::AttachRequest), 'x'), std::string("short")}) {
    auto conn = ConnectUnix(daemon_->fd_socket());
    ASSERT_TRUE(conn.ok());
    ASSERT_TRUE(SendMessage(conn->get(), junk.data(), junk.size()).ok());
    if (junk.size() < sizeof(wire::AttachRequest)) {
      ::shutdown(conn->get(), SHUT_WR);
    }
    wire::AttachReply reply{};
    ASSERT_TRUE(ReceiveMessage(conn->get(), &reply, sizeof(reply)).ok());
    EXPECT_EQ(reply.status_code,
              static_cast<int>(absl::StatusCode::kInvalidArgument));
  }
  // A malformed protobuf on the gRPC socket.
  {
    auto channel = grpc::CreateChannel("unix:" + daemon_->socket(),
                                       grpc::InsecureChannelCredentials());
    grpc::GenericStub stub(channel);
    grpc::ClientContext ctx;
    const char garbage[] = "\xff\xff\xff\xff\x0f not a protobuf";
    grpc::Slice slice(garbage, sizeof(garbage));
    grpc::ByteBuffer request(&slice, 1), response;
    grpc::Status status;
    bool done = false;
    std::mutex mu;
    std::condition_variable cv;
    stub.UnaryCall(&ctx, "/tidepool.v1.Tidepool/Acquire", {}, &request,
                   &response, [&](grpc::Status st) {
                     std::lock_guard<std::mutex> lock(mu);
                     status = st;
                     done = true;
                     cv.notify_one();
                   });
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done; });
    EXPECT_FALSE(status.ok());
  }
  // Garbage in a session's hot path: tests/integration/hot_path_test.cc.
  // The session that was there all along still works.
  auto t = s->Register({{"still", DType::kF32, {16}, Group::kParam}});
  ASSERT_TRUE(t.ok()) << t.status();
  const uint64_t id = (*t)[0].id;
  EXPECT_TRUE(s->Acquire({&id, 1}, AccessMode::kReadWrite).ok());
}

// CPU work on host-resident state: bytes written on the device are current
// on the host, and host writes reach the device on the next acquire.
TEST_F(DaemonTest, HostAcquireSeesAndFeedsTheDevice) {
  auto s = Open(Policy::kCpu);
  ASSERT_NE(s, nullptr);
  auto t = s->Register({{"state", DType::kU8, {1 << 20}, Group::kOptimState}});
  ASSERT_TRUE(t.ok());
  const uint64_t id = (*t)[0].id;
  auto dev = s->Acquire({&id, 1}, AccessMode::kReadWrite);
  ASSERT_TRUE(dev.ok());
  std::memset((*dev)[0].data, 0x21, 1 << 20);
  ASSERT_TRUE(s->Release({&id, 1}, TensorState::kHold).ok());
  auto host = s->AcquireOnHost({&id, 1}, AccessMode::kReadWrite);
  ASSERT_TRUE(host.ok()) << host.status();
  auto* h = static_cast<uint8_t*>((*host)[0].data);
  EXPECT_EQ(h[0], 0x21);
  EXPECT_EQ(h[(1 << 20) - 1], 0x21);
  std::memset(h, 0x43, 1 << 20);
  ASSERT_TRUE(s->Release({&id, 1}, TensorState::kHold).ok());
  dev = s->Acquire({&id, 1}, AccessMode::kRead);
  ASSERT_TRUE(dev.ok());
  EXPECT_EQ(static_cast<uint8_t*>((*dev)[0].data)[(1 << 20) - 1], 0x43);
}

// A Register whose answer is larger than gRPC's default 4 MiB receive
// limit (400k tensors, 5.8 MB) comes back in full.
TEST_F(DaemonTest, ALargeRegisterIsAnsweredInFull) {
  auto s = Open(Policy::kCpu);
  ASSERT_NE(s, nullptr);
  constexpr int kTensors = 400'000;
  std::vector<TensorSpec> specs;
  specs.reserve(kTensors);
  for (int i = 0; i < kTensors; ++i) {
    specs.push_back(
        {absl::StrCat("t", i), DType::kU8, {64}, Group::kOptimState});
  }
  auto t = s->Register(specs);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->size(), static_cast<size_t>(kTensors));
  EXPECT_NE((*t)[0].id, (*t)[kTensors - 1].id);
  EXPECT_EQ((*t)[kTensors - 1].bytes, 64u);
}

TEST(DaemonStartTest, MissingDaemonIsAClearError) {
  SessionOptions options;
  options.socket = "/tmp/no-such-tidepool-dir/tidepoold.sock";
  auto s = Session::Open(options);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.status().message(), HasSubstr("not running"));
}

TEST(DaemonStartTest, DaemonDeathIsAClearErrorAndMappingsStay) {
  auto d = DaemonProcess::Start({});
  ASSERT_TRUE(d.ok());
  SessionOptions options;
  options.socket = (*d)->socket();
  auto s = Session::Open(options);
  ASSERT_TRUE(s.ok()) << s.status();
  auto t = (*s)->Register({{"w", DType::kU8, {4096}, Group::kParam}});
  ASSERT_TRUE(t.ok());
  const uint64_t id = (*t)[0].id;
  auto got = (*s)->Acquire({&id, 1}, AccessMode::kReadWrite);
  ASSERT_TRUE(got.ok());
  auto* p = static_cast<uint8_t*>((*got)[0].data);
  std::memset(p, 0x5A, 4096);
  (*d)->process().Kill(SIGKILL);
  (*d)->process().Wait();
  auto after = (*s)->Stats();
  EXPECT_EQ(after.status().code(), absl::StatusCode::kUnavailable);
  // Through the hot path too: no hang, a clear error (a release is only
  // posted; the call that waits for it says so).
  EXPECT_EQ(ReleaseAndFlush(**s, id).code(), absl::StatusCode::kUnavailable);
  // What the trainer holds is still readable.
  EXPECT_EQ(p[4095], 0x5A);
}

}  // namespace
}  // namespace tidepool
