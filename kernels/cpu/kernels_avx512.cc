// AVX-512 (F, BW, VL) path, 16 floats per vector. As in the AVX2 file,
// target attributes keep these instructions out of generic code.
#include <cstring>
#include <type_traits>

#include "kernels/cpu/half.h"
#include "kernels/cpu/simd_kernels.h"

#if defined(__x86_64__)
// GCC 12's avx512fintrin.h initializes "undefined" vectors from themselves
// (_mm512_undefined_*), which its own flow analysis then reports.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

namespace tidepool::kernels::internal {
namespace {

#define TP_SIMD_TARGET \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define TP_INLINE TP_SIMD_TARGET __attribute__((always_inline)) static inline

struct Avx512 {
  static constexpr size_t kWidth = 16;
  static constexpr bool kCanStream = true;
  using F = __m512;
  using H = __m256i;
  using D = __m512d;
  TP_INLINE F Load(const float* p) { return _mm512_loadu_ps(p); }
  TP_INLINE void Store(float* p, F x) { _mm512_storeu_ps(p, x); }
  TP_INLINE F LoadBF16(const uint16_t* p) {
    const __m512i w = _mm512_cvtepu16_epi32(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
  TP_INLINE F LoadF16(const uint16_t* p) {
    return _mm512_cvtph_ps(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  TP_INLINE H ToBF16Bits(F x) {
    // Integer round-to-nearest-even rather than VCVTNEPS2BF16, which flushes
    // subnormals and is missing before Cooper Lake / Zen 4.
    const __m512i bits = _mm512_castps_si512(x);
    const __m512i lsb =
        _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(
        _mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), lsb);
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(
        r, nan, _mm512_or_si512(bits, _mm512_set1_epi32(0x400000)));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
  }
  TP_INLINE H ToF16Bits(F x) {
    return _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  TP_INLINE void StoreHalves(uint16_t* p, H h) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), h);
  }
  TP_INLINE void StreamHalves(uint16_t* p, H h) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), h);
  }
  TP_INLINE void StoreFence() { _mm_sfence(); }
  TP_INLINE F Set1(float x) { return _mm512_set1_ps(x); }
  TP_INLINE F Mul(F a, F b) { return _mm512_mul_ps(a, b); }
  TP_INLINE F Fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  TP_INLINE F Fnmadd(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }
  TP_INLINE F Sqrt(F a) { return _mm512_sqrt_ps(a); }
  TP_INLINE F Div(F a, F b) { return _mm512_div_ps(a, b); }
  TP_INLINE D ZeroD() { return _mm512_setzero_pd(); }
  TP_INLINE void AccSquares(F x, D* acc) {
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(x));
    const __m512d hi = _mm512_cvtps_pd(
        _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
    *acc = _mm512_fmadd_pd(lo, lo, *acc);
    *acc = _mm512_fmadd_pd(hi, hi, *acc);
  }
  TP_INLINE double ReduceD(D acc) { return _mm512_reduce_add_pd(acc); }
};

#include "kernels/cpu/kernels_body.inc"

#undef TP_INLINE
#undef TP_SIMD_TARGET

}  // namespace

const IsaKernels* Avx512Kernels() {
  static const IsaKernels kernels = MakeKernels<Avx512>();
  return &kernels;
}

}  // namespace tidepool::kernels::internal

#else  // !__x86_64__

namespace tidepool::kernels::internal {
const IsaKernels* Avx512Kernels() { return nullptr; }
}  // namespace tidepool::kernels::internal

#endif
