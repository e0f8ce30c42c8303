// CPU AdamW for the host-resident optimizer shards: fp32 master weights and
// fp32 Adam moments, gradients in fp32/fp16/bf16, and optionally the
// bf16/fp16 parameter copy written in the same pass (so the upload to the
// GPU moves 2 bytes per parameter). Runs on every core of a ThreadPool with
// the widest SIMD path the CPU has (see isa.h).
//
//   AdamWParams p{.lr = 1e-4f, .weight_decay = 0.1f, .step = step,
//                 .grad_scale = ClipGradScale(sum_sq, 1 / loss_scale, 1.0f)};
//   absl::Status s = CpuAdamW(p, master, m, v, grad, DType::kBF16,
//                             param_bf16, DType::kBF16, n);
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cpu/dtype.h"
#include "kernels/cpu/thread_pool.h"

namespace tidepool::kernels {

struct AdamWParams {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;  // decoupled (AdamW), applied as p *= 1 - lr*wd
  int64_t step = 1;           // 1-based index of this update (bias correction)
  // Multiplies every gradient element before use: 1/loss_scale times the
  // global-norm clipping coefficient (see ClipGradScale in grad_stats.h).
  float grad_scale = 1.0f;
};

// InvalidArgument unless step >= 1, betas in [0, 1), eps >= 0 and all
// values finite.
absl::Status ValidateAdamWParams(const AdamWParams& params);

// One AdamW update of n elements, in place on master, m and v. grad has
// grad_dtype; param_out (nullable) receives the updated master rounded to
// param_dtype, which must then be kF16 or kBF16. pool nullptr means
// DefaultThreadPool(). Buffers must not overlap. Matches torch.optim.AdamW
// (decoupled weight decay, bias correction, amsgrad=False, maximize=False).
absl::Status CpuAdamW(const AdamWParams& params, float* master, float* m,
                      float* v, const void* grad, DType grad_dtype,
                      void* param_out, DType param_dtype, size_t n,
                      ThreadPool* pool = nullptr);

}  // namespace tidepool::kernels
