// What the splat rasterizer (splats.cc) takes to draw a frame, computed in one pass over the Gaussians: the
// projection (EWA splatting), the view-dependent colours (spherical harmonics), the opacities and the squares
// shrunk to each Gaussian's reach. For rendering trained Gaussians only: no gradient (training differentiates
// the TensorFlow ops of nerf_pipeline/splats/rasterizer.py).
//
// Same rules as rasterizer.py's frame_inputs (project, sh_colors, sigmoid, opacity_radii), in the same float32
// arithmetic up to the order of a few sums and the last ulp of exp, sqrt and rsqrt (tests/test_splat_rasterizer.py
// holds the two together, and the images they give): there, a Gaussian is culled (radius 0) when it is not
// finite, nearer than NEAR, degenerate (its 2D covariance's determinant not > 0), off-screen, or too faint to
// reach alpha 1/255 anywhere.
//
// Op:
//   NerfSplatFrameInputs(means [N, 3], log_scales [N, 3], quats [N, 4] (w, x, y, z), opacity_logits [N],
//                        sh_dc [N, 1, 3], sh_rest [N, R, 3], c2w [4, 4] (camera-to-world, OpenGL),
//                        intrinsics [4] (fx, fy, cx, cy)) -> means2d [N, 2], conics [N, 3], colors [N, 3],
//                        opacities [N], depths [N], radii [N] int32
// Attrs: width, height (pixels), degree (0-3: the SH degree of the colours; 1 + R >= (degree + 1)^2).

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "Eigen/Core"
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

// rasterizer.py's constants.
constexpr float kNear = 0.01f;
constexpr float kDilation = 0.3f;
constexpr float kFovMargin = 0.3f;
constexpr float kMinAlpha = 1.0f / 255.0f;

struct FrameCamera {
  float rotation[3][3];  // c2w[:3, :3]
  float centre[3];
  float fx, fy, cx, cy, width, height;
};

struct FrameInputs {
  const float *means, *log_scales, *quats, *opacity_logits, *sh_dc, *sh_rest;
  int64_t rest = 0;  // R
};

struct FrameOutputs {
  float *means2d, *conics, *colors, *opacities, *depths;
  int32_t* radii;
};

inline bool AllFinite(const float* values, int count) {
  for (int i = 0; i < count; ++i) {
    if (!std::isfinite(values[i])) return false;
  }
  return true;
}

// The Gaussians are taken kBlock at a time, each value of theirs an array of kBlock lanes (structure of arrays):
// Eigen evaluates every step below over the block with its packet math (exp, log, sqrt and divisions included),
// 3-4 times faster than one Gaussian at a time on AVX2. A block past the last Gaussian repeats it; those lanes
// are not written.
constexpr int kBlock = 64;
using Lanes = Eigen::Array<float, kBlock, 1>;
using Flags = Eigen::Array<bool, kBlock, 1>;

// std::min and std::max lane by lane, NaNs included: min(a, b) = b < a ? b : a, max(a, b) = a < b ? b : a.
template <typename A, typename B>
Lanes Min(const A& a, const B& b) {
  return (b < a).select(b, a);
}
template <typename A, typename B>
Lanes Max(const A& a, const B& b) {
  return (a < b).select(b, a);
}

// Gaussians [first, first + count) (count <= kBlock): their rasterizer inputs (rasterizer.py's project,
// sh_colors, sigmoid and opacity_radii, step by step).
void FrameBlock(const FrameInputs& in, const FrameCamera& cam, int degree, int64_t first, int count,
                const FrameOutputs& out) {
  Lanes mean[3], log_scale[3], quat[4], opacity_logit;
  Flags finite;
  for (int i = 0; i < kBlock; ++i) {
    const int64_t g = first + std::min(i, count - 1);
    const float* m = in.means + 3 * g;
    const float* s = in.log_scales + 3 * g;
    const float* q = in.quats + 4 * g;
    finite[i] = AllFinite(m, 3) && AllFinite(s, 3) && AllFinite(q, 4);
    for (int k = 0; k < 3; ++k) {
      mean[k][i] = m[k];
      log_scale[k][i] = finite[i] ? s[k] : 0.0f;
    }
    for (int k = 0; k < 4; ++k) quat[k][i] = finite[i] ? q[k] : 1.0f;
    opacity_logit[i] = in.opacity_logits[g];
  }

  // project: the mean in camera coordinates (rows: R^T (p - c)), where it lands, and the Jacobian there
  Lanes d[3];
  for (int i = 0; i < 3; ++i) d[i] = finite.select(mean[i], 0.0f) - cam.centre[i];
  Lanes point[3];
  for (int j = 0; j < 3; ++j) {
    point[j] = d[0] * cam.rotation[0][j] + d[1] * cam.rotation[1][j] + d[2] * cam.rotation[2][j];
  }
  const Lanes depth_of_mean = -point[2];
  const Flags in_front = finite && (depth_of_mean >= kNear);
  const Lanes depth = in_front.select(depth_of_mean, 1.0f);
  const Lanes x = in_front.select(point[0], 0.0f), y = in_front.select(point[1], 0.0f);
  const Lanes u = cam.fx * x / depth + cam.cx;
  const Lanes v = cam.cy - cam.fy * y / depth;
  const float tan_x = 0.5f * cam.width / cam.fx, tan_y = 0.5f * cam.height / cam.fy;
  const Lanes tx = Min(Max(x / depth, -(cam.cx / cam.fx + kFovMargin * tan_x)),
                       (cam.width - cam.cx) / cam.fx + kFovMargin * tan_x) * depth;
  const Lanes ty = Min(Max(y / depth, -((cam.height - cam.cy) / cam.fy + kFovMargin * tan_y)),
                       cam.cy / cam.fy + kFovMargin * tan_y) * depth;
  const Lanes depth_squared = depth * depth;
  const Lanes j00 = cam.fx / depth, j02 = cam.fx * tx / depth_squared;
  const Lanes j11 = -cam.fy / depth, j12 = -cam.fy * ty / depth_squared;

  // R S (the quaternion's rotation, its columns scaled), then W R S with W = rotation^T
  Lanes scale[3];
  for (int k = 0; k < 3; ++k) scale[k] = log_scale[k].exp();
  const Lanes norm = 1.0f / Max(quat[0] * quat[0] + quat[1] * quat[1] + quat[2] * quat[2] + quat[3] * quat[3],
                                1e-24f).sqrt();
  const Lanes w = quat[0] * norm, qx = quat[1] * norm, qy = quat[2] * norm, qz = quat[3] * norm;
  const Lanes r[3][3] = {{1.0f - 2.0f * (qy * qy + qz * qz), 2.0f * (qx * qy - w * qz), 2.0f * (qx * qz + w * qy)},
                         {2.0f * (qx * qy + w * qz), 1.0f - 2.0f * (qx * qx + qz * qz), 2.0f * (qy * qz - w * qx)},
                         {2.0f * (qx * qz - w * qy), 2.0f * (qy * qz + w * qx), 1.0f - 2.0f * (qx * qx + qy * qy)}};
  Lanes wm[3][3];
  for (int i = 0; i < 3; ++i) {
    for (int k = 0; k < 3; ++k) {
      wm[i][k] = cam.rotation[0][i] * (r[0][k] * scale[k]) + cam.rotation[1][i] * (r[1][k] * scale[k]) +
                 cam.rotation[2][i] * (r[2][k] * scale[k]);
    }
  }
  // (J W R S)'s rows; the 2D covariance is their Gram matrix, dilated
  Lanes row0[3], row1[3];
  for (int k = 0; k < 3; ++k) {
    row0[k] = j00 * wm[0][k] + j02 * wm[2][k];
    row1[k] = j11 * wm[1][k] + j12 * wm[2][k];
  }
  const Lanes a = row0[0] * row0[0] + row0[1] * row0[1] + row0[2] * row0[2] + kDilation;
  const Lanes b = row0[0] * row1[0] + row0[1] * row1[1] + row0[2] * row1[2];
  const Lanes c = row1[0] * row1[0] + row1[1] * row1[1] + row1[2] * row1[2] + kDilation;
  const Lanes det_of_covariance = a * c - b * b;
  const Flags valid = in_front && det_of_covariance.isFinite() && (det_of_covariance > 0.0f);
  const Lanes det = valid.select(det_of_covariance, 1.0f);
  const Lanes mid = 0.5f * (a + c);
  const Lanes largest = mid + Max(mid * mid - det, 0.0f).sqrt();
  const Lanes radius = (3.0f * largest.sqrt()).ceil();
  const Flags on_screen = (u + radius > 0.0f) && (u - radius < cam.width) && (v + radius > 0.0f) &&
                          (v - radius < cam.height);
  const Flags visible = valid && on_screen && radius.isFinite();
  const Lanes radius_drawn = visible.select(Min(radius, 1073741824.0f), 0.0f);  // (2^30 at most)
  const Lanes conic_a = valid.select(c / det, 0.0f), conic_b = valid.select(-b / det, 0.0f),
              conic_c = valid.select(a / det, 0.0f);

  // sh_colors: from the camera to the mean (as given), max(0, sum_k Y_k sh_k + 0.5)
  Lanes direction[3];
  for (int i = 0; i < 3; ++i) direction[i] = mean[i] - cam.centre[i];
  const Lanes inverse_length = 1.0f / Max(direction[0] * direction[0] + direction[1] * direction[1] +
                                          direction[2] * direction[2], 1e-24f).sqrt();
  const Lanes dx = direction[0] * inverse_length, dy = direction[1] * inverse_length,
              dz = direction[2] * inverse_length;
  Lanes basis[16];
  const int terms = (degree + 1) * (degree + 1);
  basis[0].setConstant(0.28209479177387814f);
  if (degree >= 1) {
    basis[1] = -0.48860251190291987f * dy;
    basis[2] = 0.48860251190291987f * dz;
    basis[3] = -0.48860251190291987f * dx;
  }
  if (degree >= 2) {
    const Lanes xx = dx * dx, yy = dy * dy, zz = dz * dz;
    basis[4] = 1.0925484305920792f * dx * dy;
    basis[5] = -1.0925484305920792f * dy * dz;
    basis[6] = 0.31539156525251999f * (2.0f * zz - xx - yy);
    basis[7] = -1.0925484305920792f * dx * dz;
    basis[8] = 0.54627421529603959f * (xx - yy);
    if (degree >= 3) {
      basis[9] = -0.59004358992664352f * dy * (3.0f * xx - yy);
      basis[10] = 2.8906114426405538f * dx * dy * dz;
      basis[11] = -0.45704579946446572f * dy * (4.0f * zz - xx - yy);
      basis[12] = 0.3731763325901154f * dz * (2.0f * zz - 3.0f * xx - 3.0f * yy);
      basis[13] = -0.45704579946446572f * dx * (4.0f * zz - xx - yy);
      basis[14] = 1.4453057213202769f * dz * (xx - yy);
      basis[15] = -0.59004358992664352f * dx * (xx - 3.0f * yy);
    }
  }
  // the coefficients, block by block as the rest (read in memory order: each Gaussian's are contiguous)
  Lanes coefficients[16][3];
  for (int i = 0; i < kBlock; ++i) {
    const int64_t g = first + std::min(i, count - 1);
    const float* dc = in.sh_dc + 3 * g;
    const float* rest = in.sh_rest + g * in.rest * 3;
    for (int channel = 0; channel < 3; ++channel) coefficients[0][channel][i] = dc[channel];
    for (int k = 1; k < terms; ++k) {
      for (int channel = 0; channel < 3; ++channel) coefficients[k][channel][i] = rest[(k - 1) * 3 + channel];
    }
  }
  Lanes colour[3];
  for (int channel = 0; channel < 3; ++channel) {
    Lanes sum = basis[0] * coefficients[0][channel];
    for (int k = 1; k < terms; ++k) sum += basis[k] * coefficients[k][channel];
    colour[channel] = Max(sum + 0.5f, 0.0f);
  }

  // the opacity, and the square shrunk to where it can reach alpha 1/255 (opacity_radii)
  const Lanes opacity = 1.0f / (1.0f + (-opacity_logit).exp());
  const Lanes reach = 2.0f * (Max(opacity, 1e-30f) / kMinAlpha).log() + 1e-3f;
  const Lanes tight = (1.01f * (radius_drawn / 3.0f) * Max(reach, 0.0f).sqrt() + 1.0f).ceil();
  const Lanes radius_out = (reach > 0.0f).select(Min(radius_drawn, tight), 0.0f);

  for (int i = 0; i < count; ++i) {
    const int64_t g = first + i;
    out.means2d[2 * g] = u[i];
    out.means2d[2 * g + 1] = v[i];
    out.conics[3 * g] = conic_a[i];
    out.conics[3 * g + 1] = conic_b[i];
    out.conics[3 * g + 2] = conic_c[i];
    out.depths[g] = depth_of_mean[i];
    for (int channel = 0; channel < 3; ++channel) out.colors[3 * g + channel] = colour[channel][i];
    out.opacities[g] = opacity[i];
    out.radii[g] = static_cast<int32_t>(radius_out[i]);
  }
}

class FrameInputsOp : public OpKernel {
 public:
  explicit FrameInputsOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("width", &width_));
    OP_REQUIRES_OK(c, c->GetAttr("height", &height_));
    OP_REQUIRES_OK(c, c->GetAttr("degree", &degree_));
    OP_REQUIRES(c, width_ >= 1 && height_ >= 1, InvalidArgument("width and height must be at least 1"));
    OP_REQUIRES(c, degree_ >= 0 && degree_ <= 3, InvalidArgument("the SH degree must be 0 to 3, got ", degree_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& means = context->input(0);
    OP_REQUIRES(context, means.dims() == 2 && means.dim_size(1) == 3,
                InvalidArgument("means must be [N, 3], got ", means.shape().DebugString()));
    const int64_t n = means.dim_size(0);
    const Tensor& sh_rest = context->input(5);
    const TensorShape expected[] = {TensorShape({n, 3}), TensorShape({n, 3}), TensorShape({n, 4}), TensorShape({n}),
                                    TensorShape({n, 1, 3})};
    const char* names[] = {"means", "log_scales", "quats", "opacity_logits", "sh_dc"};
    for (int i = 0; i < 5; ++i) {
      OP_REQUIRES(context, context->input(i).shape() == expected[i],
                  InvalidArgument(names[i], " must be ", expected[i].DebugString(), " with N = ", n, ", got ",
                                  context->input(i).shape().DebugString()));
    }
    OP_REQUIRES(context, sh_rest.dims() == 3 && sh_rest.dim_size(0) == n && sh_rest.dim_size(2) == 3,
                InvalidArgument("sh_rest must be [N, R, 3] with N = ", n, ", got ", sh_rest.shape().DebugString()));
    OP_REQUIRES(context, 1 + sh_rest.dim_size(1) >= (degree_ + 1) * (degree_ + 1),
                InvalidArgument("degree ", degree_, " needs ", (degree_ + 1) * (degree_ + 1),
                                " SH coefficients, sh_dc and sh_rest hold ", 1 + sh_rest.dim_size(1)));
    const Tensor& c2w = context->input(6);
    const Tensor& intrinsics = context->input(7);
    OP_REQUIRES(context, c2w.shape() == TensorShape({4, 4}) && intrinsics.shape() == TensorShape({4}),
                InvalidArgument("c2w must be [4, 4] and intrinsics [4]"));
    FrameCamera cam;
    const float* pose = c2w.flat<float>().data();
    for (int i = 0; i < 3; ++i) {
      for (int j = 0; j < 3; ++j) cam.rotation[i][j] = pose[4 * i + j];
      cam.centre[i] = pose[4 * i + 3];
    }
    const float* k = intrinsics.flat<float>().data();
    cam.fx = k[0];
    cam.fy = k[1];
    cam.cx = k[2];
    cam.cy = k[3];
    cam.width = static_cast<float>(width_);
    cam.height = static_cast<float>(height_);
    OP_REQUIRES(context, AllFinite(pose, 16) && AllFinite(k, 4) && cam.fx > 0.0f && cam.fy > 0.0f,
                InvalidArgument("the camera must be finite, with positive focal lengths"));

    const FrameInputs in{means.flat<float>().data(), context->input(1).flat<float>().data(),
                         context->input(2).flat<float>().data(), context->input(3).flat<float>().data(),
                         context->input(4).flat<float>().data(), sh_rest.flat<float>().data(), sh_rest.dim_size(1)};
    Tensor* outputs[6];
    const TensorShape shapes[] = {TensorShape({n, 2}), TensorShape({n, 3}), TensorShape({n, 3}), TensorShape({n}),
                                  TensorShape({n}), TensorShape({n})};
    for (int i = 0; i < 6; ++i) OP_REQUIRES_OK(context, context->allocate_output(i, shapes[i], &outputs[i]));
    const FrameOutputs out{outputs[0]->flat<float>().data(), outputs[1]->flat<float>().data(),
                           outputs[2]->flat<float>().data(), outputs[3]->flat<float>().data(),
                           outputs[4]->flat<float>().data(), outputs[5]->flat<int32_t>().data()};
    auto* workers = context->device()->tensorflow_cpu_worker_threads();
    const int64_t num_blocks = (n + kBlock - 1) / kBlock;
    ::tensorflow::Shard(workers->num_threads, workers->workers, num_blocks, 200 * kBlock,
                        [&](int64_t begin, int64_t end) {
                          for (int64_t block = begin; block < end; ++block) {
                            const int64_t first = block * kBlock;
                            FrameBlock(in, cam, degree_, first, static_cast<int>(std::min<int64_t>(kBlock, n - first)),
                                       out);
                          }
                        });
  }

 private:
  int width_ = 0, height_ = 0, degree_ = 0;
};

}  // namespace

REGISTER_OP("NerfSplatFrameInputs")
    .Input("means: float")
    .Input("log_scales: float")
    .Input("quats: float")
    .Input("opacity_logits: float")
    .Input("sh_dc: float")
    .Input("sh_rest: float")
    .Input("c2w: float")
    .Input("intrinsics: float")
    .Output("means2d: float")
    .Output("conics: float")
    .Output("colors: float")
    .Output("opacities: float")
    .Output("depths: float")
    .Output("radii: int32")
    .Attr("width: int")
    .Attr("height: int")
    .Attr("degree: int")
    .SetShapeFn([](ShapeContext* c) {
      const auto n = c->Dim(c->input(0), 0);
      c->set_output(0, c->Matrix(n, 2));
      c->set_output(1, c->Matrix(n, 3));
      c->set_output(2, c->Matrix(n, 3));
      for (int i = 3; i < 6; ++i) c->set_output(i, c->Vector(n));
      return Status();
    });

REGISTER_KERNEL_BUILDER(Name("NerfSplatFrameInputs").Device(::tensorflow::DEVICE_CPU), FrameInputsOp);

}  // namespace nerf_pipeline
