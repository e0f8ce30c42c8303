// The Exposer over real HTTP on an ephemeral port, with libcurl as the
// client: what it serves, the paths and methods it refuses, and the errors
// an operator sees for a bad or taken address.
#include "daemon/metrics/exposer.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/metrics/callback_collector.h"
#include "daemon/metrics/tidepool_metrics.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/http_get.h"

namespace tidepool::metrics {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using tidepool::testing::HttpRequest;
using tidepool::testing::HttpResponse;
using tidepool::testing::MetricSum;

class ExposerTest : public ::testing::Test {
 protected:
  ExposerTest() : metrics_("0.1.0-test", "sim") {
    gpu_ = &metrics_.Device("sim0", "GPU-a");
    metrics_.OnBytesMoved(*gpu_, Direction::kHostToDevice, 4096, 0.001);
  }

  absl::StatusOr<HttpResponse> Get(const Exposer& exposer,
                                   const std::string& path) {
    return HttpRequest(exposer.port(), "GET", path);
  }

  TidepoolMetrics metrics_;
  DeviceMetrics* gpu_;
};

double H2d(const std::string& text) {
  return MetricSum(text, "tidepool_bytes_moved_total", {{"direction", "h2d"}});
}

TEST_F(ExposerTest, ServesMetricsOnEphemeralPort) {
  Exposer exposer({.address = "127.0.0.1:0"});
  exposer.AddCollectable(metrics_.collectable());
  EXPECT_EQ(exposer.port(), 0);
  ASSERT_TRUE(exposer.Start().ok());
  ASSERT_GT(exposer.port(), 0);

  absl::StatusOr<HttpResponse> response = Get(exposer, "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_THAT(response->headers["content-type"], HasSubstr("text/plain"));
  EXPECT_EQ(response->headers["content-length"],
            std::to_string(response->body.size()));
  EXPECT_THAT(response->body,
              HasSubstr("# TYPE tidepool_bytes_moved_total counter\n"));
  EXPECT_EQ(H2d(response->body), 4096);

  // Each scrape reads current values; a query string is ignored.
  metrics_.OnBytesMoved(*gpu_, Direction::kHostToDevice, 4096, 0.001);
  response = Get(exposer, "/metrics?debug=1");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(H2d(response->body), 8192);
}

// Prometheus asks for gzip; the answer is compressed and means the same.
TEST_F(ExposerTest, CompressesForClientsThatAskForGzip) {
  Exposer exposer({.address = "127.0.0.1:0"});
  exposer.AddCollectable(metrics_.collectable());
  ASSERT_TRUE(exposer.Start().ok());
  absl::StatusOr<HttpResponse> plain = Get(exposer, "/metrics");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->headers.count("content-encoding"), 0u);
  absl::StatusOr<HttpResponse> gzipped =
      HttpRequest(exposer.port(), "GET", "/metrics", {.accept_gzip = true});
  ASSERT_TRUE(gzipped.ok()) << gzipped.status();
  EXPECT_EQ(gzipped->status, 200);
  EXPECT_EQ(gzipped->headers["content-encoding"], "gzip");
  EXPECT_LT(std::stoul(gzipped->headers["content-length"]),
            gzipped->body.size());
  EXPECT_EQ(H2d(gzipped->body), 4096);
}

// The endpoint's sources: several collectables, a scrape-time one among
// them, each held weakly.
TEST_F(ExposerTest, ServesEveryCollectableWhileItLives) {
  Exposer exposer({.address = "127.0.0.1:0"});
  exposer.AddCollectable(metrics_.collectable());
  ASSERT_TRUE(exposer.Start().ok());
  double depth = 3;
  auto queue = std::make_shared<CallbackCollector>(
      "tidepool_test_queue_depth", "Queued copies.",
      prometheus::MetricType::Gauge, [&depth] {
        return std::vector<CallbackCollector::Sample>{
            {{{"direction", "h2d"}}, depth}};
      });
  exposer.AddCollectable(queue);  // after Start()
  depth = 5;
  absl::StatusOr<HttpResponse> response = Get(exposer, "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(MetricSum(response->body, "tidepool_test_queue_depth"), 5);
  EXPECT_EQ(H2d(response->body), 4096);
  queue.reset();
  response = Get(exposer, "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_THAT(response->body, Not(HasSubstr("tidepool_test_queue_depth")));
  EXPECT_EQ(H2d(response->body), 4096);
}

TEST_F(ExposerTest, OtherPathsAre404AndOtherMethods405) {
  Exposer exposer({.address = "127.0.0.1:0"});
  exposer.AddCollectable(metrics_.collectable());
  ASSERT_TRUE(exposer.Start().ok());
  for (const char* path : {"/", "/metric", "/metricsx", "/metrics/", "/x/y",
                           "/metrics/child", "/favicon.ico"}) {
    absl::StatusOr<HttpResponse> response = Get(exposer, path);
    ASSERT_TRUE(response.ok()) << path << ": " << response.status();
    EXPECT_EQ(response->status, 404) << path;
    EXPECT_THAT(response->body, Not(HasSubstr("tidepool_"))) << path;
  }
  for (const char* method : {"POST", "PUT", "DELETE"}) {
    absl::StatusOr<HttpResponse> response =
        HttpRequest(exposer.port(), method, "/metrics");
    ASSERT_TRUE(response.ok()) << method << ": " << response.status();
    EXPECT_EQ(response->status, 405) << method;
    EXPECT_EQ(response->headers["allow"], "GET, HEAD") << method;
  }
  absl::StatusOr<HttpResponse> head =
      HttpRequest(exposer.port(), "HEAD", "/metrics");
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->status, 200);
  EXPECT_THAT(head->headers["content-type"], HasSubstr("text/plain"));
  EXPECT_EQ(head->body, "");
}

TEST_F(ExposerTest, PortInUseIsAClearError) {
  // Hold a listening socket on an ephemeral port, then ask for that port.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)),
            0);
  ASSERT_EQ(listen(fd, 1), 0);
  socklen_t length = sizeof(address);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length), 0);
  const std::string taken =
      "127.0.0.1:" + std::to_string(ntohs(address.sin_port));

  Exposer exposer({.address = taken});
  absl::Status status = exposer.Start();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(status.message()), HasSubstr(taken));
  EXPECT_THAT(std::string(status.message()), HasSubstr("already in use"));
  EXPECT_EQ(exposer.port(), 0);
  close(fd);
}

TEST_F(ExposerTest, SecondExposerOnSamePortFails) {
  Exposer first({.address = "127.0.0.1:0"});
  first.AddCollectable(metrics_.collectable());
  ASSERT_TRUE(first.Start().ok());
  Exposer second({.address = "127.0.0.1:" + std::to_string(first.port())});
  EXPECT_EQ(second.Start().code(), absl::StatusCode::kUnavailable);
  // The first one still serves.
  absl::StatusOr<HttpResponse> response = Get(first, "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
}

TEST_F(ExposerTest, RejectsMalformedAddresses) {
  for (const char* address :
       {"", "9400", "127.0.0.1", "127.0.0.1:", "127.0.0.1:http",
        "127.0.0.1:70000", "127.0.0.1:-1", "1.2.3:80", "example.com:80",
        "127.0.0.1:94 00"}) {
    Exposer exposer({.address = address});
    EXPECT_EQ(exposer.Start().code(), absl::StatusCode::kInvalidArgument)
        << address;
  }
  Exposer ipv6({.address = "[::1]:0"});
  absl::Status status = ipv6.Start();
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(std::string(status.message()), HasSubstr("IPv6"));
}

TEST_F(ExposerTest, StartStopRestart) {
  Exposer exposer({.address = "localhost:0"});
  exposer.AddCollectable(metrics_.collectable());
  ASSERT_TRUE(exposer.Start().ok());
  EXPECT_EQ(exposer.Start().code(), absl::StatusCode::kFailedPrecondition);
  const int port = exposer.port();
  exposer.Stop();
  EXPECT_EQ(exposer.port(), 0);
  EXPECT_FALSE(HttpRequest(port, "GET", "/metrics").ok());
  exposer.Stop();  // idempotent
  ASSERT_TRUE(exposer.Start().ok());
  absl::StatusOr<HttpResponse> response = Get(exposer, "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(H2d(response->body), 4096);  // the collectable came along
}

// A scrape after the metrics are gone finds nothing of theirs, and no
// freed memory: the exposer holds them weakly.
TEST(ExposerLifetimeTest, OutlivesItsMetrics) {
  Exposer exposer({.address = "127.0.0.1:0"});
  auto metrics = std::make_unique<TidepoolMetrics>("0.1.0-test", "sim");
  exposer.AddCollectable(metrics->collectable());
  ASSERT_TRUE(exposer.Start().ok());
  metrics.reset();
  absl::StatusOr<HttpResponse> response =
      HttpRequest(exposer.port(), "GET", "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_THAT(response->body, Not(HasSubstr("tidepool_")));
}

}  // namespace
}  // namespace tidepool::metrics
