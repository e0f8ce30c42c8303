// Bulk fp32 <-> bf16/fp16 conversion on the CPU (round to nearest even,
// NaN stays NaN, overflow to Inf), multithreaded and SIMD like the AdamW
// kernel. Used to build the low-precision parameter copy from fp32 master
// weights (initialization, checkpoint load) and to widen gradients.
//
//   CpuConvertFromF32(master, param_bf16, DType::kBF16, n).IgnoreError();
//   CpuConvertToF32(grad_fp16, DType::kF16, grad_f32, n).IgnoreError();
#pragma once

#include <cstddef>

#include "absl/status/status.h"
#include "kernels/cpu/dtype.h"
#include "kernels/cpu/thread_pool.h"

namespace tidepool::kernels {

// dst[i] = float(src[i]). pool nullptr means DefaultThreadPool().
absl::Status CpuConvertToF32(const void* src, DType src_dtype, float* dst,
                             size_t n, ThreadPool* pool = nullptr);

// dst[i] = round_to_nearest_even(src[i]) in dst_dtype.
absl::Status CpuConvertFromF32(const float* src, void* dst, DType dst_dtype,
                               size_t n, ThreadPool* pool = nullptr);

}  // namespace tidepool::kernels
