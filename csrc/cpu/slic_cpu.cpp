// SLIC superpixels on the CPU (mmxai_fast/ops/slic.py holds the algorithm's description).
//
// - slic_iterate: k-means iterations. Assignment: threads take bands of rows; in a band every
//   centre whose +-2-step window reaches it is visited nearest first, blocks of 16 voxels whose
//   current distances all beat the centre's spatial lower bound are skipped, and ties go to the
//   lower centre index: the result is exactly scikit-image's sequential loop's. Centre update:
//   per-thread fixed-point int64 sums, exact whatever the order.
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
  int64_t blocks_per_row = 0;
  std::vector<T> block_max;             // largest current distance of each block of a row

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

  static constexpr int64_t kBlock = 16;  // voxels per pruning block (one AVX-512 float vector)

  // The fused distance / compare / select loop over [xa, xb) of one row for centre k.
  template <int kChannels>
  static inline int span(const T* feats, int64_t n, int64_t channels, const T* ck, T dzy, T sx, T cx, T weight,
                         bool color, int64_t base, int64_t xa, int64_t xb, T* d, int32_t* lab, int32_t k) {
    int any = 0;
    const T* f0 = feats + base;
    for (int64_t x = xa; x < xb; ++x) {
      const T dxv = sx * (cx - (T)x);
      T dist = (dzy + dxv * dxv) * weight;
      if (color) {
        // colour = ((t0^2 + t1^2) + ...), then added: the reference's order.
        const T t0 = f0[x] - ck[0];
        T acc = t0 * t0;
        const int64_t nc = kChannels > 0 ? kChannels : channels;
        for (int64_t j = 1; j < nc; ++j) {
          const T tj = feats[j * n + base + x] - ck[j];
          acc = acc + tj * tj;
        }
        dist = dist + acc;
      }
      // Centres come nearest first, so ties go explicitly to the lower index (scikit-image's
      // ascending order with a strict '<').
      const bool better = d[x] > dist || (d[x] == dist && k < lab[x]);
      d[x] = better ? dist : d[x];
      lab[x] = better ? k : lab[x];
      any |= better;
    }
    return any;
  }

  // A row span in blocks of kBlock voxels. A block is skipped when a lower bound of the centre's
  // distance (spatial part at the block's nearest x; rounding is monotone, so it is a true bound
  // in floating point too) is > the block's largest current distance: no voxel could change.
  template <int kChannels>
  int row_span(int64_t channels, const T* ck, T dzy, T cx, bool color, int64_t row, int64_t xa, int64_t xb,
               int32_t k) {
    const int64_t w = g.width, base = row * w, n = g.size();
    T* d = dist.data() + base;
    int32_t* lab = labels + base;
    T* bmax = block_max.data() + row * blocks_per_row;
    const T sx = spacing[2];
    int any = 0;
    for (int64_t b = xa / kBlock; b * kBlock < xb; ++b) {
      const int64_t x0 = std::max(xa, b * kBlock), x1 = std::min(xb, (b + 1) * kBlock);
      T near = 0;
      if (cx < (T)x0) {
        const T v = sx * (cx - (T)x0);
        near = v * v;
      } else if (cx > (T)(x1 - 1)) {
        const T v = sx * (cx - (T)(x1 - 1));
        near = v * v;
      }
      if ((dzy + near) * weight > bmax[b]) continue;
      if (span<kChannels>(feats, n, channels, ck, dzy, sx, cx, weight, color, base, x0, x1, d, lab, k)) {
        any = 1;
        const int64_t e = std::min(w, (b + 1) * kBlock);
        T m = d[b * kBlock];
        for (int64_t x = b * kBlock + 1; x < e; ++x) m = d[x] > m ? d[x] : m;
        bmax[b] = m;
      }
    }
    return any;
  }

  std::vector<int32_t> previous;  // labels before this assignment
  bool changed = false;          // did any label change in the last assignment?

  // One assignment step; returns whether any voxel had a centre in reach. Work is split in bands
  // of rows small enough to stay in cache while every centre reaching the band visits it.
  bool assign() {
    const int64_t w = g.width, h = g.height, nf = 3 + channels;
    const T inf = std::numeric_limits<T>::infinity();
    std::vector<int64_t> win(6 * n_centers);
    for (int64_t k = 0; k < n_centers; ++k) {
      const double* c = centers + k * nf;
      int64_t* wk = win.data() + 6 * k;
      if (std::isnan(c[0])) {  // dead centre (no voxel last iteration): an empty window
        std::fill(wk, wk + 6, 0);
        continue;
      }
      window(c[0], steps[0], g.depth, wk[0], wk[1]);
      window(c[1], steps[1], h, wk[2], wk[3]);
      window(c[2], steps[2], w, wk[4], wk[5]);
    }
    const int64_t band_rows = std::max<int64_t>(1, std::min<int64_t>({h, steps[1], 8192 / std::max<int64_t>(w, 1)}));
    const int64_t bands_per_slice = (h + band_rows - 1) / band_rows;
    const int64_t n_bands = g.depth * bands_per_slice;
    const bool color = !ignore_color && channels > 0;
    int reached = 0, any_change = 0;
#pragma omp parallel reduction(| : reached, any_change)
    {
      std::vector<T> ck(std::max<int64_t>(channels, 1));
      std::vector<std::pair<double, int64_t>> near;  // (distance to the band, centre)
#pragma omp for schedule(dynamic, 1)
      for (int64_t band = 0; band < n_bands; ++band) {
        const int64_t z = band / bands_per_slice;
        const int64_t y0 = (band % bands_per_slice) * band_rows, y1 = std::min(h, y0 + band_rows);
        for (int64_t y = y0; y < y1; ++y) {
          const int64_t base = (z * h + y) * w;
          for (int64_t x = 0; x < w; ++x) dist[base + x] = (mask && !mask[base + x]) ? T(-1) : inf;
          std::copy_n(labels + base, w, previous.data() + base);
          std::fill_n(block_max.data() + (z * h + y) * blocks_per_row, blocks_per_row, inf);
        }
        // Visit the centres nearest first: their small distances let the blocks prune the rest.
        near.clear();
        const double ym = 0.5 * (double)(y0 + y1 - 1), xm = 0.5 * (double)(w - 1);
        for (int64_t k = 0; k < n_centers; ++k) {
          const int64_t* wk = win.data() + 6 * k;
          if (z < wk[0] || z >= wk[1] || std::max(wk[2], y0) >= std::min(wk[3], y1)) continue;
          const double* c = centers + k * nf;
          const double a = (double)spacing[0] * (c[0] - (double)z), b = (double)spacing[1] * (c[1] - ym),
                       e = (double)spacing[2] * (c[2] - xm);
          near.emplace_back(a * a + b * b + e * e, k);
        }
        std::sort(near.begin(), near.end());
        for (const auto& item : near) {
          const int64_t k = item.second;
          const int64_t* wk = win.data() + 6 * k;
          const int64_t ya = std::max(wk[2], y0), yb = std::min(wk[3], y1);
          const double* c = centers + k * nf;
          const T cz = (T)c[0], cy = (T)c[1], cx = (T)c[2];
          for (int64_t j = 0; j < channels; ++j) ck[j] = (T)c[3 + j];
          const T dzv = spacing[0] * (cz - (T)z);
          const T dz = dzv * dzv;
          for (int64_t y = ya; y < yb; ++y) {
            const int64_t row = z * h + y;
            const int64_t xa = std::max<int64_t>(wk[4], row_lo[row]), xb = std::min<int64_t>(wk[5], row_hi[row]);
            if (xa >= xb) continue;
            const T dyv = spacing[1] * (cy - (T)y);
            const T dzy = dz + dyv * dyv;
            reached |= channels == 1 ? row_span<1>(channels, ck.data(), dzy, cx, color, row, xa, xb, (int32_t)k)
                                     : row_span<0>(channels, ck.data(), dzy, cx, color, row, xa, xb, (int32_t)k);
          }
        }
        const int64_t b0 = (z * h + y0) * w, b1 = (z * h + y1) * w;
        int diff = 0;
        for (int64_t i = b0; i < b1; ++i) diff |= labels[i] != previous[i];
        any_change |= diff;
      }
    }
    changed = any_change != 0;
    return reached != 0;
  }

  void update() {
    const int64_t n = g.size(), w = g.width, h = g.height, nf = 3 + channels, nk = n_centers;
    std::vector<int64_t> sums(nk * nf, 0), counts(nk, 0);
#pragma omp parallel
    {
      std::vector<int64_t> s(nk * nf, 0), cnt(nk, 0);
#pragma omp for schedule(dynamic, 64) nowait
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
  run.previous.resize(n);
  run.blocks_per_row = (g.width + SlicRun<T>::kBlock - 1) / SlicRun<T>::kBlock;
  run.block_max.resize(g.rows() * run.blocks_per_row);
  run.init_rows();
  for (int64_t it = 0; it < n_iter; ++it) {
    if (!run.assign()) break;
    // Unchanged labels give the same centres again (exact fixed-point sums): every later
    // iteration would repeat this one, so scikit-image's remaining iterations are skipped.
    if (it > 0 && !run.changed) break;
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

// Connectivity: pieces in raster order of their first voxel (BFS), then merge_small_pieces():
// a small piece joins its smallest adjacent piece if that one is earlier, else its smallest
// adjacent large piece, else stays; survivors are numbered in raster order.
void slic_connectivity(uintptr_t labels_p, int64_t depth, int64_t height, int64_t width, int64_t min_size,
                       uintptr_t out_p) {
  const int32_t* lab = ptr<const int32_t>(labels_p);
  int64_t* out = ptr<int64_t>(out_p);
  const int64_t hw = height * width, n = depth * hw;
  std::vector<int32_t> piece(n, -1);
  std::vector<int64_t> size, queue;
  queue.reserve(1024);
  for (int64_t i = 0; i < n; ++i) {
    if (lab[i] < 0 || piece[i] >= 0) continue;
    const int32_t p = (int32_t)size.size(), l = lab[i];
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
    size.push_back((int64_t)queue.size());
  }
  const int64_t n_pieces = (int64_t)size.size();
  const int64_t none = n_pieces;
  std::vector<int64_t> nearest(n_pieces, none), nearest_large(n_pieces, none);
  auto link = [&](int64_t a, int64_t b) {
    if (nearest[a] > b) nearest[a] = b;
    if (size[b] >= min_size && nearest_large[a] > b) nearest_large[a] = b;
  };
  for (int64_t i = 0; i < n; ++i) {
    const int64_t a = piece[i];
    if (a < 0) continue;
    const int64_t z = i / hw, y = (i / width) % height, x = i % width;
    const int64_t fwd[3] = {x + 1 < width ? i + 1 : -1, y + 1 < height ? i + width : -1, z + 1 < depth ? i + hw : -1};
    for (int64_t u : fwd) {
      if (u < 0 || piece[u] < 0 || piece[u] == a) continue;
      link(a, piece[u]);
      link(piece[u], a);
    }
  }
  std::vector<int64_t> target(n_pieces), rank(n_pieces, -1), final_label(n_pieces);
  int64_t next = 0;
  for (int64_t p = 0; p < n_pieces; ++p) {
    target[p] = p;
    if (size[p] < min_size) {
      if (nearest[p] < p) target[p] = nearest[p];
      else if (nearest_large[p] != none) target[p] = nearest_large[p];
    }
    if (target[p] == p) rank[p] = next++;
  }
  for (int64_t p = 0; p < n_pieces; ++p)  // earlier targets are final already; large ones are ranked
    final_label[p] = target[p] == p ? rank[p] : (target[p] < p ? final_label[target[p]] : rank[target[p]]);
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
