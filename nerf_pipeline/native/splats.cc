// 3D Gaussian splatting's rasterizer (Kerbl et al. 2023) as TensorFlow CPU kernels: tile-binned, depth-sorted,
// front-to-back alpha compositing of projected 2D Gaussians, and its gradient.
//
// Same rules as nerf_pipeline/splats/rasterizer.py's reference_rasterize (the TensorFlow ops these kernels are
// tested against), in the same float32 arithmetic:
//   * Gaussian i is drawn iff radius_i > 0 and its mean, conic, colour, opacity and depth are all finite;
//   * it touches pixel (row, col), centre (px, py) = (col + 0.5, row + 0.5), iff |px - u_i| <= r_i and
//     |py - v_i| <= r_i (the square its radius covers: a rule of its own, so that the image does not depend
//     on which 16x16 tiles the square overlaps);
//   * power = -0.5 (a dx^2 + c dy^2) - b dx dy with (dx, dy) = (px - u, py - v); skipped if power > 0;
//     alpha = min(0.99, opacity exp(power)); skipped if alpha < 1/255;
//   * front to back by depth (ties: the lower index first); a pixel stops at the first Gaussian that would
//     bring its transmittance below 1e-4, which is not blended;
//   * rgb = sum_i c_i alpha_i T_i + T_final background, depth = sum_i d_i alpha_i T_i, alpha = 1 - T_final.
//
// Forward: the drawn Gaussians are sorted once by depth (a stable radix sort on the float's bits) and laid out
// in that order; each is binned to the tiles its rectangle overlaps (its square cut to the box of the ellipse where
// its alpha can reach 1/255: EllipseBox), in that order, so that every tile's list comes out sorted and reads memory
// in increasing order; each tile then composites its pixels Gaussian by
// Gaussian, a packet of pixels at a time, and stops when all its pixels have. Tiles run on TensorFlow's
// intra-op threads. It also returns what the backward reuses: each pixel's final transmittance and how far
// along its tile's list it blended, and the lists themselves.
//
// Backward: each tile walks its list from the last Gaussian any of its pixels blended back to the first,
// recovering each pixel's transmittance before a Gaussian by dividing by (1 - alpha) (3DGS's trick). No
// atomics and no per-thread copies of the gradients: each (Gaussian, tile) entry of the lists has a gradient
// of its own, which only its tile writes, and a second pass sums each Gaussian's entries in tile order. The
// result is the same whatever the number of threads.
//
// Ops (float32 unless said):
//   NerfSplatRasterize(means2d [N, 2], conics [N, 3], colors [N, 3], opacities [N], depths [N], radii [N] int32,
//                      background [3]) -> rgb [H, W, 3], depth [H, W], alpha [H, W], transmittance [H, W],
//                      last [H, W] int32 (entries of its tile's list the pixel went through, up to the last it
//                      blended), tile_offsets [tiles + 1] int32, tile_entries [E] int32 (each tile's list: the
//                      Gaussians' ranks in depth order among the drawn ones)
//   NerfSplatRasterizeGrad(the seven inputs, transmittance, last, tile_offsets, tile_entries, grad_rgb [H, W, 3],
//                          grad_depth [H, W], grad_alpha [H, W]) -> grad_means2d [N, 2], grad_conics [N, 3],
//                          grad_colors [N, 3], grad_opacities [N], grad_depths [N]
// Attrs: width, height (pixels); ellipses (default true; false: each Gaussian's whole square is visited, as before
// the ellipses: the same images and gradients, for tests and benchmarks).
//   NerfSsim(x [H, W, C], y [H, W, C], window [K]; attrs c1, c2) -> map [H - K + 1, W - K + 1] (SSIM over the
//            windows, tf.image.ssim's formula, averaged over the channels), stats [H - K + 1, W - K + 1, 5 C] (the
//            blurred x, y, x x, y y, x y, C channels each, which the gradient reuses). The blurs are the window's
//            'valid' correlation along rows, then columns: O(H W K), where the TensorFlow reference's banded matrix
//            products cost O(H^2 W) (about a second a step at 800 x 800).
//   NerfSsimGrad(x, y, window, stats, grad [H - K + 1, W - K + 1]) -> x_grad [H, W, C] (with respect to x only).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace nerf_pipeline {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Status;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;
using ShapeContext = ::tensorflow::shape_inference::InferenceContext;

constexpr int kTile = 16;
constexpr int kTilePixels = kTile * kTile;
constexpr float kMaxAlpha = 0.99f;
constexpr float kMinAlpha = 1.0f / 255.0f;
constexpr float kMinTransmittance = 1e-4f;
// An entry's gradient: mean (u, v), conic (a, b, c), colour (r, g, b), opacity, depth.
constexpr int kGradWidth = 10;
// The tiles' loops hold positions in a list as floats: a list may be at most 2^24 long.
constexpr int64_t kMaxListLength = int64_t{1} << 24;

// A drawn Gaussian as the compositing loops read it (one cache line), and the rectangle of pixels (inclusive,
// inside the image) that holds every pixel its square can touch.
struct Splat {
  float u, v, a, b, c, opacity, red, green, blue, depth, radius;
  int32_t x0, x1, y0, y1;
  // Below this power, alpha < 1/255 whatever the rounding of exp: lanes under it are skipped before the exp (a
  // shortcut only; the alpha test decides).
  float min_power;
  // Left uninitialized: the depth order's vectors of Splats are filled in parallel, not zeroed first.
  Splat() {}
};

struct Inputs {
  const float* means2d;
  const float* conics;
  const float* colors;
  const float* opacities;
  const float* depths;
  const int32_t* radii;
  const float* background;
  int64_t n = 0;
};

// The pixel range [lo, hi] (clipped to [0, size - 1]) whose centres p + 0.5 may lie within `radius` of `centre`,
// with a margin for rounding (the exact test is made pixel by pixel); false when it is empty.
inline bool PixelRange(float centre, float radius, int size, int32_t* lo, int32_t* hi) {
  const double margin = 1.0 + 1e-6 * (std::fabs(static_cast<double>(centre)) + radius);
  const double first = static_cast<double>(centre) - radius - 0.5 - margin;
  const double last = static_cast<double>(centre) + radius - 0.5 + margin;
  if (last < 0.0 || first > size - 1.0) return false;
  *lo = first <= 0.0 ? 0 : static_cast<int32_t>(std::ceil(first));
  *hi = last >= size - 1.0 ? size - 1 : static_cast<int32_t>(std::floor(last));
  return *lo <= *hi;
}

// The half-extents along x and y of the ellipse where a Gaussian can pass the alpha test: power >= min_power,
// that is d^T Q d <= k with Q = [[a, b], [b, c]] and k = -2 min_power; its box lies inside its square, and is
// much smaller for an elongated Gaussian. A shortcut only, as min_power is: every pixel the alpha test would take
// lies within the ellipse of Q shrunk by kConicShrink (a + c) on its diagonal, because float32 rounds each of the
// power's terms a dx^2, c dy^2, 2 b dx dy (each at most (a + c) |d|^2) and dx, dy themselves by a few ulps,
// about 1e-6 (a + c) |d|^2 in all; PixelRange adds a pixel and more beside. So the images and gradients are the
// square's bit for bit (tests/test_splat_rasterizer.py holds them equal). False for a Gaussian whose shrunk Q is
// not positive definite (nearly degenerate) or that has no border (min_power >= 0: nothing drawn): its square.
// In double precision. (Cutting each row of tiles and each row of pixels to the ellipse too halved the tile
// entries again on a trained scene but cost more than it saved: benchmarks/README.md.)
constexpr double kConicShrink = 4e-6;

inline bool EllipseBox(float a_f, float b_f, float c_f, float min_power, double* half_width, double* half_height) {
  const double k = -2.0 * static_cast<double>(min_power);
  const double shrink = kConicShrink * (std::fabs(static_cast<double>(a_f)) + std::fabs(static_cast<double>(c_f)));
  const double a = a_f - shrink, b = b_f, c = c_f - shrink, det = a * c - b * b;
  if (!(k > 0.0) || !(a > 0.0) || !(det > 0.0)) return false;
  *half_width = std::sqrt(k * c / det);
  *half_height = std::sqrt(k * a / det);
  return std::isfinite(*half_width) && std::isfinite(*half_height);
}

// Gaussian g as a Splat; false when it is not drawn (culled, not finite, or touching no pixel). With `ellipses`,
// its rectangle is the square's cut to its ellipse's box (EllipseBox).
inline bool Prepare(const Inputs& in, int64_t g, int width, int height, bool ellipses, Splat* s) {
  const int32_t radius = in.radii[g];
  if (radius <= 0) return false;
  s->u = in.means2d[2 * g];
  s->v = in.means2d[2 * g + 1];
  s->a = in.conics[3 * g];
  s->b = in.conics[3 * g + 1];
  s->c = in.conics[3 * g + 2];
  s->red = in.colors[3 * g];
  s->green = in.colors[3 * g + 1];
  s->blue = in.colors[3 * g + 2];
  s->opacity = in.opacities[g];
  s->depth = in.depths[g];
  s->radius = static_cast<float>(radius);
  s->min_power = s->opacity > 0.0f ? static_cast<float>(std::log(1.0 / (255.0 * s->opacity)) - 1e-4) : 0.0f;
  const float values[] = {s->u, s->v, s->a, s->b, s->c, s->red, s->green, s->blue, s->opacity, s->depth};
  for (float value : values) {
    if (!std::isfinite(value)) return false;
  }
  if (!PixelRange(s->u, s->radius, width, &s->x0, &s->x1) || !PixelRange(s->v, s->radius, height, &s->y0, &s->y1)) {
    return false;
  }
  double half_width, half_height;
  if (!ellipses || !EllipseBox(s->a, s->b, s->c, s->min_power, &half_width, &half_height)) return true;
  int32_t x0, x1, y0, y1;
  if (!PixelRange(s->u, static_cast<float>(half_width), width, &x0, &x1) ||
      !PixelRange(s->v, static_cast<float>(half_height), height, &y0, &y1)) {
    return false;
  }
  s->x0 = std::max(s->x0, x0);
  s->x1 = std::min(s->x1, x1);
  s->y0 = std::max(s->y0, y0);
  s->y1 = std::min(s->y1, y1);
  return s->x0 <= s->x1 && s->y0 <= s->y1;
}

// The tiles' loops run over packets of kLanes pixels of a tile row (Eigen's packets: AVX, AVX-512, NEON, or
// scalars), with masks where the rules say "skip", so each lane computes what the reference computes for its
// pixel, in the same order of float operations (exp is Eigen's, as TensorFlow's Exp is, to an ulp or so: this
// build may fuse its multiply-adds where TensorFlow's does not).
namespace ei = ::Eigen::internal;
using Packet = ei::packet_traits<float>::type;
constexpr int kLanes = ei::unpacket_traits<Packet>::size;
static_assert(kTile % kLanes == 0, "a tile row must be a whole number of packets");
constexpr int kRowPackets = kTile / kLanes;

inline bool AnyLane(const Packet& mask) {
#if defined(EIGEN_VECTORIZE_AVX) && !defined(EIGEN_VECTORIZE_AVX512)
  return _mm256_movemask_ps(mask) != 0;
#else
  return ei::predux_any(mask);
#endif
}

// A tile's list is sparse in the depth-ordered Splats: each one is a cache miss unless fetched ahead.
constexpr int kPrefetch = 4;
inline void Prefetch(const Splat* s) {
#if defined(__GNUC__)
  __builtin_prefetch(s);
#endif
}

inline float AllOnes() {
  const uint32_t bits = 0xFFFFFFFFu;
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

// A Gaussian's values, broadcast.
struct SplatPackets {
  Packet u, a, b, c, opacity, radius, red, green, blue, depth, min_power;
  explicit SplatPackets(const Splat& s)
      : u(ei::pset1<Packet>(s.u)), a(ei::pset1<Packet>(s.a)), b(ei::pset1<Packet>(s.b)),
        c(ei::pset1<Packet>(s.c)), opacity(ei::pset1<Packet>(s.opacity)), radius(ei::pset1<Packet>(s.radius)),
        red(ei::pset1<Packet>(s.red)), green(ei::pset1<Packet>(s.green)), blue(ei::pset1<Packet>(s.blue)),
        depth(ei::pset1<Packet>(s.depth)), min_power(ei::pset1<Packet>(s.min_power)) {}
};

// One packet of a row (pixel centres px, the row's dy = py - v and c dy dy): dx, the lanes inside the Gaussian's
// square whose power is <= 0 and not so low that alpha must be < 1/255 (within `mask`), and the power.
inline Packet Power(const SplatPackets& g, const Packet& px, const Packet& dy, const Packet& c_dy_dy,
                    const Packet& mask, Packet* dx, Packet* power) {
  *dx = ei::psub(px, g.u);
  *power = ei::psub(ei::pmul(ei::pset1<Packet>(-0.5f), ei::padd(ei::pmul(ei::pmul(g.a, *dx), *dx), c_dy_dy)),
                    ei::pmul(ei::pmul(g.b, *dx), dy));
  const Packet in_range = ei::pand(ei::pcmp_le(*power, ei::pzero(*power)), ei::pcmp_le(g.min_power, *power));
  return ei::pand(ei::pand(mask, ei::pcmp_le(ei::pabs(*dx), g.radius)), in_range);
}

inline uint32_t DepthKey(float depth) {
  if (depth == 0.0f) depth = 0.0f;  // -0 and +0 tie, as the reference's comparisons have them
  uint32_t bits;
  std::memcpy(&bits, &depth, sizeof(bits));
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Stable LSD radix sort of `ids` by `keys` (DepthKey of each one's depth): ascending depth, ties in the given order.
void SortByDepth(std::vector<uint32_t> keys, std::vector<int32_t>* ids) {
  const size_t count = ids->size();
  std::vector<uint32_t> keys_out(count);
  std::vector<int32_t> ids_out(count);
  for (int shift = 0; shift < 32; shift += 8) {
    size_t histogram[257] = {};
    for (size_t i = 0; i < count; ++i) ++histogram[((keys[i] >> shift) & 0xFF) + 1];
    for (int b = 0; b < 256; ++b) histogram[b + 1] += histogram[b];
    for (size_t i = 0; i < count; ++i) {
      const size_t at = histogram[(keys[i] >> shift) & 0xFF]++;
      keys_out[at] = keys[i];
      ids_out[at] = (*ids)[i];
    }
    keys.swap(keys_out);
    ids->swap(ids_out);
  }
}

struct Image {
  int width = 0, height = 0, tiles_x = 0, tiles_y = 0;
  bool ellipses = true;  // cut each Gaussian's square to its ellipse's box (EllipseBox)
  int64_t tiles() const { return static_cast<int64_t>(tiles_x) * tiles_y; }
  Status Read(OpKernelConstruction* c) {
    TF_RETURN_IF_ERROR(c->GetAttr("width", &width));
    TF_RETURN_IF_ERROR(c->GetAttr("height", &height));
    TF_RETURN_IF_ERROR(c->GetAttr("ellipses", &ellipses));
    if (width < 1 || height < 1) return InvalidArgument("width and height must be at least 1");
    if (static_cast<int64_t>(width) * height > (int64_t{1} << 30)) return InvalidArgument("the image is too large");
    tiles_x = (width + kTile - 1) / kTile;
    tiles_y = (height + kTile - 1) / kTile;
    return Status();
  }
};

Status ReadInputs(OpKernelContext* context, Inputs* in) {
  const Tensor& means2d = context->input(0);
  if (means2d.dims() != 2 || means2d.dim_size(1) != 2) {
    return InvalidArgument("means2d must be [N, 2], got ", means2d.shape().DebugString());
  }
  const int64_t n = means2d.dim_size(0);
  if (n >= std::numeric_limits<int32_t>::max()) return InvalidArgument("too many Gaussians");
  const char* names[] = {"means2d", "conics", "colors", "opacities", "depths", "radii"};
  const int widths[] = {2, 3, 3, 0, 0, 0};
  for (int i = 0; i < 6; ++i) {
    const Tensor& t = context->input(i);
    const bool ok = widths[i] ? (t.dims() == 2 && t.dim_size(0) == n && t.dim_size(1) == widths[i])
                              : (t.dims() == 1 && t.dim_size(0) == n);
    if (!ok) {
      return InvalidArgument(names[i], " must be [N", widths[i] ? ", " + std::to_string(widths[i]) : std::string(),
                             "] with N = ", n, ", got ", t.shape().DebugString());
    }
  }
  const Tensor& background = context->input(6);
  if (background.dims() != 1 || background.dim_size(0) != 3) {
    return InvalidArgument("background must be [3], got ", background.shape().DebugString());
  }
  in->means2d = means2d.flat<float>().data();
  in->conics = context->input(1).flat<float>().data();
  in->colors = context->input(2).flat<float>().data();
  in->opacities = context->input(3).flat<float>().data();
  in->depths = context->input(4).flat<float>().data();
  in->radii = context->input(5).flat<int32_t>().data();
  in->background = background.flat<float>().data();
  in->n = n;
  return Status();
}

// The drawn Gaussians as Splats in depth order (`sorted`, by rank), and each one's index (`order`). Forward and
// backward both compute it, the same way. The tiles' lists hold ranks, so that a tile reads its Splats in
// increasing memory order.
void DepthOrder(OpKernelContext* context, const Inputs& in, const Image& image, std::vector<Splat>* sorted,
                std::vector<int32_t>* order) {
  std::vector<Splat> splats(in.n);
  std::vector<uint8_t> drawn(in.n, 0);
  auto* workers = context->device()->tensorflow_cpu_worker_threads();
  ::tensorflow::Shard(workers->num_threads, workers->workers, in.n, 200, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      drawn[g] = Prepare(in, g, image.width, image.height, image.ellipses, &splats[g]) ? 1 : 0;
    }
  });
  order->clear();
  std::vector<uint32_t> keys;  // (read here, in memory order: the sort's first pass read them by index)
  for (int64_t g = 0; g < in.n; ++g) {
    if (drawn[g]) {
      order->push_back(static_cast<int32_t>(g));
      keys.push_back(DepthKey(splats[g].depth));
    }
  }
  SortByDepth(std::move(keys), order);
  sorted->resize(order->size());
  ::tensorflow::Shard(workers->num_threads, workers->workers, static_cast<int64_t>(order->size()), 50,
                      [&](int64_t begin, int64_t end) {
                        for (int64_t i = begin; i < end; ++i) (*sorted)[i] = splats[(*order)[i]];
                      });
}

inline void TileRange(const Splat& s, int32_t* tx0, int32_t* tx1, int32_t* ty0, int32_t* ty1) {
  *tx0 = s.x0 / kTile;
  *tx1 = s.x1 / kTile;
  *ty0 = s.y0 / kTile;
  *ty1 = s.y1 / kTile;
}

// One tile, front to back: its pixels' colour, depth, transmittance and how far along the list each blended.
void CompositeTile(int64_t tile, const Image& image, const std::vector<Splat>& splats, const int32_t* offsets,
                   const int32_t* entries, const float* background, float* rgb, float* depth_out, float* alpha_out,
                   float* transmittance_out, int32_t* last_out) {
  const int x0 = static_cast<int>(tile % image.tiles_x) * kTile;
  const int y0 = static_cast<int>(tile / image.tiles_x) * kTile;
  const int x1 = std::min(x0 + kTile, image.width);  // exclusive
  const int y1 = std::min(y0 + kTile, image.height);
  // Per pixel: transmittance, colour, depth, last position blended (a float: lists are < 2^24 long), and whether
  // it still runs (all ones) or has stopped or lies outside the image (0).
  alignas(64) float T[kTilePixels], R[kTilePixels], G[kTilePixels], B[kTilePixels], D[kTilePixels];
  alignas(64) float last[kTilePixels], active[kTilePixels], columns[kTile];
  bool row_active[kTile];
  const float on = AllOnes();
  for (int i = 0; i < kTile; ++i) columns[i] = static_cast<float>(x0 + i) + 0.5f;
  for (int p = 0; p < kTilePixels; ++p) {
    T[p] = 1.0f;
    R[p] = G[p] = B[p] = D[p] = last[p] = 0.0f;
    active[p] = (x0 + p % kTile < x1 && y0 + p / kTile < y1) ? on : 0.0f;
  }
  int active_rows = y1 - y0;
  for (int r = 0; r < kTile; ++r) row_active[r] = r < active_rows;
  const Packet one = ei::pset1<Packet>(1.0f), max_alpha = ei::pset1<Packet>(kMaxAlpha);
  const Packet min_alpha = ei::pset1<Packet>(kMinAlpha), min_transmittance = ei::pset1<Packet>(kMinTransmittance);
  const int32_t begin = offsets[tile], end = offsets[tile + 1];
  for (int32_t k = begin; k < end && active_rows > 0; ++k) {
    if (k + kPrefetch < end) Prefetch(&splats[entries[k + kPrefetch]]);
    const Splat& s = splats[entries[k]];
    const SplatPackets g(s);
    const Packet position = ei::pset1<Packet>(static_cast<float>(k - begin + 1));
    const int j0 = (std::max<int>(s.x0, x0) - x0) / kLanes, j1 = (std::min<int>(s.x1, x1 - 1) - x0) / kLanes;
    const int cy0 = std::max<int>(s.y0, y0), cy1 = std::min<int>(s.y1, y1 - 1);
    for (int row = cy0; row <= cy1; ++row) {
      const int r = row - y0;
      if (!row_active[r]) continue;
      const float dy = (static_cast<float>(row) + 0.5f) - s.v;
      if (!(std::fabs(dy) <= s.radius)) continue;
      const Packet dy_p = ei::pset1<Packet>(dy), c_dy_dy = ei::pset1<Packet>(s.c * dy * dy);
      bool stopped = false;
      for (int j = j0; j <= j1; ++j) {
        const int p = r * kTile + j * kLanes;
        const Packet running = ei::pload<Packet>(active + p);
        if (!AnyLane(running)) continue;
        Packet dx, power;
        Packet valid = Power(g, ei::pload<Packet>(columns + j * kLanes), dy_p, c_dy_dy, running, &dx, &power);
        if (!AnyLane(valid)) continue;
        const Packet alpha = ei::pmin(ei::pmul(g.opacity, ei::pexp(power)), max_alpha);
        valid = ei::pand(valid, ei::pcmp_le(min_alpha, alpha));
        const Packet t = ei::pload<Packet>(T + p);
        const Packet next = ei::pmul(t, ei::psub(one, alpha));
        const Packet stop = ei::pand(valid, ei::pcmp_lt(next, min_transmittance));
        const Packet blend = ei::pandnot(valid, stop);
        const Packet w = ei::pmul(alpha, t);
        ei::pstore(R + p, ei::padd(ei::pload<Packet>(R + p), ei::pand(blend, ei::pmul(w, g.red))));
        ei::pstore(G + p, ei::padd(ei::pload<Packet>(G + p), ei::pand(blend, ei::pmul(w, g.green))));
        ei::pstore(B + p, ei::padd(ei::pload<Packet>(B + p), ei::pand(blend, ei::pmul(w, g.blue))));
        ei::pstore(D + p, ei::padd(ei::pload<Packet>(D + p), ei::pand(blend, ei::pmul(w, g.depth))));
        ei::pstore(T + p, ei::pselect(blend, next, t));
        ei::pstore(last + p, ei::pselect(blend, position, ei::pload<Packet>(last + p)));
        if (AnyLane(stop)) {
          ei::pstore(active + p, ei::pandnot(running, stop));
          stopped = true;
        }
      }
      if (stopped) {
        bool any = false;
        for (int j = 0; j < kRowPackets; ++j) any |= AnyLane(ei::pload<Packet>(active + r * kTile + j * kLanes));
        if (!any) {
          row_active[r] = false;
          --active_rows;
        }
      }
    }
  }
  for (int row = y0; row < y1; ++row) {
    for (int col = x0; col < x1; ++col) {
      const int p = (row - y0) * kTile + (col - x0);
      const int64_t pixel = static_cast<int64_t>(row) * image.width + col;
      rgb[3 * pixel] = R[p] + T[p] * background[0];
      rgb[3 * pixel + 1] = G[p] + T[p] * background[1];
      rgb[3 * pixel + 2] = B[p] + T[p] * background[2];
      depth_out[pixel] = D[p];
      alpha_out[pixel] = 1.0f - T[p];
      transmittance_out[pixel] = T[p];
      last_out[pixel] = static_cast<int32_t>(last[p]);
    }
  }
}

class RasterizeOp : public OpKernel {
 public:
  explicit RasterizeOp(OpKernelConstruction* c) : OpKernel(c) { OP_REQUIRES_OK(c, image_.Read(c)); }

  void Compute(OpKernelContext* context) override {
    Inputs in;
    OP_REQUIRES_OK(context, ReadInputs(context, &in));
    const int64_t H = image_.height, W = image_.width, num_tiles = image_.tiles();
    Tensor *rgb = nullptr, *depth = nullptr, *alpha = nullptr, *transmittance = nullptr, *last = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({H, W, 3}), &rgb));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({H, W}), &depth));
    OP_REQUIRES_OK(context, context->allocate_output(2, TensorShape({H, W}), &alpha));
    OP_REQUIRES_OK(context, context->allocate_output(3, TensorShape({H, W}), &transmittance));
    OP_REQUIRES_OK(context, context->allocate_output(4, TensorShape({H, W}), &last));
    Tensor* offsets_tensor = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(5, TensorShape({num_tiles + 1}), &offsets_tensor));
    int32_t* offsets = offsets_tensor->flat<int32_t>().data();

    // The drawn Gaussians in depth order, and how many (Gaussian, tile) entries the lists will hold.
    std::vector<Splat> splats;
    std::vector<int32_t> order;
    DepthOrder(context, in, image_, &splats, &order);
    const int64_t drawn_count = static_cast<int64_t>(order.size());
    int64_t num_entries = 0;
    for (int64_t i = 0; i < drawn_count; ++i) {
      int32_t tx0, tx1, ty0, ty1;
      TileRange(splats[i], &tx0, &tx1, &ty0, &ty1);
      num_entries += static_cast<int64_t>(tx1 - tx0 + 1) * (ty1 - ty0 + 1);
    }
    OP_REQUIRES(context, num_entries < std::numeric_limits<int32_t>::max(),
                InvalidArgument("the Gaussians cover ", num_entries, " (Gaussian, tile) pairs; at most 2^31 - 1"));
    Tensor* entries_tensor = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(6, TensorShape({num_entries}), &entries_tensor));
    int32_t* entries = entries_tensor->flat<int32_t>().data();

    // Each chunk of the depth order counts its entries per tile; a tile's list is then the chunks' entries in
    // chunk order, so every list comes out sorted by depth. Chunks fill their parts of the lists in parallel.
    const int64_t num_chunks = std::max<int64_t>(
        1, std::min<int64_t>({64, drawn_count / 2048, (int64_t{1} << 22) / std::max<int64_t>(num_tiles, 1)}));
    const int64_t chunk_size = (drawn_count + num_chunks - 1) / num_chunks;
    std::vector<int32_t> cursor(num_chunks * num_tiles, 0);
    auto* workers = context->device()->tensorflow_cpu_worker_threads();
    auto for_chunks = [&](auto work) {
      ::tensorflow::Shard(workers->num_threads, workers->workers, num_chunks, chunk_size * 200,
                          [&](int64_t first, int64_t end) {
                            for (int64_t chunk = first; chunk < end; ++chunk) {
                              work(chunk, chunk * chunk_size, std::min(drawn_count, (chunk + 1) * chunk_size));
                            }
                          });
    };
    for_chunks([&](int64_t chunk, int64_t begin, int64_t end) {
      int32_t* counts = cursor.data() + chunk * num_tiles;
      for (int64_t i = begin; i < end; ++i) {
        int32_t tx0, tx1, ty0, ty1;
        TileRange(splats[i], &tx0, &tx1, &ty0, &ty1);
        for (int32_t ty = ty0; ty <= ty1; ++ty) {
          for (int32_t tx = tx0; tx <= tx1; ++tx) ++counts[static_cast<int64_t>(ty) * image_.tiles_x + tx];
        }
      }
    });
    int64_t total = 0;
    for (int64_t tile = 0; tile < num_tiles; ++tile) {
      offsets[tile] = static_cast<int32_t>(total);
      for (int64_t chunk = 0; chunk < num_chunks; ++chunk) {
        const int32_t count = cursor[chunk * num_tiles + tile];
        cursor[chunk * num_tiles + tile] = static_cast<int32_t>(total);
        total += count;
      }
    }
    offsets[num_tiles] = static_cast<int32_t>(total);
    for (int64_t tile = 0; tile < num_tiles; ++tile) {
      OP_REQUIRES(context, offsets[tile + 1] - offsets[tile] <= kMaxListLength,
                  InvalidArgument("more than 2^24 Gaussians cover tile ", tile));
    }
    for_chunks([&](int64_t chunk, int64_t begin, int64_t end) {
      int32_t* at = cursor.data() + chunk * num_tiles;
      for (int64_t i = begin; i < end; ++i) {
        int32_t tx0, tx1, ty0, ty1;
        TileRange(splats[i], &tx0, &tx1, &ty0, &ty1);
        for (int32_t ty = ty0; ty <= ty1; ++ty) {
          for (int32_t tx = tx0; tx <= tx1; ++tx) {
            const int32_t position = at[static_cast<int64_t>(ty) * image_.tiles_x + tx]++;
            entries[position] = static_cast<int32_t>(i);
          }
        }
      }
    });

    float* rgb_data = rgb->flat<float>().data();
    float* depth_data = depth->flat<float>().data();
    float* alpha_data = alpha->flat<float>().data();
    float* transmittance_data = transmittance->flat<float>().data();
    int32_t* last_data = last->flat<int32_t>().data();
    const int64_t cost = kTilePixels * 40 * std::max<int64_t>(1, num_entries / std::max<int64_t>(num_tiles, 1));
    ::tensorflow::Shard(workers->num_threads, workers->workers, num_tiles, cost, [&](int64_t first, int64_t end) {
      for (int64_t tile = first; tile < end; ++tile) {
        CompositeTile(tile, image_, splats, offsets, entries, in.background, rgb_data, depth_data, alpha_data,
                      transmittance_data, last_data);
      }
    });
  }

 private:
  Image image_;
};

struct Upstream {
  const float* rgb;
  const float* depth;
  const float* alpha;
  const float* transmittance;
  const int32_t* last;
};

// One tile, back to front: each of its entries receives (in grads, by entry) the gradient of its Gaussian's
// parameters through this tile's pixels.
void BackwardTile(int64_t tile, const Image& image, const std::vector<Splat>& splats, const int32_t* offsets,
                  const int32_t* entries, const float* background, const Upstream& up, float* grads) {
  const int x0 = static_cast<int>(tile % image.tiles_x) * kTile;
  const int y0 = static_cast<int>(tile / image.tiles_x) * kTile;
  const int x1 = std::min(x0 + kTile, image.width);
  const int y1 = std::min(y0 + kTile, image.height);
  // Per pixel: the transmittance behind the Gaussian being undone, what lies behind it (colour and depth,
  // background included), the upstream gradients, the final transmittance and how far the pixel blended (0
  // outside the image).
  alignas(64) float T[kTilePixels], SR[kTilePixels], SG[kTilePixels], SB[kTilePixels], SD[kTilePixels];
  alignas(64) float gR[kTilePixels], gG[kTilePixels], gB[kTilePixels], gD[kTilePixels], gA[kTilePixels];
  alignas(64) float Tf[kTilePixels], last[kTilePixels], columns[kTile];
  for (int i = 0; i < kTile; ++i) columns[i] = static_cast<float>(x0 + i) + 0.5f;
  std::fill(T, T + kTilePixels, 0.0f);
  std::fill(SR, SR + kTilePixels, 0.0f);
  std::fill(SG, SG + kTilePixels, 0.0f);
  std::fill(SB, SB + kTilePixels, 0.0f);
  std::fill(SD, SD + kTilePixels, 0.0f);
  std::fill(gR, gR + kTilePixels, 0.0f);
  std::fill(gG, gG + kTilePixels, 0.0f);
  std::fill(gB, gB + kTilePixels, 0.0f);
  std::fill(gD, gD + kTilePixels, 0.0f);
  std::fill(gA, gA + kTilePixels, 0.0f);
  std::fill(Tf, Tf + kTilePixels, 0.0f);
  std::fill(last, last + kTilePixels, 0.0f);
  int32_t max_last = 0;
  for (int row = y0; row < y1; ++row) {
    for (int col = x0; col < x1; ++col) {
      const int p = (row - y0) * kTile + (col - x0);
      const int64_t pixel = static_cast<int64_t>(row) * image.width + col;
      Tf[p] = T[p] = up.transmittance[pixel];
      SR[p] = T[p] * background[0];
      SG[p] = T[p] * background[1];
      SB[p] = T[p] * background[2];
      gR[p] = up.rgb[3 * pixel];
      gG[p] = up.rgb[3 * pixel + 1];
      gB[p] = up.rgb[3 * pixel + 2];
      gD[p] = up.depth[pixel];
      gA[p] = up.alpha[pixel];
      last[p] = static_cast<float>(up.last[pixel]);
      max_last = std::max(max_last, up.last[pixel]);
    }
  }
  const int32_t begin = offsets[tile], end = offsets[tile + 1];
  // Entries beyond every pixel's last blend get nothing.
  std::fill(grads + static_cast<int64_t>(begin + max_last) * kGradWidth, grads + static_cast<int64_t>(end) * kGradWidth,
            0.0f);
  const Packet one = ei::pset1<Packet>(1.0f), max_alpha = ei::pset1<Packet>(kMaxAlpha);
  const Packet min_alpha = ei::pset1<Packet>(kMinAlpha), minus_half = ei::pset1<Packet>(-0.5f);
  for (int32_t k = begin + max_last - 1; k >= begin; --k) {
    if (k - kPrefetch >= begin) Prefetch(&splats[entries[k - kPrefetch]]);
    const Splat& s = splats[entries[k]];
    const SplatPackets g(s);
    const Packet position = ei::pset1<Packet>(static_cast<float>(k - begin));
    // u, v, a, b, c, red, green, blue, opacity, depth
    Packet acc[kGradWidth];
    for (int i = 0; i < kGradWidth; ++i) acc[i] = ei::pzero(one);
    const int j0 = (std::max<int>(s.x0, x0) - x0) / kLanes, j1 = (std::min<int>(s.x1, x1 - 1) - x0) / kLanes;
    const int cy0 = std::max<int>(s.y0, y0), cy1 = std::min<int>(s.y1, y1 - 1);
    for (int row = cy0; row <= cy1; ++row) {
      const float dy = (static_cast<float>(row) + 0.5f) - s.v;
      if (!(std::fabs(dy) <= s.radius)) continue;
      const Packet dy_p = ei::pset1<Packet>(dy), c_dy_dy = ei::pset1<Packet>(s.c * dy * dy);
      const Packet dy_dy = ei::pmul(dy_p, dy_p);
      for (int j = j0; j <= j1; ++j) {
        const int p = (row - y0) * kTile + j * kLanes;
        const Packet blended = ei::pcmp_lt(position, ei::pload<Packet>(last + p));
        if (!AnyLane(blended)) continue;
        Packet dx, power;
        Packet valid = Power(g, ei::pload<Packet>(columns + j * kLanes), dy_p, c_dy_dy, blended, &dx, &power);
        if (!AnyLane(valid)) continue;
        const Packet gauss = ei::pexp(power);
        const Packet opacity_gauss = ei::pmul(g.opacity, gauss);
        const Packet alpha = ei::pmin(opacity_gauss, max_alpha);
        valid = ei::pand(valid, ei::pcmp_le(min_alpha, alpha));
        if (!AnyLane(valid)) continue;
        const Packet one_minus = ei::psub(one, alpha);
        const Packet t = ei::pload<Packet>(T + p);
        const Packet before = ei::pdiv(t, one_minus);  // the transmittance in front of this Gaussian
        const Packet w = ei::pmul(alpha, before);
        const Packet gr = ei::pload<Packet>(gR + p), gg = ei::pload<Packet>(gG + p), gb = ei::pload<Packet>(gB + p);
        const Packet gd = ei::pload<Packet>(gD + p);
        const Packet sr = ei::pload<Packet>(SR + p), sg = ei::pload<Packet>(SG + p), sb = ei::pload<Packet>(SB + p);
        const Packet sd = ei::pload<Packet>(SD + p);
        acc[5] = ei::padd(acc[5], ei::pand(valid, ei::pmul(w, gr)));
        acc[6] = ei::padd(acc[6], ei::pand(valid, ei::pmul(w, gg)));
        acc[7] = ei::padd(acc[7], ei::pand(valid, ei::pmul(w, gb)));
        acc[9] = ei::padd(acc[9], ei::pand(valid, ei::pmul(w, gd)));
        const Packet behind = ei::psub(
            ei::padd(ei::padd(ei::padd(ei::pmul(gr, sr), ei::pmul(gg, sg)), ei::pmul(gb, sb)), ei::pmul(gd, sd)),
            ei::pmul(ei::pload<Packet>(gA + p), ei::pload<Packet>(Tf + p)));
        const Packet own = ei::padd(
            ei::padd(ei::padd(ei::pmul(gr, g.red), ei::pmul(gg, g.green)), ei::pmul(gb, g.blue)),
            ei::pmul(gd, g.depth));
        const Packet d_alpha = ei::psub(ei::pmul(before, own), ei::pdiv(behind, one_minus));
        ei::pstore(SR + p, ei::pselect(valid, ei::padd(sr, ei::pmul(w, g.red)), sr));
        ei::pstore(SG + p, ei::pselect(valid, ei::padd(sg, ei::pmul(w, g.green)), sg));
        ei::pstore(SB + p, ei::pselect(valid, ei::padd(sb, ei::pmul(w, g.blue)), sb));
        ei::pstore(SD + p, ei::pselect(valid, ei::padd(sd, ei::pmul(w, g.depth)), sd));
        ei::pstore(T + p, ei::pselect(valid, before, t));
        // Where alpha is clamped at 0.99, no gradient passes through it.
        const Packet unclamped = ei::pand(valid, ei::pcmp_le(opacity_gauss, max_alpha));
        const Packet d_power = ei::pmul(d_alpha, opacity_gauss);
        acc[8] = ei::padd(acc[8], ei::pand(unclamped, ei::pmul(d_alpha, gauss)));
        const Packet d_u = ei::pmul(d_power, ei::padd(ei::pmul(g.a, dx), ei::pmul(g.b, dy_p)));
        const Packet d_v = ei::pmul(d_power, ei::padd(ei::pmul(g.b, dx), ei::pmul(g.c, dy_p)));
        acc[0] = ei::padd(acc[0], ei::pand(unclamped, d_u));
        acc[1] = ei::padd(acc[1], ei::pand(unclamped, d_v));
        const Packet half_d_power = ei::pmul(minus_half, d_power);
        acc[2] = ei::padd(acc[2], ei::pand(unclamped, ei::pmul(half_d_power, ei::pmul(dx, dx))));
        acc[3] = ei::padd(acc[3], ei::pand(unclamped, ei::pnegate(ei::pmul(d_power, ei::pmul(dx, dy_p)))));
        acc[4] = ei::padd(acc[4], ei::pand(unclamped, ei::pmul(half_d_power, dy_dy)));
      }
    }
    float* out = grads + static_cast<int64_t>(k) * kGradWidth;
    for (int i = 0; i < kGradWidth; ++i) out[i] = ei::predux(acc[i]);
  }
}

class RasterizeGradOp : public OpKernel {
 public:
  explicit RasterizeGradOp(OpKernelConstruction* c) : OpKernel(c) { OP_REQUIRES_OK(c, image_.Read(c)); }

  void Compute(OpKernelContext* context) override {
    Inputs in;
    OP_REQUIRES_OK(context, ReadInputs(context, &in));
    const int64_t H = image_.height, W = image_.width, num_tiles = image_.tiles();
    const TensorShape image_shape({H, W});
    const Tensor& transmittance = context->input(7);
    const Tensor& last = context->input(8);
    const Tensor& offsets_tensor = context->input(9);
    const Tensor& entries_tensor = context->input(10);
    const Tensor& grad_rgb = context->input(11);
    const Tensor& grad_depth = context->input(12);
    const Tensor& grad_alpha = context->input(13);
    OP_REQUIRES(context, transmittance.shape() == image_shape && last.shape() == image_shape &&
                             grad_depth.shape() == image_shape && grad_alpha.shape() == image_shape &&
                             grad_rgb.shape() == TensorShape({H, W, 3}),
                InvalidArgument("transmittance, last, grad_depth and grad_alpha must be [height, width] and grad_rgb "
                                "[height, width, 3]"));
    OP_REQUIRES(context, offsets_tensor.shape() == TensorShape({num_tiles + 1}),
                InvalidArgument("tile_offsets must be [", num_tiles + 1, "]"));
    OP_REQUIRES(context, entries_tensor.dims() == 1, InvalidArgument("tile_entries must be [E]"));
    const int32_t* offsets = offsets_tensor.flat<int32_t>().data();
    const int32_t* entries = entries_tensor.flat<int32_t>().data();
    const int64_t num_entries = entries_tensor.dim_size(0);

    Tensor* outputs[5];
    const int widths[] = {2, 3, 3, 0, 0};
    for (int i = 0; i < 5; ++i) {
      const TensorShape shape = widths[i] ? TensorShape({in.n, widths[i]}) : TensorShape({in.n});
      OP_REQUIRES_OK(context, context->allocate_output(i, shape, &outputs[i]));
    }

    std::vector<Splat> splats;
    std::vector<int32_t> order;
    DepthOrder(context, in, image_, &splats, &order);
    const int64_t drawn_count = static_cast<int64_t>(order.size());

    // What the forward saved must be what it would save: lists within bounds, of drawn Gaussians only, pixels
    // blending no further than their tile's list.
    OP_REQUIRES(context, offsets[0] == 0 && offsets[num_tiles] == num_entries,
                InvalidArgument("tile_offsets must run from 0 to the number of entries"));
    for (int64_t tile = 0; tile < num_tiles; ++tile) {
      OP_REQUIRES(context, offsets[tile] <= offsets[tile + 1] && offsets[tile + 1] - offsets[tile] <= kMaxListLength,
                  InvalidArgument("tile_offsets must not decrease, by at most 2^24 a tile"));
    }
    std::vector<int64_t> starts(drawn_count + 1, 0);
    for (int64_t e = 0; e < num_entries; ++e) {
      const int32_t rank = entries[e];
      OP_REQUIRES(context, rank >= 0 && rank < drawn_count,
                  InvalidArgument("tile_entries names a Gaussian that is not drawn (rank ", rank, ")"));
      ++starts[rank + 1];
    }
    for (int64_t i = 0; i < drawn_count; ++i) starts[i + 1] += starts[i];
    // Each Gaussian's entries in tile order: entry_of[starts[rank] ...] (a stable counting sort by rank).
    std::vector<int32_t> entry_of(num_entries);
    {
      std::vector<int64_t> at(starts.begin(), starts.end() - 1);
      for (int64_t e = 0; e < num_entries; ++e) entry_of[at[entries[e]]++] = static_cast<int32_t>(e);
    }
    const int32_t* last_data = last.flat<int32_t>().data();
    for (int64_t row = 0; row < H; ++row) {
      for (int64_t col = 0; col < W; ++col) {
        const int64_t tile = (row / kTile) * image_.tiles_x + col / kTile;
        const int32_t value = last_data[row * W + col];
        OP_REQUIRES(context, value >= 0 && value <= offsets[tile + 1] - offsets[tile],
                    InvalidArgument("last is out of its tile's list at pixel (", row, ", ", col, ")"));
      }
    }

    Tensor grads_tensor;
    OP_REQUIRES_OK(context, context->allocate_temp(::tensorflow::DT_FLOAT, TensorShape({num_entries * kGradWidth}),
                                                   &grads_tensor));
    float* grads = grads_tensor.flat<float>().data();
    const Upstream up{grad_rgb.flat<float>().data(), grad_depth.flat<float>().data(), grad_alpha.flat<float>().data(),
                      transmittance.flat<float>().data(), last_data};
    auto* workers = context->device()->tensorflow_cpu_worker_threads();
    const int64_t cost = kTilePixels * 80 * std::max<int64_t>(1, num_entries / std::max<int64_t>(num_tiles, 1));
    ::tensorflow::Shard(workers->num_threads, workers->workers, num_tiles, cost, [&](int64_t first, int64_t end) {
      for (int64_t tile = first; tile < end; ++tile) {
        BackwardTile(tile, image_, splats, offsets, entries, in.background, up, grads);
      }
    });

    // Each drawn Gaussian's entries, summed in tile order; the others' gradients are 0.
    float* out[5];
    for (int i = 0; i < 5; ++i) {
      out[i] = outputs[i]->flat<float>().data();
      std::fill(out[i], out[i] + outputs[i]->NumElements(), 0.0f);
    }
    ::tensorflow::Shard(workers->num_threads, workers->workers, drawn_count, 100, [&](int64_t begin, int64_t end) {
      for (int64_t rank = begin; rank < end; ++rank) {
        float sum[kGradWidth] = {};
        for (int64_t slot = starts[rank]; slot < starts[rank + 1]; ++slot) {
          const float* entry = grads + static_cast<int64_t>(entry_of[slot]) * kGradWidth;
          for (int i = 0; i < kGradWidth; ++i) sum[i] += entry[i];
        }
        const int64_t g = order[rank];
        out[0][2 * g] = sum[0];
        out[0][2 * g + 1] = sum[1];
        for (int i = 0; i < 3; ++i) out[1][3 * g + i] = sum[2 + i];
        for (int i = 0; i < 3; ++i) out[2][3 * g + i] = sum[5 + i];
        out[3][g] = sum[8];
        out[4][g] = sum[9];
      }
    });
  }

 private:
  Image image_;
};

// -- SSIM ----------------------------------------------------------------------------------------------------------

// out[j] = sum_k w[k] base[k * stride + j] for j < n: a row of a 'valid' correlation. The sums are kept in a block
// of registers across the taps, so each output is written once and the inner loop vectorises.
inline void Stencil(const float* base, int64_t stride, const float* w, int K, int64_t n, float* out) {
  constexpr int64_t kBlock = 64;
  int64_t j0 = 0;
  for (; j0 + kBlock <= n; j0 += kBlock) {
    float acc[kBlock] = {};
    for (int k = 0; k < K; ++k) {
      const float* source = base + k * stride + j0;
      const float wk = w[k];
      for (int64_t j = 0; j < kBlock; ++j) acc[j] += wk * source[j];
    }
    std::memcpy(out + j0, acc, sizeof(acc));
  }
  if (j0 < n) {
    float acc[kBlock] = {};
    for (int k = 0; k < K; ++k) {
      const float* source = base + k * stride + j0;
      const float wk = w[k];
      for (int64_t j = 0; j < n - j0; ++j) acc[j] += wk * source[j];
    }
    std::memcpy(out + j0, acc, sizeof(float) * (n - j0));
  }
}

// The 'valid' correlation of in [H, W, C] with `window` along the rows, then the columns: out [H - K + 1,
// W - K + 1, C]; `rows` is scratch of [H - K + 1, W, C]. Output rows are sharded: row i reads input rows i .. i + K - 1.
void ValidBlur(OpKernelContext* context, const float* in, int64_t H, int64_t W, int64_t C, const float* window, int K,
               float* rows, float* out) {
  const int64_t out_h = H - K + 1, row = W * C, out_row = (W - K + 1) * C;
  auto* workers = context->device()->tensorflow_cpu_worker_threads();
  ::tensorflow::Shard(workers->num_threads, workers->workers, out_h, 3 * K * row, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      Stencil(in + i * row, row, window, K, row, rows + i * row);         // along the rows: tap k is k rows down
      Stencil(rows + i * row, C, window, K, out_row, out + i * out_row);  // along the columns: k pixels right
    }
  });
}

// Checks of an SSIM op's images: [H, W, C], both of one shape, at least as large as the window (1 to 64 taps).
Status SsimInputs(const Tensor& x, const Tensor& y, const Tensor& window) {
  if (x.dims() != 3) return InvalidArgument("the images must be [H, W, C], got ", x.shape().DebugString());
  if (x.shape() != y.shape()) {
    return InvalidArgument("the images differ in shape: ", x.shape().DebugString(), " and ", y.shape().DebugString());
  }
  if (window.dims() != 1 || window.dim_size(0) < 1 || window.dim_size(0) > 64) {
    return InvalidArgument("the window must be [K] with 1 <= K <= 64, got ", window.shape().DebugString());
  }
  if (x.dim_size(0) < window.dim_size(0) || x.dim_size(1) < window.dim_size(0)) {
    return InvalidArgument("the images (", x.shape().DebugString(), ") are smaller than the window (",
                           window.dim_size(0), " taps)");
  }
  return Status();
}

// Per pixel and channel, what SSIM is made of, from the blurred x, y, x^2, y^2 and xy (tf.image.ssim's formula).
struct SsimTerms {
  float luminance_num, luminance_den, structure_num, structure_den;
};

inline SsimTerms Terms(float mu_x, float mu_y, float xx, float yy, float xy, float c1, float c2) {
  const float sigma_x = xx - mu_x * mu_x, sigma_y = yy - mu_y * mu_y, sigma_xy = xy - mu_x * mu_y;
  return {2.0f * mu_x * mu_y + c1, mu_x * mu_x + mu_y * mu_y + c1, 2.0f * sigma_xy + c2, sigma_x + sigma_y + c2};
}

class SsimOp : public OpKernel {
 public:
  explicit SsimOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("c1", &c1_));
    OP_REQUIRES_OK(context, context->GetAttr("c2", &c2_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor &x = context->input(0), &y = context->input(1), &window = context->input(2);
    OP_REQUIRES_OK(context, SsimInputs(x, y, window));
    const int K = static_cast<int>(window.dim_size(0));
    const int64_t H = x.dim_size(0), W = x.dim_size(1), C = x.dim_size(2), out_h = H - K + 1, out_w = W - K + 1;
    Tensor *map_tensor = nullptr, *stats_tensor = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({out_h, out_w}), &map_tensor));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({out_h, out_w, 5 * C}), &stats_tensor));
    Tensor stack_tensor, rows_tensor;
    OP_REQUIRES_OK(context, context->allocate_temp(::tensorflow::DT_FLOAT, TensorShape({H, W, 5 * C}), &stack_tensor));
    OP_REQUIRES_OK(context,
                   context->allocate_temp(::tensorflow::DT_FLOAT, TensorShape({out_h, W, 5 * C}), &rows_tensor));
    const float *xs = x.flat<float>().data(), *ys = y.flat<float>().data();
    float* stack = stack_tensor.flat<float>().data();
    for (int64_t p = 0; p < H * W; ++p) {  // [x, y, x x, y y, x y], C channels each (the reference's concat)
      float* out = stack + p * 5 * C;
      for (int64_t c = 0; c < C; ++c) {
        const float a = xs[p * C + c], b = ys[p * C + c];
        out[c] = a;
        out[C + c] = b;
        out[2 * C + c] = a * a;
        out[3 * C + c] = b * b;
        out[4 * C + c] = a * b;
      }
    }
    float* stats = stats_tensor->flat<float>().data();
    ValidBlur(context, stack, H, W, 5 * C, window.flat<float>().data(), K, rows_tensor.flat<float>().data(), stats);
    float* map = map_tensor->flat<float>().data();
    for (int64_t p = 0; p < out_h * out_w; ++p) {
      const float* s = stats + p * 5 * C;
      float sum = 0.0f;
      for (int64_t c = 0; c < C; ++c) {
        const SsimTerms t = Terms(s[c], s[C + c], s[2 * C + c], s[3 * C + c], s[4 * C + c], c1_, c2_);
        sum += (t.luminance_num / t.luminance_den) * (t.structure_num / t.structure_den);
      }
      map[p] = sum / static_cast<float>(C);
    }
  }

 private:
  float c1_, c2_;
};

class SsimGradOp : public OpKernel {
 public:
  explicit SsimGradOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("c1", &c1_));
    OP_REQUIRES_OK(context, context->GetAttr("c2", &c2_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor &x = context->input(0), &y = context->input(1), &window = context->input(2);
    const Tensor &stats_tensor = context->input(3), &grad_tensor = context->input(4);
    OP_REQUIRES_OK(context, SsimInputs(x, y, window));
    const int K = static_cast<int>(window.dim_size(0));
    const int64_t H = x.dim_size(0), W = x.dim_size(1), C = x.dim_size(2), out_h = H - K + 1, out_w = W - K + 1;
    OP_REQUIRES(context, stats_tensor.shape() == TensorShape({out_h, out_w, 5 * C}),
                InvalidArgument("stats must be [H - K + 1, W - K + 1, 5 C], got ", stats_tensor.shape().DebugString()));
    OP_REQUIRES(context, grad_tensor.shape() == TensorShape({out_h, out_w}),
                InvalidArgument("grad must be [H - K + 1, W - K + 1], got ", grad_tensor.shape().DebugString()));
    Tensor* dx_tensor = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, x.shape(), &dx_tensor));

    // The map's gradient with respect to the blurred x, x x and x y ([mu, xx, xy], C channels each), laid in an
    // image padded by K - 1 zeros on every side: the adjoint of a 'valid' correlation is the 'valid' correlation
    // of that padding with the window reversed.
    const int64_t pad = K - 1, padded_h = out_h + 2 * pad, padded_w = out_w + 2 * pad, G = 3 * C;
    Tensor padded_tensor, rows_tensor, spread_tensor;
    OP_REQUIRES_OK(context, context->allocate_temp(::tensorflow::DT_FLOAT, TensorShape({padded_h, padded_w, G}),
                                                   &padded_tensor));
    OP_REQUIRES_OK(context, context->allocate_temp(::tensorflow::DT_FLOAT, TensorShape({H, padded_w, G}),
                                                   &rows_tensor));
    OP_REQUIRES_OK(context, context->allocate_temp(::tensorflow::DT_FLOAT, TensorShape({H, W, G}), &spread_tensor));
    float* padded = padded_tensor.flat<float>().data();
    std::fill_n(padded, padded_tensor.NumElements(), 0.0f);
    const float* stats = stats_tensor.flat<float>().data();
    const float* grad = grad_tensor.flat<float>().data();
    for (int64_t i = 0; i < out_h; ++i) {
      for (int64_t j = 0; j < out_w; ++j) {
        const int64_t p = i * out_w + j;
        const float* s = stats + p * 5 * C;
        const float g = grad[p] / static_cast<float>(C);
        float* out = padded + ((i + pad) * padded_w + (j + pad)) * G;
        for (int64_t c = 0; c < C; ++c) {
          const float mu_x = s[c], mu_y = s[C + c];
          const SsimTerms t = Terms(mu_x, mu_y, s[2 * C + c], s[3 * C + c], s[4 * C + c], c1_, c2_);
          const float luminance = t.luminance_num / t.luminance_den, structure = t.structure_num / t.structure_den;
          // d(luminance)/d(mu_x); d(structure)/d(sigma_x) and /d(sigma_xy); sigma_x = xx - mu_x^2 and
          // sigma_xy = xy - mu_x mu_y carry mu_x too.
          const float d_lum = (2.0f * mu_y - luminance * 2.0f * mu_x) / t.luminance_den;
          const float d_sx = -structure / t.structure_den, d_sxy = 2.0f / t.structure_den;
          const float d_mu = d_lum * structure + luminance * (d_sx * (-2.0f * mu_x) + d_sxy * (-mu_y));
          out[c] = g * d_mu;
          out[C + c] = g * luminance * d_sx;
          out[2 * C + c] = g * luminance * d_sxy;
        }
      }
    }
    std::vector<float> reversed(window.flat<float>().data(), window.flat<float>().data() + K);
    std::reverse(reversed.begin(), reversed.end());
    float* spread = spread_tensor.flat<float>().data();
    ValidBlur(context, padded, padded_h, padded_w, G, reversed.data(), K, rows_tensor.flat<float>().data(), spread);
    const float *xs = x.flat<float>().data(), *ys = y.flat<float>().data();
    float* dx = dx_tensor->flat<float>().data();
    for (int64_t p = 0; p < H * W; ++p) {  // x enters as x (mu), x x (2 x) and x y (y)
      const float* a = spread + p * G;
      for (int64_t c = 0; c < C; ++c) {
        dx[p * C + c] = a[c] + 2.0f * xs[p * C + c] * a[C + c] + ys[p * C + c] * a[2 * C + c];
      }
    }
  }

 private:
  float c1_, c2_;
};

Status ImageShapes(ShapeContext* c, int* width, int* height) {
  TF_RETURN_IF_ERROR(c->GetAttr("width", width));
  TF_RETURN_IF_ERROR(c->GetAttr("height", height));
  return Status();
}

REGISTER_OP("NerfSplatRasterize")
    .Input("means2d: float")
    .Input("conics: float")
    .Input("colors: float")
    .Input("opacities: float")
    .Input("depths: float")
    .Input("radii: int32")
    .Input("background: float")
    .Output("rgb: float")
    .Output("depth: float")
    .Output("alpha: float")
    .Output("transmittance: float")
    .Output("last: int32")
    .Output("tile_offsets: int32")
    .Output("tile_entries: int32")
    .Attr("width: int")
    .Attr("height: int")
    .Attr("ellipses: bool = true")
    .SetShapeFn([](ShapeContext* c) {
      int width = 0, height = 0;
      TF_RETURN_IF_ERROR(ImageShapes(c, &width, &height));
      const int64_t tiles = static_cast<int64_t>((width + kTile - 1) / kTile) * ((height + kTile - 1) / kTile);
      c->set_output(0, c->MakeShape({height, width, 3}));
      for (int i = 1; i < 5; ++i) c->set_output(i, c->Matrix(height, width));
      c->set_output(5, c->Vector(tiles + 1));
      c->set_output(6, c->Vector(c->UnknownDim()));
      return Status();
    });

REGISTER_OP("NerfSplatRasterizeGrad")
    .Input("means2d: float")
    .Input("conics: float")
    .Input("colors: float")
    .Input("opacities: float")
    .Input("depths: float")
    .Input("radii: int32")
    .Input("background: float")
    .Input("transmittance: float")
    .Input("last: int32")
    .Input("tile_offsets: int32")
    .Input("tile_entries: int32")
    .Input("grad_rgb: float")
    .Input("grad_depth: float")
    .Input("grad_alpha: float")
    .Output("grad_means2d: float")
    .Output("grad_conics: float")
    .Output("grad_colors: float")
    .Output("grad_opacities: float")
    .Output("grad_depths: float")
    .Attr("width: int")
    .Attr("height: int")
    .Attr("ellipses: bool = true")
    .SetShapeFn([](ShapeContext* c) {
      for (int i = 0; i < 5; ++i) c->set_output(i, c->input(i));
      return Status();
    });

REGISTER_OP("NerfSsim")
    .Input("x: float")
    .Input("y: float")
    .Input("window: float")
    .Output("map: float")
    .Output("stats: float")
    .Attr("c1: float")
    .Attr("c2: float")
    .SetShapeFn([](ShapeContext* c) {
      ::tensorflow::shape_inference::ShapeHandle x, window;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &x));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &window));
      const auto taps = c->Dim(window, 0);
      ::tensorflow::shape_inference::DimensionHandle h = c->UnknownDim(), w = c->UnknownDim(), s = c->UnknownDim();
      if (c->ValueKnown(taps) && c->ValueKnown(c->Dim(x, 0)) && c->ValueKnown(c->Dim(x, 1))) {
        h = c->MakeDim(c->Value(c->Dim(x, 0)) - c->Value(taps) + 1);
        w = c->MakeDim(c->Value(c->Dim(x, 1)) - c->Value(taps) + 1);
      }
      if (c->ValueKnown(c->Dim(x, 2))) s = c->MakeDim(5 * c->Value(c->Dim(x, 2)));
      c->set_output(0, c->Matrix(h, w));
      c->set_output(1, c->MakeShape({h, w, s}));
      return Status();
    });

REGISTER_OP("NerfSsimGrad")
    .Input("x: float")
    .Input("y: float")
    .Input("window: float")
    .Input("stats: float")
    .Input("grad: float")
    .Output("x_grad: float")
    .Attr("c1: float")
    .Attr("c2: float")
    .SetShapeFn([](ShapeContext* c) {
      c->set_output(0, c->input(0));
      return Status();
    });

REGISTER_KERNEL_BUILDER(Name("NerfSplatRasterize").Device(::tensorflow::DEVICE_CPU), RasterizeOp);
REGISTER_KERNEL_BUILDER(Name("NerfSsim").Device(::tensorflow::DEVICE_CPU), SsimOp);
REGISTER_KERNEL_BUILDER(Name("NerfSsimGrad").Device(::tensorflow::DEVICE_CPU), SsimGradOp);
REGISTER_KERNEL_BUILDER(Name("NerfSplatRasterizeGrad").Device(::tensorflow::DEVICE_CPU), RasterizeGradOp);

}  // namespace
}  // namespace nerf_pipeline
