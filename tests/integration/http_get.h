// A minimal HTTP/1.0 client for tests (libcurl is not a dependency): GET a
// path from 127.0.0.1:<port> over a plain TCP socket, plus a free-port
// finder and a parser for the Prometheus text format.
//
//   int port = FreeTcpPort();
//   auto body = HttpGet(port, "/metrics");
//   double h2d = MetricSum(*body, "tidepool_bytes_moved_total",
//                          {{"direction", "h2d"}});
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <map>
#include <sstream>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace tidepool::testing {

// A TCP port on 127.0.0.1 that was free a moment ago (bound to 0, closed).
inline int FreeTcpPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// The body of a 200 answer to GET `path_and_query`; an error otherwise.
inline absl::StatusOr<std::string> HttpGet(int port,
                                           const std::string& path_and_query,
                                           int timeout_seconds = 10) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::ErrnoToStatus(errno, "socket");
  timeval tv{timeout_seconds, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::ErrnoToStatus(err, absl::StrCat("connect 127.0.0.1:", port));
  }
  const std::string request = absl::StrCat(
      "GET ", path_and_query, " HTTP/1.0\r\nHost: 127.0.0.1:", port,
      "\r\nConnection: close\r\n\r\n");
  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n =
        ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      return absl::ErrnoToStatus(err, "send");
    }
    sent += static_cast<size_t>(n);
  }
  std::string response;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return absl::ErrnoToStatus(err, "recv");
    }
    response.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  const size_t header_end = response.find("\r\n\r\n");
  if (header_end == std::string::npos) {
    return absl::DataLossError("no HTTP header in the answer");
  }
  const std::string status_line = response.substr(0, response.find("\r\n"));
  if (status_line.find(" 200") == std::string::npos) {
    return absl::UnavailableError(
        absl::StrCat("GET ", path_and_query, ": ", status_line, ": ",
                     response.substr(header_end + 4, 500)));
  }
  return response.substr(header_end + 4);
}

// Percent-encodes a query parameter value.
inline std::string UrlEncode(const std::string& s) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

// The sum of the samples of `name` (exact metric name, no suffix added)
// whose labels include every pair of `labels`, in a text exposition. -1 if
// there is no such sample.
inline double MetricSum(const std::string& exposition, const std::string& name,
                        const std::map<std::string, std::string>& labels = {}) {
  double sum = 0;
  bool found = false;
  std::istringstream lines(exposition);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (!absl::StartsWith(line, name)) continue;
    const char next = line.size() > name.size() ? line[name.size()] : '\0';
    if (next != '{' && next != ' ') continue;
    std::string label_text;
    size_t value_at = name.size();
    if (next == '{') {
      const size_t close = line.find('}');
      if (close == std::string::npos) continue;
      label_text = line.substr(name.size() + 1, close - name.size() - 1);
      value_at = close + 1;
    }
    bool match = true;
    for (const auto& [k, v] : labels) {
      if (label_text.find(absl::StrCat(k, "=\"", v, "\"")) ==
          std::string::npos) {
        match = false;
      }
    }
    if (!match) continue;
    std::string value = line.substr(value_at);
    while (!value.empty() && value.front() == ' ') value.erase(0, 1);
    value = value.substr(0, value.find(' '));  // drop a timestamp
    double v = 0;
    if (!absl::SimpleAtod(value, &v)) continue;
    sum += v;
    found = true;
  }
  return found ? sum : -1;
}

}  // namespace tidepool::testing
