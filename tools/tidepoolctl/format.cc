#include "tools/tidepoolctl/format.h"

#include <algorithm>
#include <cctype>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"

namespace tidepool::ctl {
namespace {

// "POLICY_CPU" minus "POLICY_" -> "cpu".
std::string Strip(const std::string& name, absl::string_view prefix) {
  std::string out = name;
  if (absl::StartsWith(out, prefix)) out = out.substr(prefix.size());
  return absl::AsciiStrToLower(out);
}

std::string Truncate(const std::string& s, size_t max) {
  if (s.size() <= max) return s;
  return s.substr(0, max - 3) + "...";
}

}  // namespace

std::string HumanBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  double v = static_cast<double>(bytes) / 1024;
  int unit = 0;
  while (v >= 1024 && unit < 4) {
    v /= 1024;
    ++unit;
  }
  return absl::StrFormat(v < 10 ? "%.2f %s" : (v < 100 ? "%.1f %s" : "%.0f %s"),
                         v, kUnits[unit]);
}

std::string HumanDuration(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds);
  if (s < 60) return absl::StrFormat("%.0f s", seconds);
  if (s < 3600) return absl::StrFormat("%d min %02d s", s / 60, s % 60);
  if (s < 86400) {
    return absl::StrFormat("%d h %02d min", s / 3600, (s % 3600) / 60);
  }
  return absl::StrFormat("%d d %d h", s / 86400, (s % 86400) / 3600);
}

std::string PolicyName(v1::Policy policy) {
  if (policy == v1::POLICY_UNSPECIFIED) return "default";
  return Strip(v1::Policy_Name(policy), "POLICY_");
}
std::string GroupName(v1::Group group) {
  if (group == v1::GROUP_UNSPECIFIED) return "other";
  return Strip(v1::Group_Name(group), "GROUP_");
}
std::string LocationName(v1::Location location) {
  return Strip(v1::Location_Name(location), "LOCATION_");
}
std::string StateName(v1::TensorState state) {
  return Strip(v1::TensorState_Name(state), "TENSOR_STATE_");
}
std::string EventName(v1::ResidencyEventKind kind) {
  return Strip(v1::ResidencyEventKind_Name(kind), "RESIDENCY_EVENT_");
}

Table::Table(std::vector<std::string> headers, std::vector<bool> right_aligned)
    : headers_(std::move(headers)), right_(std::move(right_aligned)) {
  right_.resize(headers_.size(), false);
}

void Table::AddRow(std::vector<std::string> cells) {
  cells.resize(headers_.size());
  rows_.push_back(std::move(cells));
}

std::string Table::Render() const {
  std::vector<size_t> width(headers_.size());
  for (size_t c = 0; c < headers_.size(); ++c) width[c] = headers_[c].size();
  for (const auto& row : rows_) {
    for (size_t c = 0; c < row.size(); ++c) {
      width[c] = std::max(width[c], row[c].size());
    }
  }
  std::string out;
  auto line = [&](const std::vector<std::string>& cells) {
    std::string l;
    for (size_t c = 0; c < cells.size(); ++c) {
      const std::string pad(width[c] - cells[c].size(), ' ');
      const bool last = c + 1 == cells.size();
      if (right_[c]) {
        absl::StrAppend(&l, pad, cells[c]);
      } else {
        absl::StrAppend(&l, cells[c], last ? "" : pad);
      }
      if (!last) l += "  ";
    }
    while (!l.empty() && l.back() == ' ') l.pop_back();
    absl::StrAppend(&out, l, "\n");
  };
  line(headers_);
  for (const auto& row : rows_) line(row);
  return out;
}

std::string FormatStatus(const v1::GetStatusResponse& s) {
  std::string out;
  const auto& hp = s.host_pool();
  absl::StrAppend(&out, "tidepoold ", s.version(), ", up ",
                  HumanDuration(s.uptime_seconds()), "\n");
  absl::StrAppend(&out, "sessions:       ", s.sessions(), "\n");
  absl::StrAppend(
      &out, "default policy: ", PolicyName(s.config().default_policy()), "\n");
  absl::StrAppend(&out,
                  "chunk size:     ", HumanBytes(s.config().chunk_size_bytes()),
                  "\n");
  absl::StrAppend(&out, "host pool:      ", HumanBytes(hp.used_bytes()),
                  " used of ", HumanBytes(hp.capacity_bytes()), " (peak ",
                  HumanBytes(hp.peak_bytes()), ")\n\n");
  Table t({"DEVICE", "BACKEND", "UUID", "SESSIONS", "USED", "PEAK", "CAPACITY",
           "USE%"},
          {false, false, false, true, true, true, true, true});
  for (const auto& d : s.devices()) {
    const auto& p = d.pool();
    const double pct = p.capacity_bytes() == 0
                           ? 0
                           : 100.0 * static_cast<double>(p.used_bytes()) /
                                 static_cast<double>(p.capacity_bytes());
    t.AddRow({d.device().name(), d.device().backend(), d.device().uuid(),
              absl::StrCat(d.sessions()), HumanBytes(p.used_bytes()),
              HumanBytes(p.peak_bytes()), HumanBytes(p.capacity_bytes()),
              absl::StrFormat("%.0f%%", pct)});
  }
  absl::StrAppend(&out, t.Render());
  return out;
}

std::string FormatConfig(const v1::GetStatusResponse& s) {
  const auto& c = s.config();
  Table t({"SETTING", "VALUE"});
  t.AddRow({"default_policy", PolicyName(c.default_policy())});
  t.AddRow({"chunk_size_bytes", absl::StrCat(HumanBytes(c.chunk_size_bytes()),
                                             " (", c.chunk_size_bytes(), ")")});
  t.AddRow({"host_pool_bytes", absl::StrCat(HumanBytes(c.host_pool_bytes()),
                                            " (", c.host_pool_bytes(), ")")});
  t.AddRow({"attach_timeout_seconds",
            absl::StrFormat("%g", c.attach_timeout_seconds())});
  t.AddRow(
      {"max_tensors_per_request", absl::StrCat(c.max_tensors_per_request())});
  t.AddRow({"max_name_bytes", absl::StrCat(c.max_name_bytes())});
  t.AddRow({"max_dims", absl::StrCat(c.max_dims())});
  t.AddRow(
      {"residency_log_events", absl::StrCat(c.residency_event_capacity())});
  for (const auto& d : s.devices()) {
    const std::string key = absl::StrCat("device[", d.device().name(), "]");
    t.AddRow({key + ".backend", d.device().backend()});
    if (!d.device().uuid().empty())
      t.AddRow({key + ".uuid", d.device().uuid()});
    t.AddRow({key + ".pool_bytes",
              absl::StrCat(HumanBytes(d.pool().capacity_bytes()), " (",
                           d.pool().capacity_bytes(), ")")});
  }
  return t.Render();
}

std::string FormatSessions(const v1::ListSessionsResponse& r) {
  if (r.sessions().empty()) return "no sessions\n";
  Table t(
      {"SESSION", "PID", "CLIENT", "POLICY", "DEVICE", "ATTACHED", "AGE",
       "CHUNKS", "ON DEVICE", "HOST", "MOVED H2D", "MOVED D2H", "EVICTIONS"},
      {true, true, false, false, false, false, true, true, true, true, true,
       true, true});
  for (const auto& s : r.sessions()) {
    const auto& st = s.stats();
    t.AddRow({absl::StrCat(s.session_id()), absl::StrCat(s.pid()),
              s.client_name().empty() ? "-" : Truncate(s.client_name(), 24),
              PolicyName(s.policy()), s.device(), s.attached() ? "yes" : "no",
              HumanDuration(s.age_seconds()), absl::StrCat(st.chunks()),
              HumanBytes(st.device_bytes()), HumanBytes(st.host_bytes()),
              HumanBytes(st.bytes_to_device()), HumanBytes(st.bytes_to_host()),
              absl::StrCat(st.evictions())});
  }
  return t.Render();
}

std::string FormatChunks(uint64_t session_id, const v1::ListChunksResponse& r) {
  uint64_t total = 0, on_device = 0, dirty = 0;
  Table t({"CHUNK", "BYTES", "GROUP", "LOCATION", "DIRTY", "STATE",
           "DEVICE OFFSET", "HOST OFFSET", "TENSORS"},
          {true, true, false, false, false, false, true, true, false});
  for (const auto& d : r.chunks()) {
    const auto& c = d.chunk();
    total += c.size_bytes();
    const bool dev = c.location() == v1::LOCATION_DEVICE;
    if (dev) on_device += c.size_bytes();
    if (c.dirty()) ++dirty;
    std::string tensors = absl::StrJoin(d.tensors(), ",");
    if (d.tensors_size() > 3) {
      tensors = absl::StrCat(d.tensors(0), ",", d.tensors(1), ",... (",
                             d.tensors_size(), " tensors)");
    }
    t.AddRow({absl::StrCat(c.chunk_id()), HumanBytes(c.size_bytes()),
              GroupName(c.group()), LocationName(c.location()),
              c.dirty() ? "yes" : "no",
              StateName(d.state()) + (d.computing() ? "*" : ""),
              dev ? absl::StrCat(c.device_offset()) : "-",
              absl::StrCat(c.host_offset()), Truncate(tensors, 60)});
  }
  std::string out = absl::StrCat("session ", session_id, ": ", r.chunks_size(),
                                 " chunks, ", HumanBytes(total),
                                 "; on the device: ", HumanBytes(on_device),
                                 ", ", dirty, " dirty\n");
  if (r.chunks().empty()) return out;
  absl::StrAppend(&out, t.Render());
  return out;
}

std::string FormatTrace(uint64_t session_id, const v1::GetTimelineResponse& r) {
  std::string out = absl::StrCat(
      "# residency event log of session ", session_id, ": ", r.events_size(),
      " events", r.truncated() ? " (older ones were overwritten)" : "", "\n");
  if (r.events().empty()) return out;
  const int64_t t0 = r.events(0).time_unix_nanos();
  Table t({"SEQ", "TIME (ms)", "CHUNK", "EVENT", "LOCATION", "NOTE"},
          {true, true, true, false, false, false});
  for (const auto& e : r.events()) {
    t.AddRow({absl::StrCat(e.sequence()),
              absl::StrFormat(
                  "%.3f", static_cast<double>(e.time_unix_nanos() - t0) / 1e6),
              absl::StrCat(e.chunk_id()), EventName(e.kind()),
              LocationName(e.location()),
              e.kind() == v1::RESIDENCY_EVENT_EVICTED
                  ? (e.dirty() ? "written back" : "clean")
                  : ""});
  }
  absl::StrAppend(&out, t.Render());
  return out;
}

std::string FormatRecordedTrace(uint64_t session_id,
                                const v1::GetTraceResponse& r) {
  std::string out = absl::StrCat(
      "# recorded trace of session ", session_id, " (policy auto): state ",
      r.state(), ", ", r.steps(), " steps, ", r.replans(), " re-recordings",
      r.last_divergence().empty()
          ? ""
          : absl::StrCat(" (last: ", r.last_divergence(), ")"),
      "\n");
  if (r.ops().empty()) {
    absl::StrAppend(&out, "no trace yet: the warm-up step has not ended\n");
    return out;
  }
  absl::StrAppend(&out, "# measured capacity ",
                  HumanBytes(r.measured_capacity_bytes()), ", ", r.ops_size(),
                  " ops\n");
  Table t({"OP", "KEY", "CHUNKS", "WRITES", "NON-MODEL", "BUDGET"},
          {true, false, false, true, true, true});
  for (int i = 0; i < r.ops_size(); ++i) {
    const auto& op = r.ops(i);
    t.AddRow({absl::StrCat(i), op.key().empty() ? "-" : op.key(),
              absl::StrJoin(op.chunks(), ","), absl::StrCat(op.written_size()),
              HumanBytes(op.non_model_bytes()), HumanBytes(op.budget_bytes())});
  }
  absl::StrAppend(&out, t.Render());
  if (r.updates().empty()) return out;
  int on_device = 0;
  for (const auto& u : r.updates()) on_device += u.on_device() ? 1 : 0;
  absl::StrAppend(&out, "# ", r.updates_size(), " placed updates: ", on_device,
                  " on the device (", HumanBytes(r.kept_bytes()),
                  " of optimizer state kept there), ",
                  r.updates_size() - on_device, " in the host homes; served ",
                  r.updates_on_device(), " / ", r.updates_on_host(), "\n");
  Table u({"UPDATE", "CHUNKS", "WHERE"}, {true, false, false});
  for (int i = 0; i < r.updates_size(); ++i) {
    const auto& up = r.updates(i);
    u.AddRow({absl::StrCat(i), absl::StrJoin(up.chunks(), ","),
              up.on_device() ? "device" : "host"});
  }
  absl::StrAppend(&out, u.Render());
  return out;
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(message, &out, options)
           .ok()) {
    return "{}\n";
  }
  if (out.empty() || out.back() != '\n') out += '\n';
  return out;
}

}  // namespace tidepool::ctl
