// Shared helpers for the CPU kernels: dtype codes, half-precision conversions, raw pointers.
//
// Python passes tensors as (data_ptr, dtype code) pairs, so the extension never links libtorch.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include <pybind11/pybind11.h>

namespace mmxai {

enum class DType { f16, bf16, f32, f64, u8, b8, i8, i16, i32, i64 };

inline DType parse_dtype(const std::string& code) {
  if (code == "f16") return DType::f16;
  if (code == "bf16") return DType::bf16;
  if (code == "f32") return DType::f32;
  if (code == "f64") return DType::f64;
  if (code == "u8") return DType::u8;
  if (code == "bool") return DType::b8;
  if (code == "i8") return DType::i8;
  if (code == "i16") return DType::i16;
  if (code == "i32") return DType::i32;
  if (code == "i64") return DType::i64;
  throw std::invalid_argument("mmxai_fast._C: unknown dtype code '" + code + "'");
}

struct half_t { uint16_t bits; };
struct bfloat16_t { uint16_t bits; };

inline float half_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) { mant <<= 1; --exp; }
      mant &= 0x3ffu;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_half(float f) {  // round to nearest even, like torch
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
  if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // overflow to inf
  if (abs < 0x38800000u) {  // half subnormal or zero: value / 2^-24, rounded to nearest even
    if (abs < 0x33000000u) return (uint16_t)sign;
    const uint32_t e = abs >> 23;
    const uint32_t m = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;
    uint32_t out = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (out & 1u))) ++out;
    return (uint16_t)(sign | out);
  }
  uint32_t out = ((abs >> 13) - (112u << 10));
  const uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (out & 1u))) ++out;
  return (uint16_t)(sign | out);
}

inline float bf16_to_float(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_bf16(float f) {  // round to nearest even; NaN stays NaN
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
  const uint32_t lsb = (x >> 16) & 1u;
  x += 0x7fffu + lsb;
  return (uint16_t)(x >> 16);
}

// Load one element of any supported dtype as T (float or double).
template <typename T>
inline T load_as(const void* base, DType dt, int64_t i) {
  switch (dt) {
    case DType::f16: return (T)half_to_float(static_cast<const uint16_t*>(base)[i]);
    case DType::bf16: return (T)bf16_to_float(static_cast<const uint16_t*>(base)[i]);
    case DType::f32: return (T)static_cast<const float*>(base)[i];
    case DType::f64: return (T)static_cast<const double*>(base)[i];
    case DType::u8: return (T)static_cast<const uint8_t*>(base)[i];
    case DType::b8: return (T)static_cast<const uint8_t*>(base)[i];
    case DType::i8: return (T)static_cast<const int8_t*>(base)[i];
    case DType::i16: return (T)static_cast<const int16_t*>(base)[i];
    case DType::i32: return (T)static_cast<const int32_t*>(base)[i];
    case DType::i64: return (T)static_cast<const int64_t*>(base)[i];
  }
  return T(0);
}

// Typed store for the floating output dtypes.
template <typename Out> inline Out from_float(double v);
template <> inline float from_float<float>(double v) { return (float)v; }
template <> inline double from_float<double>(double v) { return v; }
template <> inline half_t from_float<half_t>(double v) { return half_t{float_to_half((float)v)}; }
template <> inline bfloat16_t from_float<bfloat16_t>(double v) { return bfloat16_t{float_to_bf16((float)v)}; }

template <typename In> inline double to_double(In v) { return (double)v; }
template <> inline double to_double<half_t>(half_t v) { return half_to_float(v.bits); }
template <> inline double to_double<bfloat16_t>(bfloat16_t v) { return bf16_to_float(v.bits); }

inline int64_t dtype_size(DType dt) {
  switch (dt) {
    case DType::f16: case DType::bf16: case DType::i16: return 2;
    case DType::f32: case DType::i32: return 4;
    case DType::f64: case DType::i64: return 8;
    default: return 1;
  }
}

template <typename T> inline T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

}  // namespace mmxai
