#include "common/cuda/driver_api.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tidepool::cuda {
namespace {

template <typename Fn>
absl::Status Load(const char* symbol, Fn* fn) {
  void* p = nullptr;
  cudaDriverEntryPointQueryResult found{};
  cudaError_t err = cudaGetDriverEntryPointByVersion(symbol, &p, 12000,
                                                     cudaEnableDefault, &found);
  if (err != cudaSuccess || found != cudaDriverEntryPointSuccess ||
      p == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("CUDA driver entry point ", symbol,
                     " unavailable: ", cudaGetErrorString(err)));
  }
  *fn = reinterpret_cast<Fn>(p);
  return absl::OkStatus();
}

absl::StatusOr<DriverApi> LoadAll() {
  DriverApi api{};
  absl::Status s;
  auto load = [&](const char* name, auto* fn) {
    if (s.ok()) s = Load(name, fn);
  };
  load("cuGetErrorString", &api.GetErrorString);
  load("cuMemGetAllocationGranularity", &api.MemGetAllocationGranularity);
  load("cuMemCreate", &api.MemCreate);
  load("cuMemRelease", &api.MemRelease);
  load("cuMemExportToShareableHandle", &api.MemExportToShareableHandle);
  load("cuMemImportFromShareableHandle", &api.MemImportFromShareableHandle);
  load("cuMemAddressReserve", &api.MemAddressReserve);
  load("cuMemAddressFree", &api.MemAddressFree);
  load("cuMemMap", &api.MemMap);
  load("cuMemUnmap", &api.MemUnmap);
  load("cuMemSetAccess", &api.MemSetAccess);
  if (!s.ok()) return s;
  return api;
}

}  // namespace

absl::StatusOr<const DriverApi*> DriverApi::Get() {
  static const absl::StatusOr<DriverApi>* api =
      new absl::StatusOr<DriverApi>(LoadAll());
  if (!api->ok()) return api->status();
  return &**api;
}

absl::Status DriverApi::Check(CUresult result, absl::string_view what) const {
  if (result == CUDA_SUCCESS) return absl::OkStatus();
  const char* msg = "unknown error";
  if (GetErrorString != nullptr) GetErrorString(result, &msg);
  return absl::InternalError(absl::StrCat(what, ": ", msg));
}

absl::Status CheckCuda(cudaError_t error, absl::string_view what) {
  if (error == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat(what, ": ", cudaGetErrorString(error)));
}

std::string GpuUuid(const cudaUUID_t& uuid) {
  const auto* b = reinterpret_cast<const unsigned char*>(uuid.bytes);
  return absl::StrFormat(
      "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%"
      "02x",
      b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11],
      b[12], b[13], b[14], b[15]);
}

absl::StatusOr<int> OrdinalOfUuid(absl::string_view uuid) {
  int count = 0;
  absl::Status s = CheckCuda(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
  if (!s.ok()) return s;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    s = CheckCuda(cudaGetDeviceProperties(&prop, i), "cudaGetDeviceProperties");
    if (!s.ok()) return s;
    if (GpuUuid(prop.uuid) == uuid) return i;
  }
  return absl::NotFoundError(
      absl::StrCat("GPU ", uuid, " is not visible to this process"));
}

}  // namespace tidepool::cuda
