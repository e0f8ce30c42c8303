#include "bench/policy/workload.h"

#include <algorithm>
#include <cmath>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"

ABSL_FLAG(double, tflops, 400, "modelled compute rate, TFLOP/s (bf16)");
ABSL_FLAG(double, hbm_gbps, 2000, "modelled device memory bandwidth (Adam)");
ABSL_FLAG(double, cpu_adam_gparams, 4.7,
          "CPU AdamW rate, Gparam/s (bench/adam on the H100 machine's "
          "16-core Xeon)");
ABSL_FLAG(std::string, optimizer, "hybrid",
          "hybrid: placed updates (GPU or CPU Adam, overlapped with "
          "backward); device: GPU Adam ops after backward");
ABSL_FLAG(int, batch, 8, "micro-batch size");
ABSL_FLAG(int, seq, 1024, "sequence length");

namespace tidepool::policy_bench {

const std::vector<ModelConfig>& Models() {
  static const std::vector<ModelConfig> models = {
      {"gpt2-xl", 48, 1600, 6400, 50257, 1024, false},
      {"opt-1.3b", 24, 2048, 8192, 50272, 2050, false},
      {"opt-2.7b", 32, 2560, 10240, 50272, 2050, false},
      {"opt-6.7b", 32, 4096, 16384, 50272, 2050, false},
      {"opt-13b", 40, 5120, 20480, 50272, 2050, false},
      {"llama2-7b", 32, 4096, 11008, 32000, 0, true},
      {"llama2-13b", 40, 5120, 13824, 32000, 0, true},
  };
  return models;
}

std::vector<Part> Parts(const ModelConfig& m) {
  const uint64_t h = m.hidden, f = m.ffn;
  std::vector<Part> parts;
  Part embed{"embed"};
  embed.params.push_back({"wte", uint64_t(m.vocab) * h});
  if (m.positions > 0)
    embed.params.push_back({"wpe", uint64_t(m.positions) * h});
  parts.push_back(embed);
  for (int l = 0; l < m.layers; ++l) {
    Part p{"layer" + std::to_string(l)};
    for (const char* w : {"q", "k", "v", "o"}) {
      p.params.push_back({absl::StrCat("attn.", w), h * h});
      if (!m.llama) p.params.push_back({absl::StrCat("attn.", w, ".b"), h});
    }
    if (m.llama) {
      p.params.push_back({"mlp.gate", h * f});
      p.params.push_back({"mlp.up", h * f});
      p.params.push_back({"mlp.down", f * h});
      p.params.push_back({"norm1", h});
      p.params.push_back({"norm2", h});
    } else {
      p.params.push_back({"mlp.fc1", h * f});
      p.params.push_back({"mlp.fc1.b", f});
      p.params.push_back({"mlp.fc2", f * h});
      p.params.push_back({"mlp.fc2.b", h});
      p.params.push_back({"ln1", 2 * h});
      p.params.push_back({"ln2", 2 * h});
    }
    parts.push_back(p);
  }
  Part head{"head"};
  head.params.push_back({"norm_f", m.llama ? h : 2 * h});
  if (m.llama) head.params.push_back({"lm_head", uint64_t(m.vocab) * h});
  parts.push_back(head);
  for (auto& p : parts) {
    for (const auto& [n, e] : p.params) p.elements += e;
  }
  return parts;
}

bool Hybrid() { return absl::GetFlag(FLAGS_optimizer) == "hybrid"; }

// AdamW on one part, full scale: on the device (reads grad, master, m, v;
// writes master, m, v, param) or on the CPU.
double DeviceAdamSeconds(const Part& p) {
  return double(p.elements) * (2 + 12 + 12 + 2) /
         (absl::GetFlag(FLAGS_hbm_gbps) * 1e9);
}
double CpuAdamSeconds(const Part& p) {
  return double(p.elements) / (absl::GetFlag(FLAGS_cpu_adam_gparams) * 1e9);
}

std::vector<ReplayOp> StepOps(const ModelConfig& m,
                              const std::vector<Part>& parts) {
  const double tokens =
      double(absl::GetFlag(FLAGS_batch)) * absl::GetFlag(FLAGS_seq);
  const double b = absl::GetFlag(FLAGS_batch), s = absl::GetFlag(FLAGS_seq);
  const double h = m.hidden, rate = absl::GetFlag(FLAGS_tflops) * 1e12;
  const double ckpt = 2 * tokens * h;      // a layer input, bf16
  const double working = 34 * tokens * h;  // one layer's activations
  const double attn_fwd = 4 * b * s * s * h;
  const int head = int(parts.size()) - 1;
  const bool tied = !m.llama;
  std::vector<ReplayOp> ops;
  ops.push_back({"embed/fwd", {0}, false, false, 2 * tokens * h / rate, ckpt});
  for (int l = 0; l < m.layers; ++l) {
    const double n = parts[l + 1].elements;
    ops.push_back({absl::StrCat("layer", l, "/fwd"),
                   {l + 1},
                   false,
                   false,
                   (2 * tokens * n + attn_fwd) / rate,
                   ckpt * (l + 1) + working});
  }
  const double logits = 6 * tokens * m.vocab;
  std::vector<int> head_parts = {head};
  if (tied) head_parts.push_back(0);
  ops.push_back({"head/fwd+bwd", head_parts, false, true,
                 6 * tokens * double(m.vocab) * h / rate,
                 ckpt * (m.layers + 1) + logits});
  for (int l = m.layers - 1; l >= 0; --l) {
    const double n = parts[l + 1].elements;
    ops.push_back({absl::StrCat("layer", l, "/bwd"),
                   {l + 1},
                   false,
                   true,
                   (8 * tokens * n + 3 * attn_fwd) / rate,
                   ckpt * (l + 1) + working + 2 * tokens * h});
  }
  ops.push_back({"embed/bwd", {0}, false, true, 2 * tokens * h / rate, 0});
  if (Hybrid()) return ops;  // updates are placed, not ops
  const double hbm = absl::GetFlag(FLAGS_hbm_gbps) * 1e9;
  for (size_t p = 0; p < parts.size(); ++p) {
    // AdamW reads grad, master, m, v and writes master, m, v, param.
    const double bytes = parts[p].elements * (2 + 12 + 12 + 2);
    ops.push_back(
        {parts[p].name + "/adam", {int(p)}, true, true, bytes / hbm, 0});
  }
  return ops;
}

absl::StatusOr<Registered> RegisterModel(Session& s,
                                         const std::vector<Part>& parts,
                                         double scale) {
  Registered r;
  auto scaled = [&](uint64_t elements, int bytes_per) {
    return std::max<int64_t>(
        256, std::llround(double(elements) * bytes_per / scale));
  };
  std::vector<TensorSpec> specs;
  for (const auto& p : parts) {
    for (const auto& [n, e] : p.params) {
      specs.push_back(
          {p.name + "." + n, DType::kU8, {scaled(e, 2)}, Group::kParam});
    }
  }
  for (const auto& p : parts) {
    for (const auto& [n, e] : p.params) {
      specs.push_back({p.name + "." + n + ".master",
                       DType::kU8,
                       {scaled(e, 4)},
                       Group::kMaster});
      specs.push_back({p.name + "." + n + ".m",
                       DType::kU8,
                       {scaled(e, 4)},
                       Group::kOptimState});
      specs.push_back({p.name + "." + n + ".v",
                       DType::kU8,
                       {scaled(e, 4)},
                       Group::kOptimState});
    }
  }
  auto got = s.Register(specs);
  if (!got.ok()) return got.status();
  r.params.resize(parts.size());
  r.optim.resize(parts.size());
  size_t k = 0;
  for (size_t p = 0; p < parts.size(); ++p) {
    for (size_t i = 0; i < parts[p].params.size(); ++i) {
      r.params[p].push_back((*got)[k++].id);
    }
  }
  for (size_t p = 0; p < parts.size(); ++p) {
    for (size_t i = 0; i < parts[p].params.size() * 3; ++i) {
      r.optim[p].push_back((*got)[k++].id);
    }
  }
  for (const auto& t : *got) r.tensor_chunk[t.id] = t.chunk_id;
  auto chunks = s.Chunks();
  if (!chunks.ok()) return chunks.status();
  for (const auto& c : *chunks) r.chunk_bytes[c.id] = c.bytes;
  return r;
}

std::vector<uint64_t> OpTensors(const ReplayOp& op, const Registered& r) {
  std::vector<uint64_t> out;
  for (int p : op.parts) {
    out.insert(out.end(), r.params[p].begin(), r.params[p].end());
    if (op.with_optim) {
      out.insert(out.end(), r.optim[p].begin(), r.optim[p].end());
    }
  }
  return out;
}

// One part's update: its parameters (holding the gradient) and optimizer
// state.
std::vector<uint64_t> UpdateTensors(int part, const Registered& r) {
  std::vector<uint64_t> out = r.params[part];
  out.insert(out.end(), r.optim[part].begin(), r.optim[part].end());
  return out;
}

// For each part, the op after which its update may start: the last op
// that uses any of its parameter chunks (a chunk is computed on in one
// place at a time, and parts share chunks at their edges).
std::vector<int> LastUse(const std::vector<ReplayOp>& ops,
                         const Registered& r) {
  std::map<uint64_t, int> chunk_last;
  for (size_t i = 0; i < ops.size(); ++i) {
    for (uint64_t t : OpTensors(ops[i], r)) {
      chunk_last[r.tensor_chunk.at(t)] = int(i);
    }
  }
  std::vector<int> last(r.params.size(), -1);
  for (size_t p = 0; p < r.params.size(); ++p) {
    for (uint64_t t : r.params[p]) {
      last[p] = std::max(last[p], chunk_last[r.tensor_chunk.at(t)]);
    }
  }
  return last;
}

// The trace the daemon would record, for offline Belady.
Trace BuildTrace(const std::vector<ReplayOp>& ops, const Registered& r,
                 double scale) {
  Trace t;
  for (const auto& op : ops) {
    TraceOp o{.key = op.key,
              .non_model_bytes = uint64_t(op.non_model_bytes / scale)};
    for (uint64_t tensor : OpTensors(op, r)) {
      const uint64_t c = r.tensor_chunk.at(tensor);
      if (std::find(o.chunks.begin(), o.chunks.end(), c) == o.chunks.end()) {
        o.chunks.push_back(c);
        if (op.write) o.written.push_back(c);
      }
      t.chunk_bytes[c] = r.chunk_bytes.at(c);
    }
    t.ops.push_back(std::move(o));
  }
  if (Hybrid()) {
    // In the order the replay submits them (as the daemon records them).
    const std::vector<int> last = LastUse(ops, r);
    std::vector<int> order(r.params.size());
    for (size_t p = 0; p < order.size(); ++p) order[p] = int(p);
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return last[a] < last[b]; });
    for (int p : order) {
      PlacedSet set;
      for (uint64_t tensor : UpdateTensors(p, r)) {
        const uint64_t c = r.tensor_chunk.at(tensor);
        set.chunks.push_back(c);
        t.chunk_bytes[c] = r.chunk_bytes.at(c);
      }
      std::sort(set.chunks.begin(), set.chunks.end());
      set.chunks.erase(std::unique(set.chunks.begin(), set.chunks.end()),
                       set.chunks.end());
      set.written = set.chunks;
      if (std::none_of(t.placed.begin(), t.placed.end(),
                       [&](const auto& s) { return s.chunks == set.chunks; })) {
        t.placed.push_back(std::move(set));
      }
    }
  }
  return t;
}

}  // namespace tidepool::policy_bench
