// HTTP for tests, over libcurl (Debian: libcurl4-openssl-dev): requests to
// 127.0.0.1:<port>, a free-port finder, and the sum of samples in a
// Prometheus text exposition. Link CURL::libcurl.
//
//   int port = FreeTcpPort();
//   auto body = HttpGet(port, "/metrics");
//   double h2d = MetricSum(*body, "tidepool_bytes_moved_total",
//                          {{"direction", "h2d"}});
//   auto head = HttpRequest(port, "HEAD", "/metrics");  // any status
#pragma once

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <memory>
#include <sstream>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

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

struct HttpResponse {
  long status = 0;
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;                            // decoded if it was gzipped
};

struct HttpOptions {
  int timeout_seconds = 10;
  // Ask for a gzip-compressed answer (as Prometheus does); libcurl
  // decompresses it, and the Content-Encoding header says it was.
  bool accept_gzip = false;
};

namespace internal {

inline size_t AppendBody(char* data, size_t size, size_t count, void* out) {
  static_cast<std::string*>(out)->append(data, size * count);
  return size * count;
}

inline size_t AppendHeader(char* data, size_t size, size_t count, void* out) {
  const std::string line(data, size * count);
  const size_t colon = line.find(':');
  if (colon != std::string::npos) {
    (*static_cast<std::map<std::string, std::string>*>(
        out))[absl::AsciiStrToLower(line.substr(0, colon))] =
        std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
  }
  return size * count;
}

// curl_global_init is not thread-safe everywhere; run it once, first.
inline void InitCurl() {
  static const bool initialised = curl_global_init(CURL_GLOBAL_ALL) == 0;
  (void)initialised;
}

}  // namespace internal

// `method` `path_and_query` on 127.0.0.1:`port`; any HTTP status is a
// response, only a transport failure is an error.
inline absl::StatusOr<HttpResponse> HttpRequest(
    int port, const std::string& method, const std::string& path_and_query,
    const HttpOptions& options = {}) {
  internal::InitCurl();
  std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> curl(curl_easy_init(),
                                                           curl_easy_cleanup);
  if (curl == nullptr) return absl::InternalError("curl_easy_init failed");
  HttpResponse response;
  const std::string url =
      absl::StrCat("http://127.0.0.1:", port, path_and_query);
  CURL* c = curl.get();
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_NOPROXY, "*");  // a proxy in the environment
  curl_easy_setopt(c, CURLOPT_TIMEOUT,
                   static_cast<long>(options.timeout_seconds));
  if (method == "HEAD") {
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  } else if (method != "GET") {
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method.c_str());
  }
  if (options.accept_gzip) curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, "gzip");
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, &internal::AppendBody);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &response.body);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, &internal::AppendHeader);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &response.headers);
  const CURLcode code = curl_easy_perform(c);
  if (code != CURLE_OK) {
    return absl::UnavailableError(
        absl::StrCat(method, " ", url, ": ", curl_easy_strerror(code)));
  }
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &response.status);
  return response;
}

// The body of a 200 answer to GET `path_and_query`; an error otherwise.
inline absl::StatusOr<std::string> HttpGet(int port,
                                           const std::string& path_and_query,
                                           int timeout_seconds = 10) {
  absl::StatusOr<HttpResponse> response =
      HttpRequest(port, "GET", path_and_query,
                  {.timeout_seconds = timeout_seconds, .accept_gzip = true});
  if (!response.ok()) return response.status();
  if (response->status != 200) {
    return absl::UnavailableError(
        absl::StrCat("GET ", path_and_query, ": HTTP ", response->status, ": ",
                     response->body.substr(0, 500)));
  }
  return std::move(response->body);
}

// Percent-encodes a query parameter value.
inline std::string UrlEncode(const std::string& s) {
  internal::InitCurl();
  char* escaped =
      curl_easy_escape(nullptr, s.data(), static_cast<int>(s.size()));
  std::string out = escaped != nullptr ? escaped : "";
  curl_free(escaped);
  return out;
}

// The sum of the samples of `name` (exact metric name, no suffix added)
// whose labels include every pair of `labels`, in a text exposition. -1 if
// there is no such sample. Written here because no packaged C++ library
// parses the text format (prometheus-cpp only writes it); it reads what
// prometheus-cpp writes, not every corner of the format.
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
