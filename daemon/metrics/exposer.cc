#include "daemon/metrics/exposer.h"

#include <arpa/inet.h>
#include <civetweb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <mutex>
#include <string_view>
#include <thread>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "daemon/metrics/text_serializer.h"

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

}  // namespace

Exposer::Exposer(const Collectable& collectable, ExposerOptions options)
    : collectable_(collectable), options_(std::move(options)) {}

Exposer::~Exposer() { Stop(); }

absl::Status Exposer::Start() {
  absl::MutexLock lock(&mu_);
  if (context_ != nullptr) {
    return absl::FailedPreconditionError("metrics exposer already started");
  }
  absl::StatusOr<ParsedAddress> address = ParseAddress(options_.address);
  if (!address.ok()) return address.status();
  if (options_.num_threads < 1) {
    return absl::InvalidArgumentError("metrics exposer needs >= 1 thread");
  }
  // Process-wide civetweb setup; never undone, other contexts may exist.
  std::call_once(civetweb_init, [] { mg_init_library(0); });

  const std::string ports = absl::StrCat(address->host, ":", address->port);
  const std::string threads = absl::StrCat(options_.num_threads);
  // No document_root: civetweb serves no files, only our handler.
  const char* config[] = {"listening_ports",
                          ports.c_str(),
                          "num_threads",
                          threads.c_str(),
                          "enable_keep_alive",
                          "no",
                          "request_timeout_ms",
                          "10000",
                          nullptr};
  mg_callbacks callbacks{};
  mg_init_data init{&callbacks, nullptr, config};
  unsigned error_code = 0;
  char error_text[256] = "";
  mg_error_data error{&error_code, error_text, sizeof(error_text)};
  // Note: mg_start2 sets SIGPIPE to SIG_IGN process-wide (a closed scrape
  // connection must not kill the daemon); tidepoold wants that anyway.
  mg_context* context = mg_start2(&init, &error);
  if (context == nullptr) {
    return absl::UnavailableError(absl::StrCat(
        "metrics exposer cannot listen on ", options_.address, ": ",
        DiagnoseBindFailure(*address), " [civetweb: ", error_text, "]"));
  }
  // One catch-all handler so that only the exact path /metrics is served
  // (civetweb would also route /metrics/anything to a "/metrics" handler).
  mg_set_request_handler(context, "/", &Exposer::HandleRequest, this);

  mg_server_port bound[4] = {};
  const int count = mg_get_server_ports(context, 4, bound);
  if (count < 1) {
    mg_stop(context);
    return absl::InternalError("metrics exposer: civetweb reports no port");
  }
  context_ = context;
  // Where Stop() connects to wake civetweb: the bound address, or loopback
  // when bound to every interface.
  wake_host_ = address->host == "0.0.0.0" ? "127.0.0.1" : address->host;
  port_.store(bound[0].port, std::memory_order_release);
  return absl::OkStatus();
}

void Exposer::Stop() {
  absl::MutexLock lock(&mu_);
  if (context_ == nullptr) return;
  // civetweb's master thread polls the listening socket with a 2 s timeout
  // and notices mg_stop() only when that poll returns, so every stop (and
  // with it every daemon shutdown) would take up to 2 s. Connecting to the
  // port wakes the poll; keep poking until mg_stop() has returned.
  std::atomic<bool> stopped{false};
  std::thread waker([host = wake_host_, port = port(), &stopped] {
    while (!stopped.load(std::memory_order_acquire)) {
      PokeListener(host, port);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  mg_stop(context_);  // joins civetweb's threads
  stopped.store(true, std::memory_order_release);
  waker.join();
  context_ = nullptr;
  port_.store(0, std::memory_order_release);
}

int Exposer::HandleRequest(mg_connection* connection, void* self) {
  return static_cast<const Exposer*>(self)->Serve(connection);
}

int Exposer::Serve(mg_connection* connection) const {
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
  if (method != "GET" && method != "HEAD") {
    constexpr std::string_view kBody = "Only GET and HEAD are allowed.\n";
    mg_printf(connection,
              "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\n"
              "Content-Type: text/plain; charset=utf-8\r\n"
              "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
              kBody.size(), kBody.data());
    return 405;
  }
  const std::string body = SerializeText(collectable_.Collect());
  mg_printf(connection,
            "HTTP/1.1 200 OK\r\nContent-Type: %s\r\n"
            "Content-Length: %zu\r\nCache-Control: no-store\r\n"
            "Connection: close\r\n\r\n",
            std::string(kTextContentType).c_str(), body.size());
  if (method == "GET") mg_write(connection, body.data(), body.size());
  return 200;
}

}  // namespace tidepool::metrics
