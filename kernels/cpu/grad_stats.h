// Gradient statistics for global-norm clipping and fp16 overflow detection
// on host-resident gradient shards, and the clipping rule shared with the
// CUDA path.
//
//   double sum_sq = 0;  bool finite = true;
//   for (const Shard& s : shards) {
//     GradStats st = *CpuGradStats(s.grad, DType::kF16, s.n);
//     sum_sq += st.sum_squares;  finite &= st.all_finite;
//   }
//   // all-reduce sum_sq and finite across ranks, then:
//   if (!finite) { /* skip the step, lower the loss scale */ }
//   params.grad_scale = ClipGradScale(sum_sq, 1.0f / loss_scale, max_norm);
#pragma once

#include <cstddef>

#include "absl/status/statusor.h"
#include "kernels/cpu/dtype.h"
#include "kernels/cpu/thread_pool.h"

namespace tidepool::kernels {

struct GradStats {
  double sum_squares = 0;  // sum of grad[i]^2, accumulated in double
  bool all_finite = true;  // no Inf or NaN anywhere
};

// One pass over grad. pool nullptr means DefaultThreadPool().
absl::StatusOr<GradStats> CpuGradStats(const void* grad, DType dtype, size_t n,
                                       ThreadPool* pool = nullptr);

// The AdamWParams::grad_scale for one step: unscales the loss scale and
// applies torch.nn.utils.clip_grad_norm_'s rule,
//   norm  = sqrt(sum_squares) * inv_loss_scale
//   scale = inv_loss_scale * min(1, max_norm / (norm + 1e-6)).
// sum_squares is over the loss-scaled gradients of all ranks; max_norm <= 0
// disables clipping.
float ClipGradScale(double sum_squares, float inv_loss_scale, float max_norm);

}  // namespace tidepool::kernels
