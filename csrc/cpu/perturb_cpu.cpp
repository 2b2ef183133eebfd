// perturb on the CPU: out[b, i] = keep[b, mask[i]] ? x[i] : baseline[i], all B rows in one pass.
//
// The op is a select, so elements are moved as raw 2/4/8-byte words (T = uint16/32/64_t) and
// the same code serves every floating dtype. Inputs arrive as (pointer, per-dim strides) over the
// coalesced output shape; broadcast dims have stride 0, so nothing is expanded in memory.
//
// Work unit: one block of up to kBlock consecutive elements of an output "row" (the innermost
// coalesced dim). Per unit: gather x, baseline and the ids into small local buffers, check the
// ids' range, then for each chunk of 8*sizeof(T) perturbations look up one keep word per element
// (bit j = keep[chunk row j, id]) and write every output row of the chunk with a branch-free
// bit blend. The output (B times the input) dominates the memory traffic; when it is larger than
// the caches it is written with non-temporal stores, which skip the read-for-ownership of lines
// that are about to be overwritten anyway.
#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include <sys/mman.h>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include <pybind11/stl.h>

#include "common.h"

namespace mmxai {
namespace {

constexpr int64_t kBlock = 2048;                  // elements per unit: local buffers stay in L1/L2
constexpr int64_t kStreamBytes = 16LL << 20;      // outputs this large bypass the cache
constexpr int64_t kHugePageBytes = 2LL << 20;
// Outputs smaller than this stay on the calling thread: waking the OpenMP team costs more than
// the copy (milliseconds per call on a busy machine, for a few hundred bytes of output).
constexpr int64_t kParallelWork = 1 << 16;

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX2__)
constexpr int kVecBytes = 32;
#elif defined(__SSE2__)
constexpr int kVecBytes = 16;
#else
constexpr int kVecBytes = 0;
#endif

// The coalesced iteration space: sizes[0..nd-1] (innermost last) and element strides per input.
struct Layout {
  std::vector<int64_t> sizes, x_strides, m_strides, b_strides;
  int64_t inner() const { return sizes.back(); }
  int64_t rows() const {
    int64_t r = 1;
    for (size_t d = 0; d + 1 < sizes.size(); ++d) r *= sizes[d];
    return r;
  }
};

// Offsets of the first element of output row `row` in x, mask and baseline.
inline void row_offsets(const Layout& lay, int64_t row, int64_t& ox, int64_t& om, int64_t& ob) {
  ox = om = ob = 0;
  for (int64_t d = (int64_t)lay.sizes.size() - 2; d >= 0; --d) {
    const int64_t idx = row % lay.sizes[d];
    row /= lay.sizes[d];
    ox += idx * lay.x_strides[d];
    om += idx * lay.m_strides[d];
    ob += idx * lay.b_strides[d];
  }
}

template <typename Dst, typename Src>
inline void load_strided(Dst* dst, const Src* src, int64_t stride, int64_t n) {
  if (stride == 1) {
    for (int64_t k = 0; k < n; ++k) dst[k] = (Dst)src[k];
  } else if (stride == 0) {
    std::fill(dst, dst + n, (Dst)src[0]);
  } else {
    for (int64_t k = 0; k < n; ++k) dst[k] = (Dst)src[k * stride];
  }
}

// dst[k] = bit `shift` of w[k] ? xs[k] : bs[k], for k < n.
template <typename T>
inline void blend_row(T* dst, const T* xs, const T* bs, const T* w, int shift, int64_t n, bool stream) {
  auto select = [&](int64_t k) {
    const T m = (T)0 - (T)((w[k] >> shift) & 1u);  // keep -> all ones, else all zeros
    return (T)((xs[k] & m) | (bs[k] & (T)~m));
  };
  int64_t k = 0;
#if defined(__SSE2__)
  if (stream) {
    typedef T V __attribute__((vector_size(kVecBytes)));
    constexpr int64_t kLanes = kVecBytes / sizeof(T);
    for (; k < n && ((uintptr_t)(dst + k) % kVecBytes) != 0; ++k) dst[k] = select(k);
    const V one = V{} + (T)1;
    for (; k + kLanes <= n; k += kLanes) {
      V wv, xv, bv;
      std::memcpy(&wv, w + k, sizeof(V));
      std::memcpy(&xv, xs + k, sizeof(V));
      std::memcpy(&bv, bs + k, sizeof(V));
      const V m = -((wv >> shift) & one);
      const V r = (xv & m) | (bv & ~m);
#if defined(__AVX512F__)
      _mm512_stream_si512((__m512i*)(dst + k), (__m512i)r);
#elif defined(__AVX2__)
      _mm256_stream_si256((__m256i*)(dst + k), (__m256i)r);
#else
      _mm_stream_si128((__m128i*)(dst + k), (__m128i)r);
#endif
    }
  }
#endif
  for (; k < n; ++k) dst[k] = select(k);
}

// Pack keep[B, F] (bytes 0/1) into words: bits[c * F + f] has bit j = keep[c * kBits + j, f].
template <typename T>
std::vector<T> pack_keep(const uint8_t* keep, int64_t n_rows, int64_t n_features) {
  constexpr int64_t kBits = 8 * sizeof(T);
  const int64_t chunks = (n_rows + kBits - 1) / kBits;
  std::vector<T> bits((size_t)(chunks * n_features), T(0));
  for (int64_t b = 0; b < n_rows; ++b)
    for (int64_t f = 0; f < n_features; ++f)
      if (keep[b * n_features + f]) bits[(b / kBits) * n_features + f] |= (T)((T)1 << (b % kBits));
  return bits;
}

// Ask for transparent huge pages on a large, not yet touched output: 512x fewer page faults.
void advise_huge_pages(void* out, int64_t bytes) {
#if defined(MADV_HUGEPAGE)
  const uintptr_t begin = ((uintptr_t)out + kHugePageBytes - 1) & ~(uintptr_t)(kHugePageBytes - 1);
  const uintptr_t end = ((uintptr_t)out + bytes) & ~(uintptr_t)(kHugePageBytes - 1);
  if (end > begin) madvise((void*)begin, end - begin, MADV_HUGEPAGE);  // advisory: errors ignored
#endif
}

// Returns (min id, max id) over all elements; blocks holding an id outside [0, F) are not written.
template <typename T, typename M>
std::pair<int64_t, int64_t> perturb_kernel(const T* x, const M* mask, const T* base, const Layout& lay,
                                           const uint8_t* keep, int64_t n_rows, int64_t n_features,
                                           T* out) {
  constexpr int64_t kBits = 8 * sizeof(T);
  const std::vector<T> bits = pack_keep<T>(keep, n_rows, n_features);
  const int64_t chunks = (n_rows + kBits - 1) / kBits;
  const int64_t inner = lay.inner(), rows = lay.rows(), numel = rows * inner;
  const int64_t blocks_per_row = (inner + kBlock - 1) / kBlock;
  const int64_t units = rows * blocks_per_row;
  const int64_t sx = lay.x_strides.back(), sm = lay.m_strides.back(), sb = lay.b_strides.back();
  const bool stream = n_rows * numel * (int64_t)sizeof(T) >= kStreamBytes;
  if (stream) advise_huge_pages(out, n_rows * numel * (int64_t)sizeof(T));

  int64_t lo = INT64_MAX, hi = INT64_MIN;
#pragma omp parallel reduction(min : lo) reduction(max : hi) if (units > 1 && n_rows * numel >= kParallelWork)
  {
    std::vector<T> xs(kBlock), bs(kBlock), words(kBlock);
    std::vector<int64_t> ids(kBlock);
#pragma omp for schedule(static) nowait
    for (int64_t u = 0; u < units; ++u) {
      const int64_t row = u / blocks_per_row;
      const int64_t j0 = (u % blocks_per_row) * kBlock;
      const int64_t n = std::min(kBlock, inner - j0);
      int64_t ox, om, ob;
      row_offsets(lay, row, ox, om, ob);

      load_strided(ids.data(), mask + om + j0 * sm, sm, n);
      int64_t block_lo = INT64_MAX, block_hi = INT64_MIN;
      for (int64_t k = 0; k < n; ++k) {
        block_lo = std::min(block_lo, ids[k]);
        block_hi = std::max(block_hi, ids[k]);
      }
      lo = std::min(lo, block_lo);
      hi = std::max(hi, block_hi);
      if (block_lo < 0 || block_hi >= n_features) continue;  // reported to the caller

      load_strided(xs.data(), x + ox + j0 * sx, sx, n);
      load_strided(bs.data(), base + ob + j0 * sb, sb, n);
      for (int64_t c = 0; c < chunks; ++c) {
        const T* table = bits.data() + c * n_features;
        for (int64_t k = 0; k < n; ++k) words[k] = table[ids[k]];
        const int64_t rows_in_chunk = std::min(kBits, n_rows - c * kBits);
        for (int64_t j = 0; j < rows_in_chunk; ++j) {
          T* dst = out + (c * kBits + j) * numel + row * inner + j0;
          blend_row(dst, xs.data(), bs.data(), words.data(), (int)j, n, stream);
        }
      }
    }
#if defined(__SSE2__)
    if (stream) _mm_sfence();  // order the non-temporal stores before the threads join
#endif
  }
  return {lo, hi};
}

template <typename T>
std::pair<int64_t, int64_t> dispatch_mask(uintptr_t x, uintptr_t mask, DType mask_dt, uintptr_t base,
                                          const Layout& lay, uintptr_t keep, int64_t n_rows,
                                          int64_t n_features, uintptr_t out) {
  auto run = [&](auto* typed_mask) {
    return perturb_kernel<T>(ptr<const T>(x), typed_mask, ptr<const T>(base), lay, ptr<const uint8_t>(keep),
                             n_rows, n_features, ptr<T>(out));
  };
  switch (mask_dt) {
    case DType::u8: return run(ptr<const uint8_t>(mask));
    case DType::i8: return run(ptr<const int8_t>(mask));
    case DType::i16: return run(ptr<const int16_t>(mask));
    case DType::i32: return run(ptr<const int32_t>(mask));
    case DType::i64: return run(ptr<const int64_t>(mask));
    default: throw std::invalid_argument("perturb: feature_mask must have an integer dtype");
  }
}

std::pair<int64_t, int64_t> perturb(uintptr_t x, const std::string& x_dtype, uintptr_t mask,
                                    const std::string& mask_dtype, uintptr_t base,
                                    const std::vector<int64_t>& sizes, const std::vector<int64_t>& x_strides,
                                    const std::vector<int64_t>& m_strides, const std::vector<int64_t>& b_strides,
                                    uintptr_t keep, int64_t n_rows, int64_t n_features, uintptr_t out) {
  const size_t nd = sizes.size();
  if (nd == 0 || x_strides.size() != nd || m_strides.size() != nd || b_strides.size() != nd)
    throw std::invalid_argument("perturb: sizes and the three stride lists must have the same, non-zero length");
  const Layout lay{sizes, x_strides, m_strides, b_strides};
  const DType mdt = parse_dtype(mask_dtype);
  switch (dtype_size(parse_dtype(x_dtype))) {
    case 2: return dispatch_mask<uint16_t>(x, mask, mdt, base, lay, keep, n_rows, n_features, out);
    case 4: return dispatch_mask<uint32_t>(x, mask, mdt, base, lay, keep, n_rows, n_features, out);
    case 8: return dispatch_mask<uint64_t>(x, mask, mdt, base, lay, keep, n_rows, n_features, out);
    default: throw std::invalid_argument("perturb: x must have a 2-, 4- or 8-byte dtype, got " + x_dtype);
  }
}

}  // namespace

void register_perturb(pybind11::module_& m) {
  m.def("perturb", &perturb, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "perturb(x_ptr, x_dtype, mask_ptr, mask_dtype, base_ptr, sizes, x_strides, mask_strides, "
        "base_strides, keep_ptr, B, F, out_ptr) -> (min_id, max_id): writes the contiguous "
        "[B, prod(sizes)] output; blocks with ids outside [0, F) are skipped (caller raises)");
}

}  // namespace mmxai
