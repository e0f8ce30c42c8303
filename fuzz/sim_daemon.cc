#include "fuzz/sim_daemon.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "daemon/backend/sim_backend.h"

namespace tidepool::fuzz {
namespace {

constexpr uint64_t kMiB = 1 << 20;

// A set-up failure is the machine's, not the input's: say so and stop.
template <typename T>
T Check(absl::StatusOr<T> v, const char* what) {
  if (!v.ok()) {
    std::fprintf(stderr, "fuzz set-up: %s: %s\n", what,
                 v.status().ToString().c_str());
    std::abort();
  }
  return std::move(*v);
}

std::unique_ptr<MemoryManager> Build() {
  HostPool host = Check(HostPool::Create(64 * kMiB), "host pool");
  BackendOptions b;
  b.name = "sim";
  b.backend = "sim";
  b.pool_bytes = 16 * kMiB;
  std::vector<std::unique_ptr<DeviceBackend>> devices;
  devices.push_back(
      Check(SimBackend::Create(b, host.data(), host.size()), "sim device"));
  ManagerOptions options;
  options.chunk_size = 1 * kMiB;
  // No attach ever comes in process; sessions are closed by each input.
  options.attach_timeout = absl::Hours(1);
  // Bounded work per input, as a daemon bounds it per request.
  options.max_tensors_per_request = 4096;
  options.residency_event_capacity = 1024;
  return std::make_unique<MemoryManager>(options, std::move(host),
                                         std::move(devices));
}

}  // namespace

MemoryManager& SimManager() {
  static MemoryManager* manager = Build().release();
  return *manager;
}

std::vector<uint8_t> Bytes::Take(size_t n) {
  const size_t k = empty() ? 0 : std::min(n, size_ - pos_);
  std::vector<uint8_t> out(data_ + pos_, data_ + pos_ + k);
  pos_ += k;
  return out;
}

}  // namespace tidepool::fuzz
