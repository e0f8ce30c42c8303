// tidepoold's configuration: read from a TOML file (see
// deploy/config/tidepoold.toml for every key), then overridden by flags.
//
//   TP_ASSIGN_OR_RETURN(DaemonConfig config, LoadConfigFile(path));
//   TP_RETURN_IF_ERROR(config.Validate());
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "daemon/backend/device_backend.h"

namespace tidepool {

struct DaemonConfig {
  std::string socket = "/run/tidepool/tidepoold.sock";
  std::string fd_socket;        // default: <socket>.fd
  std::string metrics_address;  // empty: no metrics endpoint
  uint64_t host_pool_bytes = 4ull << 30;
  uint64_t chunk_size_bytes = 64ull << 20;
  std::string default_policy = "cpu";
  int attach_timeout_seconds = 10;
  std::vector<BackendOptions> devices;  // empty: one device, name "auto"

  // Limits against clients that are broken or hostile (docs/operations.md,
  // "Limits"): what one of them can make the daemon hold or do.
  int max_sessions = 1024;
  int max_sessions_per_pid = 64;
  int max_sessions_per_uid = 256;
  uint64_t max_tensors_per_session = 1ull << 19;
  uint64_t max_metadata_bytes_per_session = 64ull << 20;
  uint64_t max_trace_ops_per_session = 1ull << 16;
  uint64_t max_trace_bytes_per_session = 16ull << 20;
  uint64_t max_request_bytes = 64ull << 20;
  int max_streams_per_connection = 64;
  int max_rpc_threads = 128;
  // Threads that serve the sessions' hot-path rings; 0: one per CPU
  // (daemon/server/hot_path_poller.h).
  int hot_path_threads = 0;

  absl::Status Validate() const;
};

// "16GiB", "64MiB", "512KiB", "1G", "4096", "0": bytes. Decimal suffixes
// (KB, MB, GB) are powers of 1000.
absl::StatusOr<uint64_t> ParseSize(absl::string_view text);

// Reads a TOML file into a config; unknown keys are an error (a typo must
// not silently fall back to a default).
absl::StatusOr<DaemonConfig> LoadConfigFile(const std::string& path);
absl::StatusOr<DaemonConfig> ParseConfig(absl::string_view toml_text,
                                         absl::string_view source_name);

}  // namespace tidepool
