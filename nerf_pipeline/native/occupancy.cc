// The occupancy grid read along rays (the sampler's march), as TensorFlow CPU kernels.
//
// Same arithmetic as nerf_pipeline/model/sampling.py's OccupancySampler.march and OccupancyGrid.lookup: each
// bin [e_m, e_m+1] of a ray takes the occupancy of the grid cell at its midpoint's field coordinates (the
// world point itself in a box; bound * contract(x / bound) in a contracted space), 0 where the bin is empty
// (e_m+1 <= e_m: the ray misses the space). Why a kernel: the march reads M (256) cells per ray, millions per
// step and per image, which XLA does as a gather over an [R, M, 3] tensor of points; here each ray is a loop
// whose cells stay in cache, and the hit test stops at the first occupied bin.
//
// Ops (float32):
//   NerfOccupancyHits(origins [R, 3], directions [R, 3], edges [R, M + 1], occupied [G, G, G]) -> hits [R] bool
//   NerfOccupancySample(origins, directions, edges, occupied, offsets [R, S]) -> t_vals [R, S], deltas [R, S]:
//     the march and OccupancySampler._sample_bins in one pass per ray: the occupied bins laid end to end,
//     sample s at (s + offset_s) / S of their length, standing for the occupied length of its stratum.
// Attrs: extent (the grid covers [-extent, extent]^3), contract_bound (0: a box; else the contracted space's bound).
//
// Out-of-range input, as the reference compiled by XLA (what training runs) treats it: a point outside the grid
// reads its nearest cell (XLA's float-to-integer conversion saturates, then the reference clips), a NaN point cell 0
// (XLA converts NaN to 0), a NaN sample position rank 0 with a NaN depth. An empty grid (G = 0) is refused.

#include <algorithm>
#include <cmath>
#include <cstdint>
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

struct Grid {
  const float* occupied;
  int64_t resolution;
  float extent;
  float contract_bound;

  // The occupancy of the cell holding world point p, as OccupancyGrid.lookup(space.warp(p)) computes it.
  inline float At(float px, float py, float pz) const {
    if (contract_bound > 0.0f) {
      // mip-NeRF 360's contraction of p / bound, scaled back by bound (space.contract).
      const float b = contract_bound;
      const float x = px / b, y = py / b, z = pz / b;
      const float norm = std::sqrt(x * x + y * y + z * z);
      if (norm <= 1.0f) {
        px = b * x, py = b * y, pz = b * z;
      } else {
        const float scale = 2.0f - 1.0f / norm;
        px = b * (scale * x / norm), py = b * (scale * y / norm), pz = b * (scale * z / norm);
      }
    }
    const float g = static_cast<float>(resolution);
    const float two_extent = 2.0f * extent;
    int64_t cell[3];
    const float p[3] = {px, py, pz};
    for (int a = 0; a < 3; ++a) {
      // Clamped as a float: casting NaN or a float beyond int32 is undefined in C++. NaN fails c >= 0: cell 0.
      const float c = std::floor((p[a] + extent) / two_extent * g);
      cell[a] = c >= 0.0f ? (c < g - 1.0f ? static_cast<int64_t>(c) : resolution - 1) : 0;
    }
    return occupied[(cell[0] * resolution + cell[1]) * resolution + cell[2]];
  }

  // The occupancy of bin m of a ray (origin o, direction d, bin edges e): the cell at its midpoint, 0 for an
  // empty bin (the ray misses the space), as OccupancySampler.march gives it.
  inline float Bin(const float* o, const float* d, const float* e, int64_t m) const {
    if (!(e[m + 1] > e[m])) return 0.0f;
    const float middle = 0.5f * (e[m + 1] + e[m]);
    return At(o[0] + d[0] * middle, o[1] + d[1] * middle, o[2] + d[2] * middle);
  }
};

Status CheckInputs(OpKernelContext* context) {
  const Tensor& origins = context->input(0);
  const Tensor& directions = context->input(1);
  const Tensor& edges = context->input(2);
  const Tensor& occupied = context->input(3);
  if (origins.dims() != 2 || origins.dim_size(1) != 3 || directions.shape() != origins.shape()) {
    return InvalidArgument("origins and directions must be [R, 3]");
  }
  if (edges.dims() != 2 || edges.dim_size(0) != origins.dim_size(0) || edges.dim_size(1) < 2) {
    return InvalidArgument("edges must be [R, M + 1]");
  }
  if (occupied.dims() != 3 || occupied.dim_size(0) != occupied.dim_size(1) ||
      occupied.dim_size(0) != occupied.dim_size(2) || occupied.dim_size(0) < 1) {
    return InvalidArgument("occupied must be [G, G, G] with G >= 1, got ", occupied.shape().DebugString());
  }
  return Status();
}

// Runs body(ray, origin, direction, edges of the ray) over every ray, on the CPU's intra-op threads.
template <typename Body>
void ForRays(OpKernelContext* context, int64_t cost_per_ray, Body body) {
  const float* origins = context->input(0).flat<float>().data();
  const float* directions = context->input(1).flat<float>().data();
  const float* edges = context->input(2).flat<float>().data();
  const int64_t num_rays = context->input(0).dim_size(0), num_edges = context->input(2).dim_size(1);
  auto* workers = context->device()->tensorflow_cpu_worker_threads();
  ::tensorflow::Shard(workers->num_threads, workers->workers, num_rays, cost_per_ray, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) body(r, origins + 3 * r, directions + 3 * r, edges + r * num_edges);
  });
}

class MarchBase : public OpKernel {
 public:
  explicit MarchBase(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("extent", &extent_));
    OP_REQUIRES_OK(c, c->GetAttr("contract_bound", &contract_bound_));
  }

 protected:
  Grid MakeGrid(OpKernelContext* context) const {
    const Tensor& occupied = context->input(3);
    return Grid{occupied.flat<float>().data(), occupied.dim_size(0), extent_, contract_bound_};
  }

 private:
  float extent_ = 1.0f;
  float contract_bound_ = 0.0f;
};

class HitsOp : public MarchBase {
 public:
  using MarchBase::MarchBase;

  void Compute(OpKernelContext* context) override {
    OP_REQUIRES_OK(context, CheckInputs(context));
    const int64_t num_rays = context->input(0).dim_size(0), num_bins = context->input(2).dim_size(1) - 1;
    Tensor* hits = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({num_rays}), &hits));
    bool* out = hits->flat<bool>().data();
    const Grid grid = MakeGrid(context);
    ForRays(context, 15 * num_bins, [&](int64_t r, const float* o, const float* d, const float* e) {
      bool hit = false;
      for (int64_t m = 0; m < num_bins && !hit; ++m) hit = grid.Bin(o, d, e, m) > 0.0f;
      out[r] = hit;
    });
  }
};

class SampleOp : public MarchBase {
 public:
  using MarchBase::MarchBase;

  void Compute(OpKernelContext* context) override {
    OP_REQUIRES_OK(context, CheckInputs(context));
    const Tensor& offsets = context->input(4);
    const int64_t num_rays = context->input(0).dim_size(0), num_bins = context->input(2).dim_size(1) - 1;
    OP_REQUIRES(context, offsets.dims() == 2 && offsets.dim_size(0) == num_rays,
                InvalidArgument("offsets must be [R, S]"));
    const int64_t num_samples = offsets.dim_size(1);
    Tensor *t_vals = nullptr, *deltas = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({num_rays, num_samples}), &t_vals));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({num_rays, num_samples}), &deltas));
    const float* u = offsets.flat<float>().data();
    float* t_out = t_vals->flat<float>().data();
    float* delta_out = deltas->flat<float>().data();
    const Grid grid = MakeGrid(context);
    ForRays(context, 30 * num_bins + 20 * num_samples, [&](int64_t r, const float* o, const float* d, const float* e) {
      // The occupied bins in order, their lengths and the occupied length before each (as the reference's
      // ranked bins, ranked_lengths and exclusive cumsum).
      // Reused by each thread from ray to ray: no allocation per ray.
      thread_local std::vector<int32_t> ranked;
      thread_local std::vector<float> ranked_length, length_before;
      ranked.clear(), ranked_length.clear(), length_before.clear();
      float before = 0.0f;
      for (int64_t m = 0; m < num_bins; ++m) {
        if (grid.Bin(o, d, e, m) > 0.0f) {
          const float length = e[m + 1] - e[m];
          ranked.push_back(static_cast<int32_t>(m));
          ranked_length.push_back(length);
          length_before.push_back(before);
          before += length;
        }
      }
      const float count = static_cast<float>(ranked.size());
      const float last = std::max(count - 1.0f, 0.0f);
      const float per_sample = count / static_cast<float>(num_samples);
      // Rank-space position in [0, n] -> (rank, fraction of that bin); the reference's locate.
      auto locate = [&](float position, int32_t* rank, float* fraction) {
        const float r = std::min(std::max(std::floor(position), 0.0f), last);
        *fraction = std::min(std::max(position - r, 0.0f), 1.0f);
        *rank = r >= 0.0f ? static_cast<int32_t>(r) : 0;  // NaN (a NaN offset): rank 0, as XLA converts it
      };
      auto covered = [&](float position) {
        if (ranked.empty()) return 0.0f;
        int32_t rank;
        float fraction;
        locate(position, &rank, &fraction);
        return length_before[rank] + fraction * ranked_length[rank];
      };
      for (int64_t s = 0; s < num_samples; ++s) {
        const float stratum = static_cast<float>(s);
        int32_t rank;
        float fraction;
        locate((stratum + u[r * num_samples + s]) * per_sample, &rank, &fraction);
        const int32_t bin = ranked.empty() ? 0 : ranked[rank];
        t_out[r * num_samples + s] = e[bin] + fraction * (e[bin + 1] - e[bin]);
        delta_out[r * num_samples + s] = covered((stratum + 1.0f) * per_sample) - covered(stratum * per_sample);
      }
    });
  }
};

REGISTER_OP("NerfOccupancySample")
    .Input("origins: float")
    .Input("directions: float")
    .Input("edges: float")
    .Input("occupied: float")
    .Input("offsets: float")
    .Output("t_vals: float")
    .Output("deltas: float")
    .Attr("extent: float")
    .Attr("contract_bound: float")
    .SetShapeFn([](ShapeContext* c) {
      c->set_output(0, c->input(4));
      c->set_output(1, c->input(4));
      return Status();
    });

REGISTER_OP("NerfOccupancyHits")
    .Input("origins: float")
    .Input("directions: float")
    .Input("edges: float")
    .Input("occupied: float")
    .Output("hits: bool")
    .Attr("extent: float")
    .Attr("contract_bound: float")
    .SetShapeFn([](ShapeContext* c) {
      c->set_output(0, c->Vector(c->Dim(c->input(0), 0)));
      return Status();
    });

REGISTER_KERNEL_BUILDER(Name("NerfOccupancyHits").Device(::tensorflow::DEVICE_CPU), HitsOp);
REGISTER_KERNEL_BUILDER(Name("NerfOccupancySample").Device(::tensorflow::DEVICE_CPU), SampleOp);

}  // namespace
}  // namespace nerf_pipeline
