// The CUDA driver API entry points tidepool uses (virtual memory management),
// fetched at run time through the runtime's cudaGetDriverEntryPointByVersion
// so that binaries link only libcudart and still start on machines without
// a GPU driver, where they fall back to the sim backend.
//
//   TP_ASSIGN_OR_RETURN(const DriverApi* cu, DriverApi::Get());
//   TP_RETURN_IF_ERROR(cu->Check(cu->MemCreate(&handle, size, &prop, 0),
//                                "cuMemCreate"));
#pragma once

#include <cuda.h>
#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tidepool::cuda {

struct DriverApi {
  CUresult (*GetErrorString)(CUresult, const char**);
  CUresult (*MemGetAllocationGranularity)(size_t*, const CUmemAllocationProp*,
                                          CUmemAllocationGranularity_flags);
  CUresult (*MemCreate)(CUmemGenericAllocationHandle*, size_t,
                        const CUmemAllocationProp*, unsigned long long);
  CUresult (*MemRelease)(CUmemGenericAllocationHandle);
  CUresult (*MemExportToShareableHandle)(void*, CUmemGenericAllocationHandle,
                                         CUmemAllocationHandleType,
                                         unsigned long long);
  CUresult (*MemImportFromShareableHandle)(CUmemGenericAllocationHandle*, void*,
                                           CUmemAllocationHandleType);
  CUresult (*MemAddressReserve)(CUdeviceptr*, size_t, size_t, CUdeviceptr,
                                unsigned long long);
  CUresult (*MemAddressFree)(CUdeviceptr, size_t);
  CUresult (*MemMap)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle,
                     unsigned long long);
  CUresult (*MemUnmap)(CUdeviceptr, size_t);
  CUresult (*MemSetAccess)(CUdeviceptr, size_t, const CUmemAccessDesc*, size_t);

  // The process-wide table, loaded on first use.
  static absl::StatusOr<const DriverApi*> Get();

  // OK, or an INTERNAL error naming `what` and the driver's message.
  absl::Status Check(CUresult result, absl::string_view what) const;
};

// OK, or an INTERNAL error naming `what` and the runtime's message.
absl::Status CheckCuda(cudaError_t error, absl::string_view what);

// "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", as nvidia-smi prints it.
std::string GpuUuid(const cudaUUID_t& uuid);
// The ordinal, in this process, of the GPU with that UUID (ordinals differ
// between processes with different CUDA_VISIBLE_DEVICES; UUIDs do not).
absl::StatusOr<int> OrdinalOfUuid(absl::string_view uuid);

}  // namespace tidepool::cuda
