// bench_policy's workload: real architectures' tensor sizes and access
// order, generated from their published configurations; one training step
// as replayed ops (see bench_policy.cc for what the step is); the model
// registered in a session; and the trace the daemon records of it.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/status/statusor.h"
#include "daemon/policy/trace.h"
#include "tidepool/session.h"

ABSL_DECLARE_FLAG(double, tflops);
ABSL_DECLARE_FLAG(double, hbm_gbps);
ABSL_DECLARE_FLAG(double, cpu_adam_gparams);
ABSL_DECLARE_FLAG(std::string, optimizer);
ABSL_DECLARE_FLAG(int, batch);
ABSL_DECLARE_FLAG(int, seq);

namespace tidepool::policy_bench {

struct ModelConfig {
  std::string name;
  int layers, hidden, ffn, vocab, positions;
  bool llama;  // SwiGLU, RMSNorm, no biases, untied head
};

// GPT-2 XL, OPT-1.3B/2.7B/6.7B/13B, Llama-2-7B/13B.
const std::vector<ModelConfig>& Models();

// One model part (embedding, a layer, the head): its parameter tensors.
struct Part {
  std::string name;
  std::vector<std::pair<std::string, uint64_t>> params;  // name, elements
  uint64_t elements = 0;
};

// Embedding, the layers, the head.
std::vector<Part> Parts(const ModelConfig& m);

// --optimizer=hybrid: updates are placed acquires, not ops.
bool Hybrid();

// AdamW on one part, full scale: on the device (reads grad, master, m, v;
// writes master, m, v, param) or on the CPU.
double DeviceAdamSeconds(const Part& p);
double CpuAdamSeconds(const Part& p);

// The replayed step, in full-model units.
struct ReplayOp {
  std::string key;
  std::vector<int> parts;   // whose tensors it acquires
  bool with_optim = false;  // also master, m, v of those parts
  bool write = false;
  double compute_s = 0;
  double non_model_bytes = 0;
};

std::vector<ReplayOp> StepOps(const ModelConfig& m,
                              const std::vector<Part>& parts);

struct Registered {
  // Per part: its tensor ids (params), and its optimizer tensors.
  std::vector<std::vector<uint64_t>> params, optim;
  std::map<uint64_t, uint64_t> tensor_chunk;
  std::map<uint64_t, uint64_t> chunk_bytes;
};

absl::StatusOr<Registered> RegisterModel(Session& s,
                                         const std::vector<Part>& parts,
                                         double scale);

// The tensors an op acquires.
std::vector<uint64_t> OpTensors(const ReplayOp& op, const Registered& r);

// One part's update: its parameters (holding the gradient) and optimizer
// state.
std::vector<uint64_t> UpdateTensors(int part, const Registered& r);

// For each part, the op after which its update may start: the last op
// that uses any of its parameter chunks (a chunk is computed on in one
// place at a time, and parts share chunks at their edges).
std::vector<int> LastUse(const std::vector<ReplayOp>& ops, const Registered& r);

// The trace the daemon records of the step (ops and placed sets).
Trace BuildTrace(const std::vector<ReplayOp>& ops, const Registered& r,
                 double scale);

}  // namespace tidepool::policy_bench
