// Placeholder: the perturb CPU kernels are being written.
#include "common.h"

namespace mmxai {
void register_perturb(pybind11::module_& m) {}
}  // namespace mmxai
