// Vectors for the CPU kernels. CMake compiles each CPU kernel file once per instruction set
// (x86-64 baseline, AVX2+FMA, AVX-512; NEON on Arm), each with its own -march; this header turns
// the compiler's ISA macros into the vector width and register count the kernels block for, and
// names the variant. Everything a kernel file defines lives in namespace GF_CPU_VARIANT (and
// these helpers in an inline namespace of that name), so the variants' symbols never merge.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#include <immintrin.h>
#define GF_CPU_VARIANT avx512
#define GF_VECTOR_BYTES 64
#define GF_VECTOR_REGISTERS 32
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define GF_CPU_VARIANT avx2
#define GF_VECTOR_BYTES 32
#define GF_VECTOR_REGISTERS 16
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#define GF_CPU_VARIANT neon
#define GF_VECTOR_BYTES 16
#define GF_VECTOR_REGISTERS 32
#else  // x86-64 baseline (SSE2) and anything else: 16-byte vectors on 16 registers
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#define GF_CPU_VARIANT baseline
#define GF_VECTOR_BYTES 16
#define GF_VECTOR_REGISTERS 16
#endif

#define GF_STRINGIFY_(x) #x
#define GF_STRINGIFY(x) GF_STRINGIFY_(x)
#define GF_CPU_VARIANT_NAME GF_STRINGIFY(GF_CPU_VARIANT)

namespace gf::simd {
inline namespace GF_CPU_VARIANT {

constexpr int kBytes = GF_VECTOR_BYTES;
constexpr int kRegisters = GF_VECTOR_REGISTERS;

template <class T, int Bytes>
struct VectorOf {
  typedef T type __attribute__((vector_size(Bytes)));
};
// A whole vector of T, and one of a given byte width (half vectors for ragged row ends).
template <class T>
using vec = typename VectorOf<T, kBytes>::type;
template <class T, int Bytes>
using vec_n = typename VectorOf<T, Bytes>::type;
template <class T>
constexpr int lanes = kBytes / int(sizeof(T));

template <class V, class T>  // an unaligned load of any vector type
inline V load_as(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class T>
inline vec<T> load(const T* p) {
  return load_as<vec<T>>(p);
}
template <class T, class V>
inline void store(T* p, V v) {
  std::memcpy(p, &v, sizeof v);
}
// s - 0 is s for every s (s + 0 is not, for -0), so this folds into a plain broadcast.
template <class T, int Bytes = kBytes>
inline vec_n<T, Bytes> splat(T s) {
  return s - vec_n<T, Bytes>{};
}
// Elementwise min and max of floats: the second operand where the first is NaN (minps and
// maxps; GCC does not turn the vector a < b ? a : b into them).
inline vec<float> min(vec<float> a, vec<float> b) {
#if GF_VECTOR_BYTES == 64
  return vec<float>(_mm512_min_ps(__m512(a), __m512(b)));
#elif defined(__AVX__) && GF_VECTOR_BYTES == 32
  return vec<float>(_mm256_min_ps(__m256(a), __m256(b)));
#elif defined(__SSE__) && GF_VECTOR_BYTES == 16
  return vec<float>(_mm_min_ps(__m128(a), __m128(b)));
#else
  return a < b ? a : b;
#endif
}
inline vec<float> max(vec<float> a, vec<float> b) {
#if GF_VECTOR_BYTES == 64
  return vec<float>(_mm512_max_ps(__m512(a), __m512(b)));
#elif defined(__AVX__) && GF_VECTOR_BYTES == 32
  return vec<float>(_mm256_max_ps(__m256(a), __m256(b)));
#elif defined(__SSE__) && GF_VECTOR_BYTES == 16
  return vec<float>(_mm_max_ps(__m128(a), __m128(b)));
#else
  return a > b ? a : b;
#endif
}

// Lanes [Off, Off + n / 2) of an n-lane vector, and a vector zero-extended to twice its width:
// register moves (a memcpy through memory stalls store forwarding at 64 bytes).
template <std::size_t Off, class T, int Bytes, std::size_t... I>
inline vec_n<T, Bytes / 2> half_lanes(vec_n<T, Bytes> v, std::index_sequence<I...>) {
#if __has_builtin(__builtin_shufflevector)
  return __builtin_shufflevector(v, v, (Off + I)...);
#else
  vec_n<T, Bytes / 2> h;
  std::memcpy(&h, reinterpret_cast<const char*>(&v) + Off * sizeof(T), sizeof h);
  return h;
#endif
}
template <class T, int Bytes>
inline vec_n<T, Bytes / 2> low_half(vec_n<T, Bytes> v) {
  return half_lanes<0, T, Bytes>(v, std::make_index_sequence<Bytes / sizeof(T) / 2>{});
}
template <class T, int Bytes>
inline vec_n<T, Bytes / 2> high_half(vec_n<T, Bytes> v) {
  constexpr std::size_t n = Bytes / sizeof(T) / 2;
  return half_lanes<n, T, Bytes>(v, std::make_index_sequence<n>{});
}
template <class T, int Bytes, std::size_t... I>
inline vec_n<T, Bytes * 2> widen_lanes(vec_n<T, Bytes> h, std::index_sequence<I...>) {
#if __has_builtin(__builtin_shufflevector)
  return __builtin_shufflevector(h, vec_n<T, Bytes>{}, I...);
#else
  vec_n<T, Bytes * 2> v{};
  std::memcpy(&v, &h, sizeof h);
  return v;
#endif
}
template <class T, int Bytes>  // upper half zero
inline vec_n<T, Bytes * 2> widen(vec_n<T, Bytes> h) {
  return widen_lanes<T, Bytes>(h, std::make_index_sequence<2 * Bytes / sizeof(T)>{});
}

// Sum of the lanes, halving the width.
template <class T, int Bytes = kBytes>
inline T horizontal_sum(vec_n<T, Bytes> v) {
  if constexpr (Bytes == int(sizeof(T)))
    return v[0];
  else
    return horizontal_sum<T, Bytes / 2>(low_half<T, Bytes>(v) + high_half<T, Bytes>(v));
}

// Bit l set where lane l is nonzero (comparison masks, 0/1 flags).
inline uint32_t mask_bits(vec<int32_t> m) {
#if defined(__AVX512F__) && GF_VECTOR_BYTES == 64
  // Not through a mask register: GCC 12 spills a __mmask16 with a 16-bit store and reloads it
  // as 32 bits (garbage upper bits: out-of-range lanes in pairs_cpu, seen under ASan and in
  // 1 of 2 runs of the tests). (-m | m) is negative exactly where m is nonzero; its
  // saturating narrowing to bytes keeps the sign for movemask.
  const __m512i v = reinterpret_cast<__m512i>(m);
  const __m512i sign = _mm512_or_si512(_mm512_sub_epi32(_mm512_setzero_si512(), v), v);
  return uint32_t(_mm_movemask_epi8(_mm512_cvtsepi32_epi8(sign)));
#else
  const vec<int32_t> set = m != 0;  // all ones or zero per lane
#if defined(__AVX2__) && GF_VECTOR_BYTES == 32
  return uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(reinterpret_cast<__m256i>(set))));
#elif defined(__SSE2__) && GF_VECTOR_BYTES == 16
  return uint32_t(_mm_movemask_ps(_mm_castsi128_ps(reinterpret_cast<__m128i>(set))));
#elif defined(__aarch64__) && GF_VECTOR_BYTES == 16
  const uint32x4_t weights = {1, 2, 4, 8};
  return vaddvq_u32(vandq_u32(reinterpret_cast<uint32x4_t>(set), weights));
#else
  uint32_t b = 0;
  for (int l = 0; l < lanes<int32_t>; ++l) b |= uint32_t(set[l] != 0) << l;
  return b;
#endif
#endif
}

}  // namespace GF_CPU_VARIANT
}  // namespace gf::simd
