// Scalar bf16/fp16 <-> fp32 conversions, round-to-nearest-even, bit-exact
// with the SIMD paths (F16C's VCVTPS2PH for fp16) so every ISA produces the
// same low-precision bytes.
//
//   uint16_t b = F32ToBF16Bits(1.5f);
//   float f = BF16BitsToF32(b);  // 1.5f
#pragma once

#include <bit>
#include <cstdint>

namespace tidepool::kernels {

inline float BF16BitsToF32(uint16_t b) {
  return std::bit_cast<float>(static_cast<uint32_t>(b) << 16);
}

inline uint16_t F32ToBF16Bits(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  // NaN must stay NaN: the rounding add below could carry it into Inf.
  if ((x & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((x >> 16) | 0x40u);
  }
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

inline float F16BitsToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) {
    // Inf, or a NaN made quiet as VCVTPH2PS does.
    const uint32_t quiet = mant != 0 ? 0x400000u : 0u;
    return std::bit_cast<float>(sign | 0x7f800000u | quiet | (mant << 13));
  }
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24 is exact in fp32.
    const float mag = static_cast<float>(mant) * 0x1p-24f;
    return std::bit_cast<float>(sign | std::bit_cast<uint32_t>(mag));
  }
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
}

inline uint16_t F32ToF16Bits(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {
    // Inf stays Inf; NaN is quieted and keeps its top payload bits, as F16C.
    if (ax > 0x7f800000u) return sign | 0x7e00u | ((ax >> 13) & 0x3ffu);
    return sign | 0x7c00u;
  }
  // 65520 is the midpoint between 65504 (max half) and 2^16; ties go to the
  // even neighbour, which is Inf.
  if (ax >= 0x477ff000u) return sign | 0x7c00u;
  if (ax < 0x38800000u) {
    // Result is a half subnormal (or zero): round mant * 2^(e+1) to integer.
    const int e = static_cast<int>(ax >> 23) - 127;
    const int shift = -e - 1;
    if (shift >= 25) return static_cast<uint16_t>(sign);
    const uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
    uint32_t q = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (q & 1u))) ++q;
    return static_cast<uint16_t>(sign | q);
  }
  const uint32_t t = ax - 0x38000000u;  // rebias exponent 127 -> 15
  return static_cast<uint16_t>(sign | ((t + 0xfffu + ((t >> 13) & 1u)) >> 13));
}

}  // namespace tidepool::kernels
