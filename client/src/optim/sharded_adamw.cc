// ShardedAdamW (tidepool/optimizer.h, docs/optimizer.md): the facade, which
// checks its arguments and forwards to ShardedAdamW::Impl (declared, with
// the per-block pipeline it runs, in sharded_adamw_impl.h).
#include <cmath>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/src/optim/sharded_adamw_impl.h"
#include "tidepool/optimizer.h"

namespace tidepool {

absl::StatusOr<std::unique_ptr<ShardedAdamW>> ShardedAdamW::Create(
    Session* session, Communicator* comm, std::vector<ParamBlock> blocks,
    const ShardedAdamWOptions& options) {
  if (session == nullptr || comm == nullptr) {
    return absl::InvalidArgumentError("optimizer: session and comm required");
  }
  auto impl = std::make_unique<Impl>(session, comm, options);
  TP_RETURN_IF_ERROR(impl->Init(std::move(blocks)));
  return std::unique_ptr<ShardedAdamW>(new ShardedAdamW(std::move(impl)));
}

ShardedAdamW::ShardedAdamW(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}
ShardedAdamW::~ShardedAdamW() = default;

absl::Status ShardedAdamW::InitFromParams() { return impl_->InitFromParams(); }
absl::Status ShardedAdamW::InitFromValues(int block,
                                          std::span<const float> values) {
  return impl_->InitFromValues(block, values.data(), values.size());
}
absl::Status ShardedAdamW::OnGradientsReady(int block) {
  if (block < 0 || block >= impl_->num_blocks()) {
    return absl::OutOfRangeError(absl::StrCat("optimizer: no block ", block));
  }
  return impl_->Report(block, 0, DType::kF32);  // dtype: the block's
}
absl::Status ShardedAdamW::OnGradientsReady(int block, uint64_t grad_tensor,
                                            DType grad_dtype) {
  return impl_->Report(block, grad_tensor, grad_dtype);
}
absl::StatusOr<StepResult> ShardedAdamW::Step() { return impl_->Step(); }
float ShardedAdamW::loss_scale() const { return impl_->loss_scale(); }
absl::Status ShardedAdamW::SetLearningRate(float lr) {
  if (!std::isfinite(lr) || lr < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "optimizer: the learning rate must be finite and >= 0, not ", lr));
  }
  impl_->set_lr(lr);
  return absl::OkStatus();
}
float ShardedAdamW::learning_rate() const { return impl_->lr(); }
int64_t ShardedAdamW::step() const { return impl_->step(); }
int64_t ShardedAdamW::iterations() const { return impl_->iterations(); }
int ShardedAdamW::num_blocks() const { return impl_->num_blocks(); }
absl::Status ShardedAdamW::SaveCheckpoint(absl::string_view dir) {
  return impl_->Save(dir);
}
absl::Status ShardedAdamW::LoadCheckpoint(absl::string_view dir) {
  return impl_->Load(dir);
}

}  // namespace tidepool
