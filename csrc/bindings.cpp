// pybind11 entry point of mmxai_fast._C. Each op's CPU kernel file defines register_<op>().
#include <omp.h>

#include <pybind11/pybind11.h>

namespace mmxai {
void register_hu_window(pybind11::module_& m);
void register_perturb(pybind11::module_& m);
void register_occlusion(pybind11::module_& m);
void register_shapley(pybind11::module_& m);
void register_vq_nearest(pybind11::module_& m);
void register_codeword_histogram(pybind11::module_& m);
void register_slic(pybind11::module_& m);
void register_thresholded_value_histogram(pybind11::module_& m);
}  // namespace mmxai

PYBIND11_MODULE(_C, m) {
  m.doc() = "mmxai_fast C++/OpenMP CPU kernels (raw-pointer interface, no libtorch)";
  m.def("max_threads", []() { return omp_get_max_threads(); });
  m.def("set_num_threads", [](int n) { omp_set_num_threads(n); });
  mmxai::register_hu_window(m);
  mmxai::register_perturb(m);
  mmxai::register_occlusion(m);
  mmxai::register_shapley(m);
  mmxai::register_vq_nearest(m);
  mmxai::register_codeword_histogram(m);
  mmxai::register_slic(m);
  mmxai::register_thresholded_value_histogram(m);
}
