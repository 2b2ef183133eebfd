// Placeholder: the vq CPU kernels are being written.
#include "common.h"

namespace mmxai {
void register_vq(pybind11::module_& m) {}
}  // namespace mmxai
