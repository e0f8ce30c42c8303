// One rank of a data-parallel job for optimizer_test: opens a session on
// the given tidepoold, a Gloo communicator, and a ShardedAdamW over three
// blocks (fp32, fp32, bf16); optionally loads a checkpoint, trains steps
// [--from, --to) and saves one; rank 0 dumps the parameters.
//
// Gradients are integers / 256 split into integer parts across ranks, so
// every partial sum is exact: the summed gradient is bit-identical at any
// world size, and so are runs that differ only in how the state was
// sharded. Block 2 gets no gradient on odd steps (its own step count lags).
//
//   optimizer_rank SOCKET RANK WORLD STORE FROM TO LOAD_DIR SAVE_DIR DUMP
//   (empty LOAD_DIR / SAVE_DIR / DUMP: skip)
//
// Or rank 1 of a two-rank reduce-scatter whose rank 0 (the test process,
// STOP_PID) stalls: see LateReduceScatter.
//
//   optimizer_rank --late-reduce-scatter STORE STOP_PID SHARD ROUNDS
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/half.h"
#include "tests/support/tcp_sockets.h"
#include "tidepool/communicator.h"
#include "tidepool/optimizer.h"
#include "tidepool/session.h"

namespace tidepool {
namespace {

const std::vector<size_t> kSizes = {999, 4000, 37};
const std::vector<DType> kTypes = {DType::kF32, DType::kF32, DType::kBF16};

int Fail(const char* what, const absl::Status& s) {
  std::fprintf(stderr, "optimizer_rank: %s: %s\n", what, s.ToString().c_str());
  return 1;
}

// The global gradient's element i of block b at `step`, times 256.
int GlobalGrad(int step, int b, size_t i) {
  return static_cast<int>((i * 2654435761u + step * 40503u + b * 977u) % 255) -
         127;
}

// Rank r's integer part: all ranks but 0 take k / world, rank 0 the rest.
int Part(int k, int rank, int world) {
  const int q = k / world;
  return rank == 0 ? k - (world - 1) * q : q;
}

absl::Status Put(Session& s, const ParamBlock& b, const std::vector<float>& x) {
  auto got = s.Acquire({&b.tensor_id, 1}, AccessMode::kReadWrite);
  if (!got.ok()) return got.status();
  for (size_t i = 0; i < b.count; ++i) {
    if (b.dtype == DType::kF32) {
      static_cast<float*>((*got)[0].data)[i] = x[i];
    } else {
      static_cast<uint16_t*>((*got)[0].data)[i] = kernels::F32ToBF16Bits(x[i]);
    }
  }
  return s.Release({&b.tensor_id, 1}, TensorState::kHoldAfterBwd);
}

using testing::CapTcpBuffers;
using testing::LateReduceScatterValue;

// Rank 1 comes late to each reduce-scatter (rank 0 has long sent its
// part) and rank 0 stalls (SIGSTOP, as a descheduled process would) for
// 300 ms just as rank 1 starts sending: rank 1's send to rank 0 is then
// still in flight when its own part has arrived and been summed. Checks
// rank 1's own shard; rank 0 checks its own.
int LateReduceScatter(const std::string& store, pid_t stop, size_t shard,
                      int rounds) {
  auto comm = OpenGlooCommunicator({.rank = 1, .world = 2, .store_dir = store});
  if (!comm.ok()) return Fail("gloo", comm.status());
  CapTcpBuffers(64 << 10);
  if (auto s = (*comm)->Barrier(); !s.ok()) return Fail("barrier", s);
  std::vector<float> send(2 * shard), recv(shard);
  for (int k = 0; k < rounds; ++k) {
    for (size_t i = 0; i < send.size(); ++i)
      send[i] = LateReduceScatterValue(1, i, k);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    if (::kill(stop, SIGSTOP) != 0) {
      return Fail("kill", absl::InternalError("SIGSTOP"));
    }
    std::thread resume([stop] {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      ::kill(stop, SIGCONT);
    });
    absl::Status s =
        (*comm)->ReduceScatterSum(send.data(), recv.data(), shard, DType::kF32);
    resume.join();
    if (!s.ok()) return Fail("reduce-scatter", s);
    for (size_t j = 0; j < shard; ++j) {
      const float want = LateReduceScatterValue(0, shard + j, k) +
                         LateReduceScatterValue(1, shard + j, k);
      if (recv[j] != want) {
        std::fprintf(stderr, "optimizer_rank: round %d element %zu: %g != %g\n",
                     k, j, recv[j], want);
        return 1;
      }
    }
  }
  return 0;
}

int Main(int argc, char** argv) {
  if (argc == 6 && std::string(argv[1]) == "--late-reduce-scatter") {
    return LateReduceScatter(argv[2], std::atoi(argv[3]),
                             std::strtoull(argv[4], nullptr, 10),
                             std::atoi(argv[5]));
  }
  if (argc != 10) {
    std::fprintf(stderr, "usage: see optimizer_rank.cc\n");
    return 2;
  }
  const std::string socket = argv[1];
  const int rank = std::atoi(argv[2]), world = std::atoi(argv[3]);
  const std::string store = argv[4];
  const int from = std::atoi(argv[5]), to = std::atoi(argv[6]);
  const std::string load_dir = argv[7], save_dir = argv[8], dump = argv[9];

  SessionOptions so;
  so.socket = socket;
  so.policy = Policy::kCpu;
  auto session = Session::Open(so);
  if (!session.ok()) return Fail("session", session.status());
  auto comm =
      OpenGlooCommunicator({.rank = rank, .world = world, .store_dir = store});
  if (!comm.ok()) return Fail("gloo", comm.status());

  std::vector<TensorSpec> specs;
  for (size_t b = 0; b < kSizes.size(); ++b) {
    specs.push_back({absl::StrCat("p", b),
                     kTypes[b],
                     {static_cast<int64_t>(kSizes[b])},
                     Group::kParam});
  }
  auto infos = (*session)->Register(specs);
  if (!infos.ok()) return Fail("register", infos.status());
  std::vector<ParamBlock> blocks;
  for (size_t b = 0; b < kSizes.size(); ++b) {
    blocks.push_back(
        {(*infos)[b].id, kSizes[b], kTypes[b], (*infos)[b].chunk_id});
  }
  ShardedAdamWOptions o{.lr = 1e-2f, .weight_decay = 0.01f};
  auto opt = ShardedAdamW::Create(session->get(), comm->get(), blocks, o);
  if (!opt.ok()) return Fail("create", opt.status());
  for (size_t b = 0; b < kSizes.size(); ++b) {
    std::vector<float> init(kSizes[b]);
    for (size_t i = 0; i < init.size(); ++i) init[i] = 0.01f * (i % 97) - 0.5f;
    if (auto s = Put(**session, blocks[b], init); !s.ok()) {
      return Fail("init", s);
    }
  }
  if (auto s = (*opt)->InitFromParams(); !s.ok()) return Fail("init", s);
  if (!load_dir.empty()) {
    if (auto s = (*opt)->LoadCheckpoint(load_dir); !s.ok()) {
      return Fail("load", s);
    }
    if ((*opt)->step() != from) {
      std::fprintf(stderr, "optimizer_rank: loaded step %lld, want %d\n",
                   static_cast<long long>((*opt)->step()), from);
      return 1;
    }
  }
  for (int step = from; step < to; ++step) {
    for (int b = static_cast<int>(kSizes.size()) - 1; b >= 0; --b) {
      if (b == 2 && step % 2 == 1) continue;
      std::vector<float> g(kSizes[b]);
      for (size_t i = 0; i < g.size(); ++i) {
        g[i] = Part(GlobalGrad(step, b, i), rank, world) / 256.0f;
      }
      if (auto s = Put(**session, blocks[b], g); !s.ok()) {
        return Fail("grad", s);
      }
      if (auto s = (*opt)->OnGradientsReady(b); !s.ok()) {
        return Fail("report", s);
      }
    }
    if (auto r = (*opt)->Step(); !r.ok()) return Fail("step", r.status());
  }
  if (!save_dir.empty()) {
    if (auto s = (*opt)->SaveCheckpoint(save_dir); !s.ok()) {
      return Fail("save", s);
    }
  }
  if (rank == 0 && !dump.empty()) {
    std::ofstream out(dump, std::ios::binary | std::ios::trunc);
    for (const ParamBlock& b : blocks) {
      auto got = (*session)->Acquire({&b.tensor_id, 1}, AccessMode::kRead);
      if (!got.ok()) return Fail("dump", got.status());
      out.write(static_cast<const char*>((*got)[0].data),
                b.count * DTypeSize(b.dtype));
      auto r = (*session)->Release({&b.tensor_id, 1}, TensorState::kHold);
      if (!r.ok()) return Fail("dump", r);
    }
    if (!out) return Fail("dump", absl::DataLossError(dump));
  }
  return 0;
}

}  // namespace
}  // namespace tidepool

int main(int argc, char** argv) { return tidepool::Main(argc, argv); }
