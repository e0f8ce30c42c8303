// bench_policy: replays one training step of real architectures (tensor
// sizes and access order generated from their published configurations)
// against a real tidepoold on the sim backend with a modelled 25 GB/s link,
// and compares placement policies at device capacities of 25/50/75% of the
// model state: bytes moved each way, stall time and step time, next to a
// proven lower bound of the bytes of each run's own touches (the bench
// exits 1 if a run moves fewer: LowerBoundBytes in daemon/policy) and the
// step-time bounds (device compute, CPU Adam, bound bytes / link, and the
// critical path backward -> update -> upload -> next forward); each row
// also compares auto with the best other policy.
//
//   bench_policy                      # every model, 25/50/75%
//   bench_policy --models=opt-1.3b --capacities=25 --steps=2
//
// The workload, per step (bf16 mixed precision, activation checkpointing):
//   embed/fwd, layer{i}/fwd (params read), head (final norm + LM head +
//   loss, fwd and bwd), layer{i}/bwd in reverse (recompute + backward,
//   params read and gradients written into the param chunk, as Gemini
//   reuses it), embed/bwd; and one AdamW update per part (its param chunk
//   holding the gradient, fp32 master, Adam m and v, all read and written).
// --optimizer=hybrid (the default) runs each update as libtidepool's
// ShardedAdamW does: AcquireWherePlaced from a worker thread as soon as
// the part's last backward op is done, on the device (GPU Adam at
// --hbm_gbps) or in the host homes (CPU Adam at --cpu_adam_gparams) as the
// policy places it, overlapped with the rest of backward; the step ends when
// the worker is done. The Gemini-like run does what Gemini does: the whole
// optimizer step after backward, CPU Adam on host-resident state
// (gpu_margin_mem_ratio = 0). --optimizer=device: every update is a GPU
// Adam op after backward, so optimizer state pages through the device.
// Non-model bytes per op: the layer-input checkpoints held so far plus the
// op's working set (34*b*s*h bytes per layer, Korthikanti et al. with flash
// attention; logits at 6 bytes per element for the head). Compute per op:
// FLOPs (6*N*tokens per step for the matmuls, 8 with recompute, plus
// attention) at --tflops; Adam at --hbm_gbps.
//
// Scaling: each model is scaled by S so that its model state is
// --scaled_state_mib: bytes and compute time are divided by S together, so
// every ratio (compute : transfer : capacity) is the full model's. Time is
// also dilated by --dilation (the sim link runs at 25/dilation GB/s and
// every sleep is dilation times longer) so that the host's memcpy and RPCs
// stay well below the modelled costs. Reported bytes and times are scaled
// back to the full model on a 25 GB/s link.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/policy/workload.h"
#include "daemon/policy/planner.h"
#include "tests/support/process.h"
#include "tidepool/session.h"

ABSL_FLAG(std::string, models,
          "gpt2-xl,opt-1.3b,opt-2.7b,opt-6.7b,opt-13b,llama2-7b,llama2-13b",
          "models to replay");
ABSL_FLAG(std::string, capacities, "25,50,75",
          "device capacities, % of the model state");
ABSL_FLAG(std::string, policies, "auto,static,gemini,lru", "policies to run");
ABSL_FLAG(double, link_gbps, 25, "modelled host<->device link, GB/s");
ABSL_FLAG(double, margin, 0.05, "auto/lru safety margin (of capacity)");
ABSL_FLAG(int, scaled_state_mib, 768, "model state after scaling, MiB");
ABSL_FLAG(double, dilation, 4, "time dilation of the replay");
ABSL_FLAG(int, warmup, 2,
          "warm-up steps (not measured): the recorded one and a planned one");
ABSL_FLAG(int, steps, 2, "measured steps");

namespace tidepool {
namespace {

using namespace policy_bench;  // NOLINT: the bench's own workload

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kGranularity = 2 * kMiB;  // chunk sizes: multiples
// What the daemon rounds a chunk's device bytes to on the sim backend (its
// allocation granularity, daemon/backend/sim_backend.cc): budgets, the
// plan and the bound count room in it, as the daemon does.
constexpr uint64_t kDeviceGranularity = 64 << 10;

struct RunResult {
  bool ok = false;
  std::string error;
  double to_device = 0, to_host = 0;  // bytes per step, full scale
  double stall = 0, step = 0;         // seconds per step, full scale
  uint64_t prefetch_hits = 0, prefetch_late = 0, prefetch_wasted = 0;
  uint64_t prefetch_late_short = 0;          // of prefetch_late: one op of lead
  int device_updates = 0, host_updates = 0;  // last measured step
  std::vector<int> where;  // per part: 1 device, 0 host (hybrid)
  std::string placement;   // the planner's state at the end
  std::string detail;
};

using Clock = std::chrono::steady_clock;

// The machine's load (uptime's three averages), printed with the figures.
std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string one, five, fifteen;
  in >> one >> five >> fifteen;
  return in ? absl::StrCat(one, " ", five, " ", fifteen) : "unknown";
}

// Modelled compute: sleeps, then spins out the last stretch, since the
// timer's overshoot (tens of microseconds) would otherwise add up over the
// hundreds of short ops of a scaled step.
void Compute(double seconds) {
  const auto end = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(seconds));
  constexpr auto kSpin = std::chrono::microseconds(200);
  if (end - Clock::now() > kSpin) std::this_thread::sleep_until(end - kSpin);
  while (Clock::now() < end) std::this_thread::yield();
}

// Runs the placed updates of a step as ShardedAdamW's worker does: each
// part's update starts once backward is done with it and runs while
// backward goes on. `inline_updates`: in the caller's thread instead
// (Gemini's optimizer step after backward).
class Updater {
 public:
  Updater(Session& session, const Registered& reg,
          const std::vector<Part>& parts, double scale, double dilation,
          bool inline_updates)
      : session_(session),
        reg_(reg),
        parts_(parts),
        scale_(scale),
        dilation_(dilation),
        inline_(inline_updates),
        where_(parts.size()) {
    for (auto& w : where_) w = -1;
    if (!inline_) worker_ = std::thread([this] { Loop(); });
  }
  ~Updater() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (worker_.joinable()) worker_.join();
  }

  void Submit(int part) {
    if (inline_) {
      Run(part);
      return;
    }
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(part);
    ++pending_;
    cv_.notify_all();
  }
  // Waits for every submitted update; the first error, if any.
  absl::Status Drain() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return pending_ == 0; });
    return status_;
  }
  int on_device() const { return on_device_; }
  int on_host() const { return on_host_; }
  double acquire_wall() const { return acquire_wall_; }
  // Per part, where its update last ran: 1 device, 0 host, -1 not yet.
  std::vector<int> where() const {
    std::vector<int> out;
    for (const auto& w : where_) out.push_back(w);
    return out;
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;
      const int part = queue_.front();
      queue_.pop_front();
      lock.unlock();
      Run(part);
      lock.lock();
      --pending_;
      cv_.notify_all();
    }
  }
  void Run(int part) {
    const std::vector<uint64_t> tensors = UpdateTensors(part, reg_);
    const auto t0 = Clock::now();
    auto got = session_.AcquireWherePlaced(tensors, AccessMode::kReadWrite);
    acquire_wall_ += std::chrono::duration<double>(Clock::now() - t0).count();
    absl::Status status = got.status();
    if (got.ok()) {
      ++(got->on_device ? on_device_ : on_host_);
      where_[part] = got->on_device ? 1 : 0;
      const double full = got->on_device ? DeviceAdamSeconds(parts_[part])
                                         : CpuAdamSeconds(parts_[part]);
      Compute(full / scale_ * dilation_);
      status = session_.Release(tensors, TensorState::kHold);
    }
    if (!status.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      if (status_.ok()) {
        status_ = absl::Status(
            status.code(),
            absl::StrCat(parts_[part].name, "/update: ", status.message()));
      }
    }
  }

  Session& session_;
  const Registered& reg_;
  const std::vector<Part>& parts_;
  const double scale_, dilation_;
  const bool inline_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<int> queue_;
  int pending_ = 0;
  bool stop_ = false;
  absl::Status status_;
  std::atomic<int> on_device_{0}, on_host_{0};
  std::atomic<double> acquire_wall_{0};
  std::vector<std::atomic<int>> where_;
  std::thread worker_;
};

RunResult RunPolicy(const testing::DaemonProcess& daemon,
                    const std::string& policy, const ModelConfig& model,
                    const std::vector<Part>& parts,
                    const std::vector<ReplayOp>& ops, double scale,
                    const std::pair<double, double>& static_offload) {
  RunResult out;
  SessionOptions options;
  options.socket = daemon.socket();
  options.client_name = "bench_policy";
  PlacementOptions placement;
  placement.margin_ratio = absl::GetFlag(FLAGS_margin);
  if (policy == "static") {
    options.policy = Policy::kStatic;
    placement.static_param_offload = static_offload.first;
    placement.static_optim_offload = static_offload.second;
  } else {
    options.policy = Policy::kAuto;
    if (policy == "gemini") placement.planner = Planner::kGeminiLike;
    if (policy == "lru") placement.planner = Planner::kLru;
  }
  options.placement = placement;
  auto session = Session::Open(options);
  if (!session.ok()) {
    out.error = session.status().ToString();
    return out;
  }
  Session& s = **session;
  auto reg = RegisterModel(s, parts, scale);
  if (!reg.ok()) {
    out.error = reg.status().ToString();
    return out;
  }
  const double dilation = absl::GetFlag(FLAGS_dilation);
  const int warmup = absl::GetFlag(FLAGS_warmup);
  const int steps = absl::GetFlag(FLAGS_steps);
  SessionStats before;
  double stall_wall = 0;
  const auto unit = [&](double wall) { return wall / dilation * scale; };
  Clock::time_point measure_start;
  const bool hybrid = Hybrid();
  const bool after_backward = policy == "gemini";
  const std::vector<int> last_use = LastUse(ops, *reg);
  Updater updater(s, *reg, parts, scale, dilation, after_backward);
  int device_before = 0, host_before = 0;
  std::map<std::string, double> op_stall;  // measured steps, wall seconds
  for (int step = 0; step < warmup + steps; ++step) {
    if (step == warmup) {
      auto st = s.Stats();
      if (!st.ok()) {
        out.error = st.status().ToString();
        return out;
      }
      before = *st;
      stall_wall = 0;
      measure_start = Clock::now();
    }
    for (const auto& op : ops) {
      const std::vector<uint64_t> tensors = OpTensors(op, *reg);
      s.BeginOp(op.key, uint64_t(op.non_model_bytes / scale));
      const auto t0 = Clock::now();
      auto got = s.Acquire(
          tensors, op.write ? AccessMode::kReadWrite : AccessMode::kRead);
      const double waited =
          std::chrono::duration<double>(Clock::now() - t0).count();
      stall_wall += waited;
      if (step >= warmup) op_stall[op.key] += waited;
      if (!got.ok()) {
        out.error = absl::StrCat(op.key, ": ", got.status().ToString());
        return out;
      }
      Compute(op.compute_s / scale * dilation);
      auto released = s.Release(tensors, TensorState::kHold);
      if (!released.ok()) {
        out.error = released.ToString();
        return out;
      }
      if (hybrid && !after_backward) {
        const int i = int(&op - ops.data());
        for (size_t p = 0; p < parts.size(); ++p) {
          if (last_use[p] == i) updater.Submit(int(p));
        }
      }
    }
    if (hybrid) {
      const double acquire_before = updater.acquire_wall();
      if (after_backward) {
        for (size_t p = parts.size(); p-- > 0;) updater.Submit(int(p));
        stall_wall += updater.acquire_wall() - acquire_before;
      }
      const auto t0 = Clock::now();
      absl::Status drained = updater.Drain();
      const double waited =
          std::chrono::duration<double>(Clock::now() - t0).count();
      stall_wall += waited;
      if (step >= warmup) op_stall["(optimizer tail)"] += waited;
      if (!drained.ok()) {
        out.error = drained.ToString();
        return out;
      }
      out.device_updates = updater.on_device() - device_before;
      out.host_updates = updater.on_host() - host_before;
      device_before = updater.on_device();
      host_before = updater.on_host();
    }
    auto marked = s.MarkStep();
    if (!marked.ok()) {
      out.error = marked.status().ToString();
      return out;
    }
  }
  const double wall =
      std::chrono::duration<double>(Clock::now() - measure_start).count();
  auto after = s.Stats();
  if (!after.ok()) {
    out.error = after.status().ToString();
    return out;
  }
  out.ok = true;
  out.where = updater.where();
  out.to_device =
      double(after->bytes_to_device - before.bytes_to_device) * scale / steps;
  out.to_host =
      double(after->bytes_to_host - before.bytes_to_host) * scale / steps;
  out.stall = unit(stall_wall) / steps;
  out.step = unit(wall) / steps;
  out.prefetch_hits = after->prefetch_hits - before.prefetch_hits;
  out.prefetch_late = after->prefetch_late - before.prefetch_late;
  out.prefetch_wasted = after->prefetch_wasted - before.prefetch_wasted;
  out.prefetch_late_short =
      after->prefetch_late_short_lead - before.prefetch_late_short_lead;
  std::vector<std::pair<double, std::string>> worst;
  for (const auto& [key, wall] : op_stall) worst.push_back({wall, key});
  std::sort(worst.rbegin(), worst.rend());
  std::string stalls;
  for (size_t i = 0; i < worst.size() && i < 4; ++i) {
    absl::StrAppendFormat(&stalls, " %s %.3f s", worst[i].second,
                          unit(worst[i].first) / steps);
  }
  out.detail = absl::StrFormat(
      "evictions %d (clean %d), prefetches %d (%.1f GB); most stalled:%s",
      after->evictions - before.evictions,
      after->clean_evictions - before.clean_evictions,
      after->prefetches - before.prefetches,
      double(after->prefetch_bytes - before.prefetch_bytes) * scale / 1e9,
      stalls);
  auto p = s.Placement();
  if (p.ok()) {
    out.placement = p->state;
    if (p->replans > 0) {
      out.placement +=
          absl::StrCat(" (", p->replans, " replans: ", p->last_divergence, ")");
    }
  }
  return out;
}

// The step-time bounds of a row, full scale: each resource alone, and the
// dependency chain from a part's last backward op through its update (and
// the upload of its updated parameters) to its first forward op of the
// next step.
struct StepBounds {
  double device = 0, cpu_adam = 0, link = 0, chain = 0;
  std::string chain_part;
  double max() const { return std::max({device, cpu_adam, link, chain}); }
  std::string binding() const {
    const double m = max();
    if (chain == m) return "critical path via " + chain_part;
    if (device == m) return "device compute";
    if (link == m) return "link";
    return "CPU Adam";
  }
};

// The chain bound: the device runs the ops one after another without
// stalls; one worker runs the updates in the order they are submitted
// (each once its part's last op is done, on the device at GPU Adam's rate
// or on the host at CPU Adam's, as `where` says; unknown: the cheaper);
// the next step's first op that uses a host-updated part waits for the
// update and for its parameter chunks to cross the link again. The step
// is at least the time from its start to that op's start, next step.
double ChainBound(const std::vector<ReplayOp>& ops,
                  const std::vector<Part>& parts, const Registered& reg,
                  const std::vector<int>& where, double link,
                  std::string* part_name) {
  const std::vector<int> last = LastUse(ops, reg);
  std::vector<double> end(ops.size());
  double t = 0;
  for (size_t i = 0; i < ops.size(); ++i) end[i] = t += ops[i].compute_s;
  std::vector<int> order(parts.size());
  for (size_t p = 0; p < order.size(); ++p) order[p] = int(p);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return last[a] < last[b]; });
  double worker = 0, bound = 0;
  for (int p : order) {
    std::set<uint64_t> chunks;
    for (uint64_t tensor : reg.params[p]) {
      chunks.insert(reg.tensor_chunk.at(tensor));
    }
    double upload = 0;
    for (uint64_t c : chunks) upload += double(reg.chunk_bytes.at(c));
    upload /= link;  // bytes here are full scale already (see caller)
    const double gpu = DeviceAdamSeconds(parts[p]);
    const double cpu = CpuAdamSeconds(parts[p]);
    const int w = p < int(where.size()) ? where[p] : -1;
    const bool device = w == 1 || (w == -1 && gpu <= cpu + upload);
    const double start = std::max(worker, last[p] >= 0 ? end[last[p]] : 0.0);
    worker = start + (device ? gpu : cpu);
    const double ready = worker + (device ? 0.0 : upload);
    // The first op of the next step that touches the part's parameters.
    size_t first = ops.size();
    for (size_t i = 0; i < ops.size() && first == ops.size(); ++i) {
      for (int q : ops[i].parts) {
        if (q == p) first = i;
      }
    }
    if (first == ops.size()) continue;
    const double before = first > 0 ? end[first - 1] : 0.0;
    if (ready - before > bound) {
      bound = ready - before;
      *part_name = parts[p].name + (device ? " (GPU Adam)" : " (CPU Adam)");
    }
  }
  return bound;
}

int Main() {
  const double link = absl::GetFlag(FLAGS_link_gbps) * 1e9;
  const double dilation = absl::GetFlag(FLAGS_dilation);
  const uint64_t target =
      uint64_t(absl::GetFlag(FLAGS_scaled_state_mib)) * kMiB;
  std::vector<std::string> want_models =
      absl::StrSplit(absl::GetFlag(FLAGS_models), ',');
  std::vector<std::string> policies =
      absl::StrSplit(absl::GetFlag(FLAGS_policies), ',');
  if (absl::GetFlag(FLAGS_optimizer) != "hybrid" &&
      absl::GetFlag(FLAGS_optimizer) != "device") {
    absl::PrintF("--optimizer must be hybrid or device\n");
    return 2;
  }
  std::vector<int> capacities;
  for (absl::string_view c :
       absl::StrSplit(absl::GetFlag(FLAGS_capacities), ',')) {
    capacities.push_back(std::stoi(std::string(c)));
  }
  const int measured = absl::GetFlag(FLAGS_steps);
  absl::PrintF(
      "bench_policy: trace replay on tidepoold (sim backend), modelled link "
      "%.0f GB/s, compute %.0f TFLOP/s, GPU Adam at %.0f GB/s HBM, CPU Adam "
      "at %.2f Gparam/s, batch %d x seq %d, bf16 + fp32 master/m/v "
      "(14 B/param), checkpointed activations, margin %.2f, optimizer %s.\n",
      link / 1e9, absl::GetFlag(FLAGS_tflops), absl::GetFlag(FLAGS_hbm_gbps),
      absl::GetFlag(FLAGS_cpu_adam_gparams), absl::GetFlag(FLAGS_batch),
      absl::GetFlag(FLAGS_seq), absl::GetFlag(FLAGS_margin),
      absl::GetFlag(FLAGS_optimizer));
  absl::PrintF(
      "Each model is scaled by S to %d MiB of model state (bytes and compute "
      "time / S together) and replayed %.0fx slower (sim link %.2f GB/s); "
      "figures below are per step, scaled back to the full model on the "
      "%.0f GB/s link. %d warm-up + %d measured step(s). Load before: %s\n",
      absl::GetFlag(FLAGS_scaled_state_mib), dilation, link / 1e9 / dilation,
      link / 1e9, absl::GetFlag(FLAGS_warmup), measured, LoadAverage());
  absl::PrintF(
      "bound = proven lower bound on the bytes of exactly the touches this "
      "policy's run makes (the step's ops, its updates' drops) within the "
      "per-op budget (capacity - non-model - margin, in whole slots), over "
      "the %d measured step(s) from any start; plan = auto's plan replayed "
      "offline. Step bounds: device compute incl. GPU Adam, CPU Adam, the "
      "bound's bytes / link, and the critical path (last backward op -> "
      "update -> upload -> next forward), for auto's placement. prefetch = "
      "the share of prefetches in time / the same leaving out the late ones "
      "issued only an op ahead (no room earlier).\n\n",
      measured);
  absl::PrintF("%-11s %4s %-7s %9s %9s %8s %8s %8s %8s %7s %13s %7s\n", "model",
               "cap", "policy", "H2D GB", "D2H GB", "xBound", "stall s",
               "step s", "xLB", "xGemini", "prefetch", "GPU-upd");
  int violations = 0;
  int auto_losses = 0;
  for (const auto& model : Models()) {
    if (std::find(want_models.begin(), want_models.end(), model.name) ==
        want_models.end()) {
      continue;
    }
    const std::vector<Part> parts = Parts(model);
    uint64_t elements = 0;
    for (const auto& p : parts) elements += p.elements;
    const double state = double(elements) * 14;
    const double scale = state / double(target);
    const std::vector<ReplayOp> ops = StepOps(model, parts);
    double compute = 0, peak_non_model = 0, max_op = 0;
    for (const auto& op : ops) {
      compute += op.compute_s;
      peak_non_model = std::max(peak_non_model, op.non_model_bytes);
    }
    // Chunks: one layer's bf16 parameters, rounded up to the slot size.
    const uint64_t layer_bytes = uint64_t(parts[1].elements * 2 / scale);
    const uint64_t chunk =
        std::max<uint64_t>(kGranularity, (layer_bytes + kGranularity - 1) /
                                             kGranularity * kGranularity);
    absl::PrintF(
        "%s: %.2fB params, model state %.1f GB, S = %.0f, chunk %s "
        "(%.0f MB full scale), compute %.2f s/step, peak non-model "
        "%.1f GB\n",
        model.name, elements / 1e9, state / 1e9, scale,
        absl::StrCat(chunk / kMiB, " MiB"), chunk * scale / 1e6, compute,
        peak_non_model / 1e9);
    for (int pct : capacities) {
      const uint64_t capacity =
          std::max<uint64_t>(kGranularity, uint64_t(target * pct / 100) /
                                               kGranularity * kGranularity);
      testing::DaemonOptions d;
      d.sim_capacity = absl::StrCat(capacity / kMiB, "MiB");
      d.host_pool =
          absl::StrCat(2 * target / kMiB + 256, "MiB");  // packing waste
      d.chunk_size = absl::StrCat(chunk / kMiB, "MiB");
      d.extra_args = {absl::StrCat("--sim_link_gbps=", link / 1e9 / dilation)};
      auto daemon = testing::DaemonProcess::Start(d);
      if (!daemon.ok()) {
        absl::PrintF("cannot start tidepoold: %s\n",
                     daemon.status().ToString());
        return 1;
      }
      // The trace of a probe registration (same packing as every run).
      double plan_in = 0, plan_out = 0;
      std::vector<int> auto_where(parts.size(), -1);
      std::pair<double, double> static_offload{0, 1};
      std::optional<Registered> reg;
      std::optional<Trace> trace;
      std::vector<uint64_t> budgets;
      {
        SessionOptions o;
        o.socket = (*daemon)->socket();
        o.policy = Policy::kCpu;
        auto probe = Session::Open(o);
        if (!probe.ok()) {
          absl::PrintF("probe: %s\n", probe.status().ToString());
          return 1;
        }
        auto got = RegisterModel(**probe, parts, scale);
        if (!got.ok()) {
          absl::PrintF("register: %s\n", got.status().ToString());
          return 1;
        }
        reg = std::move(*got);
        trace = BuildTrace(ops, *reg, scale);
        uint64_t reserve = 0;
        for (const auto& [c, bytes] : trace->chunk_bytes) {
          reserve =
              std::max(reserve, (bytes + kDeviceGranularity - 1) /
                                    kDeviceGranularity * kDeviceGranularity);
        }
        const PlanOptions base{.pool_capacity = capacity,
                               .margin_ratio = absl::GetFlag(FLAGS_margin),
                               .granularity = kDeviceGranularity};
        {
          const Plan budget_plan(*trace, base);
          for (size_t i = 0; i < budget_plan.size(); ++i) {
            budgets.push_back(budget_plan.Budget(i));
          }
        }
        // The plan auto makes, chosen the same way.
        const PlanChoice choice = ChoosePlanOptions(*trace, base, reserve);
        Plan plan(*trace, choice.options);
        plan_in = double(choice.chosen.bytes_to_device) * scale;
        plan_out = double(choice.chosen.bytes_to_host) * scale;
        if (getenv("BENCH_POLICY_VERBOSE") != nullptr) {
          uint64_t min_budget = ~0ull;
          for (size_t i = 0; i < plan.size(); ++i) {
            min_budget = std::min(min_budget, plan.DemandBudget(i));
          }
          std::string placed;
          for (const auto& set : plan.trace().placed) {
            placed += plan.PlacedOnDevice(set.chunks) ? 'D' : 'h';
          }
          absl::PrintF(
              "    plan: reserve %d MiB (blocked without %.1f GB), %d of %d "
              "placed sets on the device, %s (room for %d latest first; "
              "%d MiB kept; %d candidates replayed, all on the host %.1f "
              "GB), smallest demand budget %d MiB of %d MiB, offline LRU "
              "%.1f GB; in recorded order %s\n",
              choice.options.prefetch_reserve / kMiB,
              double(choice.blocked_without_reserve) * scale / 1e9,
              plan.placed_on_device(), plan.trace().placed.size(),
              choice.options.device_set_order ==
                      PlanOptions::DeviceSetOrder::kChunkOrder
                  ? "in chunk order"
                  : "latest first",
              choice.device_sets_allowed, plan.kept_bytes() / kMiB,
              choice.candidates,
              double(choice.no_device_sets.moved()) * scale / 1e9,
              min_budget / kMiB, capacity / kMiB,
              double(choice.lru.moved()) * scale / 1e9, placed);
        }
        if (Hybrid()) {
          for (size_t p = 0; p < parts.size(); ++p) {
            std::vector<uint64_t> chunks;
            for (uint64_t t : UpdateTensors(int(p), *reg)) {
              chunks.push_back(reg->tensor_chunk.at(t));
            }
            auto_where[p] = plan.PlacedOnDevice(chunks) ? 1 : 0;
          }
        }
        // static: keep what fits beside the peak non-model bytes and room
        // to stream the largest op, parameters first (ZeRO-Offload-like).
        for (const auto& op : plan.trace().ops) {
          double bytes = 0;
          for (uint64_t c : op.chunks)
            bytes += double(plan.Rounded(plan.ChunkBytes(c)));
          max_op = std::max(max_op, bytes);
        }
        const double avail =
            std::max(0.0, capacity * (1 - absl::GetFlag(FLAGS_margin)) -
                              peak_non_model / scale - max_op);
        const double param_bytes = double(elements) * 2 / scale;
        const double optim_bytes = double(elements) * 12 / scale;
        const double keep_params = std::min(avail, param_bytes);
        const double keep_optim = std::min(avail - keep_params, optim_bytes);
        static_offload = {1 - keep_params / param_bytes,
                          1 - keep_optim / optim_bytes};
      }
      // The proven bound of the touches a run made: its ops, and the drops
      // of what its host updates wrote (`where`: per part, 0 = host).
      auto bound = [&](const std::vector<int>& where) {
        std::unordered_set<uint64_t> dropped;
        if (Hybrid()) {
          for (size_t p = 0; p < parts.size(); ++p) {
            if (p < where.size() && where[p] == 1) continue;
            for (uint64_t t : UpdateTensors(int(p), *reg)) {
              dropped.insert(reg->tensor_chunk.at(t));
            }
          }
        }
        const ByteBound b = LowerBoundBytes(*trace, budgets, kDeviceGranularity,
                                            dropped, measured);
        return std::pair<double, double>{double(b.to_device) * scale / measured,
                                         double(b.to_host) * scale / measured};
      };
      absl::PrintF("%-11s %3d%% %-7s %9.1f %9.1f %8s %8s %8s %8s %7s %9s %7s\n",
                   model.name, pct, "plan", plan_in / 1e9, plan_out / 1e9, "-",
                   "-", "-", "-", "-", "-", "-");
      std::map<std::string, RunResult> results;
      for (const auto& policy : policies) {
        results[policy] = RunPolicy(**daemon, policy, model, parts, ops, scale,
                                    static_offload);
      }
      // Step bounds for auto's placement (as planned if auto did not run).
      std::vector<int> where = auto_where;
      auto a = results.find("auto");
      if (a != results.end() && a->second.ok && Hybrid())
        where = a->second.where;
      StepBounds sb;
      {
        double device_updates = 0, cpu_updates = 0;
        for (size_t p = 0; p < parts.size() && Hybrid(); ++p) {
          if (where[p] == 1) {
            device_updates += DeviceAdamSeconds(parts[p]);
          } else {
            cpu_updates += CpuAdamSeconds(parts[p]);
          }
        }
        const auto [in, out] = bound(where);
        sb.device = compute + device_updates;
        sb.cpu_adam = cpu_updates;
        sb.link = (in + out) / link;
        if (Hybrid()) {
          Registered full = *reg;  // chunk bytes at full scale
          for (auto& [c, b] : full.chunk_bytes) b = uint64_t(double(b) * scale);
          sb.chain = ChainBound(ops, parts, full, where, link, &sb.chain_part);
        }
      }
      const double lb = sb.max();
      double best_other_bytes = 0, best_other_step = 0;
      std::string best_bytes_policy, best_step_policy;
      for (const auto& policy : policies) {
        const RunResult& r = results[policy];
        if (!r.ok) {
          absl::PrintF("%-11s %3d%% %-7s FAILED: %s\n", model.name, pct, policy,
                       r.error);
          continue;
        }
        const double moved = r.to_device + r.to_host;
        const auto [bin, bout] = bound(r.where);
        std::string vs_gemini = "-";
        auto g = results.find("gemini");
        if (g != results.end() && g->second.ok && policy != "gemini") {
          vs_gemini = absl::StrFormat("%.2f", g->second.step / r.step);
        }
        std::string prefetch = "-";
        if (r.prefetch_hits + r.prefetch_late > 0) {
          // The second figure leaves out the late ones issued only an op
          // ahead (no room earlier): how the link kept up where it could.
          const uint64_t with_lead =
              r.prefetch_hits + r.prefetch_late - r.prefetch_late_short;
          prefetch = absl::StrFormat(
              "%.0f%%/%s hit",
              100.0 * r.prefetch_hits /
                  double(r.prefetch_hits + r.prefetch_late),
              with_lead == 0
                  ? std::string("-")
                  : absl::StrFormat("%.0f%%",
                                    100.0 * r.prefetch_hits / with_lead));
        }
        const std::string updates =
            Hybrid() ? absl::StrCat(r.device_updates, "/",
                                    r.device_updates + r.host_updates)
                     : "-";
        absl::PrintF(
            "%-11s %3d%% %-7s %9.1f %9.1f %8.2f %8.2f %8.2f %8.2f "
            "%7s %13s %7s\n",
            model.name, pct, policy, r.to_device / 1e9, r.to_host / 1e9,
            bin + bout > 0 ? moved / (bin + bout) : 0.0, r.stall, r.step,
            r.step / lb, vs_gemini, prefetch, updates);
        // Bytes are counted exactly by the daemon; 1 part in 10^6 absorbs
        // the scaling's rounding.
        if (moved < (bin + bout) * (1 - 1e-6)) {
          ++violations;
          absl::PrintF(
              "!!! BOUND VIOLATED: %s at %d%%, %s moved %.3f GB < the proven "
              "lower bound %.3f GB of its own touches: the bound or the "
              "daemon's byte counts are wrong\n",
              model.name, pct, policy, moved / 1e9, (bin + bout) / 1e9);
        }
        if (getenv("BENCH_POLICY_VERBOSE") != nullptr) {
          absl::PrintF(
              "    %s: bound %.1f + %.1f GB, placement %s, prefetch wasted "
              "%d, %s\n",
              policy, bin / 1e9, bout / 1e9, r.placement, r.prefetch_wasted,
              r.detail);
        }
        if (policy == "auto") continue;
        if (best_bytes_policy.empty() || moved < best_other_bytes) {
          best_other_bytes = moved;
          best_bytes_policy = policy;
        }
        if (best_step_policy.empty() || r.step < best_other_step) {
          best_other_step = r.step;
          best_step_policy = policy;
        }
      }
      if (a != results.end() && a->second.ok && !best_bytes_policy.empty()) {
        const double moved = a->second.to_device + a->second.to_host;
        const bool lose = moved > best_other_bytes * 1.001;
        auto_losses += lose;
        absl::PrintF(
            "%-11s %3d%% auto vs best other: bytes %.3fx (%s, %.2f GB)%s, "
            "step %.2fx (%s, %.2f s)\n",
            model.name, pct, moved / best_other_bytes, best_bytes_policy,
            best_other_bytes / 1e9, lose ? " MORE" : "",
            a->second.step / best_other_step, best_step_policy,
            best_other_step);
      }
      if (Hybrid()) {
        absl::PrintF(
            "%-11s %3d%% LB %.2f s, binds: %s (device %.2f s, CPU Adam %.2f "
            "s, link %.2f s, critical path %.2f s via %s)\n",
            model.name, pct, lb, sb.binding(), sb.device, sb.cpu_adam, sb.link,
            sb.chain, sb.chain_part);
      } else {
        absl::PrintF(
            "%-11s %3d%% LB %.2f s, binds: %s (device %.2f s incl. GPU "
            "Adam, link %.2f s)\n",
            model.name, pct, lb, sb.binding(), sb.device, sb.link);
      }
    }
  }
  absl::PrintF(
      "\nxBound: bytes moved (both ways) / the proven lower bound of the "
      "policy's own touches (>= 1 always). xLB: step time / the largest "
      "step-time bound. xGemini: Gemini-like step time / this policy's "
      "(>1: faster than Gemini-like). stall: the trainer's time in Acquire "
      "waiting for bytes (incl. the RPC) and, hybrid, for the optimizer at "
      "the step's end. GPU-upd: updates placed on the device / all. auto "
      "moved more bytes than the best other policy in %d row(s). Load "
      "after: %s\n",
      auto_losses, LoadAverage());
  if (violations > 0) {
    absl::PrintF(
        "\n!!! bench_policy FAILED: %d run(s) moved fewer bytes than the "
        "proven lower bound of their own workload.\n",
        violations);
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace tidepool

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return tidepool::Main();
}
