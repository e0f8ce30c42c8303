// Human-readable text for tidepoolctl: aligned tables of the admin RPCs'
// answers, byte sizes in binary units, and JSON for --json.
//
//   std::cout << FormatSessions(*client.ListSessions());
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "google/protobuf/message.h"
#include "proto/tidepool.pb.h"

namespace tidepool::ctl {

// "0 B", "512 B", "4.0 KiB", "1.50 GiB".
std::string HumanBytes(uint64_t bytes);
// "45 s", "3 min 12 s", "2 h 05 min", "3 d 4 h".
std::string HumanDuration(double seconds);

// Lower-case names without the enum prefix: "cpu", "param", "device",
// "hold_after_bwd", "evicted".
std::string PolicyName(v1::Policy policy);
std::string GroupName(v1::Group group);
std::string LocationName(v1::Location location);
std::string StateName(v1::TensorState state);
std::string EventName(v1::ResidencyEventKind kind);

// Columns padded to their widest cell; cells of right-aligned columns are
// padded on the left.
class Table {
 public:
  explicit Table(std::vector<std::string> headers,
                 std::vector<bool> right_aligned = {});
  void AddRow(std::vector<std::string> cells);
  std::string Render() const;
  size_t rows() const { return rows_.size(); }

 private:
  std::vector<std::string> headers_;
  std::vector<bool> right_;
  std::vector<std::vector<std::string>> rows_;
};

std::string FormatStatus(const v1::GetStatusResponse& status);
std::string FormatConfig(const v1::GetStatusResponse& status);
std::string FormatSessions(const v1::ListSessionsResponse& sessions);
std::string FormatChunks(uint64_t session_id,
                         const v1::ListChunksResponse& chunks);
// The residency event log of a session, one line per event, times relative
// to the first event shown.
std::string FormatTrace(uint64_t session_id,
                        const v1::GetTimelineResponse& timeline);
// An auto session's recorded warm-up trace: one line per op, with the
// chunks it touched and the plan's device budget there.
std::string FormatRecordedTrace(uint64_t session_id,
                                const v1::GetTraceResponse& trace);

// The message as JSON (field names as in the .proto), ending in a newline.
std::string ToJson(const google::protobuf::Message& message);

}  // namespace tidepool::ctl
