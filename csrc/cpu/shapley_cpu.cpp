// Shapley value sampling on the CPU.
//
// shapley_coalitions: keep[r, f] = rank_{perm_index[r]}(f) < prefix_size[r], one vectorised
//   comparison per output row against the row's inverse permutation.
// shapley_accumulate: sums[perms[p, j]] += outputs[p, j + 1] - outputs[p, j] (and sumsq with the
//   square). Each (feature, output chunk) is owned by one task that walks the permutations in
//   order, so the result is deterministic and needs no atomics.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "common.h"

namespace mmxai {
namespace {

constexpr int64_t kTChunk = 64;  // accumulators per accumulation task: they stay in registers/L1
// Below this many element operations a loop runs on one thread: waking the OpenMP team costs more
// than the work (and on a loaded machine a descheduled team member stalls the whole region).
constexpr int64_t kParallelWork = 1 << 16;

// rank[p * F + perms[p * F + j]] = j. Zero-initialised so that a row repeating a value (the
// caller checks the range, uniqueness only on request) still leaves every rank in bounds.
std::vector<int32_t> inverse_permutations(const int64_t* perms, int64_t P, int64_t F) {
  if (F > std::numeric_limits<int32_t>::max()) throw std::invalid_argument("shapley: too many features for int32 ranks");
  std::vector<int32_t> rank((size_t)(P * F), 0);
#pragma omp parallel for schedule(static) if (P * F >= kParallelWork)
  for (int64_t p = 0; p < P; ++p) {
    const int64_t* row = perms + p * F;
    int32_t* out = rank.data() + p * F;
    for (int64_t j = 0; j < F; ++j) out[row[j]] = (int32_t)j;
  }
  return rank;
}

void shapley_coalitions(uintptr_t perms_ptr, int64_t P, int64_t F, uintptr_t perm_index_ptr,
                        uintptr_t prefix_size_ptr, int64_t R, uintptr_t out_ptr) {
  const std::vector<int32_t> rank = inverse_permutations(ptr<const int64_t>(perms_ptr), P, F);
  const int64_t* perm_index = ptr<const int64_t>(perm_index_ptr);
  const int64_t* prefix_size = ptr<const int64_t>(prefix_size_ptr);
  uint8_t* out = ptr<uint8_t>(out_ptr);  // torch.bool: one byte, 0 or 1
#pragma omp parallel for schedule(static) if (R * F >= kParallelWork)
  for (int64_t r = 0; r < R; ++r) {
    const int32_t* rk = rank.data() + perm_index[r] * F;
    const int32_t k = (int32_t)prefix_size[r];
    uint8_t* row = out + r * F;
    for (int64_t f = 0; f < F; ++f) row[f] = (uint8_t)(rk[f] < k);
  }
}

template <typename T, typename Compute>
inline Compute load(const T* p, int64_t i) { return (Compute)to_double(p[i]); }

// One output per coalition (Tn == 1): a task owns kTChunk consecutive features, so the gathers of
// different features overlap (and vectorise) instead of serialising on one accumulator.
template <typename Out, typename Sum, typename Compute>
void accumulate_scalar_kernel(const Out* outputs, const int32_t* rank, int64_t P, int64_t F, Sum* sums, Sum* sumsq) {
  const int64_t n_blocks = (F + kTChunk - 1) / kTChunk;
#pragma omp parallel for schedule(static) if (P * F >= kParallelWork)
  for (int64_t block = 0; block < n_blocks; ++block) {
    const int64_t f0 = block * kTChunk;
    const int64_t n = std::min(kTChunk, F - f0);
    Compute acc[kTChunk], acc_sq[kTChunk];
    std::fill(acc, acc + n, Compute(0));
    std::fill(acc_sq, acc_sq + n, Compute(0));
    for (int64_t p = 0; p < P; ++p) {
      const int32_t* rk = rank + p * F + f0;
      const Out* row = outputs + p * (F + 1);
      for (int64_t i = 0; i < n; ++i) {
        const Compute d = load<Out, Compute>(row, rk[i] + 1) - load<Out, Compute>(row, rk[i]);
        acc[i] += d;
        acc_sq[i] += d * d;
      }
    }
    for (int64_t i = 0; i < n; ++i) sums[f0 + i] = from_float<Sum>(load<Sum, Compute>(sums, f0 + i) + acc[i]);
    if (sumsq != nullptr) {
      for (int64_t i = 0; i < n; ++i) sumsq[f0 + i] = from_float<Sum>(load<Sum, Compute>(sumsq, f0 + i) + acc_sq[i]);
    }
  }
}

// General T: a task owns one feature x kTChunk outputs and walks the permutations in order.
template <typename Out, typename Sum>
void accumulate_kernel(const Out* outputs, const int32_t* rank, int64_t P, int64_t F, int64_t Tn,
                       Sum* sums, Sum* sumsq) {
  // Marginals in float64 if either side is float64, else float32 (half types widen to float).
  using Compute = typename std::conditional<std::is_same<Out, double>::value || std::is_same<Sum, double>::value,
                                            double, float>::type;
  if (Tn == 1) return accumulate_scalar_kernel<Out, Sum, Compute>(outputs, rank, P, F, sums, sumsq);
  const int64_t n_chunks = (Tn + kTChunk - 1) / kTChunk;
  const int64_t perm_stride = (F + 1) * Tn;
#pragma omp parallel for schedule(static) if (P * F * Tn >= kParallelWork)
  for (int64_t task = 0; task < F * n_chunks; ++task) {
    const int64_t f = task / n_chunks;
    const int64_t t0 = (task % n_chunks) * kTChunk;
    const int64_t n = std::min(kTChunk, Tn - t0);
    Compute acc[kTChunk], acc_sq[kTChunk];
    std::fill(acc, acc + n, Compute(0));
    std::fill(acc_sq, acc_sq + n, Compute(0));
    for (int64_t p = 0; p < P; ++p) {
      const Out* before = outputs + p * perm_stride + (int64_t)rank[p * F + f] * Tn + t0;
      const Out* after = before + Tn;
      for (int64_t t = 0; t < n; ++t) {
        const Compute d = load<Out, Compute>(after, t) - load<Out, Compute>(before, t);
        acc[t] += d;
        acc_sq[t] += d * d;
      }
    }
    Sum* s = sums + f * Tn + t0;
    for (int64_t t = 0; t < n; ++t) s[t] = from_float<Sum>(load<Sum, Compute>(s, t) + acc[t]);
    if (sumsq != nullptr) {
      Sum* q = sumsq + f * Tn + t0;
      for (int64_t t = 0; t < n; ++t) q[t] = from_float<Sum>(load<Sum, Compute>(q, t) + acc_sq[t]);
    }
  }
}

template <typename Out>
void dispatch_sums(const Out* outputs, const int32_t* rank, int64_t P, int64_t F, int64_t Tn,
                   uintptr_t sums, DType sums_dt, uintptr_t sumsq) {
  switch (sums_dt) {
    case DType::f32: return accumulate_kernel(outputs, rank, P, F, Tn, ptr<float>(sums), ptr<float>(sumsq));
    case DType::f64: return accumulate_kernel(outputs, rank, P, F, Tn, ptr<double>(sums), ptr<double>(sumsq));
    case DType::f16: return accumulate_kernel(outputs, rank, P, F, Tn, ptr<half_t>(sums), ptr<half_t>(sumsq));
    case DType::bf16:
      return accumulate_kernel(outputs, rank, P, F, Tn, ptr<bfloat16_t>(sums), ptr<bfloat16_t>(sumsq));
    default: throw std::invalid_argument("shapley_accumulate: sums must be floating");
  }
}

// outputs: contiguous [P, F + 1, Tn]; perms: contiguous int64 [P, F]; sums, sumsq: contiguous
// [F, Tn] of one floating dtype (sumsq_ptr 0: no sumsq).
void shapley_accumulate(uintptr_t outputs_ptr, const std::string& outputs_dtype, uintptr_t perms_ptr, int64_t P,
                        int64_t F, int64_t Tn, uintptr_t sums_ptr, const std::string& sums_dtype,
                        uintptr_t sumsq_ptr) {
  const DType sd = parse_dtype(sums_dtype);
  const DType od = parse_dtype(outputs_dtype);
  const std::vector<int32_t> rank = inverse_permutations(ptr<const int64_t>(perms_ptr), P, F);
  switch (od) {
    case DType::f32: return dispatch_sums(ptr<const float>(outputs_ptr), rank.data(), P, F, Tn, sums_ptr, sd, sumsq_ptr);
    case DType::f64: return dispatch_sums(ptr<const double>(outputs_ptr), rank.data(), P, F, Tn, sums_ptr, sd, sumsq_ptr);
    case DType::f16: return dispatch_sums(ptr<const half_t>(outputs_ptr), rank.data(), P, F, Tn, sums_ptr, sd, sumsq_ptr);
    case DType::bf16:
      return dispatch_sums(ptr<const bfloat16_t>(outputs_ptr), rank.data(), P, F, Tn, sums_ptr, sd, sumsq_ptr);
    default: throw std::invalid_argument("shapley_accumulate: outputs must be floating, got " + outputs_dtype);
  }
}

}  // namespace

void register_shapley(pybind11::module_& m) {
  m.def("shapley_coalitions", &shapley_coalitions, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "shapley_coalitions(perms_ptr, P, F, perm_index_ptr, prefix_size_ptr, R, out_ptr): int64 inputs, "
        "contiguous bool [R, F] output");
  m.def("shapley_accumulate", &shapley_accumulate, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "shapley_accumulate(outputs_ptr, outputs_dtype, perms_ptr, P, F, Tn, sums_ptr, sums_dtype, sumsq_ptr): "
        "contiguous [P, F + 1, Tn] outputs into contiguous [F, Tn] sums (and sumsq unless 0)");
}

}  // namespace mmxai
