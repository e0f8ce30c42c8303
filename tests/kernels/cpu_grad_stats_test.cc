// Sum of squares and non-finite detection over gradient buffers, on every
// SIMD path, plus the clipping rule.
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/grad_stats.h"
#include "kernels/cpu/half.h"
#include "tests/kernels/isa_test_util.h"

namespace tidepool::kernels {
namespace {

struct Buffer {
  std::vector<float> f32;
  std::vector<uint16_t> h16;
  const void* data(DType d) const {
    return d == DType::kF32 ? static_cast<const void*>(f32.data()) : h16.data();
  }
};

Buffer Make(DType d, const std::vector<float>& x) {
  Buffer b;
  if (d == DType::kF32) {
    b.f32 = x;
  } else {
    for (float f : x) {
      b.h16.push_back(d == DType::kBF16 ? F32ToBF16Bits(f) : F32ToF16Bits(f));
    }
  }
  return b;
}

double Value(DType d, const Buffer& b, size_t i) {
  if (d == DType::kF32) return b.f32[i];
  return d == DType::kBF16 ? BF16BitsToF32(b.h16[i]) : F16BitsToF32(b.h16[i]);
}

class CpuGradStatsTest : public IsaTest {};

TEST_P(CpuGradStatsTest, SumOfSquaresMatchesReference) {
  std::mt19937 rng(99);
  std::uniform_real_distribution<float> unit(-3.0f, 3.0f);
  for (DType d : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (size_t n : {size_t{1}, size_t{17}, size_t{1000003}}) {
      std::vector<float> x(n);
      for (float& f : x) f = unit(rng);
      const Buffer b = Make(d, x);
      double want = 0;
      for (size_t i = 0; i < n; ++i) want += Value(d, b, i) * Value(d, b, i);
      absl::StatusOr<GradStats> got = CpuGradStats(b.data(d), d, n);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_NEAR(got->sum_squares, want, 1e-12 * want)
          << DTypeName(d) << " n=" << n;
      EXPECT_TRUE(got->all_finite);
    }
  }
}

TEST_P(CpuGradStatsTest, FindsInfAndNanAnywhere) {
  const size_t n = 100003;
  for (DType d : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (size_t where : {size_t{0}, size_t{50000}, n - 1}) {
      for (float bad : {std::numeric_limits<float>::infinity(),
                        -std::numeric_limits<float>::infinity(),
                        std::numeric_limits<float>::quiet_NaN()}) {
        std::vector<float> x(n, 0.5f);
        x[where] = bad;
        const Buffer b = Make(d, x);
        absl::StatusOr<GradStats> got = CpuGradStats(b.data(d), d, n);
        ASSERT_TRUE(got.ok());
        EXPECT_FALSE(got->all_finite)
            << DTypeName(d) << " " << bad << " at " << where;
      }
    }
  }
}

TEST_P(CpuGradStatsTest, LargeFiniteValuesAreNotOverflow) {
  // fp16's largest value and fp32's: their squares overflow fp32 but must
  // not be reported as non-finite.
  std::vector<float> x(1000, 65504.0f);
  const Buffer h = Make(DType::kF16, x);
  absl::StatusOr<GradStats> got =
      CpuGradStats(h.data(DType::kF16), DType::kF16, x.size());
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(got->all_finite);
  EXPECT_DOUBLE_EQ(got->sum_squares, 1000.0 * 65504.0 * 65504.0);
  std::vector<float> big(1000, std::numeric_limits<float>::max());
  got = CpuGradStats(big.data(), DType::kF32, big.size());
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(got->all_finite);
}

INSTANTIATE_TEST_SUITE_P(AllPaths, CpuGradStatsTest,
                         testing::ValuesIn(AllIsas()), IsaParamName);

TEST(ClipGradScaleTest, FollowsClipGradNormRule) {
  // Unscaled norm 5 with max_norm 1: scale by 1 / (5 + 1e-6).
  const float inv_loss = 1.0f / 1024.0f;
  const double sum_sq = 25.0 * 1024.0 * 1024.0;
  EXPECT_NEAR(ClipGradScale(sum_sq, inv_loss, 1.0f), inv_loss / 5.0, 1e-9);
  // Below the limit: only the loss scale is removed.
  EXPECT_FLOAT_EQ(ClipGradScale(sum_sq, inv_loss, 10.0f), inv_loss);
  // Clipping disabled.
  EXPECT_FLOAT_EQ(ClipGradScale(sum_sq, inv_loss, 0.0f), inv_loss);
}

TEST(CpuGradStatsArgs, RejectsBadArguments) {
  EXPECT_EQ(CpuGradStats(nullptr, DType::kF32, 3).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::StatusOr<GradStats> empty = CpuGradStats(nullptr, DType::kF32, 0);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->sum_squares, 0.0);
  EXPECT_TRUE(empty->all_finite);
}

}  // namespace
}  // namespace tidepool::kernels
