// tidepoold's /metrics follow real activity: a real daemon (sim backend)
// with its metrics endpoint, real client processes, and scrapes over HTTP.
// Bytes moved equal what the clients report having moved; evictions match;
// session gauges drop and the pools empty when a client is SIGKILLed.
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/http_get.h"
#include "tests/support/process.h"
#include "tidepool/session.h"

namespace tidepool {
namespace {

using testing::BinDir;
using testing::ChildProcess;
using testing::DaemonOptions;
using testing::DaemonProcess;
using testing::FreeTcpPort;
using testing::HttpGet;
using testing::MetricSum;

constexpr uint64_t kMiB = 1 << 20;

class MetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The port may be taken between FreeTcpPort() and the daemon's bind:
    // try a few.
    for (int attempt = 0; attempt < 5 && daemon_ == nullptr; ++attempt) {
      port_ = FreeTcpPort();
      ASSERT_GT(port_, 0);
      DaemonOptions options;  // 64 MiB sim device, 4 MiB chunks
      options.extra_args = {
          absl::StrCat("--metrics_address=127.0.0.1:", port_)};
      auto d = DaemonProcess::Start(options);
      if (d.ok()) daemon_ = std::move(*d);
    }
    ASSERT_NE(daemon_, nullptr) << "tidepoold did not start with metrics";
    char tmpl[] = "/tmp/tidepool-metrics-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }

  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::string Scrape() {
    auto body = HttpGet(port_, "/metrics");
    EXPECT_TRUE(body.ok()) << body.status();
    return body.ok() ? *body : "";
  }

  // Polls /metrics until `done(exposition)` holds (copies and reclaim finish
  // asynchronously); returns the last scrape.
  template <typename Pred>
  std::string ScrapeUntil(Pred done, int timeout_ms = 10000) {
    std::string text;
    for (int waited = 0; waited < timeout_ms; waited += 20) {
      text = Scrape();
      if (done(text)) return text;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return text;
  }

  // Runs a pattern client to completion and returns its STATS fields.
  std::map<std::string, uint64_t> RunPatternClient(
      const std::vector<std::string>& args) {
    const std::string out = dir_ + "/client.out";
    std::string cmd =
        absl::StrCat("exec ", BinDir(),
                     "/tidepool_pattern_client --socket=", daemon_->socket());
    for (const auto& a : args) absl::StrAppend(&cmd, " ", a);
    absl::StrAppend(&cmd, " >", out);
    auto child = ChildProcess::Spawn({"/bin/sh", "-c", cmd});
    EXPECT_TRUE(child.ok()) << child.status();
    if (!child.ok()) return {};
    EXPECT_EQ(child->Wait(), 0);
    std::ifstream f(out);
    std::string line;
    std::map<std::string, uint64_t> stats;
    while (std::getline(f, line)) {
      if (!absl::StartsWith(line, "STATS ")) continue;
      for (absl::string_view field :
           absl::StrSplit(line.substr(6), ' ', absl::SkipEmpty())) {
        std::pair<std::string, std::string> kv =
            absl::StrSplit(field, absl::MaxSplits('=', 1));
        uint64_t v = 0;
        if (absl::SimpleAtoi(kv.second, &v)) stats[kv.first] = v;
      }
    }
    EXPECT_TRUE(stats.count("to_device")) << "no STATS line from the client";
    return stats;
  }

  int port_ = 0;
  std::unique_ptr<DaemonProcess> daemon_;
  std::string dir_;
};

double H2d(const std::string& t) {
  return MetricSum(t, "tidepool_bytes_moved_total", {{"direction", "h2d"}});
}
double D2h(const std::string& t) {
  return MetricSum(t, "tidepool_bytes_moved_total", {{"direction", "d2h"}});
}
double Sessions(const std::string& t) {
  return MetricSum(t, "tidepool_sessions");
}

TEST_F(MetricsTest, BytesMovedEqualWhatTheClientMoved) {
  const std::string before = Scrape();
  EXPECT_EQ(H2d(before), 0);
  EXPECT_EQ(D2h(before), 0);
  EXPECT_EQ(Sessions(before), 0);
  // ~96 MiB through a 64 MiB device, forward and backward: both directions.
  auto stats =
      RunPatternClient({"--layers=24", "--steps=2", "--seed=3", "--placed=3"});
  ASSERT_GT(stats["to_device"], 0u);
  ASSERT_GT(stats["to_host"], 0u);
  const double want_h2d = static_cast<double>(stats["to_device"]);
  const double want_d2h = static_cast<double>(stats["to_host"]);
  const std::string after = ScrapeUntil([&](const std::string& t) {
    return H2d(t) == want_h2d && D2h(t) == want_d2h;
  });
  EXPECT_EQ(H2d(after), want_h2d);
  EXPECT_EQ(D2h(after), want_d2h);
  // Every eviction is counted, and the clean ones (nothing to write back).
  EXPECT_EQ(MetricSum(after, "tidepool_evictions_total"),
            static_cast<double>(stats["evictions"]));
  EXPECT_EQ(MetricSum(after, "tidepool_evictions_total", {{"clean", "true"}}),
            static_cast<double>(stats["clean_evictions"]));
  // One timed copy per chunk moved, at least.
  EXPECT_GT(MetricSum(after, "tidepool_transfer_duration_seconds_count",
                      {{"direction", "h2d"}}),
            0);
  // The client closed its session: gauges back to zero, pools empty.
  EXPECT_EQ(Sessions(after), 0);
  EXPECT_EQ(MetricSum(after, "tidepool_sessions_reclaimed_total",
                      {{"reason", "closed"}}),
            1);
  EXPECT_EQ(MetricSum(after, "tidepool_host_pool_used_bytes"), 0);
  EXPECT_EQ(MetricSum(after, "tidepool_device_pool_used_bytes"), 0);
  EXPECT_GT(MetricSum(after, "tidepool_device_pool_peak_bytes"), 0);
  EXPECT_GT(MetricSum(after, "tidepool_rpc_duration_seconds_count",
                      {{"method", "Acquire"}}),
            0);
  // One optimizer update per placed acquire, labelled where it ran.
  EXPECT_EQ(stats["placed_on_device"] + stats["placed_on_host"], 6u);
  EXPECT_EQ(MetricSum(after, "tidepool_optimizer_updates_total",
                      {{"location", "device"}}),
            static_cast<double>(stats["placed_on_device"]));
  EXPECT_EQ(MetricSum(after, "tidepool_optimizer_updates_total",
                      {{"location", "host"}}),
            static_cast<double>(stats["placed_on_host"]));
}

TEST_F(MetricsTest, CountersFollowAnInProcessSessionsStats) {
  SessionOptions options;
  options.socket = daemon_->socket();
  options.policy = Policy::kCpu;
  auto s = Session::Open(options);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(Sessions(ScrapeUntil(
                [](const std::string& t) { return Sessions(t) == 1; })),
            1);
  std::vector<TensorSpec> specs;
  for (int i = 0; i < 32; ++i) {  // 128 MiB: 2x the device
    specs.push_back({absl::StrCat("t", i),
                     DType::kU8,
                     {static_cast<int64_t>(4 * kMiB)},
                     Group::kParam});
  }
  auto t = (*s)->Register(specs);
  ASSERT_TRUE(t.ok()) << t.status();
  for (AccessMode mode : {AccessMode::kReadWrite, AccessMode::kRead}) {
    for (const auto& info : *t) {
      const uint64_t id = info.id;
      ASSERT_TRUE((*s)->Acquire({&id, 1}, mode).ok());
      ASSERT_TRUE((*s)->Release({&id, 1}, TensorState::kHold).ok());
    }
  }
  auto st = (*s)->Stats();
  ASSERT_TRUE(st.ok()) << st.status();
  ASSERT_GT(st->bytes_to_host, 0u);
  const std::string text = ScrapeUntil([&](const std::string& m) {
    return H2d(m) == static_cast<double>(st->bytes_to_device) &&
           D2h(m) == static_cast<double>(st->bytes_to_host);
  });
  EXPECT_EQ(H2d(text), static_cast<double>(st->bytes_to_device));
  EXPECT_EQ(D2h(text), static_cast<double>(st->bytes_to_host));
  EXPECT_EQ(MetricSum(text, "tidepool_host_pool_used_bytes"),
            static_cast<double>(st->host_pool_used));
  EXPECT_EQ(MetricSum(text, "tidepool_device_pool_used_bytes"),
            static_cast<double>(st->device_pool_used));
  // Chunk bytes: 32 chunks of 4 MiB, every one held (HOLD) somewhere.
  EXPECT_EQ(MetricSum(text, "tidepool_chunk_bytes", {{"state", "hold"}}),
            32.0 * 4 * kMiB);
  EXPECT_EQ(MetricSum(text, "tidepool_chunk_bytes",
                      {{"location", "device"}, {"state", "hold"}}),
            static_cast<double>(st->device_bytes));
}

TEST_F(MetricsTest, SessionGaugesDropWhenAClientIsKilled) {
  auto victim = ChildProcess::Spawn({BinDir() + "/tidepool_pattern_client",
                                     "--socket=" + daemon_->socket(),
                                     "--layers=24", "--hold"});
  ASSERT_TRUE(victim.ok()) << victim.status();
  // Holding: a session open and a chunk in COMPUTE on the device.
  std::string held = ScrapeUntil([](const std::string& t) {
    return Sessions(t) == 1 &&
           MetricSum(t, "tidepool_chunk_bytes",
                     {{"location", "device"}, {"state", "compute"}}) > 0;
  });
  ASSERT_EQ(Sessions(held), 1) << held;
  EXPECT_EQ(MetricSum(held, "tidepool_sessions", {{"policy", "cpu"}}), 1);
  EXPECT_GT(MetricSum(held, "tidepool_host_pool_used_bytes"), 0);
  EXPECT_GT(MetricSum(held, "tidepool_device_pool_used_bytes"), 0);

  victim->Kill(SIGKILL);
  EXPECT_EQ(victim->Wait(), 128 + SIGKILL);
  const std::string after = ScrapeUntil([](const std::string& t) {
    return Sessions(t) == 0 &&
           MetricSum(t, "tidepool_host_pool_used_bytes") == 0;
  });
  EXPECT_EQ(Sessions(after), 0);
  EXPECT_EQ(MetricSum(after, "tidepool_sessions_reclaimed_total",
                      {{"reason", "disconnected"}}),
            1);
  EXPECT_EQ(MetricSum(after, "tidepool_host_pool_used_bytes"), 0);
  EXPECT_EQ(MetricSum(after, "tidepool_device_pool_used_bytes"), 0);
  EXPECT_EQ(MetricSum(after, "tidepool_chunk_bytes"), 0);
  // What it moved before dying stays counted.
  EXPECT_GT(H2d(after), 0);
}

}  // namespace
}  // namespace tidepool
