#include "tools/tidepoolctl/timeline_svg.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tools/tidepoolctl/format.h"

namespace tidepool::ctl {
namespace {

constexpr char kHostColour[] = "#9ecae1";
constexpr char kDeviceColour[] = "#f16913";
constexpr char kComputeColour[] = "#252525";
constexpr char kAbsentColour[] = "#f4f4f4";

std::string Escape(absl::string_view text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// A 1, 2 or 5 times a power of ten, so that `span` has at most ~10 ticks.
double TickStep(double span) {
  const double raw = span / 10;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (m * mag >= raw) return m * mag;
  }
  return 10 * mag;
}

struct Segment {
  double from_ms;
  double to_ms;
  bool on_device;
};

struct Row {
  uint64_t chunk_id = 0;
  std::string label;  // tooltip
  // Where the chunk is at the current point of the replay; empty before it
  // was created.
  std::optional<bool> on_device;
  bool initialised = false;
  double segment_start = 0;
  bool computing = false;
  double compute_start = 0;
  std::vector<Segment> segments;
  std::vector<std::pair<double, double>> compute;
};

}  // namespace

absl::StatusOr<TimelineSvg> RenderTimelineSvg(
    const v1::GetTimelineResponse& timeline,
    const TimelineSvgOptions& options) {
  const auto& events = timeline.events();
  std::map<uint64_t, Row> rows;
  for (const auto& d : timeline.chunks()) {
    Row& r = rows[d.chunk().chunk_id()];
    r.chunk_id = d.chunk().chunk_id();
    r.label = absl::StrCat("chunk ", r.chunk_id, ": ",
                           HumanBytes(d.chunk().size_bytes()), " ",
                           GroupName(d.chunk().group()), ", now ",
                           LocationName(d.chunk().location()));
    if (d.tensors_size() > 0) {
      absl::StrAppend(&r.label, ", first tensor ", d.tensors(0));
    }
  }
  if (rows.empty() && events.empty()) {
    return absl::InvalidArgumentError(
        "nothing to draw: the session has no chunks and no recorded events");
  }

  // The time window, in ms from its start.
  int64_t end_ns = 0, start_ns = 0;
  if (!events.empty()) {
    end_ns = events.rbegin()->time_unix_nanos();
    start_ns = events.begin()->time_unix_nanos();
    if (options.window > absl::ZeroDuration()) {
      start_ns =
          std::max(start_ns, end_ns - absl::ToInt64Nanoseconds(options.window));
    }
  }
  double span_ms = static_cast<double>(end_ns - start_ns) / 1e6;
  if (span_ms <= 0) span_ms = 1;
  const double draw_end = span_ms * 1.02;  // show the final state too
  auto to_ms = [&](int64_t ns) {
    return std::max(0.0, static_cast<double>(ns - start_ns) / 1e6);
  };

  // First events decide where a chunk was before the log starts.
  for (const auto& e : events) {
    Row& r = rows[e.chunk_id()];
    if (r.label.empty()) {
      r.chunk_id = e.chunk_id();
      r.label = absl::StrCat("chunk ", e.chunk_id(), " (ended)");
    }
    if (r.initialised) continue;
    r.initialised = true;
    const bool dev = e.location() == v1::LOCATION_DEVICE;
    switch (e.kind()) {
      case v1::RESIDENCY_EVENT_CREATED:
        r.on_device.reset();
        break;
      case v1::RESIDENCY_EVENT_LOADED:
        r.on_device = false;
        break;
      case v1::RESIDENCY_EVENT_EVICTED:
        r.on_device = true;
        break;
      default:
        r.on_device = dev;
    }
  }
  for (const auto& d : timeline.chunks()) {
    Row& r = rows[d.chunk().chunk_id()];
    if (!r.initialised) {
      r.initialised = true;
      r.on_device = d.chunk().location() == v1::LOCATION_DEVICE;
    }
  }

  // Replay.
  int in_window = 0;
  for (const auto& e : events) {
    Row& r = rows[e.chunk_id()];
    const double t = to_ms(e.time_unix_nanos());
    if (e.time_unix_nanos() >= start_ns) ++in_window;
    const bool dev = e.location() == v1::LOCATION_DEVICE;
    if (!r.on_device.has_value() || *r.on_device != dev) {
      if (r.on_device.has_value() && t > r.segment_start) {
        r.segments.push_back({r.segment_start, t, *r.on_device});
      }
      r.on_device = dev;
      r.segment_start = t;
    }
    if (e.kind() == v1::RESIDENCY_EVENT_ACQUIRED && !r.computing) {
      r.computing = true;
      r.compute_start = t;
    } else if (e.kind() == v1::RESIDENCY_EVENT_RELEASED && r.computing) {
      r.computing = false;
      if (t > r.compute_start) r.compute.push_back({r.compute_start, t});
    }
  }
  for (auto& [id, r] : rows) {
    if (r.on_device.has_value()) {
      r.segments.push_back({r.segment_start, draw_end, *r.on_device});
    }
    if (r.computing) r.compute.push_back({r.compute_start, draw_end});
  }

  // Layout.
  const int n = static_cast<int>(rows.size());
  const double row_h = std::clamp(640.0 / std::max(n, 1), 2.0, 16.0);
  const int left = 96, right = 24, top = 64, bottom = 56;
  const int width = std::max(options.width, 400);
  const double plot_w = width - left - right;
  const double plot_h = row_h * n;
  const int height = static_cast<int>(std::ceil(top + plot_h + bottom));
  auto x_of = [&](double ms) { return left + ms / draw_end * plot_w; };
  const int label_every =
      row_h >= 10 ? 1 : static_cast<int>(std::ceil(10.0 / row_h));

  std::string svg;
  absl::StrAppendFormat(
      &svg,
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
      "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"11\">\n"
      "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
      width, height, width, height);
  absl::StrAppendFormat(
      &svg,
      "<text x=\"%d\" y=\"18\" font-size=\"14\" font-weight=\"bold\">%s</text>"
      "\n",
      left,
      Escape(options.title.empty() ? "tidepool residency timeline"
                                   : options.title));
  // Legend.
  {
    int x = left;
    const int y = 30;
    auto item = [&](const char* colour, absl::string_view text, bool thin) {
      if (thin) {
        absl::StrAppendFormat(&svg,
                              "<rect x=\"%d\" y=\"%d\" width=\"14\" "
                              "height=\"4\" fill=\"%s\"/>\n",
                              x, y + 4, colour);
      } else {
        absl::StrAppendFormat(&svg,
                              "<rect x=\"%d\" y=\"%d\" width=\"14\" "
                              "height=\"12\" fill=\"%s\"/>\n",
                              x, y, colour);
      }
      absl::StrAppendFormat(&svg, "<text x=\"%d\" y=\"%d\">%s</text>\n", x + 18,
                            y + 10, Escape(text));
      x += 24 + static_cast<int>(text.size()) * 6 + 16;
    };
    svg += "<g class=\"legend\">\n";
    item(kHostColour, "host (pinned pool)", false);
    item(kDeviceColour, "device (GPU pool)", false);
    item(kComputeColour, "acquired (COMPUTE)", true);
    item(kAbsentColour, "not yet created", false);
    svg += "</g>\n";
  }
  // Plot background and rows.
  absl::StrAppendFormat(
      &svg,
      "<rect x=\"%d\" y=\"%d\" width=\"%.1f\" height=\"%.1f\" "
      "fill=\"%s\"/>\n",
      left, top, plot_w, plot_h, kAbsentColour);
  int i = 0;
  for (const auto& [id, r] : rows) {
    const double y = top + i * row_h;
    absl::StrAppendFormat(&svg, "<g class=\"chunk\" data-chunk=\"%d\">",
                          r.chunk_id);
    absl::StrAppendFormat(&svg, "<title>%s</title>", Escape(r.label));
    for (const Segment& s : r.segments) {
      const double x0 = x_of(s.from_ms), x1 = x_of(s.to_ms);
      absl::StrAppendFormat(&svg,
                            "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" "
                            "height=\"%.2f\" fill=\"%s\"/>",
                            x0, y, std::max(x1 - x0, 0.5), row_h,
                            s.on_device ? kDeviceColour : kHostColour);
    }
    for (const auto& [from, to] : r.compute) {
      const double x0 = x_of(from), x1 = x_of(to);
      absl::StrAppendFormat(&svg,
                            "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" "
                            "height=\"%.2f\" fill=\"%s\"/>",
                            x0, y + row_h / 3, std::max(x1 - x0, 0.5),
                            std::max(row_h / 3, 1.0), kComputeColour);
    }
    svg += "</g>\n";
    if (i % label_every == 0) {
      absl::StrAppendFormat(&svg,
                            "<text x=\"%d\" y=\"%.2f\" text-anchor=\"end\" "
                            "font-size=\"%d\">%d</text>\n",
                            left - 6, y + row_h / 2 + 4, row_h >= 10 ? 10 : 9,
                            r.chunk_id);
    }
    ++i;
  }
  // Axes.
  const double axis_y = top + plot_h;
  absl::StrAppendFormat(
      &svg,
      "<line x1=\"%d\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" stroke=\"black\"/>\n"
      "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%.2f\" stroke=\"black\"/>\n",
      left, axis_y, left + plot_w, axis_y, left, top, left, axis_y);
  const double step = TickStep(span_ms);
  for (double t = 0; t <= draw_end + 1e-9; t += step) {
    const double x = x_of(t);
    absl::StrAppendFormat(
        &svg,
        "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" "
        "stroke=\"black\"/>\n<text x=\"%.2f\" y=\"%.2f\" "
        "text-anchor=\"middle\">%s</text>\n",
        x, axis_y, x, axis_y + 5, x, axis_y + 18,
        step >= 1 ? absl::StrFormat("%.0f", t) : absl::StrFormat("%.3g", t));
  }
  absl::StrAppendFormat(
      &svg,
      "<text class=\"x-label\" x=\"%.2f\" y=\"%.2f\" text-anchor=\"middle\">"
      "time since the first event shown (ms)</text>\n",
      left + plot_w / 2, axis_y + 40);
  absl::StrAppendFormat(
      &svg,
      "<text class=\"y-label\" x=\"16\" y=\"%.2f\" text-anchor=\"middle\" "
      "transform=\"rotate(-90 16 %.2f)\">chunk id (%d chunks)</text>\n",
      top + plot_h / 2, top + plot_h / 2, n);
  svg += "</svg>\n";
  return TimelineSvg{std::move(svg), n, in_window, span_ms};
}

}  // namespace tidepool::ctl
