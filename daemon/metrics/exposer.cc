#include "daemon/metrics/exposer.h"

#include <CivetServer.h>
#include <arpa/inet.h>
#include <civetweb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <exception>
#include <mutex>
#include <string_view>
#include <thread>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "prometheus/exposer.h"

namespace tidepool::metrics {
namespace {

constexpr unsigned kCivetwebIpv6Feature = 8;

struct ParsedAddress {
  std::string host;  // dotted IPv4
  int port = 0;
};

absl::StatusOr<ParsedAddress> ParseAddress(std::string_view address) {
  const auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics address \"", std::string(address), "\": ", std::string(why),
        " (expected HOST:PORT, e.g. 127.0.0.1:9400)"));
  };
  if (address.starts_with("[")) {
    if (mg_check_feature(kCivetwebIpv6Feature) == 0) {
      return absl::UnimplementedError(absl::StrCat(
          "metrics address \"", std::string(address),
          "\": this civetweb build has no IPv6 support; use an IPv4 address"));
    }
    return bad("IPv6 addresses are not supported yet");
  }
  const size_t colon = address.rfind(':');
  if (colon == std::string_view::npos) return bad("no port");
  ParsedAddress parsed;
  parsed.host = std::string(address.substr(0, colon));
  const std::string_view port = address.substr(colon + 1);
  auto [end, error] =
      std::from_chars(port.data(), port.data() + port.size(), parsed.port);
  if (port.empty() || error != std::errc() ||
      end != port.data() + port.size() || parsed.port < 0 ||
      parsed.port > 65535) {
    return bad("port must be a number from 0 to 65535");
  }
  if (parsed.host.empty()) parsed.host = "0.0.0.0";
  if (parsed.host == "localhost") parsed.host = "127.0.0.1";
  in_addr ignored;
  if (inet_pton(AF_INET, parsed.host.c_str(), &ignored) != 1) {
    return bad("host must be an IPv4 address, \"localhost\" or empty");
  }
  return parsed;
}

// civetweb reports every bind failure as "Failed to setup server ports".
// Bind the address ourselves to tell the operator why.
std::string DiagnoseBindFailure(const ParsedAddress& address) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::StrCat("socket(): ", std::strerror(errno));
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(static_cast<uint16_t>(address.port));
  inet_pton(AF_INET, address.host.c_str(), &sin.sin_addr);
  std::string reason;
  if (bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) != 0) {
    const int error = errno;
    switch (error) {
      case EADDRINUSE:
        reason =
            "the port is already in use (another tidepoold or exporter?); "
            "stop it or set metrics_address to a free port";
        break;
      case EADDRNOTAVAIL:
        reason = "the address does not belong to this host";
        break;
      case EACCES:
        reason =
            "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)";
        break;
      default:
        reason = std::strerror(error);
    }
  } else {
    reason = "civetweb could not listen (the address binds fine now; retry)";
  }
  close(fd);
  return reason;
}

std::once_flag civetweb_init;

// Connects to host:port and closes at once; errors do not matter.
void PokeListener(const std::string& host, int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, host.c_str(), &sin.sin_addr);
  connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin));
  close(fd);
}

// civetweb's begin_request callback: runs before civetweb routes a request
// to prometheus-cpp's handler. civetweb would route /metrics/anything and
// every method to the handler registered for "/metrics", and prometheus-cpp
// answers GET only; so this answers everything but GET /metrics itself.
// Returns the status it sent, or 0 to let the handler serve the request.
int FilterRequest(mg_connection* connection) {
  const mg_request_info* request = mg_get_request_info(connection);
  const std::string_view path =
      request->local_uri != nullptr ? request->local_uri : "";
  const std::string_view method =
      request->request_method != nullptr ? request->request_method : "";
  if (path != "/metrics") {
    constexpr std::string_view kBody = "Not found. Metrics are at /metrics.\n";
    mg_printf(connection,
              "HTTP/1.1 404 Not Found\r\n"
              "Content-Type: text/plain; charset=utf-8\r\n"
              "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
              kBody.size(), kBody.data());
    return 404;
  }
  if (method == "GET") return 0;
  if (method == "HEAD") {
    // For probes: the endpoint is up. No Content-Length, which would need
    // a whole scrape to compute.
    mg_printf(connection,
              "HTTP/1.1 200 OK\r\n"
              "Content-Type: text/plain; charset=utf-8\r\n"
              "Connection: close\r\n\r\n");
    return 200;
  }
  constexpr std::string_view kBody = "Only GET and HEAD are allowed.\n";
  mg_printf(connection,
            "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
            kBody.size(), kBody.data());
  return 405;
}

}  // namespace

Exposer::Exposer(ExposerOptions options) : options_(std::move(options)) {}

Exposer::~Exposer() { Stop(); }

void Exposer::AddCollectable(
    std::weak_ptr<prometheus::Collectable> collectable) {
  absl::MutexLock lock(&mu_);
  if (exposer_ != nullptr) exposer_->RegisterCollectable(collectable);
  collectables_.push_back(std::move(collectable));
}

absl::Status Exposer::Start() {
  absl::MutexLock lock(&mu_);
  if (exposer_ != nullptr) {
    return absl::FailedPreconditionError("metrics exposer already started");
  }
  absl::StatusOr<ParsedAddress> address = ParseAddress(options_.address);
  if (!address.ok()) return address.status();
  if (options_.num_threads < 1) {
    return absl::InvalidArgumentError("metrics exposer needs >= 1 thread");
  }
  // Process-wide civetweb setup; never undone, other servers may exist.
  std::call_once(civetweb_init, [] { mg_init_library(0); });

  // No document_root: civetweb serves no files, only the handlers.
  std::vector<std::string> config = {
      "listening_ports",    absl::StrCat(address->host, ":", address->port),
      "num_threads",        absl::StrCat(options_.num_threads),
      "enable_keep_alive",  "no",
      "request_timeout_ms", "10000"};
  // civetweb copies the callbacks when it starts.
  CivetCallbacks callbacks;
  callbacks.begin_request = &FilterRequest;
  // Note: civetweb sets SIGPIPE to SIG_IGN process-wide (a closed scrape
  // connection must not kill the daemon); tidepoold wants that anyway.
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    exposer =
        std::make_unique<prometheus::Exposer>(std::move(config), &callbacks);
  } catch (const std::exception& e) {
    // civetweb reports every bind failure alike; find out why.
    return absl::UnavailableError(absl::StrCat(
        "metrics exposer cannot listen on ", options_.address, ": ",
        DiagnoseBindFailure(*address), " [civetweb: ", e.what(), "]"));
  }
  const std::vector<int> ports = exposer->GetListeningPorts();
  if (ports.empty() || ports.front() <= 0) {
    return absl::InternalError("metrics exposer: civetweb reports no port");
  }
  for (const auto& collectable : collectables_) {
    exposer->RegisterCollectable(collectable);
  }
  exposer_ = std::move(exposer);
  // Where Stop() connects to wake civetweb: the bound address, or loopback
  // when bound to every interface.
  wake_host_ = address->host == "0.0.0.0" ? "127.0.0.1" : address->host;
  port_.store(ports.front(), std::memory_order_release);
  return absl::OkStatus();
}

void Exposer::Stop() {
  absl::MutexLock lock(&mu_);
  if (exposer_ == nullptr) return;
  // civetweb's master thread polls the listening socket with a 2 s timeout
  // and notices mg_stop() only when that poll returns, so every stop (and
  // with it every daemon shutdown) would take up to 2 s. Connecting to the
  // port wakes the poll; keep poking until the server has stopped.
  std::atomic<bool> stopped{false};
  std::thread waker([host = wake_host_, port = port(), &stopped] {
    while (!stopped.load(std::memory_order_acquire)) {
      PokeListener(host, port);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  exposer_.reset();  // mg_stop(): joins civetweb's threads
  stopped.store(true, std::memory_order_release);
  waker.join();
  port_.store(0, std::memory_order_release);
}

}  // namespace tidepool::metrics
