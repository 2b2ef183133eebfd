// SLIC superpixels on the CPU (mmxai_fast/ops/slic.py holds the algorithm's description).
//
// - slic_iterate: k-means iterations. Assignment: each thread owns a band of image rows and walks
//   every centre's +-2-step window clipped to its band, centres in ascending order with a strict
//   '<', so the result is the sequential one (ties to the lower centre). Centre update: per-thread
//   fixed-point int64 sums, exact whatever the order.
// - slic_kmeans_seeds: exact nearest-centre Lloyd iterations for the mask seeding (uniform grid of
//   centres searched in growing Chebyshev rings).
// - slic_connectivity: raster-order BFS of the 6-connected equal-label pieces and the small-piece
//   merge of merge_small_pieces().
//
// Every floating operation is written in the reference's order and fp contraction (FMA) is off,
// so labels equal the plain-PyTorch reference's exactly.
#pragma GCC optimize("fp-contract=off")
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

#include <pybind11/stl.h>

#include "common.h"

namespace mmxai {
namespace {

struct Grid {
  int64_t depth, height, width;
  int64_t rows() const { return depth * height; }
  int64_t size() const { return depth * height * width; }
};

// [lo, hi) of a centre's window along one axis, exactly as scikit-image computes it.
inline void window(double c, int64_t step, int64_t extent, int64_t& lo, int64_t& hi) {
  lo = (int64_t)std::floor(std::max(c - 2.0 * (double)step, 0.0));
  hi = (int64_t)std::floor(std::min(c + 2.0 * (double)step + 1.0, (double)extent));
}

template <typename T>
struct SlicRun {
  const T* feats;        // [C, N]
  const uint8_t* mask;   // [N] or null
  int64_t channels;
  Grid g;
  double* centers;       // [K, 3 + C]
  int64_t n_centers;
  int64_t steps[3];
  T spacing[3];
  T weight;
  bool ignore_color;
  double scale;
  int32_t* labels;       // [N]
  std::vector<T> dist;
  std::vector<int32_t> row_lo, row_hi;  // foreground x range of each row

  void init_rows() {
    const int64_t rows = g.rows(), w = g.width;
    row_lo.assign(rows, 0);
    row_hi.assign(rows, (int32_t)w);
    if (!mask) return;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const uint8_t* m = mask + r * w;
      int64_t lo = 0, hi = w;
      while (lo < w && !m[lo]) ++lo;
      while (hi > lo && !m[hi - 1]) --hi;
      row_lo[r] = (int32_t)lo;
      row_hi[r] = (int32_t)hi;
    }
  }

  // One assignment step; returns whether any voxel had a centre in reach.
  bool assign() {
    const int64_t n = g.size(), w = g.width, h = g.height, nf = 3 + channels;
    const T inf = std::numeric_limits<T>::infinity();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) dist[i] = (mask && !mask[i]) ? T(-1) : inf;
    int reached = 0;
#pragma omp parallel reduction(| : reached)
    {
      const int nt = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t r0 = g.rows() * t / nt, r1 = g.rows() * (t + 1) / nt;
      std::vector<T> buf(w);
      std::vector<T> ck(channels);
      for (int64_t k = 0; k < n_centers; ++k) {
        const double* c = centers + k * nf;
        if (std::isnan(c[0])) continue;  // dead centre (no voxel last iteration)
        int64_t zlo, zhi, ylo, yhi, xlo, xhi;
        window(c[0], steps[0], g.depth, zlo, zhi);
        window(c[1], steps[1], h, ylo, yhi);
        window(c[2], steps[2], w, xlo, xhi);
        if (zhi * h <= r0 || zlo * h >= r1) continue;
        const T cz = (T)c[0], cy = (T)c[1], cx = (T)c[2];
        for (int64_t j = 0; j < channels; ++j) ck[j] = (T)c[3 + j];
        for (int64_t z = zlo; z < zhi; ++z) {
          const int64_t ya = std::max(ylo, r0 - z * h), yb = std::min(yhi, r1 - z * h);
          if (ya >= yb) continue;
          const T dzv = spacing[0] * (cz - (T)z);
          const T dz = dzv * dzv;
          for (int64_t y = ya; y < yb; ++y) {
            const int64_t row = z * h + y;
            const int64_t xa = std::max<int64_t>(xlo, row_lo[row]), xb = std::min<int64_t>(xhi, row_hi[row]);
            if (xa >= xb) continue;
            const T dyv = spacing[1] * (cy - (T)y);
            const T dzy = dz + dyv * dyv;
            const int64_t base = row * w;
            T* b = buf.data();
            for (int64_t x = xa; x < xb; ++x) {
              const T dxv = spacing[2] * (cx - (T)x);
              b[x] = (dzy + dxv * dxv) * weight;
            }
            if (!ignore_color && channels) {
              // color = ((t0^2 + t1^2) + ...), then added: the reference's order.
              const T* f0 = feats + base;
              const T c0 = ck[0];
              for (int64_t x = xa; x < xb; ++x) {
                const T t0 = f0[x] - c0;
                T acc = t0 * t0;
                for (int64_t j = 1; j < channels; ++j) {
                  const T tj = feats[j * n + base + x] - ck[j];
                  acc = acc + tj * tj;
                }
                b[x] = b[x] + acc;
              }
            }
            T* d = dist.data() + base;
            int32_t* lab = labels + base;
            const int32_t kk = (int32_t)k;
            int any = 0;
            for (int64_t x = xa; x < xb; ++x) {
              const bool better = d[x] > b[x];
              d[x] = better ? b[x] : d[x];
              lab[x] = better ? kk : lab[x];
              any |= better;
            }
            reached |= any;
          }
        }
      }
    }
    return reached != 0;
  }

  void update() {
    const int64_t n = g.size(), w = g.width, h = g.height, nf = 3 + channels, nk = n_centers;
    std::vector<int64_t> sums(nk * nf, 0), counts(nk, 0);
#pragma omp parallel
    {
      std::vector<int64_t> s(nk * nf, 0), cnt(nk, 0);
#pragma omp for schedule(static) nowait
      for (int64_t row = 0; row < g.rows(); ++row) {
        const int64_t z = row / h, y = row % h;
        for (int64_t x = row_lo[row]; x < row_hi[row]; ++x) {
          const int64_t i = row * w + x;
          const int32_t k = labels[i];
          if (k < 0) continue;
          int64_t* sk = s.data() + (int64_t)k * nf;
          cnt[k] += 1;
          sk[0] += z;
          sk[1] += y;
          sk[2] += x;
          for (int64_t j = 0; j < channels; ++j)
            sk[3 + j] += (int64_t)std::floor((double)feats[j * n + i] * scale + 0.5);
        }
      }
#pragma omp critical
      {
        for (int64_t q = 0; q < nk * nf; ++q) sums[q] += s[q];
        for (int64_t q = 0; q < nk; ++q) counts[q] += cnt[q];
      }
    }
    for (int64_t k = 0; k < nk; ++k) {
      const double cnt = (double)counts[k];
      double* c = centers + k * nf;
      for (int64_t j = 0; j < 3; ++j) c[j] = (double)sums[k * nf + j] / cnt;  // 0/0: NaN, dead
      for (int64_t j = 3; j < nf; ++j) c[j] = ((double)sums[k * nf + j] / scale) / cnt;
    }
  }
};

template <typename T>
void slic_iterate_typed(uintptr_t feats, uintptr_t mask, int64_t channels, Grid g, uintptr_t centers,
                        int64_t n_centers, const std::vector<int64_t>& steps,
                        const std::vector<double>& spacing, double weight, int64_t n_iter,
                        bool ignore_color, double scale, uintptr_t labels) {
  SlicRun<T> run;
  run.feats = ptr<const T>(feats);
  run.mask = mask ? ptr<const uint8_t>(mask) : nullptr;
  run.channels = channels;
  run.g = g;
  run.centers = ptr<double>(centers);
  run.n_centers = n_centers;
  for (int a = 0; a < 3; ++a) {
    run.steps[a] = steps[a];
    run.spacing[a] = (T)spacing[a];
  }
  run.weight = (T)weight;
  run.ignore_color = ignore_color;
  run.scale = scale;
  run.labels = ptr<int32_t>(labels);
  const int64_t n = g.size();
  std::fill(run.labels, run.labels + n, -1);
  if (n == 0) return;
  run.dist.resize(n);
  run.init_rows();
  for (int64_t it = 0; it < n_iter; ++it) {
    if (!run.assign()) break;
    run.update();
  }
}

void slic_iterate(uintptr_t feats, bool is_f64, uintptr_t mask, int64_t channels, int64_t depth,
                  int64_t height, int64_t width, uintptr_t centers, int64_t n_centers,
                  const std::vector<int64_t>& steps, const std::vector<double>& spacing, double weight,
                  int64_t n_iter, bool ignore_color, double scale, uintptr_t labels) {
  if (steps.size() != 3 || spacing.size() != 3) throw std::invalid_argument("slic_iterate: steps and spacing need 3 values");
  const Grid g{depth, height, width};
  if (is_f64)
    slic_iterate_typed<double>(feats, mask, channels, g, centers, n_centers, steps, spacing, weight, n_iter,
                               ignore_color, scale, labels);
  else
    slic_iterate_typed<float>(feats, mask, channels, g, centers, n_centers, steps, spacing, weight, n_iter,
                              ignore_color, scale, labels);
}

// Lloyd iterations of (P, 3) points from (K, 3) centres: exact nearest centre (ties to the lower
// index, distance ((dz^2 + dy^2) + dx^2) as the reference), empty clusters keep their position.
void slic_kmeans_seeds(uintptr_t points_p, int64_t n_points, uintptr_t centers_p, int64_t n_centers,
                       int64_t n_iter, const std::vector<int64_t>& shape) {
  const double* pts = ptr<const double>(points_p);
  double* ctr = ptr<double>(centers_p);
  if (n_points == 0 || n_centers == 0) return;
  const double volume = (double)shape[0] * (double)shape[1] * (double)shape[2];
  const double cell = std::max(1.0, std::cbrt(volume / (double)n_centers));
  int64_t dims[3];
  for (int a = 0; a < 3; ++a) dims[a] = (int64_t)std::floor((double)std::max<int64_t>(shape[a] - 1, 0) / cell) + 1;
  const int64_t n_cells = dims[0] * dims[1] * dims[2];
  auto cell_of = [&](const double* p, int a) {
    return std::min<int64_t>(dims[a] - 1, std::max<int64_t>(0, (int64_t)std::floor(p[a] / cell)));
  };
  std::vector<int32_t> nearest(n_points);
  for (int64_t it = 0; it < n_iter; ++it) {
    // Bucket the centres (CSR, ascending centre index inside each cell).
    std::vector<int64_t> start(n_cells + 1, 0), order(n_centers);
    std::vector<int64_t> cell_id(n_centers);
    for (int64_t k = 0; k < n_centers; ++k) {
      const double* c = ctr + 3 * k;
      cell_id[k] = (cell_of(c, 0) * dims[1] + cell_of(c, 1)) * dims[2] + cell_of(c, 2);
      ++start[cell_id[k] + 1];
    }
    for (int64_t q = 0; q < n_cells; ++q) start[q + 1] += start[q];
    {
      std::vector<int64_t> fill(start.begin(), start.end() - 1);
      for (int64_t k = 0; k < n_centers; ++k) order[fill[cell_id[k]]++] = k;
    }
    const int64_t max_ring = std::max({dims[0], dims[1], dims[2]});
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n_points; ++i) {
      const double* p = pts + 3 * i;
      const int64_t pc[3] = {cell_of(p, 0), cell_of(p, 1), cell_of(p, 2)};
      double best = std::numeric_limits<double>::infinity();
      int64_t best_k = -1;
      for (int64_t r = 0; r <= max_ring; ++r) {
        for (int64_t cz = std::max<int64_t>(0, pc[0] - r); cz <= std::min(dims[0] - 1, pc[0] + r); ++cz)
          for (int64_t cy = std::max<int64_t>(0, pc[1] - r); cy <= std::min(dims[1] - 1, pc[1] + r); ++cy)
            for (int64_t cx = std::max<int64_t>(0, pc[2] - r); cx <= std::min(dims[2] - 1, pc[2] + r); ++cx) {
              const int64_t ring = std::max({std::abs(cz - pc[0]), std::abs(cy - pc[1]), std::abs(cx - pc[2])});
              if (ring != r) continue;
              const int64_t q = (cz * dims[1] + cy) * dims[2] + cx;
              for (int64_t s = start[q]; s < start[q + 1]; ++s) {
                const int64_t k = order[s];
                const double* c = ctr + 3 * k;
                const double t0 = p[0] - c[0], t1 = p[1] - c[1], t2 = p[2] - c[2];
                const double d = (t0 * t0 + t1 * t1) + t2 * t2;
                if (d < best || (d == best && k < best_k)) {
                  best = d;
                  best_k = k;
                }
              }
            }
        const double bound = (double)r * cell;
        if (best_k >= 0 && best < bound * bound) break;
      }
      nearest[i] = (int32_t)best_k;
    }
    std::vector<double> sums(3 * n_centers, 0.0);
    std::vector<int64_t> counts(n_centers, 0);
    for (int64_t i = 0; i < n_points; ++i) {  // integer coordinates: exact sums, any order
      const int64_t k = nearest[i];
      ++counts[k];
      for (int a = 0; a < 3; ++a) sums[3 * k + a] += pts[3 * i + a];
    }
    for (int64_t k = 0; k < n_centers; ++k)
      if (counts[k])
        for (int a = 0; a < 3; ++a) ctr[3 * k + a] = sums[3 * k + a] / (double)counts[k];
  }
}

// Connectivity: pieces in raster order of their first voxel, small ones merged into the piece
// of the voxel before their first voxel (x, else y, else z), segments numbered from 0.
void slic_connectivity(uintptr_t labels_p, int64_t depth, int64_t height, int64_t width, int64_t min_size,
                       uintptr_t out_p) {
  const int32_t* lab = ptr<const int32_t>(labels_p);
  int64_t* out = ptr<int64_t>(out_p);
  const int64_t hw = height * width, n = depth * hw;
  std::vector<int32_t> piece(n, -1);
  std::vector<int64_t> first, size, queue;
  queue.reserve(1024);
  for (int64_t i = 0; i < n; ++i) {
    if (lab[i] < 0 || piece[i] >= 0) continue;
    const int32_t p = (int32_t)first.size(), l = lab[i];
    piece[i] = p;
    queue.clear();
    queue.push_back(i);
    for (size_t head = 0; head < queue.size(); ++head) {
      const int64_t v = queue[head];
      const int64_t z = v / hw, y = (v / width) % height, x = v % width;
      const int64_t nb[6] = {x > 0 ? v - 1 : -1, x + 1 < width ? v + 1 : -1,
                             y > 0 ? v - width : -1, y + 1 < height ? v + width : -1,
                             z > 0 ? v - hw : -1, z + 1 < depth ? v + hw : -1};
      for (int64_t u : nb)
        if (u >= 0 && piece[u] < 0 && lab[u] == l) {
          piece[u] = p;
          queue.push_back(u);
        }
    }
    first.push_back(i);
    size.push_back((int64_t)queue.size());
  }
  std::vector<int64_t> final_label(first.size());
  int64_t next = 0;
  for (size_t p = 0; p < first.size(); ++p) {
    const int64_t i = first[p];
    int64_t before = -1;
    if (size[p] < min_size) {
      const int64_t z = i / hw, y = (i / width) % height, x = i % width;
      if (x > 0 && lab[i - 1] >= 0) before = i - 1;
      else if (y > 0 && lab[i - width] >= 0) before = i - width;
      else if (z > 0 && lab[i - hw] >= 0) before = i - hw;
    }
    final_label[p] = before >= 0 ? final_label[piece[before]] : next++;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = piece[i] >= 0 ? final_label[piece[i]] : -1;
}

}  // namespace

void register_slic(pybind11::module_& m) {
  m.def("slic_iterate", &slic_iterate, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "slic_iterate(feats, is_f64, mask, C, D, H, W, centers, K, steps, spacing, weight, n_iter, "
        "ignore_color, fixed_scale, labels): SLIC k-means iterations, centres updated in place");
  m.def("slic_kmeans_seeds", &slic_kmeans_seeds, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "slic_kmeans_seeds(points, P, centers, K, n_iter, shape): exact Lloyd iterations in place");
  m.def("slic_connectivity", &slic_connectivity, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "slic_connectivity(labels, D, H, W, min_size, out): connected segments numbered from 0");
}

}  // namespace mmxai
