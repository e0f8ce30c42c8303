// CPU AdamW against a double-precision reference written here, for every
// SIMD path, gradient dtype and param_out dtype, on sizes with odd tails.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/isa.h"
#include "tests/kernels/isa_test_util.h"

namespace tidepool::kernels {
namespace {

// Low-precision bytes of x in dtype d (fp32 stays fp32).
void Encode(DType d, const std::vector<float>& x, std::vector<uint8_t>* out) {
  out->resize(x.size() * DTypeSize(d));
  for (size_t i = 0; i < x.size(); ++i) {
    if (d == DType::kF32) {
      std::memcpy(out->data() + 4 * i, &x[i], 4);
    } else {
      const uint16_t h =
          d == DType::kBF16 ? F32ToBF16Bits(x[i]) : F32ToF16Bits(x[i]);
      std::memcpy(out->data() + 2 * i, &h, 2);
    }
  }
}

double Decode(DType d, const uint8_t* p, size_t i) {
  if (d == DType::kF32) {
    float f;
    std::memcpy(&f, p + 4 * i, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p + 2 * i, 2);
  return d == DType::kBF16 ? BF16BitsToF32(h) : F16BitsToF32(h);
}

struct RefState {
  std::vector<double> p, m, v;
  std::vector<double> moved;  // sum of |Adam step| per element: error scale
};

// torch.optim.AdamW's update, in double.
void RefAdamW(const AdamWParams& a, const std::vector<uint8_t>& grad, DType gd,
              RefState* s) {
  const double bc1 = 1.0 - std::pow(static_cast<double>(a.beta1), a.step);
  const double bc2 = 1.0 - std::pow(static_cast<double>(a.beta2), a.step);
  const double b1 = a.beta1;
  const double b2 = a.beta2;
  for (size_t i = 0; i < s->p.size(); ++i) {
    const double g = Decode(gd, grad.data(), i) * a.grad_scale;
    s->m[i] = b1 * s->m[i] + (1 - b1) * g;
    s->v[i] = b2 * s->v[i] + (1 - b2) * g * g;
    s->p[i] *= 1.0 - static_cast<double>(a.lr) * a.weight_decay;
    const double step =
        a.lr / bc1 * s->m[i] / (std::sqrt(s->v[i]) / std::sqrt(bc2) + a.eps);
    s->p[i] -= step;
    s->moved[i] += std::abs(step);
  }
}

// param_out dtype; kF32 here means "no param_out".
using Case = std::tuple<Isa, DType, DType, size_t>;

class CpuAdamWTest : public testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    const Isa isa = std::get<0>(GetParam());
    if (!IsaSupported(isa)) {
      GTEST_SKIP() << "this CPU lacks the " << IsaName(isa) << " path; skipped";
    }
    ASSERT_TRUE(SetIsaForTesting(isa).ok());
  }
  void TearDown() override { ASSERT_TRUE(SetIsaForTesting(Isa::kAuto).ok()); }
};

void RunAndCompare(DType gd, DType od, size_t n, bool fresh,
                   int64_t first_step) {
  std::mt19937 rng(static_cast<uint32_t>(n * 31 + static_cast<int>(gd) * 7 +
                                         static_cast<int>(od)));
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  std::uniform_real_distribution<float> pos(0.0f, 0.01f);
  std::vector<float> master(n), m(n), v(n);
  for (size_t i = 0; i < n; ++i) {
    master[i] = unit(rng);
    m[i] = fresh ? 0.0f : 0.1f * unit(rng);
    v[i] = fresh ? 0.0f : pos(rng);
  }
  RefState ref{{master.begin(), master.end()},
               {m.begin(), m.end()},
               {v.begin(), v.end()},
               std::vector<double>(n, 0.0)};
  const bool has_out = od != DType::kF32;
  std::vector<uint16_t> out(has_out ? n : 0, 0xdead);

  AdamWParams a;
  a.lr = 1e-2f;
  a.beta1 = 0.9f;
  a.beta2 = 0.95f;
  a.eps = 1e-8f;
  a.weight_decay = 0.1f;
  a.grad_scale = 0.5f;
  std::vector<float> g(n);
  std::vector<uint8_t> grad;
  for (int s = 0; s < 3; ++s) {
    a.step = first_step + s;
    for (float& x : g) x = 4.0f * unit(rng);
    Encode(gd, g, &grad);
    ASSERT_TRUE(CpuAdamW(a, master.data(), m.data(), v.data(), grad.data(), gd,
                         has_out ? out.data() : nullptr,
                         has_out ? od : DType::kBF16, n)
                    .ok());
    RefAdamW(a, grad, gd, &ref);
  }

  double worst_p = 0, worst_m = 0, worst_v = 0;
  for (size_t i = 0; i < n; ++i) {
    // fp32 keeps ~7 digits; three steps of a handful of roundings each stay
    // well inside these bounds, while a wrong formula misses by far more.
    // The master error scales with the weight and with how far Adam moved it.
    const double ep = std::abs(master[i] - ref.p[i]) /
                      (std::abs(ref.p[i]) + ref.moved[i] + 1e-30);
    // m can cancel to near zero from terms of size ~0.1, hence the floor.
    const double em = std::abs(m[i] - ref.m[i]) / (std::abs(ref.m[i]) + 0.1);
    const double ev = std::abs(v[i] - ref.v[i]) / (std::abs(ref.v[i]) + 1e-6);
    worst_p = std::max(worst_p, ep);
    worst_m = std::max(worst_m, em);
    worst_v = std::max(worst_v, ev);
    if (ep > 2e-6 || em > 2e-6 || ev > 2e-6) {
      FAIL() << "element " << i << " of " << n << ": master " << master[i]
             << " vs " << ref.p[i] << ", m " << m[i] << " vs " << ref.m[i]
             << ", v " << v[i] << " vs " << ref.v[i];
    }
    if (has_out) {
      const uint16_t want = od == DType::kBF16 ? F32ToBF16Bits(master[i])
                                               : F32ToF16Bits(master[i]);
      if (out[i] != want) {
        FAIL() << "param_out[" << i << "] = " << out[i] << ", want " << want;
      }
    }
  }
  testing::Test::RecordProperty("worst_rel_err_master", absl::StrCat(worst_p));
  testing::Test::RecordProperty("worst_rel_err_m", absl::StrCat(worst_m));
  testing::Test::RecordProperty("worst_rel_err_v", absl::StrCat(worst_v));
}

TEST_P(CpuAdamWTest, MatchesDoubleReferenceFromFreshState) {
  const auto [isa, gd, od, n] = GetParam();
  RunAndCompare(gd, od, n, /*fresh=*/true, /*first_step=*/1);
}

TEST_P(CpuAdamWTest, MatchesDoubleReferenceMidTraining) {
  const auto [isa, gd, od, n] = GetParam();
  RunAndCompare(gd, od, n, /*fresh=*/false, /*first_step=*/100);
}

std::string CaseName(const testing::TestParamInfo<Case>& info) {
  const auto [isa, gd, od, n] = info.param;
  return absl::StrCat(IsaName(isa), "_grad_", DTypeName(gd), "_out_",
                      od == DType::kF32 ? "none" : DTypeName(od), "_n", n);
}

INSTANTIATE_TEST_SUITE_P(
    AllPaths, CpuAdamWTest,
    testing::Combine(testing::ValuesIn(AllIsas()),
                     testing::Values(DType::kF32, DType::kF16, DType::kBF16),
                     testing::Values(DType::kF32, DType::kF16, DType::kBF16),
                     testing::Values(size_t{1}, size_t{17}, size_t{1000003})),
    CaseName);

// AVX2 and AVX-512 run the same operations (FMA, IEEE sqrt and divide), so
// they must agree to the bit; a difference means a lane or tail bug.
TEST(CpuAdamWPaths, Avx2AndAvx512AgreeBitwise) {
  if (!IsaSupported(Isa::kAvx2) || !IsaSupported(Isa::kAvx512)) {
    GTEST_SKIP() << "needs both the avx2 and avx512 paths; skipped";
  }
  const size_t n = 4099;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  std::vector<float> master(n), m(n), v(n), g(n);
  for (size_t i = 0; i < n; ++i) {
    master[i] = unit(rng);
    m[i] = 0.1f * unit(rng);
    v[i] = std::abs(0.01f * unit(rng));
    g[i] = unit(rng);
  }
  AdamWParams a;
  a.step = 3;
  a.weight_decay = 0.01f;
  std::vector<float> results[2][3];
  std::vector<uint16_t> outs[2];
  const Isa isas[2] = {Isa::kAvx2, Isa::kAvx512};
  for (int k = 0; k < 2; ++k) {
    ASSERT_TRUE(SetIsaForTesting(isas[k]).ok());
    results[k][0] = master;
    results[k][1] = m;
    results[k][2] = v;
    outs[k].assign(n, 0);
    ASSERT_TRUE(CpuAdamW(a, results[k][0].data(), results[k][1].data(),
                         results[k][2].data(), g.data(), DType::kF32,
                         outs[k].data(), DType::kBF16, n)
                    .ok());
  }
  ASSERT_TRUE(SetIsaForTesting(Isa::kAuto).ok());
  for (int j = 0; j < 3; ++j) {
    EXPECT_EQ(0, std::memcmp(results[0][j].data(), results[1][j].data(),
                             n * sizeof(float)))
        << "buffer " << j;
  }
  EXPECT_EQ(outs[0], outs[1]);
}

// Aligned param_out takes the streaming-store loop, unaligned the plain
// one; both must write the same bytes, and nothing past the end.
TEST_P(CpuAdamWTest, ParamOutAlignmentDoesNotChangeResults) {
  const auto [isa, gd, od, n] = GetParam();
  if (od == DType::kF32 || gd != DType::kF32)
    GTEST_SKIP() << "one dtype pair suffices";
  std::vector<uint16_t> results[2];
  for (int shift = 0; shift < 2; ++shift) {
    std::vector<float> master(n, 0.5f), m(n, 0.01f), v(n, 0.02f), g(n, 0.3f);
    // 64-byte aligned start, then one element (2 bytes) past it.
    std::vector<uint16_t> storage(n + 64, 0xabcd);
    uint16_t* base = storage.data();
    while (reinterpret_cast<uintptr_t>(base) % 64 != 0) ++base;
    uint16_t* out = base + shift;
    AdamWParams a;
    ASSERT_TRUE(
        CpuAdamW(a, master.data(), m.data(), v.data(), g.data(), gd, out, od, n)
            .ok());
    EXPECT_EQ(out[n], 0xabcd) << "wrote past the end";
    results[shift].assign(out, out + n);
  }
  EXPECT_EQ(results[0], results[1]);
}

TEST(CpuAdamWArgs, RejectsBadArguments) {
  float x = 1, m = 0, v = 0, g = 1;
  uint16_t out = 0;
  AdamWParams a;
  EXPECT_TRUE(
      CpuAdamW(a, &x, &m, &v, &g, DType::kF32, nullptr, DType::kF32, 1).ok());
  EXPECT_EQ(
      CpuAdamW(a, &x, &m, &v, &g, DType::kF32, &out, DType::kF32, 1).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CpuAdamW(a, &x, &m, &v, &g, static_cast<DType>(9), nullptr,
                     DType::kBF16, 1)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      CpuAdamW(a, nullptr, &m, &v, &g, DType::kF32, nullptr, DType::kBF16, 1)
          .code(),
      absl::StatusCode::kInvalidArgument);
  // n == 0 touches nothing, so null buffers are fine.
  EXPECT_TRUE(CpuAdamW(a, nullptr, nullptr, nullptr, nullptr, DType::kF32,
                       nullptr, DType::kBF16, 0)
                  .ok());
  AdamWParams bad = a;
  bad.step = 0;
  EXPECT_EQ(ValidateAdamWParams(bad).code(),
            absl::StatusCode::kInvalidArgument);
  bad = a;
  bad.beta2 = 1.0f;
  EXPECT_EQ(ValidateAdamWParams(bad).code(),
            absl::StatusCode::kInvalidArgument);
  bad = a;
  bad.grad_scale = std::nanf("");
  EXPECT_EQ(ValidateAdamWParams(bad).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CpuAdamWArgs, ZeroGradientOnlyDecays) {
  // With g = 0 from a fresh state the update is pure weight decay.
  std::vector<float> x(100, 2.0f), m(100, 0.0f), v(100, 0.0f), g(100, 0.0f);
  AdamWParams a;
  a.lr = 0.1f;
  a.weight_decay = 0.5f;
  ASSERT_TRUE(CpuAdamW(a, x.data(), m.data(), v.data(), g.data(), DType::kF32,
                       nullptr, DType::kBF16, x.size())
                  .ok());
  for (float p : x) EXPECT_FLOAT_EQ(p, 2.0f * (1.0f - 0.1f * 0.5f));
}

TEST(CpuAdamWArgs, WorksOnAnExplicitPool) {
  ThreadPool pool({AllowedCpus().front()}, /*pin=*/true);
  const size_t n = 100000;
  std::vector<float> x(n, 1.0f), m(n, 0.0f), v(n, 0.0f), g(n, 1.0f);
  AdamWParams a;
  a.lr = 0.1f;
  ASSERT_TRUE(CpuAdamW(a, x.data(), m.data(), v.data(), g.data(), DType::kF32,
                       nullptr, DType::kBF16, n, &pool)
                  .ok());
  // Step 1 of Adam moves every weight by lr * sign(g) (up to eps).
  for (float p : x) ASSERT_NEAR(p, 0.9f, 1e-6f);
}

}  // namespace
}  // namespace tidepool::kernels
