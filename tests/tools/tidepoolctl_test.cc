// tidepoolctl against a real tidepoold (sim backend) with a real client
// process at work: every subcommand, the timeline picture, and the errors an
// operator meets (daemon not running, no permission, unknown session). Also
// the SVG renderer on hand-made timelines.
#include <grp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/support/process.h"
#include "tidepool/session.h"
#include "tools/tidepoolctl/admin_client.h"
#include "tools/tidepoolctl/timeline_svg.h"

namespace tidepool::ctl {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using Json = nlohmann::json;
using tidepool::testing::BinDir;
using tidepool::testing::ChildProcess;
using tidepool::testing::DaemonProcess;

struct Output {
  int code = -1;
  std::string out;
  std::string err;
};

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string Quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// A private scratch directory, removed at the end.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/tidepoolctl-test-XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Runs `prefix... tidepoolctl args...` and captures its output.
Output RunCommand(const std::vector<std::string>& argv) {
  TempDir dir;
  std::string cmd = "exec";
  for (const auto& a : argv) absl::StrAppend(&cmd, " ", Quote(a));
  absl::StrAppend(&cmd, " >", dir.path(), "/out 2>", dir.path(), "/err");
  auto child = ChildProcess::Spawn({"/bin/sh", "-c", cmd});
  Output o;
  if (!child.ok()) {
    o.err = child.status().ToString();
    return o;
  }
  o.code = child->Wait();
  o.out = ReadFile(dir.path() + "/out");
  o.err = ReadFile(dir.path() + "/err");
  return o;
}

Output Ctl(std::vector<std::string> args,
           std::vector<std::string> prefix = {}) {
  prefix.push_back(BinDir() + "/tidepoolctl");
  prefix.insert(prefix.end(), args.begin(), args.end());
  return RunCommand(prefix);
}

std::string OwnerGroup(gid_t gid) {
  if (const struct group* g = ::getgrgid(gid)) return g->gr_name;
  return absl::StrCat(gid);
}

int CountLines(const std::string& s) {
  return static_cast<int>(std::count(s.begin(), s.end(), '\n'));
}

// One daemon and one pattern client for the whole suite: the client writes
// its model through a device 1/2 its size (so chunks really move), then
// holds layer 0 until the suite ends.
class TidepoolctlTest : public ::testing::Test {
 protected:
  static constexpr int kLayers = 24;

  static void SetUpTestSuite() {
    auto d = DaemonProcess::Start({});  // 64 MiB sim device, 4 MiB chunks
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = d->release();
    auto c = ChildProcess::Spawn(
        {BinDir() + "/tidepool_pattern_client", "--socket=" + daemon_->socket(),
         absl::StrCat("--layers=", kLayers), "--hold"});
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = new ChildProcess(std::move(*c));
    auto admin = AdminClient::Connect(daemon_->socket());
    ASSERT_TRUE(admin.ok()) << admin.status();
    // Holding: every layer written (kLayers acquires) plus layer 0 again.
    for (int i = 0; i < 1500; ++i) {
      auto s = admin->ListSessions();
      ASSERT_TRUE(s.ok()) << s.status();
      if (s->sessions_size() == 1 &&
          s->sessions(0).stats().acquires() == kLayers + 1) {
        session_ = s->sessions(0).session_id();
        return;
      }
      ASSERT_TRUE(client_->Running()) << "pattern client exited early";
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    FAIL() << "the pattern client never reached its hold point";
  }

  static void TearDownTestSuite() {
    delete client_;  // kills it
    client_ = nullptr;
    delete daemon_;
    daemon_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(daemon_, nullptr);
    ASSERT_NE(session_, 0u);
  }

  static std::string Socket() { return "--socket=" + daemon_->socket(); }
  static std::string Session() { return absl::StrCat(session_); }

  static v1::ListChunksResponse Chunks() {
    auto admin = AdminClient::Connect(daemon_->socket());
    EXPECT_TRUE(admin.ok());
    auto chunks = admin->ListChunks(session_);
    EXPECT_TRUE(chunks.ok()) << chunks.status();
    return chunks.ok() ? *chunks : v1::ListChunksResponse();
  }

  static DaemonProcess* daemon_;
  static ChildProcess* client_;
  static uint64_t session_;
};

DaemonProcess* TidepoolctlTest::daemon_ = nullptr;
ChildProcess* TidepoolctlTest::client_ = nullptr;
uint64_t TidepoolctlTest::session_ = 0;

TEST_F(TidepoolctlTest, Status) {
  Output o = Ctl({Socket(), "status"});
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_THAT(o.out, HasSubstr("tidepoold "));
  EXPECT_THAT(o.out, HasSubstr("sessions:       1"));
  EXPECT_THAT(o.out, HasSubstr("chunk size:     4.00 MiB"));
  EXPECT_THAT(o.out, HasSubstr("host pool:"));
  EXPECT_THAT(o.out, HasSubstr("sim0"));
  EXPECT_THAT(o.out, HasSubstr("64.0 MiB"));  // the device's capacity
}

TEST_F(TidepoolctlTest, Sessions) {
  Output o = Ctl({Socket(), "sessions"});
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_THAT(o.out, HasSubstr("pattern_client"));
  EXPECT_THAT(o.out, HasSubstr(absl::StrCat(client_->pid())));
  EXPECT_THAT(o.out, HasSubstr("cpu"));
  EXPECT_EQ(CountLines(o.out), 2);  // header and one session
}

TEST_F(TidepoolctlTest, ChunksShowWhereEachChunkLives) {
  const v1::ListChunksResponse chunks = Chunks();
  ASSERT_GT(chunks.chunks_size(), 0);
  Output o = Ctl({Socket(), "chunks", Session()});
  ASSERT_EQ(o.code, 0) << o.err;
  // A summary line, a header, one line per chunk.
  EXPECT_EQ(CountLines(o.out), chunks.chunks_size() + 2) << o.out;
  EXPECT_THAT(o.out, HasSubstr("layer0.weight"));
  // The model is ~2x the device: some chunks are on the host, some on the
  // device; layer 0 is held (COMPUTE) on the device.
  EXPECT_THAT(o.out, HasSubstr(" host "));
  EXPECT_THAT(o.out, HasSubstr(" device "));
  std::istringstream lines(o.out);
  std::string line;
  bool saw_layer0 = false;
  while (std::getline(lines, line)) {
    if (line.find("layer0.weight") == std::string::npos) continue;
    saw_layer0 = true;
    EXPECT_THAT(line, HasSubstr("device"));
    EXPECT_THAT(line, HasSubstr("compute*"));
  }
  EXPECT_TRUE(saw_layer0);
}

// --json prints the daemon's answer with the proto's field names: what a
// script reads (nlohmann-json here) is what the admin API returned.
TEST_F(TidepoolctlTest, JsonOutput) {
  Output o = Ctl({Socket(), "--json", "chunks", Session()});
  ASSERT_EQ(o.code, 0) << o.err;
  const Json chunks = Json::parse(o.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(chunks.is_object() && chunks.contains("chunks")) << o.out;
  ASSERT_TRUE(chunks["chunks"].is_array()) << o.out;
  const v1::ListChunksResponse want = Chunks();
  ASSERT_EQ(chunks["chunks"].size(), static_cast<size_t>(want.chunks_size()));
  std::set<std::string> want_ids;
  for (const auto& chunk : want.chunks()) {
    want_ids.insert(absl::StrCat(chunk.chunk().chunk_id()));
  }
  std::set<std::string> ids;
  std::set<std::string> locations;
  bool saw_layer0 = false;
  for (const Json& chunk : chunks["chunks"]) {
    // uint64 fields are JSON strings (proto3 JSON mapping).
    ids.insert(chunk.value("/chunk/chunk_id"_json_pointer, ""));
    locations.insert(chunk.value("/chunk/location"_json_pointer, ""));
    for (const Json& tensor : chunk.value("tensors", Json::array())) {
      saw_layer0 = saw_layer0 || tensor == "layer0.weight";
    }
  }
  EXPECT_EQ(ids, want_ids);
  // The model is ~2x the device: chunks on both sides.
  EXPECT_EQ(locations,
            (std::set<std::string>{"LOCATION_DEVICE", "LOCATION_HOST"}));
  EXPECT_TRUE(saw_layer0);

  o = Ctl({Socket(), "--json", "sessions"});
  ASSERT_EQ(o.code, 0) << o.err;
  const Json sessions = Json::parse(o.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(sessions.is_object() && sessions.contains("sessions")) << o.out;
  ASSERT_EQ(sessions["sessions"].size(), 1u) << o.out;
  const Json& session = sessions["sessions"][0];
  EXPECT_EQ(session.value("session_id", ""), Session());
  EXPECT_EQ(session.value("client_name", ""), "pattern_client");
  EXPECT_EQ(session.value("pid", -1), client_->pid());
  EXPECT_EQ(session.value("attached", false), true);
}

TEST_F(TidepoolctlTest, TraceIsTheResidencyEventLog) {
  Output o = Ctl({Socket(), "trace", Session()});
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_THAT(o.out, HasSubstr("residency event log"));
  for (const char* event :
       {"created", "loaded", "evicted", "acquired", "released"}) {
    EXPECT_THAT(o.out, HasSubstr(event));
  }
  // Backward rewrites made chunks dirty: some evictions wrote back.
  EXPECT_THAT(o.out, HasSubstr("written back"));
  Output last = Ctl({Socket(), "trace", Session(), "--last=5"});
  ASSERT_EQ(last.code, 0) << last.err;
  EXPECT_EQ(CountLines(last.out), 2 + 5) << last.out;
}

// An auto session's trace is its recorded warm-up: ops by key, in order.
TEST_F(TidepoolctlTest, TraceOfAnAutoSessionIsItsRecordedWarmUp) {
  SessionOptions options;
  options.socket = daemon_->socket();
  options.policy = Policy::kAuto;
  auto s = tidepool::Session::Open(options);
  ASSERT_TRUE(s.ok()) << s.status();
  std::vector<TensorSpec> specs;
  for (int l = 0; l < 3; ++l) {
    specs.push_back(
        {absl::StrCat("w", l), DType::kU8, {1 << 20}, Group::kParam});
  }
  specs.push_back({"master", DType::kF32, {1 << 18}, Group::kMaster});
  auto t = (*s)->Register(specs);
  ASSERT_TRUE(t.ok()) << t.status();
  for (int step = 0; step < 2; ++step) {
    for (int l = 0; l < 3; ++l) {
      (*s)->BeginOp(absl::StrCat("layer", l, "/fwd"), 4096);
      const uint64_t id = (*t)[l].id;
      ASSERT_TRUE((*s)->Acquire({&id, 1}, AccessMode::kRead).ok());
      ASSERT_TRUE((*s)->Release({&id, 1}, TensorState::kHold).ok());
    }
    // The optimizer's update, placed by the daemon.
    const uint64_t master = (*t)[3].id;
    ASSERT_TRUE(
        (*s)->AcquireWherePlaced({&master, 1}, AccessMode::kReadWrite).ok());
    ASSERT_TRUE((*s)->Release({&master, 1}, TensorState::kHold).ok());
    ASSERT_TRUE((*s)->MarkStep().ok());
  }
  Output o = Ctl({Socket(), "trace", absl::StrCat((*s)->id())});
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_THAT(o.out, HasSubstr("recorded trace"));
  EXPECT_THAT(o.out, HasSubstr("state planned"));
  const size_t l0 = o.out.find("layer0/fwd");
  const size_t l2 = o.out.find("layer2/fwd");
  ASSERT_NE(l0, std::string::npos) << o.out;
  ASSERT_NE(l2, std::string::npos) << o.out;
  EXPECT_LT(l0, l2);
  // The update is listed with where the plan runs it (host while the warm-up
  // recorded it, then as planned).
  EXPECT_THAT(o.out, HasSubstr("1 placed updates"));
  EXPECT_THAT(o.out, HasSubstr("served 1 / 1"));
}

TEST_F(TidepoolctlTest, Config) {
  Output o = Ctl({Socket(), "config"});
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_THAT(o.out, HasSubstr("default_policy"));
  EXPECT_THAT(o.out, HasSubstr("cpu"));
  EXPECT_THAT(o.out, HasSubstr("chunk_size_bytes         4.00 MiB (4194304)"));
  EXPECT_THAT(o.out, HasSubstr("host_pool_bytes          1.00 GiB"));
  EXPECT_THAT(o.out, HasSubstr("device[sim0].pool_bytes"));
}

TEST_F(TidepoolctlTest, TimelinePictureHasOneRowPerChunk) {
  TempDir dir;
  const std::string svg_path = dir.path() + "/timeline.svg";
  Output o = Ctl({Socket(), "timeline", Session(), "--out=" + svg_path});
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_THAT(o.out, HasSubstr("wrote " + svg_path));
  ASSERT_TRUE(std::filesystem::exists(svg_path));
  ASSERT_GT(std::filesystem::file_size(svg_path), 0u);
  const std::string svg = ReadFile(svg_path);
  EXPECT_THAT(svg, HasSubstr("<svg"));
  EXPECT_THAT(svg, HasSubstr("</svg>"));
  // One row per chunk of the session, each named by its chunk id.
  const v1::ListChunksResponse chunks = Chunks();
  std::set<uint64_t> want, got;
  for (const auto& c : chunks.chunks()) want.insert(c.chunk().chunk_id());
  const std::regex row("<g class=\"chunk\" data-chunk=\"([0-9]+)\">");
  int rows = 0;
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), row);
       it != std::sregex_iterator(); ++it) {
    ++rows;
    got.insert(std::stoull((*it)[1]));
  }
  EXPECT_EQ(rows, chunks.chunks_size());
  EXPECT_EQ(got, want);
  // Colour by location, a legend and axis labels.
  EXPECT_THAT(svg, HasSubstr("class=\"legend\""));
  EXPECT_THAT(svg, HasSubstr("host (pinned pool)"));
  EXPECT_THAT(svg, HasSubstr("device (GPU pool)"));
  EXPECT_THAT(svg, HasSubstr("class=\"x-label\""));
  EXPECT_THAT(svg, HasSubstr("class=\"y-label\""));
  EXPECT_THAT(svg, HasSubstr("#9ecae1"));  // host segments
  EXPECT_THAT(svg, HasSubstr("#f16913"));  // device segments
}

TEST_F(TidepoolctlTest, TimelineNeedsAnSvgFile) {
  Output o = Ctl({Socket(), "timeline", Session()});
  EXPECT_EQ(o.code, 2);
  EXPECT_THAT(o.err, HasSubstr("--out=FILE.svg"));
  o = Ctl({Socket(), "timeline", Session(), "--out=/tmp/x.png"});
  EXPECT_EQ(o.code, 2);
  EXPECT_THAT(o.err, HasSubstr("SVG only"));
}

TEST_F(TidepoolctlTest, UnknownSessionIsNotFoundAndDaemonKeepsServing) {
  for (const char* command : {"chunks", "trace", "timeline"}) {
    Output o = Ctl({Socket(), command, "987654", "--out=/tmp/unused.svg"});
    EXPECT_EQ(o.code, 1) << command;
    EXPECT_THAT(o.err, HasSubstr("no session 987654")) << command;
  }
  auto admin = AdminClient::Connect(daemon_->socket());
  ASSERT_TRUE(admin.ok());
  auto chunks = admin->ListChunks(987654);
  EXPECT_EQ(chunks.status().code(), absl::StatusCode::kNotFound);
  auto timeline = admin->GetTimeline(0, 0);
  EXPECT_EQ(timeline.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(admin->GetStatus().ok());
}

TEST_F(TidepoolctlTest, UsageErrors) {
  EXPECT_EQ(Ctl({Socket()}).code, 2);
  Output o = Ctl({Socket(), "frobnicate"});
  EXPECT_EQ(o.code, 2);
  EXPECT_THAT(o.err, HasSubstr("unknown command 'frobnicate'"));
  o = Ctl({Socket(), "chunks"});
  EXPECT_EQ(o.code, 2);
  EXPECT_THAT(o.err, HasSubstr("session id"));
  o = Ctl({Socket(), "chunks", "abc"});
  EXPECT_EQ(o.code, 2);
  EXPECT_THAT(o.err, HasSubstr("not a session id"));
}

// --- Errors without a daemon ------------------------------------------------

TEST(TidepoolctlErrorsTest, DaemonNotRunning) {
  Output o =
      Ctl({"--socket=/tmp/no-such-tidepool-dir/tidepoold.sock", "status"});
  EXPECT_EQ(o.code, 1);
  EXPECT_THAT(o.err, HasSubstr("tidepoold is not running: no socket at "
                               "/tmp/no-such-tidepool-dir/tidepoold.sock"));
}

// A socket file nobody listens on: what a daemon killed by SIGKILL leaves.
absl::StatusOr<int> BindDeadSocket(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::ErrnoToStatus(errno, "bind");
  }
  return fd;  // bound, never listening: connect() is refused
}

TEST(TidepoolctlErrorsTest, StaleSocketOfADeadDaemon) {
  TempDir dir;
  const std::string path = dir.path() + "/tidepoold.sock";
  auto fd = BindDeadSocket(path);
  ASSERT_TRUE(fd.ok()) << fd.status();
  Output o = Ctl({"--socket=" + path, "sessions"});
  ::close(*fd);
  EXPECT_EQ(o.code, 1);
  EXPECT_THAT(o.err,
              HasSubstr("tidepoold is not running: nobody answers on " + path));
}

TEST(TidepoolctlErrorsTest, PermissionDeniedNamesTheGroup) {
  TempDir dir;
  ::chmod(dir.path().c_str(), 0755);
  const std::string path = dir.path() + "/tidepoold.sock";
  auto fd = BindDeadSocket(path);
  ASSERT_TRUE(fd.ok()) << fd.status();
  ::chmod(path.c_str(), 0660);  // as tidepoold makes it
  std::vector<std::string> prefix;
  std::string group;
  if (::geteuid() == 0) {
    // root may use any socket: ask as `nobody`, outside the socket's group.
    if (!std::filesystem::exists("/usr/bin/setpriv")) {
      GTEST_SKIP() << "running as root without setpriv to drop privileges";
    }
    prefix = {"/usr/bin/setpriv", "--reuid=65534", "--regid=65534",
              "--clear-groups"};
    group = "root";
  } else {
    ::chmod(path.c_str(), 0);  // not even its owner may use it now
    struct stat st;
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    group = OwnerGroup(st.st_gid);
  }
  Output o = Ctl({"--socket=" + path, "status"}, prefix);
  ::close(*fd);
  if (o.code == 126 || o.code == 127) {
    GTEST_SKIP() << "cannot run tidepoolctl as another user here: " << o.err;
  }
  EXPECT_EQ(o.code, 1) << o.out;
  EXPECT_THAT(o.err, HasSubstr("permission denied"));
  EXPECT_THAT(o.err, HasSubstr(path));
  EXPECT_THAT(o.err, HasSubstr("group '" + group + "'"));
}

// --- The SVG renderer on hand-made timelines
// ----------------------------------

v1::GetTimelineResponse MakeTimeline() {
  v1::GetTimelineResponse t;
  for (uint64_t id : {1, 2, 3}) {
    auto* c = t.add_chunks();
    c->mutable_chunk()->set_chunk_id(id);
    c->mutable_chunk()->set_size_bytes(4 << 20);
    c->mutable_chunk()->set_location(id == 1 ? v1::LOCATION_DEVICE
                                             : v1::LOCATION_HOST);
    c->add_tensors(absl::StrCat("t<", id, ">"));  // needs escaping
  }
  int64_t t_ns = 1'000'000'000;
  uint64_t seq = 0;
  auto add = [&](uint64_t chunk, v1::ResidencyEventKind kind,
                 v1::Location where) {
    auto* e = t.add_events();
    e->set_sequence(seq++);
    e->set_time_unix_nanos(t_ns);
    e->set_chunk_id(chunk);
    e->set_kind(kind);
    e->set_location(where);
    t_ns += 1'000'000;  // 1 ms apart
  };
  add(1, v1::RESIDENCY_EVENT_CREATED, v1::LOCATION_HOST);
  add(2, v1::RESIDENCY_EVENT_CREATED, v1::LOCATION_HOST);
  add(1, v1::RESIDENCY_EVENT_LOADED, v1::LOCATION_DEVICE);
  add(1, v1::RESIDENCY_EVENT_ACQUIRED, v1::LOCATION_DEVICE);
  add(1, v1::RESIDENCY_EVENT_RELEASED, v1::LOCATION_DEVICE);
  add(2, v1::RESIDENCY_EVENT_LOADED, v1::LOCATION_DEVICE);
  add(2, v1::RESIDENCY_EVENT_EVICTED, v1::LOCATION_HOST);
  return t;  // chunk 3: no events, on the host the whole time
}

int CountOf(const std::string& s, const std::string& what) {
  int n = 0;
  for (size_t p = s.find(what); p != std::string::npos;
       p = s.find(what, p + 1)) {
    ++n;
  }
  return n;
}

TEST(TimelineSvgTest, OneRowPerChunkColouredByLocation) {
  auto r = RenderTimelineSvg(MakeTimeline(), {.title = "a & b"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->rows, 3);
  EXPECT_EQ(r->events, 7);
  EXPECT_DOUBLE_EQ(r->span_ms, 6);
  EXPECT_EQ(CountOf(r->svg, "<g class=\"chunk\""), 3);
  EXPECT_THAT(r->svg, HasSubstr("a &amp; b"));
  EXPECT_THAT(r->svg, HasSubstr("t&lt;1&gt;"));
  EXPECT_THAT(r->svg, Not(HasSubstr("t<1>")));
  // Chunk 1: host 2 ms, then device; one acquired bar. Chunk 2: host,
  // device, host. Chunk 3: host throughout. Legend swatches add one each.
  EXPECT_EQ(CountOf(r->svg, "fill=\"#f16913\""), 2 + 1);
  EXPECT_EQ(CountOf(r->svg, "fill=\"#9ecae1\""), 4 + 1);
  EXPECT_EQ(CountOf(r->svg, "fill=\"#252525\""), 1 + 1);
}

TEST(TimelineSvgTest, WindowKeepsTheRecentEventsAndTheStateBeforeThem) {
  auto r = RenderTimelineSvg(MakeTimeline(), {.window = absl::Milliseconds(2)});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->rows, 3);
  EXPECT_EQ(r->events, 3);  // at 4, 5 and 6 ms
  EXPECT_DOUBLE_EQ(r->span_ms, 2);
}

TEST(TimelineSvgTest, NothingToDrawIsAnError) {
  EXPECT_EQ(RenderTimelineSvg({}, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tidepool::ctl
