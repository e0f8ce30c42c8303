// Internal: folds AdamWParams into the per-step scalars every AdamW kernel
// (CPU and CUDA) uses, so both compute the very same expression:
//
//   g  = grad * grad_scale
//   m  = beta1 * m + (1 - beta1) * g
//   v  = beta2 * v + (1 - beta2) * g * g
//   p  = p * (1 - lr * wd) - step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps)
//
// with step_size = lr / (1 - beta1^step), inv_sqrt_bc2 = 1/sqrt(1 - beta2^step)
// (torch.optim.AdamW's formulation). Kept free of Abseil and of anything
// nvcc might dislike.
#pragma once

#include <cmath>
#include <cstdint>

namespace tidepool::kernels::internal {

struct AdamWConstants {
  float beta1;
  float one_minus_beta1;
  float beta2;
  float one_minus_beta2;
  float step_size;
  float inv_sqrt_bc2;
  float eps;
  float decay;
  float grad_scale;
};

inline AdamWConstants FoldAdamW(float lr, float beta1, float beta2, float eps,
                                float weight_decay, int64_t step,
                                float grad_scale) {
  // Folded in double: 1 - beta2^step is tiny for early steps and would lose
  // digits in fp32.
  const double bc1 = 1.0 - std::pow(static_cast<double>(beta1), step);
  const double bc2 = 1.0 - std::pow(static_cast<double>(beta2), step);
  AdamWConstants c;
  c.beta1 = beta1;
  c.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  c.beta2 = beta2;
  c.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  c.step_size = static_cast<float>(lr / bc1);
  c.inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  c.eps = eps;
  c.decay = static_cast<float>(1.0 - static_cast<double>(lr) * weight_decay);
  c.grad_scale = grad_scale;
  return c;
}

}  // namespace tidepool::kernels::internal
