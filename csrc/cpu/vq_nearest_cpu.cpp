// vq_nearest on the CPU: nearest-codeword lookup.
//
// vq_nearest: for each row z_n of z [N, D], the index of the nearest codeword of e [K, D] and the
// squared distance. The distance is expanded, ||z - e_k||^2 = ||z||^2 + (||e_k||^2 - 2 z.e_k), and
// only the score s_k = ||e_k||^2 - 2 z.e_k is compared, so the lookup is a small GEMM fused with a
// running argmin; the N x K score matrix is never stored.
//
// Layout: the codebook is packed once per call into panels of NR codewords, each [D][NR] and
// pre-scaled by -2 (exact: a power of two), with the panel's norms alongside (+inf for the padding
// codewords past K). A register-blocked micro-kernel (its shape chosen from the ISA at compile
// time: AVX-512, AVX2 + FMA in intrinsics, or portable C++) computes a kMR x NR tile of scores,
// acc = ||e||^2 then acc += z_d * (-2 e_d) for d = 0..D-1, the same operations in the same order for
// every codeword, so identical codewords get bit-identical scores. The running minimum keeps one
// slot per (row, panel column); a strict '<' keeps the lowest index within a slot, and the final
// per-row reduction over slots breaks ties by the lowest index.
#include <algorithm>
#include <cstdlib>
#include <limits>
#include <memory>
#include <vector>

#include <omp.h>

#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
#include <immintrin.h>
#define MMXAI_VQ_AVX2 1
#endif

#include "common.h"

namespace mmxai {
namespace {

// Register blocking: kMR rows x NR codewords of accumulators, sized from the ISA at compile time.
// AVX-512 (32 zmm): float 6 x 64 is 24 accumulators, plus 4 for the codebook row and 1 broadcast.
// AVX2 (16 ymm): float 6 x 16 is 12 accumulators, plus 2 for the codebook row and 1 broadcast.
// Double has half the lanes, so half the panel width.
constexpr int kMR = 6;
template <typename T> struct Blocking;
#ifdef __AVX512F__
template <> struct Blocking<float> { static constexpr int NR = 64; };
template <> struct Blocking<double> { static constexpr int NR = 32; };
#else
template <> struct Blocking<float> { static constexpr int NR = 16; };
template <> struct Blocking<double> { static constexpr int NR = 8; };
#endif
constexpr int kRowGroups = 8;              // row groups of kMR per block: 48 rows of z stay in L1
constexpr int kBlockRows = kMR * kRowGroups;

template <typename T> struct AlignedFree { void operator()(T* p) const { std::free(p); } };
template <typename T> using AlignedBuffer = std::unique_ptr<T[], AlignedFree<T>>;

template <typename T>
AlignedBuffer<T> aligned_buffer(int64_t count) {
  const size_t bytes = (((size_t)std::max<int64_t>(count, 1) * sizeof(T)) + 63) / 64 * 64;
  T* p = static_cast<T*>(std::aligned_alloc(64, bytes));
  if (!p) throw std::bad_alloc();
  return AlignedBuffer<T>(p);
}

template <typename In, typename T> inline T load(const In* p, int64_t i) { return (T)to_double(p[i]); }
template <> inline float load<float, float>(const float* p, int64_t i) { return p[i]; }
template <> inline float load<half_t, float>(const half_t* p, int64_t i) { return half_to_float(p[i].bits); }
template <> inline float load<bfloat16_t, float>(const bfloat16_t* p, int64_t i) { return bf16_to_float(p[i].bits); }

// Scratch memory kept by the calling thread between calls: small lookups (N = 1) would otherwise
// spend more time on fresh pages of a new buffer than on the search. Buffers above kKeepBytes
// are freed after the call.
constexpr size_t kKeepBytes = size_t(4) << 20;

template <typename T>
class ReusedBuffer {
 public:
  explicit ReusedBuffer(int64_t count) : bytes_(((size_t)std::max<int64_t>(count, 1) * sizeof(T) + 63) / 64 * 64) {
    Cache& c = cache();
    if (c.bytes < bytes_) {
      c.data.reset();
      c.data = AlignedBuffer<unsigned char>(static_cast<unsigned char*>(std::aligned_alloc(64, bytes_)));
      if (!c.data) throw std::bad_alloc();
      c.bytes = bytes_;
    }
  }
  ~ReusedBuffer() {
    Cache& c = cache();
    if (c.bytes > kKeepBytes) { c.data.reset(); c.bytes = 0; }
  }
  T* get() const { return reinterpret_cast<T*>(cache().data.get()); }

 private:
  struct Cache { AlignedBuffer<unsigned char> data; size_t bytes = 0; };
  static Cache& cache() { static thread_local Cache c; return c; }
  size_t bytes_;
};

// The codebook as panels [P][D][NR] of -2 e, then norms [P][NR]; padding codewords have norm +inf,
// so their score is +inf and never wins a strict '<'.
template <typename T>
struct PackedCodebook {
  static constexpr int NR = Blocking<T>::NR;
  int64_t panels = 0, D = 0;
  ReusedBuffer<T> buffer;
  T* values;
  T* norms;

  template <typename In>
  PackedCodebook(const In* e, int64_t K, int64_t D_) : panels((K + NR - 1) / NR), D(D_),
      buffer(panels * (D_ + 1) * NR), values(buffer.get()), norms(buffer.get() + panels * D_ * NR) {
    for (int64_t p = 0; p < panels; ++p) {
      // d outer, codewords inner: each norm is still summed over d in order, but the NR sums are
      // independent and vectorise instead of forming one long dependency chain.
      T* __restrict panel = values + p * D * NR;
      const In* rows = e + p * NR * D;
      const int valid = (int)std::min<int64_t>(NR, K - p * NR);
      T norm[NR] = {};
      T column[NR] = {};  // codeword values at feature d; zero past K
      for (int64_t d = 0; d < D; ++d) {
        for (int j = 0; j < valid; ++j) column[j] = load<In, T>(rows, j * D + d);
        T* __restrict out = panel + d * NR;
        for (int j = 0; j < NR; ++j) {
          norm[j] += column[j] * column[j];
          out[j] = T(-2) * column[j];
        }
      }
      for (int j = 0; j < NR; ++j) norms[p * NR + j] = j < valid ? norm[j] : std::numeric_limits<T>::infinity();
    }
  }
  const T* panel(int64_t p) const { return values + p * D * NR; }
  const T* panel_norms(int64_t p) const { return norms + p * NR; }
};

// acc[r][j] = norms[j] + sum_d z[r][d] * panel[d][j] for kMR rows of z (rows at stride D).
// Portable version: constant trip counts, so GCC unrolls r and j and vectorises j.
template <typename T, int NR>
inline void tile_scores(const T* __restrict z, int64_t D, const T* __restrict panel,
                        const T* __restrict norms, T (&acc)[kMR][NR]) {
  for (int r = 0; r < kMR; ++r)
    for (int j = 0; j < NR; ++j) acc[r][j] = norms[j];
  for (int64_t d = 0; d < D; ++d) {
    const T* __restrict e = panel + d * NR;
    for (int r = 0; r < kMR; ++r) {
      const T zr = z[r * D + d];
      for (int j = 0; j < NR; ++j) acc[r][j] += zr * e[j];
    }
  }
}

// Scores of kMR rows of z against one panel, folded into the running per-slot minimum
// best[r][j] / best_idx[r][j] (slot j of the panel holds codeword p * NR + j).
template <typename T, typename Idx, int NR>
inline void micro_kernel(const T* __restrict z, int64_t D, const T* __restrict panel,
                         const T* __restrict norms, Idx first_index, T* __restrict best,
                         Idx* __restrict best_idx) {
  alignas(64) T acc[kMR][NR];
  tile_scores<T, NR>(z, D, panel, norms, acc);
  for (int r = 0; r < kMR; ++r) {
    T* __restrict b = best + r * NR;
    Idx* __restrict bi = best_idx + r * NR;
    for (int j = 0; j < NR; ++j) {
      const bool better = acc[r][j] < b[j];
      b[j] = better ? acc[r][j] : b[j];
      bi[j] = better ? first_index + (Idx)j : bi[j];
    }
  }
}

#ifdef MMXAI_VQ_AVX2
// AVX2 + FMA: one ymm register type per element type; Idx has the lanes' width, so the index
// blend reuses the value's compare mask.
template <typename T> struct Ymm;
template <> struct Ymm<float> {
  using V = __m256;
  static constexpr int L = 8;
  static V load(const float* p) { return _mm256_load_ps(p); }
  static V splat(const float* p) { return _mm256_broadcast_ss(p); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V less(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static V blend(V a, V b, V mask) { return _mm256_blendv_ps(a, b, mask); }
  static V lanes(int32_t first) { return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_set1_epi32(first), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))); }
  static void store(float* p, V v) { _mm256_store_ps(p, v); }
};
template <> struct Ymm<double> {
  using V = __m256d;
  static constexpr int L = 4;
  static V load(const double* p) { return _mm256_load_pd(p); }
  static V splat(const double* p) { return _mm256_broadcast_sd(p); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V less(V a, V b) { return _mm256_cmp_pd(a, b, _CMP_LT_OQ); }
  static V blend(V a, V b, V mask) { return _mm256_blendv_pd(a, b, mask); }
  static V lanes(int64_t first) { return _mm256_castsi256_pd(_mm256_add_epi64(_mm256_set1_epi64x(first), _mm256_setr_epi64x(0, 1, 2, 3))); }
  static void store(double* p, V v) { _mm256_store_pd(p, v); }
};

// Running minimum of one row's two registers of scores, in registers.
template <typename T, typename Idx>
inline void fold_row(typename Ymm<T>::V s0, typename Ymm<T>::V s1, typename Ymm<T>::V i0,
                     typename Ymm<T>::V i1, T* __restrict b, Idx* __restrict bi) {
  using Y = Ymm<T>;
  constexpr int L = Y::L;
  T* bi_lanes = reinterpret_cast<T*>(bi);  // the same bits, moved through float lanes
  const typename Y::V b0 = Y::load(b), b1 = Y::load(b + L);
  const typename Y::V m0 = Y::less(s0, b0), m1 = Y::less(s1, b1);
  Y::store(b, Y::blend(b0, s0, m0));
  Y::store(b + L, Y::blend(b1, s1, m1));
  Y::store(bi_lanes, Y::blend(Y::load(bi_lanes), i0, m0));
  Y::store(bi_lanes + L, Y::blend(Y::load(bi_lanes + L), i1, m1));
}

// kMR = 6 rows x 2 registers: 12 named accumulators (GCC does not reliably keep a 6 x 16 local
// array in ymm registers), 2 codebook registers and 1 broadcast, 15 of the 16 ymm registers. One
// fused multiply-add per (row, codeword, d), the same for every codeword, so identical codewords
// still get bit-identical scores.
template <typename T, typename Idx>
inline void micro_kernel_avx2(const T* __restrict z, int64_t D, const T* __restrict panel,
                              const T* __restrict norms, Idx first_index, T* __restrict best,
                              Idx* __restrict best_idx) {
  using Y = Ymm<T>;
  constexpr int L = Y::L, NR = 2 * L;
  const typename Y::V n0 = Y::load(norms), n1 = Y::load(norms + L);
  typename Y::V a00 = n0, a01 = n1, a10 = n0, a11 = n1, a20 = n0, a21 = n1;
  typename Y::V a30 = n0, a31 = n1, a40 = n0, a41 = n1, a50 = n0, a51 = n1;
  const T* z0 = z; const T* z1 = z + D; const T* z2 = z + 2 * D;
  const T* z3 = z + 3 * D; const T* z4 = z + 4 * D; const T* z5 = z + 5 * D;
  for (int64_t d = 0; d < D; ++d) {
    const typename Y::V e0 = Y::load(panel + d * NR), e1 = Y::load(panel + d * NR + L);
    typename Y::V s = Y::splat(z0 + d); a00 = Y::fma(s, e0, a00); a01 = Y::fma(s, e1, a01);
    s = Y::splat(z1 + d); a10 = Y::fma(s, e0, a10); a11 = Y::fma(s, e1, a11);
    s = Y::splat(z2 + d); a20 = Y::fma(s, e0, a20); a21 = Y::fma(s, e1, a21);
    s = Y::splat(z3 + d); a30 = Y::fma(s, e0, a30); a31 = Y::fma(s, e1, a31);
    s = Y::splat(z4 + d); a40 = Y::fma(s, e0, a40); a41 = Y::fma(s, e1, a41);
    s = Y::splat(z5 + d); a50 = Y::fma(s, e0, a50); a51 = Y::fma(s, e1, a51);
  }
  const typename Y::V i0 = Y::lanes(first_index), i1 = Y::lanes(first_index + L);
  fold_row<T, Idx>(a00, a01, i0, i1, best, best_idx);
  fold_row<T, Idx>(a10, a11, i0, i1, best + NR, best_idx + NR);
  fold_row<T, Idx>(a20, a21, i0, i1, best + 2 * NR, best_idx + 2 * NR);
  fold_row<T, Idx>(a30, a31, i0, i1, best + 3 * NR, best_idx + 3 * NR);
  fold_row<T, Idx>(a40, a41, i0, i1, best + 4 * NR, best_idx + 4 * NR);
  fold_row<T, Idx>(a50, a51, i0, i1, best + 5 * NR, best_idx + 5 * NR);
}

template <>
inline void micro_kernel<float, int32_t, 16>(const float* __restrict z, int64_t D, const float* __restrict panel,
                                             const float* __restrict norms, int32_t first_index,
                                             float* __restrict best, int32_t* __restrict best_idx) {
  micro_kernel_avx2<float, int32_t>(z, D, panel, norms, first_index, best, best_idx);
}
template <>
inline void micro_kernel<double, int64_t, 8>(const double* __restrict z, int64_t D, const double* __restrict panel,
                                             const double* __restrict norms, int64_t first_index,
                                             double* __restrict best, int64_t* __restrict best_idx) {
  micro_kernel_avx2<double, int64_t>(z, D, panel, norms, first_index, best, best_idx);
}
static_assert(kMR == 6, "micro_kernel_avx2 is written out for 6 rows");
#endif

// Per-thread scratch for one block of kBlockRows rows: the rows of z converted to T (zero rows
// past N), and the running per-slot minimum.
template <typename T, typename Idx>
struct RowBlockScratch {
  static constexpr int NR = Blocking<T>::NR;
  AlignedBuffer<T> z, best;
  AlignedBuffer<Idx> best_idx;
  explicit RowBlockScratch(int64_t D) : z(aligned_buffer<T>(kBlockRows * D)),
      best(aligned_buffer<T>(kBlockRows * NR)), best_idx(aligned_buffer<Idx>(kBlockRows * NR)) {}
};

// Lowest-index minimum over the NR slots of one row.
template <typename T, typename Idx>
inline void reduce_slots(const T* best, const Idx* best_idx, int nr, T& value, int64_t& index) {
  value = best[0];
  Idx idx = best_idx[0];
  for (int j = 1; j < nr; ++j) {
    if (best[j] < value || (best[j] == value && best_idx[j] < idx)) {
      value = best[j];
      idx = best_idx[j];
    }
  }
  index = (int64_t)idx;
}

template <typename In, typename T>
void vq_nearest_kernel(const In* z, const In* e, int64_t N, int64_t K, int64_t D,
                       int64_t* out_idx, In* out_dist) {
  // Slot indices fit the lane width of T (int32 next to float) so the compare-and-blend of the
  // running minimum vectorises; K < 2^31 is checked by the caller.
  using Idx = typename std::conditional<sizeof(T) == 4, int32_t, int64_t>::type;
  constexpr int NR = Blocking<T>::NR;
  const PackedCodebook<T> code(e, K, D);
  const int64_t n_blocks = (N + kBlockRows - 1) / kBlockRows;
#pragma omp parallel if (n_blocks > 1)
  {
    RowBlockScratch<T, Idx> s(D);
    // Dynamic: on a shared machine one preempted thread would otherwise hold up a static half.
#pragma omp for schedule(dynamic, 4)
    for (int64_t blk = 0; blk < n_blocks; ++blk) {
      const int64_t row0 = blk * kBlockRows;
      const int64_t rows = std::min<int64_t>(kBlockRows, N - row0);
      for (int64_t r = 0; r < kBlockRows; ++r)
        for (int64_t d = 0; d < D; ++d)
          s.z.get()[r * D + d] = r < rows ? load<In, T>(z, (row0 + r) * D + d) : T(0);
      std::fill(s.best.get(), s.best.get() + kBlockRows * NR, std::numeric_limits<T>::infinity());
      std::fill(s.best_idx.get(), s.best_idx.get() + kBlockRows * NR, Idx(0));
      const int groups = (int)((rows + kMR - 1) / kMR);
      for (int64_t p = 0; p < code.panels; ++p) {
        for (int g = 0; g < groups; ++g) {
          micro_kernel<T, Idx, NR>(s.z.get() + g * kMR * D, D, code.panel(p), code.panel_norms(p),
                                   (Idx)(p * NR), s.best.get() + g * kMR * NR,
                                   s.best_idx.get() + g * kMR * NR);
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        T score;
        reduce_slots(s.best.get() + r * NR, s.best_idx.get() + r * NR, NR, score, out_idx[row0 + r]);
        const T* zr = s.z.get() + r * D;
        T z_norm = T(0);
        for (int64_t d = 0; d < D; ++d) z_norm += zr[d] * zr[d];
        const T dist = z_norm + score;
        out_dist[row0 + r] = from_float<In>(dist > T(0) ? dist : T(0));
      }
    }
  }
}

void vq_nearest(uintptr_t z, uintptr_t codebook, const std::string& dtype, int64_t N, int64_t K,
                int64_t D, uintptr_t out_idx, uintptr_t out_dist) {
  if (K < 1 || D < 1 || N < 0) throw std::invalid_argument("vq_nearest: need K >= 1, D >= 1, N >= 0");
  if (K >= (int64_t(1) << 31) - Blocking<float>::NR) throw std::invalid_argument("vq_nearest: K must be < 2^31");
  if (N == 0) return;
  int64_t* idx = ptr<int64_t>(out_idx);
  switch (parse_dtype(dtype)) {
    case DType::f32:
      return vq_nearest_kernel<float, float>(ptr<const float>(z), ptr<const float>(codebook), N, K, D, idx,
                                             ptr<float>(out_dist));
    case DType::f64:
      return vq_nearest_kernel<double, double>(ptr<const double>(z), ptr<const double>(codebook), N, K, D,
                                               idx, ptr<double>(out_dist));
    case DType::f16:
      return vq_nearest_kernel<half_t, float>(ptr<const half_t>(z), ptr<const half_t>(codebook), N, K, D,
                                              idx, ptr<half_t>(out_dist));
    case DType::bf16:
      return vq_nearest_kernel<bfloat16_t, float>(ptr<const bfloat16_t>(z), ptr<const bfloat16_t>(codebook),
                                                  N, K, D, idx, ptr<bfloat16_t>(out_dist));
    default: throw std::invalid_argument("vq_nearest: z and codebook must be floating, got " + dtype);
  }
}

}  // namespace

void register_vq_nearest(pybind11::module_& m) {
  m.def("vq_nearest", &vq_nearest, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "vq_nearest(z_ptr, codebook_ptr, dtype, N, K, D, idx_ptr, dist_ptr): contiguous z [N, D] and "
        "codebook [K, D] of one dtype -> int64 indices [N], squared distances [N] in that dtype");
}

}  // namespace mmxai
