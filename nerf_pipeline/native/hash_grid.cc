// The multiresolution hash encoding (instant-ngp) as fused TensorFlow CPU kernels.
//
// Same arithmetic as nerf_pipeline/model/encodings.py's TensorFlow ops (the reference these kernels are
// tested against): a point p in [-extent, extent]^3 is mapped to x = clip((p + extent) / (2 extent), 0, 1);
// on level l of resolution R_l its cell is c = min(floor(x R_l), R_l - 1), its fraction f = x R_l - c; the
// cell's 8 vertices index the level's part of the table densely (x + s (y + s z), s = R_l + 1) or, when the
// level does not fit, by instant-ngp's spatial hash; the encoding is the trilinear blend of their features.
//
// Why a kernel: XLA's CPU scatter (the backward's adds) runs on one thread, and the TensorFlow ops gather
// the 8 corners of all levels interleaved, so no level's table stays in cache. Here:
//   * the forward runs over blocks of points, each block level by level, so one level's table rows stay in
//     cache while a thread works on it and each point's box coordinates are computed once;
//   * the table's gradient is split over levels: each level owns a disjoint range of table rows, so the
//     threads never write the same row and need no atomics; the adds are in point order, as a sequential
//     loop would do them;
//   * the points' gradient (needed only when something upstream trains, e.g. camera refinement) is split
//     over points, all levels summed per point. When nobody asks for it, its op is pruned from the graph.
//
// Ops (float32):
//   NerfHashGridEncode(points [N, 3], table [T, F]) -> encoded [N, L * F]
//   NerfHashGridTableGrad(points [N, 3], grad [N, L * F]) -> table_grad [T, F]   (T from attr table_rows)
//   NerfHashGridTableGradSquares(points, grad) -> table_grad [T, F], squares [T, F] (per row, the sum of its
//     samples' squared contributions: the second moment of model/optimizer.py's SampleWiseAdam)
//   NerfHashGridPointsGrad(points [N, 3], table [T, F], grad [N, L * F]) -> points_grad [N, 3]
// Attrs: resolutions, offsets, hashed (per level), log2_table_size, extent.
//
// What they check: the attrs describe levels whose rows lie in order, each in [offset_l, offset_l + size_l) with
// size_l = (R_l + 1)^3 dense or 2^log2_table_size hashed, and the table must hold the last level's rows; else an
// InvalidArgumentError (never a read or write past the table). A NaN coordinate is treated as the reference under
// XLA treats it (what training runs): XLA converts NaN to the integer 0, so the point's cell on that axis is 0, in
// the table, while its weights are NaN: its encoding is NaN on every level and the rows of its cells get a NaN table
// gradient; its points gradient is NaN (the loss is NaN then, and training stops as diverged). The levels' loops see
// only numbers in [0, 1] (LocatePoint): the NaN points are dealt with apart, at no cost when there are none.
// TensorFlow's eager gather instead refuses the index that its cast made of NaN on a dense level. Infinite and huge
// coordinates clip to the box's faces, as the reference's.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
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

constexpr uint32_t kPrime1 = 2654435761u;
constexpr uint32_t kPrime2 = 805459861u;
// Points per block of work (all levels): their box coordinates stay in L1, the work amortises scheduling.
constexpr int64_t kBlock = 512;

struct Levels {
  std::vector<int> resolution;
  std::vector<int> offset;
  std::vector<bool> hashed;
  uint32_t hash_mask = 0;
  float extent = 1.0f;
  int64_t rows_needed = 0;  // the table rows the levels index: the last level's offset plus its size

  int count() const { return static_cast<int>(resolution.size()); }

  Status Read(OpKernelConstruction* c) {
    std::vector<int> hashed_int;
    int log2_table_size = 0;
    TF_RETURN_IF_ERROR(c->GetAttr("resolutions", &resolution));
    TF_RETURN_IF_ERROR(c->GetAttr("offsets", &offset));
    TF_RETURN_IF_ERROR(c->GetAttr("hashed", &hashed_int));
    TF_RETURN_IF_ERROR(c->GetAttr("log2_table_size", &log2_table_size));
    TF_RETURN_IF_ERROR(c->GetAttr("extent", &extent));
    if (resolution.size() != offset.size() || resolution.size() != hashed_int.size() || resolution.empty()) {
      return InvalidArgument("resolutions, offsets and hashed must have one entry per level");
    }
    if (log2_table_size < 1 || log2_table_size > 30) return InvalidArgument("log2_table_size must be in [1, 30]");
    if (!(extent > 0.0f) || !std::isfinite(extent)) return InvalidArgument("extent must be positive and finite");
    hashed.assign(hashed_int.begin(), hashed_int.end());
    hash_mask = (1u << log2_table_size) - 1u;
    // Each level's rows [offset, offset + size) must follow the previous level's: the indexing below stays inside
    // them, and the table gradient's threads (one per level) then never write the same row.
    int64_t end = 0;
    for (int l = 0; l < count(); ++l) {
      const int64_t r = resolution[l];
      if (r < 1) return InvalidArgument("every resolution must be at least 1");
      // A dense index is computed in 32 bits, as the reference's: (R + 1)^3 must fit.
      if (!hashed[l] && static_cast<double>(r + 1) * (r + 1) * (r + 1) > INT32_MAX) {
        return InvalidArgument("dense level ", l, " of resolution ", r, " has more than 2^31 vertices");
      }
      const int64_t size = hashed[l] ? int64_t{1} << log2_table_size : (r + 1) * (r + 1) * (r + 1);
      if (offset[l] < end) {
        return InvalidArgument("level ", l, " starts at table row ", offset[l], ", inside the rows of the levels "
                               "before it (they end at row ", end, ")");
      }
      end = offset[l] + size;
    }
    rows_needed = end;
    return Status();
  }

  // The table (rows) holds every level's rows.
  Status CheckRows(int64_t rows) const {
    if (rows < rows_needed) {
      return InvalidArgument("the table has ", rows, " rows but the levels index rows up to ", rows_needed,
                             " (offsets, resolutions and log2_table_size do not match the table)");
    }
    return Status();
  }
};

// One point on one level: the 8 corner rows of the table and their trilinear weights, plus what the
// points' gradient needs (the fractions and whether the point lay inside the box on each axis).
struct Corners {
  int64_t row[8];
  float weight[8];
  float frac[3];
};

// The point in [0, 1]^3 and whether it lay inside the box on each axis. A NaN coordinate's x01 is 0 (std::max(0,
// NaN) is 0: 0 < NaN is false), the cell XLA's conversion of NaN to an integer gives the reference, so that the
// levels' loops compute cells from numbers in [0, 1] only (a cast of NaN is undefined in C++: INT32_MIN on x86, 2^31
// rows past the table), at no cost per level; the ops then make a NaN point's results NaN apart (AnyNan).
inline void LocatePoint(const float* p, float extent, float* x01, bool* inside) {
  const float two_extent = 2.0f * extent;
  for (int a = 0; a < 3; ++a) {
    const float x = (p[a] + extent) / two_extent;  // division, as the reference computes it
    inside[a] = x >= 0.0f && x <= 1.0f;             // clip passes its gradient on the closed interval
    x01[a] = std::min(std::max(0.0f, x), 1.0f);
  }
}

// Whether points [begin, end) hold a NaN coordinate: one vectorised pass (x != x only for NaN; an int accumulator,
// where a bool one keeps the loop scalar), so that their rare NaN points cost nothing when there are none.
inline bool AnyNan(const float* points, int64_t begin, int64_t end) {
  int nan = 0;
  for (int64_t i = 3 * begin; i < 3 * end; ++i) nan |= points[i] != points[i];
  return nan != 0;
}

inline void Corners8(const float* x01, const Levels& levels, int level, Corners* out) {
  const float res = static_cast<float>(levels.resolution[level]);
  uint32_t cell[3];
  for (int a = 0; a < 3; ++a) {
    const float scaled = x01[a] * res;  // x01 in [0, 1] (LocatePoint): c in [0, res - 1]
    const float c = std::min(std::floor(scaled), res - 1.0f);
    out->frac[a] = scaled - c;
    cell[a] = static_cast<uint32_t>(static_cast<int32_t>(c));
  }
  const int64_t base = levels.offset[level];
  const bool hashed = levels.hashed[level];
  const uint32_t side = static_cast<uint32_t>(levels.resolution[level] + 1);
  const float* f = out->frac;
  for (int corner = 0; corner < 8; ++corner) {
    // Corner bits (x, y, z) = (corner >> 2, corner >> 1, corner) & 1, as the reference orders them.
    const uint32_t bx = (corner >> 2) & 1, by = (corner >> 1) & 1, bz = corner & 1;
    const uint32_t vx = cell[0] + bx, vy = cell[1] + by, vz = cell[2] + bz;
    uint32_t index;
    if (hashed) {
      index = (vx ^ (vy * kPrime1) ^ (vz * kPrime2)) & levels.hash_mask;
    } else {
      index = vx + side * (vy + side * vz);
    }
    out->row[corner] = base + static_cast<int64_t>(index);
    const float wx = bx ? f[0] : 1.0f - f[0];
    const float wy = by ? f[1] : 1.0f - f[1];
    const float wz = bz ? f[2] : 1.0f - f[2];
    out->weight[corner] = (wx * wy) * wz;
  }
}

template <int F>
void EncodeBlock(const float* points, const float* table, float* encoded, const Levels& levels, int features,
                 int64_t begin, int64_t end) {
  const int nf = F > 0 ? F : features;
  const int L = levels.count();
  const int64_t row_width = static_cast<int64_t>(L) * nf;
  // The block's points in [0, 1]^3, computed once for all levels (3 divisions a point).
  float x01[3 * kBlock];
  bool inside[3];
  for (int64_t n = begin; n < end; ++n) LocatePoint(points + 3 * n, levels.extent, x01 + 3 * (n - begin), inside);
  Corners corners;
  for (int level = 0; level < L; ++level) {  // level by level, so that one level's table stays in cache
    for (int64_t n = begin; n < end; ++n) {
      Corners8(x01 + 3 * (n - begin), levels, level, &corners);
      float acc[F > 0 ? F : 16] = {};
      float* out = encoded + n * row_width + static_cast<int64_t>(level) * nf;
      for (int corner = 0; corner < 8; ++corner) {
        const float* row = table + corners.row[corner] * nf;
        const float w = corners.weight[corner];
        if (F > 0) {
          for (int k = 0; k < nf; ++k) acc[k] += w * row[k];
        } else {
          for (int k = 0; k < nf; ++k) out[k] = (corner ? out[k] : 0.0f) + w * row[k];
        }
      }
      if (F > 0) {
        for (int k = 0; k < nf; ++k) out[k] = acc[k];
      }
    }
  }
  if (AnyNan(points, begin, end)) {  // a NaN point encodes as NaN on every level (its weights are NaN in the reference)
    for (int64_t n = begin; n < end; ++n) {
      if (AnyNan(points, n, n + 1)) std::fill_n(encoded + n * row_width, row_width, std::nanf(""));
    }
  }
}

// kSquares is a template parameter, not a test of `squares` per corner: that test kept the loop from being
// inlined and unrolled, +24% instructions in callgrind for the gradient without squares.
template <int F, bool kSquares>
void TableGradLevel(const float* x01, const float* grad, float* table_grad, float* squares, const Levels& levels,
                    int features, int level, int64_t num_points) {
  const int nf = F > 0 ? F : features;
  const int64_t row_width = static_cast<int64_t>(levels.count()) * nf;
  Corners corners;
  for (int64_t n = 0; n < num_points; ++n) {
    const float* g = grad + n * row_width + static_cast<int64_t>(level) * nf;
    bool any = false;
    for (int k = 0; k < nf; ++k) any |= g[k] != 0.0f;
    if (!any) continue;  // rays whose samples do not matter (padding, masked) add nothing
    Corners8(x01 + 3 * n, levels, level, &corners);
    for (int corner = 0; corner < 8; ++corner) {
      float* row = table_grad + corners.row[corner] * nf;
      const float w = corners.weight[corner];
      for (int k = 0; k < nf; ++k) row[k] += w * g[k];
      if constexpr (kSquares) {  // each sample's contribution squared apart (SampleWiseAdam's second moment)
        float* square_row = squares + corners.row[corner] * nf;
        for (int k = 0; k < nf; ++k) {
          const float contribution = w * g[k];
          square_row[k] += contribution * contribution;
        }
      }
    }
  }
}

// The feature count as a compile-time constant where it is one of the usual ones.
template <bool kSquares>
void TableGradLevelFor(const float* x01, const float* grad, float* table_grad, float* squares, const Levels& levels,
                       int nf, int level, int64_t num_points) {
  switch (nf) {
    case 1: TableGradLevel<1, kSquares>(x01, grad, table_grad, squares, levels, nf, level, num_points); break;
    case 2: TableGradLevel<2, kSquares>(x01, grad, table_grad, squares, levels, nf, level, num_points); break;
    case 4: TableGradLevel<4, kSquares>(x01, grad, table_grad, squares, levels, nf, level, num_points); break;
    case 8: TableGradLevel<8, kSquares>(x01, grad, table_grad, squares, levels, nf, level, num_points); break;
    default: TableGradLevel<0, kSquares>(x01, grad, table_grad, squares, levels, nf, level, num_points);
  }
}

void PointsGradBlock(const float* points, const float* table, const float* grad, float* points_grad,
                     const Levels& levels, int nf, int64_t begin, int64_t end) {
  const int64_t row_width = static_cast<int64_t>(levels.count()) * nf;
  Corners corners;
  float x01[3];
  bool inside[3];
  for (int64_t n = begin; n < end; ++n) {
    if (AnyNan(points, n, n + 1)) {  // a NaN point: a NaN gradient
      std::fill_n(points_grad + 3 * n, 3, std::nanf(""));
      continue;
    }
    LocatePoint(points + 3 * n, levels.extent, x01, inside);
    float d_x01[3] = {0.0f, 0.0f, 0.0f};
    for (int level = 0; level < levels.count(); ++level) {
      Corners8(x01, levels, level, &corners);
      const float* g = grad + n * row_width + static_cast<int64_t>(level) * nf;
      const float* f = corners.frac;
      float d_frac[3] = {0.0f, 0.0f, 0.0f};
      for (int corner = 0; corner < 8; ++corner) {
        const float* row = table + corners.row[corner] * nf;
        float dot = 0.0f;  // d loss / d weight of this corner
        for (int k = 0; k < nf; ++k) dot += g[k] * row[k];
        const int bx = (corner >> 2) & 1, by = (corner >> 1) & 1, bz = corner & 1;
        const float wx = bx ? f[0] : 1.0f - f[0];
        const float wy = by ? f[1] : 1.0f - f[1];
        const float wz = bz ? f[2] : 1.0f - f[2];
        d_frac[0] += dot * (bx ? 1.0f : -1.0f) * wy * wz;
        d_frac[1] += dot * (by ? 1.0f : -1.0f) * wx * wz;
        d_frac[2] += dot * (bz ? 1.0f : -1.0f) * wx * wy;
      }
      const float res = static_cast<float>(levels.resolution[level]);
      for (int a = 0; a < 3; ++a) d_x01[a] += d_frac[a] * res;
    }
    const float two_extent = 2.0f * levels.extent;
    for (int a = 0; a < 3; ++a) points_grad[3 * n + a] = inside[a] ? d_x01[a] / two_extent : 0.0f;
  }
}

Status CheckPoints(const Tensor& points) {
  if (points.dims() != 2 || points.dim_size(1) != 3) {
    return InvalidArgument("points must be [N, 3], got ", points.shape().DebugString());
  }
  return Status();
}

// Runs work(begin, end) over blocks of points, on the CPU's intra-op threads.
template <typename Work>
void ForBlocks(OpKernelContext* context, int num_levels, int64_t num_points, Work work) {
  const int64_t blocks = (num_points + kBlock - 1) / kBlock;
  auto* workers = context->device()->tensorflow_cpu_worker_threads();
  ::tensorflow::Shard(workers->num_threads, workers->workers, blocks, kBlock * 100 * num_levels,
                      [&](int64_t first, int64_t last) {
                        for (int64_t block = first; block < last; ++block) {
                          work(block * kBlock, std::min((block + 1) * kBlock, num_points));
                        }
                      });
}

class EncodeOp : public OpKernel {
 public:
  explicit EncodeOp(OpKernelConstruction* c) : OpKernel(c) { OP_REQUIRES_OK(c, levels_.Read(c)); }

  void Compute(OpKernelContext* context) override {
    const Tensor& points = context->input(0);
    const Tensor& table = context->input(1);
    OP_REQUIRES_OK(context, CheckPoints(points));
    OP_REQUIRES(context, table.dims() == 2, InvalidArgument("table must be [T, F]"));
    OP_REQUIRES_OK(context, levels_.CheckRows(table.dim_size(0)));
    const int64_t n = points.dim_size(0);
    const int nf = static_cast<int>(table.dim_size(1));
    const int L = levels_.count();
    Tensor* encoded = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({n, static_cast<int64_t>(L) * nf}), &encoded));
    if (n == 0) return;
    const float* p = points.flat<float>().data();
    const float* t = table.flat<float>().data();
    float* out = encoded->flat<float>().data();
    ForBlocks(context, L, n, [&](int64_t begin, int64_t end) {
      switch (nf) {
        case 1: EncodeBlock<1>(p, t, out, levels_, nf, begin, end); break;
        case 2: EncodeBlock<2>(p, t, out, levels_, nf, begin, end); break;
        case 4: EncodeBlock<4>(p, t, out, levels_, nf, begin, end); break;
        case 8: EncodeBlock<8>(p, t, out, levels_, nf, begin, end); break;
        default: EncodeBlock<0>(p, t, out, levels_, nf, begin, end);
      }
    });
  }

 private:
  Levels levels_;
};

// With kSquares, a second output: per row, the sum of its samples' squared contributions.
template <bool kSquares>
class TableGradOp : public OpKernel {
 public:
  explicit TableGradOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, levels_.Read(c));
    OP_REQUIRES_OK(c, c->GetAttr("table_rows", &table_rows_));
    OP_REQUIRES_OK(c, levels_.CheckRows(table_rows_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& points = context->input(0);
    const Tensor& grad = context->input(1);
    OP_REQUIRES_OK(context, CheckPoints(points));
    const int L = levels_.count();
    OP_REQUIRES(context, grad.dims() == 2 && grad.dim_size(0) == points.dim_size(0) && grad.dim_size(1) % L == 0,
                InvalidArgument("grad must be [N, num_levels * F]"));
    const int64_t n = points.dim_size(0);
    const int nf = static_cast<int>(grad.dim_size(1) / L);
    Tensor* table_grad = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({table_rows_, nf}), &table_grad));
    const float* p = points.flat<float>().data();
    const float* g = grad.flat<float>().data();
    float* out = table_grad->flat<float>().data();
    float* squares = nullptr;
    if (kSquares) {
      Tensor* squares_tensor = nullptr;
      OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({table_rows_, nf}), &squares_tensor));
      squares = squares_tensor->flat<float>().data();
    }
    // Every point's box coordinates, once for all levels.
    Tensor x01_tensor;
    OP_REQUIRES_OK(context, context->allocate_temp(::tensorflow::DT_FLOAT, TensorShape({n, 3}), &x01_tensor));
    float* x01 = x01_tensor.flat<float>().data();
    auto* workers = context->device()->tensorflow_cpu_worker_threads();
    std::atomic<bool> any_nan{false};
    ::tensorflow::Shard(workers->num_threads, workers->workers, n, 50, [&](int64_t begin, int64_t end) {
      bool inside[3];
      for (int64_t i = begin; i < end; ++i) LocatePoint(p + 3 * i, levels_.extent, x01 + 3 * i, inside);
      if (AnyNan(p, begin, end)) any_nan = true;
    });
    std::vector<int64_t> nan_points;  // the points with a NaN coordinate (see the end)
    if (any_nan) {
      for (int64_t i = 0; i < n; ++i) {
        if (AnyNan(p, i, i + 1)) nan_points.push_back(i);
      }
    }
    // Level l owns rows [offset_l, offset_{l+1}): one task per level, so no two threads add to one row.
    std::vector<int64_t> level_end(L);
    for (int l = 0; l < L; ++l) level_end[l] = l + 1 < L ? levels_.offset[l + 1] : table_rows_;
    // Rows before the first level's (offsets[0] > 0) belong to no level: level 0 zeroes them too.
    ::tensorflow::Shard(workers->num_threads, workers->workers, L, std::max<int64_t>(n, 1) * 1000,
                        [&](int64_t first, int64_t last) {
                          for (int64_t level = first; level < last; ++level) {
                            const int64_t begin = level == 0 ? 0 : levels_.offset[level];
                            std::memset(out + begin * nf, 0, sizeof(float) * (level_end[level] - begin) * nf);
                            if (squares != nullptr) {
                              std::memset(squares + begin * nf, 0,
                                          sizeof(float) * (level_end[level] - begin) * nf);
                            }
                            if (squares != nullptr) {
                              TableGradLevelFor<true>(x01, g, out, squares, levels_, nf, level, n);
                            } else {
                              TableGradLevelFor<false>(x01, g, out, squares, levels_, nf, level, n);
                            }
                          }
                        });
    // The NaN points (none, but for a diverged input): the reference adds their NaN weights times the gradient to
    // the rows of their cells, so those rows are NaN. Apart from the levels' tasks, which stay as they were.
    Corners corners;
    for (int level = 0; level < L && !nan_points.empty(); ++level) {
      for (int64_t i : nan_points) {
        Corners8(x01 + 3 * i, levels_, level, &corners);
        for (int64_t row : corners.row) {
          std::fill_n(out + row * nf, nf, std::nanf(""));
          if (squares != nullptr) std::fill_n(squares + row * nf, nf, std::nanf(""));
        }
      }
    }
  }

 private:
  Levels levels_;
  int64_t table_rows_ = 0;
};

class PointsGradOp : public OpKernel {
 public:
  explicit PointsGradOp(OpKernelConstruction* c) : OpKernel(c) { OP_REQUIRES_OK(c, levels_.Read(c)); }

  void Compute(OpKernelContext* context) override {
    const Tensor& points = context->input(0);
    const Tensor& table = context->input(1);
    const Tensor& grad = context->input(2);
    OP_REQUIRES_OK(context, CheckPoints(points));
    OP_REQUIRES(context, table.dims() == 2, InvalidArgument("table must be [T, F]"));
    OP_REQUIRES_OK(context, levels_.CheckRows(table.dim_size(0)));
    const int L = levels_.count();
    const int nf = static_cast<int>(table.dim_size(1));
    OP_REQUIRES(context, grad.dims() == 2 && grad.dim_size(0) == points.dim_size(0) && grad.dim_size(1) == L * nf,
                InvalidArgument("grad must be [N, num_levels * F]"));
    const int64_t n = points.dim_size(0);
    Tensor* points_grad = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, points.shape(), &points_grad));
    const float* p = points.flat<float>().data();
    const float* t = table.flat<float>().data();
    const float* g = grad.flat<float>().data();
    float* out = points_grad->flat<float>().data();
    auto* workers = context->device()->tensorflow_cpu_worker_threads();
    ::tensorflow::Shard(workers->num_threads, workers->workers, n, 400 * L,
                        [&](int64_t begin, int64_t end) { PointsGradBlock(p, t, g, out, levels_, nf, begin, end); });
  }

 private:
  Levels levels_;
};

#define NERF_HASH_GRID_ATTRS                \
  Attr("resolutions: list(int) >= 1")       \
      .Attr("offsets: list(int) >= 1")      \
      .Attr("hashed: list(int) >= 1")       \
      .Attr("log2_table_size: int")         \
      .Attr("extent: float")

REGISTER_OP("NerfHashGridEncode")
    .Input("points: float")
    .Input("table: float")
    .Output("encoded: float")
    .NERF_HASH_GRID_ATTRS
    .SetShapeFn([](ShapeContext* c) {
      std::vector<int> resolutions;
      TF_RETURN_IF_ERROR(c->GetAttr("resolutions", &resolutions));
      auto width = c->Dim(c->input(1), 1);
      ::tensorflow::shape_inference::DimensionHandle out_width;
      TF_RETURN_IF_ERROR(c->Multiply(width, static_cast<int64_t>(resolutions.size()), &out_width));
      c->set_output(0, c->Matrix(c->Dim(c->input(0), 0), out_width));
      return Status();
    });

// The table gradient ops' shape: every output is [table_rows, F], F = grad's width over the levels.
Status TableShaped(ShapeContext* c) {
  std::vector<int> resolutions;
  int64_t rows = 0;
  TF_RETURN_IF_ERROR(c->GetAttr("resolutions", &resolutions));
  TF_RETURN_IF_ERROR(c->GetAttr("table_rows", &rows));
  ::tensorflow::shape_inference::DimensionHandle width;
  TF_RETURN_IF_ERROR(c->Divide(c->Dim(c->input(1), 1), static_cast<int64_t>(resolutions.size()), true, &width));
  for (int i = 0; i < c->num_outputs(); ++i) c->set_output(i, c->Matrix(rows, width));
  return Status();
}

REGISTER_OP("NerfHashGridTableGrad")
    .Input("points: float")
    .Input("grad: float")
    .Output("table_grad: float")
    .NERF_HASH_GRID_ATTRS
    .Attr("table_rows: int")
    .SetShapeFn(TableShaped);

REGISTER_OP("NerfHashGridTableGradSquares")
    .Input("points: float")
    .Input("grad: float")
    .Output("table_grad: float")
    .Output("squares: float")
    .NERF_HASH_GRID_ATTRS
    .Attr("table_rows: int")
    .SetShapeFn(TableShaped);

REGISTER_OP("NerfHashGridPointsGrad")
    .Input("points: float")
    .Input("table: float")
    .Input("grad: float")
    .Output("points_grad: float")
    .NERF_HASH_GRID_ATTRS
    .SetShapeFn([](ShapeContext* c) {
      c->set_output(0, c->input(0));
      return Status();
    });

REGISTER_KERNEL_BUILDER(Name("NerfHashGridEncode").Device(::tensorflow::DEVICE_CPU), EncodeOp);
REGISTER_KERNEL_BUILDER(Name("NerfHashGridTableGrad").Device(::tensorflow::DEVICE_CPU), TableGradOp<false>);
REGISTER_KERNEL_BUILDER(Name("NerfHashGridTableGradSquares").Device(::tensorflow::DEVICE_CPU), TableGradOp<true>);
REGISTER_KERNEL_BUILDER(Name("NerfHashGridPointsGrad").Device(::tensorflow::DEVICE_CPU), PointsGradOp);

}  // namespace
}  // namespace nerf_pipeline
