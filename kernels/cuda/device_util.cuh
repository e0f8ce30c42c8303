// Internal device helpers shared by the .cu files: dtype conversions and
// the launch geometry for the memory-bound kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace tidepool::kernels::internal {

__device__ __forceinline__ float ToF32(float x) { return x; }
__device__ __forceinline__ float ToF32(__half x) { return __half2float(x); }
__device__ __forceinline__ float ToF32(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T FromF32(float x);
template <>
__device__ __forceinline__ float FromF32<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half FromF32<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromF32<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Blocks to launch for a grid-stride kernel: enough to fill every SM at the
// kernel's occupancy, and no more (extra blocks only re-read descriptors).
template <typename Kernel>
cudaError_t GridFor(Kernel kernel, int threads, int* blocks) {
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return e;
  int sms = 0;
  e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e != cudaSuccess) return e;
  int per_sm = 0;
  e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads,
                                                    0);
  if (e != cudaSuccess) return e;
  *blocks = sms * (per_sm > 0 ? per_sm : 1);
  return cudaSuccess;
}

// Tiles of a chunk list are numbered consecutively across chunks and dealt
// round-robin to blocks; this gives block `b` its first tile in a chunk
// whose tiles start at global number `base`.
__device__ __forceinline__ int64_t FirstTile(int64_t base) {
  const int64_t grid = gridDim.x;
  return (static_cast<int64_t>(blockIdx.x) - base % grid + grid) % grid;
}

}  // namespace tidepool::kernels::internal
