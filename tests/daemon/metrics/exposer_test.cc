// The Exposer over real HTTP on an ephemeral port, with a plain-socket
// client (no libcurl in the build).
#include "daemon/metrics/exposer.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cctype>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/metrics/registry.h"
#include "daemon/metrics/text_serializer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tidepool::metrics {
namespace {

using ::testing::HasSubstr;

struct HttpResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
};

// One HTTP/1.1 request with "Connection: close"; reads to EOF.
absl::StatusOr<HttpResponse> Request(int port, const std::string& method,
                                     const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError("socket");
  timeval timeout{.tv_sec = 5, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) !=
      0) {
    close(fd);
    return absl::UnavailableError("connect");
  }
  const std::string request = method + " " + path +
                              " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                              "Connection: close\r\n\r\n";
  if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::InternalError("send");
  }
  std::string raw;
  char buffer[4096];
  ssize_t n;
  while ((n = recv(fd, buffer, sizeof(buffer), 0)) > 0) raw.append(buffer, n);
  close(fd);
  if (n < 0) return absl::DeadlineExceededError("recv");

  HttpResponse response;
  const size_t header_end = raw.find("\r\n\r\n");
  if (header_end == std::string::npos || raw.compare(0, 9, "HTTP/1.1 ") != 0) {
    return absl::InternalError("malformed response: " + raw);
  }
  response.status = std::stoi(raw.substr(9, 3));
  size_t line = raw.find("\r\n") + 2;
  while (line < header_end) {
    const size_t eol = raw.find("\r\n", line);
    const std::string header = raw.substr(line, eol - line);
    const size_t colon = header.find(':');
    std::string name = header.substr(0, colon);
    for (char& c : name) c = static_cast<char>(std::tolower(c));
    size_t value = colon + 1;
    while (value < header.size() && header[value] == ' ') ++value;
    response.headers[name] = header.substr(value);
    line = eol + 2;
  }
  response.body = raw.substr(header_end + 4);
  return response;
}

class ExposerTest : public ::testing::Test {
 protected:
  ExposerTest() {
    moved_ = &BuildCounter()
                  .Name("tidepool_bytes_moved_total")
                  .Help("Bytes moved.")
                  .Register(registry_)
                  .Add({{"direction", "h2d"}});
    moved_->Increment(4096);
  }

  Registry registry_;
  Counter* moved_;
};

TEST_F(ExposerTest, ServesMetricsOnEphemeralPort) {
  Exposer exposer(registry_, {.address = "127.0.0.1:0"});
  EXPECT_EQ(exposer.port(), 0);
  ASSERT_TRUE(exposer.Start().ok());
  ASSERT_GT(exposer.port(), 0);

  absl::StatusOr<HttpResponse> response =
      Request(exposer.port(), "GET", "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->headers["content-type"],
            "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(response->body, SerializeText(registry_.Collect()));
  EXPECT_EQ(response->headers["content-length"],
            std::to_string(response->body.size()));
  EXPECT_THAT(
      response->body,
      HasSubstr("tidepool_bytes_moved_total{direction=\"h2d\"} 4096\n"));

  // Each scrape reads current values.
  moved_->Increment(4096);
  response = Request(exposer.port(), "GET", "/metrics?debug=1");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_THAT(
      response->body,
      HasSubstr("tidepool_bytes_moved_total{direction=\"h2d\"} 8192\n"));
}

TEST_F(ExposerTest, OtherPathsAre404AndOtherMethods405) {
  Exposer exposer(registry_, {.address = "127.0.0.1:0"});
  ASSERT_TRUE(exposer.Start().ok());
  for (const char* path : {"/", "/metric", "/metricsx", "/metrics/", "/x/y",
                           "/metrics/child", "/favicon.ico"}) {
    absl::StatusOr<HttpResponse> response =
        Request(exposer.port(), "GET", path);
    ASSERT_TRUE(response.ok()) << path << ": " << response.status();
    EXPECT_EQ(response->status, 404) << path;
  }
  absl::StatusOr<HttpResponse> post =
      Request(exposer.port(), "POST", "/metrics");
  ASSERT_TRUE(post.ok()) << post.status();
  EXPECT_EQ(post->status, 405);
  EXPECT_EQ(post->headers["allow"], "GET, HEAD");

  absl::StatusOr<HttpResponse> head =
      Request(exposer.port(), "HEAD", "/metrics");
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->status, 200);
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

  Exposer exposer(registry_, {.address = taken});
  absl::Status status = exposer.Start();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(status.message()), HasSubstr(taken));
  EXPECT_THAT(std::string(status.message()), HasSubstr("already in use"));
  EXPECT_EQ(exposer.port(), 0);
  close(fd);
}

TEST_F(ExposerTest, SecondExposerOnSamePortFails) {
  Exposer first(registry_, {.address = "127.0.0.1:0"});
  ASSERT_TRUE(first.Start().ok());
  Exposer second(registry_,
                 {.address = "127.0.0.1:" + std::to_string(first.port())});
  EXPECT_EQ(second.Start().code(), absl::StatusCode::kUnavailable);
  // The first one still serves.
  absl::StatusOr<HttpResponse> response =
      Request(first.port(), "GET", "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
}

TEST_F(ExposerTest, RejectsMalformedAddresses) {
  for (const char* address :
       {"", "9400", "127.0.0.1", "127.0.0.1:", "127.0.0.1:http",
        "127.0.0.1:70000", "127.0.0.1:-1", "1.2.3:80", "example.com:80",
        "127.0.0.1:94 00"}) {
    Exposer exposer(registry_, {.address = address});
    EXPECT_EQ(exposer.Start().code(), absl::StatusCode::kInvalidArgument)
        << address;
  }
  Exposer ipv6(registry_, {.address = "[::1]:0"});
  absl::Status status = ipv6.Start();
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(std::string(status.message()), HasSubstr("IPv6"));
}

TEST_F(ExposerTest, StartStopRestart) {
  Exposer exposer(registry_, {.address = "localhost:0"});
  ASSERT_TRUE(exposer.Start().ok());
  EXPECT_EQ(exposer.Start().code(), absl::StatusCode::kFailedPrecondition);
  const int port = exposer.port();
  exposer.Stop();
  EXPECT_EQ(exposer.port(), 0);
  EXPECT_FALSE(Request(port, "GET", "/metrics").ok());
  exposer.Stop();  // idempotent
  ASSERT_TRUE(exposer.Start().ok());
  absl::StatusOr<HttpResponse> response =
      Request(exposer.port(), "GET", "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
}

}  // namespace
}  // namespace tidepool::metrics
