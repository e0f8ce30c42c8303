// tidepoold against broken and hostile clients, with real processes: each
// attack gets a clear error naming the limit, and another session's work
// still succeeds afterwards (docs/operations.md, "Security").
#include <grp.h>
#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/tidepool.grpc.pb.h"
#include "tests/support/process.h"
#include "tests/support/temp_dir.h"
#include "tidepool/session.h"

namespace tidepool {
namespace {

using testing::ChildProcess;
using testing::DaemonOptions;
using testing::DaemonProcess;
using ::testing::HasSubstr;

class TempDir : public testing::TempDir {
 public:
  TempDir() : testing::TempDir("tidepool-hardening") {}
};

// A daemon on the sim backend with `toml` as its config file.
std::unique_ptr<DaemonProcess> StartWithConfig(const TempDir& dir,
                                               const std::string& toml) {
  const std::string config = dir.path() + "/tidepoold.toml";
  std::ofstream(config) << toml;
  DaemonOptions options;  // 64 MiB sim device, 4 MiB chunks
  options.extra_args = {"--config=" + config};
  auto d = DaemonProcess::Start(options);
  EXPECT_TRUE(d.ok()) << d.status();
  return d.ok() ? std::move(*d) : nullptr;
}

std::unique_ptr<Session> Open(const DaemonProcess& daemon,
                              SessionOptions options = {}) {
  options.socket = daemon.socket();
  if (!options.policy) options.policy = Policy::kCpu;
  auto s = Session::Open(options);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(*s) : nullptr;
}

// The victim: a session opened before the attack still registers, moves
// and reads back its bytes after it.
void ExpectServes(Session& s) {
  auto t = s.Register(
      {{absl::StrCat("victim", ::rand()), DType::kU8, {4096}, Group::kParam}});
  ASSERT_TRUE(t.ok()) << t.status();
  const uint64_t id = (*t)[0].id;
  auto got = s.Acquire({&id, 1}, AccessMode::kReadWrite);
  ASSERT_TRUE(got.ok()) << got.status();
  std::memset((*got)[0].data, 0x5c, 4096);
  ASSERT_TRUE(s.Release({&id, 1}, TensorState::kHold).ok());
  got = s.AcquireOnHost({&id, 1}, AccessMode::kRead);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(static_cast<uint8_t*>((*got)[0].data)[4095], 0x5c);
  ASSERT_TRUE(s.Release({&id, 1}, TensorState::kHold).ok());
}

std::unique_ptr<v1::Tidepool::Stub> Stub(const DaemonProcess& daemon) {
  return v1::Tidepool::NewStub(grpc::CreateChannel(
      "unix:" + daemon.socket(), grpc::InsecureChannelCredentials()));
}

grpc::Status RawOpen(v1::Tidepool::Stub& stub, v1::OpenSessionRequest request,
                     v1::OpenSessionResponse* response) {
  if (request.pid() == 0) request.set_pid(::getpid());
  if (request.policy() == v1::POLICY_UNSPECIFIED) {
    request.set_policy(v1::POLICY_CPU);
  }
  grpc::ClientContext ctx;
  return stub.OpenSession(&ctx, request, response);
}

mode_t ModeOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

// --- 7. Permissions -------------------------------------------------------

// Runs tidepoold with `args` under umask 000 until its sockets exist (true)
// or it exits (false); its stderr goes to `log`.
struct Started {
  bool ready = false;
  std::unique_ptr<ChildProcess> process;
};
Started StartUnderOpenUmask(const std::string& socket, const std::string& log) {
  const mode_t saved = ::umask(0);
  auto child = ChildProcess::Spawn(
      {"/bin/sh", "-c",
       absl::StrCat("exec '", testing::BinDir(), "/tidepoold' --device=sim ",
                    "--sim_capacity=16MiB --host_pool=64MiB ",
                    "--chunk_size=1MiB --socket='", socket, "' 2>'", log,
                    "'")});
  ::umask(saved);
  Started out;
  if (!child.ok()) {
    ADD_FAILURE() << child.status();
    return out;
  }
  out.process = std::make_unique<ChildProcess>(std::move(*child));
  for (int i = 0; i < 3000; ++i) {
    if (std::filesystem::exists(socket) &&
        std::filesystem::exists(socket + ".fd")) {
      out.ready = true;
      return out;
    }
    if (!out.process->Running()) return out;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ADD_FAILURE() << "tidepoold neither started nor exited";
  return out;
}

void Stop(Started& d) {
  if (d.process && d.process->Running()) {
    d.process->Kill(SIGTERM);
    EXPECT_EQ(d.process->Wait(), 0);
  }
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(PermissionsTest, SocketsAndTheirDirectoryAreClosedUnderUmask000) {
  TempDir dir;
  // A directory the daemon creates (and its missing parent).
  const std::string created = dir.path() + "/run/tidepool";
  Started fresh =
      StartUnderOpenUmask(created + "/tidepoold.sock", dir.path() + "/a.log");
  ASSERT_TRUE(fresh.ready) << ReadFile(dir.path() + "/a.log");
  EXPECT_EQ(ModeOf(created), 0750u);
  EXPECT_EQ(ModeOf(dir.path() + "/run"), 0755u);
  EXPECT_EQ(ModeOf(created + "/tidepoold.sock"), 0660u);
  EXPECT_EQ(ModeOf(created + "/tidepoold.sock.fd"), 0660u);
  Stop(fresh);

  // An existing directory of ours, open to everyone (stale sockets in it):
  // closed at start.
  const std::string open = dir.path() + "/open";
  ASSERT_EQ(::mkdir(open.c_str(), 0700), 0);
  ASSERT_EQ(::chmod(open.c_str(), 0777), 0);
  Started fixed =
      StartUnderOpenUmask(open + "/tidepoold.sock", dir.path() + "/b.log");
  ASSERT_TRUE(fixed.ready) << ReadFile(dir.path() + "/b.log");
  EXPECT_EQ(ModeOf(open), 0750u);
  EXPECT_EQ(ModeOf(open + "/tidepoold.sock"), 0660u);
  EXPECT_EQ(ModeOf(open + "/tidepoold.sock.fd"), 0660u);
  Stop(fixed);
  EXPECT_THAT(ReadFile(dir.path() + "/b.log"),
              HasSubstr("has mode 0777, uid " + std::to_string(::geteuid())));
}

TEST(PermissionsTest, AnOpenSharedDirectoryIsRefusedWithWhatToDo) {
  TempDir dir;
  const std::string shared = dir.path() + "/shared";
  ASSERT_EQ(::mkdir(shared.c_str(), 0700), 0);
  ASSERT_EQ(::chmod(shared.c_str(), 0777), 0);
  std::ofstream(shared + "/someone-elses-file") << "x";
  Started d =
      StartUnderOpenUmask(shared + "/tidepoold.sock", dir.path() + "/c.log");
  EXPECT_FALSE(d.ready);
  EXPECT_EQ(d.process->Wait(), 1);
  const std::string log = ReadFile(dir.path() + "/c.log");
  EXPECT_THAT(log, HasSubstr("socket directory " + shared + " has mode 0777"));
  EXPECT_THAT(log, HasSubstr("directory of their own"));
  EXPECT_EQ(ModeOf(shared), 0777u);  // left alone: not only ours
}

TEST(PermissionsTest, AnotherUsersOpenDirectoryIsRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to chown a directory";
  TempDir dir;
  const std::string theirs = dir.path() + "/theirs";
  ASSERT_EQ(::mkdir(theirs.c_str(), 0700), 0);
  ASSERT_EQ(::chown(theirs.c_str(), 65534, 65534), 0);
  ASSERT_EQ(::chmod(theirs.c_str(), 0777), 0);
  Started d =
      StartUnderOpenUmask(theirs + "/tidepoold.sock", dir.path() + "/d.log");
  EXPECT_FALSE(d.ready);
  EXPECT_EQ(d.process->Wait(), 1);
  const std::string log = ReadFile(dir.path() + "/d.log");
  EXPECT_THAT(log, HasSubstr("socket directory " + theirs +
                             " has mode 0777, uid 65534"));
  EXPECT_THAT(log, HasSubstr("chmod 0750 " + theirs));
  EXPECT_EQ(ModeOf(theirs), 0777u);
}

// A user outside the daemon's group cannot see into its 0750 socket
// directory: the client says to join the group, not that no daemon runs.
TEST(PermissionsTest, AnOutsiderIsToldToJoinTheGroup) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to become another user";
  TempDir dir;
  ASSERT_EQ(::chmod(dir.path().c_str(), 0755), 0);
  const std::string socket = dir.path() + "/run/tidepool/tidepoold.sock";
  Started d = StartUnderOpenUmask(socket, dir.path() + "/e.log");
  ASSERT_TRUE(d.ready) << ReadFile(dir.path() + "/e.log");
  int out[2];
  ASSERT_EQ(::pipe(out), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(out[0]);
    // nobody, with no supplementary groups.
    if (::setgroups(0, nullptr) != 0 || ::setresgid(65534, 65534, 65534) != 0 ||
        ::setresuid(65534, 65534, 65534) != 0) {
      ::_exit(2);
    }
    auto s = tidepool::Session::Open({.socket = socket});
    const std::string said =
        s.ok() ? "ok"
               : absl::StrCat(static_cast<int>(s.status().code()), " ",
                              s.status().message());
    (void)!::write(out[1], said.data(), said.size());
    ::_exit(0);
  }
  ::close(out[1]);
  std::string said;
  char buf[512];
  for (ssize_t n; (n = ::read(out[0], buf, sizeof(buf))) > 0;)
    said.append(buf, n);
  ::close(out[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_THAT(said, HasSubstr(absl::StrCat(
                        static_cast<int>(absl::StatusCode::kPermissionDenied),
                        " no permission to reach ", socket)));
  EXPECT_THAT(said, HasSubstr("join the daemon's group"));
  Stop(d);
}

// --- 6. Sessions per process and per user ---------------------------------

TEST(SessionLimitsTest, OneProcessCannotTakeEverySlot) {
  TempDir dir;
  auto daemon = StartWithConfig(dir, "max_sessions_per_pid = 4\n");
  ASSERT_NE(daemon, nullptr);
  auto victim = Open(*daemon);
  ASSERT_NE(victim, nullptr);
  auto stub = Stub(*daemon);
  // The attacker is this process too: three more, then no more.
  for (int i = 0; i < 3; ++i) {
    v1::OpenSessionResponse opened;
    ASSERT_TRUE(RawOpen(*stub, {}, &opened).ok());
  }
  v1::OpenSessionResponse refused;
  grpc::Status s = RawOpen(*stub, {}, &refused);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(),
              HasSubstr(absl::StrCat("process ", ::getpid(),
                                     " has 4 sessions open, the limit "
                                     "max_sessions_per_pid")));
  ExpectServes(*victim);
  // Another process on the node still trains.
  auto other = ChildProcess::Spawn(
      {testing::BinDir() + "/tidepool_pattern_client",
       "--socket=" + daemon->socket(), "--layers=4", "--steps=1"});
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(other->Wait(), 0);
  // A pid the caller is not: refused before it takes a slot.
  v1::OpenSessionRequest lying;
  lying.set_pid(::getpid() + 1);
  s = RawOpen(*stub, lying, &refused);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(), HasSubstr("comes from pid"));
}

TEST(SessionLimitsTest, OneUserCannotTakeEverySlot) {
  TempDir dir;
  auto daemon = StartWithConfig(
      dir, "max_sessions_per_pid = 100\nmax_sessions_per_uid = 3\n");
  ASSERT_NE(daemon, nullptr);
  auto victim = Open(*daemon);
  ASSERT_NE(victim, nullptr);
  auto stub = Stub(*daemon);
  v1::OpenSessionResponse first, second, refused;
  ASSERT_TRUE(RawOpen(*stub, {}, &first).ok());
  ASSERT_TRUE(RawOpen(*stub, {}, &second).ok());
  grpc::Status s = RawOpen(*stub, {}, &refused);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(),
              HasSubstr(absl::StrCat("user ", ::geteuid(),
                                     " has 3 sessions open, the limit "
                                     "max_sessions_per_uid")));
  ExpectServes(*victim);
  // A closed session gives its slot back.
  v1::CloseSessionRequest close;
  close.mutable_session()->set_session_id(first.session_id());
  close.mutable_session()->set_token(first.token());
  v1::CloseSessionResponse closed;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub->CloseSession(&ctx, close, &closed).ok());
  EXPECT_TRUE(RawOpen(*stub, {}, &refused).ok());
}

// --- 6. Tensor metadata -----------------------------------------------------

std::vector<TensorSpec> Named(int n, size_t name_bytes, int first = 0) {
  std::vector<TensorSpec> specs;
  for (int i = first; i < first + n; ++i) {
    std::string name = absl::StrCat("t", i, ".");
    name.resize(std::max(name.size(), name_bytes), 'n');
    specs.push_back({name, DType::kU8, {16}, Group::kParam});
  }
  return specs;
}

TEST(MetadataLimitsTest, TensorsAndTheirNamesAreBoundedPerSession) {
  TempDir dir;
  auto daemon = StartWithConfig(dir,
                                "max_metadata_bytes_per_session = \"1MiB\"\n"
                                "max_tensors_per_session = 3000\n");
  ASSERT_NE(daemon, nullptr);
  auto victim = Open(*daemon);
  ASSERT_NE(victim, nullptr);
  // 1 KB names: about 1.1 KB each of the daemon's heap, so 1 MiB holds
  // some 900 of them.
  auto names = Open(*daemon);
  ASSERT_NE(names, nullptr);
  ASSERT_TRUE(names->Register(Named(500, 1000)).ok());
  auto refused = names->Register(Named(500, 1000, 500));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.status().message(),
              HasSubstr("more than max_metadata_bytes_per_session (1048576)"));
  auto stats = names->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->tensors, 500u);  // all or nothing
  // Short names: the tensor count binds first.
  auto count = Open(*daemon);
  ASSERT_NE(count, nullptr);
  ASSERT_TRUE(count->Register(Named(3000, 1)).ok());
  refused = count->Register(Named(1, 1, 3000));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.status().message(),
              HasSubstr("3001 tensors, more than max_tensors_per_session"));
  ExpectServes(*victim);
}

TEST(MetadataLimitsTest, MetadataCountsTowardsTheHostQuota) {
  TempDir dir;
  auto daemon = StartWithConfig(dir, "");
  ASSERT_NE(daemon, nullptr);
  auto victim = Open(*daemon);
  ASSERT_NE(victim, nullptr);
  SessionOptions options;
  options.host_quota_bytes = (4 << 20) + (256 << 10);  // a chunk + 256 KiB
  auto quota = Open(*daemon, options);
  ASSERT_NE(quota, nullptr);
  ASSERT_TRUE(quota->Register(Named(100, 1000)).ok());  // ~110 KiB + a chunk
  auto refused = quota->Register(Named(200, 1000, 100));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.status().message(),
              HasSubstr("exceed the session's host quota (4456448 bytes): "
                        "4194304 bytes of chunks and"));
  EXPECT_THAT(refused.status().message(),
              HasSubstr("bytes of tensor metadata"));
  ExpectServes(*victim);
}

// kB of anonymous memory (the heap) of `pid`.
uint64_t RssAnonKiB(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("RssAnon:", 0) == 0) {
      uint64_t kib = 0;
      std::istringstream(line.substr(8)) >> kib;
      return kib;
    }
  }
  ADD_FAILURE() << "no RssAnon for pid " << pid;
  return 0;
}

// A session's tensor names go back to the operating system when it closes:
// sessions that each hold ~28 MiB of names, opened and closed in turn,
// leave the daemon's heap where it was (before the fix every close kept
// what the session had used).
TEST(MetadataLimitsTest, ClosedSessionsGiveTheirHeapBack) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "a sanitizer's allocator keeps freed memory (quarantine)";
#endif
  TempDir dir;
  auto daemon = StartWithConfig(dir, "");
  ASSERT_NE(daemon, nullptr);
  const pid_t pid = daemon->process().pid();
  auto cycle = [&](int n) {
    auto s = Open(*daemon);
    ASSERT_NE(s, nullptr);
    if (n > 0) {
      ASSERT_TRUE(s->Register(Named(n, 1000)).ok());
    }
    ASSERT_TRUE(s->Close().ok());
  };
  cycle(25000);
  cycle(0);  // a close after the big request's buffers were freed
  const uint64_t before = RssAnonKiB(pid);
  uint64_t peak = 0;
  for (int i = 0; i < 4; ++i) {
    auto s = Open(*daemon);
    ASSERT_NE(s, nullptr);
    ASSERT_TRUE(s->Register(Named(25000, 1000, 25000 * i)).ok());
    peak = std::max(peak, RssAnonKiB(pid));
    ASSERT_TRUE(s->Close().ok());
  }
  cycle(0);
  const uint64_t after = RssAnonKiB(pid);
  std::cout << "daemon RssAnon: " << before << " kB before, " << peak
            << " kB with a session's names, " << after << " kB after\n";
  // Registered, the names cost the heap at least 25 MiB.
  EXPECT_GT(peak, before + 25 * 1024);
  EXPECT_LT(after, before + 8 * 1024)
      << "before " << before << " kB, peak " << peak << " kB, after " << after
      << " kB";
}

// --- 6. Auto's trace of op keys ---------------------------------------------

TEST(TraceLimitsTest, EndlessNewOpKeysKeepTrainingAndAreNotKept) {
  TempDir dir;
  auto daemon = StartWithConfig(dir, "max_trace_ops_per_session = 200\n");
  ASSERT_NE(daemon, nullptr);
  auto victim = Open(*daemon);
  ASSERT_NE(victim, nullptr);
  SessionOptions options;
  options.policy = Policy::kAuto;
  auto s = Open(*daemon, options);
  ASSERT_NE(s, nullptr);
  auto t = s->Register({{"w", DType::kF32, {1024}, Group::kParam}});
  ASSERT_TRUE(t.ok()) << t.status();
  const uint64_t id = (*t)[0].id;
  for (int step = 0; step < 2; ++step) {
    for (int i = 0; i < 300; ++i) {
      s->BeginOp(absl::StrCat("op", step, ".", i));
      ASSERT_TRUE(s->Acquire({&id, 1}, AccessMode::kReadWrite).ok());
      ASSERT_TRUE(s->Release({&id, 1}, TensorState::kHold).ok());
    }
    auto placement = s->MarkStep();
    ASSERT_TRUE(placement.ok()) << placement.status();
    EXPECT_NE(placement->state, "planned");
    EXPECT_THAT(placement->last_divergence,
                HasSubstr("more than 200 ops (max_trace_ops_per_session)"));
  }
  ExpectServes(*victim);
}

// --- 8. Clear errors
// ----------------------------------------------------------

TEST(ClearErrorsTest, HugeAndInvalidNamesGetAShortPreciseAnswer) {
  TempDir dir;
  auto daemon = StartWithConfig(dir, "");
  ASSERT_NE(daemon, nullptr);
  auto victim = Open(*daemon);
  ASSERT_NE(victim, nullptr);
  auto stub = Stub(*daemon);
  // A 20 KB device name is not echoed back whole (it once overflowed the
  // reply's metadata and the client saw only that).
  v1::OpenSessionRequest huge;
  huge.set_device(std::string(20480, 'g'));
  v1::OpenSessionResponse opened;
  grpc::Status s = RawOpen(*stub, huge, &opened);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("device name of 20480 bytes"));
  EXPECT_THAT(s.error_message(), HasSubstr("... (20480 bytes)"));
  EXPECT_LT(s.error_message().size(), 300u);
  v1::OpenSessionRequest unknown;
  unknown.set_device("GPU-\x01nope");
  s = RawOpen(*stub, unknown, &opened);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(s.error_message(), HasSubstr("no device 'GPU-\\x01nope'"));
  // Names that are not UTF-8: INVALID_ARGUMENT naming the field and the
  // bytes (before, a proto3 string failed to parse: INTERNAL, no message).
  v1::OpenSessionRequest bad_device;
  bad_device.set_device("sim\xff");
  s = RawOpen(*stub, bad_device, &opened);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(),
              HasSubstr("device name is not valid UTF-8 (byte 3)"));
  v1::OpenSessionRequest bad_client;
  bad_client.set_client_name("trainer\xc3");
  s = RawOpen(*stub, bad_client, &opened);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("client_name is not valid UTF-8"));

  auto session = Open(*daemon);
  ASSERT_NE(session, nullptr);
  auto bad_name = session->Register(
      {{"ok", DType::kU8, {16}, Group::kParam},
       {"layer.weight\xe2\x82", DType::kU8, {16}, Group::kParam}});
  EXPECT_EQ(bad_name.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_name.status().message(),
              HasSubstr("tensor #1 name is not valid UTF-8 (bytes 12..13): "
                        "'layer.weight\\xe2\\x82'"));
  auto t = session->Register({{"w", DType::kU8, {16}, Group::kParam}});
  ASSERT_TRUE(t.ok()) << t.status();
  const uint64_t id = (*t)[0].id;
  for (bool hot_path : {true, false}) {
    SessionOptions options;
    options.hot_path = hot_path;
    auto keyed = Open(*daemon, options);
    ASSERT_NE(keyed, nullptr);
    auto kt = keyed->Register({{"w", DType::kU8, {16}, Group::kParam}});
    ASSERT_TRUE(kt.ok());
    keyed->BeginOp("layer\xff/fwd");
    auto got = keyed->Acquire({&(*kt)[0].id, 1}, AccessMode::kRead);
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument)
        << "hot path " << hot_path;
    EXPECT_THAT(got.status().message(),
                HasSubstr("op key is not valid UTF-8 (byte 5)"));
  }
  EXPECT_TRUE(session->Acquire({&id, 1}, AccessMode::kRead).ok());
  ExpectServes(*victim);
}

TEST(ClearErrorsTest, AnOversizeRequestIsRefusedAndTheDaemonServes) {
  TempDir dir;
  auto daemon = StartWithConfig(dir, "max_request_bytes = \"1MiB\"\n");
  ASSERT_NE(daemon, nullptr);
  auto victim = Open(*daemon);
  ASSERT_NE(victim, nullptr);
  auto attacker = Open(*daemon);
  ASSERT_NE(attacker, nullptr);
  // 1,500 names of 1000 bytes: a 1.5 MB request.
  auto refused = attacker->Register(Named(1500, 1000));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.status().message(), HasSubstr("larger than max"));
  EXPECT_THAT(refused.status().message(), HasSubstr("1048576"));
  // Under the limit, the same session goes on.
  EXPECT_TRUE(attacker->Register(Named(500, 1000)).ok());
  ExpectServes(*victim);
}

int ThreadsOf(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Threads:", 0) == 0) return std::atoi(line.c_str() + 8);
  }
  return -1;
}

// A flood of RPCs that each hold their thread (closes that wait for a slow
// link's copies to drain) from many connections at once: the daemon's
// threads stay within max_rpc_threads of where they were, what is refused
// is RESOURCE_EXHAUSTED, and a session still works after it.
TEST(ClearErrorsTest, AFloodOfRpcsCannotMultiplyTheDaemonsThreads) {
  TempDir dir;
  const std::string config = dir.path() + "/tidepoold.toml";
  std::ofstream(config) << "max_rpc_threads = 8\n";
  DaemonOptions options;
  options.extra_args = {"--config=" + config, "--sim_link_gbps=0.05"};
  auto started = DaemonProcess::Start(options);
  ASSERT_TRUE(started.ok()) << started.status();
  DaemonProcess& daemon = **started;
  auto victim = Open(daemon);
  ASSERT_NE(victim, nullptr);
  const pid_t pid = daemon.process().pid();
  const int before = ThreadsOf(pid);
  // 14 sessions (the 64 MiB device holds 16 chunks), each with a 4 MiB
  // load queued on the 50 MB/s link.
  auto stub = Stub(daemon);
  std::vector<v1::SessionRef> sessions;
  for (int i = 0; i < 14; ++i) {
    v1::OpenSessionResponse opened;
    ASSERT_TRUE(RawOpen(*stub, {}, &opened).ok());
    v1::SessionRef ref;
    ref.set_session_id(opened.session_id());
    ref.set_token(opened.token());
    v1::RegisterTensorsRequest reg;
    *reg.mutable_session() = ref;
    auto* t = reg.add_tensors();
    t->set_name("w");
    t->set_dtype(v1::DTYPE_U8);
    t->add_shape(4 << 20);
    v1::RegisterTensorsResponse placed;
    grpc::ClientContext c1;
    ASSERT_TRUE(stub->RegisterTensors(&c1, reg, &placed).ok());
    v1::AcquireRequest acq;
    *acq.mutable_session() = ref;
    acq.add_tensor_ids(placed.tensors(0).tensor_id());
    acq.set_mode(v1::ACCESS_READ);
    v1::AcquireResponse got;
    grpc::ClientContext c2;
    grpc::Status acquired = stub->Acquire(&c2, acq, &got);
    ASSERT_TRUE(acquired.ok()) << acquired.error_message();
    sessions.push_back(ref);
  }
  // All of them close at once, each on its own connection.
  std::atomic<int> closed{0}, refused{0}, other{0};
  std::atomic<bool> done{false};
  int most = before;
  std::thread sampler([&] {
    while (!done) {
      most = std::max(most, ThreadsOf(pid));
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  std::vector<std::thread> flood;
  for (const auto& ref : sessions) {
    flood.emplace_back([&, ref] {
      auto own = Stub(daemon);
      v1::CloseSessionRequest close;
      *close.mutable_session() = ref;
      v1::CloseSessionResponse r;
      grpc::ClientContext ctx;
      grpc::Status s = own->CloseSession(&ctx, close, &r);
      if (s.ok()) {
        ++closed;
      } else if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
        ++refused;
      } else {
        ++other;
      }
    });
  }
  for (auto& t : flood) t.join();
  done = true;
  sampler.join();
  std::cout << "daemon threads: " << before << " before, at most " << most
            << " during the flood; " << closed << " closed, " << refused
            << " refused\n";
  EXPECT_LE(most, before + 8);
  EXPECT_EQ(other, 0);
  ExpectServes(*victim);
}

}  // namespace
}  // namespace tidepool
