// The Grafana dashboard against a real Prometheus: a real Prometheus server
// (Debian package `prometheus`) scrapes a real tidepoold every second while
// real clients move chunks through it; then every panel query of
// deploy/grafana/dashboards/tidepool.json, with Grafana's template
// variables filled in, is evaluated through Prometheus's HTTP API and must
// return data. So must the queries behind the dashboard's $instance and $gpu
// variables.
//
// Without a prometheus binary (PATH, /usr/bin, or $TIDEPOOL_PROMETHEUS) the
// test fails, naming the package, unless TIDEPOOL_SKIP_PROMETHEUS=1.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/http_get.h"
#include "tests/support/process.h"

#ifndef TIDEPOOL_SOURCE_DIR
#error "TIDEPOOL_SOURCE_DIR must name the source tree (set by CMake)"
#endif

namespace tidepool {
namespace {

using Json = nlohmann::json;
using testing::BinDir;
using testing::ChildProcess;
using testing::DaemonOptions;
using testing::DaemonProcess;
using testing::FreeTcpPort;
using testing::HttpGet;
using testing::UrlEncode;

constexpr char kDashboard[] =
    TIDEPOOL_SOURCE_DIR "/deploy/grafana/dashboards/tidepool.json";

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string FindPrometheus() {
  if (const char* env = std::getenv("TIDEPOOL_PROMETHEUS"); env && *env) {
    return ::access(env, X_OK) == 0 ? env : "";
  }
  if (const char* path = std::getenv("PATH")) {
    for (absl::string_view dir : absl::StrSplit(path, ':', absl::SkipEmpty())) {
      const std::string candidate = absl::StrCat(dir, "/prometheus");
      if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    }
  }
  if (::access("/usr/bin/prometheus", X_OK) == 0) return "/usr/bin/prometheus";
  return "";
}

absl::StatusOr<Json> ParseJson(const std::string& text) {
  Json json = Json::parse(text, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrCat("not JSON: ", text.substr(0, 200)));
  }
  return json;
}

// json[key] as text, or "" when `json` is no object, has no `key`, or it
// is not a string.
std::string String(const Json& json, const char* key) {
  if (!json.is_object()) return "";
  const auto it = json.find(key);
  return it != json.end() && it->is_string() ? it->get<std::string>() : "";
}

struct PanelQuery {
  std::string panel;
  std::string expr;
};

// Every target expr of every panel, rows' nested panels included.
void CollectQueries(const Json& panels, std::vector<PanelQuery>* out) {
  if (!panels.is_array()) return;
  for (const Json& panel : panels) {
    if (!panel.is_object()) continue;
    if (panel.contains("panels")) CollectQueries(panel["panels"], out);
    if (!panel.contains("targets") || !panel["targets"].is_array()) continue;
    for (const Json& target : panel["targets"]) {
      const std::string expr = String(target, "expr");
      if (!expr.empty()) out->push_back({String(panel, "title"), expr});
    }
  }
}

// Grafana's variables as a dashboard user would have them.
std::string Substitute(const std::string& expr, const std::string& instance,
                       const std::string& gpu) {
  return absl::StrReplaceAll(expr, {{"${__rate_interval}", "10s"},
                                    {"$__rate_interval", "10s"},
                                    {"${__interval}", "10s"},
                                    {"$__interval", "10s"},
                                    {"${__range}", "1m"},
                                    {"$__range", "1m"},
                                    {"${instance}", instance},
                                    {"$instance", instance},
                                    {"${gpu}", gpu},
                                    {"$gpu", gpu}});
}

class PrometheusTest : public ::testing::Test {
 protected:
  void SetUp() override {
    prometheus_ = FindPrometheus();
    if (prometheus_.empty()) {
      const char* skip = std::getenv("TIDEPOOL_SKIP_PROMETHEUS");
      if (skip != nullptr && std::string(skip) == "1") {
        GTEST_SKIP() << "no prometheus binary; TIDEPOOL_SKIP_PROMETHEUS=1";
      }
      FAIL() << "no prometheus binary ($TIDEPOOL_PROMETHEUS, PATH or "
                "/usr/bin/prometheus): "
                "install the Debian package `prometheus` (scripts/setup.sh "
                "does), point TIDEPOOL_PROMETHEUS at one, or set "
                "TIDEPOOL_SKIP_PROMETHEUS=1 to skip this test";
    }
    char tmpl[] = "/tmp/tidepool-prometheus-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    for (int attempt = 0; attempt < 5 && daemon_ == nullptr; ++attempt) {
      metrics_port_ = FreeTcpPort();
      DaemonOptions options;  // 64 MiB sim device, 4 MiB chunks
      options.extra_args = {
          absl::StrCat("--metrics_address=127.0.0.1:", metrics_port_)};
      auto d = DaemonProcess::Start(options);
      if (d.ok()) daemon_ = std::move(*d);
    }
    ASSERT_NE(daemon_, nullptr) << "tidepoold did not start with metrics";
    ASSERT_NO_FATAL_FAILURE(StartPrometheus());
  }

  void TearDown() override {
    if (server_) {
      server_->Kill(SIGTERM);
      server_->Wait();
    }
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }

  void StartPrometheus() {
    const std::string config = dir_ + "/prometheus.yml";
    std::ofstream(config) << absl::StrCat(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: tidepool\n"
        "    scrape_interval: 1s\n"
        "    scrape_timeout: 1s\n"
        "    static_configs:\n"
        "      - targets: ['127.0.0.1:",
        metrics_port_, "']\n");
    for (int attempt = 0; attempt < 5; ++attempt) {
      prometheus_port_ = FreeTcpPort();
      auto child = ChildProcess::Spawn(
          {"/bin/sh", "-c",
           absl::StrCat("exec ", prometheus_, " --config.file=", config,
                        " --storage.tsdb.path=", dir_, "/data",
                        " --web.listen-address=127.0.0.1:", prometheus_port_,
                        " --log.level=warn >", dir_, "/prometheus.log 2>&1")});
      ASSERT_TRUE(child.ok()) << child.status();
      server_ = std::make_unique<ChildProcess>(std::move(*child));
      for (int i = 0; i < 600 && server_->Running(); ++i) {
        if (HttpGet(prometheus_port_, "/-/ready", 2).ok()) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      server_->Kill(SIGKILL);
      server_->Wait();
      server_.reset();
    }
    FAIL() << "prometheus did not become ready; its log:\n"
           << ReadFile(dir_ + "/prometheus.log");
  }

  // Evaluates `query` now; its result vector (an error if not "success").
  absl::StatusOr<Json> Query(const std::string& query) {
    auto body =
        HttpGet(prometheus_port_, "/api/v1/query?query=" + UrlEncode(query));
    if (!body.ok()) return body.status();
    auto json = ParseJson(*body);
    if (!json.ok()) return json.status();
    // {"status": "success", "data": {"resultType": "vector", "result": [
    //   {"metric": {labels}, "value": [unix_time, "value"]}, ...]}}
    if (String(*json, "status") != "success") {
      return absl::InternalError(absl::StrCat("query failed: ", *body));
    }
    const Json result = json->value("/data/result"_json_pointer, Json());
    if (!result.is_array()) {
      return absl::InternalError(absl::StrCat("no result vector: ", *body));
    }
    return result;
  }

  // The first sample's value of `query`, or -1.
  double Scalar(const std::string& query) {
    auto r = Query(query);
    if (!r.ok() || r->empty()) return -1;
    const Json value = (*r)[0].value("/value/1"_json_pointer, Json());
    return value.is_string() ? std::stod(value.get<std::string>()) : -1;
  }

  template <typename Pred>
  bool WaitFor(Pred pred, int timeout_ms) {
    for (int waited = 0; waited < timeout_ms; waited += 100) {
      if (pred()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return pred();
  }

  std::string prometheus_;
  std::string dir_;
  int metrics_port_ = 0;
  int prometheus_port_ = 0;
  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<ChildProcess> server_;
};

TEST_F(PrometheusTest, EveryDashboardPanelQueryReturnsData) {
  // The dashboard's queries.
  auto dashboard = ParseJson(ReadFile(kDashboard));
  ASSERT_TRUE(dashboard.ok()) << kDashboard << ": " << dashboard.status();
  std::vector<PanelQuery> queries;
  CollectQueries(dashboard->value("panels", Json()), &queries);
  ASSERT_GE(queries.size(), 10u) << "too few panel queries in " << kDashboard;

  // Prometheus sees the daemon.
  ASSERT_TRUE(
      WaitFor([&] { return Scalar("up{job=\"tidepool\"}") == 1; }, 20000))
      << "prometheus never scraped tidepoold; its log:\n"
      << ReadFile(dir_ + "/prometheus.log");

  // Clients at work while it scrapes: one holds a session open (so session
  // gauges read 1), one streams a model 1.5x the device for a few steps,
  // ending each with placed acquires (optimizer updates).
  auto holder = ChildProcess::Spawn({BinDir() + "/tidepool_pattern_client",
                                     "--socket=" + daemon_->socket(),
                                     "--layers=8", "--hold", "--seed=2"});
  ASSERT_TRUE(holder.ok()) << holder.status();
  auto worker = ChildProcess::Spawn(
      {BinDir() + "/tidepool_pattern_client", "--socket=" + daemon_->socket(),
       "--layers=24", "--steps=6", "--seed=9", "--placed=4"});
  ASSERT_TRUE(worker.ok()) << worker.status();
  EXPECT_EQ(worker->Wait(), 0);
  // Prometheus has scraped the moved bytes and a few samples since, so
  // that rate() over 10s windows has points on both sides.
  ASSERT_TRUE(WaitFor(
      [&] { return Scalar("sum(tidepool_bytes_moved_total)") > 0; }, 10000));
  ASSERT_TRUE(WaitFor(
      [&] {
        return Scalar("sum(rate(tidepool_bytes_moved_total[10s])) > 0") > 0;
      },
      10000));
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_EQ(Scalar("sum(tidepool_sessions)"), 1);
  EXPECT_EQ(Scalar("sum(tidepool_optimizer_updates_total)"), 6 * 4);

  const std::string instance = absl::StrCat("127.0.0.1:", metrics_port_);
  const std::vector<std::pair<std::string, std::string>> variables = {
      {".*", ".*"},        // "All"
      {instance, "sim0"},  // one instance and GPU picked
  };
  int evaluated = 0;
  for (const auto& [inst, gpu] : variables) {
    for (const PanelQuery& q : queries) {
      const std::string expr = Substitute(q.expr, inst, gpu);
      EXPECT_EQ(expr.find('$'), std::string::npos)
          << "panel '" << q.panel << "' uses a template variable this test "
          << "does not know: " << q.expr;
      auto result = Query(expr);
      ASSERT_TRUE(result.ok())
          << "panel '" << q.panel << "': " << expr << ": " << result.status();
      EXPECT_FALSE(result->empty())
          << "panel '" << q.panel << "' shows no data: " << expr;
      ++evaluated;
    }
  }
  EXPECT_EQ(evaluated, 2 * static_cast<int>(queries.size()));

  // The template variables' own queries (label_values(<selector>, label))
  // find something to offer.
  const std::regex label_values(R"(label_values\((.*),\s*(\w+)\)\s*$)");
  int variable_queries = 0;
  for (const Json& variable :
       dashboard->value("/templating/list"_json_pointer, Json::array())) {
    std::smatch m;
    const std::string text = String(variable, "definition");
    if (!std::regex_search(text, m, label_values)) continue;
    const std::string selector = Substitute(m[1], ".*", ".*");
    auto result = Query(selector);
    ASSERT_TRUE(result.ok()) << text << ": " << result.status();
    ASSERT_FALSE(result->empty()) << "variable query " << text;
    const Json labels = (*result)[0].value("metric", Json::object());
    EXPECT_TRUE(labels.contains(m[2].str()))
        << text << " has no label " << m[2];
    ++variable_queries;
  }
  EXPECT_EQ(variable_queries, 2);  // $instance and $gpu
  holder->Kill(SIGKILL);
  holder->Wait();
}

}  // namespace
}  // namespace tidepool
