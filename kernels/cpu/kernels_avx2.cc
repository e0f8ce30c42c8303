// AVX2 + FMA + F16C path, 8 floats per vector. Every function carries a
// target attribute instead of the file getting -mavx2, so nothing here can
// leak wide instructions into generic code through shared inline functions.
#include <cstring>
#include <type_traits>

#include "kernels/cpu/half.h"
#include "kernels/cpu/simd_kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

namespace tidepool::kernels::internal {
namespace {

#define TP_SIMD_TARGET __attribute__((target("avx2,fma,f16c")))
#define TP_INLINE TP_SIMD_TARGET __attribute__((always_inline)) static inline

struct Avx2 {
  static constexpr size_t kWidth = 8;
  static constexpr bool kCanStream = true;
  using F = __m256;
  using H = __m128i;
  using D = __m256d;
  TP_INLINE F Load(const float* p) { return _mm256_loadu_ps(p); }
  TP_INLINE void Store(float* p, F x) { _mm256_storeu_ps(p, x); }
  TP_INLINE F LoadBF16(const uint16_t* p) {
    const __m256i w = _mm256_cvtepu16_epi32(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  TP_INLINE F LoadF16(const uint16_t* p) {
    return _mm256_cvtph_ps(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  TP_INLINE H ToBF16Bits(F x) {
    // Round to nearest even on the integer bits, keep NaNs quiet NaNs, then
    // gather the high halves of the eight lanes into 16 bytes.
    const __m256i bits = _mm256_castps_si256(x);
    const __m256i lsb =
        _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_add_epi32(
        _mm256_add_epi32(bits, _mm256_set1_epi32(0x7fff)), lsb);
    const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    r = _mm256_blendv_epi8(r,
                           _mm256_or_si256(bits, _mm256_set1_epi32(0x400000)),
                           _mm256_castps_si256(nan));
    r = _mm256_srli_epi32(r, 16);
    __m256i packed = _mm256_packus_epi32(r, r);
    packed = _mm256_permute4x64_epi64(packed, 0xd8);
    return _mm256_castsi256_si128(packed);
  }
  TP_INLINE H ToF16Bits(F x) {
    return _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  TP_INLINE void StoreHalves(uint16_t* p, H h) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), h);
  }
  TP_INLINE void StreamHalves(uint16_t* p, H h) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(p), h);
  }
  TP_INLINE void StoreFence() { _mm_sfence(); }
  TP_INLINE F Set1(float x) { return _mm256_set1_ps(x); }
  TP_INLINE F Mul(F a, F b) { return _mm256_mul_ps(a, b); }
  TP_INLINE F Fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  TP_INLINE F Fnmadd(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }
  TP_INLINE F Sqrt(F a) { return _mm256_sqrt_ps(a); }
  TP_INLINE F Div(F a, F b) { return _mm256_div_ps(a, b); }
  TP_INLINE D ZeroD() { return _mm256_setzero_pd(); }
  TP_INLINE void AccSquares(F x, D* acc) {
    const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(x));
    const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1));
    *acc = _mm256_fmadd_pd(lo, lo, *acc);
    *acc = _mm256_fmadd_pd(hi, hi, *acc);
  }
  TP_INLINE double ReduceD(D acc) {
    const __m128d s =
        _mm_add_pd(_mm256_castpd256_pd128(acc), _mm256_extractf128_pd(acc, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
};

#include "kernels/cpu/kernels_body.inc"

#undef TP_INLINE
#undef TP_SIMD_TARGET

}  // namespace

const IsaKernels* Avx2Kernels() {
  static const IsaKernels kernels = MakeKernels<Avx2>();
  return &kernels;
}

}  // namespace tidepool::kernels::internal

#else  // !__x86_64__

namespace tidepool::kernels::internal {
const IsaKernels* Avx2Kernels() { return nullptr; }
}  // namespace tidepool::kernels::internal

#endif
