#include "daemon/config/config.h"

#include <toml++/toml.h>

#include <cctype>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace tidepool {
namespace {

absl::StatusOr<uint64_t> SizeValue(const toml::node& node,
                                   absl::string_view key) {
  if (auto v = node.is_integer() ? node.value<int64_t>() : std::nullopt) {
    if (*v < 0) {
      return absl::InvalidArgumentError(absl::StrCat(key, " must be >= 0"));
    }
    return static_cast<uint64_t>(*v);
  }
  if (auto s = node.is_string() ? node.value<std::string>() : std::nullopt) {
    auto parsed = ParseSize(*s);
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(key, ": ", parsed.status().message()));
    }
    return *parsed;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(key, " must be a size such as \"16GiB\""));
}

absl::StatusOr<std::string> StringValue(const toml::node& node,
                                        absl::string_view key) {
  if (node.is_string()) return *node.value<std::string>();
  return absl::InvalidArgumentError(absl::StrCat(key, " must be a string"));
}

absl::StatusOr<double> NumberValue(const toml::node& node,
                                   absl::string_view key) {
  if (node.is_number()) return *node.value<double>();
  return absl::InvalidArgumentError(absl::StrCat(key, " must be a number"));
}

// An integer setting in [lo, hi]; sizes (such as "64MiB") are accepted
// where `size` is set.
absl::StatusOr<uint64_t> BoundedValue(const toml::node& node,
                                      absl::string_view key, uint64_t lo,
                                      uint64_t hi, bool size) {
  uint64_t v = 0;
  if (size) {
    TP_ASSIGN_OR_RETURN(v, SizeValue(node, key));
  } else {
    auto i = node.is_integer() ? node.value<int64_t>() : std::nullopt;
    if (!i || *i < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(key, " must be an integer in ", lo, "..", hi));
    }
    v = static_cast<uint64_t>(*i);
  }
  if (v < lo || v > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat(key, " must be in ", lo, "..", hi, ", not ", v));
  }
  return v;
}

// The limit settings (false: `key` is not one of them).
absl::StatusOr<bool> ParseLimit(const std::string& key, const toml::node& node,
                                DaemonConfig* c) {
  constexpr uint64_t kMiB = 1ull << 20;
  auto set_int = [&](int* out, uint64_t lo, uint64_t hi) -> absl::Status {
    TP_ASSIGN_OR_RETURN(uint64_t v, BoundedValue(node, key, lo, hi, false));
    *out = static_cast<int>(v);
    return absl::OkStatus();
  };
  auto set_u64 = [&](uint64_t* out, uint64_t lo, uint64_t hi,
                     bool size) -> absl::Status {
    TP_ASSIGN_OR_RETURN(*out, BoundedValue(node, key, lo, hi, size));
    return absl::OkStatus();
  };
  if (key == "max_sessions") {
    TP_RETURN_IF_ERROR(set_int(&c->max_sessions, 1, 1 << 16));
  } else if (key == "max_sessions_per_pid") {
    TP_RETURN_IF_ERROR(set_int(&c->max_sessions_per_pid, 1, 1 << 16));
  } else if (key == "max_sessions_per_uid") {
    TP_RETURN_IF_ERROR(set_int(&c->max_sessions_per_uid, 1, 1 << 16));
  } else if (key == "max_tensors_per_session") {
    TP_RETURN_IF_ERROR(
        set_u64(&c->max_tensors_per_session, 1, 1ull << 26, false));
  } else if (key == "max_metadata_bytes_per_session") {
    TP_RETURN_IF_ERROR(set_u64(&c->max_metadata_bytes_per_session, 64 << 10,
                               1ull << 40, true));
  } else if (key == "max_trace_ops_per_session") {
    TP_RETURN_IF_ERROR(
        set_u64(&c->max_trace_ops_per_session, 16, 1ull << 24, false));
  } else if (key == "max_trace_bytes_per_session") {
    TP_RETURN_IF_ERROR(
        set_u64(&c->max_trace_bytes_per_session, 64 << 10, 1ull << 40, true));
  } else if (key == "max_request_bytes") {
    // gRPC takes an int; a request below 1 MiB would refuse models of a
    // few thousand tensors.
    TP_RETURN_IF_ERROR(
        set_u64(&c->max_request_bytes, kMiB, (2047ull << 20), true));
  } else if (key == "max_streams_per_connection") {
    TP_RETURN_IF_ERROR(set_int(&c->max_streams_per_connection, 1, 1 << 20));
  } else if (key == "max_rpc_threads") {
    // gRPC's synchronous server needs a few threads to poll at all.
    TP_RETURN_IF_ERROR(set_int(&c->max_rpc_threads, 4, 1 << 16));
  } else if (key == "hot_path_threads") {
    TP_RETURN_IF_ERROR(set_int(&c->hot_path_threads, 0, 1024));
  } else {
    return false;
  }
  return true;
}

absl::Status ParseDevice(const toml::table& table, size_t index,
                         BackendOptions* out) {
  for (const auto& [k, node] : table) {
    const std::string key(k.str());
    const std::string where = absl::StrCat("device[", index, "].", key);
    if (key == "name") {
      TP_ASSIGN_OR_RETURN(out->name, StringValue(node, where));
    } else if (key == "backend") {
      TP_ASSIGN_OR_RETURN(out->backend, StringValue(node, where));
    } else if (key == "pool_bytes") {
      TP_ASSIGN_OR_RETURN(out->pool_bytes, SizeValue(node, where));
    } else if (key == "reserve_bytes") {
      TP_ASSIGN_OR_RETURN(out->reserve_bytes, SizeValue(node, where));
    } else if (key == "sim_link_gbps") {
      TP_ASSIGN_OR_RETURN(out->sim_link_gbps, NumberValue(node, where));
    } else if (key == "sim_copy_workers") {
      TP_ASSIGN_OR_RETURN(const uint64_t workers,
                          BoundedValue(node, where, 0, 16, false));
      out->sim_copy_workers = static_cast<int>(workers);
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown key ", where));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<uint64_t> ParseSize(absl::string_view text) {
  std::string s(absl::StripAsciiWhitespace(text));
  size_t i = 0;
  while (i < s.size() &&
         (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) {
    ++i;
  }
  double number = 0;
  if (i == 0 || !absl::SimpleAtod(s.substr(0, i), &number)) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' is not a size (e.g. 16GiB, 64MiB, 4096)"));
  }
  std::string unit = absl::AsciiStrToLower(
      absl::StripAsciiWhitespace(absl::string_view(s).substr(i)));
  double scale;
  if (unit.empty() || unit == "b") {
    scale = 1;
  } else if (unit == "k" || unit == "kib") {
    scale = 1ull << 10;
  } else if (unit == "m" || unit == "mib") {
    scale = 1ull << 20;
  } else if (unit == "g" || unit == "gib") {
    scale = 1ull << 30;
  } else if (unit == "t" || unit == "tib") {
    scale = 1ull << 40;
  } else if (unit == "kb") {
    scale = 1e3;
  } else if (unit == "mb") {
    scale = 1e6;
  } else if (unit == "gb") {
    scale = 1e9;
  } else if (unit == "tb") {
    scale = 1e12;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown size unit '", unit, "' in '", text, "'"));
  }
  const double bytes = number * scale;
  if (bytes >= 1.8e19) {
    return absl::InvalidArgumentError(
        absl::StrCat("size '", text, "' is too large"));
  }
  return static_cast<uint64_t>(bytes);
}

absl::StatusOr<DaemonConfig> ParseConfig(absl::string_view toml_text,
                                         absl::string_view source_name) {
  toml::table root;
  try {
    root =
        toml::parse(std::string_view(toml_text.data(), toml_text.size()),
                    std::string_view(source_name.data(), source_name.size()));
  } catch (const toml::parse_error& e) {
    std::ostringstream where;
    where << e.source().begin;
    return absl::InvalidArgumentError(absl::StrCat(
        source_name, ": ", std::string(e.description()), " at ", where.str()));
  }
  DaemonConfig c;
  for (const auto& [k, node] : root) {
    const std::string key(k.str());
    if (key == "socket") {
      TP_ASSIGN_OR_RETURN(c.socket, StringValue(node, key));
    } else if (key == "fd_socket") {
      TP_ASSIGN_OR_RETURN(c.fd_socket, StringValue(node, key));
    } else if (key == "metrics_address") {
      TP_ASSIGN_OR_RETURN(c.metrics_address, StringValue(node, key));
    } else if (key == "host_pool_bytes") {
      TP_ASSIGN_OR_RETURN(c.host_pool_bytes, SizeValue(node, key));
    } else if (key == "chunk_size_bytes") {
      TP_ASSIGN_OR_RETURN(c.chunk_size_bytes, SizeValue(node, key));
    } else if (key == "default_policy") {
      TP_ASSIGN_OR_RETURN(c.default_policy, StringValue(node, key));
    } else if (key == "attach_timeout_seconds") {
      auto v = node.is_integer() ? node.value<int64_t>() : std::nullopt;
      if (!v || *v <= 0 || *v > 3600) {
        return absl::InvalidArgumentError(
            "attach_timeout_seconds must be an integer in 1..3600");
      }
      c.attach_timeout_seconds = static_cast<int>(*v);
    } else if (key == "device") {
      const toml::array* arr = node.as_array();
      if (arr == nullptr) {
        return absl::InvalidArgumentError(
            "device must be an array of tables ([[device]])");
      }
      for (size_t i = 0; i < arr->size(); ++i) {
        const toml::table* t = (*arr)[i].as_table();
        if (t == nullptr) {
          return absl::InvalidArgumentError(
              absl::StrCat("device[", i, "] must be a table"));
        }
        BackendOptions d;
        TP_RETURN_IF_ERROR(ParseDevice(*t, i, &d));
        c.devices.push_back(d);
      }
    } else {
      TP_ASSIGN_OR_RETURN(const bool limit, ParseLimit(key, node, &c));
      if (!limit) {
        return absl::InvalidArgumentError(
            absl::StrCat(source_name, ": unknown key '", key, "'"));
      }
    }
  }
  return c;
}

absl::StatusOr<DaemonConfig> LoadConfigFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError("cannot read config file " + path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return ParseConfig(buffer.str(), path);
}

absl::Status DaemonConfig::Validate() const {
  if (socket.empty()) return absl::InvalidArgumentError("socket is empty");
  if (host_pool_bytes < (1ull << 20)) {
    return absl::InvalidArgumentError("host_pool_bytes must be >= 1MiB");
  }
  if (chunk_size_bytes < 4096 || chunk_size_bytes > host_pool_bytes) {
    return absl::InvalidArgumentError(
        "chunk_size_bytes must be >= 4KiB and <= host_pool_bytes");
  }
  std::set<std::string> names;
  for (const auto& d : devices) {
    if (d.backend != "auto" && d.backend != "sim" && d.backend != "cuda") {
      return absl::InvalidArgumentError(absl::StrCat(
          "device backend '", d.backend, "' is not auto, sim or cuda"));
    }
    if (d.sim_link_gbps < 0) {
      return absl::InvalidArgumentError("sim_link_gbps must be >= 0");
    }
    if (d.sim_copy_workers < 0 || d.sim_copy_workers > 16) {
      return absl::InvalidArgumentError("sim_copy_workers must be in 0..16");
    }
  }
  if (hot_path_threads < 0 || hot_path_threads > 1024) {
    return absl::InvalidArgumentError(absl::StrCat(
        "hot_path_threads must be in 0..1024, not ", hot_path_threads));
  }
  if (default_policy != "cpu" && default_policy != "cuda" &&
      default_policy != "auto" && default_policy != "static") {
    return absl::InvalidArgumentError(
        absl::StrCat("default_policy '", default_policy,
                     "' is not one of cuda, cpu, static, auto"));
  }
  return absl::OkStatus();
}

}  // namespace tidepool
