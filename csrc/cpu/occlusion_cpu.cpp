// Placeholder: the occlusion CPU kernels are being written.
#include "common.h"

namespace mmxai {
void register_occlusion(pybind11::module_& m) {}
}  // namespace mmxai
