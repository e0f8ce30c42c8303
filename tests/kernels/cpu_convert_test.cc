// fp32 <-> bf16/fp16 conversions: exhaustive over the 16-bit formats,
// randomized over fp32, against a nearest-value reference, on every path.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/convert.h"
#include "kernels/cpu/half.h"
#include "tests/kernels/isa_test_util.h"

namespace tidepool::kernels {
namespace {

bool IsNan16(DType d, uint16_t h) {
  return d == DType::kBF16 ? (h & 0x7fff) > 0x7f80 : (h & 0x7fff) > 0x7c00;
}

float Decode16(DType d, uint16_t h) {
  return d == DType::kBF16 ? BF16BitsToF32(h) : F16BitsToF32(h);
}

// Nearest representable 16-bit value by search over the (monotone) positive
// encodings, ties to the even encoding; independent of half.h's bit tricks.
uint16_t NearestRef(DType d, float x) {
  const uint16_t inf = d == DType::kBF16 ? 0x7f80 : 0x7c00;
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double ax = std::abs(static_cast<double>(x));
  // Largest finite encoding, and the midpoint above it where Inf starts.
  const double maxv = Decode16(d, inf - 1);
  const double ulp_top = maxv - Decode16(d, inf - 2);
  if (ax >= maxv + ulp_top / 2) {
    // Exactly the midpoint rounds to even: max finite is odd, so to Inf.
    return sign | inf;
  }
  uint16_t lo = 0;
  uint16_t hi = inf - 1;
  while (lo < hi) {  // first encoding with value >= ax
    const uint16_t mid = static_cast<uint16_t>((lo + hi) / 2);
    if (Decode16(d, mid) >= ax) {
      hi = mid;
    } else {
      lo = static_cast<uint16_t>(mid + 1);
    }
  }
  uint16_t best = lo;
  if (lo > 0) {
    const double up = Decode16(d, lo) - ax;
    const double down = ax - Decode16(d, lo - 1);
    if (down < up || (down == up && ((lo - 1) & 1) == 0)) best = lo - 1;
  }
  return sign | best;
}

class CpuConvertTest : public IsaTest {};

TEST_P(CpuConvertTest, Every16BitValueRoundTrips) {
  for (DType d : {DType::kBF16, DType::kF16}) {
    std::vector<uint16_t> all(65536);
    for (int i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
    std::vector<float> wide(all.size());
    std::vector<uint16_t> back(all.size());
    ASSERT_TRUE(CpuConvertToF32(all.data(), d, wide.data(), all.size()).ok());
    ASSERT_TRUE(
        CpuConvertFromF32(wide.data(), back.data(), d, all.size()).ok());
    for (int i = 0; i < 65536; ++i) {
      const uint16_t h = all[i];
      // Widening is exact and must equal the scalar decode, NaNs included.
      const float want = Decode16(d, h);
      ASSERT_EQ(0, std::memcmp(&wide[i], &want, 4))
          << DTypeName(d) << " " << h << " widened to " << wide[i];
      if (IsNan16(d, h)) {
        ASSERT_TRUE(IsNan16(d, back[i])) << DTypeName(d) << " NaN " << h;
      } else {
        ASSERT_EQ(back[i], h) << DTypeName(d) << " value " << h;
      }
    }
  }
}

TEST_P(CpuConvertTest, NarrowingRoundsToNearestEven) {
  std::mt19937 rng(1234);
  std::vector<float> x;
  // Random bit patterns cover every exponent, including subnormals.
  for (int i = 0; i < 200000; ++i) {
    uint32_t bits = rng();
    float f;
    std::memcpy(&f, &bits, 4);
    x.push_back(f);
  }
  // Values near the fp16 range, where subnormals, ties and overflow live.
  std::uniform_real_distribution<float> wide(-70000.0f, 70000.0f);
  std::uniform_real_distribution<float> tiny(-1e-4f, 1e-4f);
  for (int i = 0; i < 100000; ++i) {
    x.push_back(wide(rng));
    x.push_back(tiny(rng));
  }
  // Exact ties: midpoints between neighbouring 16-bit values.
  for (uint16_t h : {0x0001, 0x0002, 0x03ff, 0x3c00, 0x3c01, 0x7bfe}) {
    x.push_back(static_cast<float>(
        (static_cast<double>(F16BitsToF32(h)) + F16BitsToF32(h + 1)) / 2));
  }
  for (uint16_t h : {0x0001, 0x3f80, 0x3f81, 0x7f7e}) {
    x.push_back(static_cast<float>(
        (static_cast<double>(BF16BitsToF32(h)) + BF16BitsToF32(h + 1)) / 2));
  }
  x.insert(x.end(), {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, -65520.0f,
                     std::numeric_limits<float>::infinity(),
                     -std::numeric_limits<float>::infinity(),
                     std::numeric_limits<float>::max(),
                     std::numeric_limits<float>::denorm_min(),
                     std::numeric_limits<float>::quiet_NaN()});
  for (DType d : {DType::kBF16, DType::kF16}) {
    std::vector<uint16_t> out(x.size());
    ASSERT_TRUE(CpuConvertFromF32(x.data(), out.data(), d, x.size()).ok());
    for (size_t i = 0; i < x.size(); ++i) {
      const uint16_t scalar =
          d == DType::kBF16 ? F32ToBF16Bits(x[i]) : F32ToF16Bits(x[i]);
      ASSERT_EQ(out[i], scalar) << DTypeName(d) << " of " << x[i];
      if (std::isnan(x[i])) {
        ASSERT_TRUE(IsNan16(d, out[i]));
      } else {
        ASSERT_EQ(out[i], NearestRef(d, x[i]))
            << DTypeName(d) << " of " << x[i] << " (bits " << std::hex
            << std::bit_cast<uint32_t>(x[i]) << ")";
      }
    }
  }
}

TEST_P(CpuConvertTest, F32ToF32CopiesAndOddSizesWork) {
  for (size_t n : {size_t{1}, size_t{17}, size_t{1000003}}) {
    std::vector<float> src(n), dst(n, -1.0f);
    for (size_t i = 0; i < n; ++i) src[i] = static_cast<float>(i) * 0.25f;
    ASSERT_TRUE(CpuConvertFromF32(src.data(), dst.data(), DType::kF32, n).ok());
    ASSERT_EQ(src, dst);
    std::vector<uint16_t> half(n + 1, 0xbeef);  // guard element after the end
    ASSERT_TRUE(
        CpuConvertFromF32(src.data(), half.data(), DType::kBF16, n).ok());
    EXPECT_EQ(half[n], 0xbeef) << "wrote past the end";
    std::vector<float> wide(n + 1, 42.0f);
    ASSERT_TRUE(
        CpuConvertToF32(half.data(), DType::kBF16, wide.data(), n).ok());
    EXPECT_EQ(wide[n], 42.0f) << "wrote past the end";
    for (size_t i = 0; i < n; ++i) {
      ASSERT_EQ(wide[i], BF16BitsToF32(F32ToBF16Bits(src[i])));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllPaths, CpuConvertTest, testing::ValuesIn(AllIsas()),
                         IsaParamName);

TEST(CpuConvertArgs, RejectsBadArguments) {
  float f = 0;
  EXPECT_EQ(CpuConvertToF32(nullptr, DType::kBF16, &f, 1).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CpuConvertFromF32(&f, &f, static_cast<DType>(7), 1).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(CpuConvertToF32(nullptr, DType::kBF16, nullptr, 0).ok());
}

}  // namespace
}  // namespace tidepool::kernels
