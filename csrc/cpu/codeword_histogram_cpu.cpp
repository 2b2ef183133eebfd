// codeword_histogram on the CPU: counts of codeword indices per batch row.
#include <algorithm>
#include <vector>

#include <omp.h>

#include "common.h"

namespace mmxai {
namespace {

// Histogram of codeword indices: out[b, k] = #{i : idx[b, i] == k}, idx viewed as [B, L].
// Each thread counts a contiguous range of the flattened indices into a local histogram and
// adds it to the output row whenever its range crosses into the next batch (and at the end);
// only rows shared by two threads' ranges see concurrent adds, hence the atomics.
template <typename I>
void histogram_kernel(const I* idx, int64_t B, int64_t L, int64_t K, int64_t* out) {
  std::fill(out, out + B * K, int64_t(0));
  const int64_t total = B * L;
#pragma omp parallel if (total > 32768)
  {
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t begin = total * t / threads, end = total * (t + 1) / threads;
    std::vector<int64_t> local(K, 0);
    auto flush = [&](int64_t b) {
      int64_t* row = out + b * K;
      for (int64_t k = 0; k < K; ++k) {
        if (local[k]) {
#pragma omp atomic
          row[k] += local[k];
          local[k] = 0;
        }
      }
    };
    int64_t i = begin;
    while (i < end) {
      const int64_t b = i / L;
      const int64_t stop = std::min(end, (b + 1) * L);
      for (; i < stop; ++i) {
        const int64_t v = (int64_t)idx[i];
        if (v >= 0 && v < K) ++local[v];  // the caller has checked the range; never write outside
      }
      flush(b);
    }
  }
}

void codeword_histogram(uintptr_t indices, const std::string& dtype, int64_t B, int64_t L, int64_t K,
                        uintptr_t out) {
  if (B < 0 || L < 0 || K < 1) throw std::invalid_argument("codeword_histogram: need B >= 0, L >= 0, K >= 1");
  switch (parse_dtype(dtype)) {
    case DType::i64: return histogram_kernel(ptr<const int64_t>(indices), B, L, K, ptr<int64_t>(out));
    case DType::i32: return histogram_kernel(ptr<const int32_t>(indices), B, L, K, ptr<int64_t>(out));
    default: throw std::invalid_argument("codeword_histogram: indices must be int32 or int64, got " + dtype);
  }
}

}  // namespace

void register_codeword_histogram(pybind11::module_& m) {
  m.def("codeword_histogram", &codeword_histogram, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "codeword_histogram(idx_ptr, idx_dtype, B, L, K, out_ptr): contiguous indices [B, L] in [0, K) "
        "-> int64 counts [B, K]");
}

}  // namespace mmxai
