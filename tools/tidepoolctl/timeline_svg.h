// The residency timeline of a session as an SVG picture: one row per chunk
// (chunk ids on the y axis), time on the x axis, each row coloured by where
// the chunk was (host or device), with the intervals its tensors were
// acquired (COMPUTE) drawn as dark bars, a legend and axis labels. Written
// as plain SVG text; any browser shows it.
//
//   auto timeline = client.GetTimeline(session_id, 0);
//   std::string svg = RenderTimelineSvg(*timeline, {.title = "session 3"});
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/tidepool.pb.h"

namespace tidepool::ctl {

struct TimelineSvgOptions {
  std::string title;
  // Only events in the last `window` before the newest event (a recent
  // step); zero: every event given.
  absl::Duration window = absl::ZeroDuration();
  int width = 1200;  // pixels of the whole picture
};

struct TimelineSvg {
  std::string svg;
  int rows = 0;    // chunks drawn, one row each
  int events = 0;  // events inside the window
  double span_ms = 0;
};

// INVALID_ARGUMENT when the timeline holds neither chunks nor events.
absl::StatusOr<TimelineSvg> RenderTimelineSvg(
    const v1::GetTimelineResponse& timeline, const TimelineSvgOptions& options);

}  // namespace tidepool::ctl
