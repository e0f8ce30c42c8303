// The hot path's ring (proto/wire.h HotPath) against a real tidepoold on
// the sim backend: driven by hand, as a broken or hostile client could
// (several requests in flight, entries published out of order, garbage, a
// client that goes away with requests queued), and through the library
// (releases posted without waiting, their failures returned later, never
// lost). Each time the daemon answers in order and keeps serving.
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "common/futex.h"
#include "common/shared_memory.h"
#include "common/unix_socket.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/tidepool.grpc.pb.h"
#include "proto/wire.h"
#include "tests/support/process.h"
#include "tidepool/session.h"

namespace tidepool {
namespace {

using testing::DaemonOptions;
using testing::DaemonProcess;
using ::testing::HasSubstr;

constexpr int kInvalid = static_cast<int>(absl::StatusCode::kInvalidArgument);
constexpr int kAborted = static_cast<int>(absl::StatusCode::kAborted);
constexpr int kPrecondition =
    static_cast<int>(absl::StatusCode::kFailedPrecondition);

// One session opened over gRPC and attached by hand; the test writes the
// ring's entries itself.
class RawHotPath {
 public:
  static std::unique_ptr<RawHotPath> Open(DaemonProcess& daemon) {
    auto raw = std::unique_ptr<RawHotPath>(new RawHotPath());
    raw->stub_ = v1::Tidepool::NewStub(grpc::CreateChannel(
        "unix:" + daemon.socket(), grpc::InsecureChannelCredentials()));
    v1::OpenSessionRequest open;
    open.set_pid(getpid());
    open.set_policy(v1::POLICY_CPU);
    v1::OpenSessionResponse opened;
    grpc::ClientContext ctx;
    EXPECT_TRUE(raw->stub_->OpenSession(&ctx, open, &opened).ok());
    raw->ref_.set_session_id(opened.session_id());
    raw->ref_.set_token(opened.token());
    auto conn = ConnectUnix(daemon.fd_socket());
    EXPECT_TRUE(conn.ok()) << conn.status();
    if (!conn.ok()) return nullptr;
    raw->conn_ = std::move(*conn);
    wire::AttachRequest req{};
    req.magic = wire::kAttachMagic;
    req.version = wire::kAttachVersion;
    req.session_id = opened.session_id();
    std::memcpy(req.token, opened.token().data(), sizeof(req.token));
    EXPECT_TRUE(SendMessage(raw->conn_.get(), &req, sizeof(req)).ok());
    wire::AttachReply reply{};
    std::vector<UniqueFd> fds;
    EXPECT_TRUE(
        ReceiveMessage(raw->conn_.get(), &reply, sizeof(reply), &fds, 4).ok());
    EXPECT_EQ(reply.status_code, 0) << reply.message;
    EXPECT_EQ(fds.size(), 2u);  // sim: control page, hot path
    if (fds.size() != 2) return nullptr;
    auto page = SharedMapping::Map(fds[1].get(), reply.hot_path_bytes);
    EXPECT_TRUE(page.ok()) << page.status();
    if (!page.ok()) return nullptr;
    raw->page_ = std::move(*page);
    EXPECT_EQ(raw->hp()->version, wire::kHotPathVersion);
    EXPECT_EQ(raw->hp()->ring_entries, wire::kHotPathRing);
    return raw;
  }

  // Registers `n` tensors of `bytes` each over gRPC.
  std::vector<uint64_t> Register(int n, int64_t bytes = 4096) {
    v1::RegisterTensorsRequest request;
    *request.mutable_session() = ref_;
    for (int i = 0; i < n; ++i) {
      auto* t = request.add_tensors();
      t->set_name("t" + std::to_string(i));
      t->set_dtype(v1::DTYPE_U8);
      t->add_shape(bytes);
      t->set_group(v1::GROUP_PARAM);
    }
    v1::RegisterTensorsResponse response;
    grpc::ClientContext ctx;
    EXPECT_TRUE(stub_->RegisterTensors(&ctx, request, &response).ok());
    std::vector<uint64_t> ids;
    for (const auto& t : response.tensors()) ids.push_back(t.tensor_id());
    return ids;
  }

  wire::HotPath* hp() const {
    return reinterpret_cast<wire::HotPath*>(page_.data());
  }
  wire::HotPathRequest& Request(uint64_t k) {
    return hp()->requests[wire::HotPathIndex(k)].request;
  }
  // Fills request k as an acquire (read) or a release (hold) of `id`.
  void Fill(uint64_t k, wire::HotPathOp op, uint64_t id,
            uint64_t failures_seen = 0) {
    wire::HotPathRequest& r = Request(k);
    std::memset(&r, 0, sizeof(r));
    r.op = static_cast<uint32_t>(op);
    r.arg = op == wire::HotPathOp::kRelease
                ? static_cast<uint32_t>(v1::TENSOR_STATE_HOLD)
                : static_cast<uint32_t>(v1::ACCESS_READ);
    r.count = 1;
    r.tensor_ids[0] = id;
    r.failures_seen = failures_seen;
  }
  // Publishes entry `k` with `seq` (k, or garbage) and rings.
  void Publish(uint64_t k, uint64_t seq) {
    hp()->requests[wire::HotPathIndex(k)].seq.store(seq);
    hp()->request_bell.fetch_add(1);
    FutexWakeAll(&hp()->request_bell);
  }
  void Post(uint64_t k) { Publish(k, k); }
  bool Done(uint64_t k) {
    return hp()->completions[wire::HotPathIndex(k)].seq.load() == k;
  }
  const wire::HotPathCompletion& Wait(uint64_t k) {
    auto& entry = hp()->completions[wire::HotPathIndex(k)];
    hp()->client_sleeping.store(1);
    while (entry.seq.load() != k) {
      const uint32_t bell = hp()->completion_bell.load();
      if (entry.seq.load() == k) break;
      FutexWait(&hp()->completion_bell, bell, 10'000'000);
    }
    return entry.completion;
  }
  // Posts entry k and waits for its status.
  int Call(uint64_t k) {
    Post(k);
    return Wait(k).status_code;
  }
  // The fd socket closes as if the process died.
  void Detach() { conn_.Reset(); }

 private:
  RawHotPath() = default;
  std::unique_ptr<v1::Tidepool::Stub> stub_;
  v1::SessionRef ref_;
  UniqueFd conn_;
  SharedMapping page_;
};

class HotPathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = DaemonProcess::Start(DaemonOptions{});
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
    raw_ = RawHotPath::Open(*daemon_);
    ASSERT_NE(raw_, nullptr);
  }

  std::unique_ptr<Session> Open(Policy policy = Policy::kCpu) {
    SessionOptions options;
    options.socket = daemon_->socket();
    options.policy = policy;
    auto s = Session::Open(options);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }

  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<RawHotPath> raw_;
};

using Op = wire::HotPathOp;

// A full ring of acquire/release pairs of one tensor, posted before any is
// read, twice round: all succeed, which they can only in order (a release
// served before its acquire fails, an acquire after an acquire too).
TEST_F(HotPathTest, AFullRingIsServedInOrder) {
  const std::vector<uint64_t> ids = raw_->Register(2);
  ASSERT_EQ(ids.size(), 2u);
  for (uint64_t round = 0; round < 2; ++round) {
    const uint64_t first = round * wire::kHotPathRing + 1;
    for (uint64_t k = first; k < first + wire::kHotPathRing; ++k) {
      raw_->Fill(k, k % 2 ? Op::kAcquire : Op::kRelease, ids[round]);
      raw_->Post(k);
    }
    for (uint64_t k = first; k < first + wire::kHotPathRing; ++k) {
      const wire::HotPathCompletion& c = raw_->Wait(k);
      EXPECT_EQ(c.status_code, 0) << "entry " << k << ": " << c.message;
      if (k % 2) {
        EXPECT_EQ(c.count, 1u);
      }
    }
  }
}

// Entry 2 published before entry 1 waits for it: requests are taken
// strictly in sequence, whatever order the entries appear in.
TEST_F(HotPathTest, AnEntryPublishedEarlyWaitsItsTurn) {
  const std::vector<uint64_t> ids = raw_->Register(1);
  ASSERT_EQ(ids.size(), 1u);
  raw_->Fill(1, Op::kAcquire, ids[0]);
  raw_->Fill(2, Op::kRelease, ids[0]);
  raw_->Post(2);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(raw_->Done(2));
  EXPECT_FALSE(raw_->Done(1));
  raw_->Post(1);
  EXPECT_EQ(raw_->Wait(1).status_code, 0);
  EXPECT_EQ(raw_->Wait(2).status_code, 0) << raw_->Wait(2).message;
}

// Garbage in the ring: error completions for the entries concerned and
// nothing else; the daemon, this session and the others keep working.
TEST_F(HotPathTest, GarbageGetsErrorCompletions) {
  auto other = Open();
  ASSERT_NE(other, nullptr);
  auto theirs = other->Register({{"theirs", DType::kU8, {64}, Group::kParam}});
  ASSERT_TRUE(theirs.ok());
  const std::vector<uint64_t> ids = raw_->Register(1);
  ASSERT_EQ(ids.size(), 1u);
  // The doorbells and sleep flags are the client's to scribble on too.
  raw_->hp()->daemon_sleeping.store(0xffffffff);
  raw_->hp()->request_bell.store(0xdeadbeef);

  std::memset(&raw_->Request(1), 0xff, sizeof(wire::HotPathRequest));
  EXPECT_EQ(raw_->Call(1), kInvalid);  // 2^32-1 tensors
  raw_->Fill(2, Op::kAcquire, ids[0], 1);
  raw_->Request(2).op = 77;
  EXPECT_EQ(raw_->Call(2), kInvalid);
  EXPECT_THAT(raw_->Wait(2).message, HasSubstr("unknown operation"));
  raw_->Fill(3, Op::kAcquire, (*theirs)[0].id, 2);  // another session's
  EXPECT_EQ(raw_->Call(3), static_cast<int>(absl::StatusCode::kNotFound));
  // An entry whose sequence is neither its old value nor the next one.
  raw_->Fill(4, Op::kAcquire, ids[0], 3);
  raw_->Publish(4, 9999);
  EXPECT_EQ(raw_->Wait(4).status_code, kInvalid);
  EXPECT_THAT(raw_->Wait(4).message, HasSubstr("sequence 9999, expected 4"));
  // The next entry is served as usual.
  raw_->Fill(5, Op::kAcquire, ids[0], 4);
  EXPECT_EQ(raw_->Call(5), 0) << raw_->Wait(5).message;
  raw_->Fill(6, Op::kRelease, ids[0], 4);
  EXPECT_EQ(raw_->Call(6), 0) << raw_->Wait(6).message;

  auto mine = other->Acquire({&(*theirs)[0].id, 1}, AccessMode::kReadWrite);
  EXPECT_TRUE(mine.ok()) << mine.status();
}

// An acquire posted behind a release that then fails is not run: the
// client, which did not know of the failure, must not end up holding
// tensors it does not know it holds.
TEST_F(HotPathTest, AnAcquireBehindAFailedReleaseIsNotRun) {
  const std::vector<uint64_t> ids = raw_->Register(1);
  ASSERT_EQ(ids.size(), 1u);
  raw_->Fill(1, Op::kRelease, ids[0]);  // never acquired
  raw_->Fill(2, Op::kAcquire, ids[0], /*failures_seen=*/0);
  raw_->Post(1);
  raw_->Post(2);
  EXPECT_EQ(raw_->Wait(1).status_code, kPrecondition);
  EXPECT_EQ(raw_->Wait(2).status_code, kAborted);
  // Had entry 2 run, this one would find the tensor already acquired.
  raw_->Fill(3, Op::kAcquire, ids[0], /*failures_seen=*/2);
  EXPECT_EQ(raw_->Call(3), 0) << raw_->Wait(3).message;
}

// Step marks travel the ring too, in order with the rest: one with
// tensors or an op key is refused, and one posted behind a release that
// then fails is not run (as over gRPC, where the client returns the
// failure and marks no step).
TEST_F(HotPathTest, AStepMarkIsCheckedAndWaitsForEarlierFailures) {
  const std::vector<uint64_t> ids = raw_->Register(1);
  ASSERT_EQ(ids.size(), 1u);
  raw_->Fill(1, Op::kMarkStep, ids[0]);  // a tensor
  EXPECT_EQ(raw_->Call(1), kInvalid);
  EXPECT_THAT(raw_->Wait(1).message, HasSubstr("names no tensors"));
  raw_->Fill(2, Op::kMarkStep, 0, 1);
  raw_->Request(2).count = 0;
  raw_->Request(2).key_len = 3;
  EXPECT_EQ(raw_->Call(2), kInvalid);
  raw_->Fill(3, Op::kRelease, ids[0], 2);  // never acquired
  raw_->Fill(4, Op::kMarkStep, 0, /*failures_seen=*/2);
  raw_->Request(4).count = 0;
  raw_->Post(3);
  raw_->Post(4);
  EXPECT_EQ(raw_->Wait(3).status_code, kPrecondition);
  EXPECT_EQ(raw_->Wait(4).status_code, kAborted);
  raw_->Fill(5, Op::kMarkStep, 0, /*failures_seen=*/4);
  raw_->Request(5).count = 0;
  EXPECT_EQ(raw_->Call(5), 0) << raw_->Wait(5).message;
  EXPECT_EQ(raw_->Wait(5).placement_bytes, 0u);  // a cpu session: none
}

// Through the library, an auto session's step marks go over the ring and
// report the placement as GetStats does, up to its plan.
TEST_F(HotPathTest, StepMarksOverTheRingReportThePlacement) {
  auto s = Open(Policy::kAuto);
  ASSERT_NE(s, nullptr);
  auto t = s->Register({{"a", DType::kU8, {4096}, Group::kParam},
                        {"b", DType::kU8, {4096}, Group::kParam}});
  ASSERT_TRUE(t.ok()) << t.status();
  PlacementStatus last;
  for (int step = 0; step < 6; ++step) {
    for (size_t i = 0; i < t->size(); ++i) {
      const TensorInfo& info = (*t)[i];
      s->BeginOp(i == 0 ? "a" : "b");
      ASSERT_TRUE(s->Acquire({&info.id, 1}, AccessMode::kRead).ok());
      ASSERT_TRUE(s->Release({&info.id, 1}, TensorState::kHold).ok());
    }
    auto marked = s->MarkStep();
    ASSERT_TRUE(marked.ok()) << marked.status();
    EXPECT_EQ(marked->steps, static_cast<uint64_t>(step + 1));
    last = *marked;
  }
  EXPECT_EQ(last.state, "planned");
  EXPECT_EQ(last.plan_ops, 2u);
  auto stats = s->Placement();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->state, last.state);
  EXPECT_EQ(stats->steps, last.steps);
  EXPECT_EQ(stats->planned_ops, last.planned_ops);
  EXPECT_EQ(stats->replans, last.replans);
}

// A client that goes away with a ring full of requests queued: the daemon
// reclaims the session (its hot-path thread stops) and serves the others.
TEST_F(HotPathTest, AClientGoneWithRequestsQueuedIsReclaimed) {
  auto probe = Open();
  ASSERT_NE(probe, nullptr);
  // Chunks of 4 MiB to load from the host: the queue takes a while.
  const std::vector<uint64_t> ids = raw_->Register(8, 4 << 20);
  ASSERT_EQ(ids.size(), 8u);
  for (uint64_t k = 1; k <= wire::kHotPathRing; ++k) {
    raw_->Fill(k, k % 2 ? Op::kAcquire : Op::kRelease, ids[(k - 1) / 2]);
    raw_->Post(k);
  }
  raw_->Detach();
  bool settled = false;
  for (int i = 0; i < 500 && !settled; ++i) {
    auto st = probe->Stats();
    ASSERT_TRUE(st.ok()) << st.status();
    settled = st->sessions == 1 && st->host_pool_used == 0;
    if (!settled) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(settled) << "the session was not reclaimed";
  auto t = probe->Register({{"w", DType::kU8, {4096}, Group::kParam}});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(probe->Acquire({&(*t)[0].id, 1}, AccessMode::kRead).ok());
}

// Through the library: a release is posted without waiting; its failure
// is the answer of the next call that waits, once, and that call did
// nothing (the acquire it refused did not take the tensor).
TEST_F(HotPathTest, AReleaseFailureComesBackFromTheNextCallOnce) {
  auto s = Open();
  ASSERT_NE(s, nullptr);
  auto t = s->Register({{"a", DType::kU8, {4096}, Group::kParam},
                        {"b", DType::kU8, {4096}, Group::kParam}});
  ASSERT_TRUE(t.ok());
  const uint64_t a = (*t)[0].id, b = (*t)[1].id;
  absl::Status posted = s->Release({&a, 1}, TensorState::kHold);
  auto got = s->Acquire({&b, 1}, AccessMode::kRead);
  const absl::Status& failure = posted.ok() ? got.status() : posted;
  EXPECT_EQ(failure.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(failure.message(), HasSubstr("an earlier Release failed"));
  EXPECT_THAT(failure.message(), HasSubstr("not acquired"));
  EXPECT_TRUE(s->Flush().ok());  // returned once, not again
  got = s->Acquire({&b, 1}, AccessMode::kRead);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(s->Release({&b, 1}, TensorState::kHold).ok());
  EXPECT_TRUE(s->Flush().ok());
}

// More releases than the ring holds: posting waits for free entries, and
// not one failure is lost.
TEST_F(HotPathTest, ReleasesBeyondTheRingAllCountAndFailuresAreNotLost) {
  auto s = Open();
  ASSERT_NE(s, nullptr);
  std::vector<TensorSpec> specs;
  for (int i = 0; i < 40; ++i) {
    specs.push_back(
        {"t" + std::to_string(i), DType::kU8, {4096}, Group::kParam});
  }
  auto t = s->Register(specs);
  ASSERT_TRUE(t.ok());
  std::vector<uint64_t> ids;
  for (const auto& info : *t) ids.push_back(info.id);
  ASSERT_TRUE(s->Acquire(ids, AccessMode::kReadWrite).ok());
  for (uint64_t id : ids) {
    ASSERT_TRUE(s->Release({&id, 1}, TensorState::kHold).ok());
  }
  ASSERT_TRUE(s->Flush().ok());
  // Every one ran: all of them can be acquired again.
  auto again = s->Acquire(ids, AccessMode::kRead);
  ASSERT_TRUE(again.ok()) << again.status();
  for (uint64_t id : ids) {
    ASSERT_TRUE(s->Release({&id, 1}, TensorState::kHold).ok());
  }
  ASSERT_TRUE(s->Flush().ok());
  // Now 40 that fail (none is acquired). A call that returns an earlier
  // failure posts nothing; every posted one is counted in some status.
  uint64_t not_posted = 0, reported = 0;
  auto count = [&](const absl::Status& st) {
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(st.message(), HasSubstr("an earlier Release failed"));
    const std::string m(st.message());
    const size_t more = m.find("(and ");
    reported +=
        1 + (more == std::string::npos ? 0 : std::stoull(m.substr(more + 5)));
  };
  for (uint64_t id : ids) {
    absl::Status r = s->Release({&id, 1}, TensorState::kHold);
    if (!r.ok()) {
      ++not_posted;
      count(r);
    }
  }
  absl::Status flushed = s->Flush();
  if (!flushed.ok()) count(flushed);
  EXPECT_GT(reported, 0u);
  EXPECT_EQ(reported, ids.size() - not_posted);
  EXPECT_TRUE(s->Flush().ok());
}

}  // namespace
}  // namespace tidepool

namespace tidepool {
namespace {

size_t ThreadsOf(pid_t pid) {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(
           "/proc/" + std::to_string(pid) + "/task")) {
    (void)e;
    ++n;
  }
  return n;
}

// Sixteen sessions on a daemon with two hot-path threads: the threads do not
// grow with the sessions, every session's requests are served in order
// while the others post theirs, and a session that goes away with a full
// ring queued leaves the others served (its poller lets go of it).
TEST(HotPathThreadsTest,
     SixteenSessionsShareTwoThreadsAndAreEachServedInOrder) {
  auto daemon = DaemonProcess::Start(
      DaemonOptions{.extra_args = {"--hot_path_threads=2"}});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  const pid_t pid = (*daemon)->process().pid();
  constexpr int kSessions = 16;
  std::vector<std::unique_ptr<RawHotPath>> raws;
  std::vector<std::vector<uint64_t>> ids;
  // The first session starts the pollers' thread; count from there.
  raws.push_back(RawHotPath::Open(**daemon));
  ASSERT_NE(raws.back(), nullptr);
  const size_t threads_with_one = ThreadsOf(pid);
  for (int i = 1; i < kSessions; ++i) {
    raws.push_back(RawHotPath::Open(**daemon));
    ASSERT_NE(raws.back(), nullptr);
  }
  // One more poller, and a few gRPC threads that the opens may have
  // started; a thread per session would be 15 more.
  EXPECT_LE(ThreadsOf(pid), threads_with_one + 4)
      << "a thread per session instead of two for all";
  for (auto& raw : raws) ids.push_back(raw->Register(2));

  // Session 0 queues a full ring of acquires of tensors that are already
  // held after the first (all fail but the first) and goes away.
  RawHotPath& gone = *raws[0];
  for (uint64_t k = 1; k <= wire::kHotPathRing; ++k) {
    gone.Fill(k, Op::kAcquire, ids[0][0]);
    gone.Post(k);
  }
  gone.Detach();

  constexpr uint64_t kPairs = 300;
  std::vector<std::thread> threads;
  std::vector<int> failures(kSessions, 0);
  for (int i = 1; i < kSessions; ++i) {
    threads.emplace_back([&, i] {
      RawHotPath& raw = *raws[i];
      // Acquire k, release k+1, ...: a request served out of order fails
      // (a second acquire of a held tensor, a release of a free one).
      for (uint64_t k = 1; k <= 2 * kPairs; ++k) {
        raw.Fill(k, k % 2 ? Op::kAcquire : Op::kRelease,
                 ids[i][(k - 1) / 2 % 2]);
        if (raw.Call(k) != 0) ++failures[i];
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 1; i < kSessions; ++i) {
    EXPECT_EQ(failures[i], 0) << "session " << i;
  }
  EXPECT_LE(ThreadsOf(pid), threads_with_one + 4);
}

}  // namespace
}  // namespace tidepool
