#include "daemon/server/metrics_bridge.h"

#include "absl/strings/str_cat.h"

namespace tidepool {
namespace {

metrics::Policy ToMetrics(Policy p) {
  switch (p) {
    case Policy::kCuda:
      return metrics::Policy::kCuda;
    case Policy::kCpu:
      return metrics::Policy::kCpu;
    case Policy::kStatic:
      return metrics::Policy::kStatic;
    case Policy::kAuto:
      return metrics::Policy::kAuto;
  }
  return metrics::Policy::kCpu;
}

metrics::ChunkState ToMetrics(TensorState s) {
  switch (s) {
    case TensorState::kFree:
      return metrics::ChunkState::kFree;
    case TensorState::kCompute:
      return metrics::ChunkState::kCompute;
    case TensorState::kHold:
      return metrics::ChunkState::kHold;
    case TensorState::kHoldAfterBwd:
      return metrics::ChunkState::kHoldAfterBwd;
    case TensorState::kReadyForReduce:
      return metrics::ChunkState::kReadyForReduce;
  }
  return metrics::ChunkState::kFree;
}

metrics::ReclaimReason ToMetrics(ReclaimReason r) {
  switch (r) {
    case ReclaimReason::kClosed:
      return metrics::ReclaimReason::kClosed;
    case ReclaimReason::kDisconnected:
      return metrics::ReclaimReason::kDisconnected;
    case ReclaimReason::kAttachTimeout:
      return metrics::ReclaimReason::kAttachTimeout;
  }
  return metrics::ReclaimReason::kClosed;
}

}  // namespace

MetricsBridge::MetricsBridge(metrics::TidepoolMetrics* metrics,
                             MemoryManager* manager)
    : metrics_(metrics), manager_(manager) {
  for (const auto& backend : manager->devices()) {
    const DeviceDescription& d = backend->description();
    // dcgm-exporter's `gpu` label is the ordinal; sim devices keep their name.
    const std::string gpu =
        d.backend == "cuda" ? absl::StrCat(d.ordinal) : d.name;
    metrics::DeviceMetrics* dm = &metrics_->Device(gpu, d.uuid);
    devices_.push_back(dm);
    backend->SetCopyObserver(
        [this, dm](bool to_device, uint64_t bytes, double seconds) {
          metrics_->OnBytesMoved(*dm,
                                 to_device ? metrics::Direction::kHostToDevice
                                           : metrics::Direction::kDeviceToHost,
                                 bytes, seconds);
        });
  }
  manager->SetObserver(this);
  metrics_->SetScrapeCallback([this] { Scrape(); });
  Scrape();
}

void MetricsBridge::OnSessionOpened(size_t device, Policy policy) {
  metrics_->SessionOpened(*devices_[device], ToMetrics(policy));
}

void MetricsBridge::OnSessionReclaimed(size_t device, Policy policy,
                                       ReclaimReason reason) {
  metrics_->SessionClosed(*devices_[device], ToMetrics(policy));
  metrics_->SessionReclaimed(ToMetrics(reason));
}

void MetricsBridge::OnEviction(size_t device, EvictionCause cause, bool clean) {
  // Dropping a device copy the client is about to overwrite on the host is
  // not a placement decision; its write-back still counts as bytes moved.
  if (cause == EvictionCause::kHostAccess) return;
  metrics_->OnEviction(*devices_[device],
                       cause == EvictionCause::kQuota
                           ? metrics::EvictionReason::kQuota
                           : metrics::EvictionReason::kCapacity,
                       clean);
}

void MetricsBridge::OnPrefetch(size_t device, PrefetchOutcome outcome) {
  metrics::PrefetchOutcome m = metrics::PrefetchOutcome::kHit;
  switch (outcome) {
    case PrefetchOutcome::kHit:
      m = metrics::PrefetchOutcome::kHit;
      break;
    case PrefetchOutcome::kLate:
      m = metrics::PrefetchOutcome::kLate;
      break;
    case PrefetchOutcome::kWasted:
      m = metrics::PrefetchOutcome::kWasted;
      break;
  }
  metrics_->OnPrefetch(*devices_[device], m);
}

void MetricsBridge::OnPlacedUpdate(size_t device, bool on_device) {
  metrics_->OnOptimizerUpdate(*devices_[device],
                              on_device ? metrics::ChunkLocation::kDevice
                                        : metrics::ChunkLocation::kHost);
}

RpcObserver MetricsBridge::MakeRpcObserver() {
  return [this](absl::string_view method, double seconds, const absl::Status&) {
    metrics_->ObserveRpc(std::string_view(method.data(), method.size()),
                         seconds);
  };
}

void MetricsBridge::Scrape() {
  const ManagerSnapshot snap = manager_->Snapshot();
  metrics_->SetHostPool({.capacity_bytes = snap.host_pool.capacity,
                         .used_bytes = snap.host_pool.used,
                         .peak_bytes = snap.host_pool.peak});
  for (size_t d = 0; d < snap.devices.size(); ++d) {
    const auto& dev = snap.devices[d];
    metrics_->SetDevicePool(*devices_[d], {.capacity_bytes = dev.pool.capacity,
                                           .used_bytes = dev.pool.used,
                                           .peak_bytes = dev.pool.peak});
    for (int on_device = 0; on_device < 2; ++on_device) {
      for (int s = 0; s < ManagerSnapshot::kStates; ++s) {
        metrics_->SetChunkBytes(*devices_[d],
                                on_device ? metrics::ChunkLocation::kDevice
                                          : metrics::ChunkLocation::kHost,
                                ToMetrics(static_cast<TensorState>(s)),
                                dev.chunk_bytes[on_device][s]);
      }
    }
  }
}

}  // namespace tidepool
