// LossScaler (tidepool/optimizer.h): fp16 dynamic loss scaling, the rule of
// torch.cuda.amp.GradScaler, which ShardedAdamW applies at Step().
#include <algorithm>
#include <cmath>

#include "tidepool/optimizer.h"

namespace tidepool {

LossScaler::LossScaler(const LossScalerOptions& options)
    : options_(options), scale_(options.dynamic ? options.init_scale : 1.0f) {}

bool LossScaler::Update(bool found_nonfinite) {
  if (!options_.dynamic) return found_nonfinite;
  if (found_nonfinite) {
    scale_ = std::max(options_.min_scale, scale_ * options_.backoff_factor);
    good_steps_ = 0;
    return true;
  }
  if (++good_steps_ >= options_.growth_interval) {
    const float grown = scale_ * options_.growth_factor;
    if (std::isfinite(grown)) scale_ = grown;
    good_steps_ = 0;
  }
  return false;
}

void LossScaler::Restore(float scale, int good_steps) {
  scale_ = scale;
  good_steps_ = good_steps;
}

}  // namespace tidepool
