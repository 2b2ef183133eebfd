// hu_window as CUDA C++, compiled at run time by CuPy (NVRTC): no CUDA toolkit at install time.
// out[w, i] = clamp((v[i] - lower[w]) * inv_width[w], 0, 1); one read of the volume for all windows.
// Compute is float for float outputs and double for double outputs (as the CPU kernel does).

template <typename In, typename Out>
__global__ void hu_window_kernel(const In* __restrict__ volume, long long numel,
                                 const double* __restrict__ lowers,
                                 const double* __restrict__ inv_widths, int n_windows,
                                 Out* __restrict__ out) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < numel; i += stride) {
    const Out v = (Out)volume[i];
    for (int w = 0; w < n_windows; ++w) {
      Out y = (v - (Out)lowers[w]) * (Out)inv_widths[w];
      y = y < (Out)0 ? (Out)0 : (y > (Out)1 ? (Out)1 : y);
      out[(long long)w * numel + i] = y;
    }
  }
}

#ifdef MMXAI_NVCC_CHECK  // explicit instantiations so an offline `nvcc -c` checks every variant
#define MMXAI_INSTANTIATE(In, Out)                                                          \
  template __global__ void hu_window_kernel<In, Out>(const In*, long long, const double*,   \
                                                     const double*, int, Out*);
MMXAI_INSTANTIATE(unsigned char, float) MMXAI_INSTANTIATE(signed char, float)
MMXAI_INSTANTIATE(short, float) MMXAI_INSTANTIATE(int, float) MMXAI_INSTANTIATE(long long, float)
MMXAI_INSTANTIATE(float, float) MMXAI_INSTANTIATE(double, float)
MMXAI_INSTANTIATE(unsigned char, double) MMXAI_INSTANTIATE(signed char, double)
MMXAI_INSTANTIATE(short, double) MMXAI_INSTANTIATE(int, double) MMXAI_INSTANTIATE(long long, double)
MMXAI_INSTANTIATE(float, double) MMXAI_INSTANTIATE(double, double)
#endif
