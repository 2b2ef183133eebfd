// Occlusion sweep on the CPU (Captum 0.9 `Occlusion` semantics, see mmxai_fast/ops/occlusion.py).
//
// occlusion_batch: out[p] = x with the box of window ids[p] set to the baseline. Each output is a
//   plain copy of x followed by a fill of the (small) box: no mask is ever built.
// occlusion_attribution: out[l, i] = mean of diffs[l, w] over the windows w covering element i,
//   computed row by row along the last dim (see attribution_kernel).
//
// Window geometry per dim k (size n, window w, stride s): counts c = ceil((n - w) / s) + 1
// positions starting at j * s, cropped to [j * s, min(j * s + w, n)); the window index is
// j_0 + c_0 * (j_1 + c_1 * (...)), first dim fastest.
#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <pybind11/stl.h>

#include "common.h"

namespace mmxai {
namespace {

constexpr int64_t kCopyChunk = 1 << 15;  // elements per parallel copy task
// Smaller jobs stay on the calling thread: waking the OpenMP team costs more than the work.
constexpr int64_t kParallelWork = 1 << 16;

struct Geometry {
  std::vector<int64_t> size, window, stride, count, mult;
  int64_t ndim = 0, volume = 1, num_windows = 1;

  Geometry(const std::vector<int64_t>& shape, const std::vector<int64_t>& win,
           const std::vector<int64_t>& strides)
      : size(shape), window(win), stride(strides) {
    ndim = (int64_t)shape.size();
    if (ndim == 0 || win.size() != shape.size() || strides.size() != shape.size())
      throw std::invalid_argument("occlusion: input_shape, window and strides must have the same non-zero length");
    for (int64_t k = 0; k < ndim; ++k) {
      if (size[k] <= 0 || window[k] <= 0 || stride[k] <= 0 || window[k] > size[k])
        throw std::invalid_argument("occlusion: sizes must be positive with window <= input_shape");
      count.push_back((size[k] - window[k] + stride[k] - 1) / stride[k] + 1);
      mult.push_back(num_windows);
      num_windows *= count.back();
      volume *= size[k];
    }
  }

  // The box of window `id`, cropped at the border (an empty box has start == stop).
  void box(int64_t id, int64_t* start, int64_t* stop) const {
    for (int64_t k = 0; k < ndim; ++k) {
      const int64_t first = (id % count[k]) * stride[k];
      id /= count[k];
      start[k] = std::min(first, size[k]);
      stop[k] = std::min(first + window[k], size[k]);
    }
  }

  // Positions covering index i of dim k: [lo, hi] (empty when hi < lo, i.e. i lies in a gap).
  int64_t first_cover(int64_t k, int64_t i) const {
    return std::max<int64_t>(i - window[k] + stride[k], 0) / stride[k];  // ceil((i - w + 1) / s)
  }
  int64_t last_cover(int64_t k, int64_t i) const { return std::min(i / stride[k], count[k] - 1); }
};

// The outputs are fresh allocations that the kernel touches first. For large ones, first-touch
// page faults on 4 KiB pages cost several times the copy itself, so ask for transparent huge
// pages (effective where THP is in "madvise" or "always" mode; a failed call changes nothing).
void advise_huge_pages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  if (bytes < int64_t(2 * kHuge)) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + (uintptr_t)bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

// ---------------------------------------------------------------------------- occlusion_batch

// T is an unsigned integer of the element's size: the batch only moves elements around.
template <typename T>
void batch_kernel(const T* x, int64_t lead, const Geometry& g, const int64_t* ids, int64_t n_ids,
                  const T* fill, bool fill_full, T* out) {
  const int64_t D = g.ndim, V = g.volume, LV = lead * V;
  std::vector<int64_t> starts(n_ids * D), stops(n_ids * D);
  for (int64_t p = 0; p < n_ids; ++p) g.box(ids[p], &starts[p * D], &stops[p * D]);
  std::vector<int64_t> pitch(D, 1);
  for (int64_t k = D - 2; k >= 0; --k) pitch[k] = pitch[k + 1] * g.size[k + 1];
  const int64_t chunks = (LV + kCopyChunk - 1) / kCopyChunk;
  advise_huge_pages(out, n_ids * LV * (int64_t)sizeof(T));

#pragma omp parallel if (n_ids * LV >= kParallelWork)
  {
    // 1. Every output starts as a copy of x (split in chunks so one big output uses all threads;
    //    dynamic, so a thread that loses its core to another process does not hold up the rest).
#pragma omp for schedule(dynamic, 4)
    for (int64_t t = 0; t < n_ids * chunks; ++t) {
      const int64_t p = t / chunks, begin = (t % chunks) * kCopyChunk;
      const int64_t n = std::min(kCopyChunk, LV - begin);
      std::memcpy(out + p * LV + begin, x + begin, n * sizeof(T));
    }
    // 2. Overwrite each box, one contiguous run along the last dim at a time.
    std::vector<int64_t> idx(D);
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < n_ids * lead; ++t) {
      const int64_t p = t / lead, l = t % lead;
      const int64_t* a = &starts[p * D];
      const int64_t* b = &stops[p * D];
      bool empty = false;
      for (int64_t k = 0; k < D; ++k) empty |= a[k] >= b[k];
      if (empty) continue;
      const int64_t run = b[D - 1] - a[D - 1];
      for (int64_t k = 0; k < D; ++k) idx[k] = a[k];
      while (true) {
        int64_t offset = l * V;
        for (int64_t k = 0; k < D; ++k) offset += idx[k] * pitch[k];
        T* dst = out + p * LV + offset;
        if (fill_full) {
          std::memcpy(dst, fill + offset, run * sizeof(T));
        } else {
          std::fill(dst, dst + run, fill[0]);
        }
        // Odometer over the box's outer dims (0 .. D-2), last of them fastest.
        int64_t k = D - 2;
        while (k >= 0 && ++idx[k] == b[k]) idx[k] = a[k], --k;
        if (k < 0) break;
      }
    }
  }
}

void occlusion_batch(uintptr_t x, int64_t elem_size, int64_t lead, const std::vector<int64_t>& shape,
                     const std::vector<int64_t>& window, const std::vector<int64_t>& strides,
                     uintptr_t ids_ptr, int64_t n_ids, uintptr_t fill, bool fill_full, uintptr_t out) {
  const Geometry g(shape, window, strides);
  const int64_t* ids = ptr<const int64_t>(ids_ptr);
  for (int64_t p = 0; p < n_ids; ++p)
    if (ids[p] < 0 || ids[p] >= g.num_windows)
      throw std::invalid_argument("occlusion_batch: window id " + std::to_string(ids[p]) + " out of [0, " +
                                  std::to_string(g.num_windows) + ")");
  switch (elem_size) {
    case 2: return batch_kernel(ptr<const uint16_t>(x), lead, g, ids, n_ids, ptr<const uint16_t>(fill), fill_full,
                                ptr<uint16_t>(out));
    case 4: return batch_kernel(ptr<const uint32_t>(x), lead, g, ids, n_ids, ptr<const uint32_t>(fill), fill_full,
                                ptr<uint32_t>(out));
    case 8: return batch_kernel(ptr<const uint64_t>(x), lead, g, ids, n_ids, ptr<const uint64_t>(fill), fill_full,
                                ptr<uint64_t>(out));
    default: throw std::invalid_argument("occlusion_batch: element size must be 2, 4 or 8 bytes");
  }
}

// ---------------------------------------------------------------------- occlusion_attribution

// One task per row along the last dim (fixed lead index and outer index i_0 .. i_{D-2}). The
// windows covering an element of the row are the product of per-dim position ranges, and the
// outer ranges are the same for the whole row, so the row first sums diffs over its outer
// ranges for every last-dim position j (row_sum[j]), then each element adds row_sum over its
// own last-dim range and divides by its coverage. Accumulation is in double.
template <typename T>
void attribution_kernel(const T* diffs, int64_t lead, const Geometry& g, T* out) {
  const int64_t D = g.ndim, last = D - 1, n_last = g.size[last], c_last = g.count[last];
  const int64_t rows_per_lead = g.volume / n_last, rows = lead * rows_per_lead;
  std::vector<int64_t> lo_last(n_last), hi_last(n_last);
  for (int64_t i = 0; i < n_last; ++i) lo_last[i] = g.first_cover(last, i), hi_last[i] = g.last_cover(last, i);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  advise_huge_pages(out, lead * g.volume * (int64_t)sizeof(T));

#pragma omp parallel if (lead * g.volume >= kParallelWork)
  {
    std::vector<double> row_sum(c_last);
    std::vector<int64_t> lo(D), hi(D), j(D);
#pragma omp for schedule(dynamic, 64)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t l = r / rows_per_lead;
      T* dst = out + r * n_last;
      int64_t rest = r % rows_per_lead, outer_cover = 1;
      for (int64_t k = last - 1; k >= 0; --k) {
        const int64_t i = rest % g.size[k];
        rest /= g.size[k];
        lo[k] = g.first_cover(k, i);
        hi[k] = g.last_cover(k, i);
        outer_cover *= std::max<int64_t>(hi[k] - lo[k] + 1, 0);
      }
      if (outer_cover == 0) {  // the whole row lies in a gap: 0 / 0, as Captum
        for (int64_t i = 0; i < n_last; ++i) dst[i] = from_float<T>(nan);
        continue;
      }
      std::fill(row_sum.begin(), row_sum.end(), 0.0);
      const T* d = diffs + l * g.num_windows;
      for (int64_t k = 0; k < last; ++k) j[k] = lo[k];
      while (true) {
        int64_t base = 0;
        for (int64_t k = 0; k < last; ++k) base += j[k] * g.mult[k];
        for (int64_t q = 0; q < c_last; ++q) row_sum[q] += to_double(d[base + q * g.mult[last]]);
        int64_t k = 0;
        while (k < last && ++j[k] > hi[k]) j[k] = lo[k], ++k;
        if (k == last) break;
      }
      for (int64_t i = 0; i < n_last; ++i) {
        const int64_t a = lo_last[i], b = hi_last[i];
        if (b < a) {
          dst[i] = from_float<T>(nan);
          continue;
        }
        double total = 0.0;
        for (int64_t q = a; q <= b; ++q) total += row_sum[q];
        dst[i] = from_float<T>(total / (double)(outer_cover * (b - a + 1)));
      }
    }
  }
}

void occlusion_attribution(uintptr_t diffs, const std::string& dtype, int64_t lead,
                           const std::vector<int64_t>& shape, const std::vector<int64_t>& window,
                           const std::vector<int64_t>& strides, uintptr_t out) {
  const Geometry g(shape, window, strides);
  switch (parse_dtype(dtype)) {
    case DType::f32: return attribution_kernel(ptr<const float>(diffs), lead, g, ptr<float>(out));
    case DType::f64: return attribution_kernel(ptr<const double>(diffs), lead, g, ptr<double>(out));
    case DType::f16: return attribution_kernel(ptr<const half_t>(diffs), lead, g, ptr<half_t>(out));
    case DType::bf16: return attribution_kernel(ptr<const bfloat16_t>(diffs), lead, g, ptr<bfloat16_t>(out));
    default: throw std::invalid_argument("occlusion_attribution: diffs must be floating, got " + dtype);
  }
}

}  // namespace

void register_occlusion(pybind11::module_& m) {
  m.def("occlusion_batch", &occlusion_batch, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "occlusion_batch(x_ptr, elem_size, lead, input_shape, window, strides, ids_ptr, n_ids, "
        "fill_ptr, fill_full, out_ptr): contiguous [lead, *input_shape] x -> [n_ids, lead, *input_shape]");
  m.def("occlusion_attribution", &occlusion_attribution, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "occlusion_attribution(diffs_ptr, dtype, lead, input_shape, window, strides, out_ptr): "
        "contiguous [lead, num_windows] diffs -> [lead, *input_shape]");
}

}  // namespace mmxai
