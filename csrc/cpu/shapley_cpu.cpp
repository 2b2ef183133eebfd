// Placeholder: the shapley CPU kernels are being written.
#include "common.h"

namespace mmxai {
void register_shapley(pybind11::module_& m) {}
}  // namespace mmxai
