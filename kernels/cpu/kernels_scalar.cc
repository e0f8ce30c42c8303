// Portable path: plain C++ that the compiler may vectorize for the baseline
// ISA. Also the reference the SIMD paths are compared against in tests.
#include <cmath>
#include <cstring>
#include <type_traits>

#include "kernels/cpu/half.h"
#include "kernels/cpu/simd_kernels.h"

namespace tidepool::kernels::internal {
namespace {

#define TP_SIMD_TARGET

struct Scalar {
  static constexpr size_t kWidth = 1;
  static constexpr bool kCanStream = false;
  using F = float;
  using H = uint16_t;
  using D = double;
  static F Load(const float* p) { return *p; }
  static void Store(float* p, F x) { *p = x; }
  static F LoadBF16(const uint16_t* p) { return BF16BitsToF32(*p); }
  static F LoadF16(const uint16_t* p) { return F16BitsToF32(*p); }
  static H ToBF16Bits(F x) { return F32ToBF16Bits(x); }
  static H ToF16Bits(F x) { return F32ToF16Bits(x); }
  static void StoreHalves(uint16_t* p, H h) { *p = h; }
  static void StreamHalves(uint16_t* p, H h) { *p = h; }
  static void StoreFence() {}
  static F Set1(float x) { return x; }
  static F Mul(F a, F b) { return a * b; }
  static F Fmadd(F a, F b, F c) { return a * b + c; }
  static F Fnmadd(F a, F b, F c) { return c - a * b; }
  static F Sqrt(F a) { return std::sqrt(a); }
  static F Div(F a, F b) { return a / b; }
  static D ZeroD() { return 0.0; }
  static void AccSquares(F x, D* acc) {
    const double d = x;
    *acc += d * d;
  }
  static double ReduceD(D acc) { return acc; }
};

#include "kernels/cpu/kernels_body.inc"

#undef TP_SIMD_TARGET

}  // namespace

const IsaKernels& ScalarKernels() {
  static const IsaKernels kernels = MakeKernels<Scalar>();
  return kernels;
}

}  // namespace tidepool::kernels::internal
