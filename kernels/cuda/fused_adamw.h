// Fused multi-tensor AdamW for GPU-resident optimizer shards: one launch
// updates many chunks, each {fp32 master, fp32 m, fp32 v, grad, optional
// bf16/fp16 param copy}, with the same math as CpuAdamW (the two agree to
// the bit where the CPU runs an FMA path). The gradient multiplier can come
// from device memory, so global-norm clipping and fp16 overflow skipping
// need no host synchronization:
//
//   // per step, on `stream` (chunks_dev: AdamWChunk[k] in device memory)
//   cudaMemsetAsync(sum_dev, 0, sizeof(float), stream);
//   cudaMemsetAsync(bad_dev, 0, sizeof(int), stream);
//   CudaSumSquares(grads_dev, k, DType::kBF16, sum_dev, bad_dev, stream);
//   // ncclAllReduce sum_dev (sum) and bad_dev (max) across ranks, then
//   CudaClipGradScale(sum_dev, 1.0f / loss_scale, max_norm, scale_dev,
//                     /*norm_out=*/nullptr, stream);
//   AdamWParams p{.lr = lr, .weight_decay = wd, .step = step};  // scale 1
//   FusedAdamW(p, chunks_dev, k, DType::kBF16, DType::kBF16, scale_dev,
//              bad_dev, stream);
//
// Plain C++: no CUDA headers needed to include this.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/dtype.h"
#include "kernels/cuda/descriptors.h"  // AdamWChunk

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace tidepool::kernels {

// Updates every chunk in one launch on `stream`. The effective gradient
// multiplier is params.grad_scale, times *grad_scale_dev when that is not
// null. When skip_dev is not null and *skip_dev != 0 at run time nothing is
// written (fp16 overflow). param_dtype must be kF16 or kBF16 (it is ignored
// for chunks without param_out). Errors: invalid arguments, or the CUDA
// error of the launch.
absl::Status FusedAdamW(const AdamWParams& params, const AdamWChunk* chunks_dev,
                        int num_chunks, DType grad_dtype, DType param_dtype,
                        const float* grad_scale_dev, const int* skip_dev,
                        CUstream_st* stream);

// *scale_out = ClipGradScale(*sum_squares_dev, inv_loss_scale, max_norm),
// computed on the device; *norm_out (nullable) gets the unscaled global
// norm. One tiny kernel, no host sync.
absl::Status CudaClipGradScale(const float* sum_squares_dev,
                               float inv_loss_scale, float max_norm,
                               float* scale_out_dev, float* norm_out_dev,
                               CUstream_st* stream);

}  // namespace tidepool::kernels
