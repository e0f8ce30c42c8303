// Fused multi-tensor AdamW and the device-side clipping coefficient.
//
// Each block walks the chunk list and takes every gridDim-th tile of the
// concatenated tile space, so one launch balances one huge chunk and many
// small ones alike without a host-side prefix sum over chunk sizes.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cpu/adamw_constants.h"
#include "kernels/cuda/descriptors.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch.h"

namespace tidepool::kernels::internal {
namespace {

constexpr int kThreads = 256;
constexpr int kIlp = 4;  // consecutive elements per thread: one 16 B load
constexpr int kTile = kThreads * kIlp;

// Same expression, operation for operation, as AdamWVec on the CPU: with
// explicit fmaf and IEEE sqrt/divide the results are bit-identical to the
// CPU's FMA paths.
__device__ __forceinline__ void AdamWElement(const AdamWConstants& c,
                                             float grad_scale, float g_raw,
                                             float& p, float& m, float& v) {
  const float g = g_raw * grad_scale;
  m = fmaf(c.one_minus_beta1, g, c.beta1 * m);
  v = fmaf(c.one_minus_beta2 * g, g, c.beta2 * v);
  const float denom = fmaf(__fsqrt_rn(v), c.inv_sqrt_bc2, c.eps);
  p = fmaf(-c.step_size, __fdiv_rn(m, denom), p * c.decay);
}

template <typename T>
struct alignas(4 * sizeof(T)) Vec4 {
  T x[4];
};

template <typename G, typename O>
__global__ void __launch_bounds__(kThreads)
    FusedAdamWKernel(AdamWConstants c, const AdamWChunk* __restrict__ chunks,
                     int num_chunks, const float* grad_scale_dev,
                     const int* skip_dev) {
  if (skip_dev != nullptr && *skip_dev != 0) return;
  const float grad_scale =
      grad_scale_dev != nullptr ? c.grad_scale * *grad_scale_dev : c.grad_scale;
  int64_t base = 0;
  for (int ci = 0; ci < num_chunks; ++ci) {
    const AdamWChunk ch = chunks[ci];
    const int64_t tiles = (ch.n + kTile - 1) / kTile;
    float* __restrict__ master = ch.master;
    float* __restrict__ m = ch.m;
    float* __restrict__ v = ch.v;
    const G* __restrict__ grad = static_cast<const G*>(ch.grad);
    O* __restrict__ out = static_cast<O*>(ch.param_out);
    const bool has_out = out != nullptr;
    const bool vec =
        ((reinterpret_cast<uintptr_t>(master) | reinterpret_cast<uintptr_t>(m) |
          reinterpret_cast<uintptr_t>(v)) %
             16 ==
         0) &&
        reinterpret_cast<uintptr_t>(grad) % sizeof(Vec4<G>) == 0 &&
        reinterpret_cast<uintptr_t>(out) % sizeof(Vec4<O>) == 0;
    for (int64_t t = FirstTile(base); t < tiles; t += gridDim.x) {
      const int64_t i0 = t * kTile + static_cast<int64_t>(threadIdx.x) * kIlp;
      if (vec && i0 + kIlp <= ch.n) {
        float4 p4 = *reinterpret_cast<const float4*>(master + i0);
        float4 m4 = *reinterpret_cast<const float4*>(m + i0);
        float4 v4 = *reinterpret_cast<const float4*>(v + i0);
        const Vec4<G> g4 = *reinterpret_cast<const Vec4<G>*>(grad + i0);
        AdamWElement(c, grad_scale, ToF32(g4.x[0]), p4.x, m4.x, v4.x);
        AdamWElement(c, grad_scale, ToF32(g4.x[1]), p4.y, m4.y, v4.y);
        AdamWElement(c, grad_scale, ToF32(g4.x[2]), p4.z, m4.z, v4.z);
        AdamWElement(c, grad_scale, ToF32(g4.x[3]), p4.w, m4.w, v4.w);
        *reinterpret_cast<float4*>(master + i0) = p4;
        *reinterpret_cast<float4*>(m + i0) = m4;
        *reinterpret_cast<float4*>(v + i0) = v4;
        if (has_out) {
          Vec4<O> o4;
          o4.x[0] = FromF32<O>(p4.x);
          o4.x[1] = FromF32<O>(p4.y);
          o4.x[2] = FromF32<O>(p4.z);
          o4.x[3] = FromF32<O>(p4.w);
          *reinterpret_cast<Vec4<O>*>(out + i0) = o4;
        }
      } else {
        for (int k = 0; k < kIlp; ++k) {
          const int64_t i = i0 + k;
          if (i >= ch.n) break;
          float p = master[i];
          float mm = m[i];
          float vv = v[i];
          AdamWElement(c, grad_scale, ToF32(grad[i]), p, mm, vv);
          master[i] = p;
          m[i] = mm;
          v[i] = vv;
          if (has_out) out[i] = FromF32<O>(p);
        }
      }
    }
    base += tiles;
  }
}

template <typename G, typename O>
cudaError_t Launch(const AdamWConstants& c, const AdamWChunk* chunks,
                   int num_chunks, const float* grad_scale, const int* skip,
                   cudaStream_t stream) {
  int blocks = 0;
  cudaError_t e = GridFor(FusedAdamWKernel<G, O>, kThreads, &blocks);
  if (e != cudaSuccess) return e;
  FusedAdamWKernel<G, O><<<blocks, kThreads, 0, stream>>>(c, chunks, num_chunks,
                                                          grad_scale, skip);
  return cudaGetLastError();
}

template <typename G>
cudaError_t LaunchForOut(const AdamWConstants& c, const AdamWChunk* chunks,
                         int num_chunks, int param_dtype,
                         const float* grad_scale, const int* skip,
                         cudaStream_t stream) {
  if (param_dtype == 1) {
    return Launch<G, __half>(c, chunks, num_chunks, grad_scale, skip, stream);
  }
  return Launch<G, __nv_bfloat16>(c, chunks, num_chunks, grad_scale, skip,
                                  stream);
}

__global__ void ClipGradScaleKernel(const float* sum_squares,
                                    float inv_loss_scale, float max_norm,
                                    float* scale_out, float* norm_out) {
  // Mirrors ClipGradScale() in kernels/cpu/cpu_ops.cc, in double.
  const double norm = sqrt(static_cast<double>(*sum_squares)) *
                      static_cast<double>(inv_loss_scale);
  double scale = inv_loss_scale;
  if (max_norm > 0.0f) {
    const double coef = static_cast<double>(max_norm) / (norm + 1e-6);
    scale = inv_loss_scale * (coef < 1.0 ? coef : 1.0);
  }
  *scale_out = static_cast<float>(scale);
  if (norm_out != nullptr) *norm_out = static_cast<float>(norm);
}

}  // namespace

cudaError_t LaunchFusedAdamW(const AdamWConstants& c, const AdamWChunk* chunks,
                             int num_chunks, int grad_dtype, int param_dtype,
                             const float* grad_scale, const int* skip,
                             cudaStream_t stream) {
  switch (grad_dtype) {
    case 0:
      return LaunchForOut<float>(c, chunks, num_chunks, param_dtype, grad_scale,
                                 skip, stream);
    case 1:
      return LaunchForOut<__half>(c, chunks, num_chunks, param_dtype,
                                  grad_scale, skip, stream);
    default:
      return LaunchForOut<__nv_bfloat16>(c, chunks, num_chunks, param_dtype,
                                         grad_scale, skip, stream);
  }
}

cudaError_t LaunchClipGradScale(const float* sum_squares, float inv_loss_scale,
                                float max_norm, float* scale_out,
                                float* norm_out, cudaStream_t stream) {
  ClipGradScaleKernel<<<1, 1, 0, stream>>>(sum_squares, inv_loss_scale,
                                           max_norm, scale_out, norm_out);
  return cudaGetLastError();
}

}  // namespace tidepool::kernels::internal
