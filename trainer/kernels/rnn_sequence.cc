// Whole-sequence recurrences for training on CPU: one op runs all T steps of one GRU or LSTM layer.
//
// Only the sequential part lives here: h_{t-1} U + b and the gate maths, forward and backward. The input
// projection x W + b of every step and the weight gradients are single large matmuls that TensorFlow
// runs around the op (trainer/native.py), so each op call does T small matmuls and no per-step graph ops.
// Batch rows are independent through time, so the batch is split across the intra-op threads and each
// thread runs its rows through the whole sequence without synchronising.
//
// Maths and weight layout are Keras's: GRUCell(reset_after=True), gates z, r, h; LSTMCell, gates i, f, c, o.
// Training only: exported SavedModels never contain these ops (trainer/generate.py uses standard ops).
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace deep_rnn {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixMap = Eigen::Map<Matrix>;
using ConstMatrixMap = Eigen::Map<const Matrix>;
using RowVectorMap = Eigen::Map<const Eigen::Matrix<float, 1, Eigen::Dynamic>>;

// σ(x) = (1 + tanh(x / 2)) / 2: Eigen's vectorised tanh is several times faster than its logistic here.
template <typename Expr>
auto Sigmoid(const Expr& x) {
  return (0.5f * x).tanh() * 0.5f + 0.5f;
}

// Runs fn(first_row, end_row) over the batch on the op's intra-op threads (each range runs all T steps).
template <typename Fn>
void ForEachRowRange(OpKernelContext* ctx, int64_t batch, int64_t cost_per_row, Fn fn) {
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  tensorflow::Shard(workers->num_threads, workers->workers, batch, cost_per_row, fn);
}

absl::Status CheckRank(InferenceContext* c, int input, int rank) {
  ShapeHandle unused;
  return c->WithRank(c->input(input), rank, &unused);
}

// ---------------------------------------------------------------- GRU

REGISTER_OP("DeepRnnGruSequence")
    .Input("xp: float")                // [T, B, 3H]: x_t W + input bias, gates z, r, h
    .Input("h0: float")                // [B, H]
    .Input("recurrent_kernel: float")  // [H, 3H]
    .Input("recurrent_bias: float")    // [3H]
    .Output("h: float")                // [T, B, H]
    .Output("gates: float")            // [T, B, 4H]: z, r, candidate, h_{t-1} U_h + b_h (kept for the gradient)
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(CheckRank(c, 0, 3));
      TF_RETURN_IF_ERROR(CheckRank(c, 1, 2));
      ShapeHandle xp = c->input(0);
      DimensionHandle units = c->Dim(c->input(1), 1), four;
      TF_RETURN_IF_ERROR(c->Multiply(units, 4, &four));
      c->set_output(0, c->MakeShape({c->Dim(xp, 0), c->Dim(xp, 1), units}));
      c->set_output(1, c->MakeShape({c->Dim(xp, 0), c->Dim(xp, 1), four}));
      return absl::OkStatus();
    });

REGISTER_OP("DeepRnnGruSequenceGrad")
    .Input("h0: float")                // [B, H]
    .Input("recurrent_kernel: float")  // [H, 3H]
    .Input("h: float")                 // [T, B, H]
    .Input("gates: float")             // [T, B, 4H]
    .Input("dh: float")                // [T, B, H]: loss gradient w.r.t. each step's output
    .Output("dxp: float")              // [T, B, 3H]
    .Output("dhp: float")              // [T, B, 3H]: w.r.t. h_{t-1} U + b (for U's and b's gradients)
    .Output("dh0: float")              // [B, H]
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle h = c->input(2);
      DimensionHandle three;
      TF_RETURN_IF_ERROR(c->Multiply(c->Dim(h, 2), 3, &three));
      c->set_output(0, c->MakeShape({c->Dim(h, 0), c->Dim(h, 1), three}));
      c->set_output(1, c->output(0));
      c->set_output(2, c->input(0));
      return absl::OkStatus();
    });

// Shape checks shared by both GRU and LSTM forward ops: xp [T, B, G·H], h0 [B, H], U [H, G·H].
void CheckForwardShapes(OpKernelContext* ctx, int gates, const Tensor& xp, const Tensor& h0, const Tensor& u) {
  OP_REQUIRES(ctx, xp.dims() == 3 && h0.dims() == 2 && u.dims() == 2,
              absl::InvalidArgumentError("expected xp [T, B, G*H], h0 [B, H], recurrent_kernel [H, G*H]"));
  const int64_t units = h0.dim_size(1);
  OP_REQUIRES(ctx, xp.dim_size(1) == h0.dim_size(0) && xp.dim_size(2) == gates * units &&
                       u.dim_size(0) == units && u.dim_size(1) == gates * units,
              absl::InvalidArgumentError(absl::StrCat("inconsistent shapes: xp ", xp.shape().DebugString(), ", h0 ",
                                                      h0.shape().DebugString(), ", recurrent_kernel ",
                                                      u.shape().DebugString())));
}

class GruSequenceOp : public OpKernel {
 public:
  explicit GruSequenceOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor &xp = ctx->input(0), &h0 = ctx->input(1), &u = ctx->input(2), &bias = ctx->input(3);
    CheckForwardShapes(ctx, 3, xp, h0, u);
    if (!ctx->status().ok()) return;
    const int64_t steps = xp.dim_size(0), batch = xp.dim_size(1), units = h0.dim_size(1);
    OP_REQUIRES(ctx, bias.NumElements() == 3 * units, absl::InvalidArgumentError("recurrent_bias must be [3H]"));
    Tensor *h = nullptr, *gates = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({steps, batch, units}), &h));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({steps, batch, 4 * units}), &gates));
    const float *xp_data = xp.flat<float>().data(), *h0_data = h0.flat<float>().data();
    float *h_data = h->flat<float>().data(), *gates_data = gates->flat<float>().data();
    ConstMatrixMap kernel(u.flat<float>().data(), units, 3 * units);
    RowVectorMap b(bias.flat<float>().data(), 3 * units);
    const int64_t H = units;

    ForEachRowRange(ctx, batch, steps * units * units * 12, [&](int64_t first, int64_t end) {
      const int64_t rows = end - first;
      Matrix hp(rows, 3 * H);  // h_{t-1} U + b for this thread's rows
      for (int64_t t = 0; t < steps; ++t) {
        const float* prev_data = t == 0 ? h0_data + first * H : h_data + ((t - 1) * batch + first) * H;
        ConstMatrixMap prev(prev_data, rows, H);
        ConstMatrixMap x(xp_data + (t * batch + first) * 3 * H, rows, 3 * H);
        MatrixMap out(h_data + (t * batch + first) * H, rows, H);
        MatrixMap g(gates_data + (t * batch + first) * 4 * H, rows, 4 * H);
        hp.noalias() = prev * kernel;
        hp.rowwise() += b;
        auto z = g.leftCols(H), r = g.middleCols(H, H), cand = g.middleCols(2 * H, H), hp_h = g.rightCols(H);
        z = Sigmoid((x.leftCols(H) + hp.leftCols(H)).array()).matrix();
        r = Sigmoid((x.middleCols(H, H) + hp.middleCols(H, H)).array()).matrix();
        hp_h = hp.rightCols(H);
        cand = (x.rightCols(H).array() + r.array() * hp_h.array()).tanh().matrix();
        out = (cand.array() + z.array() * (prev.array() - cand.array())).matrix();  // z h + (1 - z) h̃
      }
    });
  }
};

class GruSequenceGradOp : public OpKernel {
 public:
  explicit GruSequenceGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor &h0 = ctx->input(0), &u = ctx->input(1), &h = ctx->input(2), &gates = ctx->input(3),
                 &dh = ctx->input(4);
    const int64_t steps = h.dim_size(0), batch = h.dim_size(1), H = h.dim_size(2);
    OP_REQUIRES(ctx, dh.shape() == h.shape() && gates.dim_size(2) == 4 * H && u.dim_size(1) == 3 * H,
                absl::InvalidArgumentError("inconsistent shapes in DeepRnnGruSequenceGrad"));
    Tensor *dxp = nullptr, *dhp = nullptr, *dh0 = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({steps, batch, 3 * H}), &dxp));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({steps, batch, 3 * H}), &dhp));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, h0.shape(), &dh0));
    const float *h0_data = h0.flat<float>().data(), *h_data = h.flat<float>().data();
    const float *gates_data = gates.flat<float>().data(), *dh_data = dh.flat<float>().data();
    float *dxp_data = dxp->flat<float>().data(), *dhp_data = dhp->flat<float>().data();
    float* dh0_data = dh0->flat<float>().data();
    ConstMatrixMap kernel(u.flat<float>().data(), H, 3 * H);

    ForEachRowRange(ctx, batch, steps * H * H * 12, [&](int64_t first, int64_t end) {
      const int64_t rows = end - first;
      Matrix carry = Matrix::Zero(rows, H);  // dL/dh_t from step t+1
      Matrix grad(rows, H);
      for (int64_t t = steps - 1; t >= 0; --t) {
        const float* prev_data = t == 0 ? h0_data + first * H : h_data + ((t - 1) * batch + first) * H;
        ConstMatrixMap prev(prev_data, rows, H);
        ConstMatrixMap g(gates_data + (t * batch + first) * 4 * H, rows, 4 * H);
        ConstMatrixMap d_out(dh_data + (t * batch + first) * H, rows, H);
        MatrixMap dx(dxp_data + (t * batch + first) * 3 * H, rows, 3 * H);
        MatrixMap dr(dhp_data + (t * batch + first) * 3 * H, rows, 3 * H);
        auto z = g.leftCols(H).array(), r = g.middleCols(H, H).array(), cand = g.middleCols(2 * H, H).array(),
             hp_h = g.rightCols(H).array();
        grad = d_out + carry;
        auto d = grad.array();
        // candidate: h̃ = tanh(a), a = x_h + r · hp_h
        dx.rightCols(H) = (d * (1.0f - z) * (1.0f - cand * cand)).matrix();
        auto da = dx.rightCols(H).array();
        dx.leftCols(H) = (d * (prev.array() - cand) * z * (1.0f - z)).matrix();
        dx.middleCols(H, H) = (da * hp_h * r * (1.0f - r)).matrix();
        dr.leftCols(2 * H) = dx.leftCols(2 * H);
        dr.rightCols(H) = (da * r).matrix();
        carry.noalias() = dr * kernel.transpose();
        carry.array() += d * z;
      }
      MatrixMap(dh0_data + first * H, rows, H) = carry;
    });
  }
};

REGISTER_KERNEL_BUILDER(Name("DeepRnnGruSequence").Device(tensorflow::DEVICE_CPU), GruSequenceOp);
REGISTER_KERNEL_BUILDER(Name("DeepRnnGruSequenceGrad").Device(tensorflow::DEVICE_CPU), GruSequenceGradOp);

// ---------------------------------------------------------------- LSTM

REGISTER_OP("DeepRnnLstmSequence")
    .Input("xp: float")                // [T, B, 4H]: x_t W + bias, gates i, f, c, o
    .Input("h0: float")                // [B, H]
    .Input("c0: float")                // [B, H]
    .Input("recurrent_kernel: float")  // [H, 4H]
    .Output("h: float")                // [T, B, H]
    .Output("c: float")                // [T, B, H]
    .Output("gates: float")            // [T, B, 4H]: σ(i), σ(f), tanh(g), σ(o) (kept for the gradient)
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(CheckRank(c, 0, 3));
      TF_RETURN_IF_ERROR(CheckRank(c, 1, 2));
      ShapeHandle xp = c->input(0);
      c->set_output(0, c->MakeShape({c->Dim(xp, 0), c->Dim(xp, 1), c->Dim(c->input(1), 1)}));
      c->set_output(1, c->output(0));
      c->set_output(2, xp);
      return absl::OkStatus();
    });

REGISTER_OP("DeepRnnLstmSequenceGrad")
    .Input("h0: float")                // [B, H]
    .Input("c0: float")                // [B, H]
    .Input("recurrent_kernel: float")  // [H, 4H]
    .Input("h: float")                 // [T, B, H]
    .Input("c: float")                 // [T, B, H]
    .Input("gates: float")             // [T, B, 4H]
    .Input("dh: float")                // [T, B, H]: loss gradient w.r.t. each step's h
    .Input("dc: float")                // [T, B, H]: loss gradient w.r.t. each step's c (zeros when unused)
    .Output("dxp: float")              // [T, B, 4H] (also the gradient w.r.t. h_{t-1} U)
    .Output("dh0: float")              // [B, H]
    .Output("dc0: float")              // [B, H]
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(5));
      c->set_output(1, c->input(0));
      c->set_output(2, c->input(1));
      return absl::OkStatus();
    });

class LstmSequenceOp : public OpKernel {
 public:
  explicit LstmSequenceOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor &xp = ctx->input(0), &h0 = ctx->input(1), &c0 = ctx->input(2), &u = ctx->input(3);
    CheckForwardShapes(ctx, 4, xp, h0, u);
    if (!ctx->status().ok()) return;
    OP_REQUIRES(ctx, c0.shape() == h0.shape(), absl::InvalidArgumentError("c0 must have h0's shape"));
    const int64_t steps = xp.dim_size(0), batch = xp.dim_size(1), H = h0.dim_size(1);
    Tensor *h = nullptr, *c = nullptr, *gates = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({steps, batch, H}), &h));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({steps, batch, H}), &c));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({steps, batch, 4 * H}), &gates));
    const float *xp_data = xp.flat<float>().data(), *h0_data = h0.flat<float>().data();
    const float* c0_data = c0.flat<float>().data();
    float *h_data = h->flat<float>().data(), *c_data = c->flat<float>().data();
    float* gates_data = gates->flat<float>().data();
    ConstMatrixMap kernel(u.flat<float>().data(), H, 4 * H);

    ForEachRowRange(ctx, batch, steps * H * H * 16, [&](int64_t first, int64_t end) {
      const int64_t rows = end - first;
      for (int64_t t = 0; t < steps; ++t) {
        const int64_t prev_offset = ((t - 1) * batch + first) * H;
        ConstMatrixMap h_prev(t == 0 ? h0_data + first * H : h_data + prev_offset, rows, H);
        ConstMatrixMap c_prev(t == 0 ? c0_data + first * H : c_data + prev_offset, rows, H);
        ConstMatrixMap x(xp_data + (t * batch + first) * 4 * H, rows, 4 * H);
        MatrixMap g(gates_data + (t * batch + first) * 4 * H, rows, 4 * H);
        MatrixMap h_out(h_data + (t * batch + first) * H, rows, H);
        MatrixMap c_out(c_data + (t * batch + first) * H, rows, H);
        g.noalias() = h_prev * kernel;
        g += x;
        g.leftCols(2 * H) = Sigmoid(g.leftCols(2 * H).array()).matrix();
        g.middleCols(2 * H, H) = g.middleCols(2 * H, H).array().tanh().matrix();
        g.rightCols(H) = Sigmoid(g.rightCols(H).array()).matrix();
        c_out = (g.middleCols(H, H).array() * c_prev.array() + g.leftCols(H).array() * g.middleCols(2 * H, H).array())
                    .matrix();
        h_out = (g.rightCols(H).array() * c_out.array().tanh()).matrix();
      }
    });
  }
};

class LstmSequenceGradOp : public OpKernel {
 public:
  explicit LstmSequenceGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor &h0 = ctx->input(0), &c0 = ctx->input(1), &u = ctx->input(2), &c = ctx->input(4),
                 &gates = ctx->input(5), &dh = ctx->input(6), &dc = ctx->input(7);
    const int64_t steps = c.dim_size(0), batch = c.dim_size(1), H = c.dim_size(2);
    OP_REQUIRES(ctx, dh.shape() == c.shape() && dc.shape() == c.shape() && gates.dim_size(2) == 4 * H &&
                         u.dim_size(1) == 4 * H,
                absl::InvalidArgumentError("inconsistent shapes in DeepRnnLstmSequenceGrad"));
    Tensor *dxp = nullptr, *dh0 = nullptr, *dc0 = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, gates.shape(), &dxp));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, h0.shape(), &dh0));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, c0.shape(), &dc0));
    const float *c0_data = c0.flat<float>().data(), *c_data = c.flat<float>().data();
    const float *gates_data = gates.flat<float>().data(), *dh_data = dh.flat<float>().data();
    const float* dc_data = dc.flat<float>().data();
    float *dxp_data = dxp->flat<float>().data(), *dh0_data = dh0->flat<float>().data();
    float* dc0_data = dc0->flat<float>().data();
    ConstMatrixMap kernel(u.flat<float>().data(), H, 4 * H);

    ForEachRowRange(ctx, batch, steps * H * H * 16, [&](int64_t first, int64_t end) {
      const int64_t rows = end - first;
      Matrix h_carry = Matrix::Zero(rows, H), c_carry = Matrix::Zero(rows, H);
      Matrix tanh_c(rows, H), grad_c(rows, H);
      for (int64_t t = steps - 1; t >= 0; --t) {
        const int64_t here = (t * batch + first) * H;
        ConstMatrixMap c_prev(t == 0 ? c0_data + first * H : c_data + ((t - 1) * batch + first) * H, rows, H);
        ConstMatrixMap c_t(c_data + here, rows, H), d_h(dh_data + here, rows, H), d_c(dc_data + here, rows, H);
        ConstMatrixMap g(gates_data + 4 * here, rows, 4 * H);
        MatrixMap dx(dxp_data + 4 * here, rows, 4 * H);
        auto i = g.leftCols(H).array(), f = g.middleCols(H, H).array(), gg = g.middleCols(2 * H, H).array(),
             o = g.rightCols(H).array();
        tanh_c = c_t.array().tanh().matrix();
        h_carry += d_h;                                            // dL/dh_t
        grad_c = (c_carry.array() + d_c.array() +
                  h_carry.array() * o * (1.0f - tanh_c.array() * tanh_c.array())).matrix();  // dL/dc_t
        dx.leftCols(H) = (grad_c.array() * gg * i * (1.0f - i)).matrix();
        dx.middleCols(H, H) = (grad_c.array() * c_prev.array() * f * (1.0f - f)).matrix();
        dx.middleCols(2 * H, H) = (grad_c.array() * i * (1.0f - gg * gg)).matrix();
        dx.rightCols(H) = (h_carry.array() * tanh_c.array() * o * (1.0f - o)).matrix();
        c_carry = (grad_c.array() * f).matrix();
        h_carry.noalias() = dx * kernel.transpose();
      }
      MatrixMap(dh0_data + first * H, rows, H) = h_carry;
      MatrixMap(dc0_data + first * H, rows, H) = c_carry;
    });
  }
};

REGISTER_KERNEL_BUILDER(Name("DeepRnnLstmSequence").Device(tensorflow::DEVICE_CPU), LstmSequenceOp);
REGISTER_KERNEL_BUILDER(Name("DeepRnnLstmSequenceGrad").Device(tensorflow::DEVICE_CPU), LstmSequenceGradOp);

}  // namespace deep_rnn
