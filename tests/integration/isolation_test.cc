// A hostile client against a real tidepoold: what it is handed (memfds, the
// control page, pieces of the pools) cannot hurt the daemon or another
// session, and it can reach no other session's bytes, on the host pool and
// on the sim device pool.
//
// The attacker speaks the wire protocol itself (RawClient) so that it keeps
// every fd it receives; the victim is an ordinary libtidepool Session.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/shared_memory.h"
#include "common/unix_socket.h"
#include "gtest/gtest.h"
#include "proto/tidepool.grpc.pb.h"
#include "proto/wire.h"
#include "tests/support/process.h"
#include "tidepool/session.h"

namespace tidepool {
namespace {

using testing::DaemonOptions;
using testing::DaemonProcess;

constexpr uint64_t kMiB = 1 << 20;

// A session driven by hand: gRPC for requests, the fd socket for the
// attach and the pool pieces, every received fd kept.
class RawClient {
 public:
  explicit RawClient(const DaemonProcess& daemon)
      : stub_(v1::Tidepool::NewStub(grpc::CreateChannel(
            "unix:" + daemon.socket(), grpc::InsecureChannelCredentials()))) {
    v1::OpenSessionRequest open;
    open.set_pid(getpid());
    open.set_policy(v1::POLICY_CPU);
    open.set_chunk_size_bytes(kMiB);
    v1::OpenSessionResponse opened;
    grpc::ClientContext ctx;
    grpc::Status s = stub_->OpenSession(&ctx, open, &opened);
    EXPECT_TRUE(s.ok()) << s.error_message();
    ref_.set_session_id(opened.session_id());
    ref_.set_token(opened.token());
    auto conn = ConnectUnix(opened.fd_socket_path());
    EXPECT_TRUE(conn.ok()) << conn.status();
    conn_ = std::move(*conn);
    wire::AttachRequest req{};
    req.magic = wire::kAttachMagic;
    req.version = wire::kAttachVersion;
    req.session_id = opened.session_id();
    std::memcpy(req.token, opened.token().data(), sizeof(req.token));
    EXPECT_TRUE(SendMessage(conn_.get(), &req, sizeof(req)).ok());
    EXPECT_TRUE(
        ReceiveMessage(conn_.get(), &reply_, sizeof(reply_), &attach_fds_, 4)
            .ok());
    EXPECT_EQ(reply_.status_code, 0) << reply_.message;
  }

  // Registers one f32 tensor of `bytes` (a chunk of its own).
  uint64_t Register(uint64_t bytes) {
    v1::RegisterTensorsRequest request;
    *request.mutable_session() = ref_;
    auto* t = request.add_tensors();
    t->set_name(absl::StrCat("t", next_++));
    t->set_dtype(v1::DTYPE_F32);
    t->add_shape(static_cast<int64_t>(bytes / 4));
    v1::RegisterTensorsResponse response;
    grpc::ClientContext ctx;
    grpc::Status s = stub_->RegisterTensors(&ctx, request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response.tensors(0).tensor_id();
  }

  v1::AcquireResponse Acquire(uint64_t tensor, v1::Location where) {
    v1::AcquireRequest request;
    *request.mutable_session() = ref_;
    request.add_tensor_ids(tensor);
    request.set_mode(v1::ACCESS_READ_WRITE);
    request.set_location(where);
    v1::AcquireResponse response;
    grpc::ClientContext ctx;
    grpc::Status s = stub_->Acquire(&ctx, request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response;
  }

  void Release(uint64_t tensor) {
    v1::ReleaseRequest request;
    *request.mutable_session() = ref_;
    request.add_tensor_ids(tensor);
    request.set_target(v1::TENSOR_STATE_HOLD);
    v1::ReleaseResponse response;
    grpc::ClientContext ctx;
    EXPECT_TRUE(stub_->Release(&ctx, request, &response).ok());
  }

  void CloseSession() {
    v1::CloseSessionRequest request;
    *request.mutable_session() = ref_;
    v1::CloseSessionResponse response;
    grpc::ClientContext ctx;
    EXPECT_TRUE(stub_->CloseSession(&ctx, request, &response).ok());
  }

  struct Piece {
    wire::MapPiece where;
    UniqueFd fd;
  };
  // Every piece the daemon has for this session now.
  std::vector<Piece> Pull() {
    std::vector<Piece> out;
    for (;;) {
      const wire::MapRequest request{wire::kMapMagic, 0};
      EXPECT_TRUE(SendMessage(conn_.get(), &request, sizeof(request)).ok());
      wire::MapReply reply{};
      std::vector<UniqueFd> fds;
      absl::Status got = ReceiveMessage(conn_.get(), &reply, sizeof(reply),
                                        &fds, wire::kMaxPiecesPerReply);
      EXPECT_TRUE(got.ok()) << got;
      if (!got.ok() || reply.count == 0) return out;
      EXPECT_EQ(fds.size(), reply.count);
      for (uint32_t i = 0; i < reply.count && i < fds.size(); ++i) {
        out.push_back(Piece{reply.pieces[i], std::move(fds[i])});
      }
    }
  }

  std::vector<UniqueFd>& attach_fds() { return attach_fds_; }
  const wire::AttachReply& reply() const { return reply_; }

 private:
  std::unique_ptr<v1::Tidepool::Stub> stub_;
  v1::SessionRef ref_;
  UniqueFd conn_;
  wire::AttachReply reply_{};
  std::vector<UniqueFd> attach_fds_;
  int next_ = 0;
};

class IsolationTest : public ::testing::Test {
 protected:
  void Start(const std::string& sim_capacity) {
    DaemonOptions options;
    options.sim_capacity = sim_capacity;
    options.host_pool = "64MiB";
    options.chunk_size = "1MiB";
    auto d = DaemonProcess::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
  }

  std::unique_ptr<Session> Victim() {
    SessionOptions options;
    options.socket = daemon_->socket();
    options.policy = Policy::kCpu;
    options.chunk_size_bytes = kMiB;
    auto s = Session::Open(options);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }

  // Registers a tensor of `bytes` in `session` and fills it with `fill`
  // through the device; returns its id.
  static uint64_t Fill(Session& session, uint64_t bytes, uint8_t fill) {
    auto info =
        session.Register({TensorSpec{.name = absl::StrCat("w", int{fill}),
                                     .dtype = DType::kU8,
                                     .shape = {static_cast<int64_t>(bytes)}}});
    EXPECT_TRUE(info.ok()) << info.status();
    const uint64_t id = (*info)[0].id;
    auto got = session.Acquire({&id, 1}, AccessMode::kReadWrite);
    EXPECT_TRUE(got.ok()) << got.status();
    std::memset((*got)[0].data, fill, bytes);
    EXPECT_TRUE(session.Release({&id, 1}, TensorState::kHold).ok());
    return id;
  }

  static bool Holds(Session& session, uint64_t id, uint64_t bytes,
                    uint8_t fill) {
    auto got = session.AcquireOnHost({&id, 1}, AccessMode::kRead);
    if (!got.ok()) return false;
    const auto* p = static_cast<const uint8_t*>((*got)[0].data);
    bool ok = true;
    for (uint64_t i = 0; i < bytes; ++i) ok = ok && p[i] == fill;
    EXPECT_TRUE(session.Release({&id, 1}, TensorState::kHold).ok());
    return ok;
  }

  std::unique_ptr<DaemonProcess> daemon_;
};

bool AllBytes(const uint8_t* p, uint64_t n, uint8_t value) {
  for (uint64_t i = 0; i < n; ++i) {
    if (p[i] != value) return false;
  }
  return true;
}

TEST_F(IsolationTest, EveryReceivedFdIsSealedAndTheDaemonSurvivesTruncation) {
  Start("8MiB");
  auto victim = Victim();
  ASSERT_NE(victim, nullptr);
  const uint64_t kept = Fill(*victim, kMiB, 0x5a);

  RawClient attacker(*daemon_);
  const uint64_t t = attacker.Register(kMiB);
  attacker.Acquire(t, v1::LOCATION_DEVICE);
  std::vector<int> fds;
  for (auto& fd : attacker.attach_fds()) fds.push_back(fd.get());
  std::vector<RawClient::Piece> pieces = attacker.Pull();
  ASSERT_EQ(pieces.size(), 2u);  // the host home and the device slot
  for (auto& p : pieces) fds.push_back(p.fd.get());
  for (int fd : fds) {
    const int seals = ::fcntl(fd, F_GET_SEALS);
    EXPECT_TRUE(seals & F_SEAL_SHRINK) << "fd " << fd;
    EXPECT_TRUE(seals & F_SEAL_GROW) << "fd " << fd;
    EXPECT_NE(::ftruncate(fd, 0), 0) << "fd " << fd;
    EXPECT_NE(::ftruncate(fd, 1ll << 40), 0) << "fd " << fd;
  }
  // The daemon is still there, and the victim's bytes too.
  EXPECT_TRUE(daemon_->process().Running());
  EXPECT_TRUE(Holds(*victim, kept, kMiB, 0x5a));
  Fill(*victim, kMiB, 0x6b);
}

TEST_F(IsolationTest, TheControlPageCannotBeWrittenByAClient) {
  Start("8MiB");
  RawClient attacker(*daemon_);
  const int control = attacker.attach_fds().at(0).get();
  const size_t bytes = attacker.reply().control_page_bytes;
  ASSERT_GT(bytes, 0u);
  EXPECT_EQ(
      ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, control, 0),
      MAP_FAILED);
  void* ro = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, control, 0);
  ASSERT_NE(ro, MAP_FAILED);
  EXPECT_NE(::mprotect(ro, bytes, PROT_READ | PROT_WRITE), 0);
  EXPECT_LT(::pwrite(control, "x", 1, 8), 1);
  // Not even through /proc/self/mem, which writes past page protections.
  const int mem = ::open("/proc/self/mem", O_RDWR | O_CLOEXEC);
  ASSERT_GE(mem, 0);
  const uint64_t huge = ~0ull;
  EXPECT_LT(::pwrite(mem, &huge, sizeof(huge),
                     reinterpret_cast<off_t>(static_cast<char*>(ro) + 8)),
            static_cast<ssize_t>(sizeof(huge)));
  ::close(mem);
  const auto* page = static_cast<const wire::ControlPage*>(ro);
  EXPECT_EQ(page->magic, wire::kControlMagic);
  EXPECT_NE(page->arrived_sequence.load(), huge);
  ::munmap(ro, bytes);

  // Arrivals still work for everyone.
  auto victim = Victim();
  ASSERT_NE(victim, nullptr);
  const uint64_t id = Fill(*victim, kMiB, 0x11);
  EXPECT_TRUE(Holds(*victim, id, kMiB, 0x11));
}

TEST_F(IsolationTest, AClientIsGivenOnlyItsOwnSessionsPieces) {
  Start("8MiB");
  auto victim = Victim();
  ASSERT_NE(victim, nullptr);
  std::vector<uint64_t> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(Fill(*victim, kMiB, 0xa0 + i));
  // Where the victim's chunks are (the admin view, as tidepoolctl shows it).
  auto admin = v1::Tidepool::NewStub(grpc::CreateChannel(
      "unix:" + daemon_->socket(), grpc::InsecureChannelCredentials()));
  v1::ListChunksRequest list;
  list.set_session_id(victim->id());
  v1::ListChunksResponse chunks;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(admin->ListChunks(&ctx, list, &chunks).ok());
  }
  ASSERT_EQ(chunks.chunks_size(), 3);

  RawClient attacker(*daemon_);
  const uint64_t t = attacker.Register(kMiB);
  attacker.Acquire(t, v1::LOCATION_DEVICE);
  std::vector<RawClient::Piece> pieces = attacker.Pull();
  ASSERT_EQ(pieces.size(), 2u);
  for (auto& p : pieces) {
    for (const v1::ChunkDetail& d : chunks.chunks()) {
      const v1::ChunkInfo& c = d.chunk();
      if (p.where.device && c.location() != v1::LOCATION_DEVICE) continue;
      const uint64_t theirs =
          p.where.device ? c.device_offset() : c.host_offset();
      const bool overlap = p.where.offset < theirs + c.size_bytes() &&
                           theirs < p.where.offset + p.where.bytes;
      EXPECT_FALSE(overlap) << "piece at " << p.where.offset
                            << " overlaps the victim's chunk " << c.chunk_id();
    }
    void* m =
        ::mmap(nullptr, p.where.bytes, PROT_READ, MAP_SHARED, p.fd.get(), 0);
    ASSERT_NE(m, MAP_FAILED);
    EXPECT_TRUE(AllBytes(static_cast<uint8_t*>(m), p.where.bytes, 0));
    ::munmap(m, p.where.bytes);
    // A piece is exactly as large as the daemon says: nothing beyond it.
    auto size = FdSize(p.fd.get());
    ASSERT_TRUE(size.ok());
    EXPECT_EQ(*size, p.where.bytes);
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_TRUE(Holds(*victim, ids[i], kMiB, 0xa0 + i));
  }
}

TEST_F(IsolationTest, MemoryPassedOnToAnotherSessionIsNotVisibleToTheFirst) {
  // A 2 MiB sim device of 1 MiB slots: the victim's loads must reuse the
  // slot the attacker had, and its host homes reuse the attacker's.
  Start("2MiB");
  std::vector<std::pair<void*, uint64_t>> old_views;
  {
    RawClient attacker(*daemon_);
    const uint64_t t = attacker.Register(kMiB);
    attacker.Acquire(t, v1::LOCATION_DEVICE);
    attacker.Release(t);
    for (auto& p : attacker.Pull()) {
      void* m =
          ::mmap(nullptr, p.where.bytes, PROT_READ, MAP_SHARED, p.fd.get(), 0);
      ASSERT_NE(m, MAP_FAILED);
      old_views.emplace_back(m, p.where.bytes);
    }
    ASSERT_EQ(old_views.size(), 2u);
    // The attacker's session ends; its process keeps the mappings.
    attacker.CloseSession();
  }
  auto victim = Victim();
  ASSERT_NE(victim, nullptr);
  std::vector<uint64_t> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(Fill(*victim, kMiB, 0xc0 + i));
  for (int round = 0; round < 2; ++round) {
    for (size_t i = 0; i < ids.size(); ++i) {
      EXPECT_TRUE(Holds(*victim, ids[i], kMiB, 0xc0 + i));
      auto got = victim->Acquire({&ids[i], 1}, AccessMode::kRead);
      ASSERT_TRUE(got.ok()) << got.status();
      ASSERT_TRUE(victim->Release({&ids[i], 1}, TensorState::kHold).ok());
    }
  }
  for (auto [m, bytes] : old_views) {
    EXPECT_TRUE(AllBytes(static_cast<uint8_t*>(m), bytes, 0))
        << "the attacker's old mapping shows bytes written after its session";
    ::munmap(m, bytes);
  }
}

int CountOf(const std::string& status_key, pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(status_key, 0) == 0) {
      int v = 0;
      if (absl::SimpleAtoi(line.substr(status_key.size()), &v)) return v;
    }
  }
  return -1;
}

int OpenFds(pid_t pid) {
  int n = 0;
  std::string dir = absl::StrCat("/proc/", pid, "/fd/");
  for (int fd = 0; fd < 65536; ++fd) {
    if (::access((dir + std::to_string(fd)).c_str(), F_OK) == 0) ++n;
  }
  return n;
}

TEST_F(IsolationTest, AFloodOfIdleConnectionsCostsNoThreadsAndIsBounded) {
  Start("8MiB");
  const pid_t pid = daemon_->process().pid();
  auto victim = Victim();
  ASSERT_NE(victim, nullptr);
  const uint64_t id = Fill(*victim, kMiB, 0x33);
  const int threads_before = CountOf("Threads:", pid);
  const int fds_before = OpenFds(pid);
  ASSERT_GT(threads_before, 0);
  std::vector<UniqueFd> idle;
  for (int i = 0; i < 600; ++i) {
    auto c = ConnectUnix(daemon_->fd_socket());
    if (c.ok()) idle.push_back(std::move(*c));
  }
  // A session opens and attaches through the flood (the oldest idle
  // connections make room), and the first one keeps moving bytes.
  auto late = Victim();
  ASSERT_NE(late, nullptr);
  const uint64_t late_id = Fill(*late, kMiB, 0x44);
  EXPECT_TRUE(Holds(*late, late_id, kMiB, 0x44));
  EXPECT_TRUE(Holds(*victim, id, kMiB, 0x33));
  // 600 connections cost no thread each: the new session's hot path is one,
  // and gRPC's pool may add a few for its RPCs.
  EXPECT_LE(CountOf("Threads:", pid), threads_before + 4);
  // At most the bounded number of unauthenticated connections is held.
  EXPECT_LE(OpenFds(pid), fds_before + 128 + 8);
  EXPECT_TRUE(daemon_->process().Running());
}

}  // namespace
}  // namespace tidepool
