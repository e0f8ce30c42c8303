// The `auto` placement, alone and inside the memory manager on a real sim
// backend: its eviction choices once planned equal Belady's; unknown ops,
// changed shapes and steps that leave the recorded order fall back to LRU
// without failing and trigger re-recording; bad op input never breaks it.
#include "daemon/policy/placement.h"

#include <unistd.h>

#include <limits>
#include <set>

#include "daemon/core/memory_manager.h"
#include "gtest/gtest.h"
#include "tests/daemon/sim_manager.h"

namespace tidepool {
namespace {

constexpr uint64_t kMiB = 1 << 20;

// --- SessionPlacement alone ------------------------------------------------

class PlacementTest : public ::testing::Test {
 protected:
  void Op(const std::string& key, std::vector<uint64_t> chunks,
          uint64_t non_model = 0) {
    OpContext op{.key = key, .seq = ++seq_, .non_model_bytes = non_model};
    std::vector<SessionPlacement::Touch> touches;
    for (uint64_t c : chunks) touches.push_back({c, kMiB, false});
    p_.OnAcquire(&op, nullptr, touches);
  }
  void Step(const std::vector<std::string>& keys, uint64_t non_model = 0) {
    for (size_t i = 0; i < keys.size(); ++i) Op(keys[i], {i + 1}, non_model);
    p_.OnStep();
  }
  PlacementState state() const { return p_.stats().state; }

  uint64_t seq_ = 0;
  SessionPlacement p_{Policy::kAuto, PlacementConfig{}, 64 * kMiB, 2 * kMiB};
};

TEST_F(PlacementTest, WarmUpThenPlan) {
  EXPECT_EQ(state(), PlacementState::kRecording);
  Step({"a", "b", "c"});
  EXPECT_EQ(state(), PlacementState::kPlanned);
  EXPECT_EQ(p_.stats().plan_ops, 3u);
  Step({"a", "b", "c"});
  EXPECT_EQ(state(), PlacementState::kPlanned);
  EXPECT_EQ(p_.stats().planned_ops, 3u);
  EXPECT_EQ(p_.stats().replans, 0u);
}

TEST_F(PlacementTest, UnknownOpFallsBackAndReRecords) {
  Step({"a", "b", "c"});
  Op("a", {1});
  EXPECT_EQ(p_.position(), 0u);
  Op("eval/a", {1});  // never recorded
  EXPECT_EQ(state(), PlacementState::kFallback);
  EXPECT_NE(p_.stats().last_divergence.find("unknown op 'eval/a'"),
            std::string::npos);
  // Falling back, victims are LRU: the oldest goes.
  std::vector<EvictionCandidate> c = {{1, 0, kMiB, false, 9},
                                      {2, 0, kMiB, false, 3}};
  EXPECT_EQ(p_.ChooseVictim(c), 1u);
  p_.OnStep();
  EXPECT_EQ(state(), PlacementState::kRecording);
  EXPECT_EQ(p_.stats().replans, 1u);
  Step({"eval/a", "eval/b"});  // the new pattern is recorded and planned
  EXPECT_EQ(state(), PlacementState::kPlanned);
  EXPECT_EQ(p_.stats().plan_ops, 2u);
}

TEST_F(PlacementTest, ChangedBatchShapeFallsBack) {
  Step({"a", "b"}, 100 * kMiB);
  Op("a", {1}, 100 * kMiB);
  EXPECT_EQ(state(), PlacementState::kPlanned);
  Op("b", {2}, 200 * kMiB);  // twice the activations: a bigger batch
  EXPECT_EQ(state(), PlacementState::kFallback);
  p_.OnStep();
  EXPECT_EQ(state(), PlacementState::kRecording);
}

TEST_F(PlacementTest, EvaluationBetweenStepsResynchronises) {
  Step({"a/fwd", "b/fwd", "b/bwd", "a/bwd"});
  for (int step = 0; step < 3; ++step) {
    if (step != 1) {  // an evaluation pass: forward ops only
      Op("a/fwd", {1});
      Op("b/fwd", {2});
    }
    Step({"a/fwd", "b/fwd", "b/bwd", "a/bwd"});
    EXPECT_EQ(state(), PlacementState::kPlanned) << step;
  }
  EXPECT_EQ(p_.stats().replans, 0u);
  EXPECT_EQ(p_.stats().resyncs, 2u);
  Op("a/fwd", {1});
  Op("b/fwd", {2});
  EXPECT_EQ(p_.position(), 1u);  // where b/fwd was recorded
}

TEST_F(PlacementTest, GradientAccumulationLeavesTheOrderAndReRecords) {
  Step({"fwd", "bwd", "opt"});
  for (int step = 0; step < 2; ++step) {
    Op("fwd", {1});
    Op("bwd", {2});
    Op("fwd", {1});  // a second micro-batch before the optimizer
    EXPECT_EQ(state(), PlacementState::kPlanned);  // resynchronised
    Op("bwd", {2});
    Op("opt", {3});
    p_.OnStep();
  }
  // Twice in a row: a new pattern, recorded anew.
  EXPECT_EQ(state(), PlacementState::kRecording);
  EXPECT_NE(p_.stats().last_divergence.find("two steps in a row"),
            std::string::npos);
  Step({"fwd", "bwd", "fwd", "bwd", "opt"});
  EXPECT_EQ(state(), PlacementState::kPlanned);
  EXPECT_EQ(p_.stats().plan_ops, 5u);
}

TEST_F(PlacementTest, StepEndingEarlyReRecords) {
  Step({"a", "b", "c"});
  Op("a", {1});
  p_.OnStep();  // an evaluation-only step, say
  EXPECT_EQ(state(), PlacementState::kRecording);
  EXPECT_EQ(p_.stats().replans, 1u);
}

TEST_F(PlacementTest, HugeNonModelDegradesToZeroBudgetWithoutOverflow) {
  Op("a", {1}, std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(p_.Limit(), 0u);
  p_.OnStep();
  Op("a", {1}, std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(state(), PlacementState::kPlanned);
  EXPECT_EQ(p_.Limit(), 0u);
}

// Placed acquires: ops a and b touch chunks 1 and 2 (1 MiB each); their
// updates write {1, 10, 11, 12} and {2, 20, 21, 22}.
class PlacedTest : public ::testing::Test {
 protected:
  explicit PlacedTest(uint64_t pool = 64 * kMiB)
      : p_(Policy::kAuto, PlacementConfig{}, pool, kMiB) {}
  void Step() {
    Op("a", 1);
    Op("b", 2);
    p_.OnStep();
  }
  void Op(const std::string& key, uint64_t chunk) {
    OpContext op{.key = key, .seq = ++seq_};
    const SessionPlacement::Touch t{chunk, kMiB, true};
    p_.OnAcquire(&op, nullptr, {&t, 1});
  }
  bool Update(uint64_t chunk) {
    std::vector<SessionPlacement::Touch> touches;
    for (uint64_t c : {chunk, 10 * chunk, 10 * chunk + 1, 10 * chunk + 2}) {
      touches.push_back({c, kMiB, true});
    }
    const bool on_device = p_.OnPlacedAcquire(touches, /*resident=*/false);
    p_.OnPlacedServed(touches, on_device);
    return on_device;
  }

  uint64_t seq_ = 0;
  SessionPlacement p_;
};

TEST_F(PlacedTest, HostWhileRecordingThenAsPlanned) {
  Op("a", 1);
  EXPECT_FALSE(Update(1));  // warm-up: host
  Op("b", 2);
  EXPECT_FALSE(Update(2));
  p_.OnStep();
  ASSERT_EQ(p_.stats().state, PlacementState::kPlanned);
  ASSERT_EQ(p_.plan()->placed_on_device(), 2u);
  Op("a", 1);
  EXPECT_TRUE(Update(1));
  Op("b", 2);
  EXPECT_TRUE(Update(2));
  const SessionPlacement::Touch unknown{7, kMiB, true};
  EXPECT_FALSE(p_.OnPlacedAcquire({&unknown, 1}, /*resident=*/false));
  // Placed acquires are not ops: the plan is followed to the end.
  p_.OnStep();
  EXPECT_EQ(p_.stats().state, PlacementState::kPlanned);
  EXPECT_EQ(p_.stats().replans, 0u);
}

class SmallPlacedTest : public PlacedTest {
 protected:
  // 4 MiB: the ops' chunks fit, no update's state does.
  SmallPlacedTest() : PlacedTest(4 * kMiB) {}
};

TEST_F(SmallPlacedTest, WritesBackAheadWhatTheHostUpdateWillTake) {
  Op("a", 1);
  Update(1);
  Op("b", 2);
  Update(2);
  p_.OnStep();
  ASSERT_EQ(p_.stats().state, PlacementState::kPlanned);
  ASSERT_EQ(p_.plan()->placed_on_device(), 0u);
  Op("a", 1);
  EXPECT_TRUE(p_.WriteBackAhead(1));   // no op needs it again this step
  EXPECT_FALSE(p_.WriteBackAhead(2));  // op b still does
  EXPECT_FALSE(Update(1));             // the host update takes it
  EXPECT_FALSE(p_.WriteBackAhead(1));  // nothing left to write ahead
  Op("b", 2);
  EXPECT_TRUE(p_.WriteBackAhead(2));
}

// A placed acquire of `chunks` (1 MiB each, all written); returns whether
// it ran on the device.
bool PlacedUpdate(SessionPlacement& p, const std::vector<uint64_t>& chunks) {
  std::vector<SessionPlacement::Touch> touches;
  for (uint64_t c : chunks) touches.push_back({c, kMiB, true});
  const bool on_device = p.OnPlacedAcquire(touches, /*resident=*/false);
  p.OnPlacedServed(touches, on_device);
  return on_device;
}

TEST_F(PlacedTest, NoWriteBackAheadWhileADeviceUpdateWillWriteTheChunk) {
  // Chunk 1 (op a's) belongs to a device update {1, 11} and to a host
  // update {1, 2, 21..27} whose state does not fit. Written back right
  // after op a, chunk 1 would be made dirty again by the device update
  // and written back a second time when the host update takes it.
  SessionPlacement p(Policy::kAuto, PlacementConfig{}, 8 * kMiB, kMiB);
  const std::vector<uint64_t> device_set = {1, 11};
  const std::vector<uint64_t> host_set = {1, 2, 21, 22, 23, 24, 25, 26, 27};
  uint64_t seq = 0;
  auto op = [&](const std::string& key, uint64_t chunk) {
    OpContext ctx{.key = key, .seq = ++seq};
    const SessionPlacement::Touch t{chunk, kMiB, true};
    p.OnAcquire(&ctx, nullptr, {&t, 1});
  };
  op("a", 1);
  PlacedUpdate(p, device_set);
  op("b", 2);
  PlacedUpdate(p, host_set);
  p.OnStep();
  ASSERT_EQ(p.stats().state, PlacementState::kPlanned);
  ASSERT_TRUE(p.plan()->PlacedOnDevice(device_set));
  ASSERT_FALSE(p.plan()->PlacedOnDevice(host_set));
  op("a", 1);
  EXPECT_FALSE(p.WriteBackAhead(1));  // the device update still writes it
  EXPECT_TRUE(PlacedUpdate(p, device_set));
  EXPECT_TRUE(p.WriteBackAhead(1));  // now only the host update is left
  op("b", 2);
  EXPECT_FALSE(PlacedUpdate(p, host_set));
  EXPECT_FALSE(p.WriteBackAhead(1));
  // The next step awaits both again.
  p.OnStep();
  op("a", 1);
  EXPECT_FALSE(p.WriteBackAhead(1));
}

TEST(StaticPlacementTest, KeepsTheFirstFractionOfEachGroup) {
  PlacementConfig config;
  config.static_param_offload = 0.5;
  config.static_optim_offload = 1.0;
  SessionPlacement p(Policy::kStatic, config, 64 * kMiB, 2 * kMiB);
  for (uint64_t c = 1; c <= 4; ++c) p.OnChunkCreated(c, Group::kParam, kMiB);
  for (uint64_t c = 5; c <= 6; ++c) {
    p.OnChunkCreated(c, Group::kOptimState, kMiB);
  }
  EXPECT_TRUE(p.kept(1));
  EXPECT_TRUE(p.kept(2));
  EXPECT_FALSE(p.kept(3));
  EXPECT_FALSE(p.kept(5));
  // Offloaded chunks go first, whatever their age.
  std::vector<EvictionCandidate> c = {{1, 0, kMiB, false, 1},
                                      {3, 0, kMiB, false, 9}};
  EXPECT_EQ(p.ChooseVictim(c), 1u);
  // Kept ones only when nothing else can go.
  std::vector<EvictionCandidate> only_kept = {{1, 0, kMiB, false, 1}};
  EXPECT_EQ(p.ChooseVictim(only_kept), 0u);
}

// --- Inside the manager ----------------------------------------------------

class AutoManagerTest : public ::testing::Test {
 protected:
  void SetUp() override { MakeManager(/*link_gbps=*/0); }

  // A fresh manager over a 12 MiB sim device; link_gbps 0 = unthrottled.
  void MakeManager(double link_gbps) {
    manager_.reset();
    manager_ = NewSimManager({.host_bytes = 128 * kMiB,
                              .pool_bytes = 12 * kMiB,  // three 4 MiB chunks
                              .chunk_size = 4 * kMiB,
                              .link_gbps = link_gbps})
                   .manager;
    ASSERT_NE(manager_, nullptr);
  }

  void Open(PlacementConfig config) {
    auto s = manager_->OpenSession(
        {.policy = Policy::kAuto, .pid = getpid(), .placement = config});
    ASSERT_TRUE(s.ok()) << s.status();
    id_ = s->id;
    token_ = s->token;
  }

  // n tensors of 4 MiB, one chunk each; returns {tensor ids, chunk ids}.
  void RegisterChunks(int n) {
    std::vector<TensorSpec> specs;
    for (int i = 0; i < n; ++i) {
      specs.push_back({"c" + std::to_string(i),
                       DType::kU8,
                       {static_cast<int64_t>(4 * kMiB)},
                       Group::kParam});
    }
    auto r = manager_->Register(id_, token_, specs);
    ASSERT_TRUE(r.ok()) << r.status();
    for (const auto& t : r->tensors) {
      tensors_.push_back(t.tensor_id);
      chunks_.push_back(t.chunk_id);
    }
  }

  // One step: op i acquires (and releases) tensor sequence[i].
  void RunStep(const std::vector<int>& sequence) {
    for (size_t i = 0; i < sequence.size(); ++i) {
      OpContext op{.key = "op" + std::to_string(i), .seq = ++seq_};
      const uint64_t t = tensors_[sequence[i]];
      auto r = manager_->Acquire(id_, token_, {t}, AccessMode::kRead, &op);
      ASSERT_TRUE(r.ok()) << r.status();
      ASSERT_TRUE(manager_->Release(id_, token_, {t}, TensorState::kHold).ok());
    }
    ASSERT_TRUE(manager_->MarkStep(id_, token_).ok());
  }

  // Chunks evicted since residency event `from`, in order.
  std::vector<uint64_t> EvictedSince(size_t from) {
    auto tl = manager_->Timeline(id_, 0);
    EXPECT_TRUE(tl.ok());
    std::vector<uint64_t> out;
    for (const auto& e : tl->events) {
      if (e.sequence >= from && e.kind == ResidencyEventKind::kEvicted) {
        out.push_back(e.chunk_id);
      }
    }
    return out;
  }

  std::unique_ptr<MemoryManager> manager_;
  uint64_t id_ = 0;
  Token token_{};
  uint64_t seq_ = 0;
  std::vector<uint64_t> tensors_;
  std::vector<uint64_t> chunks_;
};

// Reference: LRU over step 0 from an empty device, then Belady (next use in
// the flattened future of repeated steps) over step 1; returns step 1's
// victims as indices into the sequence's chunk numbering.
std::vector<int> ReferenceVictims(const std::vector<int>& seq,
                                  size_t capacity) {
  std::vector<int> cache;  // LRU order: front = oldest
  for (int c : seq) {
    auto it = std::find(cache.begin(), cache.end(), c);
    if (it != cache.end()) {
      cache.erase(it);
    } else if (cache.size() == capacity) {
      cache.erase(cache.begin());
    }
    cache.push_back(c);
  }
  std::vector<int> future;
  for (int s = 0; s < 3; ++s)
    future.insert(future.end(), seq.begin(), seq.end());
  std::set<int> resident(cache.begin(), cache.end());
  std::vector<int> victims;
  for (size_t i = 0; i < seq.size(); ++i) {
    const int c = future[i];
    if (resident.contains(c)) continue;
    if (resident.size() == capacity) {
      int victim = -1;
      size_t best = 0;
      for (int r : resident) {
        size_t next = i + 1;
        while (next < future.size() && future[next] != r) ++next;
        if (next > best) {
          best = next;
          victim = r;
        }
      }
      resident.erase(victim);
      victims.push_back(victim);
    }
    resident.insert(c);
  }
  return victims;
}

TEST_F(AutoManagerTest, PlannedEvictionsEqualBelady) {
  PlacementConfig config;
  config.margin_ratio = 0;
  config.prefetch = false;  // demand loads only: compare the victims
  Open(config);
  RegisterChunks(6);
  const std::vector<std::vector<int>> traces = {
      {0, 1, 2, 3, 4, 5},
      {0, 1, 2, 3, 3, 2, 1, 0},
      {0, 1, 0, 2, 0, 3, 0, 4},
      {5, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2},
  };
  for (const auto& seq : traces) {
    // Re-open per trace so that each starts from an empty device.
    ASSERT_TRUE(manager_->CloseSession(id_, token_).ok());
    tensors_.clear();
    chunks_.clear();
    Open(config);
    RegisterChunks(6);
    RunStep(seq);  // warm-up (recorded; LRU meanwhile)
    auto stats = manager_->Stats(id_, token_);
    ASSERT_TRUE(stats.ok());
    ASSERT_TRUE(stats->placement.has_value());
    ASSERT_EQ(stats->placement->state, PlacementState::kPlanned);
    const size_t from = manager_->residency_events_recorded();
    RunStep(seq);
    std::vector<uint64_t> want;
    for (int v : ReferenceVictims(seq, 3)) want.push_back(chunks_[v]);
    EXPECT_EQ(EvictedSince(from), want);
  }
}

TEST_F(AutoManagerTest, UnknownOpsAndBadReportsNeverFail) {
  Open(PlacementConfig{});
  RegisterChunks(6);
  RunStep({0, 1, 2, 3, 4, 5});
  // A step of unknown keys, absurd non-model reports and no keys at all.
  for (int i = 0; i < 6; ++i) {
    OpContext op{.key = "never-seen-" + std::to_string(i),
                 .seq = ++seq_,
                 .non_model_bytes = std::numeric_limits<uint64_t>::max()};
    auto r = manager_->Acquire(id_, token_, {tensors_[i]},
                               AccessMode::kReadWrite, i % 2 ? &op : nullptr);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_TRUE(
        manager_->Release(id_, token_, {tensors_[i]}, TensorState::kHold).ok());
  }
  auto marked = manager_->MarkStep(id_, token_);
  ASSERT_TRUE(marked.ok());
  ASSERT_TRUE(marked->has_value());
  EXPECT_EQ((*marked)->state, PlacementState::kRecording);
  EXPECT_EQ((*marked)->replans, 1u);
  // An over-long key is refused clearly, and the session keeps working.
  OpContext huge{.key = std::string(4096, 'k'), .seq = ++seq_};
  auto bad =
      manager_->Acquire(id_, token_, {tensors_[0]}, AccessMode::kRead, &huge);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  RunStep({0, 1, 2, 3, 4, 5});
  auto st = manager_->Stats(id_, token_);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->placement->state, PlacementState::kPlanned);
}

TEST_F(AutoManagerTest, PrefetchLoadsTheNextOpsChunksAhead) {
  PlacementConfig config;
  config.margin_ratio = 0;
  Open(config);
  RegisterChunks(6);
  const std::vector<int> seq = {0, 1, 2, 3, 4, 5};
  RunStep(seq);
  RunStep(seq);
  auto st = manager_->Stats(id_, token_);
  ASSERT_TRUE(st.ok());
  EXPECT_GT(st->session.prefetches, 0u);
  // Prefetched chunks were acquired (hit or late); none were wasted.
  EXPECT_GT(st->session.prefetch_hits + st->session.prefetch_late, 0u);
  EXPECT_LE(st->session.prefetch_hits + st->session.prefetch_late,
            st->session.prefetches);
  EXPECT_EQ(st->session.prefetch_wasted, 0u);
  EXPECT_LE(st->session.peak_device_bytes, 12 * kMiB);
}

// On a link too slow for any prefetch to arrive in time, every prefetch is
// late, and the stats say which of them had only the op just before their
// use to arrive in (the plan had no room for them earlier) and which had
// more.
TEST_F(AutoManagerTest, LatePrefetchesAreSplitByTheirLead) {
  // Three slots. In the cycle over five chunks, the chunk to drop for the
  // next op's load is always the one just used (its next use is the
  // farthest), so each load can start only at the release before its op.
  // In the second trace chunks 0 and 1 stay resident and 2, 3, 4 take the
  // third slot in turn: each can be loaded as soon as the one before it is
  // released, two ops before its own use.
  const std::vector<int> cycle = {0, 1, 2, 3, 4};
  const std::vector<int> two_hot = {0, 1, 2, 0, 1, 3, 0, 1, 4};
  for (const auto* seq : {&cycle, &two_hot}) {
    SCOPED_TRACE(seq == &cycle ? "cycle" : "two hot");
    MakeManager(/*link_gbps=*/0.05);  // a 4 MiB load takes ~80 ms
    tensors_.clear();
    chunks_.clear();
    PlacementConfig config;
    config.margin_ratio = 0;
    Open(config);
    RegisterChunks(5);
    RunStep(*seq);
    RunStep(*seq);
    auto before = manager_->Stats(id_, token_);
    ASSERT_TRUE(before.ok());
    RunStep(*seq);
    auto after = manager_->Stats(id_, token_);
    ASSERT_TRUE(after.ok());
    const SessionStatsView& a = before->session;
    const SessionStatsView& b = after->session;
    const uint64_t late = b.prefetch_late - a.prefetch_late;
    const uint64_t short_lead =
        b.prefetch_late_short_lead - a.prefetch_late_short_lead;
    EXPECT_EQ(b.prefetch_hits - a.prefetch_hits, 0u);
    if (seq == &cycle) {
      EXPECT_GT(late, 0u);
      EXPECT_EQ(short_lead, late);
    } else {
      EXPECT_EQ(late, 3u);  // chunks 2, 3 and 4
      EXPECT_EQ(short_lead, 0u);
    }
  }
}

TEST_F(AutoManagerTest, PlacedUpdateFallsBackToTheHostWhenTheDeviceIsFull) {
  PlacementConfig config;
  config.margin_ratio = 0;
  config.prefetch = false;
  Open(config);
  RegisterChunks(2);  // chunk 0: the op's; chunk 1: the update's state
  auto step = [&](bool* on_device) {
    OpContext op{.key = "fwd", .seq = ++seq_};
    ASSERT_TRUE(
        manager_->Acquire(id_, token_, {tensors_[0]}, AccessMode::kRead, &op)
            .ok());
    ASSERT_TRUE(
        manager_->Release(id_, token_, {tensors_[0]}, TensorState::kHold).ok());
    auto placed = manager_->AcquireWherePlaced(id_, token_, {tensors_[1]},
                                               AccessMode::kReadWrite);
    ASSERT_TRUE(placed.ok()) << placed.status();
    *on_device = !placed->on_host;
    ASSERT_TRUE(
        manager_->Release(id_, token_, {tensors_[1]}, TensorState::kHold).ok());
    ASSERT_TRUE(manager_->MarkStep(id_, token_).ok());
  };
  bool on_device = true;
  step(&on_device);
  EXPECT_FALSE(on_device);  // recording
  step(&on_device);
  EXPECT_TRUE(on_device);  // planned: 4 MiB of state fits beside the op's
  // Another session takes the whole device for compute.
  auto other = manager_->OpenSession({.policy = Policy::kCpu, .pid = getpid()});
  ASSERT_TRUE(other.ok());
  std::vector<TensorSpec> specs;
  for (int i = 0; i < 3; ++i) {
    specs.push_back({"o" + std::to_string(i),
                     DType::kU8,
                     {static_cast<int64_t>(4 * kMiB)},
                     Group::kParam});
  }
  auto r = manager_->Register(other->id, other->token, specs);
  ASSERT_TRUE(r.ok());
  std::vector<uint64_t> ids;
  for (const auto& t : r->tensors) ids.push_back(t.tensor_id);
  ASSERT_TRUE(
      manager_->Acquire(other->id, other->token, ids, AccessMode::kRead).ok());
  // The plan says device; the device has no room: the host homes serve.
  auto placed = manager_->AcquireWherePlaced(id_, token_, {tensors_[1]},
                                             AccessMode::kReadWrite);
  ASSERT_TRUE(placed.ok()) << placed.status();
  EXPECT_TRUE(placed->on_host);
}

// Opens a session of `policy` (auto with `planner`) on the fixture's
// manager, registers n 4 MiB tensors and runs `steps` steps of `ops`, each
// op acquiring (read-write) the tensors it lists at once. Returns the
// bytes moved to the device in the last step, or the first error.
absl::StatusOr<uint64_t> RunPolicy(MemoryManager& manager, Policy policy,
                                   PlacementConfig config, int n,
                                   const std::vector<std::vector<int>>& ops,
                                   int steps, uint64_t non_model) {
  auto s = manager.OpenSession(
      {.policy = policy, .pid = getpid(), .placement = config});
  if (!s.ok()) return s.status();
  std::vector<TensorSpec> specs;
  for (int i = 0; i < n; ++i) {
    specs.push_back({"t" + std::to_string(i),
                     DType::kU8,
                     {static_cast<int64_t>(4 * kMiB)},
                     Group::kParam});
  }
  auto r = manager.Register(s->id, s->token, specs);
  if (!r.ok()) return r.status();
  uint64_t seq = 0, before = 0, moved = 0;
  for (int step = 0; step < steps; ++step) {
    auto st = manager.Stats(s->id, s->token);
    if (!st.ok()) return st.status();
    before = st->session.bytes_to_device;
    for (size_t i = 0; i < ops.size(); ++i) {
      std::vector<uint64_t> ids;
      for (int t : ops[i]) ids.push_back(r->tensors[t].tensor_id);
      OpContext op{.key = "op" + std::to_string(i),
                   .seq = ++seq,
                   .non_model_bytes = non_model};
      auto got =
          manager.Acquire(s->id, s->token, ids, AccessMode::kReadWrite, &op);
      if (!got.ok()) return got.status();
      absl::Status released =
          manager.Release(s->id, s->token, ids, TensorState::kHold);
      if (!released.ok()) return released;
    }
    auto marked = manager.MarkStep(s->id, s->token);
    if (!marked.ok()) return marked.status();
  }
  auto st = manager.Stats(s->id, s->token);
  if (!st.ok()) return st.status();
  moved = st->session.bytes_to_device - before;
  absl::Status closed = manager.CloseSession(s->id, s->token);
  if (!closed.ok()) return closed;
  return moved;
}

TEST_F(AutoManagerTest, MarginOfATinyPoolCostsNoSlot) {
  // Three 4 MiB chunks in a 12 MiB pool, used in a cycle: they all fit.
  // The default 5 % margin (0.6 MiB) is less than a slot: `auto` keeps all
  // three resident as `cpu` does, instead of reloading two every step.
  const std::vector<std::vector<int>> cycle = {{0}, {1}, {2}};
  auto cpu = RunPolicy(*manager_, Policy::kCpu, {}, 3, cycle, 3, 0);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_EQ(*cpu, 0u);
  auto auto_bytes = RunPolicy(*manager_, Policy::kAuto, {}, 3, cycle, 3, 0);
  ASSERT_TRUE(auto_bytes.ok()) << auto_bytes.status();
  EXPECT_EQ(*auto_bytes, 0u);
}

TEST_F(AutoManagerTest, AutoMovesNoMoreThanCpuOnForwardBackward) {
  // Six chunks through three slots, forward then backward: LRU is close
  // to optimal here; `auto` (no prefetch reserve is worth its cost on
  // this pattern) must not move more.
  const std::vector<std::vector<int>> fwd_bwd = {{0}, {1}, {2}, {3}, {4}, {5},
                                                 {5}, {4}, {3}, {2}, {1}, {0}};
  auto cpu = RunPolicy(*manager_, Policy::kCpu, {}, 6, fwd_bwd, 3, 0);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  auto auto_bytes = RunPolicy(*manager_, Policy::kAuto, {}, 6, fwd_bwd, 3, 0);
  ASSERT_TRUE(auto_bytes.ok()) << auto_bytes.status();
  EXPECT_LE(*auto_bytes, *cpu);
}

TEST_F(AutoManagerTest, EdgeOfCapacitySucceedsUnderEveryPolicy) {
  // Ops that take the whole device (three chunks at once) between single
  // chunk ops, with honest, filling and absurd non-model reports.
  const std::vector<std::vector<int>> edge = {{0, 1, 2}, {3},       {3, 4, 5},
                                              {0},       {5, 1, 3}, {2}};
  struct Case {
    Policy policy;
    PlannerKind planner;
  };
  const Case cases[] = {{Policy::kCpu, PlannerKind::kBelady},
                        {Policy::kAuto, PlannerKind::kBelady},
                        {Policy::kAuto, PlannerKind::kLru},
                        {Policy::kAuto, PlannerKind::kGeminiLike},
                        {Policy::kStatic, PlannerKind::kBelady}};
  for (const Case& c : cases) {
    for (uint64_t non_model : {uint64_t{0}, 12 * kMiB, ~uint64_t{0}}) {
      PlacementConfig config;
      config.planner = c.planner;
      config.static_param_offload = 0.5;
      auto moved =
          RunPolicy(*manager_, c.policy, config, 6, edge, 3, non_model);
      EXPECT_TRUE(moved.ok())
          << PolicyName(c.policy) << "/" << PlannerKindName(c.planner)
          << " non_model " << non_model << ": " << moved.status();
    }
  }
}

}  // namespace
}  // namespace tidepool
