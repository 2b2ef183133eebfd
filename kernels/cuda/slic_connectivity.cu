// SLIC connectivity on the GPU: union-find connected components of equal-label voxels
// (6-connectivity), compiled at run time by CuPy (NVRTC). Roots are always linked under the
// smaller root, so every voxel ends pointing at the smallest flat index of its piece: the same
// roots as connected_pieces_reference() in mmxai_fast/ops/slic.py, which then merges small
// pieces (merge_small_pieces, plain PyTorch on the GPU).
//
// Launch order: slic_init_parents, slic_union_neighbours, slic_flatten_parents, each with
// (labels int32 [N], parent int64 [N], depth, height, width) and a grid-stride loop.

// parent[x] <= x always holds (links go from the larger root to the smaller, compression only
// moves a pointer to an ancestor), so the trees stay acyclic whatever the interleaving. Loads are
// volatile (relaxed: they see other threads' links); every write to parent is an atomicCAS, so a
// failed one returns the current parent and the caller carries on from it.
__device__ __forceinline__ long long slic_load(const long long* parent, long long x) {
  return *reinterpret_cast<const volatile long long*>(parent + x);
}

// Root of x with path halving: each visited node is re-pointed to its grandparent (by CAS, so a
// concurrent link of x is never overwritten).
__device__ __forceinline__ long long slic_find(long long* parent, long long x) {
  while (true) {
    const long long p = slic_load(parent, x);
    if (p == x) return x;
    const long long gp = slic_load(parent, p);
    if (gp != p)
      atomicCAS(reinterpret_cast<unsigned long long*>(parent + x), (unsigned long long)p, (unsigned long long)gp);
    x = gp;
  }
}

// Link the two trees of a and b, the larger root under the smaller one (lock-free: CAS on roots).
__device__ void slic_union(long long* parent, long long a, long long b) {
  while (true) {
    a = slic_find(parent, a);
    b = slic_find(parent, b);
    if (a == b) return;
    const long long hi = a > b ? a : b, lo = a > b ? b : a;
    const unsigned long long old = atomicCAS(reinterpret_cast<unsigned long long*>(parent + hi),
                                             (unsigned long long)hi, (unsigned long long)lo);
    if ((long long)old == hi) return;
    a = (long long)old;  // hi was linked meanwhile: continue from the parent the CAS returned
    b = lo;
  }
}

extern "C" __global__ void slic_init_parents(const int* __restrict__ labels, long long* __restrict__ parent,
                                             int depth, int height, int width) {
  const long long n = (long long)depth * height * width;
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    parent[i] = labels[i] >= 0 ? i : -1;
}

extern "C" __global__ void slic_union_neighbours(const int* __restrict__ labels, long long* parent,
                                                 int depth, int height, int width) {
  const long long hw = (long long)height * width, n = (long long)depth * hw;
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int l = labels[i];
    if (l < 0) continue;
    const long long x = i % width, y = (i / width) % height, z = i / hw;
    if (x + 1 < width && labels[i + 1] == l) slic_union(parent, i, i + 1);
    if (y + 1 < height && labels[i + width] == l) slic_union(parent, i, i + width);
    if (z + 1 < depth && labels[i + hw] == l) slic_union(parent, i, i + hw);
  }
}

extern "C" __global__ void slic_flatten_parents(const int* __restrict__ labels, long long* parent,
                                                int depth, int height, int width) {
  // A separate launch: every union is finished, so the roots are final.
  const long long n = (long long)depth * height * width;
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    if (labels[i] >= 0) parent[i] = slic_find(parent, i);
}
