// hu_window on the CPU: every (level, width) window in one pass over the volume.
// out[w, i] = clamp((v[i] - lower_w) / width_w, 0, 1), lower_w = level_w - width_w / 2.
#include <algorithm>
#include <vector>

#include <pybind11/stl.h>

#include "common.h"

namespace mmxai {
namespace {

constexpr int64_t kChunk = 4096;  // elements per inner block: the input chunk stays in L1

template <typename In, typename Out, typename Compute>
void hu_window_kernel(const In* in, int64_t numel, const std::vector<double>& lowers,
                      const std::vector<double>& inv_widths, Out* out) {
  const int64_t n_windows = (int64_t)lowers.size();
  const int64_t n_chunks = (numel + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < n_chunks; ++c) {
    const int64_t begin = c * kChunk;
    const int64_t end = std::min(numel, begin + kChunk);
    for (int64_t w = 0; w < n_windows; ++w) {
      const Compute lower = (Compute)lowers[w];
      const Compute inv = (Compute)inv_widths[w];
      Out* dst = out + w * numel;
      for (int64_t i = begin; i < end; ++i) {
        Compute v = ((Compute)to_double(in[i]) - lower) * inv;
        v = v < Compute(0) ? Compute(0) : (v > Compute(1) ? Compute(1) : v);
        dst[i] = from_float<Out>(v);
      }
    }
  }
}

template <typename In>
void dispatch_out(const In* in, int64_t numel, const std::vector<double>& lowers,
                  const std::vector<double>& inv, uintptr_t out, DType out_dt) {
  switch (out_dt) {
    case DType::f32: return hu_window_kernel<In, float, float>(in, numel, lowers, inv, ptr<float>(out));
    case DType::f64: return hu_window_kernel<In, double, double>(in, numel, lowers, inv, ptr<double>(out));
    case DType::f16: return hu_window_kernel<In, half_t, float>(in, numel, lowers, inv, ptr<half_t>(out));
    case DType::bf16: return hu_window_kernel<In, bfloat16_t, float>(in, numel, lowers, inv, ptr<bfloat16_t>(out));
    default: throw std::invalid_argument("hu_window: out_dtype must be floating");
  }
}

void hu_window(uintptr_t in, const std::string& in_dtype, int64_t numel,
               const std::vector<double>& lowers, const std::vector<double>& inv_widths,
               uintptr_t out, const std::string& out_dtype) {
  if (lowers.size() != inv_widths.size()) throw std::invalid_argument("hu_window: window lists differ in length");
  const DType od = parse_dtype(out_dtype);
  switch (parse_dtype(in_dtype)) {
    case DType::u8: return dispatch_out(ptr<const uint8_t>(in), numel, lowers, inv_widths, out, od);
    case DType::i8: return dispatch_out(ptr<const int8_t>(in), numel, lowers, inv_widths, out, od);
    case DType::i16: return dispatch_out(ptr<const int16_t>(in), numel, lowers, inv_widths, out, od);
    case DType::i32: return dispatch_out(ptr<const int32_t>(in), numel, lowers, inv_widths, out, od);
    case DType::i64: return dispatch_out(ptr<const int64_t>(in), numel, lowers, inv_widths, out, od);
    case DType::f16: return dispatch_out(ptr<const half_t>(in), numel, lowers, inv_widths, out, od);
    case DType::bf16: return dispatch_out(ptr<const bfloat16_t>(in), numel, lowers, inv_widths, out, od);
    case DType::f32: return dispatch_out(ptr<const float>(in), numel, lowers, inv_widths, out, od);
    case DType::f64: return dispatch_out(ptr<const double>(in), numel, lowers, inv_widths, out, od);
    default: throw std::invalid_argument("hu_window: unsupported volume dtype " + in_dtype);
  }
}

}  // namespace

void register_hu_window(pybind11::module_& m) {
  m.def("hu_window", &hu_window, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "hu_window(in_ptr, in_dtype, numel, lowers, inv_widths, out_ptr, out_dtype): "
        "contiguous volume -> contiguous [W, numel] windows");
}

}  // namespace mmxai
