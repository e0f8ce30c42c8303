// `auto` and `static` against a real tidepoold on the sim backend, through
// the client library: a workload at the edge of the device's capacity
// succeeds under `auto` wherever `cpu` does; unknown ops fall back and
// re-record; prefetched bytes arrive before the acquire that needs them.
#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "gtest/gtest.h"
#include "tests/support/process.h"
#include "tidepool/session.h"

namespace tidepool {
namespace {

using testing::DaemonOptions;
using testing::DaemonProcess;

constexpr uint64_t kMiB = 1 << 20;

std::unique_ptr<DaemonProcess> StartDaemon(std::vector<std::string> extra = {},
                                           std::string capacity = "64MiB") {
  DaemonOptions options;  // 4 MiB chunks
  options.sim_capacity = capacity;
  options.extra_args = std::move(extra);
  auto d = DaemonProcess::Start(options);
  EXPECT_TRUE(d.ok()) << d.status();
  return d.ok() ? std::move(*d) : nullptr;
}

std::unique_ptr<Session> Open(const DaemonProcess& daemon, Policy policy,
                              std::optional<PlacementOptions> placement = {}) {
  SessionOptions options;
  options.socket = daemon.socket();
  options.policy = policy;
  options.placement = placement;
  auto s = Session::Open(options);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(*s) : nullptr;
}

std::vector<uint64_t> RegisterTensors(Session& s, int n) {
  std::vector<TensorSpec> specs;
  for (int i = 0; i < n; ++i) {
    specs.push_back({"t" + std::to_string(i),
                     DType::kU8,
                     {static_cast<int64_t>(4 * kMiB)},
                     Group::kParam});
  }
  auto r = s.Register(specs);
  EXPECT_TRUE(r.ok()) << r.status();
  std::vector<uint64_t> ids;
  if (r.ok()) {
    for (const auto& t : *r) ids.push_back(t.id);
  }
  return ids;
}

uint8_t Pattern(int tensor, int step) {
  return static_cast<uint8_t>(tensor * 7 + step * 13 + 1);
}

// Steps of: 16 ops that each take a quarter of the tensors at once (the
// whole 64 MiB device) and rewrite them, then the tensors one by one. Every
// byte is checked against what the previous step wrote.
absl::Status EdgeWorkload(Session& s, const std::vector<uint64_t>& ids,
                          int steps, uint64_t non_model) {
  const int n = static_cast<int>(ids.size());
  for (int step = 0; step < steps; ++step) {
    for (int group = 0; group < 4; ++group) {
      std::vector<uint64_t> batch;
      for (int i = group; i < n; i += 4) batch.push_back(ids[i]);
      s.BeginOp("block" + std::to_string(group) + "/update", non_model);
      auto got = s.Acquire(batch, AccessMode::kReadWrite);
      if (!got.ok()) return got.status();
      for (size_t k = 0; k < got->size(); ++k) {
        const int tensor = group + 4 * static_cast<int>(k);
        auto* p = static_cast<uint8_t*>((*got)[k].data);
        const uint8_t want = step == 0 ? 0 : Pattern(tensor, step - 1);
        if (p[0] != want || p[4 * kMiB - 1] != want) {
          return absl::DataLossError("tensor " + std::to_string(tensor) +
                                     " lost its bytes");
        }
        std::memset(p, Pattern(tensor, step), 4 * kMiB);
      }
      auto released = s.Release(batch, TensorState::kHold);
      if (!released.ok()) return released;
    }
    for (int i = 0; i < n; ++i) {
      s.BeginOp("tensor" + std::to_string(i) + "/read", non_model);
      auto got = s.Acquire({&ids[i], 1}, AccessMode::kRead);
      if (!got.ok()) return got.status();
      auto* p = static_cast<uint8_t*>((*got)[0].data);
      if (p[12345] != Pattern(i, step)) {
        return absl::DataLossError("tensor read back wrong");
      }
      auto released = s.Release({&ids[i], 1}, TensorState::kHold);
      if (!released.ok()) return released;
    }
    auto marked = s.MarkStep();
    if (!marked.ok()) return marked.status();
  }
  return absl::OkStatus();
}

TEST(PolicyIntegrationTest, AtTheEdgeOfCapacityAutoSucceedsWhereCpuDoes) {
  auto daemon = StartDaemon();
  ASSERT_NE(daemon, nullptr);
  {
    auto cpu = Open(*daemon, Policy::kCpu);
    ASSERT_NE(cpu, nullptr);
    auto ids = RegisterTensors(*cpu, 64);  // 256 MiB through 64 MiB
    ASSERT_TRUE(EdgeWorkload(*cpu, ids, 3, 0).ok());
  }
  // auto with honest reports, with activations that leave no room at all
  // for model data (it degrades to cpu), and static.
  for (uint64_t non_model : {uint64_t{0}, 48 * kMiB, ~uint64_t{0}}) {
    auto s = Open(*daemon, Policy::kAuto);
    ASSERT_NE(s, nullptr);
    auto ids = RegisterTensors(*s, 64);
    absl::Status status = EdgeWorkload(*s, ids, 3, non_model);
    EXPECT_TRUE(status.ok()) << "non_model " << non_model << ": " << status;
    auto placement = s->Placement();
    ASSERT_TRUE(placement.ok());
    EXPECT_EQ(placement->state, "planned");
    EXPECT_EQ(placement->replans, 0u);
  }
  PlacementOptions half;
  half.static_param_offload = 0.5;
  auto st = Open(*daemon, Policy::kStatic, half);
  ASSERT_NE(st, nullptr);
  auto ids = RegisterTensors(*st, 64);
  EXPECT_TRUE(EdgeWorkload(*st, ids, 2, 0).ok());
}

TEST(PolicyIntegrationTest, UnknownOpFallsBackAndReRecords) {
  auto daemon = StartDaemon();
  ASSERT_NE(daemon, nullptr);
  auto s = Open(*daemon, Policy::kAuto);
  ASSERT_NE(s, nullptr);
  auto ids = RegisterTensors(*s, 32);
  auto run = [&](const std::string& phase, int ops) {
    for (int i = 0; i < ops; ++i) {
      s->BeginOp("layer" + std::to_string(i) + "/" + phase, kMiB);
      auto got = s->Acquire({&ids[i], 1}, AccessMode::kRead);
      ASSERT_TRUE(got.ok()) << got.status();
      ASSERT_TRUE(s->Release({&ids[i], 1}, TensorState::kHold).ok());
    }
  };
  run("fwd", 32);
  auto marked = s->MarkStep();
  ASSERT_TRUE(marked.ok());
  EXPECT_EQ(marked->state, "planned");
  // An evaluation pass with its own keys: served (LRU), never an error.
  run("eval", 16);
  auto p = s->Placement();
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->state, "fallback");
  EXPECT_NE(p->last_divergence.find("unknown op 'layer0/eval'"),
            std::string::npos);
  marked = s->MarkStep();
  ASSERT_TRUE(marked.ok());
  EXPECT_EQ(marked->state, "recording");
  EXPECT_EQ(marked->replans, 1u);
  run("fwd", 32);  // the re-recorded step
  marked = s->MarkStep();
  ASSERT_TRUE(marked.ok());
  EXPECT_EQ(marked->state, "planned");
  run("fwd", 32);
  p = s->Placement();
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->state, "planned");
}

TEST(PolicyIntegrationTest, PrefetchedBytesArriveBeforeTheAcquire) {
  // A modelled 2 GB/s link: a 4 MiB chunk takes about 2 ms to arrive; each
  // op computes for 20 ms.
  auto daemon = StartDaemon({"--sim_link_gbps=2"}, "32MiB");
  ASSERT_NE(daemon, nullptr);
  PlacementOptions options;
  options.margin_ratio = 0;
  auto s = Open(*daemon, Policy::kAuto, options);
  ASSERT_NE(s, nullptr);
  auto ids = RegisterTensors(*s, 16);  // 64 MiB through 32 MiB
  auto on_device = [&](uint64_t tensor_index) {
    auto chunks = s->Chunks();
    EXPECT_TRUE(chunks.ok());
    // Tensors of 4 MiB get a chunk each, in registration order.
    return chunks.ok() && (*chunks)[tensor_index].on_device;
  };
  int resident_before_acquire = 0;
  for (int step = 0; step < 3; ++step) {
    for (int i = 0; i < 16; ++i) {
      if (step == 2 && on_device(i)) ++resident_before_acquire;
      s->BeginOp("layer" + std::to_string(i), 0);
      auto got = s->Acquire(
          {&ids[i], 1}, step == 0 ? AccessMode::kReadWrite : AccessMode::kRead);
      ASSERT_TRUE(got.ok()) << got.status();
      auto* p = static_cast<uint8_t*>((*got)[0].data);
      if (step == 0) {
        std::memset(p, Pattern(i, 0), 4 * kMiB);
      } else {
        ASSERT_EQ(p[0], Pattern(i, 0));
        ASSERT_EQ(p[4 * kMiB - 1], Pattern(i, 0));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      ASSERT_TRUE(s->Release({&ids[i], 1}, TensorState::kHold).ok());
    }
    ASSERT_TRUE(s->MarkStep().ok());
  }
  auto st = s->Stats();
  ASSERT_TRUE(st.ok());
  // In the planned steps every op's chunk was on its way before the op
  // asked for it, and the copies finished during the previous op's compute.
  EXPECT_EQ(resident_before_acquire, 16);
  EXPECT_GT(st->prefetches, 0u);
  EXPECT_GT(st->prefetch_hits, 0u)
      << "prefetches " << st->prefetches << " late " << st->prefetch_late
      << " wasted " << st->prefetch_wasted << " moved " << st->bytes_to_device;
  EXPECT_EQ(st->prefetch_wasted, 0u);
  EXPECT_LE(st->peak_device_bytes, 32 * kMiB);
}

// A small model trained the way ShardedAdamW does it: forward reads each
// layer's parameters, backward writes the gradient over them, and each
// layer's update (parameters + fp32 master, m, v) runs from another thread
// as soon as backward is done with it, wherever AcquireWherePlaced puts
// it. Every byte is checked at every step.
class PlacedUpdates {
 public:
  static constexpr int kLayers = 4;

  explicit PlacedUpdates(Session& s) : s_(s) {
    std::vector<TensorSpec> specs;
    for (int l = 0; l < kLayers; ++l) {
      specs.push_back({"p" + std::to_string(l),
                       DType::kU8,
                       {static_cast<int64_t>(4 * kMiB)},
                       Group::kParam});
    }
    for (int l = 0; l < kLayers; ++l) {
      specs.push_back({"master" + std::to_string(l),
                       DType::kU8,
                       {static_cast<int64_t>(4 * kMiB)},
                       Group::kMaster});
      for (const char* name : {"m", "v"}) {
        specs.push_back({name + std::to_string(l),
                         DType::kU8,
                         {static_cast<int64_t>(4 * kMiB)},
                         Group::kOptimState});
      }
    }
    auto r = s.Register(specs);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return;
    for (int l = 0; l < kLayers; ++l) params_.push_back((*r)[l].id);
    for (int l = 0; l < kLayers; ++l) {
      state_.push_back({(*r)[kLayers + 3 * l].id, (*r)[kLayers + 3 * l + 1].id,
                        (*r)[kLayers + 3 * l + 2].id});
    }
  }

  // One step; `on_device[l]` says where layer l's update ran.
  absl::Status Step(int step, std::vector<bool>* on_device) {
    on_device->assign(kLayers, false);
    for (int l = 0; l < kLayers; ++l) {
      s_.BeginOp("layer" + std::to_string(l) + "/fwd");
      TP_RETURN_IF_ERROR(Touch(l, step, /*backward=*/false));
    }
    std::vector<std::thread> updates;
    std::vector<absl::Status> results(kLayers);
    std::array<bool, kLayers> placed{};
    for (int l = kLayers - 1; l >= 0; --l) {
      s_.BeginOp("layer" + std::to_string(l) + "/bwd");
      TP_RETURN_IF_ERROR(Touch(l, step, /*backward=*/true));
      updates.emplace_back([this, l, step, &placed, &results] {
        results[l] = Update(l, step, &placed[l]);
      });
    }
    for (auto& t : updates) t.join();
    on_device->assign(placed.begin(), placed.end());
    for (const auto& r : results) TP_RETURN_IF_ERROR(r);
    return s_.MarkStep().status();
  }

 private:
  static uint8_t Param(int l, int step) { return Pattern(l, step); }
  static uint8_t Grad(int l, int step) { return Pattern(l + 50, step); }
  static uint8_t State(int l, int k, int step) {
    return Pattern(l + 10 * (k + 1), step);
  }
  static absl::Status Check(const void* data, uint8_t want,
                            absl::string_view what) {
    const auto* p = static_cast<const uint8_t*>(data);
    for (uint64_t i = 0; i < 4 * kMiB; i += 4096) {
      if (p[i] != want) {
        return absl::DataLossError(
            absl::StrCat(what, ": byte ", i, " is ", p[i], ", want ", want));
      }
    }
    return absl::OkStatus();
  }

  // Forward checks the parameters the last update wrote; backward writes
  // the gradient over them.
  absl::Status Touch(int l, int step, bool backward) {
    const uint64_t id = params_[l];
    auto got = s_.Acquire(
        {&id, 1}, backward ? AccessMode::kReadWrite : AccessMode::kRead);
    if (!got.ok()) return got.status();
    absl::Status checked = absl::OkStatus();
    if (step > 0) {
      checked = Check((*got)[0].data, Param(l, step - 1), "parameters");
    }
    if (backward) std::memset((*got)[0].data, Grad(l, step), 4 * kMiB);
    TP_RETURN_IF_ERROR(s_.Release({&id, 1}, TensorState::kHoldAfterBwd));
    return checked;
  }

  absl::Status Update(int l, int step, bool* on_device) {
    const uint64_t ids[4] = {params_[l], state_[l][0], state_[l][1],
                             state_[l][2]};
    auto got = s_.AcquireWherePlaced(ids, AccessMode::kReadWrite);
    if (!got.ok()) return got.status();
    *on_device = got->on_device;
    absl::Status checked = Check(got->tensors[0].data, Grad(l, step), "grad");
    for (int k = 0; k < 3 && checked.ok(); ++k) {
      checked = Check(got->tensors[k + 1].data,
                      step == 0 ? 0 : State(l, k, step - 1), "state");
    }
    for (int k = 0; k < 3; ++k) {
      std::memset(got->tensors[k + 1].data, State(l, k, step), 4 * kMiB);
    }
    std::memset(got->tensors[0].data, Param(l, step), 4 * kMiB);
    TP_RETURN_IF_ERROR(s_.Release(ids, TensorState::kHold));
    return checked;
  }

  Session& s_;
  std::vector<uint64_t> params_;
  std::vector<std::array<uint64_t, 3>> state_;
};

TEST(PolicyIntegrationTest, AutoPlacesUpdatesOnTheDeviceWhereTheyFit) {
  // 64 MiB device: the 16 MiB of parameters plus all four layers' 12 MiB
  // of state fit exactly. The 5% margin (3.2 MiB) is less than a 4 MiB
  // chunk and costs none, and forward-backward needs no prefetch reserve
  // (docs/policy.md), so every update runs on the device.
  auto daemon = StartDaemon();
  ASSERT_NE(daemon, nullptr);
  auto s = Open(*daemon, Policy::kAuto);
  ASSERT_NE(s, nullptr);
  PlacedUpdates model(*s);
  std::vector<bool> placed;
  ASSERT_TRUE(model.Step(0, &placed).ok());
  // Warm-up: every update on the host (the cpu-like choice).
  EXPECT_EQ(placed, std::vector<bool>(PlacedUpdates::kLayers, false));
  std::vector<bool> first;
  for (int step = 1; step < 5; ++step) {
    absl::Status st = model.Step(step, &placed);
    ASSERT_TRUE(st.ok()) << "step " << step << ": " << st;
    if (step == 1) first = placed;
    // The plan decides once: the same layers every step.
    EXPECT_EQ(placed, first) << "step " << step;
  }
  const int on_device =
      static_cast<int>(std::count(first.begin(), first.end(), true));
  EXPECT_EQ(on_device, PlacedUpdates::kLayers);
  auto p = s->Placement();
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->state, "planned");
  EXPECT_EQ(p->replans, 0u) << p->last_divergence;
}

TEST(PolicyIntegrationTest, CpuPlacesUpdatesInTheHostHomes) {
  auto daemon = StartDaemon();
  ASSERT_NE(daemon, nullptr);
  auto s = Open(*daemon, Policy::kCpu);
  ASSERT_NE(s, nullptr);
  PlacedUpdates model(*s);
  std::vector<bool> placed;
  for (int step = 0; step < 3; ++step) {
    absl::Status st = model.Step(step, &placed);
    ASSERT_TRUE(st.ok()) << "step " << step << ": " << st;
    EXPECT_EQ(placed, std::vector<bool>(PlacedUpdates::kLayers, false));
  }
  // Optimizer state never crossed the link: only parameters moved.
  auto stats = s->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_LE(stats->bytes_to_device, 3u * PlacedUpdates::kLayers * 4 * kMiB);
}

}  // namespace
}  // namespace tidepool
