// ShardedAdamW against a real tidepoold (sim backend) in a world of one:
// the update equals plain AdamW, clipping, fp16 overflow skip, unused
// parameters, checkpoint round trip; the loss scaler. The Gloo
// communicator has gloo_communicator_test.cc.
#include "tidepool/optimizer.h"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/half.h"
#include "tests/support/process.h"
#include "tidepool/communicator.h"
#include "tidepool/session.h"

namespace tidepool {
namespace {

using testing::DaemonOptions;
using testing::DaemonProcess;

// Plain AdamW in double, torch.optim.AdamW's formulation.
struct PlainAdamW {
  std::vector<double> p, m, v;
  int64_t step = 0;
  void Update(const std::vector<double>& g, const ShardedAdamWOptions& o) {
    ++step;
    const double bc1 = 1 - std::pow(double(o.beta1), double(step));
    const double bc2 = 1 - std::pow(double(o.beta2), double(step));
    for (size_t i = 0; i < p.size(); ++i) {
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * g[i];
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * g[i] * g[i];
      p[i] *= 1 - double(o.lr) * o.weight_decay;
      p[i] -= o.lr / bc1 * m[i] / (std::sqrt(v[i] / bc2) + o.eps);
    }
  }
};

std::filesystem::path TempDir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() /
             ("tidepool-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

class OptimizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = DaemonProcess::Start(DaemonOptions{});
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
    session_ = OpenSession();
    ASSERT_NE(session_, nullptr);
  }

  std::unique_ptr<Session> OpenSession(Policy policy = Policy::kCpu) {
    SessionOptions o;
    o.socket = daemon_->socket();
    o.policy = policy;
    auto s = Session::Open(o);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }

  // Registers one parameter tensor per size and returns the blocks.
  std::vector<ParamBlock> Blocks(Session& s, const std::vector<size_t>& sizes,
                                 DType dtype) {
    std::vector<TensorSpec> specs;
    for (size_t i = 0; i < sizes.size(); ++i) {
      specs.push_back({absl::StrCat("p", i),
                       dtype,
                       {static_cast<int64_t>(sizes[i])},
                       Group::kParam});
    }
    auto t = s.Register(specs);
    EXPECT_TRUE(t.ok()) << t.status();
    std::vector<ParamBlock> blocks;
    for (size_t i = 0; i < sizes.size(); ++i) {
      blocks.push_back({(*t)[i].id, sizes[i], dtype, (*t)[i].chunk_id});
    }
    return blocks;
  }

  // Writes values (as floats, converted to the block's dtype) into a
  // block's tensor: parameters before InitFromParams, gradients after.
  void Write(Session& s, const ParamBlock& b, const std::vector<float>& x) {
    auto got = s.Acquire({&b.tensor_id, 1}, AccessMode::kReadWrite);
    ASSERT_TRUE(got.ok()) << got.status();
    void* p = (*got)[0].data;
    for (size_t i = 0; i < b.count; ++i) {
      if (b.dtype == DType::kF32) {
        static_cast<float*>(p)[i] = x[i];
      } else if (b.dtype == DType::kBF16) {
        static_cast<uint16_t*>(p)[i] = kernels::F32ToBF16Bits(x[i]);
      } else {
        static_cast<uint16_t*>(p)[i] = kernels::F32ToF16Bits(x[i]);
      }
    }
    ASSERT_TRUE(s.Release({&b.tensor_id, 1}, TensorState::kHoldAfterBwd).ok());
  }

  std::vector<float> Read(Session& s, const ParamBlock& b) {
    auto got = s.Acquire({&b.tensor_id, 1}, AccessMode::kRead);
    EXPECT_TRUE(got.ok()) << got.status();
    std::vector<float> x(b.count);
    const void* p = (*got)[0].data;
    for (size_t i = 0; i < b.count; ++i) {
      if (b.dtype == DType::kF32) {
        x[i] = static_cast<const float*>(p)[i];
      } else if (b.dtype == DType::kBF16) {
        x[i] = kernels::BF16BitsToF32(static_cast<const uint16_t*>(p)[i]);
      } else {
        x[i] = kernels::F16BitsToF32(static_cast<const uint16_t*>(p)[i]);
      }
    }
    EXPECT_TRUE(s.Release({&b.tensor_id, 1}, TensorState::kHold).ok());
    return x;
  }

  static std::vector<float> Values(size_t n, int seed, float scale) {
    std::vector<float> x(n);
    for (size_t i = 0; i < n; ++i) {
      x[i] = scale * std::sin(0.37f * (i + 1) + seed);
    }
    return x;
  }

  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<Session> session_;
  std::unique_ptr<Communicator> local_ = MakeLocalCommunicator();
};

TEST_F(OptimizerTest, MatchesPlainAdamW) {
  // Overlapped with and without chunk ids (unknown: all blocks one chunk),
  // and inline.
  for (int mode = 0; mode < 3; ++mode) {
    const bool overlap = mode < 2;
    SCOPED_TRACE(mode == 0   ? "overlap"
                 : mode == 1 ? "overlap, no chunk ids"
                             : "inline");
    auto s = OpenSession();
    ASSERT_NE(s, nullptr);
    const std::vector<size_t> sizes = {1000, 37, 4099};
    auto blocks = Blocks(*s, sizes, DType::kF32);
    if (mode == 1) {
      for (ParamBlock& b : blocks) b.chunk_id = 0;
    }
    ShardedAdamWOptions o{.lr = 1e-2f, .weight_decay = 0.1f};
    o.overlap = overlap;
    auto opt = ShardedAdamW::Create(s.get(), local_.get(), blocks, o);
    ASSERT_TRUE(opt.ok()) << opt.status();
    std::vector<PlainAdamW> ref(sizes.size());
    for (size_t b = 0; b < sizes.size(); ++b) {
      auto init = Values(sizes[b], 10 + b, 1.0f);
      Write(*s, blocks[b], init);
      ref[b].p.assign(init.begin(), init.end());
      ref[b].m.assign(sizes[b], 0);
      ref[b].v.assign(sizes[b], 0);
    }
    ASSERT_TRUE((*opt)->InitFromParams().ok());
    for (int step = 0; step < 4; ++step) {
      for (int b = static_cast<int>(sizes.size()) - 1; b >= 0; --b) {
        auto g = Values(sizes[b], 100 * step + b, 0.5f);
        Write(*s, blocks[b], g);
        ASSERT_TRUE((*opt)->OnGradientsReady(b).ok());
        ref[b].Update(std::vector<double>(g.begin(), g.end()), o);
      }
      auto r = (*opt)->Step();
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_TRUE(r->applied);
      EXPECT_EQ(r->blocks_updated, 3);
      EXPECT_EQ(r->step, step + 1);
    }
    for (size_t b = 0; b < sizes.size(); ++b) {
      auto got = Read(*s, blocks[b]);
      for (size_t i = 0; i < sizes[b]; ++i) {
        ASSERT_NEAR(got[i], ref[b].p[i], 2e-6 * (1 + std::fabs(ref[b].p[i])))
            << "block " << b << " element " << i;
      }
    }
  }
}

TEST_F(OptimizerTest, MastersFromValuesAndAScheduledLearningRate) {
  // Masters come from the given fp32 values, not from the parameter tensor
  // (which holds something else here); a new learning rate applies to the
  // updates after it.
  const std::vector<size_t> sizes = {513, 64};
  auto blocks = Blocks(*session_, sizes, DType::kF32);
  ShardedAdamWOptions o{.lr = 1e-2f, .weight_decay = 0.05f};
  auto opt = ShardedAdamW::Create(session_.get(), local_.get(), blocks, o);
  ASSERT_TRUE(opt.ok()) << opt.status();
  std::vector<PlainAdamW> ref(sizes.size());
  for (size_t b = 0; b < sizes.size(); ++b) {
    Write(*session_, blocks[b], Values(sizes[b], 99, 5.0f));  // not used
    auto init = Values(sizes[b], 3 + b, 1.0f);
    ASSERT_TRUE((*opt)->InitFromValues(b, init).ok());
    ref[b].p.assign(init.begin(), init.end());
    ref[b].m.assign(sizes[b], 0);
    ref[b].v.assign(sizes[b], 0);
  }
  EXPECT_EQ((*opt)->InitFromValues(0, std::vector<float>(7)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*opt)->InitFromValues(2, std::vector<float>(7)).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ((*opt)->SetLearningRate(-1).code(),
            absl::StatusCode::kInvalidArgument);
  for (int step = 0; step < 3; ++step) {
    ShardedAdamWOptions now = o;
    now.lr = step == 0 ? 1e-2f : 3e-3f / step;
    if (step > 0) {
      ASSERT_TRUE((*opt)->SetLearningRate(now.lr).ok());
    }
    EXPECT_EQ((*opt)->learning_rate(), now.lr);
    for (int b = 1; b >= 0; --b) {
      auto g = Values(sizes[b], 10 * step + b, 0.5f);
      Write(*session_, blocks[b], g);
      ASSERT_TRUE((*opt)->OnGradientsReady(b).ok());
      ref[b].Update(std::vector<double>(g.begin(), g.end()), now);
    }
    ASSERT_TRUE((*opt)->Step().ok());
  }
  for (size_t b = 0; b < sizes.size(); ++b) {
    auto got = Read(*session_, blocks[b]);
    for (size_t i = 0; i < sizes[b]; ++i) {
      ASSERT_NEAR(got[i], ref[b].p[i], 2e-6 * (1 + std::fabs(ref[b].p[i])))
          << "block " << b << " element " << i;
    }
  }
}

TEST_F(OptimizerTest, GlobalNormClipping) {
  auto blocks = Blocks(*session_, {300, 500}, DType::kF32);
  ShardedAdamWOptions o{.lr = 1e-2f, .max_grad_norm = 0.1f};
  auto opt = ShardedAdamW::Create(session_.get(), local_.get(), blocks, o);
  ASSERT_TRUE(opt.ok()) << opt.status();
  std::vector<PlainAdamW> ref(2);
  std::vector<std::vector<float>> grads;
  double sum_sq = 0;
  for (int b = 0; b < 2; ++b) {
    auto init = Values(blocks[b].count, b, 1.0f);
    Write(*session_, blocks[b], init);
    ref[b].p.assign(init.begin(), init.end());
    ref[b].m.assign(init.size(), 0);
    ref[b].v.assign(init.size(), 0);
    grads.push_back(Values(blocks[b].count, 7 + b, 2.0f));
    for (float g : grads.back()) sum_sq += double(g) * g;
  }
  ASSERT_TRUE((*opt)->InitFromParams().ok());
  for (int b = 0; b < 2; ++b) {
    Write(*session_, blocks[b], grads[b]);
    ASSERT_TRUE((*opt)->OnGradientsReady(b).ok());
  }
  auto r = (*opt)->Step();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NEAR(r->grad_norm, std::sqrt(sum_sq), 1e-3);
  const double clip = 0.1 / (std::sqrt(sum_sq) + 1e-6);
  for (int b = 0; b < 2; ++b) {
    std::vector<double> g(grads[b].begin(), grads[b].end());
    for (double& x : g) x *= clip;
    ref[b].Update(g, o);
    auto got = Read(*session_, blocks[b]);
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_NEAR(got[i], ref[b].p[i], 2e-6 * (1 + std::fabs(ref[b].p[i])));
    }
  }
}

TEST_F(OptimizerTest, Fp16OverflowSkipsTheStepAndBacksOff) {
  auto blocks = Blocks(*session_, {256}, DType::kF16);
  ShardedAdamWOptions o{.lr = 1e-2f};
  o.loss_scale.init_scale = 1024.0f;
  o.loss_scale.growth_interval = 2;
  auto opt = ShardedAdamW::Create(session_.get(), local_.get(), blocks, o);
  ASSERT_TRUE(opt.ok()) << opt.status();
  Write(*session_, blocks[0], Values(256, 1, 1.0f));
  ASSERT_TRUE((*opt)->InitFromParams().ok());
  const auto before = Read(*session_, blocks[0]);
  EXPECT_EQ((*opt)->loss_scale(), 1024.0f);

  auto g = Values(256, 2, 1024.0f * 0.01f);
  g[17] = INFINITY;  // overflowed in fp16
  Write(*session_, blocks[0], g);
  ASSERT_TRUE((*opt)->OnGradientsReady(0).ok());
  auto r = (*opt)->Step();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->applied);
  EXPECT_EQ(r->step, 0);
  EXPECT_EQ((*opt)->loss_scale(), 512.0f);
  // The gradient overwrote the parameter memory; the skipped step puts the
  // parameters back from the unchanged master copy.
  EXPECT_EQ(Read(*session_, blocks[0]), before);

  // Two good steps: applied, and the scale grows back.
  for (int i = 0; i < 2; ++i) {
    Write(*session_, blocks[0], Values(256, 3 + i, 512.0f * 0.01f));
    ASSERT_TRUE((*opt)->OnGradientsReady(0).ok());
    r = (*opt)->Step();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->applied);
  }
  EXPECT_EQ((*opt)->step(), 2);
  EXPECT_EQ((*opt)->loss_scale(), 1024.0f);
  EXPECT_NE(Read(*session_, blocks[0]), before);
}

TEST_F(OptimizerTest, UnusedParametersAreLeftAloneWithoutError) {
  auto blocks = Blocks(*session_, {128, 64}, DType::kBF16);
  ShardedAdamWOptions o{.lr = 1e-2f, .weight_decay = 0.5f};
  auto opt = ShardedAdamW::Create(session_.get(), local_.get(), blocks, o);
  ASSERT_TRUE(opt.ok()) << opt.status();
  Write(*session_, blocks[0], Values(128, 1, 1.0f));
  Write(*session_, blocks[1], Values(64, 2, 1.0f));
  ASSERT_TRUE((*opt)->InitFromParams().ok());
  const auto unused_before = Read(*session_, blocks[1]);
  for (int step = 0; step < 3; ++step) {
    Write(*session_, blocks[0], Values(128, 10 + step, 0.1f));
    ASSERT_TRUE((*opt)->OnGradientsReady(0).ok());
    auto r = (*opt)->Step();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->blocks_updated, 1);
    EXPECT_EQ(r->blocks_without_grad, 1);
  }
  EXPECT_EQ(Read(*session_, blocks[1]), unused_before);
  // A step with no gradients at all is fine too.
  auto r = (*opt)->Step();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->blocks_updated, 0);
  // When block 1 finally gets a gradient, it takes its own first Adam step
  // (bias correction as for step 1), like a torch parameter first used late.
  auto g = Values(64, 5, 0.1f);
  Write(*session_, blocks[1], g);
  ASSERT_TRUE((*opt)->OnGradientsReady(1).ok());
  ASSERT_TRUE((*opt)->Step().ok());
  PlainAdamW ref;
  ref.p.assign(unused_before.begin(), unused_before.end());
  ref.m.assign(64, 0);
  ref.v.assign(64, 0);
  ref.Update(std::vector<double>(g.begin(), g.end()), o);
  auto got = Read(*session_, blocks[1]);
  for (size_t i = 0; i < 64; ++i) {
    EXPECT_NEAR(got[i], ref.p[i], 1e-2 * (1 + std::fabs(ref.p[i])));  // bf16
  }
}

TEST_F(OptimizerTest, ReportingABlockTwiceIsAnError) {
  auto blocks = Blocks(*session_, {16}, DType::kF32);
  auto opt = ShardedAdamW::Create(session_.get(), local_.get(), blocks, {});
  ASSERT_TRUE(opt.ok());
  ASSERT_TRUE((*opt)->InitFromParams().ok());
  ASSERT_TRUE((*opt)->OnGradientsReady(0).ok());
  auto again = (*opt)->OnGradientsReady(0);
  EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*opt)->OnGradientsReady(5).code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE((*opt)->Step().ok());
}

TEST_F(OptimizerTest, CheckpointRoundTripResumesBitIdentically) {
  const auto dir = TempDir("ckpt");
  const std::vector<size_t> sizes = {999, 4000};
  auto grad = [&](int step, int b) {
    return Values(sizes[b], 31 * step + b, 0.3f);
  };
  auto train = [&](Session& s, ShardedAdamW& opt,
                   const std::vector<ParamBlock>& blocks, int from, int to) {
    for (int step = from; step < to; ++step) {
      for (int b = 1; b >= 0; --b) {
        Write(s, blocks[b], grad(step, b));
        ASSERT_TRUE(opt.OnGradientsReady(b).ok());
      }
      auto r = opt.Step();
      ASSERT_TRUE(r.ok()) << r.status();
    }
  };
  ShardedAdamWOptions o{.lr = 5e-3f, .weight_decay = 0.01f};
  o.loss_scale.dynamic = true;  // exercise the scaler state too
  o.loss_scale.init_scale = 8.0f;
  o.loss_scale.growth_interval = 3;
  std::vector<std::vector<float>> expected;
  {
    auto blocks = Blocks(*session_, sizes, DType::kBF16);
    auto opt = ShardedAdamW::Create(session_.get(), local_.get(), blocks, o);
    ASSERT_TRUE(opt.ok());
    for (int b = 0; b < 2; ++b) {
      Write(*session_, blocks[b], Values(sizes[b], b, 1.0f));
    }
    ASSERT_TRUE((*opt)->InitFromParams().ok());
    train(*session_, **opt, blocks, 0, 4);
    ASSERT_TRUE((*opt)->SaveCheckpoint(dir.string()).ok());
    EXPECT_TRUE(std::filesystem::exists(dir / "optimizer-rank0-of-1.tpck"));
    train(*session_, **opt, blocks, 4, 7);
    for (int b = 0; b < 2; ++b) expected.push_back(Read(*session_, blocks[b]));
    EXPECT_EQ((*opt)->loss_scale(), 32.0f);  // grew after steps 3 and 6
  }
  // A fresh process-like start: new session, new optimizer, load, go on.
  auto s = OpenSession();
  ASSERT_NE(s, nullptr);
  auto blocks = Blocks(*s, sizes, DType::kBF16);
  auto opt = ShardedAdamW::Create(s.get(), local_.get(), blocks, o);
  ASSERT_TRUE(opt.ok());
  for (int b = 0; b < 2; ++b) Write(*s, blocks[b], Values(sizes[b], 9, 3.0f));
  ASSERT_TRUE((*opt)->InitFromParams().ok());
  auto loaded = (*opt)->LoadCheckpoint(dir.string());
  ASSERT_TRUE(loaded.ok()) << loaded;
  EXPECT_EQ((*opt)->step(), 4);
  EXPECT_EQ((*opt)->iterations(), 4);
  EXPECT_EQ((*opt)->loss_scale(), 16.0f);
  train(*s, **opt, blocks, 4, 7);
  for (int b = 0; b < 2; ++b) {
    EXPECT_EQ(Read(*s, blocks[b]), expected[b]) << "block " << b;
  }
  // Errors are clear: no checkpoint, or another shape.
  EXPECT_EQ((*opt)->LoadCheckpoint((dir / "nope").string()).code(),
            absl::StatusCode::kNotFound);
  auto other_blocks = Blocks(*s, {5}, DType::kBF16);
  auto other = ShardedAdamW::Create(s.get(), local_.get(), other_blocks, o);
  ASSERT_TRUE(other.ok());
  EXPECT_EQ((*other)->LoadCheckpoint(dir.string()).code(),
            absl::StatusCode::kFailedPrecondition);
  std::filesystem::remove_all(dir);
}

// Registers one kGrad tensor per block, `count` elements of `dtype`.
std::vector<ParamBlock> GradTensors(Session& s,
                                    const std::vector<ParamBlock>& blocks,
                                    DType dtype) {
  std::vector<TensorSpec> specs;
  for (size_t b = 0; b < blocks.size(); ++b) {
    specs.push_back({absl::StrCat("grad", b),
                     dtype,
                     {static_cast<int64_t>(blocks[b].count)},
                     Group::kGrad});
  }
  auto t = s.Register(specs);
  EXPECT_TRUE(t.ok()) << t.status();
  std::vector<ParamBlock> grads;
  for (size_t b = 0; b < blocks.size(); ++b) {
    grads.push_back({(*t)[b].id, blocks[b].count, dtype});
  }
  return grads;
}

// Two micro-batches accumulated into separate gradient tensors (fp32 or
// bf16, summed in that dtype as a trainer would) give exactly the
// parameters of one step on the summed gradient left in the parameters'
// own memory; the gradient tensors are left as they were.
TEST_F(OptimizerTest, AccumulatedGradientTensorsEqualOneStepOnTheSum) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(dtype == DType::kF32 ? "fp32" : "bf16");
    const std::vector<size_t> sizes = {1000, 37};
    ShardedAdamWOptions o{.lr = 1e-2f, .weight_decay = 0.1f};
    auto sa = OpenSession(), sb = OpenSession();
    ASSERT_NE(sa, nullptr);
    ASSERT_NE(sb, nullptr);
    auto pa = Blocks(*sa, sizes, dtype), pb = Blocks(*sb, sizes, dtype);
    auto grads = GradTensors(*sa, pa, dtype);
    auto a = ShardedAdamW::Create(sa.get(), local_.get(), pa, o);
    auto b = ShardedAdamW::Create(sb.get(), local_.get(), pb, o);
    ASSERT_TRUE(a.ok() && b.ok());
    std::vector<PlainAdamW> ref(sizes.size());
    for (size_t i = 0; i < sizes.size(); ++i) {
      auto init = Values(sizes[i], i, 1.0f);
      Write(*sa, pa[i], init);
      Write(*sb, pb[i], init);
      const auto rounded = Read(*sa, pa[i]);
      ref[i].p.assign(rounded.begin(), rounded.end());
      ref[i].m.assign(sizes[i], 0);
      ref[i].v.assign(sizes[i], 0);
    }
    ASSERT_TRUE((*a)->InitFromParams().ok());
    ASSERT_TRUE((*b)->InitFromParams().ok());
    for (int step = 0; step < 3; ++step) {
      std::vector<std::vector<float>> accumulated(sizes.size());
      for (int i = 1; i >= 0; --i) {
        // Micro-batch 1 writes the gradient tensor, micro-batch 2 adds.
        Write(*sa, grads[i], Values(sizes[i], 10 * step + i, 0.5f));
        const auto g1 = Read(*sa, grads[i]);
        const auto g2 = Values(sizes[i], 50 + 10 * step + i, 0.25f);
        std::vector<float> sum(sizes[i]);
        for (size_t k = 0; k < sum.size(); ++k) sum[k] = g1[k] + g2[k];
        Write(*sa, grads[i], sum);
        accumulated[i] = Read(*sa, grads[i]);  // rounded to its dtype
        absl::Status s = (*a)->OnGradientsReady(i, grads[i].tensor_id, dtype);
        ASSERT_TRUE(s.ok()) << s;
        // The reference: the summed gradient in the parameters' memory.
        Write(*sb, pb[i], accumulated[i]);
        ASSERT_TRUE((*b)->OnGradientsReady(i).ok());
        ref[i].Update(
            std::vector<double>(accumulated[i].begin(), accumulated[i].end()),
            o);
      }
      auto ra = (*a)->Step();
      auto rb = (*b)->Step();
      ASSERT_TRUE(ra.ok()) << ra.status();
      ASSERT_TRUE(rb.ok()) << rb.status();
      EXPECT_EQ(ra->blocks_updated, 2);
      EXPECT_EQ(ra->grad_norm, rb->grad_norm);
      for (size_t i = 0; i < sizes.size(); ++i) {
        EXPECT_EQ(Read(*sa, grads[i]), accumulated[i]) << "grad " << i;
      }
    }
    for (size_t i = 0; i < sizes.size(); ++i) {
      const auto got = Read(*sa, pa[i]);
      EXPECT_EQ(got, Read(*sb, pb[i])) << "block " << i;
      const double tol = dtype == DType::kF32 ? 2e-6 : 1e-2;
      for (size_t k = 0; k < got.size(); ++k) {
        ASSERT_NEAR(got[k], ref[i].p[k], tol * (1 + std::fabs(ref[i].p[k])))
            << "block " << i << " element " << k;
      }
    }
  }
}

// A gradient tensor of the wrong size (or dtype) fails OnGradientsReady at
// once, with the sizes in the message, in both modes; nothing is reduced
// or updated, and the block can be reported again with the right tensor.
TEST_F(OptimizerTest, WrongSizedGradientTensorIsRejectedAndChangesNothing) {
  for (bool overlap : {true, false}) {
    SCOPED_TRACE(overlap ? "overlap" : "inline");
    auto s = OpenSession();
    ASSERT_NE(s, nullptr);
    auto blocks = Blocks(*s, {100, 64}, DType::kBF16);
    auto right = GradTensors(*s, blocks, DType::kF32);
    auto shorter = GradTensors(*s, {{0, 99, DType::kF32}}, DType::kF32)[0];
    auto longer = GradTensors(*s, {{0, 101, DType::kF32}}, DType::kF32)[0];
    ShardedAdamWOptions o{.lr = 1e-2f};
    o.overlap = overlap;
    auto opt = ShardedAdamW::Create(s.get(), local_.get(), blocks, o);
    ASSERT_TRUE(opt.ok());
    Write(*s, blocks[0], Values(100, 1, 1.0f));
    Write(*s, blocks[1], Values(64, 2, 1.0f));
    ASSERT_TRUE((*opt)->InitFromParams().ok());
    const auto before0 = Read(*s, blocks[0]), before1 = Read(*s, blocks[1]);
    Write(*s, right[1], Values(64, 3, 0.5f));
    ASSERT_TRUE(
        (*opt)->OnGradientsReady(1, right[1].tensor_id, DType::kF32).ok());
    Write(*s, shorter, Values(99, 4, 0.5f));
    Write(*s, longer, Values(101, 4, 0.5f));
    for (const ParamBlock& g : {shorter, longer}) {
      absl::Status e = (*opt)->OnGradientsReady(0, g.tensor_id, DType::kF32);
      EXPECT_EQ(e.code(), absl::StatusCode::kInvalidArgument) << e;
      EXPECT_THAT(e.message(), ::testing::HasSubstr("block 0"));
      EXPECT_THAT(e.message(), ::testing::HasSubstr("need 400"));
    }
    // The fp32 tensor reported as bf16 has twice the bytes that needs.
    EXPECT_EQ(
        (*opt)->OnGradientsReady(0, right[0].tensor_id, DType::kBF16).code(),
        absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(
        (*opt)->OnGradientsReady(0, right[0].tensor_id, DType::kI32).code(),
        absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(Read(*s, blocks[0]), before0);
    // Block 0 was never queued: the step updates block 1 only, and block 0
    // takes a correct report in the next step.
    auto r = (*opt)->Step();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->blocks_updated, 1);
    EXPECT_EQ(r->blocks_without_grad, 1);
    EXPECT_EQ(Read(*s, blocks[0]), before0);
    EXPECT_NE(Read(*s, blocks[1]), before1);
    Write(*s, right[0], Values(100, 5, 0.5f));
    ASSERT_TRUE(
        (*opt)->OnGradientsReady(0, right[0].tensor_id, DType::kF32).ok());
    r = (*opt)->Step();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->blocks_updated, 1);
    EXPECT_NE(Read(*s, blocks[0]), before0);
  }
}

// Runs `world` optimizer_rank processes (Gloo) training steps [from, to);
// returns rank 0's parameter dump ("" on failure).
std::string RunRanks(const std::string& socket,
                     const std::filesystem::path& dir, const std::string& tag,
                     int world, int from, int to, const std::string& load,
                     const std::string& save) {
  std::vector<testing::ChildProcess> ranks;
  const std::string dump = (dir / (tag + ".params")).string();
  for (int r = 0; r < world; ++r) {
    auto child = testing::ChildProcess::Spawn(
        {testing::BinDir() + "/optimizer_rank", socket, std::to_string(r),
         std::to_string(world), (dir / ("gloo-" + tag)).string(),
         std::to_string(from), std::to_string(to), load, save, dump});
    EXPECT_TRUE(child.ok()) << child.status();
    if (!child.ok()) return "";
    ranks.push_back(std::move(*child));
  }
  bool ok = true;
  for (int r = 0; r < world; ++r) {
    const int code = ranks[r].Wait();
    EXPECT_EQ(code, 0) << tag << " rank " << r;
    ok &= code == 0;
  }
  if (!ok) return "";
  std::ifstream in(dump, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

// What one training run under a policy left behind.
struct PlacedRun {
  std::vector<StepResult> results;
  std::vector<std::vector<float>> params;
  std::string checkpoint;  // the saved file's bytes
  PlacementStatus placement;
};

// Six bf16 blocks of 1M elements (two per 4 MiB parameter chunk; each
// block's fp32 master, m and v a chunk of their own), trained the way a
// framework drives an `auto` session: named forward and backward ops,
// blocks reported as backward finishes them, MarkStep after Step().
class PlacedOptimizerTest : public OptimizerTest {
 protected:
  void Train(Session& s, float max_grad_norm, int steps, PlacedRun& run);
};

void PlacedOptimizerTest::Train(Session& s, float max_grad_norm, int steps,
                                PlacedRun& run) {
  constexpr size_t kCount = size_t{1} << 20;
  constexpr int kBlocks = 6;
  auto blocks = Blocks(s, std::vector<size_t>(kBlocks, kCount), DType::kBF16);
  ShardedAdamWOptions o{
      .lr = 1e-3f, .weight_decay = 0.01f, .max_grad_norm = max_grad_norm};
  auto local = MakeLocalCommunicator();
  auto opt = ShardedAdamW::Create(&s, local.get(), blocks, o);
  ASSERT_TRUE(opt.ok()) << opt.status();
  for (int b = 0; b < kBlocks; ++b) {
    Write(s, blocks[b], Values(kCount, b, 1.0f));
  }
  ASSERT_TRUE((*opt)->InitFromParams().ok());
  for (int step = 0; step < steps; ++step) {
    for (int b = 0; b < kBlocks; ++b) {
      s.BeginOp(absl::StrCat("block", b, "/fwd"));
      auto got = s.Acquire({&blocks[b].tensor_id, 1}, AccessMode::kRead);
      ASSERT_TRUE(got.ok()) << got.status();
      ASSERT_TRUE(
          s.Release({&blocks[b].tensor_id, 1}, TensorState::kHold).ok());
    }
    for (int b = kBlocks - 1; b >= 0; --b) {
      s.BeginOp(absl::StrCat("block", b, "/bwd"));
      Write(s, blocks[b], Values(kCount, 100 * step + b, 0.01f));
      ASSERT_TRUE((*opt)->OnGradientsReady(b).ok());
    }
    auto r = (*opt)->Step();
    ASSERT_TRUE(r.ok()) << r.status();
    run.results.push_back(*r);
    ASSERT_TRUE(s.MarkStep().ok());
  }
  auto placement = s.Placement();
  ASSERT_TRUE(placement.ok()) << placement.status();
  run.placement = *placement;
  const auto dir = TempDir("placed");
  ASSERT_TRUE((*opt)->SaveCheckpoint(dir.string()).ok());
  std::ifstream in(dir / "optimizer-rank0-of-1.tpck", std::ios::binary);
  run.checkpoint.assign(std::istreambuf_iterator<char>(in), {});
  std::filesystem::remove_all(dir);
  for (const ParamBlock& b : blocks) run.params.push_back(Read(s, b));
}

// Hybrid placement: under `auto`, on a 64 MiB device that holds the 12 MiB
// of parameters and the master, m and v of some blocks but not of all,
// the plan puts some blocks' updates on the device and the rest in the
// host homes, the same split every step, and the worker's acquires never
// disturb the plan (no replans). The sim device pool is CPU memory and
// both placements run CpuAdamW, so the parameters and the optimizer state
// equal those of the same training under `cpu` (all updates on the host)
// bit for bit. With clipping, the updates run in Step() instead.
TEST_F(PlacedOptimizerTest, AutoPlacesSomeUpdatesOnTheDeviceWithResultsOfCpu) {
  constexpr int kSteps = 6;
  for (float max_grad_norm : {0.0f, 0.5f}) {
    SCOPED_TRACE(max_grad_norm > 0 ? "clipped (updates in Step)"
                                   : "updates beside backward");
    PlacedRun placed, host;
    {
      auto s = OpenSession(Policy::kAuto);
      ASSERT_NE(s, nullptr);
      Train(*s, max_grad_norm, kSteps, placed);
    }
    {
      auto s = OpenSession(Policy::kCpu);
      ASSERT_NE(s, nullptr);
      Train(*s, max_grad_norm, kSteps, host);
    }
    ASSERT_FALSE(HasFatalFailure());
    ASSERT_EQ(placed.results.size(), size_t{kSteps});
    ASSERT_EQ(host.results.size(), size_t{kSteps});
    // Warm-up: every update on the host. Two steps here: the initial
    // writes carry no op key, so the daemon discards the first step's
    // recording and records the second (docs/policy.md).
    constexpr int kWarmup = 2;
    for (int step = 0; step < kSteps; ++step) {
      const StepResult& r = placed.results[step];
      SCOPED_TRACE(absl::StrCat("step ", step));
      EXPECT_EQ(r.blocks_updated, 6);
      EXPECT_EQ(r.blocks_on_device + r.blocks_on_host, 6);
      if (step < kWarmup) {
        EXPECT_EQ(r.blocks_on_device, 0);
        continue;
      }
      // Planned: some on the device, the rest on the host, the same blocks
      // every step.
      EXPECT_GT(r.blocks_on_device, 0);
      EXPECT_GT(r.blocks_on_host, 0);
      EXPECT_EQ(r.blocks_on_device, placed.results[kWarmup].blocks_on_device);
    }
    EXPECT_EQ(placed.placement.state, "planned");
    EXPECT_EQ(placed.placement.replans, 0u) << placed.placement.last_divergence;
    for (const StepResult& r : host.results) {
      EXPECT_EQ(r.blocks_on_device, 0);
      EXPECT_EQ(r.blocks_on_host, 6);
    }
    for (int step = 0; step < kSteps; ++step) {
      EXPECT_EQ(placed.results[step].grad_norm, host.results[step].grad_norm);
    }
    ASSERT_EQ(placed.params.size(), host.params.size());
    for (size_t b = 0; b < host.params.size(); ++b) {
      EXPECT_TRUE(placed.params[b] == host.params[b]) << "block " << b;
    }
    EXPECT_FALSE(host.checkpoint.empty());
    EXPECT_TRUE(placed.checkpoint == host.checkpoint);
  }
}

// A checkpoint saved by 2 ranks (processes) resumes at 1, 3 and 4 ranks
// exactly like the uninterrupted 2-rank run: every rank reads its new
// shard's pieces of the saved shards. The gradients are exact at any world
// size, so only the re-sharded master, m, v and step counts can differ.
TEST_F(OptimizerTest, CheckpointSavedByTwoRanksResumesAtOtherWorldSizes) {
  const auto dir = TempDir("reshard");
  const std::string ckpt = (dir / "ckpt").string();
  const std::string whole =
      RunRanks(daemon_->socket(), dir, "whole", 2, 0, 6, "", "");
  ASSERT_FALSE(whole.empty());
  ASSERT_FALSE(
      RunRanks(daemon_->socket(), dir, "first", 2, 0, 3, "", ckpt).empty());
  EXPECT_TRUE(std::filesystem::exists(dir / "ckpt/optimizer-rank1-of-2.tpck"));
  for (int world : {1, 3, 4}) {
    SCOPED_TRACE(absl::StrCat("resumed at ", world, " ranks"));
    const std::string resumed =
        RunRanks(daemon_->socket(), dir, absl::StrCat("resume", world), world,
                 3, 6, ckpt, "");
    ASSERT_EQ(resumed.size(), whole.size());
    EXPECT_TRUE(resumed == whole);
  }
  // Without the checkpoint the continuation differs (the test can fail).
  const std::string fresh =
      RunRanks(daemon_->socket(), dir, "fresh", 4, 3, 6, "", "");
  ASSERT_EQ(fresh.size(), whole.size());
  EXPECT_FALSE(fresh == whole);

  // Clear errors, and a failed load leaves the optimizer as it was.
  auto blocks = Blocks(*session_, {999, 4000}, DType::kF32);
  blocks.push_back(Blocks(*session_, {37}, DType::kBF16)[0]);  // as the ranks
  auto opt = ShardedAdamW::Create(session_.get(), local_.get(), blocks, {});
  ASSERT_TRUE(opt.ok()) << opt.status();
  for (int b = 0; b < 3; ++b) {
    Write(*session_, blocks[b], Values(blocks[b].count, b, 1.0f));
  }
  ASSERT_TRUE((*opt)->InitFromParams().ok());
  const auto before = Read(*session_, blocks[1]);
  auto copy = [&](const std::string& name) {
    const auto d = dir / name;
    std::filesystem::remove_all(d);
    std::filesystem::copy(ckpt, d);
    return d;
  };
  auto load = [&](const std::filesystem::path& d) {
    return (*opt)->LoadCheckpoint(d.string());
  };
  const std::string f0 = "optimizer-rank0-of-2.tpck";
  const std::string f1 = "optimizer-rank1-of-2.tpck";
  {  // a rank's file is missing
    auto d = copy("missing");
    std::filesystem::remove(d / f1);
    absl::Status s = load(d);
    EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
    EXPECT_THAT(s.message(), ::testing::HasSubstr(f1));
  }
  {  // truncated data
    auto d = copy("truncated");
    std::filesystem::resize_file(d / f1,
                                 std::filesystem::file_size(d / f1) - 4);
    absl::Status s = load(d);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    EXPECT_THAT(s.message(), ::testing::HasSubstr("truncated"));
  }
  {  // a flipped byte in the block table (block 0's count)
    auto d = copy("corrupt");
    std::fstream f(d / f0, std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(8 + 4 + 4 + 4 + 8 + 8 + 4 + 4 + 4);
    f.put('\x7f');
    f.close();
    absl::Status s = load(d);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    EXPECT_THAT(s.message(), ::testing::HasSubstr("checksum"));
  }
  {  // not a checkpoint
    auto d = copy("garbage");
    std::ofstream(d / f0, std::ios::trunc) << "hello";
    EXPECT_EQ(load(d).code(), absl::StatusCode::kDataLoss);
  }
  {  // files of two different saves
    auto d = copy("mixed");
    ASSERT_FALSE(RunRanks(daemon_->socket(), dir, "other", 2, 0, 2, "",
                          (dir / "other").string())
                     .empty());
    std::filesystem::copy_file(
        dir / "other" / f1, d / f1,
        std::filesystem::copy_options::overwrite_existing);
    absl::Status s = load(d);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  }
  {  // two world sizes in one directory
    auto d = copy("two-worlds");
    std::filesystem::copy_file(d / f0, d / "optimizer-rank0-of-1.tpck");
    absl::Status s = load(d);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  }
  EXPECT_EQ(Read(*session_, blocks[1]), before);
  EXPECT_EQ((*opt)->step(), 0);
  // Other block sizes or counts: FailedPrecondition naming the block.
  auto other = Blocks(*session_, {999, 4001}, DType::kF32);
  other.push_back(Blocks(*session_, {37}, DType::kBF16)[0]);
  auto wrong = ShardedAdamW::Create(session_.get(), local_.get(), other, {});
  ASSERT_TRUE(wrong.ok());
  absl::Status s = (*wrong)->LoadCheckpoint(ckpt);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), ::testing::HasSubstr("block 1"));
  other.pop_back();
  auto fewer = ShardedAdamW::Create(session_.get(), local_.get(), other, {});
  ASSERT_TRUE(fewer.ok());
  EXPECT_EQ((*fewer)->LoadCheckpoint(ckpt).code(),
            absl::StatusCode::kFailedPrecondition);
  // The intact copy still loads.
  ASSERT_TRUE(load(copy("intact")).ok());
  EXPECT_EQ((*opt)->step(), 3);
  std::filesystem::remove_all(dir);
}

TEST(LossScalerTest, BacksOffGrowsAndStaysAboveTheFloor) {
  LossScaler off;
  EXPECT_EQ(off.scale(), 1.0f);
  EXPECT_FALSE(off.Update(false));
  LossScaler s({.dynamic = true,
                .init_scale = 4.0f,
                .growth_interval = 2,
                .min_scale = 1.0f});
  EXPECT_TRUE(s.Update(true));
  EXPECT_EQ(s.scale(), 2.0f);
  EXPECT_TRUE(s.Update(true));
  EXPECT_TRUE(s.Update(true));
  EXPECT_EQ(s.scale(), 1.0f);  // floor
  EXPECT_FALSE(s.Update(false));
  EXPECT_EQ(s.scale(), 1.0f);
  EXPECT_FALSE(s.Update(false));
  EXPECT_EQ(s.scale(), 2.0f);
  EXPECT_EQ(s.good_steps(), 0);
}

}  // namespace
}  // namespace tidepool
