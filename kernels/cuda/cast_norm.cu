// Multi-buffer sum of squares with a non-finite flag, and fp32 casts.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/descriptors.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch.h"

namespace tidepool::kernels::internal {
namespace {

constexpr int kThreads = 256;
constexpr int kIlp = 4;
constexpr int kTile = kThreads * kIlp;

// Same tile dealing as the AdamW kernel. Within a tile, thread t reads
// elements t, t + 256, ...: coalesced without alignment requirements.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    SumSquaresKernel(const NormBuffer* __restrict__ buffers, int num_buffers,
                     float* sum, int* nonfinite) {
  // Per-thread and per-block sums in double: a float running sum over
  // millions of elements would lose digits before the final atomic.
  double acc = 0.0;
  bool bad = false;
  int64_t base = 0;
  for (int bi = 0; bi < num_buffers; ++bi) {
    const NormBuffer b = buffers[bi];
    const T* __restrict__ data = static_cast<const T*>(b.data);
    const int64_t tiles = (b.n + kTile - 1) / kTile;
    for (int64_t t = FirstTile(base); t < tiles; t += gridDim.x) {
      const int64_t start = t * kTile + threadIdx.x;
#pragma unroll
      for (int k = 0; k < kIlp; ++k) {
        const int64_t i = start + k * kThreads;
        if (i < b.n) {
          const float x = ToF32(data[i]);
          bad |= !isfinite(x);
          acc = fma(static_cast<double>(x), static_cast<double>(x), acc);
        }
      }
    }
    base += tiles;
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    acc += __shfl_down_sync(0xffffffffu, acc, offset);
  }
  __shared__ double warp_sums[kThreads / 32];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = acc;
  const bool block_bad = __syncthreads_or(bad);
  if (warp == 0) {
    acc = lane < kThreads / 32 ? warp_sums[lane] : 0.0;
    for (int offset = 16; offset > 0; offset /= 2) {
      acc += __shfl_down_sync(0xffffffffu, acc, offset);
    }
    if (lane == 0) {
      if (acc != 0.0) atomicAdd(sum, static_cast<float>(acc));
      if (block_bad && nonfinite != nullptr) *nonfinite = 1;
    }
  }
}

template <typename S, typename D>
__global__ void CastKernel(const S* __restrict__ src, D* __restrict__ dst,
                           int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < n; i += stride) {
    dst[i] = FromF32<D>(ToF32(src[i]));
  }
}

template <typename T>
cudaError_t LaunchSum(const NormBuffer* buffers, int num_buffers, float* sum,
                      int* nonfinite, cudaStream_t stream) {
  int blocks = 0;
  cudaError_t e = GridFor(SumSquaresKernel<T>, kThreads, &blocks);
  if (e != cudaSuccess) return e;
  SumSquaresKernel<T>
      <<<blocks, kThreads, 0, stream>>>(buffers, num_buffers, sum, nonfinite);
  return cudaGetLastError();
}

template <typename S, typename D>
cudaError_t LaunchCast(const S* src, D* dst, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  int blocks = 0;
  cudaError_t e = GridFor(CastKernel<S, D>, kThreads, &blocks);
  if (e != cudaSuccess) return e;
  const int64_t needed = (n + kThreads - 1) / kThreads;
  if (needed < blocks) blocks = static_cast<int>(needed);
  CastKernel<S, D><<<blocks, kThreads, 0, stream>>>(src, dst, n);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchSumSquares(const NormBuffer* buffers, int num_buffers,
                             int dtype, float* sum, int* nonfinite,
                             cudaStream_t stream) {
  switch (dtype) {
    case 0:
      return LaunchSum<float>(buffers, num_buffers, sum, nonfinite, stream);
    case 1:
      return LaunchSum<__half>(buffers, num_buffers, sum, nonfinite, stream);
    default:
      return LaunchSum<__nv_bfloat16>(buffers, num_buffers, sum, nonfinite,
                                      stream);
  }
}

cudaError_t LaunchCastToF32(const void* src, int src_dtype, float* dst,
                            int64_t n, cudaStream_t stream) {
  switch (src_dtype) {
    case 0:
      return LaunchCast(static_cast<const float*>(src), dst, n, stream);
    case 1:
      return LaunchCast(static_cast<const __half*>(src), dst, n, stream);
    default:
      return LaunchCast(static_cast<const __nv_bfloat16*>(src), dst, n, stream);
  }
}

cudaError_t LaunchCastFromF32(const float* src, void* dst, int dst_dtype,
                              int64_t n, cudaStream_t stream) {
  switch (dst_dtype) {
    case 0:
      return LaunchCast(src, static_cast<float*>(dst), n, stream);
    case 1:
      return LaunchCast(src, static_cast<__half*>(dst), n, stream);
    default:
      return LaunchCast(src, static_cast<__nv_bfloat16*>(dst), n, stream);
  }
}

}  // namespace tidepool::kernels::internal
