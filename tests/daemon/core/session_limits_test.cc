// The manager's limits on what one client can make it hold, in process:
// sessions per process and per user (by the peer credentials the gRPC
// listener hands it), tensor metadata per session and its honest size.
#include <malloc.h>
#include <unistd.h>

#include <string>

#include "daemon/core/memory_manager.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/daemon/sim_manager.h"

namespace tidepool {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kMiB = 1 << 20;

class SessionLimitsTest : public ::testing::Test {
 protected:
  void Start(ManagerOptions options) {
    options.residency_event_capacity = 0;  // no log: heap figures are ours
    manager_ = NewSimManager({.pool_bytes = 16 * kMiB,
                              .chunk_size = 4 * kMiB,
                              .options = options})
                   .manager;
    ASSERT_NE(manager_, nullptr);
  }

  absl::StatusOr<OpenedSession> OpenAs(int32_t pid, uid_t uid) {
    return manager_->OpenSession(
        {.policy = Policy::kCpu,
         .pid = pid,
         .peer = PeerCredentials{.pid = pid, .uid = uid, .gid = uid}});
  }

  std::unique_ptr<MemoryManager> manager_;
};

TEST_F(SessionLimitsTest, SessionsArePerProcessAndPerUser) {
  Start({.max_sessions_per_pid = 2, .max_sessions_per_uid = 3});
  ASSERT_TRUE(OpenAs(100, 1000).ok());
  ASSERT_TRUE(OpenAs(100, 1000).ok());
  auto third = OpenAs(100, 1000);
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(third.status().message(),
              HasSubstr("process 100 has 2 sessions open, the limit "
                        "max_sessions_per_pid"));
  ASSERT_TRUE(OpenAs(101, 1000).ok());  // the user's third
  auto fourth = OpenAs(102, 1000);
  EXPECT_EQ(fourth.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(fourth.status().message(),
              HasSubstr("user 1000 has 3 sessions open, the limit "
                        "max_sessions_per_uid"));
  // Another user is not affected.
  EXPECT_TRUE(OpenAs(200, 2000).ok());
  // Peers in another pid namespace (pid 0) count per user only.
  Start({.max_sessions_per_pid = 1, .max_sessions_per_uid = 3});
  for (int32_t pid : {76, 76, 77}) {
    EXPECT_TRUE(
        manager_
            ->OpenSession({.policy = Policy::kCpu,
                           .pid = pid,
                           .peer = PeerCredentials{.pid = 0, .uid = 3000}})
            .ok());
  }
  EXPECT_EQ(manager_
                ->OpenSession({.policy = Policy::kCpu,
                               .pid = 78,
                               .peer = PeerCredentials{.pid = 0, .uid = 3000}})
                .status()
                .code(),
            absl::StatusCode::kResourceExhausted);
  // In-process callers (no peer) count towards max_sessions only.
  EXPECT_TRUE(manager_->OpenSession({.policy = Policy::kCpu, .pid = 5}).ok());
  EXPECT_TRUE(manager_->OpenSession({.policy = Policy::kCpu, .pid = 5}).ok());
}

TEST_F(SessionLimitsTest, AClaimedPidMustBeTheCallers) {
  Start({});
  auto s = manager_->OpenSession(
      {.pid = 100, .peer = PeerCredentials{.pid = 101, .uid = 0}});
  EXPECT_EQ(s.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(s.status().message(),
              HasSubstr("says pid 100 but comes from pid 101"));
}

// Bytes the heap has handed out (small blocks and mmap'ed large ones).
size_t HeapInUse() {
  const struct mallinfo2 m = mallinfo2();
  return m.uordblks + m.hblkhd;
}

// What a session is charged for its tensors is what they cost the heap,
// within a quarter, for short, middling and long names; and it is all
// given back at close.
TEST_F(SessionLimitsTest, MetadataIsChargedAsTheHeapHoldsIt) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "a sanitizer's allocator: mallinfo2 does not see its heap";
#endif
  Start({});
  for (size_t name_bytes : {4, 40, 1000}) {
    auto s = manager_->OpenSession({.policy = Policy::kCpu, .pid = getpid()});
    ASSERT_TRUE(s.ok()) << s.status();
    std::vector<TensorSpec> specs;
    for (int i = 0; i < 20000; ++i) {
      std::string name = std::to_string(i);
      name.resize(name_bytes, 'n');
      specs.push_back({name, DType::kU8, {16}, Group::kParam});
    }
    const size_t before = HeapInUse();
    ASSERT_TRUE(manager_->Register(s->id, s->token, specs).ok());
    const double used = static_cast<double>(HeapInUse() - before);
    auto stats = manager_->Stats(s->id, s->token);
    ASSERT_TRUE(stats.ok());
    const double charged = static_cast<double>(stats->session.metadata_bytes);
    EXPECT_EQ(manager_->metadata_bytes(), stats->session.metadata_bytes);
    EXPECT_GT(charged, 0.75 * used) << name_bytes << "-byte names";
    EXPECT_LT(charged, 1.25 * used) << name_bytes << "-byte names";
    ASSERT_TRUE(manager_->CloseSession(s->id, s->token).ok());
    EXPECT_EQ(manager_->metadata_bytes(), 0u);
  }
}

TEST_F(SessionLimitsTest, MetadataLimitsNameTheirSetting) {
  Start({.max_tensors_per_session = 100,
         .max_metadata_bytes_per_session = 64 << 10});
  auto s = manager_->OpenSession({.policy = Policy::kCpu, .pid = getpid()});
  ASSERT_TRUE(s.ok());
  std::vector<TensorSpec> many(101, {"t", DType::kU8, {16}, Group::kParam});
  auto r = manager_->Register(s->id, s->token, many);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(r.status().message(), HasSubstr("max_tensors_per_session (100)"));
  std::vector<TensorSpec> long_names(
      70, {std::string(1000, 'x'), DType::kU8, {16}, Group::kParam});
  r = manager_->Register(s->id, s->token, long_names);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(r.status().message(),
              HasSubstr("max_metadata_bytes_per_session (65536)"));
  EXPECT_EQ(manager_->metadata_bytes(), 0u);  // nothing of it was kept
  many.resize(100);
  EXPECT_TRUE(manager_->Register(s->id, s->token, many).ok());
}

TEST_F(SessionLimitsTest, NamesAreUtf8AndEchoedShort) {
  Start({});
  auto bad =
      manager_->OpenSession({.device = std::string(300, 'd'), .pid = getpid()});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("... (300 bytes)"));
  auto s = manager_->OpenSession({.policy = Policy::kCpu, .pid = getpid()});
  ASSERT_TRUE(s.ok());
  auto r = manager_->Register(s->id, s->token,
                              {{"w\xc3\x28", DType::kU8, {16}, Group::kParam}});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(),
              HasSubstr("tensor #0 name is not valid UTF-8 (byte 1)"));
  auto long_name = manager_->Register(
      s->id, s->token,
      {{std::string(5000, 'L'), DType::kU8, {16}, Group::kParam}});
  EXPECT_THAT(long_name.status().message(), HasSubstr("... (5000 bytes)"));
  EXPECT_LT(long_name.status().message().size(), 200u);
}

}  // namespace
}  // namespace tidepool
