// libFuzzer target: tidepoold's configuration (daemon/config/config.h), the
// TOML file an operator writes and the size strings its keys and the
// command-line flags (--host_pool, --chunk_size, --sim_capacity,
// --device_pool) take.
//
// Input: TOML text, then optionally a NUL and flag values, one a line.
// The file is parsed and validated; each flag value goes through
// ParseSize as the daemon's flag handling passes it.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "daemon/config/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tidepool;
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  const absl::string_view toml = input.substr(0, nul);
  auto config = ParseConfig(toml, "fuzz.toml");
  if (config.ok()) (void)config->Validate();
  if (nul != absl::string_view::npos) {
    for (absl::string_view value :
         absl::StrSplit(input.substr(nul + 1), '\n')) {
      (void)ParseSize(value);
    }
  }
  return 0;
}
