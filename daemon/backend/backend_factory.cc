#include "absl/strings/str_cat.h"
#include "daemon/backend/device_backend.h"
#include "daemon/backend/sim_backend.h"
#ifdef TIDEPOOL_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "daemon/backend/cuda_backend.h"
#endif

namespace tidepool {

bool CudaDeviceAvailable() {
#ifdef TIDEPOOL_HAVE_CUDA
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
#else
  return false;
#endif
}

absl::StatusOr<std::unique_ptr<DeviceBackend>> CreateDeviceBackend(
    const BackendOptions& options, uint8_t* host_pool, uint64_t host_bytes) {
  std::string backend = options.backend;
  if (backend == "auto") {
    if (options.name.rfind("sim", 0) == 0) {
      backend = "sim";
    } else if (CudaDeviceAvailable()) {
      backend = "cuda";
    } else if (options.name == "auto") {
      backend = "sim";  // no GPU here: the sim device stands in
    } else {
      return absl::NotFoundError(absl::StrCat(
          "device '", options.name,
          "' not found: no CUDA device is available on this machine"));
    }
  }
  if (backend == "sim") {
    BackendOptions sim = options;
    if (sim.pool_bytes == 0) {
      return absl::InvalidArgumentError(
          "the sim device needs a capacity: set pool_bytes "
          "(--sim_capacity on the command line)");
    }
    auto b = SimBackend::Create(sim, host_pool, host_bytes);
    if (!b.ok()) return b.status();
    return std::unique_ptr<DeviceBackend>(std::move(*b));
  }
  if (backend == "cuda") {
#ifdef TIDEPOOL_HAVE_CUDA
    auto b = CudaBackend::Create(options, host_pool, host_bytes);
    if (!b.ok()) return b.status();
    return std::unique_ptr<DeviceBackend>(std::move(*b));
#else
    return absl::UnimplementedError(
        "this tidepoold was built without CUDA; use backend = \"sim\"");
#endif
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown backend '", backend, "' (auto, sim or cuda)"));
}

}  // namespace tidepool
