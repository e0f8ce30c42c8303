// tidepoolctl: looks into a running tidepoold through its gRPC socket.
//
//   tidepoolctl status                    daemon, devices and pools
//   tidepoolctl sessions                  every open session
//   tidepoolctl chunks <session>          a session's chunks and where each is
//   tidepoolctl trace <session>           auto: the recorded warm-up trace;
//                                         others: the residency event log
//   tidepoolctl timeline <session> --out=timeline.svg
//   tidepoolctl config                    policy and pool settings
//
// Exit status: 0 on success, 1 when the daemon could not answer (not
// running, no permission, unknown session), 2 on a usage error.
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "tools/tidepoolctl/admin_client.h"
#include "tools/tidepoolctl/format.h"
#include "tools/tidepoolctl/timeline_svg.h"

ABSL_FLAG(std::string, socket, "/run/tidepool/tidepoold.sock",
          "tidepoold's gRPC socket");
ABSL_FLAG(bool, json, false, "print the daemon's answer as JSON");
ABSL_FLAG(std::string, out, "", "timeline: the SVG file to write");
ABSL_FLAG(absl::Duration, window, absl::ZeroDuration(),
          "timeline: only the last WINDOW before the newest event, e.g. 2s "
          "(a recent step); 0: every recorded event");
ABSL_FLAG(uint64_t, last, 0,
          "trace/timeline: only the session's most recent N events (0: all "
          "the daemon still holds)");
ABSL_FLAG(int, width, 1200, "timeline: picture width in pixels");

namespace tidepool::ctl {
namespace {

constexpr char kUsage[] =
    "tidepoolctl: inspect a running tidepoold.\n"
    "usage: tidepoolctl [--socket=PATH] [--json] COMMAND [ARGS]\n"
    "commands:\n"
    "  status                 daemon version, uptime, devices and pools\n"
    "  sessions               open sessions: client, policy, memory, bytes "
    "moved\n"
    "  chunks SESSION         the session's chunks: where each lives, state, "
    "tensors\n"
    "  trace SESSION          auto: the recorded warm-up trace (ops, chunks, "
    "budgets);\n"
    "                         other policies: the residency event log (loaded, "
    "evicted,\n"
    "                         acquired, released) [--last=N]\n"
    "  timeline SESSION --out=FILE.svg\n"
    "                         residency timeline picture: one row per chunk,\n"
    "                         time across, colour = host or device "
    "[--window=2s]\n"
    "  config                 policy and pool settings\n";

int Fail(const absl::Status& status) {
  std::cerr << "tidepoolctl: " << status.message() << std::endl;
  return 1;
}

int Usage(absl::string_view why) {
  std::cerr << "tidepoolctl: " << why << "\n\n" << kUsage;
  return 2;
}

template <typename T>
int Print(const absl::StatusOr<T>& r, std::string (*format)(const T&)) {
  if (!r.ok()) return Fail(r.status());
  std::cout << (absl::GetFlag(FLAGS_json) ? ToJson(*r) : format(*r));
  return 0;
}

int Run(const std::vector<char*>& args) {
  if (args.size() < 2) return Usage("no command given");
  const std::string command = args[1];
  static const std::vector<std::string> kNeedSession = {"chunks", "trace",
                                                        "timeline"};
  static const std::vector<std::string> kNoArgs = {"status", "sessions",
                                                   "config"};
  const bool needs_session = std::find(kNeedSession.begin(), kNeedSession.end(),
                                       command) != kNeedSession.end();
  const bool no_args =
      std::find(kNoArgs.begin(), kNoArgs.end(), command) != kNoArgs.end();
  if (command == "help") {
    std::cout << kUsage;
    return 0;
  }
  if (!needs_session && !no_args) {
    return Usage(absl::StrCat("unknown command '", command, "'"));
  }
  uint64_t session = 0;
  if (needs_session) {
    if (args.size() != 3) {
      return Usage(absl::StrCat(command,
                                " takes one session id (see "
                                "`tidepoolctl sessions`)"));
    }
    if (!absl::SimpleAtoi(args[2], &session) || session == 0) {
      return Usage(absl::StrCat("'", args[2], "' is not a session id"));
    }
  } else if (args.size() != 2) {
    return Usage(absl::StrCat(command, " takes no arguments"));
  }
  if (command == "timeline") {
    const std::string out = absl::GetFlag(FLAGS_out);
    if (out.empty()) return Usage("timeline needs --out=FILE.svg");
    if (!absl::EndsWithIgnoreCase(out, ".svg")) {
      return Usage(
          "timeline writes SVG only (--out=FILE.svg); convert it to PNG "
          "with e.g. `rsvg-convert -o FILE.png FILE.svg`");
    }
  }

  auto client = AdminClient::Connect(absl::GetFlag(FLAGS_socket));
  if (!client.ok()) return Fail(client.status());

  if (command == "status") return Print(client->GetStatus(), &FormatStatus);
  if (command == "config") return Print(client->GetStatus(), &FormatConfig);
  if (command == "sessions") {
    return Print(client->ListSessions(), &FormatSessions);
  }
  if (command == "chunks") {
    auto r = client->ListChunks(session);
    if (!r.ok()) return Fail(r.status());
    std::cout << (absl::GetFlag(FLAGS_json) ? ToJson(*r)
                                            : FormatChunks(session, *r));
    return 0;
  }
  if (command == "trace") {
    // An auto session's recorded warm-up trace; other policies record none,
    // so their residency event log stands in.
    auto trace = client->GetTrace(session);
    if (trace.ok()) {
      std::cout << (absl::GetFlag(FLAGS_json)
                        ? ToJson(*trace)
                        : FormatRecordedTrace(session, *trace));
      return 0;
    }
    if (trace.status().code() != absl::StatusCode::kFailedPrecondition) {
      return Fail(trace.status());
    }
  }
  auto timeline = client->GetTimeline(session, absl::GetFlag(FLAGS_last));
  if (!timeline.ok()) return Fail(timeline.status());
  if (command == "trace") {
    std::cout << (absl::GetFlag(FLAGS_json) ? ToJson(*timeline)
                                            : FormatTrace(session, *timeline));
    return 0;
  }
  // timeline
  TimelineSvgOptions options;
  options.title =
      absl::StrCat("tidepool residency timeline: session ", session);
  options.window = absl::GetFlag(FLAGS_window);
  options.width = absl::GetFlag(FLAGS_width);
  auto svg = RenderTimelineSvg(*timeline, options);
  if (!svg.ok()) return Fail(svg.status());
  const std::string path = absl::GetFlag(FLAGS_out);
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file << svg->svg;
  file.close();
  if (!file) {
    return Fail(
        absl::ErrnoToStatus(errno, absl::StrCat("cannot write ", path)));
  }
  std::cout << "wrote " << path << ": " << svg->rows << " chunks, "
            << svg->events << " events over " << svg->span_ms << " ms"
            << (timeline->truncated() ? " (older events were overwritten)" : "")
            << std::endl;
  return 0;
}

}  // namespace
}  // namespace tidepool::ctl

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(tidepool::ctl::kUsage);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  return tidepool::ctl::Run(args);
}
